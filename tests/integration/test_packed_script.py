"""PackedScript against a real Redis: it loads itself when the server does not know it, returns
the script's errors as redis-py does, and a call cancelled before its reply leaves nothing on the
connection for the next command to read. A commit with nothing but acknowledgements goes as one
plain XACK, framed the same way."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool
from redis.exceptions import ResponseError

from shared.entries import StageCommit
from shared.streams import Keys, PackedScript, Streams
from tests.servers import REDIS_URL

# Busy for `ARGV[1]` ms inside Redis (a script cannot sleep), then returns ARGV[2].
SLOW_ECHO = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local until_ms = now_ms() + tonumber(ARGV[1])
while now_ms() < until_ms do end
return ARGV[2]
"""


def unique(text: str) -> str:
    """A script text the server has never seen, so its first call meets NOSCRIPT."""
    return f"-- {uuid.uuid4().hex}\n{text}"


async def test_loads_itself_and_passes_every_argument(
    redis: aioredis.Redis, namespace: str
) -> None:
    script = PackedScript(redis, unique("return {#KEYS, KEYS[1], ARGV[1], ARGV[2], ARGV[3]}"))
    assert await redis.script_exists(script.sha) == [False]
    reply = await script([f"{namespace}:k"], [b"\x00\xffbytes", "text \u00e9", 42])
    assert reply == [1, f"{namespace}:k".encode(), b"\x00\xffbytes", "text \u00e9".encode(), b"42"]
    assert await redis.script_exists(script.sha) == [True]


async def test_a_script_error_is_raised_and_the_connection_stays_usable(
    redis: aioredis.Redis,
) -> None:
    failing = PackedScript(redis, unique("return redis.error_reply('ERR injected')"))
    with pytest.raises(ResponseError, match="injected"):
        await failing([], [])
    assert await PackedScript(redis, unique("return 'next'"))([], []) == b"next"


async def test_a_cancelled_call_leaves_no_reply_for_the_next_command(
    redis: aioredis.Redis,  # skips, or fails in CI, when Redis is away
) -> None:
    # one connection, so the next command can only run on the one the cancelled call used
    pool = BlockingConnectionPool.from_url(REDIS_URL, max_connections=1, timeout=10)
    client = aioredis.Redis(connection_pool=pool)
    try:
        slow = PackedScript(client, unique(SLOW_ECHO))
        await slow([], [0, "warm"])  # loaded: the next call is one command
        call = asyncio.create_task(slow([], [300, "stale"]))
        await asyncio.sleep(0.1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await slow([], [0, "fresh"]) == b"fresh"
        assert await client.ping()
    finally:
        await client.aclose()


async def test_a_commit_of_acknowledgements_alone_acks_exactly_those_entries(
    redis: aioredis.Redis, namespace: str
) -> None:
    streams = Streams(redis, Keys(namespace))
    clean = streams.keys.stream("logs", "clean")
    await redis.xgroup_create(clean, "writers", id="0", mkstream=True)
    entry: dict[Any, Any] = {"received_at": "1", "body": "{}"}
    ids = [cast(bytes, await redis.xadd(clean, entry)) for _ in range(3)]
    await redis.xreadgroup("writers", "w", {clean: ">"})
    acks_two = StageCommit(acked=ids[:2])
    assert await streams.commit("logs", "writers", "clean", acks_two, 60, 100) == (0, 0)
    pending = await redis.xpending_range(clean, "writers", min="-", max="+", count=10)
    assert [row["message_id"] for row in pending] == [ids[2]]
    nothing = StageCommit(acked=[])
    assert await streams.commit("logs", "writers", "clean", nothing, 60, 100) == (0, 0)
    assert await redis.xlen(streams.keys.stream("logs", "dlq")) == 0
