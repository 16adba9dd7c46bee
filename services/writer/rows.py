"""Pure mapping of clean events to table rows, plus the table definitions they fill.

ClickHouse gets JSONEachRow for a Null-engine ingest table per kind, mapped onto the real table by
a materialized view (timestamps arrive as integer nanoseconds); PostgreSQL gets one record per
metric for COPY.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from shared.schemas import Metric, StoredEvent

CLICKHOUSE_TABLES: Final = {"logs": "logs", "spans": "spans", "rum": "rum_events"}

_GEO_COLUMNS = """
    geo_country LowCardinality(String),
    geo_city LowCardinality(String),
    geo_lat Nullable(Float64),
    geo_lon Nullable(Float64),"""

# When the engine took the row (the insert that made it queryable started then): ingest lag is
# `inserted_at - received_at`, and the benchmark's ingest->queryable latency is read from it.
# Filled by its default, never sent; tables made before it existed get it by ALTER.
INSERTED_AT: Final = "inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)"

# Map keys are plain String: with LowCardinality keys the engine spent ~1.5 us more per inserted
# log row (of ~7; docs/performance.md), and repeated keys compress well either way. Tables made
# with LowCardinality keys keep them (CREATE ... IF NOT EXISTS); the writer fills both alike.
CLICKHOUSE_DDL: Final = {
    "logs": """
CREATE TABLE IF NOT EXISTS {db}.logs (
    tenant LowCardinality(String),
    id String,
    ts DateTime64(9, 'UTC'),
    received_at DateTime64(9, 'UTC'),
    service LowCardinality(String),
    level LowCardinality(String),
    message String,
    attrs Map(String, String),
    trace_id String,
    span_id String,
    host LowCardinality(String),"""
    + _GEO_COLUMNS
    + """
    {inserted_at},
    INDEX idx_trace_id trace_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_id id TYPE bloom_filter(0.01) GRANULARITY 4
) ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (tenant, service, ts, id)
{ttl}
SETTINGS non_replicated_deduplication_window = 1000
""",
    "spans": """
CREATE TABLE IF NOT EXISTS {db}.spans (
    tenant LowCardinality(String),
    id String,
    ts DateTime64(9, 'UTC'),
    end_ts DateTime64(9, 'UTC'),
    duration_ns UInt64,
    received_at DateTime64(9, 'UTC'),
    trace_id String,
    span_id String,
    parent_span_id String,
    service LowCardinality(String),
    name LowCardinality(String),
    kind LowCardinality(String),
    status LowCardinality(String),
    status_message String,
    attrs Map(String, String),
    {inserted_at},
    INDEX idx_trace_id trace_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_id id TYPE bloom_filter(0.01) GRANULARITY 4
) ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (tenant, service, ts, id)
{ttl}
SETTINGS non_replicated_deduplication_window = 1000
""",
    "rum": """
