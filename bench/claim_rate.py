"""How fast a replica takes over a dead consumer's pending entries: XAUTOCLAIM COUNT 1 per round
trip (what FastStream's `min_idle_time` subscriber does) versus COUNT 500 (shared/consumer.py).

    .venv/bin/python bench/claim_rate.py [--entries 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import redis.asyncio as aioredis


async def fill(redis: aioredis.Redis, stream: str, n: int) -> None:
    await redis.xgroup_create(stream, "g", id="0", mkstream=True)
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(n):
            pipe.xadd(stream, {"body": f'{{"n": {i}}}'})
        await pipe.execute()
    while await redis.xreadgroup("g", "dead", {stream: ">"}, count=1000):
        pass


async def claim_all(redis: aioredis.Redis, stream: str, count: int) -> float:
    started = time.perf_counter()
    cursor: bytes | str = "0-0"
    claimed = 0
    while True:
        cursor, entries, _ = await redis.xautoclaim(
            stream, "g", f"alive-{count}", min_idle_time=0, start_id=cursor, count=count
        )
        claimed += len(entries)
        if cursor in (b"0-0", "0-0"):
            break
    elapsed = time.perf_counter() - started
    return claimed / elapsed


async def main(n: int, url: str) -> None:
    redis = aioredis.Redis.from_url(url)
    for count in (1, 500):
        stream = f"bench:claim:{uuid.uuid4().hex}"
        await fill(redis, stream, n)
        rate = await claim_all(redis, stream, count)
        print(f"XAUTOCLAIM COUNT {count:>3}: {rate:>10,.0f} entries/s claimed ({n} entries)")
        await redis.delete(stream)
    await redis.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    asyncio.run(main(args.entries, args.redis))
