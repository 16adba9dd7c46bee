"""Poison rows and backpressure, with the services running as processes.

Poison: events that pass validation but the database refuses (here: values out of the range an
operator's CHECK constraint allows) go to the DLQ with the database's error without blocking
their batch; after the fix, `rivulet dlq replay` re-drives each of them exactly once.

Backpressure: with the writers paused (SIGSTOP), the clean backlog fills to its watermark, the
normalizers stop, the raw backlog fills to its watermark and the gateway sheds with 503 +
Retry-After; Redis memory stays under its ceiling; resumed (SIGCONT), everything drains.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis as syncredis

from shared.localservers import MissingServerBinary, ensure_redis
from tests.harness import Pipeline, free_port, post_signed, send_until_accepted
from tests.helpers import log_event, metric_event
from tests.servers import unavailable

pytestmark = pytest.mark.slow


async def pg_execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def table_exists(dsn: str, table: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table))
    finally:
        await conn.close()


def test_poison_rows_go_to_dlq_and_replay_once(pipeline: Pipeline) -> None:
    table = f'"{pipeline.schema}".metrics'
    deadline = time.monotonic() + 60
    while not asyncio.run(table_exists(pipeline.pg_dsn, table)):
        assert time.monotonic() < deadline, "metrics writers never created their table"
        time.sleep(0.2)
    asyncio.run(
        pg_execute(pipeline.pg_dsn, f"ALTER TABLE {table} ADD CONSTRAINT sane CHECK (value < 1000)")
    )
    key = pipeline.create_key()
    events = [metric_event(i) for i in range(100)]
    for poison in (7, 42, 93):
        events[poison]["value"] = 5000.0
    with httpx.Client(base_url=pipeline.url, timeout=30) as client:
        answer, _ = send_until_accepted(client, key, "metrics", events)
    assert answer["accepted"] == 100  # valid JSON events: only the database can refuse them
    pipeline.wait_drained()
    assert pipeline.metric_counts() == (97, 97)
    letters = pipeline.cli("dlq", "list", "metrics").stdout.splitlines()
    assert sorted(pipeline.dead_letter_ids("metrics")) == ["metric-42", "metric-7", "metric-93"]
    assert all('"stage":"writer"' in line and "sane" in line for line in letters), letters

    asyncio.run(pg_execute(pipeline.pg_dsn, f"ALTER TABLE {table} DROP CONSTRAINT sane"))
    assert "replayed 3" in pipeline.cli("dlq", "replay", "metrics").stdout
    assert "replayed 0" in pipeline.cli("dlq", "replay", "metrics").stdout
    pipeline.wait_drained()
    assert pipeline.metric_counts() == (100, 100)
    assert pipeline.dead_letter_ids("metrics") == []
    print("\npoison: 3 of 100 refused by a CHECK constraint -> DLQ; replayed after fix -> 100 rows")


def test_backpressure_sheds_then_drains(tmp_path: Path, namespace: str) -> None:
    var = tmp_path / "var"
    url = f"redis://127.0.0.1:{free_port()}/0"
    try:
        redis_server = ensure_redis(url, var)
    except MissingServerBinary as exc:
        unavailable(str(exc))
        return
    assert redis_server is not None
    ceiling = 256 * 2**20
    admin = syncredis.Redis.from_url(url)
    admin.config_set("maxmemory", ceiling)
    admin.config_set("maxmemory-policy", "noeviction")
    watermark = 5_000
    pipeline = Pipeline(
        tmp_path,
        namespace,
        redis_url=url,
        extra_env={
            "RIVULET_RAW_HIGH_WATERMARK": str(watermark),
            "RIVULET_CLEAN_HIGH_WATERMARK": str(watermark),
            # The gateway's backlog is XLEN, which counts acknowledged entries until the next
            # trim: without trimming, the test reads the length the gateway shed on.
            "RIVULET_TRIM_INTERVAL_S": "3600",
        },
    )
    writers = ["writer-clickhouse", "writer-metrics-1", "writer-metrics-2"]
    try:
        pipeline.require_servers()
        pipeline.start_standard()
        key = pipeline.create_key()
        for name in writers:
            pipeline.kill(name, signal.SIGSTOP)
        accepted: set[str] = set()
        shed = 0
        peak_memory = 0
        i = 0
        with httpx.Client(base_url=pipeline.url, timeout=30) as client:
            deadline = time.monotonic() + 120
            while shed < 5:
                assert time.monotonic() < deadline, "the gateway never shed load"
                events = [log_event(n) for n in range(i, i + 500)]
                response = post_signed(client, key, "logs", events)
                if response.status_code == 202:
                    accepted.update(e["id"] for e in events)
                    i += 500
                else:
                    assert response.status_code == 503, response.text
                    assert int(response.headers["retry-after"]) > 0
                    shed += 1
                    time.sleep(0.2)
                peak_memory = max(peak_memory, int(admin.info("memory")["used_memory"]))
            raw = int(admin.xlen(f"{namespace}:{{logs}}:raw"))
            clean = int(admin.xlen(f"{namespace}:{{logs}}:clean"))
            ready = client.get("/readyz").status_code
        assert raw >= watermark and clean >= watermark
        assert ready == 503
        assert peak_memory < ceiling
        for name in writers:
            pipeline.kill(name, signal.SIGCONT)
        drain_s = pipeline.wait_drained(timeout=180)
        assert pipeline.clickhouse_counts("logs") == (len(accepted), len(accepted))
        print(
            f"\nbackpressure: writers paused; raw={raw} clean={clean} (watermark {watermark}); "
            f"{shed} answers 503; peak Redis memory {peak_memory / 2**20:.1f} MiB of "
            f"{ceiling / 2**20:.0f} MiB; resumed: {len(accepted)} rows after {drain_s:.1f}s"
        )
    finally:
        for name in writers:
            if name in pipeline.processes:
                pipeline.processes[name].send_signal(signal.SIGCONT)
        pipeline.stop()
        pipeline.cleanup()
        admin.close()
        redis_server.stop()
