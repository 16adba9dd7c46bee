"""`rivulet up`: the whole pipeline on one machine, as supervised child processes.

Children: gateway, `up_normalizers` normalizers (2 by default: one Python process uses one core,
and the normalizer is the costliest stage), writer (every kind, profiles included: it owns the
chdb engine and answers `rivulet query`), profiler (pprof decoding, and the profile reports on
127.0.0.1:8125).
A child that dies is restarted with backoff under the same consumer name, so it re-reads its own
pending entries at once. Redis and PostgreSQL are used where reachable, or started privately under
`./var/` (they run in their own sessions, so killing this process group leaves their data intact).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

import httpx
import msgspec

from shared.config import Settings
from shared.localservers import (
    MissingServerBinary,
    PrivateServer,
    ensure_database,
    ensure_postgres,
    ensure_redis,
)
from shared.logs import configure_logging
from shared.schemas import ApiKey

MAX_NORMALIZERS: Final = 64
EXAMPLE_EVENTS: Final = (
    '{{"ts": {now}, "service": "checkout", "level": "info", '
    '"message": "order placed by jane@example.com", "attrs": {{"order_id": "A-1001"}}}}\n'
    '{{"ts": {now}, "service": "checkout", "level": "error", '
    '"message": "card 4111 1111 1111 1111 declined", "attrs": {{"client_ip": "81.2.69.142"}}}}\n'
)


class Child:
    def __init__(
        self, name: str, argv: list[str], config_args: list[str], env: dict[str, str]
    ) -> None:
        self.name = name
        self.argv = [sys.executable, "-m", "rivulet_cli.main", *config_args, *argv]
        self.env = env  # on top of this process's environment
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.next_start = 0.0

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env={**os.environ, **self.env})

    def poll_exited(self) -> int | None:
        return None if self.process is None else self.process.poll()


def children_argv(normalizers: int) -> list[tuple[str, list[str]]]:
    """Name and CLI arguments of every child; consumer names are stable across restarts."""
    if not 1 <= normalizers <= MAX_NORMALIZERS:
        raise ValueError(f"normalizers must be between 1 and {MAX_NORMALIZERS}, got {normalizers}")
    return [
        ("gateway", ["gateway"]),
        *(
            (f"normalizer-{n}", ["normalizer", "--consumer", f"normalizer-{n}"])
            for n in range(1, normalizers + 1)
        ),
        ("writer", ["writer", "--consumer", "writer-1"]),
        ("profiler", ["profiler", "--consumer", "profiler-1"]),
    ]


def child_environment(servers: list[PrivateServer]) -> dict[str, str]:
    """Children reach a private Redis over its unix socket: same server, no loopback TCP."""
    for server in servers:
        if server.name == "redis" and server.local_url:
            return {"RIVULET_REDIS_URL": server.local_url}
    return {}


def _demo_key(settings: Settings, var: Path) -> ApiKey:
    import asyncio

    from shared.apikeys import KeyStore
    from shared.streams import Keys, connect

    path = var / "demo-key.json"

    async def load_or_create() -> ApiKey:
        redis = connect(settings.redis_url)
        try:
            store = KeyStore(redis, Keys(settings.namespace).api_keys)
            if path.exists():
                saved = msgspec.json.decode(path.read_bytes(), type=ApiKey)
                if await store.lookup(saved.key_id) is not None:
                    return saved
            key = await store.create("demo")
            path.write_bytes(msgspec.json.encode(key))
            path.chmod(0o600)
            return key
        finally:
            await redis.aclose()

    return asyncio.run(load_or_create())


def _wait_healthy(url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return False


def run_up(settings: Settings, config_file: str | None) -> int:
    configure_logging("up", settings.log_level)
    try:
        topology = children_argv(settings.up_normalizers)
    except ValueError as exc:
        print(f"rivulet up: {exc}", file=sys.stderr)
        return 2
    var = Path(settings.var_dir).resolve()
    var.mkdir(parents=True, exist_ok=True)
    servers: list[PrivateServer] = []
    try:
        for server in (
            ensure_redis(settings.redis_url, var, settings.redis_appendfsync),
            ensure_postgres(settings.timescale_dsn, var),
        ):
            if server is not None:
                servers.append(server)
                via = f"; services use {server.local_url}" if server.local_url else ""
                print(
                    f"started private {server.name} at {server.url} (data in {var}){via}",
                    flush=True,
                )
        ensure_database(settings.timescale_dsn)
    except (MissingServerBinary, RuntimeError) as exc:
        print(f"rivulet up: {exc}", file=sys.stderr)
        for server in servers:
            server.stop()
        return 1

    config_args = ["--config", config_file] if config_file else []
    children = [
        Child(name, argv, config_args, child_environment(servers)) for name, argv in topology
    ]
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    for child in children:
        child.start()

    base = f"http://{settings.http_host}:{settings.http_port}"
    if _wait_healthy(base + "/healthz", 30):
        key = _demo_key(settings, var)
        example = var / "example-logs.ndjson"
        example.write_text(EXAMPLE_EVENTS.format(now=time.time_ns()))
        exe = Path(sys.argv[0]).resolve()
        rivulet = os.path.relpath(exe) if exe.is_relative_to(Path.cwd()) else str(exe)
        print(
            f"\nRivulet is up.\n  gateway   {base}  (/healthz /readyz /metrics)\n"
            f"  clickhouse {settings.clickhouse_dsn}  (queries: 127.0.0.1:{settings.query_port})\n"
            f"  profiler  http://{settings.profiler_http_host}:{settings.profiler_http_port}"
            "  (/v1/profiles/top /flamegraph /diff)\n"
            f"  postgres  {settings.timescale_dsn}\n  redis     {settings.redis_url}\n\n"
            f"Try it:\n  {rivulet} send --key-id {key.key_id} --secret {key.secret} "
            f"--kind logs --url {base} {example}\n"
            f'  {rivulet} query "SELECT service, level, message FROM rivulet.logs"\n'
            f"  {rivulet} status\n"
            f"  {rivulet} profile send --service checkout --type cpu --key-id {key.key_id} "
            f"--secret {key.secret} --url {base} cpu.pb.gz\n"
            f"  {rivulet} profile top --service checkout --since 1h\n\nCtrl-C stops everything.",
            flush=True,
        )
    else:
        print("rivulet up: gateway did not become healthy within 30 s", file=sys.stderr)

    try:
        while not stopping:
            time.sleep(0.5)
            now = time.monotonic()
            for child in children:
                code = child.poll_exited()
                if code is None or stopping:
                    continue
                if child.next_start == 0.0:
                    delay = min(30.0, 0.5 * 2 ** min(child.restarts, 6))
                    child.next_start = now + delay
                    print(
                        f"rivulet up: {child.name} exited with {code}; restarting in {delay:.1f}s",
                        file=sys.stderr,
                        flush=True,
                    )
                elif now >= child.next_start:
                    child.restarts += 1
                    child.next_start = 0.0
                    child.start()
    finally:
        for child in children:
            if child.process is not None and child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + 20
        for child in children:
            if child.process is not None:
                try:
                    child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.process.kill()
        for server in servers:
            server.stop()
    return 0
