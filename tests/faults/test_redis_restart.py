"""Redis restart: a private Redis with AOF is stopped and started again mid-run.

While it is away the gateway answers 503 (never 202 for an event it could not append); workers
reconnect by themselves; every event answered 202 arrives as exactly one row.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.localservers import MissingServerBinary, ensure_redis
from tests.harness import Pipeline, free_port, post_signed
from tests.helpers import log_event, metric_event
from tests.servers import unavailable

pytestmark = pytest.mark.slow

AWAY_S = 6.0


def test_redis_restart_loses_nothing_answered_202(tmp_path: Path, namespace: str) -> None:
    var = tmp_path / "var"
    url = f"redis://127.0.0.1:{free_port()}/0"
    try:
        redis_server = ensure_redis(url, var)
    except MissingServerBinary as exc:
        unavailable(str(exc))
        return
    assert redis_server is not None
    pipeline = Pipeline(tmp_path, namespace, redis_url=url)
    statuses: Counter[int] = Counter()
    away_statuses: Counter[int] = Counter()
    accepted: dict[str, set[str]] = {"logs": set(), "metrics": set()}
    redis_away = threading.Event()
    stop = threading.Event()
    try:
        pipeline.require_servers()
        pipeline.start_standard()
        key = pipeline.create_key()

        def sender(kind: str, factory: Callable[[int], dict[str, Any]]) -> None:
            i = 0
            with httpx.Client(base_url=pipeline.url, timeout=15) as client:
                while not stop.is_set():
                    events = [factory(n) for n in range(i, i + 200)]
                    sent_while_away = redis_away.is_set()
                    try:
                        response = post_signed(client, key, kind, events)
                    except httpx.TransportError:
                        time.sleep(0.2)
                        continue
                    statuses[response.status_code] += 1
                    if sent_while_away and redis_away.is_set():
                        away_statuses[response.status_code] += 1
                    if response.status_code == 202:
                        accepted[kind].update(e["id"] for e in events)
                        i += 200
                    else:
                        assert response.status_code == 503, response.text
                        assert response.headers["retry-after"].isdigit()
                        time.sleep(0.2)
                    time.sleep(0.05)

        senders = [
            threading.Thread(target=sender, args=("logs", log_event)),
            threading.Thread(target=sender, args=("metrics", metric_event)),
        ]
        for thread in senders:
            thread.start()
        time.sleep(3)
        redis_server.stop()  # SIGTERM: Redis writes its AOF out before exiting
        redis_away.set()
        time.sleep(AWAY_S)
        redis_away.clear()
        restarted = ensure_redis(url, var)
        assert restarted is not None
        redis_server = restarted
        time.sleep(4)
        stop.set()
        for thread in senders:
            thread.join(timeout=60)
        drain_s = pipeline.wait_drained(timeout=180)
        log_rows = pipeline.clickhouse_counts("logs")
        metric_rows = pipeline.metric_counts()
        assert away_statuses[202] == 0, away_statuses
        assert away_statuses[503] > 0, away_statuses
        assert log_rows == (len(accepted["logs"]), len(accepted["logs"]))
        assert metric_rows == (len(accepted["metrics"]), len(accepted["metrics"]))
        print(
            f"\nredis away {AWAY_S:.0f}s: answers while away {dict(away_statuses)}, all "
            f"{dict(statuses)}; drained {drain_s:.1f}s after; rows logs={log_rows[0]} "
            f"metrics={metric_rows[0]} (= events answered 202, no duplicates)"
        )
    finally:
        stop.set()
        pipeline.stop()
        pipeline.cleanup()
        redis_server.stop()
