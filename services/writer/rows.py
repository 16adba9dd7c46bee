"""Pure mapping of clean events to table rows, plus the table definitions they fill.

ClickHouse gets column-oriented data (one list per column, timestamps as integer nanoseconds for
DateTime64(9)); PostgreSQL gets one record per metric for COPY.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from shared.schemas import CleanEvent, Log, Metric, Rum, Span

CLICKHOUSE_TABLES: Final = {"logs": "logs", "spans": "spans", "rum": "rum_events"}

_GEO_COLUMNS = """
    geo_country LowCardinality(String),
    geo_city LowCardinality(String),
    geo_lat Nullable(Float64),
    geo_lon Nullable(Float64),"""

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
    attrs Map(LowCardinality(String), String),
    trace_id String,
    span_id String,
    host LowCardinality(String),"""
    + _GEO_COLUMNS
    + """
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
    attrs Map(LowCardinality(String), String),
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
    metrics Map(LowCardinality(String), Float64),
    error Map(LowCardinality(String), String),
    attrs Map(LowCardinality(String), String),"""
    + _GEO_COLUMNS
    + """
    browser LowCardinality(String),
    browser_version LowCardinality(String),
    os LowCardinality(String),
    os_version LowCardinality(String),
    device LowCardinality(String),
    INDEX idx_id id TYPE bloom_filter(0.01) GRANULARITY 4
) ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (tenant, type, ts, id)
{ttl}
SETTINGS non_replicated_deduplication_window = 1000
""",
}

LOG_COLUMNS: Final = (
    "tenant",
    "id",
    "ts",
    "received_at",
    "service",
    "level",
    "message",
    "attrs",
    "trace_id",
    "span_id",
    "host",
    "geo_country",
    "geo_city",
    "geo_lat",
    "geo_lon",
)
SPAN_COLUMNS: Final = (
    "tenant",
    "id",
    "ts",
    "end_ts",
    "duration_ns",
    "received_at",
    "trace_id",
    "span_id",
    "parent_span_id",
    "service",
    "name",
    "kind",
    "status",
    "status_message",
    "attrs",
)
RUM_COLUMNS: Final = (
    "tenant",
    "id",
    "ts",
    "received_at",
    "session_id",
    "type",
    "url",
    "referrer",
    "user_id",
    "metrics",
    "error",
    "attrs",
    "geo_country",
    "geo_city",
    "geo_lat",
    "geo_lon",
    "browser",
    "browser_version",
    "os",
    "os_version",
    "device",
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


def _row(event: CleanEvent) -> tuple[Any, ...]:
    if isinstance(event, Log):
        geo = event.geo
        return (
            event.tenant,
            event.id,
            event.ts,
            event.received_at,
            event.service,
            event.level,
            event.message,
            event.attrs,
            event.trace_id,
            event.span_id,
            event.host,
            geo.country,
            geo.city,
            geo.lat,
            geo.lon,
        )
    if isinstance(event, Span):
        return (
            event.tenant,
            event.id,
            event.ts,
            event.end_ts,
            event.duration_ns,
            event.received_at,
            event.trace_id,
            event.span_id,
            event.parent_span_id,
            event.service,
            event.name,
            event.kind,
            event.status,
            event.status_message,
            event.attrs,
        )
    assert isinstance(event, Rum)
    geo, ua = event.geo, event.user_agent
    return (
        event.tenant,
        event.id,
        event.ts,
        event.received_at,
        event.session_id,
        event.type,
        event.url,
        event.referrer,
        event.user_id,
        event.metrics,
        event.error,
        event.attrs,
        geo.country,
        geo.city,
        geo.lat,
        geo.lon,
        ua.browser,
        ua.browser_version,
        ua.os,
        ua.os_version,
        ua.device,
    )


def column_names(kind: str) -> tuple[str, ...]:
    return {"logs": LOG_COLUMNS, "spans": SPAN_COLUMNS, "rum": RUM_COLUMNS}[kind]


def to_rows(events: Sequence[CleanEvent]) -> list[tuple[Any, ...]]:
    """Rows for a ClickHouse table, in `column_names(kind)` order."""
    return [_row(event) for event in events]


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
