"""Normalizer against real Redis: hand-off, dedupe, DLQ, replicas, crash claims, trimming."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import msgspec
import pytest
import redis.asyncio as aioredis

from services.normalizer.app import Normalizer
from services.normalizer.enrich import MaxMindCityLookup, UserAgentParser, no_geo
from services.normalizer.normalize import Enrichment, to_clean_entry
from shared.config import Settings
from shared.consumer import ensure_group
from shared.entries import StageCommit
from shared.events import parse_event
from shared.schemas import CleanEntry, Kind, Log, Rum
from shared.streams import (
    PURGE_STEP,
    UPGRADE_GRACE_MS,
    Keys,
    Streams,
    connect,
    flatten_read,
    xrange,
)
from tests.helpers import log_event, rum_event
from tests.servers import unavailable

CHROME_LINUX = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)


async def append_raw(
    redis: aioredis.Redis,
    keys: Keys,
    kind: Kind,
    bodies: Sequence[bytes],
    *,
    tenant: str = "acme",
    ip: str = "",
    ua: str = "",
) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for i, body in enumerate(bodies):
            pipe.xadd(
                keys.stream(kind, "raw"),
                {
                    "tenant": tenant,
                    "kind": kind,
                    "id": "",
                    "received_at": str(1000 + i),
                    "body": body,
                    "ip": ip,
                    "ua": ua,
                },
            )
        await pipe.execute()


@contextlib.asynccontextmanager
async def running(*workers: Normalizer) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        yield
    finally:
        for worker in workers:
            worker.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)


async def wait_for_len(redis: aioredis.Redis, stream: str, n: int, within_s: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while await redis.xlen(stream) < n:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{stream} has {await redis.xlen(stream)} entries, wanted {n}")
        await asyncio.sleep(0.05)


def enrichment() -> Enrichment:
    return Enrichment(geo=no_geo, user_agent=UserAgentParser())


def normalizer(
    settings: Settings, redis: aioredis.Redis, consumer: str, kinds: Sequence[Kind] = ("logs",)
) -> Normalizer:
    return Normalizer(settings, redis, kinds, consumer, enrichment())


def clean_log(tenant: str, event_id: str) -> CleanEntry:
    event = parse_event("logs", msgspec.json.encode(log_event(1, id=event_id)), tenant, 7)
    return to_clean_entry(event, "logs")


async def commit(streams: Streams, outputs: Sequence[CleanEntry]) -> tuple[int, int]:
    """The normalizer's commit of `outputs` (nothing to acknowledge): (added, duplicates)."""
    return await streams.commit("logs", "normalizers", "raw", StageCommit([], outputs), 60, 10)


async def test_clean_entries_are_scrubbed_and_deduped(
    redis: aioredis.Redis, settings: Settings, namespace: str
) -> None:
    keys = Keys(namespace)
    events = [
        log_event(1, message="mail jane@example.com", id="a"),
        log_event(2, id="b"),
        log_event(1, message="mail jane@example.com", id="a"),  # resent
    ]
    await append_raw(redis, keys, "logs", [msgspec.json.encode(e) for e in events])
    async with running(normalizer(settings, redis, "n1")):
        await wait_for_len(redis, keys.stream("logs", "clean"), 2)
        await asyncio.sleep(0.3)
    clean = await xrange(redis, keys.stream("logs", "clean"))
    assert len(clean) == 2
    first = msgspec.json.decode(clean[0][1][b"body"], type=Log)
    assert first.message == "mail <email>"
    assert first.id == "a" and first.tenant == "acme" and first.received_at == 1000
    info = await redis.xinfo_groups(keys.stream("logs", "raw"))
    assert info[0]["pending"] == 0


async def test_dedupe_marker_lives_for_the_window(
    redis: aioredis.Redis, settings: Settings, namespace: str
) -> None:
    keys = Keys(namespace)
    window_s = 3600
    await append_raw(redis, keys, "logs", [msgspec.json.encode(log_event(1, id="a"))])
    async with running(
        normalizer(msgspec.structs.replace(settings, dedupe_window_s=window_s), redis, "n1")
    ):
        await wait_for_len(redis, keys.stream("logs", "clean"), 1)
    expires_ms = await redis.zscore(keys.dedupe("logs", "acme"), "a")
    assert expires_ms is not None
    ttl_ms = expires_ms - time.time() * 1000
    assert window_s * 1000 - 15_000 < ttl_ms <= window_s * 1000
    assert await redis.zrange(keys.dedupe_tenants("logs"), 0, -1, withscores=True) == [
        (b"acme", expires_ms)
    ]
    assert not await redis.exists(keys.seen("logs", "acme", "a"))  # a fresh install: none


