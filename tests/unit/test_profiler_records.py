"""Unit tests for services.profiler.records and services.writer.profile_rows (pure).

The central property: every report over a profile's stored form equals the report over the
profile itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from services.profiler import report
from services.profiler.pprof import InvalidProfile, ParsedProfile, parse_profile
from services.profiler.records import (
    INT64_MAX,
    MissingStoredData,
    StoredHeader,
    first_index_per_type,
    function_hash,
    gzipped,
    profile_id,
    profile_time,
    record_as_stored,
    stored_profile,
    to_clean_profile,
)
from services.profiler.synth import ProfileBuilder, cpu_example, random_example
from services.writer.profile_rows import (
    function_rows,
    profile_ddl,
    profile_rows,
    rows_token,
    sample_rows,
    stack_rows,
)
from shared.profile_streams import clean_profile_entry, decode_clean_profile
from shared.schemas import CleanProfile, RawProfileEntry

PPROF_DIR = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "pprof"
TRIM: dict[str, Any] = {"nodecount": 20, "nodefraction": 0.05, "edgefraction": 0.01}


def record_of(body: bytes, *, tenant: str = "acme", received_at: int = 5) -> CleanProfile:
    entry = RawProfileEntry(tenant, profile_id(tenant, body), received_at, "api", "cpu", body)
    return to_clean_profile(entry, parse_profile(body))


def stored(record: CleanProfile, index: int, header: StoredHeader | None = None) -> ParsedProfile:
    vt, sums, stacks, functions = record_as_stored(record, index)
    return stored_profile(vt, sums, stacks, functions, header)


def odd_profile() -> bytes:
    """Inlined frames, a location without lines, an empty stack, drop_frames, labels, duplicate
    sample type names, a zero-valued sample."""
    b = ProfileBuilder(
        [("samples", "count"), ("cpu", "nanoseconds"), ("samples", "count")],
        mapping_file="/bin/odd",
    )
    b.add([("inl.a", "inl.b"), "main.run", "main.main"], [1, 10, 7])
    b.add(["main.run", "main.main"], [2, 20, 0], labels={"k": "v"})
    b.add(["main.run", "main.main"], [1, 5, 1], num_labels={"bytes": (3, "bytes")})
    b.add(["runtime.drop.me", "main.run", "main.main"], [1, 1, 1])
    b.add([], [4, 40, 4])  # no frames at all
    b.add(["zero", "main.main"], [0, 0, 0])
    b.set_drop_frames("runtime\\.drop\\..*")
    loc = b.msg.location.add(id=99, mapping_id=1, address=0xBEEF)  # no lines: a bare address
    b.msg.sample.add(location_id=[99, b.location("main.main")], value=[3, 30, 3])
    del loc
    return b.encode()


PROFILES = {
    "cpu": cpu_example(3, extra="main.more").encode(),
    "random": random_example(11).encode(gzipped=True),
    "odd": odd_profile(),
}


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_report_of_the_stored_form_equals_the_report_of_the_profile(name: str) -> None:
    body = PROFILES[name]
    parsed = parse_profile(body)
    record = record_of(body)
    for index in first_index_per_type(record.sample_types):
        mine = stored(record, index)
        for options in (
            {},
            {"sort_by_cum": True},
            {"noinlines": True},
            {"granularity": "filefunctions"},
            {"granularity": "filefunctions", "noinlines": True},
        ):
            expected = report.top(parsed, index, **options)
            ours = report.top(mine, **options)
            assert ours.rows == expected.rows and ours.total == expected.total
            assert report.format_top(ours) == report.format_top(expected)
            assert report.format_top(ours, **TRIM) == report.format_top(expected, **TRIM)
        assert report.folded(mine) == report.folded(parsed, index)
        assert report.flamegraph_svg(mine) == report.flamegraph_svg(parsed, index)
    assert report.diff(stored(record, 1), stored(record, 1)) == report.diff(parsed, parsed, 1)


def test_merged_stored_profiles_equal_merged_profiles() -> None:
    bodies = [cpu_example(n, extra=f"main.x{n}").encode() for n in range(1, 4)]
    parsed = [parse_profile(b) for b in bodies]
    records = [record_of(b) for b in bodies]
    sums: dict[int, int] = {}
    stacks = {}
    functions = {}
    for record in records:
        vt, part, s, f = record_as_stored(record, 1)
        for stack_hash, value in part:
            sums[stack_hash] = sums.get(stack_hash, 0) + value
        stacks.update(s)
        functions.update(f)
    merged = stored_profile(vt, sorted(sums.items()), stacks, functions)
    assert report.format_top(report.top(merged)) == report.format_top(report.top(parsed))
    assert report.folded(merged) == report.folded(parsed)


def test_headers_print_like_pprof() -> None:
    body = cpu_example(time_nanos=1_700_000_000 * 10**9).encode()
    parsed = parse_profile(body)
    header = StoredHeader(
        time_nanos=parsed.time_nanos,
        duration_nanos=parsed.duration_nanos,
        main_binary="/usr/bin/example",
    )
    expected = report.format_top(report.top(parsed), profile_labels=True)
    assert report.format_top(
        report.top(stored(record_of(body), 1, header)), profile_labels=True
    ) == (expected)
    assert expected.startswith("File: example\nType: cpu\nTime: 2023-11-14 22:13:20 UTC\n")


def test_goldens_survive_the_round_trip() -> None:
    driver = PPROF_DIR / "pprof-driver"
    if not driver.exists():
        pytest.skip("shared test data absent")
    for name in ("cpu.pb.gz", "long_name_funcs.pb.gz", "cpusmall.pb.gz"):
        body = (driver / name).read_bytes()
        parsed = parse_profile(body)
        record = record_of(body)
        assert record.pprof == body  # already gzipped: stored as sent
        for noinlines in (False, True):
            assert report.format_top(
                report.top(stored(record, 1), noinlines=noinlines), **TRIM
            ) == (report.format_top(report.top(parsed, noinlines=noinlines), **TRIM))


def test_record_fields() -> None:
    body = cpu_example(2, time_nanos=123).encode()
    record = record_of(body, received_at=99)
    assert record.id == hashlib.sha256(b"acme\0" + body).hexdigest()[:32]
    assert record.ts == 123 and record.received_at == 99
    assert record.sample_types == ("samples", "cpu")
    assert record.sample_units == ("count", "nanoseconds")
    assert (record.period_type, record.period_unit, record.period) == ("cpu", "nanoseconds", 10**7)
    assert record.samples == 5 and len(record.stacks) == 5
    assert record.main_binary == "/usr/bin/example"
    assert parse_profile(record.pprof) == parse_profile(body)
    assert record.size == len(body)
    # per stack, per sample type: sums
    assert sum(v[1] for v in record.values) == 100 * 2 * 1_000_000
    # functions are deduplicated and referenced by hash
    hashes = {f.hash for f in record.functions}
    assert len(hashes) == len(record.functions)
    assert all(h in hashes for s in record.stacks for h in s.functions)


def test_profile_time_falls_back_to_arrival() -> None:
    assert profile_time(0, 7) == 7
    assert profile_time(-5, 7) == 7
    assert profile_time(10**19, 7) == 7
    assert profile_time(42, 7) == 42


def test_identities_are_stable() -> None:
    assert profile_id("a", b"x") != profile_id("b", b"x")
    assert len(profile_id("a", b"x")) == 32
    assert function_hash("f", "f", "f.go", 1) == function_hash("f", "f", "f.go", 1)
    assert function_hash("f", "f", "f.go", 1) != function_hash("f", "f", "f.go", 2)
    plain = cpu_example().encode()
    assert gzipped(gzipped(plain)) == gzipped(plain)
    assert record_of(plain).id == record_of(plain).id


def test_sums_beyond_64_bits_are_refused() -> None:
    b = ProfileBuilder([("samples", "count")])
    b.add(["f"], [INT64_MAX])
    b.add(["f"], [INT64_MAX])
    with pytest.raises(InvalidProfile, match="64 bits"):
        record_of(b.encode())


def test_missing_stacks_or_functions_are_reported() -> None:
    record = record_of(PROFILES["cpu"])
    vt, sums, stacks, functions = record_as_stored(record, 1)
    with pytest.raises(MissingStoredData, match="stack"):
        stored_profile(vt, [(12345, 1), *sums], stacks, functions)
    with pytest.raises(MissingStoredData, match="function"):
        stored_profile(vt, sums, stacks, {})


def test_clean_entry_round_trips_and_reads_plainly() -> None:
    record = record_of(PROFILES["odd"])
    entry = clean_profile_entry(record)
    fields = {k.encode(): (v if isinstance(v, bytes) else str(v).encode()) for k, v in entry.fields}
    assert decode_clean_profile(fields) == record
    assert fields[b"sample_types"] == b"samples/count,cpu/nanoseconds,samples/count"
    assert fields[b"kind"] == b"profiles" and fields[b"service"] == b"api"
    with pytest.raises(msgspec.DecodeError):
        decode_clean_profile({b"body": b"\xc1 not msgpack"})


# --- rows -----------------------------------------------------------------------------------------


def test_sample_rows_keep_nonzero_values_of_the_first_type_of_each_name() -> None:
    record = record_of(PROFILES["odd"])
    assert first_index_per_type(record.sample_types) == [0, 1]
    rows = sample_rows([record])
    types = {row[3] for row in rows}
    assert types == {"samples", "cpu"}
    keys = [(row[0], row[6], row[3], row[7]) for row in rows]
    assert len(keys) == len(set(keys))
    assert all(row[8] != 0 for row in rows)
    cpu = sum(row[8] for row in rows if row[3] == "cpu")
    assert cpu == sum(v[1] for v in record.values)
    skip = frozenset(keys[:3])
    assert sample_rows([record], skip) == rows[3:]


def test_stack_and_function_rows_are_distinct_and_newest() -> None:
    first = record_of(PROFILES["cpu"], received_at=1)
    second = record_of(PROFILES["cpu"], received_at=2)
    stacks = stack_rows([first, second])
    assert len(stacks) == len(first.stacks) and {row[-1] for row in stacks} == {2}
    functions = function_rows([second, first])
    assert len(functions) == len(first.functions) and {row[-1] for row in functions} == {2}
    [row] = profile_rows([first])
    assert row[:2] == ("acme", first.id) and row[-1] == first.pprof


def test_tokens_and_ddl() -> None:
    assert rows_token("t", [("a", 1)]) == rows_token("t", [("a", 1)])
    assert rows_token("t", [("a", 1)]) != rows_token("u", [("a", 1)])
    assert rows_token("t", [("a", 1)]) != rows_token("t", [("a", 2)])
    ddl = profile_ddl("`db`", 30)
    assert len(ddl) == 4
    assert "ORDER BY (tenant, service, type, sample_type, ts, profile_id, stack_hash)" in ddl[1]
    assert "TTL toDateTime(last_seen) + INTERVAL 30 DAY" in ddl[2]
    assert all("TTL" not in d for d in profile_ddl("`db`", 0))
