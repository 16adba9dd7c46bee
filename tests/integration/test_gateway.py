"""Gateway against real Redis: signed HTTP in, `<ns>:{KIND}:raw` out (CONTRACT.md, "HTTP").

The app is driven in-process through httpx's ASGI transport; only the clock is ever faked, and
only where the timestamp window is under test. Every non-202 answer is checked to have appended
nothing to any raw stream.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from services.gateway.app import Gateway
from shared.apikeys import KeyStore
from shared.config import Settings
from shared.events import parse_event
from shared.schemas import KINDS, ApiKey, Kind, Log
from shared.signing import sign
from shared.streams import Keys, connect, xrange
from tests.helpers import (
    log_event,
    make_key,
    mark_seen,
    metric_event,
    ndjson,
    post_events,
    rum_event,
    signed_request_headers,
    span_event,
)

PEER: Final = "203.0.113.7"
UA: Final = "rivulet-test-agent/1.0 (integration; +https://example.com)"
RAW_FIELDS: Final = {"tenant", "kind", "id", "received_at", "body", "ip", "ua"}
FACTORIES: Final[dict[Kind, Callable[..., dict[str, Any]]]] = {
    "logs": log_event,
    "metrics": metric_event,
    "spans": span_event,
    "rum": rum_event,
}
LOGS: Final = "/v1/ingest/logs"
NDJSON: Final = "application/x-ndjson"


# --- harness ------------------------------------------------------------------------------------


def http_client(
    gateway: Gateway, *, peer: str = PEER, raise_app_exceptions: bool = True
) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(
        app=gateway, client=(peer, 1234), raise_app_exceptions=raise_app_exceptions
    )
    return httpx.AsyncClient(transport=transport, base_url="http://gw", headers={"User-Agent": UA})


@pytest.fixture
async def key(redis: aioredis.Redis, namespace: str) -> ApiKey:
    return await make_key(redis, namespace)


@pytest.fixture
async def client(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(Gateway(settings, redis)) as http:
        yield http


def configured(settings: Settings, **changes: Any) -> Settings:
    return msgspec.structs.replace(settings, **changes)


async def signed_post(
    client: httpx.AsyncClient,
    key: ApiKey,
    path: str,
    body: bytes,
    *,
    content_type: str = NDJSON,
    extra: dict[str, str] | None = None,
    now: float | None = None,
) -> httpx.Response:
    headers = signed_request_headers(
        key, path, body, content_type=content_type, extra=extra, now=now
    )
    return await client.post(path, content=body, headers=headers)


def raw_stream(namespace: str, kind: str) -> str:
    return Keys(namespace).stream(kind, "raw")


async def raw_entries(redis: aioredis.Redis, namespace: str, kind: Kind) -> list[dict[str, bytes]]:
    entries = await xrange(redis, Keys(namespace).stream(kind, "raw"))
    return [{name.decode(): value for name, value in fields.items()} for _, fields in entries]


async def raw_lengths(redis: aioredis.Redis, namespace: str) -> dict[str, int]:
    return {kind: int(await redis.xlen(raw_stream(namespace, kind))) for kind in KINDS}


async def assert_nothing_appended(
    redis: aioredis.Redis, namespace: str, before: dict[str, int] | None = None
) -> None:
    expected = before if before is not None else dict.fromkeys(KINDS, 0)
    assert await raw_lengths(redis, namespace) == expected


def assert_accepted(
    response: httpx.Response,
    accepted: int,
    duplicates: int = 0,
    rejected: Sequence[int] = (),
) -> list[dict[str, Any]]:
    """Checks the 202 body shape; returns the rejections."""
    assert response.status_code == 202, response.text
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert set(answer) == {"accepted", "duplicates", "rejected"}
    assert answer["accepted"] == accepted
    assert answer["duplicates"] == duplicates
    rejections: list[dict[str, Any]] = answer["rejected"]
    for rejection in rejections:
        assert set(rejection) == {"index", "reason"}
        assert isinstance(rejection["reason"], str)
        assert rejection["reason"]
    assert [r["index"] for r in rejections] == list(rejected)
    return rejections


def assert_error(response: httpx.Response, status: int, *, retry_after: bool = False) -> str:
    """Checks a non-202 answer: status, `{"error": "..."}` body, Retry-After when required."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert set(answer) == {"error"}
    message = answer["error"]
    assert isinstance(message, str)
    assert message
    if retry_after:
        assert int(response.headers["retry-after"]) >= 1
    return message


def line(event: dict[str, Any]) -> bytes:
    return msgspec.json.encode(event)


# --- 202: what gets stored ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_every_kind_is_accepted_and_stored_as_sent(
    kind: Kind,
    client: httpx.AsyncClient,
    key: ApiKey,
    redis: aioredis.Redis,
    namespace: str,
) -> None:
    events = [FACTORIES[kind](i) for i in range(3)]
    before = time.time_ns()
    response = await post_events(client, key, kind, events)
    after = time.time_ns()

    assert_accepted(response, accepted=3)
    assert "idempotent-replayed" not in response.headers
    entries = await raw_entries(redis, namespace, kind)
    assert len(entries) == 3
    for event, fields in zip(events, entries, strict=True):
        assert set(fields) == RAW_FIELDS
        assert fields["tenant"] == key.tenant.encode()
        assert fields["kind"] == kind.encode()
        assert fields["id"] == event["id"].encode()
        assert fields["body"] == line(event)
        assert fields["ip"] == PEER.encode()
        assert fields["ua"] == UA.encode()
        # received_at is the gateway clock in unix nanoseconds (float-derived: allow 1 ms)
        assert before - 10**6 <= int(fields["received_at"]) <= after + 10**6
    others = {k: n for k, n in (await raw_lengths(redis, namespace)).items() if k != kind}
    assert others == dict.fromkeys(others, 0)


