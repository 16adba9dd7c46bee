"""Browser RUM: public browser keys on `/v1/ingest/rum?key=<key_id>`, and `GET /rum.js`.

A browser key is public (it ships in every page), so what it may do is narrow:
- only `POST /v1/ingest/rum`, only with an `Origin` among the key's origins (CORS preflights are
  answered for those origins alone; a refused origin gets no Access-Control-* header at all);
- `navigator.sendBeacon` bodies: `text/plain` holding NDJSON or `{"events": [...]}` (also
  `application/json` and `application/x-ndjson`), at most `rum_max_body_bytes` and
  `rum_max_events_per_request` events;
- token buckets per key and per client IP (IPv6 per /64), keys `<ns>:{rum}:rate:key:<key_id>`
  and `<ns>:{rum}:rate:ip:<address>`, checked before the tenant's own bucket in GATEWAY_APPEND;
- each event gets `attrs.origin` (the checked Origin, replacing whatever the page sent) and the
  key's IP policy (`rivulet.ip_policy`), which the normalizer applies after GeoIP and removes.
Browser keys have no secret and are refused everywhere else (signed ingest, OTLP, bearer).
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from importlib import resources
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

import msgspec
from redis.exceptions import RedisError

from services.gateway.ingest import HttpError, decompress, media_type, split_events, validate_events
from services.gateway.unsigned import error_body, headers_of, read_body, reply
from shared.apikeys import IP_POLICY_ATTR, ORIGIN_ATTR, normalize_origin
from shared.schemas import ApiKey

if TYPE_CHECKING:
    from services.gateway.app import Receive, Scope, Send
    from services.gateway.unsigned import ExtraRoutes

BODY_TYPES: Final = frozenset(
    {"text/plain", "application/json", "application/x-ndjson", "application/ndjson"}
)
ALLOWED_HEADERS: Final = frozenset({"content-type", "content-encoding"})
PREFLIGHT_MAX_AGE_S: Final = 600

# KEYS: per-key bucket, per-IP bucket. ARGV: events, then rate and burst of each bucket.
# Both buckets are debited together or not at all. Returns {"ok", "0"} | {"rate", retry_after_s}
# | {"toolarge", burst}.
BROWSER_BUCKETS: Final = """
local need = tonumber(ARGV[1])
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local left = {}
local wait = 0
for i = 1, 2 do
  local rate, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  if need > burst then return {'toolarge', tostring(burst)} end
  local bucket = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local tokens = tonumber(bucket[1]) or burst
  local last = tonumber(bucket[2]) or t
  tokens = math.min(burst, tokens + math.max(0, t - last) * rate)
  if need > tokens then wait = math.max(wait, math.ceil((need - tokens) / rate)) end
  left[i] = tokens - need
end
if wait > 0 then return {'rate', tostring(math.max(1, wait))} end
for i = 1, 2 do
  local rate, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  redis.call('HSET', KEYS[i], 'tokens', tostring(left[i]), 'ts', tostring(t))
  redis.call('EXPIRE', KEYS[i], math.ceil(burst / rate) + 60)
end
return {'ok', '0'}
"""

_object: Final = msgspec.json.Decoder(dict[str, Any])
_encoder: Final = msgspec.json.Encoder()


def _load_script() -> bytes:
    return (resources.files("services.gateway") / "static" / "rum.js").read_bytes()


RUM_JS: Final = _load_script()
RUM_JS_ETAG: Final = '"' + hashlib.sha256(RUM_JS).hexdigest()[:32] + '"'


def ip_bucket(ip: str) -> str:
    """The rate-limited unit of a client address: itself (IPv4), or its /64 (IPv6)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip or "unknown"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else address)


def tag_event(raw: bytes, origin: str, key: ApiKey) -> bytes:
    """The event with `attrs.origin` and the key's IP policy set (anything else untouched; a body
    that is not an object with an object `attrs` is left for validation to refuse)."""
    try:
        event = _object.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return raw
    attrs = event.get("attrs", {})
    if not isinstance(attrs, dict):
        return raw
    event["attrs"] = {**attrs, ORIGIN_ATTR: origin, IP_POLICY_ATTR: key.ip_policy}
    return _encoder.encode(event)


def split_beacon(body: bytes, content_type: str, max_events: int) -> list[bytes]:
    """A JSON batch `{"events": [...]}`, else NDJSON (sendBeacon sends both as text/plain)."""
    if media_type(content_type) != "application/x-ndjson" and body.lstrip().startswith(b"{"):
        try:
            return split_events(body, "application/json", max_events)
        except HttpError as exc:
            if exc.status == 413:
                raise
    return split_events(body, "application/x-ndjson", max_events)


