"""Routes for senders that cannot sign bodies: OTLP, browsers, bearer tokens on native ingest.

`ExtraRoutes.dispatch` is called first by `Gateway.__call__` and claims:
- `/otlp/v1/{traces,logs,metrics}` (services/gateway/otlp.py);
- `GET /rum.js`, and `/v1/ingest/rum` when it carries `?key=` or is a CORS preflight
  (services/gateway/browser.py);
- `/v1/ingest/{kind}` with `Authorization: Bearer` and no `X-Rivulet-Key`: token keys created with
  `--allow-native` (everything else is refused with 401).
Everything else falls through to the signed native handling in app.py.

Whatever the route, events end in `Streams.gateway_append`, the very script the signed endpoint
uses (backlog watermark, tenant token bucket, dedupe check, all-or-nothing XADD), so dedupe,
normalizers and writers treat them alike. Requests without a signature have no replay guard to
spend: each passes a one-off guard key that expires after a second.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import msgspec
from redis.exceptions import RedisError

from services.gateway.ingest import (
    HttpError,
    check_content_headers,
    client_ip,
    decompress,
    parse_decimal,
    split_events,
    validate_events,
)
from shared.apikeys import parse_bearer, token_matches
from shared.schemas import KINDS, ApiKey, ErrorAnswer, Kind, Rejection

if TYPE_CHECKING:
    from services.gateway.app import Gateway, Receive, Scope, Send

INGEST_PREFIX: Final = "/v1/ingest/"
OTLP_PREFIX: Final = "/otlp/"
MAX_IDEMPOTENCY_KEY: Final = 1024
_rejections: Final = msgspec.json.Encoder()
_errors: Final = msgspec.json.Encoder()
_answer_decoder: Final = msgspec.json.Decoder(dict[str, object])


def headers_of(scope: Scope) -> dict[str, str]:
    return {
        name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]
    }


def error_body(message: str) -> bytes:
    return _errors.encode(ErrorAnswer(message))


async def reply(
    send: Send,
    status: int,
    body: bytes,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> None:
    raw = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    raw.extend((k.encode(), v.encode("latin-1")) for k, v in (headers or {}).items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes:
    declared = parse_decimal(headers.get("content-length", ""), 18)
    if declared is not None and declared > limit:
        raise HttpError(413, f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HttpError(400, "client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class ExtraRoutes:
    def __init__(self, gateway: Gateway) -> None:
        from services.gateway.browser import BrowserRoutes
        from services.gateway.otlp import OtlpRoutes

        self.gateway = gateway
        self.otlp = OtlpRoutes(self)
        self.browser = BrowserRoutes(self)

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Handle the request if it is one of ours; False lets app.py handle it."""
        path: str = scope["path"]
        if path.startswith(OTLP_PREFIX):
            await self.otlp.handle(scope, receive, send)
            return True
        if path == "/rum.js":
            await self.browser.script(scope, send)
            return True
        if path == INGEST_PREFIX + "rum" and self.browser.claims(scope):
            await self.browser.handle(scope, receive, send)
            return True
        if path.startswith(INGEST_PREFIX) and scope["method"] == "POST":
            headers = headers_of(scope)
            kind = path[len(INGEST_PREFIX) :]
            if kind in KINDS and "authorization" in headers and "x-rivulet-key" not in headers:
                await self._native_bearer(scope, receive, send, kind, headers)
                return True
        return False

    # --- pieces shared by the routes -----------------------------------------------------------

    def client_ip(self, scope: Scope, headers: dict[str, str]) -> str:
        peer = (scope.get("client") or ("", 0))[0] or ""
        return client_ip(peer, headers.get("x-forwarded-for", ""), self.gateway.trusted)

    async def bearer_key(self, headers: dict[str, str]) -> ApiKey:
        parsed = parse_bearer(headers.get("authorization", ""))
        if parsed is None:
            raise HttpError(401, "missing or malformed Authorization: Bearer <key_id>.<secret>")
        key = await self.gateway.key_store.lookup(parsed[0])
        if key is None:
            raise HttpError(401, "unknown or revoked key")
        if key.type != "token":
            raise HttpError(
                401, f"a {key.type} key cannot be a bearer token: create one with --type token"
            )
        if not token_matches(key, parsed[1]):
            raise HttpError(401, "wrong token secret")
        return key

    async def append(
        self,
        kind: Kind,
        tenant: str,
        ip: str,
        ua: str,
        valid: Sequence[tuple[str, bytes]],
        rejected: Sequence[Rejection],
        *,
        idempotency_key: str | None = None,
        body_hash: str = "",
        signature: str | None = None,
    ) -> bytes:
        """Append through GATEWAY_APPEND; returns the native JSON answer or raises HttpError."""
        gateway = self.gateway
        settings = gateway.settings
        status, value = await gateway.streams.gateway_append(
            kind,
            tenant,
            int(gateway.clock() * 1e9),
            ip,
            ua[:1024],
            valid,
            high_watermark=settings.raw_high_watermark,
            rate_per_s=settings.rate_limit_events_per_s,
            burst=settings.rate_limit_burst,
            idempotency_key=idempotency_key,
            idempotency_ttl_s=settings.idempotency_ttl_s,
            body_hash=body_hash,
            rejected_json=_rejections.encode(list(rejected)),
            # no signature to spend: a one-off guard key, gone after a second
            signature=signature or f"unsigned:{uuid.uuid4().hex}",
            signature_ttl_s=settings.signature_window_s * 2 + 60 if signature else 1,
        )
        if status == "idem":
            return replayed_answer(value, body_hash)
        if status == "replay":
            raise HttpError(409, "signature already used: sign every new request anew")
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
        answer = _answer_decoder.decode(value)
        metrics = gateway.metrics
        metrics.events.labels(kind, "accepted").inc(float(str(answer["accepted"])))
        metrics.events.labels(kind, "duplicate").inc(float(str(answer["duplicates"])))
        metrics.events.labels(kind, "rejected").inc(len(rejected))
        return value

    def count_request(self, kind: str, status: int, started: float) -> None:
        self.gateway.metrics.requests.labels(kind, str(status)).inc()
        self.gateway.metrics.latency.labels(kind).observe(time.perf_counter() - started)

    # --- bearer tokens on the native endpoint ----------------------------------------------------

    async def _native_bearer(
        self, scope: Scope, receive: Receive, send: Send, kind: Kind, headers: dict[str, str]
    ) -> None:
        started = time.perf_counter()
        status, body = 500, b""
        extra: dict[str, str] = {}
        try:
            status, body, extra = (
                202,
                await self._native_bearer_answer(receive, kind, headers, scope),
                {},
            )
        except HttpError as exc:
            status, body = exc.status, error_body(exc.message)
            extra = {"retry-after": str(exc.retry_after)} if exc.retry_after else {}
        except RedisError as exc:
            status, body = 503, error_body(f"storage unavailable: {type(exc).__name__}")
            extra = {"retry-after": "1"}
        finally:
            self.count_request(kind, status, started)
        await reply(send, status, body, extra)

    async def _native_bearer_answer(
        self, receive: Receive, kind: Kind, headers: dict[str, str], scope: Scope
    ) -> bytes:
        key = await self.bearer_key(headers)
        if not key.allow_native:
            raise HttpError(
                401,
                "this token key may send only to /otlp/v1/*; /v1/ingest/* needs signed requests "
                "or a token key created with --allow-native",
            )
        settings = self.gateway.settings
        body = await read_body(receive, headers, settings.max_body_bytes)
        idempotency_key = headers.get("idempotency-key", "") or None
        if idempotency_key and len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
            raise HttpError(400, f"Idempotency-Key longer than {MAX_IDEMPOTENCY_KEY} characters")
        content_type = headers.get("content-type", "")
        encoding = headers.get("content-encoding", "")
        check_content_headers(content_type, encoding)
        raw = decompress(body, encoding, settings.max_decompressed_bytes)
        events = split_events(raw, content_type, settings.max_events_per_request)
        valid, rejected = validate_events(kind, events, key.tenant, settings.max_event_bytes)
        return await self.append(
            kind,
            key.tenant,
            self.client_ip(scope, headers),
            headers.get("user-agent", ""),
            valid,
            rejected,
            idempotency_key=idempotency_key,
            body_hash=hashlib.sha256(body).hexdigest(),
        )


def replayed_answer(stored: bytes, body_hash: str) -> bytes:
    first_hash, _, answer = stored.partition(b"\n")
    if first_hash.decode() != body_hash:
        raise HttpError(422, "Idempotency-Key already used with a different body")
    return answer