async def test_a_resend_after_the_window_is_a_new_clean_entry(
    redis: aioredis.Redis, settings: Settings, namespace: str
) -> None:
    keys = Keys(namespace)
    clean = keys.stream("logs", "clean")
    body = msgspec.json.encode(log_event(1, id="a"))
    # no purge during the test: the expired marker is still there, and must count as unseen
    short = msgspec.structs.replace(settings, dedupe_window_s=1, trim_interval_s=3600)
    async with running(normalizer(short, redis, "n1")):
        await append_raw(redis, keys, "logs", [body, body])
        await wait_for_len(redis, clean, 1)
        await append_raw(redis, keys, "logs", [body])  # within the window
        await asyncio.sleep(0.5)
        assert await redis.xlen(clean) == 1
        await asyncio.sleep(1.0)
        assert await redis.zscore(keys.dedupe("logs", "acme"), "a") is not None
        await append_raw(redis, keys, "logs", [body])
        await wait_for_len(redis, clean, 2)


async def test_one_batch_dedupes_each_tenant_on_its_own(
    redis: aioredis.Redis, namespace: str
) -> None:
    keys = Keys(namespace)
    streams = Streams(redis, keys)
    outputs = [
        clean_log(tenant, event_id)
        for tenant, event_id in [("t-a", "x"), ("t-b", "x"), ("t-a", "x"), ("t-a", "y")]
    ]
    added = await commit(streams, outputs)
    assert added == (3, 1)
    again = await commit(streams, outputs)
    assert again == (0, 4)
    assert await redis.zrange(keys.dedupe_tenants("logs"), 0, -1) == [b"t-a", b"t-b"]


async def test_a_commit_larger_than_one_redis_call_dedupes_every_id(
    redis: aioredis.Redis, namespace: str
) -> None:
    keys = Keys(namespace)
    streams = Streams(redis, keys)
    await streams.prepare_dedupe("logs", "normalizers", 60)
    await redis.set(keys.seen_until("logs"), str(int(time.time() * 1000) + 60_000))
    await redis.zadd(keys.dedupe("logs", "acme"), {"id-700": int(time.time() * 1000) + 60_000})
    await redis.set(keys.seen("logs", "acme", "id-900"), "1", ex=60)  # an older-layout marker
    ids = [f"id-{i}" for i in range(1_203)] + ["id-1100"]  # and one repeated within the batch
    outputs = [clean_log("acme", i) for i in ids]

    added = await commit(streams, outputs)

    assert added == (1_201, 3)
    stored = [f[b"id"].decode() for _, f in await xrange(redis, keys.stream("logs", "clean"))]
    assert stored == [i for i in ids[:1_203] if i not in ("id-700", "id-900")]
    assert await redis.zcard(keys.dedupe("logs", "acme")) == 1_202
    # while older replicas may run, the commit also writes their markers
    assert await redis.exists(keys.seen("logs", "acme", "id-1202"))


async def test_purge_removes_expired_markers_in_bounded_steps(
    redis: aioredis.Redis, namespace: str
) -> None:
    keys = Keys(namespace)
    now_ms = int(time.time() * 1000)
    expired = {f"old-{i}": now_ms - 1000 - i for i in range(PURGE_STEP + 2_500)}
    live = now_ms + 60_000
    await redis.zadd(keys.dedupe("logs", "t-a"), {**expired, "live": live})
    await redis.zadd(keys.dedupe("logs", "t-b"), {"old": now_ms - 1})
    await redis.zadd(keys.dedupe("logs", "t-c"), {"later": live})  # nothing due: not looked at
    tenants = keys.dedupe_tenants("logs")
    await redis.zadd(tenants, {"t-a": now_ms - 3_000, "t-b": now_ms - 1, "t-c": live})

    removed = await Streams(redis, keys).purge_dedupe("logs")

    assert removed == PURGE_STEP + 2_500 + 1
    assert await redis.zrange(keys.dedupe("logs", "t-a"), 0, -1) == [b"live"]
    assert not await redis.exists(keys.dedupe("logs", "t-b"))
    # each tenant left is scored by its earliest window end
    assert await redis.zrange(tenants, 0, -1, withscores=True) == [(b"t-a", live), (b"t-c", live)]


