"""Test helpers: keys, signed requests, event factories (no server fakes)."""

from __future__ import annotations

import gzip
import time
from collections.abc import Sequence
from typing import Any

import httpx
import msgspec
import redis.asyncio as aioredis

from shared.apikeys import KeyStore
from shared.schemas import ApiKey, CleanEvent, StoredEvent
from shared.signing import signed_headers
from shared.streams import Keys

NOW_NS = time.time_ns()


async def make_key(redis: aioredis.Redis, namespace: str, tenant: str = "acme") -> ApiKey:
    return await KeyStore(redis, Keys(namespace).api_keys).create(tenant)


async def mark_seen(
    redis: aioredis.Redis, namespace: str, kind: str, tenant: str, event_id: str, ttl_s: int = 60
) -> None:
    """The normalizer's dedupe marker for (tenant, id), as its commit script writes it."""
    expires_ms = int(time.time() * 1000) + ttl_s * 1000
    await redis.zadd(Keys(namespace).dedupe(kind, tenant), {event_id: expires_ms})


async def forget_seen(
    redis: aioredis.Redis, namespace: str, kind: str, tenant: str, event_ids: Sequence[str]
) -> None:
    """Drop dedupe markers, so the same events count as new again (a resend after the window)."""
    await redis.zrem(Keys(namespace).dedupe(kind, tenant), *event_ids)


def stored(events: Sequence[CleanEvent]) -> list[StoredEvent]:
    """Clean events as a writer holds them after reading the clean stream."""
    return [
        StoredEvent(e.tenant, e.id, e.ts, e.received_at, msgspec.json.encode(e)) for e in events
    ]


def ndjson(events: Sequence[dict[str, Any]]) -> bytes:
    return b"".join(msgspec.json.encode(e) + b"\n" for e in events)


def signed_request_headers(
    key: ApiKey,
    path: str,
    body: bytes,
    *,
    content_type: str = "application/x-ndjson",
    gzip_body: bool = False,
    now: float | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    headers = {"Content-Type": content_type, **(extra or {})}
    if gzip_body:
        headers["Content-Encoding"] = "gzip"
    headers.update(signed_headers(key.key_id, key.secret, "POST", path, body, now=now))
    return headers


async def post_events(
    client: httpx.AsyncClient,
    key: ApiKey,
    kind: str,
    events: Sequence[dict[str, Any]],
    *,
    gzip_body: bool = False,
    extra: dict[str, str] | None = None,
    now: float | None = None,
) -> httpx.Response:
    path = f"/v1/ingest/{kind}"
    body = ndjson(events)
    if gzip_body:
        body = gzip.compress(body)
    headers = signed_request_headers(key, path, body, gzip_body=gzip_body, extra=extra, now=now)
    return await client.post(path, content=body, headers=headers)


def log_event(i: int, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "ts": NOW_NS + i,
        "service": "checkout",
        "level": "info",
        "message": f"event {i}",
        "attrs": {"n": i},
        "id": f"log-{i}",
    }
    event.update(overrides)
    return event


def metric_event(i: int, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "ts": NOW_NS + i,
        "name": "cpu.usage",
        "value": i / 10,
        "labels": {"host": f"h{i % 3}"},
        "id": f"metric-{i}",
    }
    event.update(overrides)
    return event


def span_event(i: int, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "trace_id": f"{i + 1:032x}",
        "span_id": f"{i + 1:016x}",
        "service": "api",
        "name": "GET /cart",
        "start": NOW_NS + i,
        "duration_ns": 1_000_000,
        "status": "ok",
        "id": f"span-{i}",
    }
    event.update(overrides)
    return event


def rum_event(i: int, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "ts": NOW_NS + i,
        "session_id": f"s{i % 5}",
        "type": "page_view",
        "url": f"https://shop.example.com/p/{i}",
        "id": f"rum-{i}",
    }
    event.update(overrides)
    return event
