"""Hostile signing: what tests/integration/test_gateway.py does not already cover.

Tenant binding between two real keys, cross-endpoint replay of a spent signature, signatures over
the wrong bytes of a gzipped body, timestamps that look numeric to a lenient parser, signatures of
the wrong length, revocation in the middle of a stream of requests (cached and uncached), and the
constant-time comparison itself. Every refusal is checked to have appended nothing.
"""

from __future__ import annotations

import gzip
import hmac
import inspect
import time
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis

from services.gateway.app import Gateway
from shared.apikeys import KeyStore
from shared.config import Settings
from shared.schemas import KINDS, ApiKey
from shared.signing import sign, signature_matches
from shared.streams import Keys, xrange
from tests.helpers import (
    log_event,
    make_key,
    mark_seen,
    metric_event,
    ndjson,
    signed_request_headers,
)

PEER: Final = "203.0.113.7"
LOGS: Final = "/v1/ingest/logs"
METRICS: Final = "/v1/ingest/metrics"
NDJSON: Final = "application/x-ndjson"


# --- harness ------------------------------------------------------------------------------------


def http_client(gateway: Gateway) -> httpx.AsyncClient:
    # raise_app_exceptions=False: an unhandled exception becomes the bare 500 a server would send,
    # so "401, not 500" is asserted on the status rather than on a traceback.
    transport = httpx.ASGITransport(app=gateway, client=(PEER, 1234), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://gw")


@pytest.fixture
async def key_a(redis: aioredis.Redis, namespace: str) -> ApiKey:
    return await make_key(redis, namespace, tenant="tenant-a")


@pytest.fixture
async def key_b(redis: aioredis.Redis, namespace: str) -> ApiKey:
    return await make_key(redis, namespace, tenant="tenant-b")


@pytest.fixture
async def client(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(Gateway(settings, redis)) as http:
        yield http


async def raw_lengths(redis: aioredis.Redis, namespace: str) -> dict[str, int]:
    keys = Keys(namespace)
    return {kind: int(await redis.xlen(keys.stream(kind, "raw"))) for kind in KINDS}


async def raw_fields(redis: aioredis.Redis, namespace: str, kind: str) -> list[dict[str, bytes]]:
    entries = await xrange(redis, Keys(namespace).stream(kind, "raw"))
    return [{name.decode(): value for name, value in fields.items()} for _, fields in entries]


def assert_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    answer = response.json()
    assert set(answer) == {"error"}
    message: str = answer["error"]
    assert message
    return message


def assert_accepted(response: httpx.Response, accepted: int) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    assert answer["accepted"] == accepted, answer
    return answer


# --- tenant binding -------------------------------------------------------------------------------


async def test_key_of_tenant_b_stores_under_b_whatever_the_body_claims(
    client: httpx.AsyncClient,
    key_a: ApiKey,
    key_b: ApiKey,
    redis: aioredis.Redis,
    namespace: str,
) -> None:
    claimed = {"tenant": key_a.tenant, "x-rivulet-key": key_a.key_id}
    events = [log_event(1, **claimed), log_event(2, tenant=key_a.tenant)]
    body = msgspec.json.encode({"tenant": key_a.tenant, "key_id": key_a.key_id, "events": events})
    headers = signed_request_headers(key_b, LOGS, body, content_type="application/json")
    response = await client.post(LOGS, content=body, headers=headers)

    assert_accepted(response, accepted=2)
    stored = await raw_fields(redis, namespace, "logs")
    assert [f["tenant"] for f in stored] == [b"tenant-b", b"tenant-b"]
    assert await raw_lengths(redis, namespace) == {"logs": 2, "metrics": 0, "spans": 0, "rum": 0}


async def test_key_id_of_a_with_a_signature_made_by_b_is_401(
    client: httpx.AsyncClient,
    key_a: ApiKey,
    key_b: ApiKey,
    redis: aioredis.Redis,
    namespace: str,
) -> None:
    body = ndjson([log_event(1)])
    now = str(int(time.time()))
    headers = {
        "Content-Type": NDJSON,
        "X-Rivulet-Key": key_a.key_id,  # claims A ...
        "X-Rivulet-Timestamp": now,
        "X-Rivulet-Signature": sign(key_b.secret, now, "POST", LOGS, body),  # ... signed by B
    }
    response = await client.post(LOGS, content=body, headers=headers)

    assert_error(response, 401)
    assert await raw_lengths(redis, namespace) == dict.fromkeys(KINDS, 0)


async def test_dedupe_markers_of_tenant_a_do_not_swallow_tenant_b_events(
    client: httpx.AsyncClient,
    key_a: ApiKey,
    key_b: ApiKey,
    redis: aioredis.Redis,
    namespace: str,
) -> None:
    await mark_seen(redis, namespace, "logs", key_a.tenant, "log-1")
    body = ndjson([log_event(1)])
    as_a = await client.post(LOGS, content=body, headers=signed_request_headers(key_a, LOGS, body))
    as_b = await client.post(LOGS, content=body, headers=signed_request_headers(key_b, LOGS, body))

    assert as_a.json() == {"accepted": 0, "duplicates": 1, "rejected": []}
    assert as_b.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    assert [f["tenant"] for f in await raw_fields(redis, namespace, "logs")] == [b"tenant-b"]


# --- cross-endpoint replay ------------------------------------------------------------------------


def ambidextrous_event() -> dict[str, Any]:
    """Valid as a log AND as a metric: only the signature can tell the endpoints apart."""
    return {
        "ts": time.time_ns(),
        "service": "svc",
        "level": "info",
        "message": "m",
        "name": "cpu",
        "value": 1.5,
        "id": "both-1",
    }


@pytest.mark.parametrize(
    "target",
    [METRICS, "/v1/ingest/spans", "/v1/ingest/rum", LOGS + "?replayed=1", "/v1/ingest/logs/"],
)
async def test_signature_spent_on_logs_replayed_elsewhere_is_refused(
    target: str,
    client: httpx.AsyncClient,
    key_a: ApiKey,
    redis: aioredis.Redis,
    namespace: str,
) -> None:
    body = ndjson([ambidextrous_event()])
    # the body really is valid for metrics too: signed for metrics it would be accepted
    metrics_headers = signed_request_headers(key_a, METRICS, body)
    assert_accepted(await client.post(METRICS, content=body, headers=metrics_headers), 1)
    headers = signed_request_headers(key_a, LOGS, body, now=time.time() + 1)
    assert_accepted(await client.post(LOGS, content=body, headers=headers), 1)
    before = await raw_lengths(redis, namespace)

    replayed = await client.post(target, content=body, headers=headers)

    assert replayed.status_code in (401, 404), replayed.text  # never 202, never 409
    if target.startswith(("/v1/ingest/logs?", METRICS, "/v1/ingest/spans", "/v1/ingest/rum")):
        assert_error(replayed, 401)
    assert await raw_lengths(redis, namespace) == before


# --- which bytes are signed -----------------------------------------------------------------------


async def test_signature_over_gzip_bytes_but_plain_body_sent_is_401(
    client: httpx.AsyncClient, key_a: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    plain = ndjson([log_event(1)])
    compressed = gzip.compress(plain)
    for extra in ({"Content-Encoding": "gzip"}, {}):
        headers = signed_request_headers(key_a, LOGS, compressed, extra=extra)
        response = await client.post(LOGS, content=plain, headers=headers)
        assert_error(response, 401)
    assert await raw_lengths(redis, namespace) == dict.fromkeys(KINDS, 0)


async def test_signature_over_another_gzip_encoding_of_the_same_events_is_401(
    client: httpx.AsyncClient, key_a: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    plain = ndjson([log_event(i) for i in range(20)])
    signed = gzip.compress(plain, compresslevel=1, mtime=0)
    deflater = zlib.compressobj(9, zlib.DEFLATED, 31)
    sent = deflater.compress(plain) + deflater.flush()
    assert sent != signed and gzip.decompress(sent) == gzip.decompress(signed)
    headers = signed_request_headers(key_a, LOGS, signed, gzip_body=True)
    response = await client.post(LOGS, content=sent, headers=headers)

    assert_error(response, 401)
    assert await raw_lengths(redis, namespace) == dict.fromkeys(KINDS, 0)


# --- timestamps and signatures that are almost right ----------------------------------------------


def now_digits() -> str:
    return str(int(time.time()))


TIMESTAMP_VARIANTS: Final[dict[str, Callable[[str], bytes]]] = {
    "leading-plus": lambda d: ("+" + d).encode(),
    "leading-space": lambda d: (" " + d).encode(),
    "trailing-space": lambda d: (d + " ").encode(),
    "leading-tab": lambda d: ("\t" + d).encode(),
    "trailing-nul": lambda d: (d + "\0").encode(),
    "underscores": lambda d: (d[:4] + "_" + d[4:]).encode(),
    "fullwidth-digits": lambda d: "".join(chr(0xFF10 + int(c)) for c in d).encode(),
    "arabic-indic-digits": lambda d: "".join(chr(0x0660 + int(c)) for c in d).encode(),
    "devanagari-digits": lambda d: "".join(chr(0x0966 + int(c)) for c in d).encode(),
    "latin1-superscripts": lambda d: d[:-1].encode() + b"\xb9",
}


@pytest.mark.parametrize("variant", sorted(TIMESTAMP_VARIANTS))
async def test_timestamp_that_a_lenient_int_would_accept_is_401_not_500(
    variant: str,
    client: httpx.AsyncClient,
    key_a: ApiKey,
    redis: aioredis.Redis,
    namespace: str,
) -> None:
    raw_timestamp = TIMESTAMP_VARIANTS[variant](now_digits())
    body = ndjson([log_event(1)])
    # signed over exactly the header value the gateway sees (ASGI headers are latin-1)
    signature = sign(key_a.secret, raw_timestamp.decode("latin-1"), "POST", LOGS, body)
    headers = [
        (b"content-type", NDJSON.encode()),
        (b"x-rivulet-key", key_a.key_id.encode()),
        (b"x-rivulet-timestamp", raw_timestamp),
        (b"x-rivulet-signature", signature.encode()),
    ]
    response = await client.post(LOGS, content=body, headers=headers)

    assert "window" in assert_error(response, 401)
    assert await raw_lengths(redis, namespace) == dict.fromkeys(KINDS, 0)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s[:63],
        lambda s: s + "0",
        lambda s: s + s[-1],
        lambda s: "0" + s,
        lambda s: s[:-1] + ("0" if s[-1] != "0" else "1"),
        lambda s: s[:32],
        lambda s: s + s,
        lambda s: s[:63] + "\u00e9",
        lambda s: s[:63] + "\x00",
    ],
    ids=[
        "63-hex",
        "65-hex",
        "65-hex-repeat",
        "65-hex-prefixed",
        "64-hex-last-digit-changed",
        "32-hex",
        "128-hex",
        "63-hex-plus-latin1",
        "63-hex-plus-nul",
    ],
)
async def test_signature_of_the_wrong_length_or_one_digit_off_is_401(
    mangle: Callable[[str], str],
    client: httpx.AsyncClient,
    key_a: ApiKey,
    redis: aioredis.Redis,
    namespace: str,
) -> None:
    body = ndjson([log_event(1)])
    headers = signed_request_headers(key_a, LOGS, body)
    wrong: str = mangle(headers["X-Rivulet-Signature"])
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    raw_headers = [(k, v) for k, v in raw_headers if k != b"x-rivulet-signature"]
    raw_headers.append((b"x-rivulet-signature", wrong.encode("latin-1")))
    response = await client.post(LOGS, content=body, headers=raw_headers)

    assert_error(response, 401)
    assert await raw_lengths(redis, namespace) == dict.fromkeys(KINDS, 0)


# --- revocation in the middle of a stream -------------------------------------------------------


async def test_revocation_mid_stream_without_a_key_cache(
    settings: Settings, redis: aioredis.Redis, namespace: str, key_a: ApiKey
) -> None:
    gateway = Gateway(msgspec.structs.replace(settings, key_cache_ttl_s=0), redis)
    statuses: list[int] = []
    idem = {"Idempotency-Key": "before-revocation"}
    async with http_client(gateway) as client:
        first = ndjson([log_event(0)])
        answered = await client.post(
            LOGS, content=first, headers=signed_request_headers(key_a, LOGS, first, extra=idem)
        )
        assert_accepted(answered, 1)
        for i in range(1, 21):
            if i == 10:  # as `rivulet keys revoke` does, from another process
                assert await KeyStore(redis, Keys(namespace).api_keys).revoke(key_a.key_id)
            body = ndjson([log_event(i)])
            headers = signed_request_headers(key_a, LOGS, body)
            statuses.append((await client.post(LOGS, content=body, headers=headers)).status_code)
        # an Idempotency-Key retry of a request answered before the revocation is refused too:
        # authentication comes before the stored answer
        retry = await client.post(
            LOGS,
            content=first,
            headers=signed_request_headers(key_a, LOGS, first, extra=idem, now=time.time() + 1),
        )

    assert statuses == [202] * 9 + [401] * 11
    assert_error(retry, 401)
    stored = [f["id"] for f in await raw_fields(redis, namespace, "logs")]
    assert stored == [f"log-{i}".encode() for i in range(10)]


async def test_revocation_takes_effect_when_the_key_cache_expires(
    settings: Settings, redis: aioredis.Redis, namespace: str, key_a: ApiKey
) -> None:
    gateway = Gateway(msgspec.structs.replace(settings, key_cache_ttl_s=5.0), redis)
    fake_now = [1000.0]
    gateway.key_store = KeyStore(redis, Keys(namespace).api_keys, 5.0, clock=lambda: fake_now[0])

    async def send(http: httpx.AsyncClient, i: int) -> int:
        body = ndjson([metric_event(i)])
        headers = signed_request_headers(key_a, METRICS, body)
        return (await http.post(METRICS, content=body, headers=headers)).status_code

    async with http_client(gateway) as http:
        assert await send(http, 0) == 202  # cached now
        assert await KeyStore(redis, Keys(namespace).api_keys).revoke(key_a.key_id)
        fake_now[0] += 4.9
        within_ttl = await send(http, 1)  # the documented revocation delay
        fake_now[0] += 0.2
        after_ttl = [await send(http, i) for i in range(2, 5)]

    assert within_ttl == 202
    assert after_ttl == [401, 401, 401]
    assert await raw_lengths(redis, namespace) == {"logs": 0, "metrics": 2, "spans": 0, "rum": 0}


# --- constant-time comparison ---------------------------------------------------------------------


def test_signature_matches_compares_with_hmac_compare_digest_in_source() -> None:
    source = inspect.getsource(signature_matches)
    assert "hmac.compare_digest(" in source
    body = source.split('"""')[-1]  # the code after the docstring
    assert "==" not in body and "!=" not in body
    assert "startswith" not in body and ".find(" not in body


def test_signature_matches_calls_compare_digest_for_every_outcome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[object, object]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # shared.signing calls hmac.compare_digest
    secret, ts, body = "s3cret", "1700000000", b'{"a":1}\n'
    good = sign(secret, ts, "POST", LOGS, body)
    candidates = [good, good.upper(), good[:63], good + "0", "zz" * 32, "", "\u00e9" * 64]
    results = [signature_matches(secret, ts, "POST", LOGS, body, c) for c in candidates]

    assert results == [True, True, False, False, False, False, False]
    assert len(calls) == len(candidates)  # no early return on length or alphabet
    for (expected, provided), _candidate in zip(calls, candidates, strict=True):
        assert expected == good.encode()
        assert isinstance(provided, bytes)


async def test_gateway_verifies_through_compare_digest(
    monkeypatch: pytest.MonkeyPatch,
    client: httpx.AsyncClient,
    key_a: ApiKey,
    redis: aioredis.Redis,
    namespace: str,
) -> None:
    calls: list[int] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # shared.signing calls hmac.compare_digest
    body = ndjson([log_event(1)])
    headers = signed_request_headers(key_a, LOGS, body)
    forged = {**headers, "X-Rivulet-Signature": "0" * 64}
    assert_error(await client.post(LOGS, content=body, headers=forged), 401)
    assert_accepted(await client.post(LOGS, content=body, headers=headers), 1)

    assert len(calls) == 2
    assert (await raw_lengths(redis, namespace))["logs"] == 1
