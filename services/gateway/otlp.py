"""OTLP/HTTP receiver: `POST /otlp/v1/{traces,logs,metrics}` (docs/otlp.md).

Bodies: `application/x-protobuf` or `application/json` (the OTLP JSON mapping), plain or gzip.
Authentication: `Authorization: Bearer <key_id>.<secret>` of a token key (OTLP exporters cannot
sign bodies), or the native HMAC signature headers of an hmac key.

Answers as the OTLP/HTTP specification asks: 200 with an Export*ServiceResponse in the request's
encoding (protobuf for protobuf, JSON for JSON), whose `partial_success` says how many records
were rejected and why; errors carry a `google.rpc.Status` in the same encoding, 400 for a body
that is not an export request, 429/503 with Retry-After when the sender should retry. A
duplicate (a resent export) is no rejection: it is answered 200 and stored once.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from google.protobuf import json_format
from google.rpc.status_pb2 import Status  # type: ignore[import-untyped]  # no stubs
from redis.exceptions import RedisError

from services.gateway.ingest import HttpError, decompress, validate_events
from services.gateway.otlp_mapping import (
    SIGNALS,
    Encoding,
    OtlpDecodeError,
    Signal,
    decode_request,
    encode_message,
    encoding_of,
    export_response,
    map_request,
    record_count,
)
from services.gateway.unsigned import headers_of, read_body, reply
from shared.schemas import ApiKey, Kind

if TYPE_CHECKING:
    from services.gateway.app import Receive, Scope, Send
    from services.gateway.unsigned import ExtraRoutes

OTLP_V1: Final = "/otlp/v1/"
CONTENT_TYPES: Final[dict[Encoding, str]] = {
    "protobuf": "application/x-protobuf",
    "json": "application/json",
}
# HTTP status -> google.rpc.Code, for the Status message of an error answer
GRPC_CODES: Final = {400: 3, 401: 16, 403: 7, 404: 5, 405: 12, 409: 10, 413: 3, 415: 3}
GRPC_CODES_RETRY: Final = {429: 8, 503: 14}
MAX_REASONS: Final = 5


class OtlpRoutes:
    def __init__(self, routes: ExtraRoutes) -> None:
        self.routes = routes
        self.gateway = routes.gateway

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        signal = path[len(OTLP_V1) :] if path.startswith(OTLP_V1) else ""
        headers = headers_of(scope)
        encoding: Encoding = encoding_of(headers.get("content-type", "")) or "json"
        if signal not in SIGNALS:
            await _error(send, 404, "not found: POST /otlp/v1/traces, /logs or /metrics", encoding)
            return
        if scope["method"] != "POST":
            await _error(send, 405, "use POST", encoding, {"allow": "POST"})
            return
        kind = SIGNALS[signal]
        started = time.perf_counter()
        status = 500
        try:
            body = await self._export(scope, receive, signal, kind, headers)
            status = 200
            await reply(send, 200, body, content_type=CONTENT_TYPES[encoding])
        except HttpError as exc:
            status = 400 if exc.status == 422 else exc.status
            retry = {"retry-after": str(exc.retry_after)} if exc.retry_after else {}
            await _error(send, status, exc.message, encoding, retry)
        except RedisError as exc:
            status = 503
            message = f"storage unavailable: {type(exc).__name__}"
            await _error(send, 503, message, encoding, {"retry-after": "1"})
        finally:
            self.routes.count_request(kind, status, started)

    async def _export(
        self, scope: Scope, receive: Receive, signal: Signal, kind: Kind, headers: dict[str, str]
    ) -> bytes:
        settings = self.gateway.settings
        encoding = encoding_of(headers.get("content-type", ""))
        if encoding is None:
            raise HttpError(
                415, "unsupported content type: use application/x-protobuf or application/json"
            )
        content_encoding = headers.get("content-encoding", "").strip().lower()
        if content_encoding not in ("", "identity", "gzip"):
            raise HttpError(415, f"unsupported content encoding {content_encoding!r}: gzip or none")
        if "x-rivulet-key" in headers:  # an hmac key may sign OTLP bodies too
            body = await read_body(receive, headers, settings.max_body_bytes)
            key = await self._signed_key(scope, headers, body)
            signature: str | None = headers.get("x-rivulet-signature", "").strip().lower()
        else:
            key = await self.routes.bearer_key(headers)
            body = await read_body(receive, headers, settings.max_body_bytes)
            signature = None
        raw = decompress(body, content_encoding, settings.max_decompressed_bytes)
        try:
            request = decode_request(signal, raw, encoding)
        except OtlpDecodeError as exc:
            raise HttpError(400, str(exc)) from None
        total = record_count(signal, request)
        if total > settings.max_events_per_request:
            raise HttpError(
                413, f"more than {settings.max_events_per_request} records in one export"
            )
        mapped = map_request(signal, request, int(self.gateway.clock() * 1e9))
        valid, rejected = validate_events(kind, mapped.events, key.tenant, settings.max_event_bytes)
        reasons = mapped.rejected + [r.reason for r in rejected]
        if valid:
            await self.routes.append(
                kind,
                key.tenant,
                self.routes.client_ip(scope, headers),
                headers.get("user-agent", ""),
                valid,
                rejected,
                signature=signature,
            )
        message = ""
        if reasons:
            message = f"{len(reasons)} of {total} rejected: " + "; ".join(reasons[:MAX_REASONS])
        return encode_message(export_response(signal, len(reasons), message), encoding)

    async def _signed_key(self, scope: Scope, headers: dict[str, str], body: bytes) -> ApiKey:
        key_id = headers.get("x-rivulet-key", "")
        timestamp = headers.get("x-rivulet-timestamp", "")
        signature = headers.get("x-rivulet-signature", "")
        if not (key_id and timestamp and signature):
            raise HttpError(
                401, "missing X-Rivulet-Key, X-Rivulet-Timestamp or X-Rivulet-Signature"
            )
        return await self.gateway._authenticate(key_id, timestamp, signature, scope, body)


async def _error(
    send: Send,
    status: int,
    message: str,
    encoding: Encoding,
    headers: dict[str, str] | None = None,
) -> None:
    code = GRPC_CODES.get(status) or GRPC_CODES_RETRY.get(status) or 13
    answer = Status(code=code, message=message)
    body = (
        answer.SerializeToString()
        if encoding == "protobuf"
        else json_format.MessageToJson(answer, indent=None).encode()
    )
    await reply(send, status, body, headers, content_type=CONTENT_TYPES[encoding])
