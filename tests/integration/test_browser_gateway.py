"""Browser RUM against real Redis (in-process gateway): public browser keys, CORS, sendBeacon
bodies, origin tagging, per-key and per-IP rate limits, smaller bodies, and `GET /rum.js`.
A real headless Chromium is driven in tests/e2e/test_browser_rum.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Final

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis

from services.gateway.app import Gateway
from services.gateway.browser import RUM_JS, ip_bucket
from shared.apikeys import IP_POLICY_ATTR, KeyStore
from shared.config import Settings
from shared.schemas import KINDS, ApiKey
from shared.signing import signed_headers
from shared.streams import Keys, xrange
from tests.helpers import ndjson, rum_event

PEER: Final = "198.51.100.23"
SHOP: Final = "https://shop.example.com"
RUM: Final = "/v1/ingest/rum"
CHROME: Final = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)


@pytest.fixture
def store(redis: aioredis.Redis, namespace: str) -> KeyStore:
    return KeyStore(redis, Keys(namespace).api_keys)


@pytest.fixture
async def browser(store: KeyStore) -> ApiKey:
    return await store.create("acme", "browser", origins=[SHOP, "http://localhost:8000"])


def _client(gateway: Gateway, peer: str = PEER) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=gateway, client=(peer, 4321))
    return httpx.AsyncClient(
        transport=transport, base_url="http://gw", headers={"User-Agent": CHROME}
    )


@pytest.fixture
async def client(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(Gateway(settings, redis)) as http:
        yield http


async def beacon(
    client: httpx.AsyncClient,
    key: ApiKey,
    body: bytes,
    origin: str | None = SHOP,
    content_type: str = "text/plain;charset=UTF-8",
) -> httpx.Response:
    headers = {"Content-Type": content_type}
    if origin is not None:
        headers["Origin"] = origin
    return await client.post(f"{RUM}?key={key.key_id}", content=body, headers=headers)


async def raw(redis: aioredis.Redis, namespace: str) -> list[dict[str, bytes]]:
    entries = await xrange(redis, Keys(namespace).stream("rum", "raw"))
    return [{k.decode(): v for k, v in fields.items()} for _, fields in entries]


async def nothing_appended(redis: aioredis.Redis, namespace: str) -> bool:
    lengths = [int(await redis.xlen(Keys(namespace).stream(k, "raw"))) for k in KINDS]
    return lengths == [0] * len(KINDS)


async def test_send_beacon_ndjson_is_accepted_and_tagged_with_the_origin(
    client: httpx.AsyncClient, browser: ApiKey, redis: aioredis.Redis, namespace: str
) -> None:
    events = [rum_event(1), rum_event(2, attrs={"origin": "https://evil.example", "k": "v"})]
    events[1][IP_POLICY_ATTR] = "keep-everything"  # a page cannot choose the IP policy
    response = await beacon(client, browser, ndjson(events))

    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 2, "duplicates": 0, "rejected": []}
    assert response.headers["access-control-allow-origin"] == SHOP
    assert response.headers["vary"] == "Origin"
    entries = await raw(redis, namespace)
    assert [e["id"] for e in entries] == [b"rum-1", b"rum-2"]
    assert {e["tenant"] for e in entries} == {b"acme"}
    assert entries[0]["ip"] == PEER.encode() and entries[0]["ua"] == CHROME.encode()
    tagged = [json.loads(e["body"]) for e in entries]
    assert tagged[0]["attrs"] == {"origin": SHOP, IP_POLICY_ATTR: "truncate"}
    assert tagged[1]["attrs"] == {"origin": SHOP, "k": "v", IP_POLICY_ATTR: "truncate"}


@pytest.mark.parametrize(
    "content_type", ["text/plain;charset=UTF-8", "application/json", "application/x-ndjson"]
)
async def test_json_batch_inside_any_accepted_content_type(
    content_type: str,
    client: httpx.AsyncClient,
    browser: ApiKey,
    redis: aioredis.Redis,
    namespace: str,
) -> None:
    body = msgspec.json.encode({"events": [rum_event(1), rum_event(2)]})
    if content_type == "application/x-ndjson":
        body = ndjson([rum_event(1), rum_event(2)])
    response = await beacon(client, browser, body, content_type=content_type)
    assert response.status_code == 202, response.text
    assert [e["id"] for e in await raw(redis, namespace)] == [b"rum-1", b"rum-2"]


async def test_cors_preflight(client: httpx.AsyncClient, browser: ApiKey) -> None:
    preflight = {
        "Origin": "http://localhost:8000",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    ok = await client.options(f"{RUM}?key={browser.key_id}", headers=preflight)
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == "http://localhost:8000"
    assert "POST" in ok.headers["access-control-allow-methods"]
    assert "content-type" in ok.headers["access-control-allow-headers"].lower()
    assert int(ok.headers["access-control-max-age"]) > 0

    refused = [
        await client.options(
            f"{RUM}?key={browser.key_id}", headers={**preflight, "Origin": "https://evil.example"}
        ),
        await client.options(f"{RUM}?key=rb_unknown", headers=preflight),
        await client.options(
            f"{RUM}?key={browser.key_id}",
            headers={**preflight, "Access-Control-Request-Headers": "x-rivulet-key"},
        ),
        await client.options(
            f"{RUM}?key={browser.key_id}",
            headers={**preflight, "Access-Control-Request-Method": "DELETE"},
        ),
    ]
    assert [r.status_code for r in refused] == [403, 401, 403, 403]
    assert all("access-control-allow-origin" not in r.headers for r in refused)


async def test_origin_and_key_type_are_enforced(
    client: httpx.AsyncClient,
    browser: ApiKey,
    store: KeyStore,
    redis: aioredis.Redis,
    namespace: str,
) -> None:
    body = ndjson([rum_event(1)])
    hmac_key = await store.create("acme")
    token = await store.create("acme", "token")
    answers = {
        "other-origin": await beacon(client, browser, body, origin="https://evil.example"),
        "no-origin": await beacon(client, browser, body, origin=None),
        "null-origin": await beacon(client, browser, body, origin="null"),
        "http-not-https": await beacon(client, browser, body, origin="http://shop.example.com"),
        "hmac-key": await beacon(client, hmac_key, body),
        "token-key": await beacon(client, token, body),
        "unknown": await client.post(f"{RUM}?key=rb_nope", content=body, headers={"Origin": SHOP}),
    }
    assert {name: r.status_code for name, r in answers.items()} == {
        "other-origin": 403,
        "no-origin": 403,
        "null-origin": 403,
        "http-not-https": 403,
        "hmac-key": 401,
        "token-key": 401,
        "unknown": 401,
    }
    assert all("access-control-allow-origin" not in r.headers for r in answers.values())
    # a browser key is refused everywhere else: signed ingest, OTLP, bearer
    signed = await client.post(
        "/v1/ingest/logs",
        content=body,
        headers={
            "Content-Type": "application/x-ndjson",
            **signed_headers(browser.key_id, "", "POST", "/v1/ingest/logs", body),
        },
    )
    assert signed.status_code == 401
    otlp = await client.post(
        "/otlp/v1/traces",
        content=b"",
        headers={
            "Content-Type": "application/x-protobuf",
            "Authorization": f"Bearer {browser.key_id}.x",
        },
    )
    assert otlp.status_code == 401
    assert await nothing_appended(redis, namespace)


async def test_smaller_body_and_batch_limits(
    settings: Settings, redis: aioredis.Redis, browser: ApiKey, namespace: str
) -> None:
    small = msgspec.structs.replace(settings, rum_max_body_bytes=400, rum_max_events_per_request=2)
    async with _client(Gateway(small, redis)) as client:
        big = ndjson([rum_event(1, attrs={"x": "y" * 500})])
        assert (await beacon(client, browser, big)).status_code == 413
        many = ndjson([rum_event(i) for i in range(3)])
        assert (await beacon(client, browser, many)).status_code == 413
        bad = await beacon(client, browser, b"x", content_type="application/octet-stream")
        assert bad.status_code == 415
    assert await nothing_appended(redis, namespace)


async def test_per_key_and_per_ip_rate_limits(
    settings: Settings,
    redis: aioredis.Redis,
    store: KeyStore,
    browser: ApiKey,
    namespace: str,
) -> None:
    limited = msgspec.structs.replace(
        settings,
        rum_key_burst=3.0,
        rum_key_rate_per_s=0.01,
        rum_ip_burst=5.0,
        rum_ip_rate_per_s=0.01,
    )
    gateway = Gateway(limited, redis)
    other = await store.create("acme", "browser", origins=[SHOP])
    async with _client(gateway) as client, _client(gateway, peer="198.51.100.99") as far:
        assert (
            await beacon(client, browser, ndjson([rum_event(1), rum_event(2)]))
        ).status_code == 202
        over_key = await beacon(client, browser, ndjson([rum_event(3), rum_event(4)]))
        assert over_key.status_code == 429
        assert int(over_key.headers["retry-after"]) >= 1
        # same IP, another key: the IP bucket (5) still has 3 events
        assert (
            await beacon(client, other, ndjson([rum_event(5), rum_event(6)]))
        ).status_code == 202
        over_ip = await beacon(client, other, ndjson([rum_event(7), rum_event(8)]))
        assert over_ip.status_code == 429
        # another IP with the other key: fine
        assert (await beacon(far, other, ndjson([rum_event(9)]))).status_code == 202
    assert len(await raw(redis, namespace)) == 5
    prefix = f"{namespace}:{{rum}}:rate"
    assert await redis.exists(f"{prefix}:key:{browser.key_id}", f"{prefix}:ip:{PEER}") == 2


def test_ipv6_clients_share_a_bucket_per_64() -> None:
    assert ip_bucket("2001:db8:1:2::5") == ip_bucket("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert ip_bucket("::ffff:198.51.100.23") == "198.51.100.23"


async def test_rum_js_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/rum.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.content == RUM_JS
    assert b"sendBeacon" in RUM_JS and b"data-key" in RUM_JS
    cached = await client.get("/rum.js", headers={"If-None-Match": response.headers["etag"]})
    assert cached.status_code == 304 and cached.content == b""


async def test_browser_key_creation_rules(store: KeyStore) -> None:
    key = await store.create(
        "acme", "browser", origins=["HTTPS://Shop.Example.com:443/", "https://shop.example.com"]
    )
    assert key.origins == (SHOP,)
    assert key.secret == "" and key.key_id.startswith("rb_")
    for bad in (
        {"type": "browser"},
        {"type": "browser", "origins": ["https://shop.example.com/path"]},
        {"type": "browser", "origins": ["https://*.example.com"]},
        {"type": "hmac", "origins": [SHOP]},
        {"type": "hmac", "allow_native": True},
    ):
        with pytest.raises(ValueError):
            await store.create("acme", **bad)
