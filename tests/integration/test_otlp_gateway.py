"""OTLP/HTTP receiver and key types against real Redis (in-process gateway, httpx ASGI transport).

What a sender sees (status codes, response messages in its own encoding, partial_success,
Retry-After) and what lands in `<ns>:{KIND}:raw` (native events, deterministic ids, the token's
tenant). The real OpenTelemetry SDK exporters are exercised end to end in tests/e2e/test_otlp.py.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import AsyncIterator
from typing import Any, Final

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis
from google.protobuf import json_format
from google.rpc.status_pb2 import Status  # type: ignore[import-untyped]
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import SeverityNumber
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.proto.trace.v1.trace_pb2 import Status as SpanStatus

from services.gateway.app import Gateway
from shared.apikeys import KeyStore
from shared.config import Settings
from shared.schemas import KINDS, ApiKey
from shared.signing import signed_headers
from shared.streams import Keys, xrange
from tests.helpers import NOW_NS, log_event, post_events

PEER: Final = "203.0.113.7"
TRACES: Final = "/otlp/v1/traces"
PROTOBUF: Final = "application/x-protobuf"
ID_KEYS: Final = {"traceId", "spanId", "parentSpanId"}


@pytest.fixture
def store(redis: aioredis.Redis, namespace: str) -> KeyStore:
    return KeyStore(redis, Keys(namespace).api_keys)


@pytest.fixture
async def token(store: KeyStore) -> ApiKey:
    return await store.create("acme", "token")


@pytest.fixture
async def client(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(Gateway(settings, redis)) as http:
        yield http


def _client(gateway: Gateway) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=gateway, client=(PEER, 1234))
    return httpx.AsyncClient(transport=transport, base_url="http://gw")


def bearer(key: ApiKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.key_id}.{key.secret}"}


def kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def span(i: int, **overrides: Any) -> Span:
    fields: dict[str, Any] = {
        "trace_id": bytes.fromhex(f"{i + 1:032x}"),
        "span_id": bytes.fromhex(f"{i + 1:016x}"),
        "name": f"GET /item/{i}",
        "kind": Span.SPAN_KIND_SERVER,
        "start_time_unix_nano": NOW_NS + i,
        "end_time_unix_nano": NOW_NS + i + 5_000_000,
        "attributes": [kv("http.route", "/item/:id"), kv("http.status_code", 200)],
        "status": SpanStatus(code=SpanStatus.STATUS_CODE_OK),
    }
    fields.update(overrides)
    return Span(**fields)


def traces(*spans: Span, service: str = "checkout") -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend([kv("service.name", service), kv("host.name", "h1")])
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "tests"
    scope_spans.spans.extend(spans)
    return request


async def raw(redis: aioredis.Redis, namespace: str, kind: str) -> list[dict[str, bytes]]:
    entries = await xrange(redis, Keys(namespace).stream(kind, "raw"))
    return [{k.decode(): v for k, v in fields.items()} for _, fields in entries]


async def lengths(redis: aioredis.Redis, namespace: str) -> dict[str, int]:
    return {k: int(await redis.xlen(Keys(namespace).stream(k, "raw"))) for k in KINDS}


def otlp_json(message: Any) -> bytes:
    """The OTLP JSON encoding: proto3 JSON with trace/span ids in hex instead of base64."""

    def hexify(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: base64.b64decode(v).hex() if k in ID_KEYS else hexify(v)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [hexify(v) for v in value]
        return value

    return json.dumps(hexify(json_format.MessageToDict(message))).encode()


def status_of(response: httpx.Response) -> Status:
    status = Status()
    if response.headers["content-type"] == PROTOBUF:
        status.ParseFromString(response.content)
    else:
        json_format.Parse(response.text, status)
    return status


# --- accepted exports -------------------------------------------------------------------------


async def test_protobuf_export_is_answered_in_protobuf_and_appended_as_native_spans(
    client: httpx.AsyncClient, token: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    request = traces(span(0), span(1, parent_span_id=bytes.fromhex("00000000000000aa")))
    response = await client.post(
        TRACES,
        content=request.SerializeToString(),
        headers={
            "Content-Type": PROTOBUF,
            "User-Agent": "OTel-OTLP-Exporter-Python/1.45",
            **bearer(token),
        },
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == PROTOBUF
    answer = ExportTraceServiceResponse.FromString(response.content)
    assert not answer.HasField("partial_success")
    entries = await raw(redis, namespace, "spans")
    assert len(entries) == 2
    assert {e["tenant"] for e in entries} == {b"acme"}
    assert entries[0]["ip"] == PEER.encode()
    assert entries[0]["ua"].startswith(b"OTel-OTLP-Exporter-Python")
    event = json.loads(entries[1]["body"])
    assert event["trace_id"] == f"{2:032x}" and event["span_id"] == f"{2:016x}"
    assert event["parent_span_id"] == "00000000000000aa"
    assert (event["service"], event["kind"], event["status"]) == ("checkout", "server", "ok")
    assert event["attrs"]["http.status_code"] == 200
    assert event["attrs"]["resource.host.name"] == "h1"
    assert event["attrs"]["otel.scope.name"] == "tests"
    assert entries[1]["id"] == event["id"].encode()


async def test_json_gzip_export_gets_json_answer_and_the_same_ids_as_protobuf(
    client: httpx.AsyncClient, token: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    request = traces(span(0))
    as_json = json_format.MessageToDict(request)
    # the OTLP JSON mapping: hex ids (upper case is fine), enums as integers, int64 as strings
    wire_span = as_json["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    wire_span["traceId"] = f"{1:032X}"
    wire_span["spanId"] = f"{1:016x}"
    wire_span["kind"] = 2
    wire_span["status"] = {"code": 1}
    wire_span["someFieldFromTheFuture"] = {"x": 1}
    body = gzip.compress(json.dumps(as_json).encode())
    response = await client.post(
        TRACES,
        content=body,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip", **bearer(token)},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {}

    protobuf = await client.post(
        TRACES,
        content=request.SerializeToString(),
        headers={"Content-Type": PROTOBUF, **bearer(token)},
    )
    assert protobuf.status_code == 200
    first, second = await raw(redis, namespace, "spans")
    assert first["id"] == second["id"]  # same record, either encoding: one id (deduped later)
    assert json.loads(first["body"]) == json.loads(second["body"])


async def test_partial_success_counts_and_explains_rejected_records(
    client: httpx.AsyncClient, token: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    request = traces(
        span(0),
        span(1, trace_id=b"\x01\x02"),  # not 16 bytes
        span(2, end_time_unix_nano=NOW_NS - 1),  # ends before it starts
        span(3),
    )
    for content_type in (PROTOBUF, "application/json"):
        body = request.SerializeToString() if content_type == PROTOBUF else otlp_json(request)
        response = await client.post(
            TRACES, content=body, headers={"Content-Type": content_type, **bearer(token)}
        )
        assert response.status_code == 200, response.text
        answer = ExportTraceServiceResponse()
        if content_type == PROTOBUF:
            answer.ParseFromString(response.content)
        else:
            json_format.Parse(response.text, answer)
            assert response.json()["partialSuccess"]["rejectedSpans"] == "2"
        assert answer.partial_success.rejected_spans == 2
        assert "trace_id: expected 16 bytes" in answer.partial_success.error_message
        assert "before start" in answer.partial_success.error_message
    assert len(await raw(redis, namespace, "spans")) == 4  # 2 valid spans, sent twice


async def test_logs_and_metrics_exports(
    client: httpx.AsyncClient, token: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    logs = ExportLogsServiceRequest()
    scope_logs = logs.resource_logs.add().scope_logs.add()
    record = scope_logs.log_records.add()
    record.time_unix_nano = NOW_NS
    record.severity_number = SeverityNumber.SEVERITY_NUMBER_ERROR
    record.body.kvlist_value.values.extend([kv("order", 42)])
    metrics = ExportMetricsServiceRequest()
    metric = metrics.resource_metrics.add().scope_metrics.add().metrics.add()
    metric.name = "queue.depth"
    point = metric.gauge.data_points.add()
    point.time_unix_nano = NOW_NS
    point.as_int = 7
    point.attributes.extend([kv("queue", "emails")])
    empty = metric.gauge.data_points.add()  # flagged "no recorded value": nothing to store
    empty.time_unix_nano = NOW_NS
    empty.flags = 1

    for path, message in (("/otlp/v1/logs", logs), ("/otlp/v1/metrics", metrics)):
        response = await client.post(
            path,
            content=message.SerializeToString(),
            headers={"Content-Type": PROTOBUF, **bearer(token)},
        )
        assert response.status_code == 200, response.text
        assert response.content == b""  # an empty Export*ServiceResponse

    [log_entry] = await raw(redis, namespace, "logs")
    log = json.loads(log_entry["body"])
    assert (log["service"], log["level"]) == ("unknown_service", "error")
    assert json.loads(log["message"]) == {"order": 42}
    assert log["attrs"]["otel.body_type"] == "kvlist"
    [metric_entry] = await raw(redis, namespace, "metrics")
    point_event = json.loads(metric_entry["body"])
    assert (point_event["name"], point_event["value"], point_event["type"]) == (
        "queue.depth",
        7.0,
        "gauge",
    )
    assert point_event["labels"] == {"queue": "emails"}


async def test_an_empty_export_is_200_and_appends_nothing(
    client: httpx.AsyncClient, token: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    for content_type, body in ((PROTOBUF, b""), ("application/json", b"{}")):
        response = await client.post(
            TRACES, content=body, headers={"Content-Type": content_type, **bearer(token)}
        )
        assert response.status_code == 200, response.text
    assert await lengths(redis, namespace) == dict.fromkeys(KINDS, 0)


async def test_an_hmac_key_may_sign_otlp_bodies(
    client: httpx.AsyncClient, store: KeyStore, redis: aioredis.Redis, namespace: str
) -> None:
    key = await store.create("acme")
    body = traces(span(0)).SerializeToString()
    headers = signed_headers(key.key_id, key.secret, "POST", TRACES, body)
    response = await client.post(
        TRACES, content=body, headers={"Content-Type": PROTOBUF, **headers}
    )
    assert response.status_code == 200, response.text
    replayed = await client.post(
        TRACES, content=body, headers={"Content-Type": PROTOBUF, **headers}
    )
    assert replayed.status_code == 409
    assert len(await raw(redis, namespace, "spans")) == 1


# --- refusals -----------------------------------------------------------------------------------


async def test_bearer_token_rules(
    client: httpx.AsyncClient,
    store: KeyStore,
    token: ApiKey,
    redis: aioredis.Redis,
    namespace: str,
) -> None:
    hmac_key = await store.create("acme")
    browser = await store.create("acme", "browser", origins=["https://shop.example.com"])
    revoked = await store.create("acme", "token")
    await store.revoke(revoked.key_id)
    body = traces(span(0)).SerializeToString()
    cases = {
        "none": {},
        "basic": {"Authorization": "Basic dXNlcjpwYXNz"},
        "no-secret": {"Authorization": f"Bearer {token.key_id}"},
        "wrong-secret": {"Authorization": f"Bearer {token.key_id}.{'0' * 64}"},
        "hmac-key": bearer(hmac_key),
        "browser-key": {"Authorization": f"Bearer {browser.key_id}.x"},
        "revoked": bearer(revoked),
    }
    for name, headers in cases.items():
        response = await client.post(
            TRACES, content=body, headers={"Content-Type": PROTOBUF, **headers}
        )
        assert response.status_code == 401, name
        assert response.headers["content-type"] == PROTOBUF
        assert status_of(response).code == 16  # UNAUTHENTICATED
    assert await lengths(redis, namespace) == dict.fromkeys(KINDS, 0)


async def test_token_and_browser_keys_cannot_sign_native_requests(
    client: httpx.AsyncClient, store: KeyStore, token: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    browser = await store.create("acme", "browser", origins=["https://shop.example.com"])
    signing_token = ApiKey(key_id=token.key_id, secret=token.secret, tenant="acme")
    for key in (signing_token, ApiKey(key_id=browser.key_id, secret="", tenant="acme")):
        response = await post_events(client, key, "logs", [log_event(1)])
        assert response.status_code == 401, response.text
        assert "cannot sign" in response.json()["error"]
    assert await lengths(redis, namespace) == dict.fromkeys(KINDS, 0)


async def test_bearer_on_native_ingest_needs_allow_native(
    client: httpx.AsyncClient, store: KeyStore, token: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    body = msgspec.json.encode(log_event(1)) + b"\n"
    headers = {"Content-Type": "application/x-ndjson"}
    refused = await client.post(
        "/v1/ingest/logs", content=body, headers={**headers, **bearer(token)}
    )
    assert refused.status_code == 401
    assert "--allow-native" in refused.json()["error"]
    assert await lengths(redis, namespace) == dict.fromkeys(KINDS, 0)

    native = await store.create("acme", "token", allow_native=True)
    accepted = await client.post(
        "/v1/ingest/logs", content=body, headers={**headers, **bearer(native)}
    )
    assert accepted.status_code == 202, accepted.text
    assert accepted.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    [entry] = await raw(redis, namespace, "logs")
    assert entry["id"] == b"log-1" and entry["body"] == msgspec.json.encode(log_event(1))


async def test_stored_token_keys_hold_only_a_hash_of_the_secret(
    store: KeyStore, token: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    stored = await redis.hget(Keys(namespace).api_keys, token.key_id)
    assert stored is not None
    assert token.secret.encode() not in stored
    assert token.key_id.startswith("rt_") and len(token.secret) == 64


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"Content-Type": "text/plain"}, b"x", 415),
        ({"Content-Type": PROTOBUF, "Content-Encoding": "br"}, b"x", 415),
        ({"Content-Type": PROTOBUF}, b"\xff\xff\xff\xff", 400),
        ({"Content-Type": "application/json"}, b"[1]", 400),
        (
            {"Content-Type": "application/json"},
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}',
            400,
        ),
        ({"Content-Type": PROTOBUF, "Content-Encoding": "gzip"}, b"not gzip", 400),
    ],
    ids=["media", "encoding", "protobuf", "json-array", "hex-id", "gzip"],
)
async def test_bodies_that_are_not_export_requests(
    headers: dict[str, str],
    body: bytes,
    status: int,
    client: httpx.AsyncClient,
    token: ApiKey,
    redis: aioredis.Redis,
    namespace: str,
) -> None:
    response = await client.post(TRACES, content=body, headers={**headers, **bearer(token)})
    assert response.status_code == status, response.text
    assert status_of(response).message
    assert await lengths(redis, namespace) == dict.fromkeys(KINDS, 0)


async def test_rate_limit_and_backlog_answers_carry_retry_after(
    settings: Settings, redis: aioredis.Redis, token: ApiKey, namespace: str
) -> None:
    body = traces(span(0)).SerializeToString()
    headers = {"Content-Type": PROTOBUF, **bearer(token)}
    limited = msgspec.structs.replace(settings, rate_limit_burst=1.0, rate_limit_events_per_s=0.01)
    async with _client(Gateway(limited, redis)) as client:
        assert (await client.post(TRACES, content=body, headers=headers)).status_code == 200
        response = await client.post(
            TRACES, content=traces(span(1)).SerializeToString(), headers=headers
        )
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    assert status_of(response).code == 8  # RESOURCE_EXHAUSTED

    shedding = msgspec.structs.replace(settings, raw_high_watermark=0)
    async with _client(Gateway(shedding, redis)) as client:
        response = await client.post(TRACES, content=body, headers=headers)
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert status_of(response).code == 14  # UNAVAILABLE


async def test_limits_routes_and_methods(
    settings: Settings, redis: aioredis.Redis, token: ApiKey, namespace: str
) -> None:
    small = msgspec.structs.replace(settings, max_body_bytes=100, max_events_per_request=2)
    async with _client(Gateway(small, redis)) as client:
        headers = {"Content-Type": PROTOBUF, **bearer(token)}
        too_big = traces(*(span(i) for i in range(5))).SerializeToString()
        assert (await client.post(TRACES, content=too_big, headers=headers)).status_code == 413
        assert (
            await client.post("/otlp/v1/profiles", content=b"", headers=headers)
        ).status_code == 404
        get = await client.get(TRACES, headers=headers)
        assert get.status_code == 405 and get.headers["allow"] == "POST"
    many = msgspec.structs.replace(settings, max_events_per_request=2)
    async with _client(Gateway(many, redis)) as client:
        body = traces(*(span(i) for i in range(3))).SerializeToString()
        assert (await client.post(TRACES, content=body, headers=headers)).status_code == 413
    assert await lengths(redis, namespace) == dict.fromkeys(KINDS, 0)
