"""The ClickHouse tables of profiles and the pure mapping of clean profiles to their rows.

Input: `CleanProfile` records (the body of `rivulet:{profiles}:clean`).
Output: rows for four tables of database `rivulet`:

    profiles           one row per profile: tenant, id, service, type, time, duration, period,
                       sample types/units, labels, the original protobuf (gzipped)
    profile_samples    per profile, sample type and stack: the summed value (zeros left out)
    profile_stacks     distinct stacks by 64-bit hash: function hash, line, inline flag (and, for
                       frames without a function name, mapping and address) per frame, leaf first
    profile_functions  functions by 64-bit hash: name, system name, file, start line

`profiles` and `profile_samples` are ordered by (tenant, service, type, [sample type,] time) and
partitioned by day, so a report over one service and one hour reads that hour only; stacks and
functions are keyed by (tenant, hash) and are ReplacingMergeTree, so inserting a stack or a
function again is harmless (the newest `last_seen` is kept, and their TTL runs from it, so they
outlive every sample that refers to them).

Guarantee (with `sinks.ClickHouseSink.insert_profiles`): rows of one profile are written
functions, stacks, samples, then the profile row last; the profile row therefore marks a profile
whose samples are all stored, and each sample row is identified by (tenant, profile id, sample
type, stack hash), so a retry can insert exactly the rows still missing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any, Final

from services.profiler.records import first_index_per_type
from shared.schemas import CleanProfile

PROFILE_TABLES: Final = ("profiles", "profile_samples", "profile_stacks", "profile_functions")

_PROFILES_DDL: Final = """
CREATE TABLE IF NOT EXISTS {db}.profiles (
    tenant LowCardinality(String),
    id String,
    ts DateTime64(9, 'UTC'),
    received_at DateTime64(9, 'UTC'),
    service LowCardinality(String),
    type LowCardinality(String),
    labels Map(LowCardinality(String), String),
    sample_types Array(LowCardinality(String)),
    sample_units Array(LowCardinality(String)),
    default_sample_type LowCardinality(String),
    period_type LowCardinality(String),
    period_unit LowCardinality(String),
    period Int64,
    time_nanos Int64,
    duration_ns Int64,
    samples UInt64,
    stacks UInt64,
    comments Array(String),
    doc_url String,
    main_binary String,
    build_id String,
    size UInt64,
    pprof String CODEC(ZSTD(3)),
    INDEX idx_id id TYPE bloom_filter(0.01) GRANULARITY 4
) ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (tenant, service, type, ts, id)
{ttl}
SETTINGS non_replicated_deduplication_window = 1000
"""

_SAMPLES_DDL: Final = """
CREATE TABLE IF NOT EXISTS {db}.profile_samples (
    tenant LowCardinality(String),
    service LowCardinality(String),
    type LowCardinality(String),
    sample_type LowCardinality(String),
    sample_unit LowCardinality(String),
    ts DateTime64(9, 'UTC'),
    profile_id String,
    stack_hash UInt64,
    value Int64,
    received_at DateTime64(9, 'UTC'),
    INDEX idx_profile_id profile_id TYPE bloom_filter(0.01) GRANULARITY 4
) ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
PRIMARY KEY (tenant, service, type, sample_type, ts)
ORDER BY (tenant, service, type, sample_type, ts, profile_id, stack_hash)
{ttl}
SETTINGS non_replicated_deduplication_window = 1000
"""

_STACKS_DDL: Final = """
CREATE TABLE IF NOT EXISTS {db}.profile_stacks (
    tenant LowCardinality(String),
    stack_hash UInt64,
    function_hashes Array(UInt64),
    lines Array(Int64),
    inlined Array(UInt8),
    mappings Array(LowCardinality(String)),
    addresses Array(UInt64),
    last_seen DateTime64(9, 'UTC')
) ENGINE = ReplacingMergeTree(last_seen)
ORDER BY (tenant, stack_hash)
{ttl}
SETTINGS non_replicated_deduplication_window = 1000
"""

_FUNCTIONS_DDL: Final = """
CREATE TABLE IF NOT EXISTS {db}.profile_functions (
    tenant LowCardinality(String),
    function_hash UInt64,
    name String,
    system_name String,
    filename String,
    start_line Int64,
    last_seen DateTime64(9, 'UTC')
) ENGINE = ReplacingMergeTree(last_seen)
ORDER BY (tenant, function_hash)
{ttl}
SETTINGS non_replicated_deduplication_window = 1000
"""

PROFILE_COLUMNS: Final = (
    "tenant",
    "id",
    "ts",
    "received_at",
    "service",
    "type",
    "labels",
    "sample_types",
    "sample_units",
    "default_sample_type",
    "period_type",
    "period_unit",
    "period",
    "time_nanos",
    "duration_ns",
    "samples",
    "stacks",
    "comments",
    "doc_url",
    "main_binary",
    "build_id",
    "size",
    "pprof",
)
SAMPLE_COLUMNS: Final = (
    "tenant",
    "service",
    "type",
    "sample_type",
    "sample_unit",
    "ts",
    "profile_id",
    "stack_hash",
    "value",
    "received_at",
)
STACK_COLUMNS: Final = (
    "tenant",
    "stack_hash",
    "function_hashes",
    "lines",
    "inlined",
    "mappings",
    "addresses",
    "last_seen",
)
FUNCTION_COLUMNS: Final = (
    "tenant",
    "function_hash",
    "name",
    "system_name",
    "filename",
    "start_line",
    "last_seen",
)

SampleKey = tuple[str, str, str, int]  # tenant, profile id, sample type, stack hash
Row = tuple[Any, ...]


def profile_ddl(db: str, ttl_days: int) -> list[str]:
    """CREATE TABLE statements; `db` is already quoted."""

    def ttl(column: str) -> str:
        return f"TTL toDateTime({column}) + INTERVAL {int(ttl_days)} DAY" if ttl_days > 0 else ""

    return [
        _PROFILES_DDL.format(db=db, ttl=ttl("received_at")),
        _SAMPLES_DDL.format(db=db, ttl=ttl("received_at")),
        _STACKS_DDL.format(db=db, ttl=ttl("last_seen")),
        _FUNCTIONS_DDL.format(db=db, ttl=ttl("last_seen")),
    ]


def profile_rows(records: Iterable[CleanProfile]) -> list[Row]:
    return [
        (
            r.tenant,
            r.id,
            r.ts,
            r.received_at,
            r.service,
            r.type,
            r.labels,
            list(r.sample_types),
            list(r.sample_units),
            r.default_sample_type,
            r.period_type,
            r.period_unit,
            r.period,
            r.time_nanos,
            r.duration_nanos,
            r.samples,
            len(r.stacks),
            list(r.comments),
            r.doc_url,
            r.main_binary,
            r.build_id,
            r.size,
            r.pprof,
        )
        for r in records
    ]


def sample_rows(
    records: Iterable[CleanProfile], skip: frozenset[SampleKey] = frozenset()
) -> list[Row]:
    """One row per (profile, first sample type of each name, stack) with a nonzero sum, minus
    the rows identified in `skip` (already stored)."""
    rows: list[Row] = []
    for r in records:
        for j in first_index_per_type(r.sample_types):
            sample_type, unit = r.sample_types[j], r.sample_units[j]
            for stack, values in zip(r.stacks, r.values, strict=True):
                value = values[j]
                if value == 0 or (skip and (r.tenant, r.id, sample_type, stack.hash) in skip):
                    continue
                rows.append(
                    (
                        r.tenant,
                        r.service,
                        r.type,
                        sample_type,
                        unit,
                        r.ts,
                        r.id,
                        stack.hash,
                        value,
                        r.received_at,
                    )
                )
    return rows


def stack_rows(records: Iterable[CleanProfile]) -> list[Row]:
    """Distinct (tenant, stack) rows of the batch, each with its newest arrival."""
    newest: dict[tuple[str, int], Row] = {}
    for r in records:
        for s in r.stacks:
            key = (r.tenant, s.hash)
            found = newest.get(key)
            if found is None or found[-1] < r.received_at:
                newest[key] = (
                    r.tenant,
                    s.hash,
                    list(s.functions),
                    list(s.lines),
                    [int(i) for i in s.inlined],
                    list(s.mappings),
                    list(s.addresses),
                    r.received_at,
                )
    return list(newest.values())


def function_rows(records: Iterable[CleanProfile]) -> list[Row]:
    newest: dict[tuple[str, int], Row] = {}
    for r in records:
        for f in r.functions:
            key = (r.tenant, f.hash)
            found = newest.get(key)
            if found is None or found[-1] < r.received_at:
                newest[key] = (
                    r.tenant,
                    f.hash,
                    f.name,
                    f.system_name,
                    f.filename,
                    f.start_line,
                    r.received_at,
                )
    return list(newest.values())


def rows_token(table: str, keys: Sequence[Row]) -> str:
    """Insert deduplication token: the table and the identity of every row, in order."""
    digest = hashlib.sha256(table.encode())
    for key in keys:
        digest.update(b"\n")
        digest.update("\0".join(str(part) for part in key).encode())
    return digest.hexdigest()
