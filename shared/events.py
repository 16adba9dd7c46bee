"""Turn one client event (JSON bytes) into its canonical clean Struct, and compute event ids.

Used by the gateway (to validate, answer per event and stamp the id on the raw entry) and by the
normalizer (the authority: it re-parses the raw body). Both must agree, so this is the only place
that knows the rules:
- timestamps: RFC 3339 strings with an offset, or integer unix nanoseconds; canonical form is UTC
  nanoseconds within the range both stores can hold (1900-01-01 .. 2262-01-01);
- unknown top-level fields move into `attrs` (metrics too); attribute values that are not strings
  are stored as their JSON text;
- the event id is the client's `id`, or a hash of tenant + kind + canonical event.
"""

from __future__ import annotations

import calendar
import hashlib
import itertools
import math
import re
from typing import Any, Final, cast

import msgspec

from shared.schemas import (
    CLEAN_TYPES,
    WIRE_TYPES,
    CleanEvent,
    Histogram,
    Kind,
    Log,
    LogInFields,
    Metric,
    MetricInFields,
    Rum,
    RumInFields,
    Span,
    SpanInFields,
    Timestamp,
    WireEvent,
)

MIN_TS_NS: Final = -2208988800 * 10**9  # 1900-01-01T00:00:00Z
MAX_TS_NS: Final = 9214646400 * 10**9  # 2262-01-01T00:00:00Z, inside Int64 nanoseconds
MAX_ATTRS: Final = 1000
MAX_KEY_CHARS: Final = 256
MAX_ID_CHARS: Final = 128
MAX_TEXT_CHARS: Final = 256 * 1024
MAX_BUCKETS: Final = 10_000
MAX_BIGINT: Final = 2**63 - 1

_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)
# Hex digits in a trace id (32) and a span id (16).
TRACE_ID_DIGITS: Final = 32
SPAN_ID_DIGITS: Final = 16

_object_decoder: Final = msgspec.json.Decoder(dict[str, Any])
_canonical_encoder: Final = msgspec.json.Encoder(order="sorted")
_value_encoder: Final = msgspec.json.Encoder()
_KIND_OF: Final[dict[type[CleanEvent], Kind]] = {clean: kind for kind, clean in CLEAN_TYPES.items()}
_WIRE_FIELDS: Final[dict[Kind, frozenset[str]]] = {
    kind: frozenset(wire.__struct_fields__) for kind, wire in WIRE_TYPES.items()
}
# The fast path: straight into the wire Struct, refusing unknown fields. An event that has
# unknown fields (they move into attrs) or is invalid takes the general path through a dict,
# which also words every error; both build the event with the same `_build`.
_STRICT_DECODERS: Final[dict[Kind, msgspec.json.Decoder[Any]]] = {
    kind: msgspec.json.Decoder(
        msgspec.defstruct(
            f"{wire.__name__}Strict", [], bases=(wire,), forbid_unknown_fields=True, frozen=True
        )
    )
    for kind, wire in WIRE_TYPES.items()
}


class InvalidEvent(ValueError):
    """The event can never be stored as sent; the message is the reason given to the client."""


def parse_timestamp(value: Timestamp, field: str = "ts") -> int:
    """RFC 3339 string or integer unix nanoseconds -> UTC nanoseconds (range-checked)."""
    if isinstance(value, bool):
        raise InvalidEvent(f"{field}: expected RFC 3339 string or integer nanoseconds")
    if isinstance(value, int):
        nanos = value
    else:
        match = _RFC3339.fullmatch(value.strip())
        if match is None:
            raise InvalidEvent(f"{field}: not an RFC 3339 timestamp with an offset: {value[:64]!r}")
        year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
        if not (year >= 1 and 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]):
            raise InvalidEvent(f"{field}: no such date: {value[:64]!r}")
        if hour > 23 or minute > 59 or second > 59:
            raise InvalidEvent(f"{field}: no such time of day: {value[:64]!r}")
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
        if match.group(9):
            offset_hours, offset_minutes = int(match.group(10)), int(match.group(11))
            if offset_hours > 23 or offset_minutes > 59:
                raise InvalidEvent(f"{field}: no such UTC offset: {value[:64]!r}")
            offset = offset_hours * 3600 + offset_minutes * 60
            seconds -= offset if match.group(9) == "+" else -offset
        fraction = (match.group(7) or "")[:9].ljust(9, "0")
        nanos = seconds * 10**9 + int(fraction)
    if not MIN_TS_NS <= nanos < MAX_TS_NS:
        raise InvalidEvent(f"{field}: outside 1900-01-01..2262-01-01 (integers are nanoseconds)")
    return nanos


def _text(value: str | None, field: str, limit: int = MAX_TEXT_CHARS) -> str:
    if value is None:
        return ""
    if len(value) > limit:
        raise InvalidEvent(f"{field}: longer than {limit} characters")
    return value


