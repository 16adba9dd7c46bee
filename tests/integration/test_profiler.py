"""Profiles against real Redis and the ClickHouse engine (chdb): gateway -> profiler -> writer ->
tables -> reports, in-process.

The only fakes are injected faults at the ClickHouse client boundary (a failure between two
tables of one batch) and the clock where windows are under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final, cast

import clickhouse_connect
import httpx
import msgspec
import pytest
import redis.asyncio as aioredis
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from redis.typing import EncodableT, FieldT

from rivulet_cli import ops
from services.gateway.app import Gateway
from services.profiler import report
from services.profiler.app import Profiler, limits_of, process_batch
from services.profiler.pprof import parse_profile
from services.profiler.records import profile_id, to_clean_profile
from services.profiler.selection import Selection, Window
from services.profiler.store import ProfileStore
from services.profiler.synth import ProfileBuilder, cpu_example, random_example
from services.writer.app import Writer
from services.writer.sinks import ClickHouseSink, RetryableSinkError
from shared.config import Settings
from shared.consumer import ensure_group
from shared.entries import delivery_of
from shared.profile_streams import (
    PROFILER_GROUP,
    FieldsCommit,
    ProfileStreams,
    clean_profile_entry,
    decode_clean_profile,
    decode_raw_profile,
)
from shared.schemas import PROFILES, ApiKey, RawProfileEntry
from shared.streams import Keys, flatten_read, xrange
from tests.helpers import make_key, signed_request_headers

PEER: Final = "203.0.113.9"
MS: Final = 1_000_000
TRIM: Final[dict[str, Any]] = {"nodecount": 20, "nodefraction": 0.05, "edgefraction": 0.01}


# --- harness ------------------------------------------------------------------------------------


def http_client(gateway: Gateway) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=gateway, client=(PEER, 1234))
    return httpx.AsyncClient(transport=transport, base_url="http://gw")


@pytest.fixture
async def key(redis: aioredis.Redis, namespace: str) -> ApiKey:
    return await make_key(redis, namespace)


async def post_profile(
    client: httpx.AsyncClient,
    key: ApiKey,
    body: bytes,
    query: str = "service=api&type=cpu",
    *,
    content_type: str = "application/octet-stream",
    extra: dict[str, str] | None = None,
) -> httpx.Response:
    path = f"/v1/ingest/profiles?{query}"
    headers = signed_request_headers(key, path, body, content_type=content_type, extra=extra)
    return await client.post(path, content=body, headers=headers)


async def raw_profiles(redis: aioredis.Redis, namespace: str) -> list[dict[bytes, bytes]]:
    return [f for _, f in await xrange(redis, Keys(namespace).stream(PROFILES, "raw"))]


async def run_profiler_once(redis: aioredis.Redis, settings: Settings) -> FieldsCommit:
    """One read + commit of the profiler's own loop body, as a consumer `p1`."""
    keys = Keys(settings.namespace)
    raw = keys.stream(PROFILES, "raw")
    await ensure_group(redis, raw, PROFILER_GROUP)
    reply = await redis.xreadgroup(PROFILER_GROUP, "p1", {raw: ">"}, count=1000)
    deliveries = [delivery_of(i, f) for i, f in flatten_read(reply)]
    batch = process_batch(deliveries, limits_of(settings), settings.max_deliveries)
    await ProfileStreams(redis, keys).commit(
        PROFILER_GROUP, batch, settings.dedupe_window_s, settings.dlq_maxlen
    )
    return batch


class FaultyClient:
    """Delegates to a real client; fails the insert into one table `fail_table` times."""

    def __init__(self) -> None:
        self.client: Client | None = None
        self.fail_table = ""
        self.failures = 0

    def insert(self, table: str, data: Sequence[Sequence[Any]], **kwargs: Any) -> Any:
        if self.failures > 0 and table.endswith(f".{self.fail_table}"):
            self.failures -= 1
            raise OperationalError("injected: connection reset during insert")
        assert self.client is not None
        return self.client.insert(table, data, **kwargs)

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
    settings: Settings, redis: aioredis.Redis, sink: ClickHouseSink, consumer: str = "w1"
) -> AsyncIterator[Writer]:
    await sink.start()
    writer = Writer(settings, redis, [sink], [PROFILES], consumer)
    task = asyncio.create_task(writer.run())
    try:
        yield writer
    finally:
        writer.stop()
        await asyncio.wait_for(task, timeout=15)


