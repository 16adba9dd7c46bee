"""Writers against real Redis, the ClickHouse engine (chdb) and PostgreSQL.

The only fakes are injected faults at the ClickHouse client boundary (an outage, a poison row).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, cast

import asyncpg
import clickhouse_connect
import msgspec
import redis.asyncio as aioredis
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from services.normalizer.normalize import to_clean_entry
from services.writer.app import Writer
from services.writer.rows import CLICKHOUSE_DDL, CLICKHOUSE_TABLES, INSERTED_AT
from services.writer.sinks import ClickHouseSink, PostgresSink, Sink
from shared.config import Settings
from shared.consumer import ensure_group
from shared.entries import StageCommit
from shared.events import parse_event
from shared.schemas import CleanEvent, GeoInfo, Kind, Log, Rum, Span, UserAgentInfo
from shared.streams import Keys, Streams, flatten_read, xrange
from tests.helpers import forget_seen, log_event, metric_event, rum_event, span_event, stored

FACTORIES: dict[Kind, Callable[..., dict[str, Any]]] = {
    "logs": log_event,
    "metrics": metric_event,
    "spans": span_event,
    "rum": rum_event,
}


def clean_events(kind: Kind, ids: range, **overrides: Any) -> list[CleanEvent]:
    return [
        parse_event(kind, msgspec.json.encode(FACTORIES[kind](i, **overrides)), "acme", 7)
        for i in ids
    ]


async def append_clean(
    redis: aioredis.Redis, namespace: str, kind: Kind, events: Sequence[CleanEvent]
) -> None:
    keys = Keys(namespace)
    # the normalizer's own hand-off script, with nothing to acknowledge upstream
    await Streams(redis, keys).commit(
        kind,
        "normalizers",
        "raw",
        StageCommit(acked=[], outputs=[to_clean_entry(e, kind) for e in events]),
        3600,
        1000,
    )


class FaultyClient:
    """Delegates to a real client; raises injected faults at the boundary."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.outage_calls = 0
        self.poison_marker = ""
        self.inserts = 0
        self.insert_bytes: list[int] = []

    def raw_insert(self, table: str, column_names: Any, insert_block: bytes, **kwargs: Any) -> Any:
        if self.outage_calls > 0:
            self.outage_calls -= 1
            raise OperationalError("injected: connection refused")
        if self.poison_marker and self.poison_marker.encode() in insert_block:
            raise DatabaseError("Code: 53. DB::Exception: injected: type mismatch (TYPE_MISMATCH)")
        self.inserts += 1
        self.insert_bytes.append(len(insert_block))
        return self.client.raw_insert(table, column_names, insert_block, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def clickhouse_sink(settings: Settings, faulty: FaultyClient | None = None) -> ClickHouseSink:
    def connect(dsn: str) -> Client:
        client = clickhouse_connect.get_client(dsn=dsn)
        if faulty is None:
            return client
        faulty.client = client
        return cast(Client, faulty)

    return ClickHouseSink(settings.clickhouse_dsn, settings.clickhouse_database, 0, connect=connect)


@contextlib.asynccontextmanager
async def running_writer(
    settings: Settings,
    redis: aioredis.Redis,
    sinks: Sequence[Sink],
    kinds: Sequence[Kind],
    consumer: str = "w1",
) -> AsyncIterator[Writer]:
    for sink in sinks:
        await sink.start()
    writer = Writer(settings, redis, sinks, kinds, consumer)
    task = asyncio.create_task(writer.run())
    try:
        yield writer
    finally:
        writer.stop()
        await asyncio.wait_for(task, timeout=15)
        for sink in sinks:
            await sink.close()


async def wait_acked(
    redis: aioredis.Redis, namespace: str, kind: Kind, within_s: float = 20
) -> None:
    stream = Keys(namespace).stream(kind, "clean")
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        groups = await redis.xinfo_groups(stream)
        if groups and groups[0]["pending"] == 0 and groups[0]["lag"] == 0:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{stream} not drained: {groups}"
        await asyncio.sleep(0.05)


async def count_rows(sink: ClickHouseSink, table: str) -> tuple[int, int]:
    out = await sink.query_json_lines(
        f"SELECT count() AS n, uniqExact(id) AS u FROM `{sink.database}`.{table}"
    )
    row = msgspec.json.decode(out.splitlines()[0])
    return int(row["n"]), int(row["u"])


async def test_clickhouse_kinds_are_written_once(
    redis: aioredis.Redis, settings: Settings, namespace: str
) -> None:
    sink = clickhouse_sink(settings)
    kinds: list[Kind] = ["logs", "spans", "rum"]
    for kind in kinds:
        await append_clean(redis, namespace, kind, clean_events(kind, range(300)))
    async with running_writer(settings, redis, [sink], kinds):
        for kind in kinds:
            await wait_acked(redis, namespace, kind)
        for table in ("logs", "spans", "rum_events"):
            assert await count_rows(sink, table) == (300, 300)
        out = await sink.query_json_lines(
            f"SELECT duration_ns, status, toUnixTimestamp64Nano(ts) AS ts "
            f"FROM `{settings.clickhouse_database}`.spans WHERE id = 'span-1'"
        )
        row = msgspec.json.decode(out)
        assert row["duration_ns"] == 1_000_000 and row["status"] == "ok"


async def test_every_column_round_trips_through_the_ingest_view(settings: Settings) -> None:
    """JSON rows through the Null table and its view land in the right columns, exactly."""
    sink = clickhouse_sink(settings)
    await sink.start()
    try:
        (log,), (span,), (rum,) = (
            clean_events(kind, range(1)) for kind in ("logs", "spans", "rum")
        )
        assert isinstance(log, Log) and isinstance(span, Span) and isinstance(rum, Rum)
        log = msgspec.structs.replace(
            log,
            message='caf\u00e9 \U0001f600 "quoted" \\ tab\t',
            attrs={"k": "v", "emoji": "\U0001f600"},
            geo=GeoInfo(country="GB", city="London", lat=51.507351234567891, lon=-0.127758),
        )
        rum = msgspec.structs.replace(
            rum,
            metrics={"lcp": 1234.5678901234567, "cls": 0.1},
            geo=GeoInfo(country="JP"),
            user_agent=UserAgentInfo("Firefox", "121.0", "Windows", "10", "Other"),
        )
        await sink.insert("logs", stored([log]), "t-logs")
        await sink.insert("spans", stored([span]), "t-spans")
        await sink.insert("rum", stored([rum]), "t-rum")
        db = settings.clickhouse_database
        exact_integers = " SETTINGS output_format_json_quote_64bit_integers=0"

        async def row(sql: str) -> dict[str, Any]:
            decoded: dict[str, Any] = msgspec.json.decode(
                await sink.query_json_lines(sql + exact_integers)
            )
            return decoded

        got = await row(
            "SELECT tenant, id, toUnixTimestamp64Nano(ts) AS ts, "
            "toUnixTimestamp64Nano(received_at) AS received_at, service, level, message, attrs, "
            f"trace_id, span_id, host, geo_country, geo_city, geo_lat, geo_lon FROM `{db}`.logs"
        )
        assert got == {
            "tenant": log.tenant,
            "id": log.id,
            "ts": log.ts,
            "received_at": log.received_at,
            "service": log.service,
            "level": log.level,
            "message": log.message,
            "attrs": log.attrs,
            "trace_id": log.trace_id,
            "span_id": log.span_id,
            "host": log.host,
            "geo_country": "GB",
            "geo_city": "London",
            "geo_lat": 51.507351234567891,
            "geo_lon": -0.127758,
        }
        got = await row(
            "SELECT toUnixTimestamp64Nano(ts) AS ts, toUnixTimestamp64Nano(end_ts) AS end_ts, "
            "duration_ns, trace_id, span_id, parent_span_id, service, name, kind, status, "
            f"status_message, attrs FROM `{db}`.spans"
        )
        assert got == {
            "ts": span.ts,
            "end_ts": span.end_ts,
            "duration_ns": span.duration_ns,
            "trace_id": span.trace_id,
            "span_id": span.span_id,
            "parent_span_id": span.parent_span_id,
            "service": span.service,
            "name": span.name,
            "kind": span.kind,
            "status": span.status,
            "status_message": span.status_message,
            "attrs": span.attrs,
        }
        got = await row(
            "SELECT session_id, type, url, referrer, user_id, metrics, error, attrs, geo_country, "
            "geo_city, geo_lat, geo_lon, browser, browser_version, os, os_version, device "
            f"FROM `{db}`.rum_events"
        )
        assert got == {
            "session_id": rum.session_id,
            "type": rum.type,
            "url": rum.url,
            "referrer": rum.referrer,
            "user_id": rum.user_id,
            "metrics": {"lcp": 1234.5678901234567, "cls": 0.1},
            "error": rum.error,
            "attrs": rum.attrs,
            "geo_country": "JP",
            "geo_city": "",
            "geo_lat": None,
            "geo_lon": None,
            "browser": "Firefox",
            "browser_version": "121.0",
            "os": "Windows",
            "os_version": "10",
            "device": "Other",
        }
        await sink.insert("logs", stored([log]), "t-logs")  # same token: deduplicated
        assert await count_rows(sink, "logs") == (1, 1)
    finally:
        await sink.close()


async def test_rows_record_when_they_were_inserted(settings: Settings) -> None:
    """Also for a table made before `inserted_at` existed: start() adds the column."""
    db = settings.clickhouse_database
    old_ddl = CLICKHOUSE_DDL["logs"].replace("    {inserted_at},\n", "")
    client = clickhouse_connect.get_client(dsn=settings.clickhouse_dsn)
    client.command(f"CREATE DATABASE IF NOT EXISTS `{db}`")
    client.command(old_ddl.format(db=f"`{db}`", ttl=""))
    client.close()
    sink = clickhouse_sink(settings)
    await sink.start()
    try:
        before = time.time()
        await sink.insert("logs", stored(clean_events("logs", range(3))), "t")
        after = time.time()
        out = await sink.query_json_lines(
            f"SELECT toUnixTimestamp64Milli(inserted_at) / 1000 AS at FROM `{db}`.logs"
        )
        stamps = [msgspec.json.decode(line)["at"] for line in out.splitlines()]
        assert len(stamps) == 3
        assert all(before - 0.01 <= at <= after + 0.01 for at in stamps)
    finally:
        await sink.close()


async def test_tables_made_with_low_cardinality_map_keys_still_fill(settings: Settings) -> None:
    """Tables made before Map keys became plain String keep their type and take the same rows."""
    db = settings.clickhouse_database
    kinds: tuple[Kind, ...] = ("logs", "rum")
    client = clickhouse_connect.get_client(dsn=settings.clickhouse_dsn)
    client.command(f"CREATE DATABASE IF NOT EXISTS `{db}`")
    for kind in kinds:
        old_ddl = re.sub(
            r"Map\(String, (\w+)\)", r"Map(LowCardinality(String), \1)", CLICKHOUSE_DDL[kind]
        )
        assert old_ddl != CLICKHOUSE_DDL[kind]
        client.command(old_ddl.format(db=f"`{db}`", ttl="", inserted_at=INSERTED_AT))
    client.close()
    sink = clickhouse_sink(settings)
    await sink.start()
    try:
        for kind in kinds:
            events = clean_events(kind, range(3), attrs={"region": "eu-west-1"})
            await sink.insert(kind, stored(events), f"t-{kind}")
            table = CLICKHOUSE_TABLES[kind]
            out = await sink.query_json_lines(
                f"SELECT id, attrs, toTypeName(attrs) AS type FROM `{db}`.{table} ORDER BY id"
            )
            rows = [msgspec.json.decode(line) for line in out.splitlines()]
            assert [(r["id"], r["attrs"]) for r in rows] == sorted((e.id, e.attrs) for e in events)
            assert {r["type"] for r in rows} == {"Map(LowCardinality(String), String)"}
    finally:
        await sink.close()


async def test_metrics_go_to_postgres_once_even_when_redelivered(
    redis: aioredis.Redis, settings: Settings, namespace: str, pg_schema: str, pg_dsn: str
) -> None:
    events = clean_events("metrics", range(500))
    await append_clean(redis, namespace, "metrics", events)
    sink = PostgresSink(pg_dsn, pg_schema)
    async with running_writer(settings, redis, [sink], ["metrics"]):
        await wait_acked(redis, namespace, "metrics")
    # the same events arrive again as new clean entries (e.g. replayed from the DLQ)
    await forget_seen(redis, namespace, "metrics", "acme", [e.id for e in events[:100]])
    await append_clean(redis, namespace, "metrics", events[:100])
    sink = PostgresSink(pg_dsn, pg_schema)
    async with running_writer(settings, redis, [sink], ["metrics"]):
        await wait_acked(redis, namespace, "metrics")
    conn = await asyncpg.connect(pg_dsn)
    try:
        total, unique = await conn.fetchrow(
            f'SELECT count(*), count(DISTINCT id) FROM "{pg_schema}".metrics'
        )
        labels = await conn.fetchval(
            f"SELECT labels->>'host' FROM \"{pg_schema}\".metrics WHERE id = 'metric-4'"
        )
        view = await conn.fetchval(f'SELECT sum(samples) FROM "{pg_schema}".metrics_1m')
    finally:
        await conn.close()
    assert (total, unique) == (500, 500)
    assert labels == "h1"
    assert view == 500


async def test_redelivered_batch_after_crash_is_not_duplicated(
    redis: aioredis.Redis, settings: Settings, namespace: str
) -> None:
    keys = Keys(namespace)
    stream = keys.stream("logs", "clean")
    events = clean_events("logs", range(200))
    await append_clean(redis, namespace, "logs", events)
    await ensure_group(redis, stream, "writers")
    # a writer read all entries and inserted half of them, then was SIGKILLed before XACK
    taken = flatten_read(await redis.xreadgroup("writers", "w1-logs-0", {stream: ">"}, count=500))
    assert len(taken) == 200
    sink = clickhouse_sink(settings)
    await sink.start()
    await sink.insert("logs", stored(events[:100]), "crashed-batch")
    # the restarted writer (same consumer name) re-reads its pending entries first
    async with running_writer(settings, redis, [sink], ["logs"]):
        await wait_acked(redis, namespace, "logs")
        assert await count_rows(sink, "logs") == (200, 200)


async def test_outage_keeps_entries_pending_then_drains(
    redis: aioredis.Redis, settings: Settings, namespace: str
) -> None:
    keys = Keys(namespace)
    faulty = FaultyClient(cast(Client, None))
    faulty.outage_calls = 4
    sink = clickhouse_sink(settings, faulty)
    await append_clean(redis, namespace, "logs", clean_events("logs", range(100)))
    async with running_writer(settings, redis, [sink], ["logs"]):
        await asyncio.sleep(0.3)
        groups = await redis.xinfo_groups(keys.stream("logs", "clean"))
        assert groups[0]["pending"] > 0  # held, not acknowledged, during the outage
        await wait_acked(redis, namespace, "logs")
        assert await count_rows(sink, "logs") == (100, 100)
    assert faulty.outage_calls == 0


async def test_rejected_rows_go_to_dlq_without_blocking_the_batch(
    redis: aioredis.Redis, settings: Settings, namespace: str
) -> None:
    keys = Keys(namespace)
    faulty = FaultyClient(cast(Client, None))
    faulty.poison_marker = "POISON"
    sink = clickhouse_sink(settings, faulty)
    events = clean_events("logs", range(64))
    poison = clean_events("logs", range(1000, 1002), message="POISON row")
    await append_clean(
        redis, namespace, "logs", events[:30] + poison[:1] + events[30:] + poison[1:]
    )
    async with running_writer(settings, redis, [sink], ["logs"]):
        await wait_acked(redis, namespace, "logs")
        assert await count_rows(sink, "logs") == (64, 64)
    letters = await xrange(redis, keys.stream("logs", "dlq"))
    assert sorted(f[b"id"] for _, f in letters) == [b"log-1000", b"log-1001"]
    assert all(b"TYPE_MISMATCH" in f[b"reason"] and f[b"stage"] == b"writer" for _, f in letters)


async def test_a_burst_ends_without_waiting_out_the_batch_age(
    redis: aioredis.Redis, settings: Settings, namespace: str
) -> None:
    """After full batches, the rest is stored once the stream goes quiet; a small batch on a
    slow stream still waits for its age, so a trickle does not become one insert per event."""
    tuned = msgspec.structs.replace(
        settings, writer_batch_size=100, writer_batch_age_ms=6000, writer_consumers=1
    )
    keys = Keys(namespace)
    faulty = FaultyClient(cast(Client, None))
    sink = clickhouse_sink(tuned, faulty)
    await append_clean(redis, namespace, "logs", clean_events("logs", range(250)))
    async with running_writer(tuned, redis, [sink], ["logs"]):
        started = time.monotonic()
        await wait_acked(redis, namespace, "logs")
        assert time.monotonic() - started < 3  # far below the 6 s age
        assert faulty.inserts == 3  # 100, 100, then the last 50
        await append_clean(redis, namespace, "logs", clean_events("logs", range(300, 305)))
        await asyncio.sleep(1.5)
        groups = await redis.xinfo_groups(keys.stream("logs", "clean"))
        assert groups[0]["pending"] == 5  # 5 of 100, after a batch that was not full: the age
        await wait_acked(redis, namespace, "logs")
        assert await count_rows(sink, "logs") == (255, 255)
    assert faulty.inserts == 4


async def test_a_kinds_consumers_take_turns_to_collect(
    redis: aioredis.Redis, settings: Settings, namespace: str
) -> None:
    """A trickle is one batch, not a share for each of a kind's consumers: the engine's cost per
    insert would be paid once per share."""
    tuned = msgspec.structs.replace(
        settings, writer_batch_size=1000, writer_batch_age_ms=3000, writer_consumers=2
    )
    faulty = FaultyClient(cast(Client, None))
    sink = clickhouse_sink(tuned, faulty)
    async with running_writer(tuned, redis, [sink], ["logs"]):
        await asyncio.sleep(0.3)  # the consumers have started: one reads, the other waits its turn
        for chunk in range(10):
            ids = range(5 * chunk, 5 * chunk + 5)
            await append_clean(redis, namespace, "logs", clean_events("logs", ids))
            await asyncio.sleep(0.05)
        await wait_acked(redis, namespace, "logs")
        assert await count_rows(sink, "logs") == (50, 50)
    assert faulty.inserts == 1


async def test_large_entries_close_a_batch_at_its_bytes(
    redis: aioredis.Redis, settings: Settings, namespace: str
) -> None:
    """A batch of large events stops at `writer_batch_bytes`, far below its entry count."""
    budget = 64 * 1024
    tuned = msgspec.structs.replace(settings, writer_batch_bytes=budget, writer_consumers=1)
    faulty = FaultyClient(cast(Client, None))
    sink = clickhouse_sink(tuned, faulty)
    await append_clean(
        redis, namespace, "logs", clean_events("logs", range(100), message="m" * 8000)
    )
    async with running_writer(tuned, redis, [sink], ["logs"]):
        await wait_acked(redis, namespace, "logs")
        assert await count_rows(sink, "logs") == (100, 100)
    assert faulty.inserts >= 100 * 8000 // budget
    assert max(faulty.insert_bytes) <= budget