def _string_map(values: dict[str, Any], field: str) -> dict[str, str]:
    """`values` with every value as a string (JSON for any other type), changed in place: it
    is the decoder's own dict, and copying it cost more than checking it."""
    if len(values) > MAX_ATTRS:
        raise InvalidEvent(f"{field}: more than {MAX_ATTRS} entries")
    for key, value in values.items():
        if len(key) > MAX_KEY_CHARS:
            raise InvalidEvent(f"{field}: key longer than {MAX_KEY_CHARS} characters")
        if isinstance(value, str):
            text = value
        else:
            text = _value_encoder.encode(value).decode()
            values[key] = text  # the same key: the dict keeps its size, so iterating goes on
        if len(text) > MAX_TEXT_CHARS:  # inline: the error's name is built only when needed
            raise InvalidEvent(f"{field}.{key[:64]}: longer than {MAX_TEXT_CHARS} characters")
    return values


def _attrs_with_extras(attrs: dict[str, Any], extras: dict[str, Any]) -> dict[str, str]:
    if extras:
        attrs = {**extras, **attrs}
    return _string_map(attrs, "attrs")


def _client_id(value: str | None) -> str:
    if value is None:
        return ""
    if not 0 < len(value) <= MAX_ID_CHARS:
        raise InvalidEvent(f"id: must be 1..{MAX_ID_CHARS} characters")
    return value


def _hex_id(value: str | None, field: str, digits: int, optional: bool) -> str:
    if value is None or (optional and value == ""):
        if optional:
            return ""
        raise InvalidEvent(f"{field}: required")
    lowered = value.lower()
    if not (_is_hex(lowered, digits) and lowered.strip("0")):
        raise InvalidEvent(f"{field}: expected {digits} non-zero hex digits")
    return lowered


def _is_hex(text: str, digits: int) -> bool:
    """`[0-9a-fA-F]{digits}` in full, at under half a regex's cost compiled. `bytes.fromhex`
    refuses any other character (non-ASCII ones too) but whitespace, which it skips: then fewer
    bytes come out."""
    if len(text) != digits:
        return False
    try:
        return len(_from_hex(text)) * 2 == digits
    except ValueError:
        return False


# Bound once: compiled, `bytes.fromhex(...)` looks the method up on every call.
_from_hex: Final = bytes.fromhex
_astuple: Final = msgspec.structs.astuple


def _histogram(value: Histogram | None) -> Histogram | None:
    """Buckets that PostgreSQL can store and that mean something (see `Histogram`)."""
    if value is None:
        return None
    lists = (value.bounds, value.counts, value.positive_counts, value.negative_counts)
    if any(len(items) > MAX_BUCKETS for items in lists):
        raise InvalidEvent(f"histogram: more than {MAX_BUCKETS} buckets")
    counts = (value.count, value.zero_count, *value.counts)
    counts += (*value.positive_counts, *value.negative_counts)
    if not all(0 <= n <= MAX_BIGINT for n in counts):
        raise InvalidEvent("histogram: counts must be 0..2**63-1")
    floats = [f for f in (value.sum, value.min, value.max, value.zero_threshold) if f is not None]
    if not all(math.isfinite(f) for f in (*floats, *value.bounds)):
        raise InvalidEvent("histogram: sum, min, max, bounds must be finite numbers")
    if any(a >= b for a, b in itertools.pairwise(value.bounds)):
        raise InvalidEvent("histogram: bounds must be strictly increasing")
    if value.counts and len(value.counts) != len(value.bounds) + 1:
        raise InvalidEvent("histogram: needs len(bounds) + 1 counts (or none)")
    if not -10 <= value.scale <= 20 or value.zero_threshold < 0:
        raise InvalidEvent("histogram: scale must be -10..20, zero_threshold >= 0")
    if not all(abs(o) < 2**31 for o in (value.positive_offset, value.negative_offset)):
        raise InvalidEvent("histogram: offsets must be 32-bit integers")
    if not 0 <= value.start_ns < MAX_TS_NS:
        raise InvalidEvent("histogram: start_ns out of range")
    return value


def _build(kind: Kind, wire: WireEvent, extras: dict[str, Any], tenant: str) -> CleanEvent:
    """`wire` was decoded as `kind`'s wire type (`parse_event`). The branches go by `kind`:
    compiled, `isinstance` against the type the strict decoders subclass was a slow call (~660
    instructions, docs/performance.md). Each builder gets the wire fields as one tuple
    (`shared.schemas.LogInFields`, ...)."""
    if kind == "logs":
        return _build_log(cast(LogInFields, _astuple(wire)), extras, tenant)
    if kind == "metrics":
        return _build_metric(cast(MetricInFields, _astuple(wire)), extras, tenant)
    if kind == "spans":
        return _build_span(cast(SpanInFields, _astuple(wire)), extras, tenant)
    return _build_rum(cast(RumInFields, _astuple(wire)), extras, tenant)


def _build_log(fields: LogInFields, extras: dict[str, Any], tenant: str) -> Log:
    ts, service, level, message, attrs, trace_id, span_id, host, ident = fields
    return Log(
        tenant=tenant,
        id=_client_id(ident),
        ts=parse_timestamp(ts),
        service=_text(service, "service", 256),
        level=_text(level, "level", 32).lower(),
        message=_text(message, "message"),
        attrs=_attrs_with_extras(attrs, extras),
        trace_id=_hex_id(trace_id, "trace_id", TRACE_ID_DIGITS, optional=True),
        span_id=_hex_id(span_id, "span_id", SPAN_ID_DIGITS, optional=True),
        host=_text(host, "host", 256),
    )


