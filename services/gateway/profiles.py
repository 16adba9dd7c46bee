"""Gateway, profiles: `POST /v1/ingest/profiles?service=S&type=T` -> `rivulet:{profiles}:raw`.

Input: a signed request (signature over `path_with_query`, so service, type and labels are
signed too) whose body is one pprof protobuf, gzipped or not; `Content-Encoding: gzip` is also
accepted on top. Query parameters: `service` and `type` (required), `id` (optional: the client's
profile id; without one the id is sha256(tenant, body)[:32], so a resent profile is a
duplicate), and any other parameter is a label of the profile (`?service=api&type=cpu&env=prod`).
Output: one raw entry (services.profiler pipeline, see shared.profile_streams) with the protobuf
as a binary `body` field and plain fields tenant, kind, id, received_at, service, type, size,
labels, ip, ua; the answer `202 {"accepted": 1, "duplicates": 0, "rejected": [], "id": ...}`.
Refusals, nothing appended: 400 bad query parameters, 413 larger than `max_profile_bytes` on the
wire or `max_profile_decoded_bytes` after gunzip (a gzip bomb is cut there), 415 another content
type or encoding, 422 what `parse_profile` refuses (garbage, truncated, dangling ids, more than
`max_profile_samples` samples, stacks deeper than `max_profile_stack_depth`), with its reason.
Guarantee: as for events, one Lua script appends the profile with the replay guard, the
idempotency answer and the rate debit (one token per profile), or appends nothing.

The pure checks are functions here; `ProfileIngest` does the I/O (a thread for the parse, which
is CPU work, and the append script).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import parse_qsl

import msgspec

from services.gateway.ingest import HttpError, decompress, media_type
from services.profiler.app import limits_of
from services.profiler.pprof import GZIP_MAGIC, InvalidProfile, ProfileLimits, parse_profile
from services.profiler.records import profile_id
from shared.config import Settings
from shared.profile_streams import ProfileStreams
from shared.schemas import RawProfileEntry

PROFILE_CONTENT_TYPES: Final = frozenset(
    {
        "",
        "application/octet-stream",
        "application/protobuf",
        "application/x-protobuf",
        "application/vnd.google.protobuf",
    }
)
RESERVED: Final = frozenset({"service", "type", "id"})
_TYPE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_ID: Final = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_LABEL_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.:/-]{0,127}")
MAX_SERVICE: Final = 256
MAX_LABEL_VALUE: Final = 1024
PARSE_CONCURRENCY: Final = 2  # profiles decoded at once per gateway process (memory bound)


class ProfileQuery(msgspec.Struct, frozen=True):
    service: str
    type: str
    id: str | None = None
    labels: dict[str, str] = {}


def _printable(value: str) -> bool:
    return value.isprintable()


def parse_profile_query(query: str, max_labels: int) -> ProfileQuery:
    """The query string of an ingest request -> its fields; HttpError(400) when unusable."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise HttpError(400, "malformed query string") from None
    values: dict[str, str] = {}
    for name, value in pairs:
        if name in values:
            raise HttpError(400, f"query parameter {name[:64]!r} given twice")
        values[name] = value
    service = values.get("service", "")
    if not service or len(service) > MAX_SERVICE or not _printable(service):
        raise HttpError(
            400, f"service: required, at most {MAX_SERVICE} printable characters (?service=S)"
        )
    type_ = values.get("type", "")
    if not _TYPE.fullmatch(type_):
        raise HttpError(400, "type: required, 1-64 of A-Z a-z 0-9 _ . : - (?type=cpu)")
    client_id = values.get("id")
    if client_id is not None and not _ID.fullmatch(client_id):
        raise HttpError(400, "id: 1-128 of A-Z a-z 0-9 _ . : -")
    labels = {k: v for k, v in values.items() if k not in RESERVED}
    if len(labels) > max_labels:
        raise HttpError(400, f"more than {max_labels} labels")
    for key, value in labels.items():
        if not _LABEL_KEY.fullmatch(key):
            raise HttpError(
                400, f"label name {key[:64]!r}: a letter or _, then A-Z a-z 0-9 _ . : / -"
            )
        if len(value) > MAX_LABEL_VALUE or not _printable(value):
            raise HttpError(400, f"label {key!r}: at most {MAX_LABEL_VALUE} printable characters")
    return ProfileQuery(service=service, type=type_, id=client_id, labels=labels)


def check_profile_content(content_type: str, content_encoding: str) -> None:
    if media_type(content_type) not in PROFILE_CONTENT_TYPES:
        raise HttpError(
            415,
            f"unsupported content type {media_type(content_type)!r} for a profile: "
            "send the pprof protobuf as application/octet-stream",
        )
    if content_encoding.strip().lower() not in ("", "identity", "gzip"):
        raise HttpError(415, f"unsupported content encoding {content_encoding!r}: use gzip or none")


def profile_payload(body: bytes, content_encoding: str, decoded_limit: int) -> bytes:
    """The profile as it will be stored: the body without its transport gzip when that wrapped
    an already gzipped protobuf, else the body as sent (a gzipped or plain protobuf)."""
    if content_encoding.strip().lower() != "gzip":
        return body
    inner = decompress(body, "gzip", decoded_limit)
    return inner if inner[:2] == GZIP_MAGIC else body


def validate_profile(payload: bytes, limits: ProfileLimits) -> int:
    """Decode as the profiler will (bounded gunzip: 413; refusal: 422); returns the sample
    count."""
    if not payload:
        raise HttpError(422, "invalid profile: empty body")
    raw = decompress(payload, "gzip", limits.max_bytes) if payload[:2] == GZIP_MAGIC else payload
    if len(raw) > limits.max_bytes:
        raise HttpError(413, f"profile larger than {limits.max_bytes} bytes")
    try:
        return len(parse_profile(raw, limits).samples)
    except InvalidProfile as exc:
        raise HttpError(422, f"invalid profile: {exc.reason}"[:2000]) from None


class ProfileIngest:
    """Checks one authenticated profile request and appends it (the I/O half)."""

    def __init__(self, settings: Settings, streams: ProfileStreams) -> None:
        self.settings = settings
        self.streams = streams
        self.limits = limits_of(settings)
        self._parsing = asyncio.Semaphore(PARSE_CONCURRENCY)

    async def append(
        self,
        tenant: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        ip: str,
        received_at: int,
        signature: str,
        idempotency_key: str | None,
        body_hash: str,
    ) -> tuple[str, bytes]:
        """The append script's (status, value); HttpError when the request is refused."""
        settings = self.settings
        fields = parse_profile_query(query, settings.max_profile_labels)
        encoding = headers.get("content-encoding", "")
        check_profile_content(headers.get("content-type", ""), encoding)
        payload = profile_payload(body, encoding, settings.max_profile_decoded_bytes)
        async with self._parsing:
            await asyncio.to_thread(validate_profile, payload, self.limits)
        entry = RawProfileEntry(
            tenant=tenant,
            id=fields.id or profile_id(tenant, payload),
            received_at=received_at,
            service=fields.service,
            type=fields.type,
            body=payload,
            labels=fields.labels,
            size=len(body),
            ip=ip,
            ua=headers.get("user-agent", "")[:1024],
        )
        return await self.streams.append(
            entry,
            signature=signature,
            signature_ttl_s=settings.signature_window_s * 2 + 60,
            high_watermark=settings.profile_raw_high_watermark,
            rate_per_s=settings.rate_limit_events_per_s,
            burst=settings.rate_limit_burst,
            idempotency_key=idempotency_key,
            idempotency_ttl_s=settings.idempotency_ttl_s,
            body_hash=body_hash,
        )
