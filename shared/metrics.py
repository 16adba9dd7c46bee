"""Prometheus metrics of the stream workers, and the small HTTP server that exposes them.

Every worker process (normalizer, writer, profiler) serves `GET /metrics`, `GET /healthz`
(process alive) and `GET /readyz` (Redis reachable) on `RIVULET_METRICS_PORT` when it is set
(0, the default, serves nothing: `rivulet up` runs several workers on one host). The gateway
exports its own request metrics on its HTTP port.

Stream-level gauges (length, lag, pending, consumers, DLQ size, headroom) describe shared Redis
state, so every replica reports the same values: aggregate them with `max`, not `sum`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, Final

import redis.asyncio as aioredis
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from redis.exceptions import RedisError, ResponseError

log = structlog.get_logger()

BATCH_BUCKETS: Final = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
SECONDS_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class WorkerMetrics:
    """One registry per process; label values are bounded (kinds, streams, groups, sinks)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        r = self.registry
        self.stream_length = Gauge(
            "rivulet_stream_length", "Entries in a stream", ["stream"], registry=r
        )
        self.stream_lag = Gauge(
            "rivulet_stream_lag",
            "Entries not yet delivered to a group",
            ["stream", "group"],
            registry=r,
        )
        self.stream_pending = Gauge(
            "rivulet_stream_pending",
            "Entries delivered but not acknowledged",
            ["stream", "group"],
            registry=r,
        )
        self.stream_consumers = Gauge(
            "rivulet_stream_consumers", "Consumers in a group", ["stream", "group"], registry=r
        )
        self.dlq_length = Gauge("rivulet_dlq_length", "Dead letters per kind", ["kind"], registry=r)
        self.headroom = Gauge(
            "rivulet_stream_headroom_seconds",
            "Seconds until the backlog reaches its high watermark at the current inflow "
            "(shedding or pausing starts then; +Inf when the backlog is not growing)",
            ["stream"],
            registry=r,
        )
        self.batch_size = Histogram(
            "rivulet_batch_size",
            "Entries per processed batch",
            ["service", "kind"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_age = Histogram(
            "rivulet_batch_age_seconds",
            "Time from a batch's first read to its commit",
            ["service", "kind"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.insert_seconds = Histogram(
            "rivulet_insert_seconds",
            "Database insert latency",
            ["sink", "kind"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "rivulet_retries_total",
            "Retried operations (store or Redis unavailable)",
            ["service", "kind"],
            registry=r,
        )
        self.events = Counter(
            "rivulet_events_total",
            "Events processed by outcome",
            ["service", "kind", "outcome"],
            registry=r,
        )
        self.dedupe_hits = Counter(
            "rivulet_dedupe_hits_total",
            "Events dropped as duplicates by the normalizer",
            ["kind"],
            registry=r,
        )
        self.cache_lookups = Counter(
            "rivulet_enrichment_cache_lookups_total",
            "Enrichment cache lookups by result",
            ["cache", "result"],
            registry=r,
        )


async def observe_streams(
    metrics: WorkerMetrics,
    redis: aioredis.Redis,
    streams: Sequence[tuple[str, int]],
    dlqs: Sequence[tuple[str, str]],
    stopping: asyncio.Event,
    interval_s: float = 5.0,
) -> None:
    """Refresh stream gauges every `interval_s` until `stopping` is set.

    `streams`: (stream name, high watermark) pairs; `dlqs`: (kind, dlq stream name) pairs.
    """
    previous: dict[str, tuple[float, int]] = {}
    while not stopping.is_set():
        for stream, watermark in streams:
            try:
                length = int(await redis.xlen(stream))
                groups = await redis.xinfo_groups(stream)
            except ResponseError:
                continue
            except RedisError as exc:
                log.warning("metrics.observe_failed", stream=stream, error=str(exc))
                break
            metrics.stream_length.labels(stream).set(length)
            backlog = 0
            for info in groups:
                name = _text(info["name"])
                lag = int(info.get("lag") or 0)
                pending = int(info["pending"])
                backlog = max(backlog, lag + pending)
                metrics.stream_lag.labels(stream, name).set(lag)
                metrics.stream_pending.labels(stream, name).set(pending)
                metrics.stream_consumers.labels(stream, name).set(int(info["consumers"]))
            now = time.monotonic()
            last = previous.get(stream)
            previous[stream] = (now, backlog)
            if last is not None and now > last[0]:
                growth = (backlog - last[1]) / (now - last[0])
                headroom = (watermark - backlog) / growth if growth > 0 else float("inf")
                metrics.headroom.labels(stream).set(max(0.0, headroom))
        for kind, dlq in dlqs:
            try:
                metrics.dlq_length.labels(kind).set(int(await redis.xlen(dlq)))
            except RedisError:
                break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=interval_s)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


class MetricsApp:
    """ASGI: /metrics, /healthz, /readyz for a worker process."""

    def __init__(self, metrics: WorkerMetrics, redis: aioredis.Redis) -> None:
        self.metrics = metrics
        self.redis = redis

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/metrics":
            status, body, kind = 200, generate_latest(self.metrics.registry), b"text/plain"
        elif path == "/healthz":
            status, body, kind = 200, b'{"status":"ok"}', b"application/json"
        elif path == "/readyz":
            try:
                await self.redis.ping()
                status, body = 200, b'{"status":"ready"}'
            except RedisError:
                status, body = 503, b'{"error":"redis unreachable"}'
            kind = b"application/json"
        else:
            status, body, kind = 404, b'{"error":"not found"}', b"application/json"
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", kind)]}
        )
        await send({"type": "http.response.body", "body": body})


async def serve_metrics(
    metrics: WorkerMetrics,
    redis: aioredis.Redis,
    host: str,
    port: int,
    streams: Sequence[tuple[str, int]],
    dlqs: Sequence[tuple[str, str]],
    stopping: asyncio.Event,
) -> None:
    """Observe the streams and, when `port` > 0, serve /metrics /healthz /readyz until stopped."""
    import uvicorn

    tasks = [asyncio.create_task(observe_streams(metrics, redis, streams, dlqs, stopping))]
    if port > 0:
        config = uvicorn.Config(
            MetricsApp(metrics, redis), host=host, port=port, log_level="warning", lifespan="off"
        )
        server = uvicorn.Server(config)
        tasks.append(asyncio.create_task(server.serve()))
        await stopping.wait()
        server.should_exit = True
    await asyncio.gather(*tasks)


def watched_streams(
    namespace: str, kinds: Sequence[str], stage: str, watermark: int
) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """The (stream, watermark) pairs a worker reports on, and (kind, dlq stream) pairs."""
    prefix = f"{namespace}:"
    streams = [(f"{prefix}{{{kind}}}:{stage}", watermark) for kind in kinds]
    dlqs = [(kind, f"{prefix}{{{kind}}}:dlq") for kind in kinds]
    return streams, dlqs