async def test_normalizers_purge_expired_markers_of_idle_tenants(
    redis: aioredis.Redis, settings: Settings, namespace: str
) -> None:
    keys = Keys(namespace)
    await redis.zadd(keys.dedupe("logs", "gone"), {"a": 1, "b": 2})
    await redis.zadd(keys.dedupe_tenants("logs"), {"gone": 1})
    async with running(normalizer(settings, redis, "n1")):
        deadline = asyncio.get_running_loop().time() + 10
        while await redis.exists(keys.dedupe("logs", "gone")):
            assert asyncio.get_running_loop().time() < deadline, "expired markers never purged"
            await asyncio.sleep(0.1)
    assert await redis.zcard(keys.dedupe_tenants("logs")) == 0


async def test_markers_of_the_older_layout_count_for_one_window_after_an_upgrade(
    redis: aioredis.Redis, settings: Settings, namespace: str
) -> None:
    keys = Keys(namespace)
    raw, clean = keys.stream("logs", "raw"), keys.stream("logs", "clean")
    # what an earlier version left: its group, and one `SET NX` key per event it normalized
    await ensure_group(redis, raw, "normalizers")
    await redis.set(keys.seen("logs", "acme", "old"), "1", ex=3600)
    bodies = [
        msgspec.json.encode(log_event(1, id="old")),
        msgspec.json.encode(log_event(2, id="new")),
    ]
    await append_raw(redis, keys, "logs", bodies)
    async with running(normalizer(settings, redis, "n1")):
        await wait_for_len(redis, clean, 1)
        await asyncio.sleep(0.3)
    assert [f[b"id"] for _, f in await xrange(redis, clean)] == [b"new"]
    seen_until = int(await redis.get(keys.seen_until("logs")) or 0)
    expected = time.time() * 1000 + settings.dedupe_window_s * 1000 + UPGRADE_GRACE_MS
    assert expected - 15_000 < seen_until <= expected
    # an older replica, still running beside this one, must see what this one marked
    ttl_ms = await redis.pttl(keys.seen("logs", "acme", "new"))
    assert settings.dedupe_window_s * 1000 - 15_000 < ttl_ms <= settings.dedupe_window_s * 1000


async def test_a_fresh_install_never_looks_for_older_markers_unless_the_decision_is_lost(
    redis: aioredis.Redis, namespace: str
) -> None:
    keys = Keys(namespace)
    streams = Streams(redis, keys)
    assert await streams.prepare_dedupe("logs", "normalizers", 3600) == 0
    await ensure_group(redis, keys.stream("logs", "raw"), "normalizers")
    assert await streams.prepare_dedupe("logs", "normalizers", 3600) == 0  # decided once
    await redis.set(keys.seen("logs", "acme", "x"), "1", ex=60)
    assert await commit(streams, [clean_log("acme", "x")]) == (1, 0)

    await redis.delete(keys.seen_until("logs"))  # evicted or deleted by hand
    await redis.set(keys.seen("logs", "acme", "y"), "1", ex=60)
    assert await commit(streams, [clean_log("acme", "y"), clean_log("acme", "z")]) == (1, 1)
    seen_until = int(await redis.get(keys.seen_until("logs")) or 0)
    assert seen_until > time.time() * 1000 + 60_000


async def test_invalid_events_go_to_the_dlq_with_reason(
    redis: aioredis.Redis, settings: Settings, namespace: str
) -> None:
    keys = Keys(namespace)
    bodies = [b"not json", msgspec.json.encode(log_event(1, ts="yesterday")), b'{"ts": 1}']
    await append_raw(redis, keys, "logs", [*bodies, msgspec.json.encode(log_event(2))])
    async with running(normalizer(settings, redis, "n1")):
        await wait_for_len(redis, keys.stream("logs", "dlq"), 3)
        await wait_for_len(redis, keys.stream("logs", "clean"), 1)
    letters = await xrange(redis, keys.stream("logs", "dlq"))
    reasons = [fields[b"reason"].decode() for _, fields in letters]
    assert reasons[0].startswith("invalid event: not a JSON object")
    assert "ts" in reasons[1]
    assert all(fields[b"stage"] == b"normalizer" for _, fields in letters)
    assert [fields[b"body"] for _, fields in letters] == bodies


