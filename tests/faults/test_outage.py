"""Database outage: PostgreSQL (a private server this test starts) is stopped for 30 s and
started again while ClickHouse calls fail (injected at the client boundary) for the same 30 s.

The gateway answers 202 until the backlog passes its watermark, then 503 + Retry-After; writers
back off holding their batch unacknowledged; after recovery everything drains: nothing lost,
nothing doubled, worker memory bounded.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from shared.localservers import MissingServerBinary, ensure_database, ensure_postgres
from tests.harness import STANDARD_TOPOLOGY, Pipeline, free_port, post_signed
from tests.helpers import log_event, metric_event
from tests.servers import unavailable

pytestmark = pytest.mark.slow

OUTAGE_S = 30.0
WATERMARK = 30_000


class Sampler(threading.Thread):
    """Peak RSS per worker process, sampled every 0.5 s."""

    def __init__(self, pipeline: Pipeline) -> None:
        super().__init__(daemon=True)
        self.pipeline = pipeline
        self.peak: Counter[str] = Counter()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for name, process in list(self.pipeline.processes.items()):
                try:
                    rss = psutil.Process(process.pid).memory_info().rss
                except psutil.Error:
                    continue
                self.peak[name] = max(self.peak[name], rss)
            time.sleep(0.5)


def test_postgres_and_clickhouse_outage(tmp_path: Path, namespace: str) -> None:
    var = tmp_path / "var"
    dsn = f"postgresql://127.0.0.1:{free_port()}/rivulet_outage"
    try:
        postgres = ensure_postgres(dsn, var)
    except MissingServerBinary as exc:
        unavailable(str(exc))
        return
    assert postgres is not None
    ensure_database(dsn)
    marker = tmp_path / "clickhouse-outage"
    pipeline = Pipeline(
        tmp_path,
        namespace,
        pg_dsn=dsn,
        extra_env={
            "RIVULET_TEST_CLICKHOUSE_OUTAGE_FILE": str(marker),
            "RIVULET_RAW_HIGH_WATERMARK": str(WATERMARK),
            "RIVULET_CLEAN_HIGH_WATERMARK": str(WATERMARK),
        },
    )
    pipeline.require_servers()
    sampler = Sampler(pipeline)
    statuses: Counter[int] = Counter()
    accepted: dict[str, set[str]] = {"logs": set(), "metrics": set()}
    try:
        pipeline.start_standard(
            STANDARD_TOPOLOGY, modules={"writer-clickhouse": "tests.faults.faulty_clickhouse"}
        )
        sampler.start()
        key = pipeline.create_key()
        stop_sending = threading.Event()
        outage_started = threading.Event()

        def sender(kind: str, factory: Any) -> None:
            i = 0
            with httpx.Client(base_url=pipeline.url, timeout=30) as client:
                while not stop_sending.is_set():
                    events = [factory(n) for n in range(i, i + 500)]
                    while True:  # the same ids until accepted
                        response = post_signed(client, key, kind, events)
                        statuses[response.status_code] += 1
                        if response.status_code == 202:
                            accepted[kind].update(e["id"] for e in events)
                            break
                        assert response.status_code in (429, 503), response.text
                        assert response.headers["retry-after"].isdigit()
                        if stop_sending.is_set() and not outage_started.is_set():
                            return
                        time.sleep(min(float(response.headers["retry-after"]), 2.0))
                    i += 500
                    time.sleep(0.05)

        senders = [
            threading.Thread(target=sender, args=("logs", log_event)),
            threading.Thread(target=sender, args=("metrics", metric_event)),
        ]
        for thread in senders:
            thread.start()
        time.sleep(3)
        marker.touch()
        postgres.stop()
        outage_started.set()
        during: Counter[int] = Counter()
        before = Counter(statuses)
        time.sleep(OUTAGE_S)
        during.update({k: statuses[k] - before[k] for k in statuses})
        pending_in_outage = {
            row["kind"]: [g["pending"] for g in row["clean"]["groups"]] for row in pipeline.status()
        }
        marker.unlink()
        restarted = ensure_postgres(dsn, var)
        stop_sending.set()
        for thread in senders:
            thread.join(timeout=120)
        drain_s = pipeline.wait_drained(timeout=240)
        sampler.done.set()

        log_rows = pipeline.clickhouse_counts("logs")
        metric_rows = pipeline.metric_counts()
        assert during[202] > 0, "the gateway must keep accepting until the watermark"
        assert during[503] > 0, "the gateway must shed with 503 once the backlog passes it"
        assert log_rows == (len(accepted["logs"]), len(accepted["logs"]))
        assert metric_rows == (len(accepted["metrics"]), len(accepted["metrics"]))
        assert not pipeline.dead_letter_ids("logs") and not pipeline.dead_letter_ids("metrics")
        peak_mib = {name: rss / 2**20 for name, rss in sampler.peak.items()}
        assert all(mib < 600 for mib in peak_mib.values()), peak_mib
        print(
            f"\noutage {OUTAGE_S:.0f}s: answers during it {dict(during)}; all answers "
            f"{dict(statuses)}; clean pending while down {pending_in_outage}; drained "
            f"{drain_s:.1f}s after recovery; rows logs={log_rows[0]} metrics={metric_rows[0]} "
            f"(= accepted, no duplicates); peak RSS MiB "
            + ", ".join(f"{n}={m:.0f}" for n, m in sorted(peak_mib.items()))
        )
        if restarted is not None:
            postgres = restarted
    finally:
        sampler.done.set()
        pipeline.stop()
        pipeline.cleanup()
        postgres.stop()
