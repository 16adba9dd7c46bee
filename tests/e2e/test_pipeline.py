"""End to end: services as processes, signed HTTP in, rows out, checked with the `rivulet` CLI.

Topology (as the issue asks): one gateway, two normalizer processes, two metrics-writer
processes, and one ClickHouse writer process that owns the chdb engine and runs two consumers
per kind (chdb allows one process per data path).
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import msgspec
import redis as syncredis

from shared.schemas import ApiKey
from tests.harness import Pipeline, post_signed
from tests.helpers import log_event, metric_event, rum_event, span_event

CHROME_LINUX = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)


def send(
    client: httpx.Client, key: ApiKey, kind: str, events: list[dict[str, Any]], **headers: str
) -> dict[str, Any]:
    response = post_signed(client, key, kind, events, **headers)
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    return answer


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
    client_redis = syncredis.Redis.from_url(pipeline.redis_url)
    client_redis.xadd(
        f"{pipeline.namespace}:{{logs}}:raw",
        {"tenant": "acme", "kind": "logs", "id": "", "received_at": "1", "body": b'{"ts": 1}'},
    )
    client_redis.close()

    pipeline.wait_drained(90)
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