async def test_rum_is_enriched_with_geo_and_user_agent(
    redis: aioredis.Redis, settings: Settings, namespace: str, geoip_test_db: Path
) -> None:
    keys = Keys(namespace)
    await append_raw(
        redis, keys, "rum", [msgspec.json.encode(rum_event(1))], ip="81.2.69.142", ua=CHROME_LINUX
    )
    geo = MaxMindCityLookup(str(geoip_test_db))
    worker = Normalizer(
        settings, redis, ["rum"], "n1", Enrichment(geo=geo, user_agent=UserAgentParser())
    )
    async with running(worker):
        await wait_for_len(redis, keys.stream("rum", "clean"), 1)
    [(_, fields)] = await xrange(redis, keys.stream("rum", "clean"))
    rum = msgspec.json.decode(fields[b"body"], type=Rum)
    assert (rum.geo.country, rum.geo.city) == ("GB", "London")
    assert (rum.user_agent.browser, rum.user_agent.os) == ("Chrome", "Linux")


async def test_two_replicas_share_the_stream_without_duplicates(
    redis: aioredis.Redis, settings: Settings, namespace: str
) -> None:
    keys = Keys(namespace)
    n = 3000
    bodies = [msgspec.json.encode(log_event(i)) for i in range(n)]
    # every event twice: the second copy must be dropped by the dedupe window
    await append_raw(redis, keys, "logs", bodies + bodies)
    small = msgspec.structs.replace(settings, normalizer_batch=100)
    async with running(normalizer(small, redis, "n1"), normalizer(small, redis, "n2")):
        await wait_for_len(redis, keys.stream("logs", "clean"), n)
        await asyncio.sleep(0.5)
    clean = await xrange(redis, keys.stream("logs", "clean"))
    ids = [fields[b"id"] for _, fields in clean]
    assert len(ids) == n == len(set(ids))
    consumers = await redis.xinfo_consumers(keys.stream("logs", "raw"), "normalizers")
    assert {c["name"] for c in consumers} == {b"n1-0", b"n1-1", b"n2-0", b"n2-1"}


async def test_large_entries_make_batches_of_at_most_the_batch_bytes(
    redis: aioredis.Redis, settings: Settings, namespace: str
) -> None:
    keys = Keys(namespace)
    bodies = [msgspec.json.encode(log_event(i, message="m" * 8000)) for i in range(100)]
    await append_raw(redis, keys, "logs", bodies)
    tuned = msgspec.structs.replace(
        settings, normalizer_batch_bytes=64 * 1024, normalizer_consumers=1
    )
    worker = normalizer(tuned, redis, "n1")
    async with running(worker):
        await wait_for_len(redis, keys.stream("logs", "clean"), 100)
    registry = worker.metrics.registry
    labels = {"service": "normalizer", "kind": "logs"}
    batches = registry.get_sample_value("rivulet_batch_size_count", labels)
    # every batch holds at most 8 of these ~8 KB entries (the bucket of 10 covers them all)
    small = registry.get_sample_value("rivulet_batch_size_bucket", labels | {"le": "10.0"})
    assert batches is not None and batches >= 100 * 8000 // (64 * 1024)
    assert small == batches


async def test_entries_of_a_dead_consumer_are_claimed(
    redis: aioredis.Redis, settings: Settings, namespace: str
) -> None:
    keys = Keys(namespace)
    raw = keys.stream("logs", "raw")
    await append_raw(redis, keys, "logs", [msgspec.json.encode(log_event(i)) for i in range(50)])
    await ensure_group(redis, raw, "normalizers")
    # "dead" reads everything and never acknowledges (a SIGKILLed replica)
    taken = flatten_read(await redis.xreadgroup("normalizers", "dead", {raw: ">"}, count=100))
    assert len(taken) == 50
    async with running(normalizer(settings, redis, "alive")):
        await wait_for_len(redis, keys.stream("logs", "clean"), 50, within_s=20)
    assert (await redis.xpending(raw, "normalizers"))["pending"] == 0


async def test_entry_delivered_too_often_is_dead_lettered(
    redis: aioredis.Redis, settings: Settings, namespace: str
) -> None:
    keys = Keys(namespace)
    raw = keys.stream("logs", "raw")
    await append_raw(redis, keys, "logs", [msgspec.json.encode(log_event(1))])
    await ensure_group(redis, raw, "normalizers")
    for _ in range(settings.max_deliveries + 1):
        await redis.xreadgroup("normalizers", "n1-0", {raw: "0" if _ else ">"}, count=10)
    async with running(normalizer(settings, redis, "n1")):
        await wait_for_len(redis, keys.stream("logs", "dlq"), 1)
    [(_, fields)] = await xrange(redis, keys.stream("logs", "dlq"))
    assert fields[b"reason"].startswith(b"delivered")
    assert int(fields[b"attempts"]) > settings.max_deliveries
    assert await redis.xlen(keys.stream("logs", "clean")) == 0


