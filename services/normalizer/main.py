"""Process entry point: `rivulet normalizer` / `python -m services.normalizer`."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence

from services.normalizer.app import Normalizer, build_enrichment
from shared.config import Settings, load_settings
from shared.consumer import default_consumer_name
from shared.logs import configure_logging
from shared.schemas import KINDS, Kind
from shared.streams import connect


async def serve(settings: Settings, kinds: Sequence[Kind], consumer: str) -> None:
    log = configure_logging("normalizer", settings.log_level)
    redis = connect(settings.redis_url)
    normalizer = Normalizer(settings, redis, kinds, consumer, build_enrichment(settings))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, normalizer.stop)
    log.info("normalizer.started", kinds=list(kinds), consumer=consumer)
    try:
        await normalizer.run()
    finally:
        await redis.aclose()
        log.info("normalizer.stopped", consumer=consumer)


def run(
    settings: Settings | None = None,
    kinds: Sequence[Kind] = KINDS,
    consumer: str | None = None,
) -> None:
    asyncio.run(
        serve(settings or load_settings(), kinds, consumer or default_consumer_name("normalizer"))
    )
