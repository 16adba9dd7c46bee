"""Process entry point: `rivulet profiler` / `python -m services.profiler`.

Runs the profiler worker (raw profiles -> clean profiles, see services.profiler.app) and, unless
disabled, the HTTP reports (services.profiler.http) on `profiler_http_host:profiler_http_port`
(127.0.0.1:8125 by default). Replicas may run side by side: the worker is a consumer group
member; when the HTTP port is taken (another replica on this host serves it), this replica logs
it and only consumes.
"""

from __future__ import annotations

import asyncio
import signal
import socket

import uvicorn

from services.profiler.app import Profiler
from services.profiler.http import ReportsApp
from services.profiler.route import ClickHouseRoute
from services.profiler.store import ProfileStore
from shared.config import Settings, load_settings
from shared.consumer import default_consumer_name
from shared.logs import configure_logging
from shared.metrics import WorkerMetrics, serve_metrics, watched_streams
from shared.runtime import run_service
from shared.streams import connect


def _bind(host: str, port: int) -> socket.socket | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        return None
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(settings: Settings, consumer: str, http: bool = True) -> None:
    log = configure_logging("profiler", settings.log_level)
    redis = connect(settings.redis_url)
    profiler = Profiler(settings, redis, consumer)
    route = ClickHouseRoute(settings, open_engine=False)
    stopping = asyncio.Event()

    def stop() -> None:
        stopping.set()
        profiler.stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)

    server: uvicorn.Server | None = None
    sock = _bind(settings.profiler_http_host, settings.profiler_http_port) if http else None
    if http and sock is None:
        log.warning(
            "profiler.http_port_taken",
            host=settings.profiler_http_host,
            port=settings.profiler_http_port,
        )
    if sock is not None:
        app = ReportsApp(ProfileStore(route, settings.clickhouse_database))
        server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        )
    log.info(
        "profiler.started",
        consumer=consumer,
        http=f"{settings.profiler_http_host}:{settings.profiler_http_port}" if sock else None,
    )
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(profiler.run())
            streams, dlqs = watched_streams(
                settings.namespace, ["profiles"], "raw", settings.profile_raw_high_watermark
            )
            tasks.create_task(
                serve_metrics(
                    WorkerMetrics("profiler"),
                    redis,
                    settings.metrics_host,
                    settings.metrics_port,
                    streams,
                    dlqs,
                    stopping,
                )
            )
            if server is not None and sock is not None:
                tasks.create_task(server.serve(sockets=[sock]))
                tasks.create_task(_stop_server_on(stopping, server))
    finally:
        await route.close()
        await redis.aclose()
        log.info("profiler.stopped", consumer=consumer, decoded=profiler.decoded)


async def _stop_server_on(stopping: asyncio.Event, server: uvicorn.Server) -> None:
    await stopping.wait()
    server.should_exit = True


def run(settings: Settings | None = None, consumer: str | None = None, http: bool = True) -> None:
    run_service(
        serve(settings or load_settings(), consumer or default_consumer_name("profiler"), http)
    )
