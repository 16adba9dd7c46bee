"""Gateway: signed HTTP in, `rivulet:{KIND}:raw` out.

Input: `POST /v1/ingest/{logs|metrics|spans|rum}` (CONTRACT.md, "HTTP"), and
`POST /v1/ingest/profiles?service=S&type=T` (one pprof protobuf: services/gateway/profiles.py).
Output: one raw stream entry per valid event: tenant, kind, id, received_at, body (as sent), ip, ua
(profiles: one entry per profile, with service, type, size and labels beside the binary body).
Guarantee: an answer of 202 means every accepted event is in Redis (one Lua script appends the
request's events all together or not at all, together with the idempotency answer and the rate
limit debit); any other answer means nothing was appended. Durability after that is Redis's
(see `appendfsync`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import msgspec
import redis.asyncio as aioredis
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from redis.exceptions import RedisError

from services.gateway.ingest import (
    HttpError,
    check_content_headers,
    client_ip,
    decompress,
    parse_decimal,
    parse_networks,
    split_events,
    validate_events,
)
from services.gateway.openapi import OPENAPI_JSON
from services.gateway.profiles import ProfileIngest
from services.gateway.unsigned import ExtraRoutes, error_body, headers_of, read_body, reply
from shared.apikeys import KeyStore
from shared.config import Settings
from shared.profile_streams import ProfileStreams
from shared.schemas import ALL_KINDS, PROFILES, ApiKey, Kind, Rejection
from shared.signing import signature_matches
from shared.streams import Keys, Streams, connect

log = structlog.get_logger()

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

INGEST_PREFIX: Final = "/v1/ingest/"
MAX_IDEMPOTENCY_KEY: Final = 1024
SIGNATURE_REPLAYED: Final = "signature already used: sign every new request anew"
_rejections: Final = msgspec.json.Encoder()


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rivulet_gateway_requests_total",
            "HTTP requests by status",
            ["kind", "status"],
            registry=self.registry,
        )
        self.events = Counter(
            "rivulet_gateway_events_total",
            "Events by outcome",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "rivulet_gateway_request_seconds",
            "Ingest request latency",
            ["kind"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )


class Gateway:
    """The ASGI application. Redis, the key store and the clock are injected for tests."""

    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = Keys(settings.namespace)
        self.streams = Streams(redis, self.keys)
        self.key_store = KeyStore(redis, self.keys.api_keys, settings.key_cache_ttl_s)
        self.trusted = parse_networks(settings.trusted_proxies)
        self.metrics = GatewayMetrics()
        self.clock = clock
        self.extra = ExtraRoutes(self)  # OTLP, browser RUM, bearer tokens (unsigned.py)
        self.profiles = ProfileIngest(settings, ProfileStreams(redis, self.keys))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if await self.extra.dispatch(scope, receive, send):
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith(INGEST_PREFIX):
            kind = path[len(INGEST_PREFIX) :]
            if kind not in ALL_KINDS:
                await reply(
                    send, 404, error_body(f"unknown kind {kind!r}: one of {', '.join(ALL_KINDS)}")
                )
            elif method != "POST":
                await reply(send, 405, error_body("use POST"), {"allow": "POST"})
            else:
                await self._ingest(scope, receive, send, kind)
        elif path == "/healthz":
            await reply(send, 200, b'{"status":"ok"}')
        elif path == "/openapi.json":
            await reply(send, 200, OPENAPI_JSON)
        elif path == "/readyz":
            await self._ready(send)
        elif path == "/metrics":
            await reply(
                send,
                200,
                generate_latest(self.metrics.registry),
                content_type="text/plain; version=0.0.4",
            )
        else:
            await reply(send, 404, error_body("not found"))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self._report_durability()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.redis.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _report_durability(self) -> None:
        """Say at start what a 202 rests on: Redis's persistence settings."""
        try:
            appendonly = await self.redis.config_get("appendonly")
            appendfsync = await self.redis.config_get("appendfsync")
        except RedisError as exc:  # managed Redis may forbid CONFIG: nothing to report then
            log.info("gateway.durability_unknown", error=str(exc))
            return
        aof = _config_value(appendonly, "appendonly")
        fsync = _config_value(appendfsync, "appendfsync")
        if aof != "yes":
            log.warning(
                "gateway.redis_not_durable",
                appendonly=aof,
                detail="accepted events are lost if Redis restarts; enable appendonly",
            )
        else:
            log.info("gateway.redis_durability", appendonly=aof, appendfsync=fsync)

    async def _ready(self, send: Send) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for kind in ALL_KINDS:
                    pipe.xlen(self.keys.stream(kind, "raw"))
                lengths = await pipe.execute()
        except RedisError as exc:
            await reply(send, 503, error_body(f"redis unreachable: {type(exc).__name__}"))
            return
        shedding = [
            k for k, n in zip(ALL_KINDS, lengths, strict=True) if n >= self._high_watermark(k)
        ]
        if shedding:
            await reply(
                send, 503, error_body(f"shedding load: raw backlog over watermark for {shedding}")
            )
        else:
            await reply(send, 200, b'{"status":"ready"}')

    def _high_watermark(self, kind: Kind) -> int:
        if kind == PROFILES:
            return self.settings.profile_raw_high_watermark
        return self.settings.raw_high_watermark

    async def _ingest(self, scope: Scope, receive: Receive, send: Send, kind: Kind) -> None:
        started = time.perf_counter()
        status = 500
        try:
            status, body, headers = await self._handle(scope, receive, kind)
        except HttpError as exc:
            status, body = exc.status, error_body(exc.message)
            headers = {"retry-after": str(exc.retry_after)} if exc.retry_after else {}
        except RedisError as exc:
            status, body, headers = (
                503,
                error_body(f"storage unavailable: {type(exc).__name__}"),
                {"retry-after": "1"},
            )
        finally:
            self.metrics.requests.labels(kind, str(status)).inc()
            self.metrics.latency.labels(kind).observe(time.perf_counter() - started)
        await reply(send, status, body, headers)

    async def _handle(
        self, scope: Scope, receive: Receive, kind: Kind
    ) -> tuple[int, bytes, dict[str, str]]:
        settings = self.settings
        headers = headers_of(scope)
        key_id = headers.get("x-rivulet-key", "")
        timestamp = headers.get("x-rivulet-timestamp", "")
        signature = headers.get("x-rivulet-signature", "")
        if not (key_id and timestamp and signature):
            raise HttpError(
                401, "missing X-Rivulet-Key, X-Rivulet-Timestamp or X-Rivulet-Signature"
            )
        max_body = settings.max_profile_bytes if kind == PROFILES else settings.max_body_bytes
        body = await read_body(receive, headers, max_body)

        key = await self._authenticate(key_id, timestamp, signature, scope, body)
        signature = signature.strip().lower()
        idempotency_key = headers.get("idempotency-key", "") or None
        if idempotency_key and len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
            raise HttpError(400, f"Idempotency-Key longer than {MAX_IDEMPOTENCY_KEY} characters")
        body_hash = hashlib.sha256(body).hexdigest()
        # No read of the idempotency answer or the replay guard before parsing: the append script
        # checks both first, atomically, and a separate round trip queued behind other requests'
        # scripts cost a third of the gateway's throughput (docs/performance.md).
        peer = (scope.get("client") or ("", 0))[0] or ""
        ip = client_ip(peer, headers.get("x-forwarded-for", ""), self.trusted)
        rejected: list[Rejection] = []
        if kind == PROFILES:
            status, value = await self.profiles.append(
                key.tenant,
                scope.get("query_string", b"").decode("latin-1"),
                headers,
                body,
                ip=ip,
                received_at=int(self.clock() * 1e9),
                signature=signature,
                idempotency_key=idempotency_key,
                body_hash=body_hash,
            )
        else:
            content_type = headers.get("content-type", "")
            encoding = headers.get("content-encoding", "")
            check_content_headers(content_type, encoding)
            raw = decompress(body, encoding, settings.max_decompressed_bytes)
            events = split_events(raw, content_type, settings.max_events_per_request)
            valid, rejected = validate_events(kind, events, key.tenant, settings.max_event_bytes)
            status, value = await self.streams.gateway_append(
                kind,
                key.tenant,
                int(self.clock() * 1e9),
                ip,
                headers.get("user-agent", "")[:1024],
                valid,
                high_watermark=settings.raw_high_watermark,
                rate_per_s=settings.rate_limit_events_per_s,
                burst=settings.rate_limit_burst,
                idempotency_key=idempotency_key,
                idempotency_ttl_s=settings.idempotency_ttl_s,
                body_hash=body_hash,
                rejected_json=_rejections.encode(rejected),
                signature=signature,
                signature_ttl_s=settings.signature_window_s * 2 + 60,
            )
        if status == "idem":
            return _replayed_answer(value, body_hash)
        if status == "replay":
            raise HttpError(409, SIGNATURE_REPLAYED)
        if status == "backlog":
            raise HttpError(
                503, f"{kind} backlog over its high watermark: retry later", retry_after=5
            )
        if status == "toolarge":
            raise HttpError(
                413, f"batch larger than the rate limit burst ({value.decode()} events)"
            )
        if status == "rate":
            raise HttpError(429, f"tenant over its {kind} rate limit", retry_after=int(value))
        self._count(kind, value, rejected)
        return 202, value, {}

    async def _authenticate(
        self, key_id: str, timestamp: str, signature: str, scope: Scope, body: bytes
    ) -> ApiKey:
        key = await self.key_store.lookup(key_id)
        if key is None:
            raise HttpError(401, "unknown or revoked key")
        if key.type != "hmac":  # token and browser keys never sign (README, "Keys")
            raise HttpError(401, f"a {key.type} key cannot sign requests: use an hmac key")
        seconds = parse_decimal(timestamp, 12)
        if seconds is None or abs(self.clock() - seconds) > self.settings.signature_window_s:
            raise HttpError(
                401, f"timestamp outside the {self.settings.signature_window_s} s window"
            )
        path = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope.get("query_string", b"")
        path_with_query = path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        if not signature_matches(
            key.secret, timestamp, scope["method"], path_with_query, body, signature
        ):
            raise HttpError(401, "bad signature")
        return key

    def _count(self, kind: Kind, answer: bytes, rejected: list[Rejection]) -> None:
        parsed = msgspec.json.decode(answer)
        self.metrics.events.labels(kind, "accepted").inc(parsed["accepted"])
        self.metrics.events.labels(kind, "duplicate").inc(parsed["duplicates"])
        self.metrics.events.labels(kind, "rejected").inc(len(rejected))


def _config_value(reply: dict[Any, Any], name: str) -> str:
    value = reply.get(name.encode(), reply.get(name, b""))
    return value.decode() if isinstance(value, bytes) else str(value)


def _replayed_answer(stored: bytes, body_hash: str) -> tuple[int, bytes, dict[str, str]]:
    first_hash, _, answer = stored.partition(b"\n")
    if first_hash.decode() != body_hash:
        raise HttpError(422, "Idempotency-Key already used with a different body")
    return 202, answer, {"idempotent-replayed": "true"}


def create_app(settings: Settings) -> Gateway:
    return Gateway(settings, connect(settings.redis_url))
