"""StreamReader against a real Redis: new entries, a restarted consumer's own pending entries
(one of them trimmed away meanwhile) and a dead consumer's claimed entries all arrive with the
fields as written, in order, with Redis's delivery counts."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from shared.consumer import StreamReader, ensure_group
from shared.entries import Fields

GROUP = "readers"


def entry(i: int) -> Fields:
    return {b"tenant": b"acme", b"kind": b"logs", b"id": f"e{i}".encode(), b"body": b"{}"}


async def append(redis: aioredis.Redis, stream: str, count: int) -> list[bytes]:
    return [await redis.xadd(stream, entry(i)) for i in range(count)]  # type: ignore[arg-type, misc]


async def test_new_entries_arrive_with_their_fields(redis: aioredis.Redis, namespace: str) -> None:
    stream = f"{namespace}:{{logs}}:raw"
    ids = await append(redis, stream, 5)
    await ensure_group(redis, stream, GROUP)
    reader = StreamReader(redis, stream, GROUP, "c1", claim_idle_ms=60_000)
    got = await reader.read(10, block_ms=100)
    assert [d.id for d in got] == ids
    assert [d.fields for d in got] == [entry(i) for i in range(5)]
    assert {d.deliveries for d in got} == {1}
    assert await reader.read(10, block_ms=10) == []


async def test_own_pending_is_reread_and_a_trimmed_entry_is_acked(
    redis: aioredis.Redis, namespace: str
) -> None:
    stream = f"{namespace}:{{logs}}:raw"
    ids = await append(redis, stream, 3)
    await ensure_group(redis, stream, GROUP)
    first = StreamReader(redis, stream, GROUP, "c1", claim_idle_ms=60_000)
    assert len(await first.read(10, block_ms=100)) == 3
    await redis.xdel(stream, ids[1])  # trimmed while pending
    restarted = StreamReader(redis, stream, GROUP, "c1", claim_idle_ms=60_000)
    got = await restarted.read(10, block_ms=100)
    assert [(d.id, d.fields, d.deliveries) for d in got] == [
        (ids[0], entry(0), 2),
        (ids[2], entry(2), 2),
    ]
    pending = await redis.xpending_range(stream, GROUP, min="-", max="+", count=10)
    assert [row["message_id"] for row in pending] == [ids[0], ids[2]]


async def test_a_dead_consumers_entries_are_claimed_when_idle(
    redis: aioredis.Redis, namespace: str
) -> None:
    stream = f"{namespace}:{{logs}}:raw"
    ids = await append(redis, stream, 4)
    await ensure_group(redis, stream, GROUP)
    dead = StreamReader(redis, stream, GROUP, "dead", claim_idle_ms=1)
    assert len(await dead.read(10, block_ms=100)) == 4
    await asyncio.sleep(0.01)  # idle longer than claim_idle_ms
    alive = StreamReader(redis, stream, GROUP, "alive", claim_idle_ms=1)
    got = await alive.read(10, block_ms=100)
    assert [(d.id, d.fields, d.deliveries) for d in got] == [
        (entry_id, entry(i), 2) for i, entry_id in enumerate(ids)
    ]