class BrowserRoutes:
    def __init__(self, routes: ExtraRoutes) -> None:
        self.routes = routes
        self.gateway = routes.gateway
        self._buckets = self.gateway.redis.register_script(BROWSER_BUCKETS)

    def claims(self, scope: Scope) -> bool:
        """`/v1/ingest/rum` is ours for requests naming a browser key (`?key=`) and for CORS
        preflights (OPTIONS with Access-Control-Request-Method); the rest is signed ingest."""
        query: bytes = scope.get("query_string", b"")
        if b"key=" in query and "key" in parse_qs(query.decode("latin-1")):
            return True
        return scope["method"] == "OPTIONS" and any(
            name.lower() == b"access-control-request-method" for name, _ in scope["headers"]
        )

    async def script(self, scope: Scope, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await reply(send, 405, error_body("use GET"), {"allow": "GET, HEAD"})
            return
        headers = {
            "cache-control": "public, max-age=300",
            "etag": RUM_JS_ETAG,
            "access-control-allow-origin": "*",
            "x-content-type-options": "nosniff",
        }
        if RUM_JS_ETAG in headers_of(scope).get("if-none-match", ""):
            await send(
                {
                    "type": "http.response.start",
                    "status": 304,
                    "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        body = b"" if scope["method"] == "HEAD" else RUM_JS
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/javascript; charset=utf-8"),
                    (b"content-length", str(len(RUM_JS)).encode()),
                    *((k.encode(), v.encode()) for k, v in headers.items()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = headers_of(scope)
        started = time.perf_counter()
        status = 500
        cors: dict[str, str] = {}
        try:
            key, origin = await self._key_and_origin(scope, headers)
            allowed = self._preflight(headers) if scope["method"] == "OPTIONS" else {}
            cors = {"access-control-allow-origin": origin, "vary": "Origin"}
            if scope["method"] == "OPTIONS":
                status = 204
                await reply(send, 204, b"", {**cors, **allowed})
                return
            if scope["method"] != "POST":
                raise HttpError(405, "use POST")
            status, body = 202, await self._ingest(scope, receive, headers, key, origin)
            await reply(send, 202, body, cors)
        except HttpError as exc:
            status = exc.status
            extra = dict(cors)
            if exc.retry_after:
                extra["retry-after"] = str(exc.retry_after)
            if status == 405:
                extra["allow"] = "POST, OPTIONS"
            await reply(send, status, error_body(exc.message), extra)
        except RedisError as exc:
            status = 503
            message = error_body(f"storage unavailable: {type(exc).__name__}")
            await reply(send, 503, message, {**cors, "retry-after": "1"})
        finally:
            self.routes.count_request("rum", status, started)

    async def _key_and_origin(self, scope: Scope, headers: dict[str, str]) -> tuple[ApiKey, str]:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        key_id = (query.get("key") or [""])[0]
        if not key_id:
            raise HttpError(401, "missing ?key=<browser key id>")
        key = await self.gateway.key_store.lookup(key_id)
        if key is None:
            raise HttpError(401, "unknown or revoked key")
        if key.type != "browser":
            raise HttpError(401, "?key= takes a browser key (rivulet keys create --type browser)")
        sent = headers.get("origin", "")
        if not sent:
            raise HttpError(403, "no Origin header: browser keys accept browser requests only")
        try:
            origin = normalize_origin(sent)
        except ValueError:
            raise HttpError(403, f"origin {sent[:200]!r} not allowed for this key") from None
        if origin not in key.origins:
            raise HttpError(403, f"origin {origin!r} not allowed for this key")
        return key, origin

    def _preflight(self, headers: dict[str, str]) -> dict[str, str]:
        method = headers.get("access-control-request-method", "POST").strip().upper()
        if method != "POST":
            raise HttpError(403, "browser keys allow POST only")
        requested = {
            h.strip().lower()
            for h in headers.get("access-control-request-headers", "").split(",")
            if h.strip()
        }
        if not requested <= ALLOWED_HEADERS:
            raise HttpError(403, f"headers not allowed: {sorted(requested - ALLOWED_HEADERS)}")
        return {
            "access-control-allow-methods": "POST, OPTIONS",
            "access-control-allow-headers": "Content-Type, Content-Encoding",
            "access-control-max-age": str(PREFLIGHT_MAX_AGE_S),
        }

    async def _ingest(
        self,
        scope: Scope,
        receive: Receive,
        headers: dict[str, str],
        key: ApiKey,
        origin: str,
    ) -> bytes:
        settings = self.gateway.settings
        limit = settings.rum_max_body_bytes
        body = await read_body(receive, headers, limit)
        content_type = headers.get("content-type", "") or "text/plain"
        if media_type(content_type) not in BODY_TYPES:
            raise HttpError(415, "unsupported content type: use text/plain (sendBeacon) or JSON")
        encoding = headers.get("content-encoding", "")
        if encoding.strip().lower() not in ("", "identity", "gzip"):
            raise HttpError(415, f"unsupported content encoding {encoding!r}: gzip or none")
        raw = decompress(body, encoding, limit)
        events = split_beacon(raw, content_type, settings.rum_max_events_per_request)
        ip = self.routes.client_ip(scope, headers)
        await self._debit(key, ip, len(events))
        tagged = [tag_event(event, origin, key) for event in events]
        valid, rejected = validate_events("rum", tagged, key.tenant, settings.max_event_bytes)
        return await self.routes.append(
            "rum", key.tenant, ip, headers.get("user-agent", ""), valid, rejected
        )

    async def _debit(self, key: ApiKey, ip: str, events: int) -> None:
        settings = self.gateway.settings
        prefix = f"{self.gateway.keys.namespace}:{{rum}}:rate"
        status, value = await self._buckets(
            keys=[f"{prefix}:key:{key.key_id}", f"{prefix}:ip:{ip_bucket(ip)}"],
            args=[
                events,
                settings.rum_key_rate_per_s,
                settings.rum_key_burst,
                settings.rum_ip_rate_per_s,
                settings.rum_ip_burst,
            ],
        )
        if status == b"rate":
            raise HttpError(
                429, "browser key or client over its rate limit", retry_after=int(value)
            )
        if status == b"toolarge":
            raise HttpError(413, f"more events than a browser bucket holds ({value.decode()})")
