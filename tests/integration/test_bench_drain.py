"""The benchmark's drain check against a real Redis: `bench.run` counts rows only once every
consumer group of the pipeline's streams has read and acknowledged every entry, so the check
must never say "drained" while an entry is unread or pending, trimmed streams included."""

from __future__ import annotations

import redis.asyncio as aioredis

from bench.run import STREAMS_DRAINED, streams_drained
from shared.consumer import ensure_group

GROUP = "writers"


async def test_a_stream_is_drained_once_its_group_acknowledged_every_entry(
    redis: aioredis.Redis, namespace: str
) -> None:
    drained = redis.register_script(STREAMS_DRAINED)
    stream = f"{namespace}:{{logs}}:clean"
    assert await streams_drained(drained, [[stream]]) is False  # no stream yet
    await ensure_group(redis, stream, GROUP)
    ids = [await redis.xadd(stream, {b"id": f"e{i}".encode()}) for i in range(3)]
    assert await streams_drained(drained, [[stream]]) is False  # unread

    await redis.xreadgroup(GROUP, "w1", {stream: ">"}, count=10)
    assert await streams_drained(drained, [[stream]]) is False  # read, pending

    await redis.xack(stream, GROUP, *ids[:2])
    assert await streams_drained(drained, [[stream]]) is False  # one still pending

    await redis.xack(stream, GROUP, ids[2])
    await redis.xtrim(stream, minid=ids[2], approximate=False)  # as the services trim
    assert await streams_drained(drained, [[stream]]) is True

    await redis.xadd(stream, {b"id": b"e3"})
    assert await streams_drained(drained, [[stream]]) is False  # a new entry


async def test_every_stream_and_every_group_must_be_drained(
    redis: aioredis.Redis, namespace: str
) -> None:
    drained = redis.register_script(STREAMS_DRAINED)
    raw, clean = f"{namespace}:{{logs}}:raw", f"{namespace}:{{logs}}:clean"
    spans = f"{namespace}:{{spans}}:clean"
    for stream in (raw, clean, spans):
        await ensure_group(redis, stream, GROUP)
    await ensure_group(redis, clean, "audit")
    entry_id = await redis.xadd(clean, {b"id": b"e0"})
    await redis.xreadgroup(GROUP, "w1", {clean: ">"}, count=10)
    await redis.xack(clean, GROUP, entry_id)
    # "audit" has not read it
    assert await streams_drained(drained, [[raw, clean], [spans]]) is False

    await redis.xreadgroup("audit", "a1", {clean: ">"}, count=10)
    await redis.xack(clean, "audit", entry_id)
    assert await streams_drained(drained, [[raw, clean], [spans]]) is True

    await redis.xadd(spans, {b"id": b"s0"})
    assert await streams_drained(drained, [[raw, clean], [spans]]) is False  # another kind


async def test_an_unknown_lag_is_neither_drained_nor_not(
    redis: aioredis.Redis, namespace: str
) -> None:
    """After an `XDEL` behind a group's position Redis no longer knows its lag: the bench then
    counts rows instead of waiting for the counters."""
    drained = redis.register_script(STREAMS_DRAINED)
    stream = f"{namespace}:{{logs}}:clean"
    ids = [await redis.xadd(stream, {b"id": f"e{i}".encode()}) for i in range(3)]
    await redis.xgroup_create(stream, GROUP, id=ids[0])
    await redis.xdel(stream, ids[1])
    assert await streams_drained(drained, [[stream]]) is None
