"""Running Rivulet services as real processes in tests: ports, environment, logs, the CLI,
SIGKILL and restart, signed senders that retry, and drain/count checks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import redis as syncredis

from shared.localservers import postgres_reachable
from shared.schemas import ApiKey
from shared.signing import signed_headers
from tests.helpers import ndjson
from tests.servers import PG_DSN, REDIS_URL, SHARED_DIR, unavailable

STANDARD_TOPOLOGY: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("gateway", ("gateway",)),
    ("normalizer-1", ("normalizer", "--consumer", "n1")),
    ("normalizer-2", ("normalizer", "--consumer", "n2")),
    ("writer-clickhouse", ("writer", "--kinds", "logs,spans,rum", "--consumer", "ch")),
    ("writer-metrics-1", ("writer", "--kinds", "metrics", "--consumer", "m1")),
    ("writer-metrics-2", ("writer", "--kinds", "metrics", "--consumer", "m2")),
)
REPO_ROOT = Path(__file__).resolve().parents[1]
WORKERS = tuple(name for name, _ in STANDARD_TOPOLOGY if name != "gateway")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Pipeline:
    def __init__(
        self,
        root: Path,
        namespace: str,
        *,
        redis_url: str = REDIS_URL,
        pg_dsn: str = PG_DSN,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.namespace = namespace
        self.redis_url = redis_url
        self.pg_dsn = pg_dsn
        self.http_port = free_port()
        self.query_port = free_port()
        self.schema = f"rivulet_{namespace}"
        self.env = {
            **os.environ,
            "RIVULET_REDIS_URL": redis_url,
            "RIVULET_NAMESPACE": namespace,
            "RIVULET_CLICKHOUSE_URL": f"chdb://{root / 'clickhouse'}",
            "RIVULET_TIMESCALE_DSN": pg_dsn,
            "RIVULET_TIMESCALE_SCHEMA": self.schema,
            "RIVULET_HTTP_PORT": str(self.http_port),
            "RIVULET_QUERY_PORT": str(self.query_port),
            "RIVULET_TRUSTED_PROXIES": "127.0.0.1/32",
            "RIVULET_WRITER_BATCH_AGE_MS": "200",
            "RIVULET_CLAIM_IDLE_MS": "2000",
            "RIVULET_TRIM_INTERVAL_S": "1",
            "RIVULET_RETRY_MAX_S": "2",
            # lets `python -m tests.…` launchers (fault injection) import from the repo
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
            **(extra_env or {}),
        }
        geoip = SHARED_DIR / "testdata" / "geoip" / "GeoIP2-City-Test.mmdb"
        if geoip.exists():
            self.env["RIVULET_GEOIP_CITY_DB"] = str(geoip)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.commands: dict[str, tuple[str, ...]] = {}
        self.url = f"http://127.0.0.1:{self.http_port}"

    # --- servers and processes -----------------------------------------------------------------

    def require_servers(self) -> None:
        client = syncredis.Redis.from_url(self.redis_url)
        try:
            client.ping()
        except syncredis.RedisError as exc:
            unavailable(f"redis not reachable at {self.redis_url}: {exc}")
        finally:
            client.close()
        if not postgres_reachable(self.pg_dsn):
            unavailable(f"postgres not reachable at {self.pg_dsn}")

    def start(self, name: str, *args: str, module: str = "rivulet_cli.main") -> None:
        """Start `python -m MODULE ARGS` (the `rivulet` CLI unless told otherwise)."""
        self.commands[name] = (sys.executable, "-m", module, *args)
        self._spawn(name)

    def _spawn(self, name: str) -> None:
        with open(self.root / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(
                self.commands[name],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )

    def start_standard(
        self,
        topology: Sequence[tuple[str, tuple[str, ...]]] = STANDARD_TOPOLOGY,
        modules: dict[str, str] | None = None,
    ) -> None:
        for name, args in topology:
            self.start(name, *args, module=(modules or {}).get(name, "rivulet_cli.main"))
        self.wait_http(self.url + "/healthz")
        self.wait_http(f"http://127.0.0.1:{self.query_port}/healthz")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[name]
        process.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            process.wait(timeout=30)

    def restart(self, name: str) -> None:
        self._spawn(name)

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def cleanup(self) -> None:
        client = syncredis.Redis.from_url(self.redis_url)
        try:
            keys = list(client.scan_iter(match=f"{self.namespace}:*", count=1000))
            if keys:
                client.delete(*keys)
        except syncredis.RedisError:
            pass
        finally:
            client.close()

        async def drop() -> None:
            conn = await asyncpg.connect(self.pg_dsn, timeout=5)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
            finally:
                await conn.close()

        with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
            asyncio.run(drop())

    def wait_http(self, url: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            dead = [n for n, p in self.processes.items() if p.poll() is not None]
            assert not dead, f"{dead} exited\n{self.logs()}"
            time.sleep(0.2)
        raise AssertionError(f"{url} never became healthy\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.root.glob("*.log"))
        )

    # --- the CLI -------------------------------------------------------------------------------

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "rivulet_cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.root,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"rivulet {' '.join(args)} failed: {result.stderr}")
        return result

    def query(self, sql: str, *, timescale: bool = False) -> list[dict[str, Any]]:
        args = ["query", "--timescale", sql] if timescale else ["query", sql]
        return [json.loads(line) for line in self.cli(*args).stdout.splitlines() if line]

    def create_key(self, tenant: str = "acme") -> ApiKey:
        return msgspec.json.decode(
            self.cli("keys", "create", "--tenant", tenant).stdout, type=ApiKey
        )

    def status(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = json.loads(self.cli("status", "--json").stdout)
        return result

    def wait_drained(self, timeout: float = 120) -> float:
        """Until every group of every stream has nothing pending and no lag; returns seconds."""
        started = time.monotonic()
        while True:
            try:
                status = self.status()
            except AssertionError:
                status = []
            if status and drained(status):
                return time.monotonic() - started
            assert time.monotonic() - started < timeout, f"never drained: {status}\n{self.logs()}"
            time.sleep(0.5)

    def dead_letter_ids(self, kind: str) -> list[str]:
        out = self.cli("dlq", "list", kind, "-n", "1000000").stdout
        return [json.loads(line)["id"] for line in out.splitlines() if line]

    def clickhouse_counts(self, table: str) -> tuple[int, int]:
        [row] = self.query(f"SELECT count() AS n, uniqExact(id) AS u FROM rivulet.{table}")
        return int(row["n"]), int(row["u"])

    def metric_counts(self) -> tuple[int, int]:
        [row] = self.query(
            f'SELECT count(*) AS n, count(DISTINCT id) AS u FROM "{self.schema}".metrics',
            timescale=True,
        )
        return int(row["n"]), int(row["u"])


def drained(status: list[dict[str, Any]]) -> bool:
    for row in status:
        for stage in ("raw", "clean"):
            if not row[stage]["groups"] and row[stage]["length"]:
                return False
            for group in row[stage]["groups"]:
                if group["pending"] or group["lag"]:
                    return False
    return True


def post_signed(
    client: httpx.Client, key: ApiKey, kind: str, events: Sequence[dict[str, Any]], **headers: str
) -> httpx.Response:
    path = f"/v1/ingest/{kind}"
    body = ndjson(events)
    signed = signed_headers(key.key_id, key.secret, "POST", path, body)
    return client.post(
        path, content=body, headers={"Content-Type": "application/x-ndjson", **headers, **signed}
    )


def send_until_accepted(
    client: httpx.Client,
    key: ApiKey,
    kind: str,
    events: Sequence[dict[str, Any]],
    *,
    give_up_after_s: float = 120,
) -> tuple[dict[str, Any], int]:
    """Resend the same events (same ids, signed anew) until a 202; returns (answer, attempts)."""
    deadline = time.monotonic() + give_up_after_s
    attempts = 0
    while True:
        attempts += 1
        try:
            response = post_signed(client, key, kind, events)
            if response.status_code == 202:
                answer: dict[str, Any] = response.json()
                return answer, attempts
            if response.status_code == 409:
                # same body, same second: only an earlier *accepted* attempt spends a signature
                return {"accepted": 0, "duplicates": len(events), "rejected": []}, attempts
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{kind} batch never accepted"
        time.sleep(0.2 if attempts < 5 else 1.0)