async def test_raw_stream_is_trimmed_only_after_acknowledgement(
    redis: aioredis.Redis, settings: Settings, namespace: str
) -> None:
    keys = Keys(namespace)
    raw = keys.stream("logs", "raw")
    await append_raw(redis, keys, "logs", [msgspec.json.encode(log_event(i)) for i in range(20)])
    await ensure_group(redis, raw, "normalizers")
    await ensure_group(redis, raw, "slow-group")  # a second group that never reads
    async with running(normalizer(settings, redis, "n1")):
        await wait_for_len(redis, keys.stream("logs", "clean"), 20)
        await asyncio.sleep(1.2)
        assert await redis.xlen(raw) == 20  # the slow group still needs every entry
        await redis.xgroup_destroy(raw, "slow-group")
        deadline = asyncio.get_running_loop().time() + 5
        while await redis.xlen(raw) > 0:
            assert asyncio.get_running_loop().time() < deadline, "raw stream never trimmed"
            await asyncio.sleep(0.1)


async def test_trim_drops_a_backlog_larger_than_one_xtrim_call(
    redis: aioredis.Redis, namespace: str
) -> None:
    keys = Keys(namespace)
    raw = keys.stream("logs", "raw")
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(30_000):
            pipe.xadd(raw, {"n": i})
        await pipe.execute()
    await redis.xgroup_create(raw, "normalizers", id="$")  # every entry already delivered
    # approximate MINID trimming drops at most 10,000 entries per XTRIM call
    trimmed = await Streams(redis, keys).safe_trim(raw)
    assert trimmed == 30_000 - await redis.xlen(raw)
    assert await redis.xlen(raw) < 100  # less than one stream node is left


@pytest.mark.parametrize("watermark", [1])
async def test_normalizer_pauses_while_clean_backlog_is_high(
    redis: aioredis.Redis, settings: Settings, namespace: str, watermark: int
) -> None:
    keys = Keys(namespace)
    await redis.xadd(keys.stream("logs", "clean"), {"filler": "1"})
    await append_raw(redis, keys, "logs", [msgspec.json.encode(log_event(1))])
    paused = msgspec.structs.replace(settings, clean_high_watermark=watermark)
    async with running(normalizer(paused, redis, "n1")):
        await asyncio.sleep(1.0)
        assert await redis.xlen(keys.stream("logs", "clean")) == 1
        await redis.delete(keys.stream("logs", "clean"))
        await wait_for_len(redis, keys.stream("logs", "clean"), 1)


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Path]:
    """A private redis-server listening only on a unix socket (RIVULET_REDIS_URL=unix://...)."""
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server binary not installed")
    assert binary is not None
    socket_path = tmp_path / "redis.sock"
    server = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--unixsocket",
            str(socket_path),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield socket_path
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
async def unix_redis(unix_socket: Path) -> AsyncIterator[aioredis.Redis]:
    client = connect(f"unix://{unix_socket}?db=0")
    yield client
    await client.aclose()


async def test_hand_offs_work_over_a_unix_socket(
    unix_redis: aioredis.Redis, settings: Settings, namespace: str
) -> None:
    keys = Keys(namespace)
    appended = await Streams(unix_redis, keys).gateway_append(
        "logs",
        "acme",
        1000,
        "",
        "",
        [("a", msgspec.json.encode(log_event(1, id="a")))],
        signature="s",
        signature_ttl_s=600,
        high_watermark=1000,
        rate_per_s=1000.0,
        burst=1000.0,
        idempotency_key=None,
        idempotency_ttl_s=0,
        body_hash="",
        rejected_json=b"[]",
    )
    assert appended[0] == "ok"
    await append_raw(unix_redis, keys, "logs", [msgspec.json.encode(log_event(2, id="b"))])
    async with running(normalizer(settings, unix_redis, "n1")):
        await wait_for_len(unix_redis, keys.stream("logs", "clean"), 2)
    assert (await unix_redis.xinfo_groups(keys.stream("logs", "raw")))[0]["pending"] == 0


async def test_a_commit_refuses_outputs_of_another_kind(
    redis: aioredis.Redis, namespace: str
) -> None:
    keys = Keys(namespace)
    span = msgspec.structs.replace(clean_log("acme", "a"), kind="spans")
    with pytest.raises(ValueError, match="another kind"):
        await commit(Streams(redis, keys), [clean_log("acme", "b"), span])
    assert await redis.xlen(keys.stream("logs", "clean")) == 0
    assert await redis.zcard(keys.dedupe("logs", "acme")) == 0
