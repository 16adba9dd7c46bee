"""The benchmark's events: realistic logs (with PII to scrub), metrics, spans and RUM.

Shared by `bench.run` (the pipeline) and `bench.instructions` (instruction counts of the hot
paths), so both measure the same data shape.
"""

from __future__ import annotations

import random
import time
from typing import Any, Final

from shared.entries import Delivery, delivery_of

USER_AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Safari/605.1.15",
]
CLIENT_IPS = ["81.2.69.142", "216.160.83.56", "89.160.20.112", "2001:218::1", "10.0.0.1"]
MESSAGES = [
    "GET /api/cart 200 in {n} ms",
    "user {user}@example.com signed in from 10.2.{n}.7",
    "payment declined for card 4111 1111 1111 1111 order {n}",
    "cache miss for key product:{n}",
    "retrying upstream call attempt={n} token=abc{n}",
]


def make_events(kind: str, start: int, count: int, rng: random.Random) -> list[dict[str, Any]]:
    now = time.time_ns()
    out: list[dict[str, Any]] = []
    for i in range(start, start + count):
        if kind == "logs":
            event: dict[str, Any] = {
                "ts": now,
                "service": rng.choice(["checkout", "cart", "search", "auth"]),
                "level": rng.choice(["info", "info", "info", "warn", "error"]),
                "message": rng.choice(MESSAGES).format(n=i, user=f"u{i % 97}"),
                "attrs": {
                    "http.status": 200,
                    "region": "eu-west-1",
                    "client_ip": rng.choice(CLIENT_IPS),
                },
                "trace_id": f"{rng.getrandbits(128):032x}",
            }
        elif kind == "metrics":
            event = {
                "ts": now,
                "name": rng.choice(["cpu.usage", "mem.rss", "http.requests"]),
                "value": rng.random() * 100,
                "type": "gauge",
                "labels": {"host": f"h{i % 16}", "service": "api"},
            }
        elif kind == "spans":
            event = {
                "trace_id": f"{rng.getrandbits(128) | 1:032x}",
                "span_id": f"{rng.getrandbits(64) | 1:016x}",
                "service": "api",
                "name": "GET /cart",
                "start": now,
                "duration_ns": rng.randint(10**5, 10**8),
                "status": "ok",
                "attrs": {"http.route": "/cart"},
            }
        else:
            event = {
                "ts": now,
                "session_id": f"s{i % 500}",
                "type": rng.choice(["page_view", "web_vital", "resource"]),
                "url": f"https://shop.example.com/p/{i % 1000}?ref=mail",
                "metrics": {"lcp": rng.random() * 4000},
            }
        event["id"] = f"{kind}-{i}"
        out.append(event)
    return out


# The receive time of the pure-path benchmarks' raw entries (`bench.instructions`, `bench.engine`).
RECEIVED_AT: Final = 1_795_416_778_017_419_836


def raw_log_delivery(position: int, event_id: str, body: bytes) -> Delivery:
    """A raw log entry as the gateway writes it, delivered once."""
    return delivery_of(
        f"{position}-0".encode(),
        {
            b"tenant": b"acme",
            b"kind": b"logs",
            b"id": event_id.encode(),
            b"received_at": str(RECEIVED_AT).encode(),
            b"body": body,
            b"ip": b"10.1.2.3",
            b"ua": b"rivulet-bench/1.0",
        },
    )