async def test_event_without_id_gets_the_canonical_hash_id(
    client: httpx.AsyncClient, key: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    event = log_event(1)
    del event["id"]
    response = await post_events(client, key, "logs", [event])

    assert_accepted(response, accepted=1)
    [fields] = await raw_entries(redis, namespace, "logs")
    expected = parse_event("logs", line(event), key.tenant).id
    assert len(expected) == 32
    assert fields["id"] == expected.encode()


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8"])
async def test_json_batch_stores_each_event_byte_for_byte(
    content_type: str,
    client: httpx.AsyncClient,
    key: ApiKey,
    redis: aioredis.Redis,
    namespace: str,
) -> None:
    first = (
        b'{ "ts" : "2024-05-01T12:00:00.5+02:00", "service":"checkout",'
        b' "level":"WARN", "message":"caf\\u00e9  spaced", "id":"j-1" }'
    )
    second = line(log_event(2))
    body = b'{"events": [\n  ' + first + b" ,\n" + second + b"\n]}"
    response = await signed_post(client, key, LOGS, body, content_type=content_type)

    assert_accepted(response, accepted=2)
    entries = await raw_entries(redis, namespace, "logs")
    assert [e["body"] for e in entries] == [first, second]
    assert [e["id"] for e in entries] == [b"j-1", b"log-2"]


@pytest.mark.parametrize("content_type", [NDJSON, "application/ndjson", "application/jsonl"])
async def test_ndjson_lines_with_crlf_and_blank_lines(
    content_type: str,
    client: httpx.AsyncClient,
    key: ApiKey,
    redis: aioredis.Redis,
    namespace: str,
) -> None:
    events = [log_event(i) for i in range(3)]
    body = b"\r\n".join(line(e) for e in events[:2]) + b"\r\n\r\n\n" + line(events[2]) + b"\n"
    response = await signed_post(client, key, LOGS, body, content_type=content_type)

    assert_accepted(response, accepted=3)
    entries = await raw_entries(redis, namespace, "logs")
    assert [e["body"] for e in entries] == [line(e) for e in events]


async def test_gzip_body_signed_over_compressed_bytes(
    client: httpx.AsyncClient, key: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    events = [metric_event(i) for i in range(4)]
    response = await post_events(client, key, "metrics", events, gzip_body=True)

    assert_accepted(response, accepted=4)
    entries = await raw_entries(redis, namespace, "metrics")
    assert [e["body"] for e in entries] == [line(e) for e in events]


async def test_gzip_body_signed_over_decompressed_bytes_is_refused(
    client: httpx.AsyncClient, key: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    plain = ndjson([log_event(1)])
    headers = signed_request_headers(key, LOGS, plain, gzip_body=True)
    response = await client.post(LOGS, content=gzip.compress(plain), headers=headers)

    assert_error(response, 401)
    await assert_nothing_appended(redis, namespace)


@pytest.mark.parametrize(
    "bad_line",
    [
        line({"service": "checkout", "level": "info", "message": "no ts"}),
        b"{not json at all",
        line(log_event(1, level=5)),
        line(log_event(1, ts="yesterday")),
        line(log_event(1, trace_id="xyz")),
        b"[1, 2, 3]",
    ],
    ids=["missing-field", "not-json", "wrong-type", "bad-ts", "bad-trace-id", "not-object"],
)
async def test_partial_success_keeps_the_valid_events(
    bad_line: bytes,
    client: httpx.AsyncClient,
    key: ApiKey,
    redis: aioredis.Redis,
    namespace: str,
) -> None:
    good = [log_event(0), log_event(2)]
    body = line(good[0]) + b"\n" + bad_line + b"\n" + line(good[1]) + b"\n"
    response = await signed_post(client, key, LOGS, body)

    assert_accepted(response, accepted=2, rejected=[1])
    entries = await raw_entries(redis, namespace, "logs")
    assert [e["id"] for e in entries] == [b"log-0", b"log-2"]
    assert [e["body"] for e in entries] == [line(e) for e in good]


async def test_event_over_max_event_bytes_is_rejected_alone(
    settings: Settings, redis: aioredis.Redis, namespace: str, key: ApiKey
) -> None:
    gateway = Gateway(configured(settings, max_event_bytes=400), redis)
    events = [log_event(0), log_event(1, message="x" * 500), log_event(2)]
    async with http_client(gateway) as client:
        response = await post_events(client, key, "logs", events)

    [rejection] = assert_accepted(response, accepted=2, rejected=[1])
    assert "400" in rejection["reason"]
    entries = await raw_entries(redis, namespace, "logs")
    assert [e["id"] for e in entries] == [b"log-0", b"log-2"]


async def test_duplicate_ids_in_one_batch_are_stored_once(
    client: httpx.AsyncClient, key: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    anonymous = log_event(9)
    del anonymous["id"]
    events = [log_event(1), log_event(2), log_event(1), anonymous, anonymous]
    response = await post_events(client, key, "logs", events)

    assert_accepted(response, accepted=3, duplicates=2)
    entries = await raw_entries(redis, namespace, "logs")
    anonymous_id = parse_event("logs", line(anonymous), key.tenant).id.encode()
    assert [e["id"] for e in entries] == [b"log-1", b"log-2", anonymous_id]


async def test_ids_already_seen_downstream_count_as_duplicates(
    client: httpx.AsyncClient, key: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    # the normalizer's dedupe marker for (tenant, id) within its window
    await mark_seen(redis, namespace, "logs", key.tenant, "log-1")
    response = await post_events(client, key, "logs", [log_event(1), log_event(2)])

    assert_accepted(response, accepted=1, duplicates=1)
    assert [e["id"] for e in await raw_entries(redis, namespace, "logs")] == [b"log-2"]


async def test_markers_of_the_older_layout_count_while_they_may_exist(
    client: httpx.AsyncClient, key: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    keys = Keys(namespace)
    # an earlier version's one-key-per-event marker; no normalizer of this layout has started
    await redis.set(keys.seen("logs", key.tenant, "log-1"), "1", ex=60)
    response = await post_events(client, key, "logs", [log_event(1), log_event(2)])
    assert_accepted(response, accepted=1, duplicates=1)

    await redis.set(keys.seen_until("logs"), str(int(time.time() * 1000) + 60_000))
    response = await post_events(client, key, "logs", [log_event(1), log_event(3)])
    assert_accepted(response, accepted=1, duplicates=1)

    await redis.set(keys.seen_until("logs"), "0")  # a fresh install: none to look for
    response = await post_events(client, key, "logs", [log_event(1)])
    assert_accepted(response, accepted=1, duplicates=0)


async def test_an_expired_marker_counts_as_unseen(
    client: httpx.AsyncClient, key: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    await mark_seen(redis, namespace, "logs", key.tenant, "log-1", ttl_s=-1)  # not purged yet
    response = await post_events(client, key, "logs", [log_event(1)])
    assert_accepted(response, accepted=1, duplicates=0)


async def test_tenant_comes_from_the_key_never_from_the_body(
    client: httpx.AsyncClient, key: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    event = log_event(1, tenant="evil")
    body = b'{"tenant": "evil", "events": [' + line(event) + b"]}"
    response = await signed_post(client, key, LOGS, body, content_type="application/json")

    assert_accepted(response, accepted=1)
    [fields] = await raw_entries(redis, namespace, "logs")
    assert fields["tenant"] == key.tenant.encode() == b"acme"
    assert fields["body"] == line(event)
    parsed = parse_event("logs", fields["body"], fields["tenant"].decode())
    assert isinstance(parsed, Log)
    assert parsed.tenant == "acme"
    assert parsed.attrs["tenant"] == "evil"  # an unknown field, moved into attrs


async def test_signed_query_string_is_accepted(
    client: httpx.AsyncClient, key: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    path = LOGS + "?source=agent&v=2"
    response = await signed_post(client, key, path, ndjson([log_event(1)]))

    assert_accepted(response, accepted=1)
    assert len(await raw_entries(redis, namespace, "logs")) == 1


# --- 401 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dropped",
    [
        ("X-Rivulet-Key",),
        ("X-Rivulet-Timestamp",),
        ("X-Rivulet-Signature",),
        ("X-Rivulet-Key", "X-Rivulet-Timestamp", "X-Rivulet-Signature"),
    ],
    ids=["no-key", "no-timestamp", "no-signature", "none"],
)
async def test_missing_signing_headers(
    dropped: tuple[str, ...],
    client: httpx.AsyncClient,
    key: ApiKey,
    redis: aioredis.Redis,
    namespace: str,
) -> None:
    body = ndjson([log_event(1)])
    headers = signed_request_headers(key, LOGS, body)
    for name in dropped:
        del headers[name]
    response = await client.post(LOGS, content=body, headers=headers)

    assert_error(response, 401)
    await assert_nothing_appended(redis, namespace)


@pytest.mark.parametrize("key_id", ["rk_0000000000000000", "x" * 65, "../../keys"])
async def test_unknown_key(
    key_id: str,
    client: httpx.AsyncClient,
    key: ApiKey,
    redis: aioredis.Redis,
    namespace: str,
) -> None:
    stranger = ApiKey(key_id=key_id, secret=key.secret, tenant=key.tenant)
    response = await post_events(client, stranger, "logs", [log_event(1)])

    assert_error(response, 401)
    await assert_nothing_appended(redis, namespace)


async def test_revoked_key(
    settings: Settings, redis: aioredis.Redis, namespace: str, key: ApiKey
) -> None:
    gateway = Gateway(configured(settings, key_cache_ttl_s=0), redis)
    async with http_client(gateway) as client:
        assert_accepted(await post_events(client, key, "logs", [log_event(1)]), accepted=1)
        # revoked through another store, as `rivulet keys revoke` does
        assert await KeyStore(redis, Keys(namespace).api_keys).revoke(key.key_id)
        response = await post_events(client, key, "logs", [log_event(2)])

    assert_error(response, 401)
    assert [e["id"] for e in await raw_entries(redis, namespace, "logs")] == [b"log-1"]


async def test_signature_with_the_wrong_secret(
    client: httpx.AsyncClient, key: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    forged = msgspec.structs.replace(key, secret=key.secret + "x")
    response = await post_events(client, forged, "logs", [log_event(1)])

    assert_error(response, 401)
    await assert_nothing_appended(redis, namespace)


@pytest.mark.parametrize("signature", ["", "zz" * 32, "00" * 32, "abc"])
async def test_malformed_or_wrong_signature(
    signature: str,
    client: httpx.AsyncClient,
    key: ApiKey,
    redis: aioredis.Redis,
    namespace: str,
) -> None:
    body = ndjson([log_event(1)])
    headers = signed_request_headers(key, LOGS, body)
    headers["X-Rivulet-Signature"] = signature
    response = await client.post(LOGS, content=body, headers=headers)

    assert_error(response, 401)
    await assert_nothing_appended(redis, namespace)


async def test_tampered_body(
    client: httpx.AsyncClient, key: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    signed = ndjson([log_event(1)])
    headers = signed_request_headers(key, LOGS, signed)
    tampered = ndjson([log_event(1, message="tampered")])
    response = await client.post(LOGS, content=tampered, headers=headers)

    assert_error(response, 401)
    await assert_nothing_appended(redis, namespace)


async def test_tampered_path(
    client: httpx.AsyncClient, key: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    body = ndjson([metric_event(1)])  # a valid metric, signed for the logs endpoint
    headers = signed_request_headers(key, LOGS, body)
    response = await client.post("/v1/ingest/metrics", content=body, headers=headers)

    assert_error(response, 401)
    await assert_nothing_appended(redis, namespace)


@pytest.mark.parametrize(
    ("signed_path", "sent_path"),
    [
        (LOGS + "?source=a", LOGS + "?source=b"),
        (LOGS + "?source=a", LOGS),
        (LOGS, LOGS + "?source=a"),
    ],
    ids=["changed", "dropped", "added"],
)
async def test_tampered_query(
    signed_path: str,
    sent_path: str,
    client: httpx.AsyncClient,
    key: ApiKey,
    redis: aioredis.Redis,
    namespace: str,
) -> None:
    body = ndjson([log_event(1)])
    headers = signed_request_headers(key, signed_path, body)
    response = await client.post(sent_path, content=body, headers=headers)

    assert_error(response, 401)
    await assert_nothing_appended(redis, namespace)


SERVER_NOW: Final = float(int(time.time()))


@pytest.mark.parametrize(
    ("skew", "status"),
    [(-301, 401), (301, 401), (-3600, 401), (3600, 401), (-300, 202), (300, 202), (0, 202)],
)
async def test_timestamp_window(
    skew: int,
    status: int,
    settings: Settings,
    redis: aioredis.Redis,
    namespace: str,
    key: ApiKey,
) -> None:
    gateway = Gateway(settings, redis, clock=lambda: SERVER_NOW)
    async with http_client(gateway) as client:
        response = await post_events(client, key, "logs", [log_event(1)], now=SERVER_NOW + skew)

    if status == 202:
        assert_accepted(response, accepted=1)
        [fields] = await raw_entries(redis, namespace, "logs")
        assert int(fields["received_at"]) == int(SERVER_NOW * 1e9)
    else:
        assert "300" in assert_error(response, 401)
        await assert_nothing_appended(redis, namespace)


@pytest.mark.parametrize("timestamp", ["abc", "1.7e9", "-5", "1700000000.5", "0x6553f100"])
async def test_non_numeric_timestamp(
    timestamp: str,
    client: httpx.AsyncClient,
    key: ApiKey,
    redis: aioredis.Redis,
    namespace: str,
) -> None:
    body = ndjson([log_event(1)])
    headers = {
        "Content-Type": NDJSON,
        "X-Rivulet-Key": key.key_id,
        "X-Rivulet-Timestamp": timestamp,
        "X-Rivulet-Signature": sign(key.secret, timestamp, "POST", LOGS, body),
    }
    response = await client.post(LOGS, content=body, headers=headers)

    assert_error(response, 401)
    await assert_nothing_appended(redis, namespace)


@pytest.mark.parametrize("timestamp", [b"9" * 5000, b"\xb2"], ids=["5000-digits", "superscript"])
async def test_digit_like_but_unparsable_timestamp_is_401(
    timestamp: bytes,
    settings: Settings,
    redis: aioredis.Redis,
    namespace: str,
    key: ApiKey,
) -> None:
    body = ndjson([log_event(1)])
    text = timestamp.decode("latin-1")
    headers: dict[bytes, bytes] = {
        b"Content-Type": NDJSON.encode(),
        b"X-Rivulet-Key": key.key_id.encode(),
        b"X-Rivulet-Timestamp": timestamp,
        b"X-Rivulet-Signature": sign(key.secret, text, "POST", LOGS, body).encode(),
    }
    # as a real server would: an app exception becomes a bare 500
    async with http_client(Gateway(settings, redis), raise_app_exceptions=False) as client:
        response = await client.post(LOGS, content=body, headers=headers)

    await assert_nothing_appended(redis, namespace)
    assert_error(response, 401)


# --- 409 and resending ----------------------------------------------------------------------------


async def test_replayed_request_is_409(
    client: httpx.AsyncClient, key: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    body = ndjson([log_event(1), log_event(2)])
    headers = signed_request_headers(key, LOGS, body)
    assert_accepted(await client.post(LOGS, content=body, headers=headers), accepted=2)
    before = await raw_lengths(redis, namespace)

    replay = await client.post(LOGS, content=body, headers=headers)
    assert_error(replay, 409)
    # the signature is normalised: an upper-cased copy is the same signature
    shouted = {**headers, "X-Rivulet-Signature": headers["X-Rivulet-Signature"].upper()}
    assert_error(await client.post(LOGS, content=body, headers=shouted), 409)
    await assert_nothing_appended(redis, namespace, before)


async def test_concurrent_identical_requests_append_once(
    client: httpx.AsyncClient, key: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    body = ndjson([log_event(i) for i in range(5)])
    headers = signed_request_headers(key, LOGS, body)
    responses = await asyncio.gather(
        *(client.post(LOGS, content=body, headers=headers) for _ in range(4))
    )

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [202, 409, 409, 409]
    for response in responses:
        if response.status_code == 202:
            assert_accepted(response, accepted=5)
        else:
            assert_error(response, 409)
    assert len(await raw_entries(redis, namespace, "logs")) == 5


async def test_request_refused_for_backlog_may_be_resent_unchanged(
    settings: Settings, redis: aioredis.Redis, namespace: str, key: ApiKey
) -> None:
    stream = raw_stream(namespace, "logs")
    for i in range(3):
        await redis.xadd(stream, {"filler": str(i)})
    body = ndjson([log_event(1)])
    headers = signed_request_headers(key, LOGS, body)
    async with http_client(Gateway(configured(settings, raw_high_watermark=3), redis)) as client:
        refused = await client.post(LOGS, content=body, headers=headers)
        assert_error(refused, 503, retry_after=True)
        assert await redis.xlen(stream) == 3

        await redis.xtrim(stream, maxlen=0, approximate=False)  # the backlog clears
        resent = await client.post(LOGS, content=body, headers=headers)
        assert_accepted(resent, accepted=1)
        assert [e["id"] for e in await raw_entries(redis, namespace, "logs")] == [b"log-1"]

        # now it is spent
        assert_error(await client.post(LOGS, content=body, headers=headers), 409)
    assert await redis.xlen(stream) == 1


async def test_request_refused_for_rate_may_be_resent_unchanged(
    settings: Settings, redis: aioredis.Redis, namespace: str, key: ApiKey
) -> None:
    limited = configured(settings, rate_limit_events_per_s=2.0, rate_limit_burst=3.0)
    async with http_client(Gateway(limited, redis)) as client:
        first = await post_events(client, key, "logs", [log_event(i) for i in range(3)])
        assert_accepted(first, accepted=3)
        body = ndjson([log_event(9)])
        headers = signed_request_headers(key, LOGS, body)
        refused = await client.post(LOGS, content=body, headers=headers)
        assert_error(refused, 429, retry_after=True)
        assert await redis.xlen(raw_stream(namespace, "logs")) == 3
        await asyncio.sleep(0.6)  # 2/s refills a token in 0.5 s
        resent = await client.post(LOGS, content=body, headers=headers)
    assert_accepted(resent, accepted=1)
    assert len(await raw_entries(redis, namespace, "logs")) == 4


# --- Idempotency-Key ------------------------------------------------------------------------------


async def test_idempotency_key_replays_the_first_answer(
    client: httpx.AsyncClient, key: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    events: list[dict[str, Any]] = [log_event(1), {"bad": True}, log_event(2)]
    idem = {"Idempotency-Key": "batch-0001"}
    first = await post_events(client, key, "logs", events, extra=idem)
    assert_accepted(first, accepted=2, rejected=[1])
    assert "idempotent-replayed" not in first.headers
    before = await raw_lengths(redis, namespace)

    # a retry, signed anew (a different timestamp, so a different signature)
    retry = await post_events(client, key, "logs", events, extra=idem, now=time.time() + 2)
    assert_accepted(retry, accepted=2, rejected=[1])
    assert retry.content == first.content
    assert retry.headers["idempotent-replayed"] == "true"
    await assert_nothing_appended(redis, namespace, before)


async def test_idempotency_key_reused_with_another_body_is_422(
    client: httpx.AsyncClient, key: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    idem = {"Idempotency-Key": "batch-0002"}
    assert_accepted(await post_events(client, key, "logs", [log_event(1)], extra=idem), accepted=1)
    before = await raw_lengths(redis, namespace)

    other = await post_events(client, key, "logs", [log_event(2)], extra=idem)
    assert_error(other, 422)
    assert "idempotent-replayed" not in other.headers
    await assert_nothing_appended(redis, namespace, before)


async def test_idempotency_key_is_scoped_to_the_tenant(
    client: httpx.AsyncClient, key: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    other_key = await make_key(redis, namespace, tenant="globex")
    idem = {"Idempotency-Key": "shared-name"}
    events = [log_event(1)]
    assert_accepted(await post_events(client, key, "logs", events, extra=idem), accepted=1)
    theirs = await post_events(client, other_key, "logs", events, extra=idem)

    assert_accepted(theirs, accepted=1)
    assert "idempotent-replayed" not in theirs.headers
    tenants = [e["tenant"] for e in await raw_entries(redis, namespace, "logs")]
    assert tenants == [b"acme", b"globex"]


async def test_idempotency_key_after_a_refusal_is_processed_normally(
    settings: Settings, redis: aioredis.Redis, namespace: str, key: ApiKey
) -> None:
    stream = raw_stream(namespace, "logs")
    await redis.xadd(stream, {"filler": "0"})
    idem = {"Idempotency-Key": "after-503"}
    async with http_client(Gateway(configured(settings, raw_high_watermark=1), redis)) as client:
        refused = await post_events(client, key, "logs", [log_event(1)], extra=idem)
        assert_error(refused, 503, retry_after=True)
        await redis.xtrim(stream, maxlen=0, approximate=False)
        retry = await post_events(
            client, key, "logs", [log_event(1)], extra=idem, now=time.time() + 1
        )

    assert_accepted(retry, accepted=1)
    assert "idempotent-replayed" not in retry.headers
    assert len(await raw_entries(redis, namespace, "logs")) == 1


async def test_long_idempotency_keys_are_not_conflated(
    client: httpx.AsyncClient, key: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    prefix = "k" * 256
    events = [log_event(1)]
    first = await post_events(client, key, "logs", events, extra={"Idempotency-Key": prefix + "A"})
    assert_accepted(first, accepted=1)
    await redis.delete(raw_stream(namespace, "logs"))  # as if normalized and trimmed

    second = await post_events(
        client, key, "logs", events, extra={"Idempotency-Key": prefix + "B"}, now=time.time() + 1
    )
    # Either honour the whole key (a new request: appended) or refuse an over-long key (4xx).
    if second.status_code == 202:
        assert "idempotent-replayed" not in second.headers
        assert len(await raw_entries(redis, namespace, "logs")) == 1
    else:
        assert 400 <= second.status_code < 500


# --- 413 ------------------------------------------------------------------------------------------


async def test_content_length_over_max_body_bytes(
    settings: Settings, redis: aioredis.Redis, namespace: str, key: ApiKey
) -> None:
    events = [log_event(i) for i in range(20)]
    assert len(ndjson(events)) > 1000
    async with http_client(Gateway(configured(settings, max_body_bytes=1000), redis)) as client:
        response = await post_events(client, key, "logs", events)

    assert_error(response, 413)
    await assert_nothing_appended(redis, namespace)


async def test_streamed_body_over_max_body_bytes(
    settings: Settings, redis: aioredis.Redis, namespace: str, key: ApiKey
) -> None:
    body = ndjson([log_event(i) for i in range(20)])
    headers = signed_request_headers(key, LOGS, body)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    async with http_client(Gateway(configured(settings, max_body_bytes=1000), redis)) as client:
        response = await client.post(LOGS, content=chunks(), headers=headers)

    assert_error(response, 413)
    await assert_nothing_appended(redis, namespace)


async def test_gzip_bomb_is_bounded(
    settings: Settings, redis: aioredis.Redis, namespace: str, key: ApiKey
) -> None:
    bomb = gzip.compress(b"0" * (8 * 1024 * 1024))
    assert len(bomb) < 64 * 1024
    headers = signed_request_headers(key, LOGS, bomb, gzip_body=True)
    limited = configured(settings, max_decompressed_bytes=1024 * 1024)
    async with http_client(Gateway(limited, redis)) as client:
        response = await client.post(LOGS, content=bomb, headers=headers)

    assert "decompressed" in assert_error(response, 413)
    await assert_nothing_appended(redis, namespace)


async def test_plain_body_over_max_decompressed_bytes(
    settings: Settings, redis: aioredis.Redis, namespace: str, key: ApiKey
) -> None:
    limited = configured(settings, max_decompressed_bytes=1000)
    async with http_client(Gateway(limited, redis)) as client:
        response = await post_events(client, key, "logs", [log_event(i) for i in range(20)])

    assert_error(response, 413)
    await assert_nothing_appended(redis, namespace)


async def test_too_many_events(
    settings: Settings, redis: aioredis.Redis, namespace: str, key: ApiKey
) -> None:
    async with http_client(
        Gateway(configured(settings, max_events_per_request=3), redis)
    ) as client:
        too_many = await post_events(client, key, "logs", [log_event(i) for i in range(4)])
        assert_error(too_many, 413)
        await assert_nothing_appended(redis, namespace)
        just_enough = await post_events(client, key, "logs", [log_event(i) for i in range(3)])
    assert_accepted(just_enough, accepted=3)


# --- 415 / 422 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "encoding"),
    [
        ("text/plain", None),
        ("application/xml", None),
        ("", None),
        (NDJSON, "br"),
        (NDJSON, "deflate"),
        (NDJSON, "gzip, br"),
    ],
    ids=["text-plain", "xml", "no-content-type", "br", "deflate", "gzip-then-br"],
)
async def test_unsupported_media(
    content_type: str,
    encoding: str | None,
    client: httpx.AsyncClient,
    key: ApiKey,
    redis: aioredis.Redis,
    namespace: str,
) -> None:
    body = ndjson([log_event(1)])
    extra = {"Content-Encoding": encoding} if encoding else None
    response = await signed_post(client, key, LOGS, body, content_type=content_type, extra=extra)

    assert_error(response, 415)
    await assert_nothing_appended(redis, namespace)


@pytest.mark.parametrize(
    ("content_type", "body", "gzip_header"),
    [
        ("application/json", b"this is not json", False),
        ("application/json", b'{"events": []}', False),
        ("application/json", b'{"events": 5}', False),
        ("application/json", b'{"records": [{"ts": 1}]}', False),
        ("application/json", b"[" + line(log_event(1)) + b"]", False),
        ("application/json", ndjson([log_event(1), log_event(2)]), False),
        (NDJSON, b"\n \r\n\n", False),
        (NDJSON, b"\x1f\x8b\x08\x00 definitely not deflate data", True),
        (NDJSON, b"plain text, not gzip", True),
        (NDJSON, gzip.compress(ndjson([log_event(1)] * 50))[:-12], True),
    ],
    ids=[
        "not-json",
        "empty-events",
        "events-not-a-list",
        "no-events-field",
        "top-level-array",
        "ndjson-as-json",
        "blank-ndjson",
        "corrupt-gzip",
        "not-gzip",
        "truncated-gzip",
    ],
)
async def test_not_a_valid_batch(
    content_type: str,
    body: bytes,
    gzip_header: bool,
    client: httpx.AsyncClient,
    key: ApiKey,
    redis: aioredis.Redis,
    namespace: str,
) -> None:
    extra = {"Content-Encoding": "gzip"} if gzip_header else None
    headers = signed_request_headers(key, LOGS, body, content_type=content_type, extra=extra)
    response = await client.post(LOGS, content=body, headers=headers)

    assert_error(response, 422)
    await assert_nothing_appended(redis, namespace)
    # only a 202 spends a signature: the very same request is refused for its content again
    assert_error(await client.post(LOGS, content=body, headers=headers), 422)
    await assert_nothing_appended(redis, namespace)


async def test_multi_member_gzip_is_not_silently_truncated(
    client: httpx.AsyncClient, key: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    body = gzip.compress(ndjson([log_event(1)])) + gzip.compress(ndjson([log_event(2)]))
    response = await signed_post(client, key, LOGS, body, extra={"Content-Encoding": "gzip"})

    if response.status_code == 202:  # decode every member ...
        assert_accepted(response, accepted=2)
        assert len(await raw_entries(redis, namespace, "logs")) == 2
    else:  # ... or refuse the body as a whole
        assert_error(response, 422)
        await assert_nothing_appended(redis, namespace)


# --- 429 / 503 ------------------------------------------------------------------------------------


async def test_tenant_over_its_rate_limit(
    settings: Settings, redis: aioredis.Redis, namespace: str, key: ApiKey
) -> None:
    limited = configured(settings, rate_limit_events_per_s=1.0, rate_limit_burst=5.0)
    other = await make_key(redis, namespace, tenant="globex")
    async with http_client(Gateway(limited, redis)) as client:
        # the whole burst, plus two in-batch duplicates, which cost no tokens
        events = [log_event(i) for i in range(5)] + [log_event(0), log_event(1)]
        burst = await post_events(client, key, "logs", events)
        assert_accepted(burst, accepted=5, duplicates=2)
        over = await post_events(client, key, "logs", [log_event(5)])
        assert_error(over, 429, retry_after=True)
        assert await redis.xlen(raw_stream(namespace, "logs")) == 5
        # another tenant has its own bucket
        theirs = await post_events(client, other, "logs", [log_event(5)])
        assert_accepted(theirs, accepted=1)
        # and so has another kind
        metrics = await post_events(client, key, "metrics", [metric_event(1)])
        assert_accepted(metrics, accepted=1)
    assert await raw_lengths(redis, namespace) == {"logs": 6, "metrics": 1, "spans": 0, "rum": 0}


async def test_batch_larger_than_the_burst_is_not_retryable_429(
    settings: Settings, redis: aioredis.Redis, namespace: str, key: ApiKey
) -> None:
    limited = configured(settings, rate_limit_events_per_s=100.0, rate_limit_burst=5.0)
    async with http_client(Gateway(limited, redis)) as client:
        first = await post_events(client, key, "logs", [log_event(i) for i in range(6)])
        if first.status_code == 429:  # follow Retry-After once; the bucket is full already
            await asyncio.sleep(0.1)
            first = await post_events(client, key, "logs", [log_event(i) for i in range(6)])
    assert first.status_code != 429, first.headers.get("retry-after")


async def test_backlog_over_the_high_watermark_is_503(
    settings: Settings, redis: aioredis.Redis, namespace: str, key: ApiKey
) -> None:
    stream = raw_stream(namespace, "logs")
    for i in range(3):
        await redis.xadd(stream, {"filler": str(i)})
    before = await raw_lengths(redis, namespace)
    async with http_client(Gateway(configured(settings, raw_high_watermark=3), redis)) as client:
        response = await post_events(client, key, "logs", [log_event(1)])
        assert_error(response, 503, retry_after=True)
        await assert_nothing_appended(redis, namespace, before)
        # the watermark is per kind
        spans = await post_events(client, key, "spans", [span_event(1)])
    assert_accepted(spans, accepted=1)


async def test_redis_unreachable_is_503_never_500(
    settings: Settings, redis: aioredis.Redis, namespace: str, key: ApiKey
) -> None:
    dead = connect("redis://127.0.0.1:1/0")
    try:
        async with http_client(Gateway(settings, dead), raise_app_exceptions=False) as client:
            ingest = await post_events(client, key, "logs", [log_event(1)])
            ready = await client.get("/readyz")
            healthy = await client.get("/healthz")
    finally:
        await dead.aclose()

    assert_error(ingest, 503, retry_after=True)
    assert_error(ready, 503)
    assert healthy.status_code == 200
    await assert_nothing_appended(redis, namespace)


# --- routing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/ingest/traces",
        "/v1/ingest/",
        "/v1/ingest/logs/",
        "/v1/ingest/LOGS",
        "/v2/ingest/logs",
        "/",
    ],
)
async def test_unknown_kind_or_path_is_404(
    path: str,
    client: httpx.AsyncClient,
    key: ApiKey,
    redis: aioredis.Redis,
    namespace: str,
) -> None:
    body = ndjson([log_event(1)])
    response = await signed_post(client, key, path, body)

    assert_error(response, 404)
    await assert_nothing_appended(redis, namespace)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_other_methods_on_ingest_are_405(
    method: str, client: httpx.AsyncClient, redis: aioredis.Redis, namespace: str
) -> None:
    response = await client.request(method, LOGS)

    assert_error(response, 405)
    assert response.headers["allow"] == "POST"
    await assert_nothing_appended(redis, namespace)


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded", "expected"),
    [
        (("10.0.0.0/8",), "10.1.2.3", "198.51.100.9", "198.51.100.9"),
        (("10.0.0.0/8",), "10.1.2.3", "192.0.2.1, 198.51.100.9, 10.0.0.5", "198.51.100.9"),
        (("10.0.0.0/8",), "10.1.2.3", "10.0.0.4, 10.0.0.5", "10.1.2.3"),
        (("10.0.0.0/8",), PEER, "198.51.100.9", PEER),
        ((), "10.1.2.3", "198.51.100.9", "10.1.2.3"),
        (
            ("10.0.0.0/8", "2001:db8::/32"),
            "2001:db8::1",
            "2001:db8:ffff::2, 198.51.100.9",
            "198.51.100.9",
        ),
    ],
    ids=[
        "trusted-peer",
        "rightmost-untrusted-hop",
        "all-trusted",
        "untrusted-peer",
        "no-trust",
        "ipv6",
    ],
)
async def test_x_forwarded_for_only_from_trusted_proxies(
    trusted: tuple[str, ...],
    peer: str,
    forwarded: str,
    expected: str,
    settings: Settings,
    redis: aioredis.Redis,
    namespace: str,
    key: ApiKey,
) -> None:
    gateway = Gateway(configured(settings, trusted_proxies=trusted), redis)
    async with http_client(gateway, peer=peer) as client:
        response = await post_events(
            client, key, "rum", [rum_event(1)], extra={"X-Forwarded-For": forwarded}
        )

    assert_accepted(response, accepted=1)
    [fields] = await raw_entries(redis, namespace, "rum")
    assert fields["ip"] == expected.encode()


# --- health, readiness, metrics -------------------------------------------------------------


async def test_healthz_and_readyz(client: httpx.AsyncClient) -> None:
    healthy = await client.get("/healthz")
    ready = await client.get("/readyz")

    assert healthy.status_code == 200
    assert healthy.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


async def test_readyz_is_503_while_a_raw_backlog_is_over_the_watermark(
    settings: Settings, redis: aioredis.Redis, namespace: str
) -> None:
    stream = raw_stream(namespace, "spans")
    for i in range(3):
        await redis.xadd(stream, {"filler": str(i)})
    async with http_client(Gateway(configured(settings, raw_high_watermark=3), redis)) as client:
        shedding = await client.get("/readyz")
        await redis.xtrim(stream, maxlen=2, approximate=False)
        recovered = await client.get("/readyz")

    assert "spans" in assert_error(shedding, 503)
    assert recovered.status_code == 200


def metric_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_requests_and_events(
    client: httpx.AsyncClient, key: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    events: list[dict[str, Any]] = [log_event(1), log_event(1), {"bad": 1}, log_event(2)]
    assert_accepted(
        await post_events(client, key, "logs", events), accepted=2, duplicates=1, rejected=[2]
    )
    assert_accepted(await post_events(client, key, "rum", [rum_event(1)]), accepted=1)
    stranger = ApiKey(key_id="rk_nobody", secret="s", tenant="acme")
    assert_error(await post_events(client, stranger, "logs", [log_event(3)]), 401)

    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = metric_samples(response.text)

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, frozenset(labels.items())))

    requests = "rivulet_gateway_requests_total"
    assert value(requests, kind="logs", status="202") == 1.0
    assert value(requests, kind="logs", status="401") == 1.0
    assert value(requests, kind="rum", status="202") == 1.0
    events_total = "rivulet_gateway_events_total"
    assert value(events_total, kind="logs", outcome="accepted") == 2.0
    assert value(events_total, kind="logs", outcome="duplicate") == 1.0
    assert value(events_total, kind="logs", outcome="rejected") == 1.0
    assert value(events_total, kind="rum", outcome="accepted") == 1.0
