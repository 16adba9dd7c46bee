"""How many entries a consumer asks Redis for next, so that its batch stays within a byte budget.

XREADGROUP bounds a read by entries only. Events may be up to `max_event_bytes` and profiles far
larger, so a batch bounded by entries alone could hold `count x size` bytes in the worker, and
the normalizer's commit (one Redis command with every body) or the writer's insert would carry
them all. Each read asks for as many entries as fit in the bytes left at the mean entry size of
the consumer's latest read (before its first read: `FIRST_ENTRY_BYTES`, a pessimistic guess),
and a batch is full once another entry of that size would not fit. A batch overshoots its
budget only when entries grow suddenly, by at most one read; its first entry is always taken,
however large, so that no entry can be left unread forever.

Pure: no I/O; one `ReadBudget` per consumer, reused from batch to batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from shared.entries import Delivery, entries_bytes

# The mean entry size assumed before a consumer's first read: a writer's first read of 16 MiB
# asks for 256 entries rather than 1000, once.
FIRST_ENTRY_BYTES: Final = 64 * 1024


class ReadBudget:
    """`max_read`: entries per XREADGROUP at most (default: the whole batch in one read)."""

    def __init__(self, max_entries: int, max_bytes: int, max_read: int = 0) -> None:
        self.max_entries = max(1, max_entries)
        self.max_bytes = max(1, max_bytes)
        self.max_read = max(1, max_read or max_entries)
        self.entry_bytes = FIRST_ENTRY_BYTES
        self.entries = 0
        self.bytes = 0

    def begin(self) -> None:
        """A new, empty batch (the mean entry size carries over)."""
        self.entries = 0
        self.bytes = 0

    @property
    def full(self) -> bool:
        """No room for another entry: by count, or by bytes at the mean entry size."""
        return self.entries >= self.max_entries or (
            self.entries > 0 and self.max_bytes - self.bytes < self.entry_bytes
        )

    def count(self) -> int:
        """Entries to ask for next: 0 once the batch is full, else at least 1."""
        if self.full:
            return 0
        fit = (self.max_bytes - self.bytes) // self.entry_bytes
        return max(1, min(self.max_entries - self.entries, self.max_read, fit))

    def took(self, deliveries: Sequence[Delivery]) -> None:
        """Count a read into the batch."""
        if not deliveries:
            return
        size = entries_bytes(deliveries)
        self.entries += len(deliveries)
        self.bytes += size
        self.entry_bytes = max(1, size // len(deliveries))
