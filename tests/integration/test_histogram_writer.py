"""Histogram points (OTLP explicit and exponential) through the metrics writer into PostgreSQL's
`metric_histograms`, exactly once like `metrics`, with every bucket intact."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec
import redis.asyncio as aioredis

from services.writer.sinks import PostgresSink
from shared.config import Settings
from shared.events import parse_event
from shared.schemas import CleanEvent
from tests.helpers import NOW_NS, forget_seen, metric_event
from tests.integration.test_writer import append_clean, running_writer, wait_acked


def histogram_event(i: int, histogram: dict[str, Any]) -> CleanEvent:
    event = metric_event(i, name="http.server.duration", type="histogram", histogram=histogram)
    event["id"] = f"hist-{i}"
    return parse_event("metrics", msgspec.json.encode(event), "acme", 7)


async def test_histograms_are_stored_with_their_buckets_once(
    redis: aioredis.Redis, settings: Settings, namespace: str, pg_schema: str, pg_dsn: str
) -> None:
    explicit = {
        "count": 6,
        "sum": 3.5,
        "min": 0.1,
        "max": 2.0,
        "bounds": [0.5, 1.0, 5.0],
        "counts": [2, 3, 1, 0],
        "temporality": "cumulative",
        "start_ns": NOW_NS - 10**9,
    }
    exponential = {
        "count": 5,
        "scheme": "exponential",
        "sum": 9.0,
        "scale": 2,
        "zero_count": 1,
        "zero_threshold": 0.0,
        "positive_offset": -1,
        "positive_counts": [1, 2],
        "negative_offset": 3,
        "negative_counts": [1],
        "temporality": "delta",
    }
    plain = [
        parse_event("metrics", msgspec.json.encode(metric_event(i)), "acme", 7) for i in range(3)
    ]
    events = [*plain, histogram_event(1, explicit), histogram_event(2, exponential)]
    await append_clean(redis, namespace, "metrics", events)
    async with running_writer(settings, redis, [PostgresSink(pg_dsn, pg_schema)], ["metrics"]):
        await wait_acked(redis, namespace, "metrics")
    # delivered again (a DLQ replay, a resend after the dedupe window): still one row each
    await forget_seen(redis, namespace, "metrics", "acme", [e.id for e in events])
    await append_clean(redis, namespace, "metrics", events)
    async with running_writer(settings, redis, [PostgresSink(pg_dsn, pg_schema)], ["metrics"]):
        await wait_acked(redis, namespace, "metrics")

    conn = await asyncpg.connect(pg_dsn)
    try:
        metrics = await conn.fetchval(f'SELECT count(*) FROM "{pg_schema}".metrics')
        rows = {
            r["id"]: dict(r)
            for r in await conn.fetch(f'SELECT * FROM "{pg_schema}".metric_histograms')
        }
    finally:
        await conn.close()
    assert metrics == 3  # histogram points are not also rows of `metrics`
    assert set(rows) == {"hist-1", "hist-2"}
    first, second = rows["hist-1"], rows["hist-2"]
    assert (first["scheme"], first["temporality"], first["count"], first["sum"]) == (
        "explicit",
        "cumulative",
        6,
        3.5,
    )
    assert (first["min"], first["max"]) == (0.1, 2.0)
    assert first["bounds"] == [0.5, 1.0, 5.0] and first["bucket_counts"] == [2, 3, 1, 0]
    assert first["start_ts"] is not None and first["scale"] is None
    assert msgspec.json.decode(first["labels"]) == {"host": "h1"}
    assert (second["scheme"], second["scale"], second["zero_count"]) == ("exponential", 2, 1)
    assert (second["positive_offset"], second["positive_counts"]) == (-1, [1, 2])
    assert (second["negative_offset"], second["negative_counts"]) == (3, [1])
    assert second["bounds"] == [] and second["min"] is None
