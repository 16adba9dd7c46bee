"""ReadBudget: how many entries a consumer asks for next, bounded by entries and by bytes."""

from __future__ import annotations

from shared.budget import FIRST_ENTRY_BYTES, ReadBudget
from shared.entries import Delivery, entries_bytes


def read(count: int, body_bytes: int) -> list[Delivery]:
    """`count` entries of 4 + `body_bytes` + 4 bytes each."""
    return [Delivery(b"%d-0" % i, [b"body", b"x" * body_bytes, b"tail", b""]) for i in range(count)]


def test_entries_bytes_counts_names_and_values() -> None:
    assert entries_bytes(read(3, 92)) == 300
    assert entries_bytes([Delivery(b"1-0", [])]) == 0


def test_the_first_read_assumes_large_entries_then_the_mean_of_the_latest_read() -> None:
    budget = ReadBudget(10_000, 16 * FIRST_ENTRY_BYTES, max_read=1000)
    assert budget.count() == 16
    budget.took(read(16, 92))  # 100 bytes each
    assert budget.count() == 1000
    budget.begin()
    assert budget.count() == 1000  # the mean carries over to the next batch


def test_without_max_read_the_whole_batch_is_one_read() -> None:
    budget = ReadBudget(5000, 1 << 30)
    budget.entry_bytes = 100
    assert budget.count() == 5000


def test_a_batch_stops_at_its_bytes() -> None:
    budget = ReadBudget(10_000, 1000)
    budget.entry_bytes = 100
    assert budget.count() == 10
    budget.took(read(4, 192))  # 200 bytes each: 800 of 1000
    assert not budget.full
    assert budget.count() == 1
    budget.took(read(1, 192))
    assert budget.full
    assert budget.count() == 0


def test_a_batch_is_full_once_an_entry_of_the_mean_size_would_not_fit() -> None:
    budget = ReadBudget(10_000, 1000)
    budget.took(read(4, 212))  # 220 bytes each: 120 left
    assert budget.full and budget.count() == 0


def test_a_batch_stops_at_its_entries() -> None:
    budget = ReadBudget(5, 1 << 30)
    budget.entry_bytes = 1
    assert budget.count() == 5
    budget.took(read(3, 0))
    assert budget.count() == 2
    budget.took(read(2, 0))
    assert budget.full and budget.count() == 0
    budget.begin()
    assert not budget.full and budget.count() == 5


def test_an_entry_larger_than_the_budget_is_still_read_alone() -> None:
    budget = ReadBudget(500, 1000)
    assert budget.count() == 1
    budget.took(read(1, 5000))
    assert budget.full
    budget.begin()
    assert budget.count() == 1


def test_an_empty_read_changes_nothing() -> None:
    budget = ReadBudget(500, 1000)
    budget.entry_bytes = 100
    budget.took([])
    assert (budget.entries, budget.bytes, budget.entry_bytes) == (0, 0, 100)
