"""Pure request handling for the gateway: no I/O, every failure a typed `HttpError`.

Order matters and is the contract's: the signature is verified on the bytes as sent; only then is
the body decompressed (bounded) and split into events; each event is validated on its own so one
bad event never sinks its batch (partial success).
"""

from __future__ import annotations

import ipaddress
import zlib
from collections.abc import Sequence
from typing import Final

import msgspec

from shared.events import InvalidEvent, parse_event
from shared.schemas import Kind, Rejection

GZIP_INPUT_PIECE: Final = 64 * 1024
JSON_TYPES: Final = frozenset({"application/json"})
NDJSON_TYPES: Final = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})


class HttpError(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class JsonBatch(msgspec.Struct, frozen=True):
    events: list[msgspec.Raw]


_batch_decoder: Final = msgspec.json.Decoder(JsonBatch)
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def check_content_headers(content_type: str, content_encoding: str) -> None:
    kind = media_type(content_type)
    if kind not in JSON_TYPES and kind not in NDJSON_TYPES:
        raise HttpError(
            415, f"unsupported content type {kind!r}: use application/json or application/x-ndjson"
        )
    if content_encoding.strip().lower() not in ("", "identity", "gzip"):
        raise HttpError(415, f"unsupported content encoding {content_encoding!r}: use gzip or none")


def decompress(body: bytes, content_encoding: str, limit: int) -> bytes:
    """Gunzip with a hard output bound, so a gzip bomb costs at most `limit` bytes of memory."""
    if content_encoding.strip().lower() != "gzip":
        if len(body) > limit:
            raise HttpError(413, f"body larger than {limit} bytes")
        return body
    chunks: list[bytes] = []
    size = 0
    position = 0
    pending = b""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    member_started = False
    # Input is fed in bounded pieces: a body of many tiny gzip members (RFC 1952 allows any
    # number) then costs linear time, since zlib only ever copies one piece as unused_data.
    while True:
        if not pending:
            if position >= len(body):
                break
            pending = body[position : position + GZIP_INPUT_PIECE]
            position += len(pending)
        try:
            out = inflater.decompress(pending, limit + 1 - size)
        except zlib.error as exc:
            raise HttpError(422, f"body is not valid gzip: {exc}") from None
        member_started = True
        size += len(out)
        if size > limit or inflater.unconsumed_tail:
            raise HttpError(413, f"decompressed body larger than {limit} bytes")
        chunks.append(out)
        if inflater.eof:
            pending = inflater.unused_data
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            member_started = False
        else:
            pending = b""
    if member_started:
        raise HttpError(422, "body is not valid gzip: truncated stream")
    return b"".join(chunks)


def split_events(body: bytes, content_type: str, max_events: int) -> list[bytes]:
    """The raw JSON bytes of each event, exactly as sent."""
    if media_type(content_type) in JSON_TYPES:
        try:
            batch = _batch_decoder.decode(body)
        except (msgspec.DecodeError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise HttpError(
                422, f'not a valid batch: expected {{"events": [...]}}: {reason}'
            ) from None
        events = [bytes(raw) for raw in batch.events]
    else:
        # At most `limit` splits, so a body of millions of tiny lines is refused having
        # materialized ~2x max_events of them (blank lines and CRLF leave room for 2x).
        limit = 2 * max_events + 2
        lines = body.split(b"\n", limit)
        if len(lines) > limit:
            raise HttpError(413, f"more than {max_events} events in one request")
        events = [stripped for line in lines if (stripped := line.strip())]
    if not events:
        raise HttpError(422, "not a valid batch: no events")
    if len(events) > max_events:
        raise HttpError(413, f"more than {max_events} events in one request")
    return events


def validate_events(
    kind: Kind, events: Sequence[bytes], tenant: str, max_event_bytes: int
) -> tuple[list[tuple[str, bytes]], list[Rejection]]:
    """Split into (event id, event as sent) to append and per-index rejections."""
    valid: list[tuple[str, bytes]] = []
    rejected: list[Rejection] = []
    for index, raw in enumerate(events):
        if len(raw) > max_event_bytes:
            rejected.append(Rejection(index, f"event larger than {max_event_bytes} bytes"))
            continue
        try:
            event = parse_event(kind, raw, tenant)
            if not raw.isascii():
                raw.decode()  # stream fields are UTF-8 (CONTRACT.md); raises if not
            valid.append((event.id, raw))
        except InvalidEvent as exc:
            rejected.append(Rejection(index, str(exc)[:500]))
        except UnicodeDecodeError:
            rejected.append(Rejection(index, "not UTF-8"))
    return valid, rejected


def parse_networks(cidrs: Sequence[str]) -> tuple[IpNetwork, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def parse_decimal(value: str, max_digits: int) -> int | None:
    """A plain ASCII decimal of at most `max_digits` digits, else None (never raises)."""
    if not value or len(value) > max_digits or not value.isascii() or not value.isdigit():
        return None
    return int(value)


def client_ip(peer: str, forwarded_for: str, trusted: Sequence[IpNetwork]) -> str:
    """The peer address, or the nearest untrusted X-Forwarded-For hop behind trusted proxies."""

    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in trusted)

    if not forwarded_for or not is_trusted(peer):
        return peer
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        if not is_trusted(hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer
    return peer
