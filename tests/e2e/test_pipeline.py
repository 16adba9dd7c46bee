"""End to end: services as processes, signed HTTP in, rows out, checked with the `rivulet` CLI.

Topology (as the issue asks): one gateway, two normalizer processes, two metrics-writer
processes, and one ClickHouse writer process that owns the chdb engine and runs two consumers
per kind (chdb allows one process per data path).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis as syncredis

from shared.schemas import ApiKey
from shared.signing import signed_headers
from tests.conftest import PG_DSN, REDIS_URL, SHARED_DIR, unavailable
from tests.helpers import log_event, metric_event, ndjson, rum_event, span_event

CHROME_LINUX = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Pipeline:
    def __init__(self, root: Path, namespace: str) -> None:
        self.root = root
        self.namespace = namespace
        self.http_port = free_port()
        self.query_port = free_port()
        self.schema = f"rivulet_{namespace}"
        self.env = {
            **os.environ,
            "RIVULET_REDIS_URL": REDIS_URL,
            "RIVULET_NAMESPACE": namespace,
            "RIVULET_CLICKHOUSE_URL": f"chdb://{root / 'clickhouse'}",
            "RIVULET_TIMESCALE_DSN": PG_DSN,
            "RIVULET_TIMESCALE_SCHEMA": self.schema,
            "RIVULET_HTTP_PORT": str(self.http_port),
            "RIVULET_QUERY_PORT": str(self.query_port),
            "RIVULET_TRUSTED_PROXIES": "127.0.0.1/32",
            "RIVULET_WRITER_BATCH_AGE_MS": "200",
            "RIVULET_CLAIM_IDLE_MS": "2000",
            "RIVULET_TRIM_INTERVAL_S": "1",
        }
        geoip = SHARED_DIR / "testdata" / "geoip" / "GeoIP2-City-Test.mmdb"
        if geoip.exists():
            self.env["RIVULET_GEOIP_CITY_DB"] = str(geoip)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.url = f"http://127.0.0.1:{self.http_port}"

    def start(self, name: str, *args: str) -> None:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115  # closed with the process
        self.processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "rivulet_cli.main", *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )
        )

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

    def wait_http(self, url: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert all(p.poll() is None for p in self.processes), self.logs()
            time.sleep(0.2)
        raise AssertionError(f"{url} never became healthy\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text()[-3000:]}" for path in self.root.glob("*.log")
        )

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def pipeline(tmp_path: Path, namespace: str) -> Iterator[Pipeline]:
    client = syncredis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except syncredis.RedisError as exc:
        unavailable(f"redis not reachable: {exc}")
    import asyncpg  # noqa: F401  # the PG fixture below checks reachability

    from shared.localservers import postgres_reachable

    if not postgres_reachable(PG_DSN):
        unavailable("postgres not reachable")
    pipe = Pipeline(tmp_path, namespace)
    pipe.start("gateway", "gateway")
    pipe.start("normalizer-1", "normalizer", "--consumer", "n1")
    pipe.start("normalizer-2", "normalizer", "--consumer", "n2")
    pipe.start("writer-clickhouse", "writer", "--kinds", "logs,spans,rum", "--consumer", "ch")
    pipe.start("writer-metrics-1", "writer", "--kinds", "metrics", "--consumer", "m1")
    pipe.start("writer-metrics-2", "writer", "--kinds", "metrics", "--consumer", "m2")
    try:
        pipe.wait_http(pipe.url + "/healthz")
        pipe.wait_http(f"http://127.0.0.1:{pipe.query_port}/healthz")
        yield pipe
    finally:
        pipe.stop()
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
        import asyncio

        import asyncpg as pg

        async def drop() -> None:
            conn = await pg.connect(PG_DSN)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{pipe.schema}" CASCADE')
            await conn.close()

        asyncio.run(drop())


def send(
    client: httpx.Client, key: ApiKey, kind: str, events: list[dict[str, Any]], **headers: str
) -> dict[str, Any]:
    path = f"/v1/ingest/{kind}"
    body = ndjson(events)
    signed = signed_headers(key.key_id, key.secret, "POST", path, body)
    response = client.post(
        path,
        content=body,
        headers={"Content-Type": "application/x-ndjson", **headers, **signed},
    )
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    return answer


def drained(status: list[dict[str, Any]]) -> bool:
    for row in status:
        for stage in ("raw", "clean"):
            for group in row[stage]["groups"]:
                if group["pending"] or group["lag"]:
                    return False
            if not row[stage]["groups"] and row[stage]["length"]:
                return False
    return True


def test_all_kinds_end_to_end(pipeline: Pipeline) -> None:
    started = time.monotonic()
    key = msgspec.json.decode(
        pipeline.cli("keys", "create", "--tenant", "acme").stdout, type=ApiKey
    )
    logs = [
        log_event(
            i,
            message=f"user jane{i}@example.com paid with 4111 1111 1111 1111",
            attrs={"client_ip": "81.2.69.142", "password": "hunter2"},
        )
        for i in range(400)
    ]
    invalid_log = {"ts": "not a time", "service": "x", "level": "info", "message": "m"}
    metrics = [metric_event(i) for i in range(300)]
    poison_metric = metric_event(10_000, labels={"host": "bad\u0000host"})
    spans = [span_event(i) for i in range(200)]
    rum = [rum_event(i) for i in range(200)]

    with httpx.Client(base_url=pipeline.url, timeout=30) as client:
        answers = [send(client, key, "logs", logs[i : i + 100]) for i in range(0, 400, 100)]
        assert all(a["accepted"] == 100 for a in answers)
        mixed = send(client, key, "logs", [*logs[:50], invalid_log])  # a resend plus one invalid
        assert mixed["accepted"] == 0 and mixed["duplicates"] in (0, 50)
        assert mixed["rejected"][0]["index"] == 50
        assert send(client, key, "metrics", [*metrics, poison_metric])["accepted"] == 301
        assert send(client, key, "spans", spans)["accepted"] == 200
        browser = {"User-Agent": CHROME_LINUX, "X-Forwarded-For": "81.2.69.142"}
        assert send(client, key, "rum", rum, **browser)["accepted"] == 200
        resent = send(client, key, "rum", rum[:20], **browser)
        assert resent["accepted"] + resent["duplicates"] == 20

    # another producer (e.g. an older gateway) appended an event the normalizer must refuse
    client_redis = syncredis.Redis.from_url(REDIS_URL)
    client_redis.xadd(
        f"{pipeline.namespace}:{{logs}}:raw",
        {"tenant": "acme", "kind": "logs", "id": "", "received_at": "1", "body": b'{"ts": 1}'},
    )
    client_redis.close()

    deadline = time.monotonic() + 90
    while True:
        status = json.loads(pipeline.cli("status", "--json").stdout)
        if drained(status):
            break
        assert time.monotonic() < deadline, f"pipeline never drained: {status}\n{pipeline.logs()}"
        time.sleep(0.5)
    elapsed = time.monotonic() - started

    db = "rivulet"
    counts = {
        table: pipeline.query(f"SELECT count() AS n, uniqExact(id) AS u FROM {db}.{table}")[0]
        for table in ("logs", "spans", "rum_events")
    }
    assert counts == {
        "logs": {"n": 400, "u": 400},
        "spans": {"n": 200, "u": 200},
        "rum_events": {"n": 200, "u": 200},
    }
    [metric_counts] = pipeline.query(
        f'SELECT count(*) AS n, count(DISTINCT id) AS u FROM "{pipeline.schema}".metrics',
        timescale=True,
    )
    assert metric_counts == {"n": 300, "u": 300}

    [log_row] = pipeline.query(f"SELECT message, attrs, geo_city FROM {db}.logs WHERE id = 'log-7'")
    assert log_row["message"] == "user <email> paid with <card>"
    assert log_row["attrs"]["password"] == "<redacted>"
    assert log_row["attrs"]["client_ip"] == "<ipv4>"
    [rum_row] = pipeline.query(f"SELECT browser, os, geo_country FROM {db}.rum_events LIMIT 1")
    assert (rum_row["browser"], rum_row["os"]) == ("Chrome", "Linux")
    if "RIVULET_GEOIP_CITY_DB" in pipeline.env:
        assert log_row["geo_city"] == "London"
        assert rum_row["geo_country"] == "GB"

    log_letters = [json.loads(x) for x in pipeline.cli("dlq", "list", "logs").stdout.splitlines()]
    assert len(log_letters) == 1 and log_letters[0]["stage"] == "normalizer"
    assert "missing required field `service`" in log_letters[0]["reason"]
    metric_letters = [
        json.loads(x) for x in pipeline.cli("dlq", "list", "metrics").stdout.splitlines()
    ]
    assert [m["id"] for m in metric_letters] == ["metric-10000"]
    assert metric_letters[0]["stage"] == "writer"

    refused = pipeline.cli("query", f"INSERT INTO {db}.logs (id) VALUES ('x')", check=False)
    assert refused.returncode != 0 and "readonly" in refused.stderr.lower()

    print(
        f"\nend-to-end: {400 + 301 + 200 + 220 + 51} events sent, "
        f"{400 + 300 + 200 + 200} rows, drained in {elapsed:.1f}s"
    )
