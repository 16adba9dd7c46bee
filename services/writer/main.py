"""Process entry point: `rivulet writer` / `python -m services.writer`.

With a `chdb:///path` ClickHouse URL the writer that handles logs/spans/rum/profiles owns the
engine, so it also serves read-only queries on 127.0.0.1:`query_port` for `rivulet query` (and
for the profiler's reports).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence

import uvicorn

from services.writer.app import Writer
from services.writer.query import QueryApp
from services.writer.sinks import ClickHouseSink, PostgresSink, RetryableSinkError, Sink
from shared.config import Settings, load_settings
from shared.consumer import default_consumer_name
from shared.localservers import ensure_database
from shared.logs import configure_logging
from shared.metrics import WorkerMetrics, serve_metrics, watched_streams
from shared.retry import Backoff
from shared.runtime import run_service
from shared.schemas import ALL_KINDS, Kind
from shared.streams import connect


def build_sinks(settings: Settings, kinds: Sequence[Kind]) -> list[Sink]:
    sinks: list[Sink] = []
    if set(kinds) & ClickHouseSink.kinds:
        sinks.append(
            ClickHouseSink(
                settings.clickhouse_dsn, settings.clickhouse_database, settings.clickhouse_ttl_days
            )
        )
    if "metrics" in kinds:
        sinks.append(PostgresSink(settings.timescale_dsn, settings.timescale_schema))
    return sinks


async def serve(settings: Settings, kinds: Sequence[Kind], consumer: str) -> None:
    log = configure_logging("writer", settings.log_level)
    redis = connect(settings.redis_url)
    sinks = build_sinks(settings, kinds)
    metrics = WorkerMetrics("writer")
    writer = Writer(settings, redis, sinks, kinds, consumer, metrics)
    stopping = asyncio.Event()

    def stop() -> None:
        stopping.set()
        writer.stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)

    backoff = Backoff(settings.retry_base_s, settings.retry_max_s)
    if "metrics" in kinds:
        try:
            ensure_database(settings.timescale_dsn)
        except Exception as exc:  # the server may be down: the sink's start loop retries
            log.warning("writer.ensure_database_failed", error=str(exc))
    for sink in sinks:
        while not stopping.is_set():
            try:
                await sink.start()
                break
            except RetryableSinkError as exc:
                delay = backoff.next()
                log.warning("writer.sink_start_failed", error=str(exc), retry_in_s=round(delay, 2))
                await asyncio.sleep(delay)

    query_server: uvicorn.Server | None = None
    owner = next((s for s in sinks if isinstance(s, ClickHouseSink)), None)
    if owner is not None and settings.uses_chdb:
        config = uvicorn.Config(
            QueryApp(owner),
            host="127.0.0.1",
            port=settings.query_port,
            log_level="warning",
            lifespan="off",
        )
        query_server = uvicorn.Server(config)
    log.info(
        "writer.started",
        kinds=list(kinds),
        consumer=consumer,
        query_port=settings.query_port if query_server else None,
    )
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(writer.run())
            streams, dlqs = watched_streams(
                settings.namespace, kinds, "clean", settings.clean_high_watermark
            )
            tasks.create_task(
                serve_metrics(
                    metrics,
                    redis,
                    settings.metrics_host,
                    settings.metrics_port,
                    streams,
                    dlqs,
                    stopping,
                )
            )
            if query_server is not None:
                tasks.create_task(query_server.serve())
                tasks.create_task(_stop_server_on(stopping, query_server))
    finally:
        for sink in sinks:
            await sink.close()
        await redis.aclose()
        log.info("writer.stopped", consumer=consumer)


async def _stop_server_on(stopping: asyncio.Event, server: uvicorn.Server) -> None:
    await stopping.wait()
    server.should_exit = True


def run(
    settings: Settings | None = None,
    kinds: Sequence[Kind] = ALL_KINDS,
    consumer: str | None = None,
) -> None:
    run_service(
        serve(settings or load_settings(), kinds, consumer or default_consumer_name("writer"))
    )