async def wait_clean_acked(redis: aioredis.Redis, namespace: str, within_s: float = 30) -> None:
    stream = Keys(namespace).stream(PROFILES, "clean")
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        groups = await redis.xinfo_groups(stream)
        if groups and groups[0]["pending"] == 0 and groups[0]["lag"] == 0:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{stream} not drained: {groups}"
        await asyncio.sleep(0.05)


async def rows(sink: ClickHouseSink, sql: str) -> list[dict[str, Any]]:
    out = await sink.query_json_lines(sql.format(db=f"`{sink.database}`"))
    return [msgspec.json.decode(line) for line in out.splitlines() if line]


async def append_clean(redis: aioredis.Redis, settings: Settings, bodies: list[bytes]) -> None:
    """Clean entries as the profiler writes them, for profiles of tenant acme / service api."""
    outputs = []
    for i, body in enumerate(bodies):
        entry = RawProfileEntry(
            tenant="acme",
            id=profile_id("acme", body),
            received_at=1_700_000_000_000_000_000 + i,
            service="api",
            type="cpu",
            body=body,
        )
        outputs.append(clean_profile_entry(to_clean_profile(entry, parse_profile(body))))
    await ProfileStreams(redis, Keys(settings.namespace)).commit(
        "none", FieldsCommit(acked=[], outputs=outputs), 3600, 1000
    )


# --- gateway --------------------------------------------------------------------------------------


async def test_gateway_appends_one_raw_entry_per_profile(
    settings: Settings, redis: aioredis.Redis, namespace: str, key: ApiKey
) -> None:
    plain = cpu_example().encode()
    zipped = cpu_example(2).encode(gzipped=True)
    async with http_client(Gateway(settings, redis)) as client:
        first = await post_profile(client, key, plain, "service=api&type=cpu&env=prod&zone=b")
        assert first.status_code == 202, first.text
        assert first.json() == {
            "accepted": 1,
            "duplicates": 0,
            "rejected": [],
            "id": profile_id("acme", plain),
        }
        second = await post_profile(
            client, key, zipped, "service=api&type=cpu&id=client-1", content_type=""
        )
        assert second.json()["id"] == "client-1"
        # transport gzip over a plain protobuf: stored as sent (it is a gzipped protobuf)
        wrapped = gzip.compress(cpu_example(3).encode())
        third = await post_profile(
            client, key, wrapped, "service=api&type=cpu", extra={"Content-Encoding": "gzip"}
        )
        assert third.status_code == 202, third.text

    entries = await raw_profiles(redis, namespace)
    assert len(entries) == 3
    fields = entries[0]
    assert {k.decode() for k in fields} == {
        "tenant", "kind", "id", "received_at", "service", "type", "size", "labels", "body",
        "ip", "ua",
    }  # fmt: skip
    assert fields[b"kind"] == b"profiles" and fields[b"service"] == b"api"
    assert fields[b"type"] == b"cpu" and fields[b"size"] == str(len(plain)).encode()
    assert fields[b"body"] == plain and fields[b"ip"] == PEER.encode()
    entry = decode_raw_profile(fields)
    assert entry.labels == {"env": "prod", "zone": "b"}
    assert entry.id == hashlib.sha256(b"acme\0" + plain).hexdigest()[:32]
    assert decode_raw_profile(entries[1]).body == zipped
    assert decode_raw_profile(entries[2]).body == wrapped

    # once the profiler has committed it, a resend is a duplicate
    await run_profiler_once(redis, settings)
    async with http_client(Gateway(settings, redis)) as client:
        again = await post_profile(client, key, plain, "service=api&type=cpu")
    assert again.status_code == 202
    assert (again.json()["accepted"], again.json()["duplicates"]) == (0, 1)
    assert len(await raw_profiles(redis, namespace)) == 3


