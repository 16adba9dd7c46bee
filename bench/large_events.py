"""A writer's memory over a backlog of large log events, by `writer_batch_bytes`.

Each run fills a clean stream of its own with `--events` logs of `--message-bytes` (through the
normalizer's commit script), then starts a writer in a fresh process with a fresh chdb and
prints its peak anonymous memory (RssAnon, sampled every 20 ms) while it drains the stream.
The largest budget stands for the entries-only bound that came before the byte bound.

    .venv/bin/python -m bench.large_events [--events 20000] [--message-bytes 8000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import tempfile
import time
import uuid

import msgspec
import redis.asyncio as aioredis

from services.normalizer.normalize import to_clean_entry
from services.writer.app import Writer
from services.writer.sinks import ClickHouseSink
from shared.config import Settings
from shared.entries import StageCommit
from shared.events import parse_event
from shared.streams import Keys, Streams
from tests.helpers import log_event

REDIS_URL = os.environ.get("RIVULET_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BUDGETS = (4 << 20, 16 << 20, 64 << 20, 1 << 30)


def rss_anon_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def fill(namespace: str, events: int, message_bytes: int) -> None:
    redis = aioredis.from_url(REDIS_URL)
    streams = Streams(redis, Keys(namespace))
    for start in range(0, events, 500):
        clean = [
            to_clean_entry(
                parse_event(
                    "logs",
                    msgspec.json.encode(log_event(i, message="m" * message_bytes)),
                    "acme",
                    7,
                ),
                "logs",
            )
            for i in range(start, min(start + 500, events))
        ]
        await streams.commit(
            "logs", "normalizers", "raw", StageCommit(acked=[], outputs=clean), 3600, 1000
        )
    await redis.aclose()


async def drain(namespace: str, budget: int) -> tuple[float, float, float]:
    """(anonymous MiB before the writer, its peak while draining, seconds)"""
    redis = aioredis.from_url(REDIS_URL)
    settings = msgspec.structs.replace(
        Settings(), namespace=namespace, writer_batch_bytes=budget, writer_consumers=1
    )
    sink = ClickHouseSink(f"chdb://{tempfile.mkdtemp(prefix='bench-large-')}", "bench", 0)
    await sink.start()
    before = peak = rss_anon_mib()
    writer = Writer(settings, redis, [sink], ["logs"], "bench")
    task = asyncio.create_task(writer.run())
    stream = Keys(namespace).stream("logs", "clean")
    started = time.perf_counter()
    while True:
        await asyncio.sleep(0.02)
        peak = max(peak, rss_anon_mib())
        groups = await redis.xinfo_groups(stream)
        if groups and groups[0]["pending"] == 0 and groups[0]["lag"] == 0:
            break
    elapsed = time.perf_counter() - started
    writer.stop()
    await task
    await sink.close()
    keys = [k async for k in redis.scan_iter(match=f"{namespace}:*", count=1000)]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()
    return before, peak, elapsed


def drain_in_child(namespace: str, budget: int, out: multiprocessing.Queue[str]) -> None:
    before, peak, elapsed = asyncio.run(drain(namespace, budget))
    out.put(f"{budget:>16,} B  {before:21.0f}  {peak:4.0f}  {elapsed:7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--message-bytes", type=int, default=8000)
    args = parser.parse_args()
    print(
        f"{args.events} logs with {args.message_bytes}-byte messages, "
        f"writer_batch_size {Settings().writer_batch_size}"
    )
    print("writer_batch_bytes  anonymous MiB: before  peak  seconds")
    spawn = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[str] = spawn.Queue()
    for budget in BUDGETS:
        namespace = f"bench-large-{uuid.uuid4().hex[:8]}"
        asyncio.run(fill(namespace, args.events, args.message_bytes))
        child = spawn.Process(target=drain_in_child, args=(namespace, budget, results))
        child.start()
        print(results.get())
        child.join()


if __name__ == "__main__":
    main()
