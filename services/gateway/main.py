"""Process entry point: `rivulet gateway` / `python -m services.gateway`."""

from __future__ import annotations

import uvicorn

from services.gateway.app import create_app
from shared.config import Settings, load_settings
from shared.logs import configure_logging
from shared.runtime import tune_runtime


def run(settings: Settings | None = None) -> None:
    settings = settings or load_settings()
    log = configure_logging("gateway", settings.log_level)
    log.info("gateway.listening", host=settings.http_host, port=settings.http_port)
    app = create_app(settings)
    tune_runtime()
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        loop="uvloop",
    )