CREATE TABLE IF NOT EXISTS {db}.rum_events (
    tenant LowCardinality(String),
    id String,
    ts DateTime64(9, 'UTC'),
    received_at DateTime64(9, 'UTC'),
    session_id String,
    type LowCardinality(String),
    url String,
    referrer String,
    user_id String,
    metrics Map(String, Float64),
    error Map(String, String),
    attrs Map(String, String),"""
    + _GEO_COLUMNS
    + """
    browser LowCardinality(String),
    browser_version LowCardinality(String),
    os LowCardinality(String),
    os_version LowCardinality(String),
    device LowCardinality(String),
    {inserted_at},
    INDEX idx_id id TYPE bloom_filter(0.01) GRANULARITY 4
) ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (tenant, type, ts, id)
{ttl}
SETTINGS non_replicated_deduplication_window = 1000
""",
}

# Each table is filled through a Null-engine table shaped like the clean event's JSON and a
# materialized view that maps it onto the table's columns, so the writer hands the engine the
# clean bodies as the normalizer wrote them (JSONEachRow) and ClickHouse parses and converts them,
# instead of Python building native columns value by value. (column, expression over the ingest
# table)
_GEO_SELECT: Final = (
    ("geo_country", "geo.country"),
    ("geo_city", "geo.city"),
    ("geo_lat", "geo.lat"),
    ("geo_lon", "geo.lon"),
)
_GEO_INGEST: Final = (
    "geo Tuple(country String, city String, lat Nullable(Float64), lon Nullable(Float64))"
)
_TS_SELECT: Final = (
    ("ts", "fromUnixTimestamp64Nano(ts)"),
    ("received_at", "fromUnixTimestamp64Nano(received_at)"),
)

INGEST_SCHEMA: Final = {
    "logs": "tenant String, id String, ts Int64, received_at Int64, service String, "
    "level String, message String, attrs Map(String, String), trace_id String, span_id String, "
    f"host String, {_GEO_INGEST}",
    "spans": "tenant String, id String, ts Int64, end_ts Int64, duration_ns Int64, "
    "received_at Int64, trace_id String, span_id String, parent_span_id String, service String, "
    "name String, kind String, status String, status_message String, attrs Map(String, String)",
    "rum": "tenant String, id String, ts Int64, received_at Int64, session_id String, "
    "type String, url String, referrer String, user_id String, metrics Map(String, Float64), "
    f"error Map(String, String), attrs Map(String, String), {_GEO_INGEST}, "
    "user_agent Tuple(browser String, browser_version String, os String, os_version String, "
    "device String)",
}

INGEST_SELECT: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "logs": (
        ("tenant", "tenant"),
        ("id", "id"),
        *_TS_SELECT,
        ("service", "service"),
        ("level", "level"),
        ("message", "message"),
        ("attrs", "attrs"),
        ("trace_id", "trace_id"),
        ("span_id", "span_id"),
        ("host", "host"),
        *_GEO_SELECT,
    ),
    "spans": (
        ("tenant", "tenant"),
        ("id", "id"),
        *_TS_SELECT,
        ("end_ts", "fromUnixTimestamp64Nano(end_ts)"),
        ("duration_ns", "toUInt64(duration_ns)"),
        ("trace_id", "trace_id"),
        ("span_id", "span_id"),
        ("parent_span_id", "parent_span_id"),
        ("service", "service"),
        ("name", "name"),
        ("kind", "kind"),
        ("status", "status"),
        ("status_message", "status_message"),
        ("attrs", "attrs"),
    ),
    "rum": (
        ("tenant", "tenant"),
        ("id", "id"),
        *_TS_SELECT,
        ("session_id", "session_id"),
        ("type", "type"),
        ("url", "url"),
        ("referrer", "referrer"),
        ("user_id", "user_id"),
        ("metrics", "metrics"),
        ("error", "error"),
        ("attrs", "attrs"),
        *_GEO_SELECT,
        ("browser", "user_agent.browser"),
        ("browser_version", "user_agent.browser_version"),
        ("os", "user_agent.os"),
        ("os_version", "user_agent.os_version"),
        ("device", "user_agent.device"),
    ),
}


def ingest_table(kind: str) -> str:
    return f"{CLICKHOUSE_TABLES[kind]}_ingest"


def ingest_ddl(db: str, kind: str) -> tuple[str, str, str]:
    """For a table made before `inserted_at`, its column; the Null-engine table the writer
    inserts into; the view that fills the real table."""
    table, ingest = CLICKHOUSE_TABLES[kind], ingest_table(kind)
    select = ", ".join(f"{expr} AS {column}" for column, expr in INGEST_SELECT[kind])
    return (
        f"ALTER TABLE {db}.{table} ADD COLUMN IF NOT EXISTS {INSERTED_AT}",
        f"CREATE TABLE IF NOT EXISTS {db}.{ingest} ({INGEST_SCHEMA[kind]}) ENGINE = Null",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{ingest}_mv TO {db}.{table} "
        f"AS SELECT {select} FROM {db}.{ingest}",
    )


METRIC_COLUMNS: Final = (
    "tenant",
    "id",
    "ts",
    "name",
    "value",
    "type",
    "labels",
    "service",
    "host",
    "received_at",
    "attrs",
)

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_labels_encoder: Final = msgspec.json.Encoder(order="sorted")


def to_json_rows(events: Sequence[StoredEvent]) -> bytes:
    """JSONEachRow for a kind's ingest table: each clean event as the normalizer wrote it."""
    return b"\n".join(event.body for event in events)


def nanos_to_datetime(nanos: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=nanos // 1000)


def to_metric_records(events: Sequence[Metric]) -> list[tuple[Any, ...]]:
    """Records for COPY into `rivulet.metrics`, in METRIC_COLUMNS order."""
    return [
        (
            m.tenant,
            m.id,
            nanos_to_datetime(m.ts),
            m.name,
            m.value,
            m.type,
            _labels_encoder.encode(m.labels).decode(),
            m.service,
            m.host,
            nanos_to_datetime(m.received_at),
            _labels_encoder.encode(m.attrs).decode(),
        )
        for m in events
    ]
