"""Process entry point: `rivulet normalizer` / `python -m services.normalizer`."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence

from services.normalizer.app import Normalizer, build_enrichment
from shared.config import Settings, load_settings
from shared.consumer import default_consumer_name
from shared.logs import configure_logging
from shared.metrics import WorkerMetrics, serve_metrics, watched_streams
from shared.runtime import run_service
from shared.schemas import KINDS, Kind
from shared.streams import connect


async def serve(settings: Settings, kinds: Sequence[Kind], consumer: str) -> None:
    log = configure_logging("normalizer", settings.log_level)
    redis = connect(settings.redis_url)
    metrics = WorkerMetrics("normalizer")
    normalizer = Normalizer(settings, redis, kinds, consumer, build_enrichment(settings), metrics)
    stopping = asyncio.Event()

    def stop() -> None:
        stopping.set()
        normalizer.stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    streams, dlqs = watched_streams(settings.namespace, kinds, "raw", settings.raw_high_watermark)
    log.info("normalizer.started", kinds=list(kinds), consumer=consumer)
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(normalizer.run())
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
    finally:
        await redis.aclose()
        log.info("normalizer.stopped", consumer=consumer)


def run(
    settings: Settings | None = None,
    kinds: Sequence[Kind] = KINDS,
    consumer: str | None = None,
) -> None:
    run_service(
        serve(settings or load_settings(), kinds, consumer or default_consumer_name("normalizer"))
    )