def _build_metric(fields: MetricInFields, extras: dict[str, Any], tenant: str) -> Metric:
    ts, name, value, metric_type, labels, service, host, attrs, ident, histogram = fields
    if not math.isfinite(value):
        raise InvalidEvent("value: must be a finite number")
    return Metric(
        tenant=tenant,
        id=_client_id(ident),
        ts=parse_timestamp(ts),
        name=_text(name, "name", 256),
        value=value,
        type=metric_type,
        labels=_string_map(labels, "labels"),
        service=_text(service, "service", 256),
        host=_text(host, "host", 256),
        attrs=_attrs_with_extras(attrs, extras),
        histogram=_histogram(histogram),
    )


def _build_span(fields: SpanInFields, extras: dict[str, Any], tenant: str) -> Span:
    (
        trace_id,
        span_id,
        service,
        name,
        start_ts,
        end_ts,
        duration_ns,
        parent_span_id,
        span_kind,
        status,
        status_message,
        attrs,
        ident,
    ) = fields
    start = parse_timestamp(start_ts, "start")
    if end_ts is not None:
        end = parse_timestamp(end_ts, "end")
    elif duration_ns is not None:
        end = start + duration_ns
    else:
        raise InvalidEvent("span needs end or duration_ns")
    if end < start or end >= MAX_TS_NS:
        raise InvalidEvent("end: before start or out of range")
    return Span(
        tenant=tenant,
        id=_client_id(ident),
        trace_id=_hex_id(trace_id, "trace_id", TRACE_ID_DIGITS, optional=False),
        span_id=_hex_id(span_id, "span_id", SPAN_ID_DIGITS, optional=False),
        parent_span_id=_hex_id(parent_span_id, "parent_span_id", SPAN_ID_DIGITS, optional=True),
        service=_text(service, "service", 256),
        name=_text(name, "name", 1024),
        ts=start,
        end_ts=end,
        duration_ns=end - start,
        kind=span_kind,
        status=status,
        status_message=_text(status_message, "status_message"),
        attrs=_attrs_with_extras(attrs, extras),
    )


def _build_rum(fields: RumInFields, extras: dict[str, Any], tenant: str) -> Rum:
    ts, session_id, rum_type, url, referrer, user_id, metrics, error, attrs, ident = fields
    if len(metrics) > MAX_ATTRS or any(len(k) > MAX_KEY_CHARS for k in metrics):
        raise InvalidEvent(f"metrics: more than {MAX_ATTRS} entries or an over-long name")
    if not all(math.isfinite(v) for v in metrics.values()):
        raise InvalidEvent("metrics: values must be finite numbers")
    return Rum(
        tenant=tenant,
        id=_client_id(ident),
        ts=parse_timestamp(ts),
        session_id=_text(session_id, "session_id", 256),
        type=rum_type,
        url=_text(url, "url", 8192),
        referrer=_text(referrer, "referrer", 8192),
        user_id=_text(user_id, "user_id", 256),
        metrics=metrics,
        error=_string_map(error, "error"),
        attrs=_attrs_with_extras(attrs, extras),
    )


def event_id(event: CleanEvent) -> str:
    """Hash of tenant + kind + the canonical event (id, received_at and enrichment excluded)."""
    bare = msgspec.structs.replace(event, id="", received_at=0)
    digest = hashlib.sha256(
        _KIND_OF[type(event)].encode() + b"\0" + _canonical_encoder.encode(bare)
    ).hexdigest()
    return digest[:32]


def _decode_general(kind: Kind, raw: bytes) -> tuple[WireEvent, dict[str, Any]]:
    """Any valid event, with its unknown top-level fields; every failure worded for the client."""
    try:
        obj = _object_decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidEvent(f"not a JSON object: {exc}") from None
    except RecursionError:
        raise InvalidEvent("not a JSON object: nested too deeply") from None
    try:
        wire = msgspec.convert(obj, WIRE_TYPES[kind])
    except msgspec.ValidationError as exc:
        raise InvalidEvent(str(exc)) from None
    known = _WIRE_FIELDS[kind]
    return wire, {k: v for k, v in obj.items() if k not in known}


def parse_event(kind: Kind, raw: bytes, tenant: str, received_at: int = 0) -> CleanEvent:
    """Validate one event's JSON bytes into its clean Struct, with its id set."""
    extras: dict[str, Any] = {}
    try:
        wire: WireEvent = _STRICT_DECODERS[kind].decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        wire, extras = _decode_general(kind, raw)
    event = _build(kind, wire, extras, tenant)
    assert isinstance(event, CLEAN_TYPES[kind])
    if event.id and received_at == event.received_at:
        return event  # the gateway's common case: a copy would change nothing
    return msgspec.structs.replace(event, id=event.id or event_id(event), received_at=received_at)
