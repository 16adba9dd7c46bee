"""Every event schema, defined once.

Two layers per kind:
- the *wire* Structs (`LogIn`, ...) are what clients send (CONTRACT.md, "Events"); they are
  lenient about timestamp formats and optional fields;
- the *clean* Structs (`Log`, ...) are canonical: UTC nanosecond timestamps, tenant, event id,
  string-valued attribute maps and enrichment. They are what `rivulet:{KIND}:clean` carries and
  what writers turn into rows.

All Structs are frozen; new fields must get defaults so that entries already in a stream still
decode.
"""

from __future__ import annotations

from typing import Any, Final, Literal, TypeAlias

import msgspec

Kind: TypeAlias = Literal["logs", "metrics", "spans", "rum"]
KINDS: Final[tuple[Kind, ...]] = ("logs", "metrics", "spans", "rum")

MetricType: TypeAlias = Literal["gauge", "counter", "histogram"]
SpanKind: TypeAlias = Literal["unspecified", "internal", "server", "client", "producer", "consumer"]
SpanStatus: TypeAlias = Literal["unset", "ok", "error"]
RumType: TypeAlias = Literal["page_view", "web_vital", "error", "resource", "action"]


# --- enrichment -------------------------------------------------------------------------------


class GeoInfo(msgspec.Struct, frozen=True):
    """City-level location of a client IP (empty when unknown or no database configured)."""

    country: str = ""
    city: str = ""
    lat: float | None = None
    lon: float | None = None


class UserAgentInfo(msgspec.Struct, frozen=True):
    """Parsed User-Agent header (empty strings when unknown)."""

    browser: str = ""
    browser_version: str = ""
    os: str = ""
    os_version: str = ""
    device: str = ""


# --- wire events (what clients send) -------------------------------------------------------------

Timestamp: TypeAlias = int | str


class LogIn(msgspec.Struct, frozen=True):
    ts: Timestamp
    service: str
    level: str
    message: str
    attrs: dict[str, Any] = {}
    trace_id: str | None = None
    span_id: str | None = None
    host: str | None = None
    id: str | None = None


class MetricIn(msgspec.Struct, frozen=True):
    ts: Timestamp
    name: str
    value: float
    type: MetricType = "gauge"
    labels: dict[str, str] = {}
    service: str | None = None
    host: str | None = None
    attrs: dict[str, Any] = {}
    id: str | None = None


class SpanIn(msgspec.Struct, frozen=True):
    trace_id: str
    span_id: str
    service: str
    name: str
    start: Timestamp
    end: Timestamp | None = None
    duration_ns: int | None = None
    parent_span_id: str | None = None
    kind: SpanKind = "unspecified"
    status: SpanStatus = "unset"
    status_message: str | None = None
    attrs: dict[str, Any] = {}
    id: str | None = None


class RumIn(msgspec.Struct, frozen=True):
    ts: Timestamp
    session_id: str
    type: RumType
    url: str
    referrer: str | None = None
    user_id: str | None = None
    metrics: dict[str, float] = {}
    error: dict[str, Any] = {}
    attrs: dict[str, Any] = {}
    id: str | None = None


WireEvent: TypeAlias = LogIn | MetricIn | SpanIn | RumIn
WIRE_TYPES: Final[dict[Kind, type[WireEvent]]] = {
    "logs": LogIn,
    "metrics": MetricIn,
    "spans": SpanIn,
    "rum": RumIn,
}


# --- clean events (canonical, enriched, scrubbed) ------------------------------------------------


class Log(msgspec.Struct, frozen=True):
    tenant: str
    id: str
    ts: int
    service: str
    level: str
    message: str
    attrs: dict[str, str] = {}
    trace_id: str = ""
    span_id: str = ""
    host: str = ""
    received_at: int = 0
    geo: GeoInfo = GeoInfo()


class Metric(msgspec.Struct, frozen=True):
    tenant: str
    id: str
    ts: int
    name: str
    value: float
    type: MetricType = "gauge"
    labels: dict[str, str] = {}
    service: str = ""
    host: str = ""
    received_at: int = 0
    attrs: dict[str, str] = {}


class Span(msgspec.Struct, frozen=True):
    tenant: str
    id: str
    trace_id: str
    span_id: str
    service: str
    name: str
    ts: int
    end_ts: int
    duration_ns: int
    parent_span_id: str = ""
    kind: SpanKind = "unspecified"
    status: SpanStatus = "unset"
    status_message: str = ""
    attrs: dict[str, str] = {}
    received_at: int = 0


class Rum(msgspec.Struct, frozen=True):
    tenant: str
    id: str
    ts: int
    session_id: str
    type: RumType
    url: str
    referrer: str = ""
    user_id: str = ""
    metrics: dict[str, float] = {}
    error: dict[str, str] = {}
    attrs: dict[str, str] = {}
    received_at: int = 0
    geo: GeoInfo = GeoInfo()
    user_agent: UserAgentInfo = UserAgentInfo()


CleanEvent: TypeAlias = Log | Metric | Span | Rum
CLEAN_TYPES: Final[dict[Kind, type[CleanEvent]]] = {
    "logs": Log,
    "metrics": Metric,
    "spans": Span,
    "rum": Rum,
}


# --- stream entries ------------------------------------------------------------------------------


class RawEntry(msgspec.Struct, frozen=True):
    """One entry of `rivulet:{KIND}:raw`: the event exactly as the client sent it."""

    tenant: str
    kind: Kind
    id: str
    received_at: int
    body: bytes
    ip: str = ""
    ua: str = ""


class CleanEntry(msgspec.Struct, frozen=True):
    """One entry of `rivulet:{KIND}:clean`: `body` is the clean event as JSON."""

    tenant: str
    kind: Kind
    id: str
    received_at: int
    body: bytes


class DeadLetter(msgspec.Struct, frozen=True):
    """One entry of `rivulet:{KIND}:dlq`: the failed body, why, where and after how many tries."""

    tenant: str
    kind: Kind
    id: str
    received_at: int
    body: bytes
    reason: str
    stage: Literal["gateway", "normalizer", "writer"]
    attempts: int = 1
    ip: str = ""
    ua: str = ""


# --- HTTP answers ---------------------------------------------------------------------------------


class Rejection(msgspec.Struct, frozen=True):
    index: int
    reason: str


class IngestAnswer(msgspec.Struct, frozen=True):
    accepted: int
    duplicates: int
    rejected: list[Rejection]


class ErrorAnswer(msgspec.Struct, frozen=True):
    error: str


class ApiKey(msgspec.Struct, frozen=True):
    key_id: str
    secret: str
    tenant: str
    created_at: int = 0
    revoked_at: int = 0
