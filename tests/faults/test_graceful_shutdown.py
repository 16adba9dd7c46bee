"""Graceful shutdown: SIGTERM a worker mid-batch; it finishes the batch in hand, acknowledges it,
exits within a bound, and after a restart nothing is lost or doubled."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from tests.harness import Pipeline, send_until_accepted
from tests.helpers import log_event, metric_event

pytestmark = pytest.mark.slow

EXIT_BOUND_S = 15.0
VICTIMS = ("normalizer-1", "writer-clickhouse", "writer-metrics-1")


def test_sigterm_mid_batch_loses_and_doubles_nothing(pipeline: Pipeline) -> None:
    key = pipeline.create_key()
    per_kind = 20_000
    exits: dict[str, float] = {}

    def send_all() -> None:
        with httpx.Client(base_url=pipeline.url, timeout=30) as client:
            for start in range(0, per_kind, 500):
                send_until_accepted(
                    client, key, "logs", [log_event(i) for i in range(start, start + 500)]
                )
                send_until_accepted(
                    client, key, "metrics", [metric_event(i) for i in range(start, start + 500)]
                )

    sender = threading.Thread(target=send_all)
    sender.start()
    time.sleep(2.0)  # batches are in flight in every stage
    for victim in VICTIMS:
        process = pipeline.processes[victim]
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        exits[victim] = time.monotonic() - started
        assert process.returncode == 0, f"{victim} exited with {process.returncode}"
        pipeline.restart(victim)
    sender.join(timeout=300)
    pipeline.wait_http(f"http://127.0.0.1:{pipeline.query_port}/healthz")
    pipeline.wait_drained(timeout=180)
    assert pipeline.clickhouse_counts("logs") == (per_kind, per_kind)
    assert pipeline.metric_counts() == (per_kind, per_kind)
    assert pipeline.dead_letter_ids("logs") == [] and pipeline.dead_letter_ids("metrics") == []
    assert all(seconds < EXIT_BOUND_S for seconds in exits.values()), exits
    print(
        "\nSIGTERM mid-batch: exit times "
        + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in exits.items())
        + f"; rows logs={per_kind} metrics={per_kind}, no duplicates, no dead letters"
    )
