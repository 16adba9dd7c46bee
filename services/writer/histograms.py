"""Histogram metric points (OTLP explicit and exponential histograms) in PostgreSQL.

A metric event that carries `histogram` (shared.schemas.Histogram) becomes one row of
`<schema>.metric_histograms` instead of a row of `metrics`, written by the metrics writer in the
same transaction and the same way: COPY into a temp table, then INSERT ... ON CONFLICT DO NOTHING
on the primary key (tenant, id, ts), so a re-delivered batch stores each point once.

Columns: the metric's identity (name, labels, service, host, attrs) as in `metrics`, then the
point: `scheme` ('explicit' | 'exponential'), `temporality`, `count`, `sum`, `min`, `max`,
`start_ts`; explicit buckets as `bounds double precision[]` + `bucket_counts bigint[]`
(len(bounds) + 1 counts: bucket i holds values in (bounds[i-1], bounds[i]]); exponential buckets
as `scale`, `zero_count`, `zero_threshold`, `positive_offset` + `positive_counts bigint[]`,
`negative_offset` + `negative_counts bigint[]` (bucket i of the positive range holds values in
(2**((offset+i) * 2**-scale), 2**((offset+i+1) * 2**-scale)]).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import asyncpg
import msgspec

from services.writer.rows import nanos_to_datetime
from shared.schemas import Histogram, Metric

HISTOGRAM_COLUMNS: Final = (
    "tenant",
    "id",
    "ts",
    "name",
    "labels",
    "service",
    "host",
    "attrs",
    "received_at",
    "scheme",
    "temporality",
    "count",
    "sum",
    "min",
    "max",
    "start_ts",
    "bounds",
    "bucket_counts",
    "scale",
    "zero_count",
    "zero_threshold",
    "positive_offset",
    "positive_counts",
    "negative_offset",
    "negative_counts",
)
_json: Final = msgspec.json.Encoder(order="sorted")


def histogram_ddl(schema: str, timescale: bool) -> list[str]:
    s = f'"{schema}"'
    statements = [
        f"""CREATE TABLE IF NOT EXISTS {s}.metric_histograms (
            tenant text NOT NULL,
            id text NOT NULL,
            ts timestamptz NOT NULL,
            name text NOT NULL,
            labels jsonb NOT NULL DEFAULT '{{}}',
            service text NOT NULL DEFAULT '',
            host text NOT NULL DEFAULT '',
            attrs jsonb NOT NULL DEFAULT '{{}}',
            received_at timestamptz NOT NULL,
            scheme text NOT NULL,
            temporality text NOT NULL,
            count bigint NOT NULL,
            sum double precision,
            min double precision,
            max double precision,
            start_ts timestamptz,
            bounds double precision[] NOT NULL DEFAULT '{{}}',
            bucket_counts bigint[] NOT NULL DEFAULT '{{}}',
            scale integer,
            zero_count bigint,
            zero_threshold double precision,
            positive_offset integer,
            positive_counts bigint[],
            negative_offset integer,
            negative_counts bigint[],
            PRIMARY KEY (tenant, id, ts)
        )""",
        f"CREATE INDEX IF NOT EXISTS metric_histograms_tenant_name_ts_idx "
        f"ON {s}.metric_histograms (tenant, name, ts DESC)",
    ]
    if timescale:
        statements.append(
            f"SELECT create_hypertable('{schema}.metric_histograms', 'ts', "
            "if_not_exists => TRUE, migrate_data => TRUE)"
        )
    return statements


def _buckets(h: Histogram) -> tuple[Any, ...]:
    if h.scheme == "explicit":
        return (list(h.bounds), list(h.counts), None, None, None, None, None, None, None)
    return (
        [],
        [],
        h.scale,
        h.zero_count,
        h.zero_threshold,
        h.positive_offset,
        list(h.positive_counts),
        h.negative_offset,
        list(h.negative_counts),
    )


def to_histogram_records(events: Sequence[Metric]) -> list[tuple[Any, ...]]:
    """Records for COPY into `metric_histograms`, in HISTOGRAM_COLUMNS order."""
    records: list[tuple[Any, ...]] = []
    for m in events:
        h = m.histogram
        assert h is not None
        records.append(
            (
                m.tenant,
                m.id,
                nanos_to_datetime(m.ts),
                m.name,
                _json.encode(m.labels).decode(),
                m.service,
                m.host,
                _json.encode(m.attrs).decode(),
                nanos_to_datetime(m.received_at),
                h.scheme,
                h.temporality,
                h.count,
                h.sum,
                h.min,
                h.max,
                nanos_to_datetime(h.start_ns) if h.start_ns else None,
                *_buckets(h),
            )
        )
    return records


async def insert_histograms(
    conn: asyncpg.Connection, schema: str, events: Sequence[Metric]
) -> None:
    """Inside the caller's transaction: stage, then insert the points not stored yet."""
    columns = ", ".join(HISTOGRAM_COLUMNS)
    await conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS metric_histograms_stage "
        f'(LIKE "{schema}".metric_histograms INCLUDING DEFAULTS) ON COMMIT DELETE ROWS'
    )
    await conn.copy_records_to_table(
        "metric_histograms_stage",
        records=to_histogram_records(events),
        columns=list(HISTOGRAM_COLUMNS),
    )
    await conn.execute(
        f'INSERT INTO "{schema}".metric_histograms ({columns}) '
        f"SELECT {columns} FROM metric_histograms_stage ON CONFLICT DO NOTHING"
    )