async def test_gateway_refuses_bad_profiles_and_appends_nothing(
    settings: Settings, redis: aioredis.Redis, namespace: str, key: ApiKey
) -> None:
    settings = msgspec.structs.replace(
        settings, max_profile_bytes=64 * 1024, max_profile_decoded_bytes=256 * 1024
    )
    valid = cpu_example().encode()
    dangling = ProfileBuilder([("samples", "count")])
    dangling.add(["main"], [1])
    dangling.msg.sample[0].location_id.append(99)
    deep = ProfileBuilder([("samples", "count")])
    deep.add([f"f{i}" for i in range(settings.max_profile_stack_depth + 1)], [1])
    bomb = gzip.compress(b"\0" * (10 * 1024 * 1024))
    cases: list[tuple[bytes, str, dict[str, str], int, str]] = [
        (valid, "type=cpu", {}, 400, "service"),
        (valid, "service=api", {}, 400, "type"),
        (valid, "service=api&type=cpu&bad%20key=1", {}, 400, "label name"),
        (valid, "service=api&type=cpu&service=x", {}, 400, "twice"),
        (b"\x00" * (65 * 1024), "service=api&type=cpu", {}, 413, "larger than"),
        (bomb, "service=api&type=cpu", {}, 413, "larger than"),
        (valid, "service=api&type=cpu", {"Content-Type": "application/json"}, 415, "content"),
        (b"not a protobuf \xff\xff", "service=api&type=cpu", {}, 422, "invalid profile"),
        (valid[: len(valid) // 2], "service=api&type=cpu", {}, 422, "invalid profile"),
        (dangling.encode(), "service=api&type=cpu", {}, 422, "missing location 99"),
        (deep.encode(), "service=api&type=cpu", {}, 422, "frames deep"),
        (gzip.compress(valid)[:-9], "service=api&type=cpu", {}, 422, "gzip"),
        (b"", "service=api&type=cpu", {}, 422, "empty"),
    ]
    async with http_client(Gateway(settings, redis)) as client:
        for body, query, headers, status, reason in cases:
            content_type = headers.pop("Content-Type", "application/octet-stream")
            response = await post_profile(
                client, key, body, query, content_type=content_type, extra=headers
            )
            assert response.status_code == status, (query, response.text)
            assert reason in response.json()["error"], response.text
    assert await raw_profiles(redis, namespace) == []


# --- profiler -------------------------------------------------------------------------------------


async def test_profiler_outputs_one_clean_entry_or_one_dead_letter_per_raw_entry(
    settings: Settings, redis: aioredis.Redis, namespace: str
) -> None:
    keys = Keys(namespace)
    raw = keys.stream(PROFILES, "raw")
    good = cpu_example().encode(gzipped=True)
    fields: dict[FieldT, EncodableT] = {
        "tenant": "acme",
        "kind": "profiles",
        "id": "p-1",
        "received_at": "1700000000000000000",
        "service": "api",
        "type": "cpu",
        "labels": '{"env":"prod"}',
        "body": good,
    }
    await redis.xadd(raw, fields)
    await redis.xadd(raw, {**fields, "id": "p-1"})  # the same profile appended twice
    await redis.xadd(raw, {**fields, "id": "p-2", "body": b"\x0a\xff garbage"})
    await redis.xadd(raw, {**fields, "id": "p-3", "tenant": ""})  # not what a gateway writes
    batch = await run_profiler_once(redis, settings)
    assert [o.id for o in batch.outputs] == ["p-1", "p-1"]
    await redis.xadd(raw, {**fields, "id": "p-4"})  # over the profiler's own (lowered) limit
    small = msgspec.structs.replace(settings, max_profile_samples=2)
    assert (await run_profiler_once(redis, small)).outputs == []
    clean = await xrange(redis, keys.stream(PROFILES, "clean"))
    assert len(clean) == 1, "one clean entry per (tenant, id) within the dedupe window"
    [(_, entry)] = clean
    assert entry[b"service"] == b"api" and entry[b"samples"] == b"5"
    assert entry[b"sample_types"] == b"samples/count,cpu/nanoseconds"
    letters = {f[b"id"]: f for _, f in await xrange(redis, keys.stream(PROFILES, "dlq"))}
    assert set(letters) == {b"p-2", b"p-3", b"p-4"}
    assert letters[b"p-2"][b"reason"].startswith(b"invalid profile: not a valid pprof")
    assert letters[b"p-3"][b"reason"] == b"malformed raw entry: no tenant"
    assert b"more than the limit of 2" in letters[b"p-4"][b"reason"]
    assert letters[b"p-4"][b"stage"] == b"profiler" and letters[b"p-4"][b"body"] == good
    assert letters[b"p-4"][b"service"] == b"api" and letters[b"p-4"][b"labels"] == b'{"env":"prod"}'
    groups = await redis.xinfo_groups(raw)
    assert groups[0]["pending"] == 0 and groups[0]["lag"] == 0


async def test_profiler_worker_replicas_share_the_stream(
    settings: Settings, redis: aioredis.Redis, namespace: str
) -> None:
    keys = Keys(namespace)
    raw = keys.stream(PROFILES, "raw")
    bodies = [random_example(i, stacks=20, samples=50).encode() for i in range(12)]
    for i, body in enumerate(bodies):
        await redis.xadd(
            raw,
            {
                "tenant": "acme",
                "kind": "profiles",
                "id": f"p-{i % 10}",  # two resends
                "received_at": str(1_700_000_000_000_000_000 + i),
                "service": "api",
                "type": "cpu",
                "body": body,
            },
        )
    replicas = [Profiler(settings, redis, f"p{n}") for n in range(2)]
    tasks = [asyncio.create_task(p.run()) for p in replicas]
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while sum(p.decoded for p in replicas) < 12:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
    finally:
        for p in replicas:
            p.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
    clean = await xrange(redis, keys.stream(PROFILES, "clean"))
    assert sorted(f[b"id"] for _, f in clean) == sorted(f"p-{i}".encode() for i in range(10))


# --- writer ---------------------------------------------------------------------------------------


async def test_writer_stores_each_profile_once_with_all_its_samples(
    settings: Settings, redis: aioredis.Redis, namespace: str
) -> None:
    bodies = [random_example(i, stacks=30, samples=200).encode() for i in range(6)]
    await append_clean(redis, settings, bodies)
    await append_clean(redis, settings, bodies[:2])  # deduped by the seen markers
    faulty = FaultyClient()
    faulty.fail_table, faulty.failures = "profiles", 2  # samples stored, profile rows not yet
    sink = clickhouse_sink(settings, faulty)
    async with running_writer(settings, redis, sink):
        await wait_clean_acked(redis, namespace)
    sink = clickhouse_sink(settings)
    await sink.start()
    try:
        [counts] = await rows(
            sink,
            "SELECT count() AS n, uniqExact(tenant, id) AS u, sum(samples) AS s FROM {db}.profiles",
        )
        assert (int(counts["n"]), int(counts["u"])) == (6, 6)
        expected: dict[str, int] = {}
        for body in bodies:
            parsed = parse_profile(body)
            expected[profile_id("acme", body)] = sum(s.values[1] for s in parsed.samples)
        stored = await rows(
            sink,
            "SELECT profile_id, toString(sum(value)) AS v, count() AS n FROM {db}.profile_samples "
            "WHERE sample_type = 'cpu' GROUP BY profile_id",
        )
        assert {r["profile_id"]: int(r["v"]) for r in stored} == expected
        # the same clean entries again (a replay after the dedupe window): nothing doubles
        keys = Keys(namespace)
        await redis.delete(*[keys.seen(PROFILES, "acme", profile_id("acme", b)) for b in bodies])
        await append_clean(redis, settings, bodies)
        async with running_writer(settings, redis, sink, consumer="w2"):
            await wait_clean_acked(redis, namespace)
        again = await rows(
            sink,
            "SELECT profile_id, toString(sum(value)) AS v, count() AS n FROM {db}.profile_samples "
            "WHERE sample_type = 'cpu' GROUP BY profile_id",
        )
        assert again == stored
        [counts] = await rows(sink, "SELECT count() AS n FROM {db}.profiles")
        assert int(counts["n"]) == 6
    finally:
        await sink.close()


async def test_a_retry_after_a_partial_insert_completes_the_samples(settings: Settings) -> None:
    body = random_example(42, stacks=40, samples=300).encode()
    entry = RawProfileEntry("acme", profile_id("acme", body), 1, "api", "cpu", body)
    record = to_clean_profile(entry, parse_profile(body))
    faulty = FaultyClient()
    sink = clickhouse_sink(settings, faulty)
    await sink.start()
    try:
        # an attempt stored a part of the samples, then the connection dropped before the row
        part = msgspec.structs.replace(record, stacks=record.stacks[:15], values=record.values[:15])
        faulty.fail_table, faulty.failures = "profiles", 1
        with pytest.raises(RetryableSinkError):
            await sink.insert_profiles([part], recheck=False)
        assert await sink.existing_profile_ids([record]) == set()
        await sink.insert_profiles([record], recheck=True)
        assert await sink.existing_profile_ids([record]) == {("acme", record.id)}
        [stored] = await rows(
            sink,
            "SELECT count() AS n, uniqExact(sample_type, stack_hash) AS u, "
            "toString(sumIf(value, sample_type = 'cpu')) AS cpu FROM {db}.profile_samples",
        )
        expected_rows = sum(1 for values in record.values for v in values if v != 0)
        assert (int(stored["n"]), int(stored["u"])) == (expected_rows, expected_rows)
        assert int(stored["cpu"]) == sum(v[1] for v in record.values)
    finally:
        await sink.close()


# --- reports from the store -----------------------------------------------------------------------


async def test_reports_from_the_store_equal_reports_of_the_profiles(
    settings: Settings, redis: aioredis.Redis, namespace: str
) -> None:
    hour = 3600 * 10**9
    now = 1_800_000_000 * 10**9
    bodies = [
        cpu_example(1, time_nanos=now - 2 * hour).encode(),
        cpu_example(2, time_nanos=now - 2 * hour + 1, extra="main.old").encode(),
        cpu_example(3, time_nanos=now - 10 * 60 * 10**9, extra="main.new").encode(gzipped=True),
        random_example(7, time_nanos=now - 5 * 60 * 10**9).encode(),
    ]
    await append_clean(redis, settings, bodies)
    sink = clickhouse_sink(settings)
    async with running_writer(settings, redis, sink):
        await wait_clean_acked(redis, namespace)
    sink = clickhouse_sink(settings)
    store = ProfileStore(sink.query_json_lines, settings.clickhouse_database)
    parsed = [parse_profile(b) for b in bodies]
    try:
        # one profile by id, every report option
        for i, p in enumerate(parsed):
            sel = Selection(profile_id=profile_id("acme", bodies[i]))
            for options in (
                {},
                {"sort_by_cum": True},
                {"noinlines": True},
                {"granularity": "filefunctions"},
            ):
                stored, _ = await store.load(sel, None)
                assert report.format_top(report.top(stored, **options), **TRIM) == (
                    report.format_top(report.top(p, **options), **TRIM)
                )
            stored, _ = await store.load(sel, "samples")
            assert report.folded(stored) == report.folded(p, "samples")
        # a window: the last hour holds profiles 2 and 3, merged by summing
        last_hour = Selection(tenant="acme", service="api", window=Window(now - hour, now))
        stored, metas = await store.load(last_hour, None)
        assert len(metas) == 2
        assert report.format_top(report.top(stored)) == report.format_top(report.top(parsed[2:]))
        assert report.flamegraph_svg(stored) == report.flamegraph_svg(parsed[2:])
        # diff between two windows
        before = Selection(service="api", window=Window(now - 3 * hour, now - hour))
        base, _ = await store.load(before, None)
        assert report.diff(base, stored) == report.diff(parsed[:2], parsed[2:])
        # another tenant sees nothing
        with pytest.raises(LookupError):
            await store.load(Selection(tenant="other", service="api"), None)
    finally:
        await sink.close()


async def test_reports_between_inserts_leave_the_writer_session_writable(
    settings: Settings,
) -> None:
    """With chdb a query's `readonly=1` sticks to its session, and a refused multi-statement leaves
    output behind: read-only queries run in a session of their own, discarded on failure."""
    sink = clickhouse_sink(settings)
    await sink.start()
    try:
        body = cpu_example().encode()
        entry = RawProfileEntry("acme", profile_id("acme", body), 1, "api", "cpu", body)
        record = to_clean_profile(entry, parse_profile(body))
        assert await sink.query_json_lines("SELECT 1 AS one") == b'{"one":1}\n'
        await sink.insert_profiles([record], recheck=False)  # still writable after a query
        with pytest.raises(DatabaseError):
            await sink.query_json_lines(f"SELECT 1; DROP TABLE `{sink.database}`.profiles")
        assert await sink.query_json_lines("SELECT 42 AS answer") == b'{"answer":42}\n'
        [row] = await rows(sink, "SELECT count() AS n FROM {db}.profiles")
        assert int(row["n"]) == 1
    finally:
        await sink.close()


async def test_dead_letters_replay_to_the_profiler_with_their_fields(
    settings: Settings, redis: aioredis.Redis, namespace: str
) -> None:
    """A profile refused under a lowered limit is re-driven by `rivulet dlq replay profiles`
    once the limit is raised: the letter kept service, type and labels."""
    keys = Keys(namespace)
    body = cpu_example().encode(gzipped=True)
    await redis.xadd(
        keys.stream(PROFILES, "raw"),
        {
            "tenant": "acme",
            "kind": "profiles",
            "id": "p-9",
            "received_at": "1700000000000000000",
            "service": "api",
            "type": "cpu",
            "labels": '{"env":"prod"}',
            "body": body,
        },
    )
    await run_profiler_once(redis, msgspec.structs.replace(settings, max_profile_samples=1))
    assert await redis.xlen(keys.stream(PROFILES, "dlq")) == 1
    assert await ops.dlq_replay(redis, keys, PROFILES, []) == 1
    batch = await run_profiler_once(redis, settings)
    assert [o.id for o in batch.outputs] == ["p-9"] and batch.dead_letters == []
    [(_, clean)] = await xrange(redis, keys.stream(PROFILES, "clean"))
    record = decode_clean_profile(clean)
    assert (record.service, record.type, record.labels) == ("api", "cpu", {"env": "prod"})
    assert record.pprof == body


async def test_a_long_decode_keeps_its_entries_from_other_replicas(
    settings: Settings, redis: aioredis.Redis, namespace: str
) -> None:
    """A batch that takes longer than `claim_idle_ms` to decode is not claimed and decoded
    again by another replica: the decoding one keeps refreshing its claim."""
    # Decoding takes ~1.8 s here, far longer than the claim window; the window itself is wide
    # enough (refreshed every 333 ms) that a loaded CI machine's scheduling hiccups fit in it.
    settings = msgspec.structs.replace(settings, claim_idle_ms=1000, profiler_batch=1)
    big = random_example(5, stacks=400, samples=400_000).encode(gzipped=True)
    await redis.xadd(
        Keys(namespace).stream(PROFILES, "raw"),
        {
            "tenant": "acme",
            "kind": "profiles",
            "id": "big",
            "received_at": "1700000000000000000",
            "service": "api",
            "type": "cpu",
            "body": big,
        },
    )
    first = Profiler(settings, redis, "p1")
    first_task = asyncio.create_task(first.run())
    await asyncio.sleep(0.3)  # p1 holds the entry and is decoding it
    second = Profiler(settings, redis, "p2")
    second_task = asyncio.create_task(second.run())
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while first.decoded + second.decoded < 1:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # room for a (wrong) second decode to finish
    finally:
        for p in (first, second):
            p.stop()
        await asyncio.wait_for(asyncio.gather(first_task, second_task), 60)
    assert (first.decoded, second.decoded) == (1, 0)
    assert await redis.xlen(Keys(namespace).stream(PROFILES, "clean")) == 1
