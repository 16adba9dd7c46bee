"""What the benchmark says about its Redis: the CPU it counts includes the children Redis forks
(AOF rewrites), and the table names what the server keeps on disk, since an append-only file
costs the server CPU on every write (docs/performance.md, "Redis with an append-only file")."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from bench.run import (
    aof_rewrites,
    argv_for_durable_run,
    redis_config_pairs,
    redis_cpu_s,
    redis_persistence,
)
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
        assert redis_persistence(server.url) == (
            "AOF, appendfsync everysec, rewritten at +100% from 64 MiB, no RDB snapshots"
        )
        client = redis.Redis.from_url(server.url)
        client.config_set("auto-aof-rewrite-percentage", "0")
        client.close()
        assert redis_persistence(server.url) == (
            "AOF, appendfsync everysec, no auto-rewrites, no RDB snapshots"
        )
    finally:
        server.stop()


def test_the_rewrites_of_a_durable_redis_are_counted(tmp_path: Path) -> None:
    server = ensure_redis(f"redis://127.0.0.1:{free_port()}/0", tmp_path, "everysec")
    assert server is not None
    client = redis.Redis.from_url(server.url)
    try:
        before = aof_rewrites(server.url)
        assert before is not None
        client.bgrewriteaof()
        deadline = time.monotonic() + 30
        while aof_rewrites(server.url) == before:
            assert time.monotonic() < deadline, "the rewrite never finished"
            time.sleep(0.05)
        assert aof_rewrites(server.url) == before + 1
    finally:
        client.close()
        server.stop()


async def test_a_redis_without_the_file_has_no_rewrites_to_count(redis: aioredis.Redis) -> None:
    aof = (await redis.info("persistence"))["aof_enabled"]
    assert (aof_rewrites(REDIS_URL) is not None) == bool(aof)


def test_redis_config_arguments_become_config_set_pairs() -> None:
    assert redis_config_pairs(["auto-aof-rewrite-min-size=1gb", "save=3600 1"]) == [
        ("auto-aof-rewrite-min-size", "1gb"),
        ("save", "3600 1"),
    ]
    for bad in ("appendfsync", "=no", "appendfsync="):
        with pytest.raises(ValueError, match="NAME=VALUE"):
            redis_config_pairs([bad])


def test_the_durable_run_gets_every_argument_but_its_own() -> None:
    argv = ["--durable-redis", "--redis-config", "a=1", "--events", "5", "--redis-config=b=2"]
    assert argv_for_durable_run(argv) == ["--events", "5"]
