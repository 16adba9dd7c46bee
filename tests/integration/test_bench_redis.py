"""What the benchmark says about its Redis: the CPU it counts includes the children Redis forks
(AOF rewrites), and the table names what the server keeps on disk, since an append-only file
costs the server CPU on every write (docs/performance.md, "Redis with an append-only file")."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis

from bench.run import redis_cpu_s, redis_persistence
from shared.localservers import ensure_redis
from tests.harness import free_port
from tests.servers import REDIS_URL


def test_redis_cpu_counts_the_children_it_forked() -> None:
    info = {
        "used_cpu_user": "1.5",
        "used_cpu_sys": "0.5",
        "used_cpu_user_children": "0.25",
        "used_cpu_sys_children": "0.125",
        "used_cpu_user_main_thread": "9.0",  # part of used_cpu_user already
    }
    assert redis_cpu_s(info) == 2.375
    assert redis_cpu_s({"used_cpu_user": 1.0, "used_cpu_sys": 2.0}) == 3.0  # older servers


async def test_the_persistence_of_the_suites_redis_is_what_the_server_reports(
    redis: aioredis.Redis,
) -> None:
    aof = (await redis.info("persistence"))["aof_enabled"]
    fsync = (await redis.config_get("appendfsync"))["appendfsync"]
    if isinstance(fsync, bytes):
        fsync = fsync.decode()
    described = redis_persistence(REDIS_URL)
    assert described.startswith(f"AOF, appendfsync {fsync}," if aof else "no AOF,")


def test_a_redis_started_as_rivulet_up_starts_one_is_described_as_durable(
    tmp_path: Path,
) -> None:
    server = ensure_redis(f"redis://127.0.0.1:{free_port()}/0", tmp_path, "everysec")
    assert server is not None
    try:
        assert redis_persistence(server.url) == "AOF, appendfsync everysec, no RDB snapshots"
    finally:
        server.stop()
