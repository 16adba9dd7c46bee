"""kill -9 chaos: workers (the chdb owner included) and the whole `rivulet up` group are
SIGKILLed and restarted while signed senders push events that they retry with the same ids.

At the end, per kind: rows == distinct events sent, count() == uniqExact(id), DLQ explained.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.schemas import ApiKey
from tests.harness import WORKERS, Pipeline, send_until_accepted
from tests.helpers import log_event, metric_event, rum_event, span_event

pytestmark = pytest.mark.slow

FACTORIES = {"logs": log_event, "metrics": metric_event, "spans": span_event, "rum": rum_event}
TABLES = {"logs": "logs", "spans": "spans", "rum": "rum_events"}


def batches(total: int, size: int) -> list[tuple[str, list[dict[str, Any]]]]:
    per_kind = total // len(FACTORIES)
    out: list[tuple[str, list[dict[str, Any]]]] = []
    for kind, factory in FACTORIES.items():
        events = [factory(i) for i in range(per_kind)]
        out.extend((kind, events[i : i + size]) for i in range(0, per_kind, size))
    random.Random(7).shuffle(out)
    return out


def run_senders(
    url: str, key: ApiKey, work: list[tuple[str, list[dict[str, Any]]]], senders: int
) -> dict[str, int]:
    """Every batch is resent until answered 202; returns attempts beyond the first, per kind."""
    retries = {kind: 0 for kind in FACTORIES}
    lock = threading.Lock()

    def send_share(share: list[tuple[str, list[dict[str, Any]]]]) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            for kind, events in share:
                _, attempts = send_until_accepted(client, key, kind, events, give_up_after_s=300)
                with lock:
                    retries[kind] += attempts - 1

    with ThreadPoolExecutor(senders) as pool:
        for future in [pool.submit(send_share, work[i::senders]) for i in range(senders)]:
            future.result()
    return retries


def assert_exactly_once(pipeline: Pipeline, per_kind: int) -> dict[str, tuple[int, int, int]]:
    figures: dict[str, tuple[int, int, int]] = {}
    for kind in FACTORIES:
        rows, unique = (
            pipeline.metric_counts()
            if kind == "metrics"
            else pipeline.clickhouse_counts(TABLES[kind])
        )
        dead = pipeline.dead_letter_ids(kind)
        assert rows == unique, f"{kind}: {rows - unique} duplicate rows"
        # an event is either a row or a dead letter with its reason, never both, never neither
        assert rows + len(set(dead)) == per_kind, f"{kind}: rows={rows} dlq={len(dead)}"
        figures[kind] = (rows, unique, len(dead))
    return figures


def test_sigkill_workers_during_ingest(pipeline: Pipeline) -> None:
    total, size = 200_000, 500
    key = pipeline.create_key()
    work = batches(total, size)
    rng = random.Random(11)
    stop = threading.Event()
    kills: list[str] = []

    def chaos() -> None:
        while not stop.is_set() or len(kills) < 10:
            time.sleep(rng.uniform(0.8, 2.0))
            # every third kill takes down the chdb owner (its on-disk data must survive); the
            # gateway dies too now and then, so senders see failures and resend the same ids
            victim = (
                "writer-clickhouse" if len(kills) % 3 == 0 else rng.choice([*WORKERS, "gateway"])
            )
            pipeline.kill(victim, signal.SIGKILL)
            kills.append(victim)
            time.sleep(rng.uniform(0.0, 0.5))
            pipeline.restart(victim)

    chaos_thread = threading.Thread(target=chaos, daemon=True)
    started = time.monotonic()
    chaos_thread.start()
    retries = run_senders(pipeline.url, key, work, senders=4)
    sent_s = time.monotonic() - started
    stop.set()
    chaos_thread.join(timeout=120)
    pipeline.wait_http(f"http://127.0.0.1:{pipeline.query_port}/healthz")
    drain_s = pipeline.wait_drained(timeout=300)
    figures = assert_exactly_once(pipeline, total // len(FACTORIES))
    print(
        f"\nchaos: {total} events sent in {sent_s:.1f}s, drained {drain_s:.1f}s later; "
        f"{len(kills)} SIGKILLs ({kills.count('writer-clickhouse')} of the chdb owner); "
        f"resent batches {retries}; per kind (rows, unique ids, dlq) {figures}"
    )
    assert len(kills) >= 10


def test_sigkill_the_whole_up_process_group(tmp_path: Path, namespace: str) -> None:
    probe = Pipeline(tmp_path, namespace)
    probe.require_servers()
    env, url = probe.env, probe.url

    def start_up() -> subprocess.Popen[bytes]:
        with open(tmp_path / "up.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "rivulet_cli.main", "up"],
                cwd=tmp_path,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        probe.wait_http(url + "/healthz")
        probe.wait_http(f"http://127.0.0.1:{probe.query_port}/healthz")
        return process

    up = start_up()
    key = probe.create_key()
    per_kind = 5_000
    work = batches(per_kind * 4, 250)
    first, second = work[: len(work) // 2], work[len(work) // 2 :]
    sender = threading.Thread(target=run_senders, args=(url, key, first, 2))
    sender.start()
    time.sleep(2.0)
    os.killpg(up.pid, signal.SIGKILL)  # gateway, normalizer, writer and `up` itself, at once
    up.wait()
    up = start_up()
    sender.join()
    try:
        run_senders(url, key, second, 2)
        probe.wait_drained(timeout=180)
        figures = assert_exactly_once(probe, per_kind)
        print(f"\n`rivulet up` SIGKILLed mid-run and restarted: (rows, unique, dlq) {figures}")
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(timeout=30)
        probe.cleanup()
