"""Every event schema, defined once.

Two layers per kind:
- the *wire* Structs (`LogIn`, ...) are what clients send (CONTRACT.md, "Events"); they are
  lenient about timestamp formats and optional fields;
- the *clean* Structs (`Log`, ...) are canonical: UTC nanosecond timestamps, tenant, event id,
  string-valued attribute maps and enrichment. They are what `rivulet:{KIND}:clean` carries and
  what writers turn into rows.

All Structs are frozen; new fields must get defaults so that entries already in a stream still
decode.

Kinds: `Kind` names a stream family (`rivulet:{KIND}:...`). `KINDS` are the JSON event kinds the
normalizer handles; `profiles` (pprof protobufs) has its own stage, the profiler, and its own
entry layout (`RawProfileEntry`, `CleanProfile`); `ALL_KINDS` lists every stream family.
"""

from __future__ import annotations

from typing import Any, Final, Literal, TypeAlias

import msgspec

Kind: TypeAlias = Literal["logs", "metrics", "spans", "rum", "profiles"]
KINDS: Final[tuple[Kind, ...]] = ("logs", "metrics", "spans", "rum")  # JSON events (normalizer)
PROFILES: Final[Literal["profiles"]] = "profiles"
ALL_KINDS: Final[tuple[Kind, ...]] = (*KINDS, PROFILES)

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


class Histogram(msgspec.Struct, frozen=True):
    """The buckets of one histogram point, explicit or exponential (OTLP's two kinds), kept whole.

    explicit: `counts[i]` counts values in (bounds[i-1], bounds[i]]; len(counts) == len(bounds)+1
    (or no counts at all). exponential: base 2**(2**-scale); `positive_counts[i]` counts values in
    (base**(positive_offset+i), base**(positive_offset+i+1)], negatives alike by magnitude, and
    `zero_count` those within `zero_threshold` of zero. `start_ns` is the start of the
    aggregation window (unix ns, 0 when unknown).
    """

    count: int
    scheme: Literal["explicit", "exponential"] = "explicit"
    temporality: Literal["unspecified", "delta", "cumulative"] = "unspecified"
    sum: float | None = None
    min: float | None = None
    max: float | None = None
    bounds: list[float] = []
    counts: list[int] = []
    scale: int = 0
    zero_count: int = 0
    zero_threshold: float = 0.0
    positive_offset: int = 0
    positive_counts: list[int] = []
    negative_offset: int = 0
    negative_counts: list[int] = []
    start_ns: int = 0


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
    histogram: Histogram | None = None  # buckets of an OTLP (exponential) histogram point


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


# Each wire Struct's fields in declaration order, as `shared.events` reads them: one
# `msgspec.structs.astuple` call, where compiled code reads a field by a generic attribute lookup
# (~180 instructions; a log has nine). A field added to a wire Struct goes into its tuple too:
# tests/unit/test_events.py checks that they agree.
LogInFields: TypeAlias = tuple[
    Timestamp, str, str, str, dict[str, Any], str | None, str | None, str | None, str | None
]
MetricInFields: TypeAlias = tuple[
    Timestamp,
    str,
    float,
    MetricType,
    dict[str, str],
    str | None,
    str | None,
    dict[str, Any],
    str | None,
    Histogram | None,
]
SpanInFields: TypeAlias = tuple[
    str,
    str,
    str,
    str,
    Timestamp,
    Timestamp | None,
    int | None,
    str | None,
    SpanKind,
    SpanStatus,
    str | None,
    dict[str, Any],
    str | None,
]
RumInFields: TypeAlias = tuple[
    Timestamp,
    str,
    RumType,
    str,
    str | None,
    str | None,
    dict[str, float],
    dict[str, Any],
    dict[str, Any],
    str | None,
]

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
    histogram: Histogram | None = None  # set: stored in `metric_histograms`, not `metrics`


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


class StoredEvent(msgspec.Struct, frozen=True):
    """A clean event as a writer holds it: the key its sinks and dead letters need, and the body
    exactly as the normalizer wrote it (each sink decodes only what its store needs)."""

    tenant: str
    id: str
    ts: int
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
    stage: Literal["gateway", "normalizer", "writer", "profiler"]
    attempts: int = 1
    ip: str = ""
    ua: str = ""


# --- profiles -------------------------------------------------------------------------------------


class RawProfileEntry(msgspec.Struct, frozen=True):
    """One entry of `rivulet:{profiles}:raw`: a pprof as accepted by the gateway.

    `body` is the protobuf (gzipped or not), never JSON; service, type, size and labels (from the
    query string) are plain fields beside it.
    """

    tenant: str
    id: str
    received_at: int
    service: str
    type: str
    body: bytes
    labels: dict[str, str] = {}
    size: int = 0
    ip: str = ""
    ua: str = ""


class ProfileFunction(msgspec.Struct, frozen=True, array_like=True):
    """A function of a stored stack; `hash` identifies it (with the tenant) in every profile."""

    hash: int
    name: str
    system_name: str = ""
    filename: str = ""
    start_line: int = 0


class ProfileStack(msgspec.Struct, frozen=True, array_like=True):
    """A distinct stack, leaf first, one element per frame in every tuple.

    `hash` is `services.profiler.pprof.stack_id` of the frames, so equal stacks of any profile
    share one row; `functions` holds `ProfileFunction.hash` per frame.
    """

    hash: int
    functions: tuple[int, ...]
    lines: tuple[int, ...]
    inlined: tuple[bool, ...]
    mappings: tuple[str, ...]
    addresses: tuple[int, ...]


class CleanProfile(msgspec.Struct, frozen=True):
    """The body of one `rivulet:{profiles}:clean` entry (msgpack): a decoded profile, ready to
    become rows. `values[i][j]` is the sum, over the profile's samples on `stacks[i]`, of sample
    type `j`; `pprof` is the original protobuf, gzipped."""

    tenant: str
    id: str
    ts: int  # the profile's time_nanos, else its arrival
    received_at: int
    service: str
    type: str
    sample_types: tuple[str, ...]
    sample_units: tuple[str, ...]
    stacks: tuple[ProfileStack, ...]
    values: tuple[tuple[int, ...], ...]
    functions: tuple[ProfileFunction, ...]
    labels: dict[str, str] = {}
    default_sample_type: str = ""
    period_type: str = ""
    period_unit: str = ""
    period: int = 0
    time_nanos: int = 0
    duration_nanos: int = 0
    samples: int = 0  # samples in the original protobuf
    comments: tuple[str, ...] = ()
    doc_url: str = ""
    main_binary: str = ""
    build_id: str = ""
    size: int = 0  # bytes as accepted
    pprof: bytes = b""


# --- HTTP answers ---------------------------------------------------------------------------------


class Rejection(msgspec.Struct, frozen=True):
    index: int
    reason: str


class IngestAnswer(msgspec.Struct, frozen=True):
    accepted: int
    duplicates: int
    rejected: list[Rejection]


class ProfileAnswer(msgspec.Struct, frozen=True):
    """202 answer to `POST /v1/ingest/profiles`: IngestAnswer plus the profile id."""

    accepted: int
    duplicates: int
    rejected: list[Rejection]
    id: str


class ErrorAnswer(msgspec.Struct, frozen=True):
    error: str


KeyType: TypeAlias = Literal["hmac", "token", "browser"]
IpPolicy: TypeAlias = Literal["truncate", "drop"]


class ApiKey(msgspec.Struct, frozen=True):
    """An API key. `type` says how it authenticates (README, "Keys"):
    - hmac: signs every request with `secret` (the native endpoints, and OTLP);
    - token: `Authorization: Bearer <key_id>.<secret>` on /otlp/v1/*, and on /v1/ingest/* only
      with `allow_native`; only `token_sha256` is stored, never the secret;
    - browser: public, no secret; only `/v1/ingest/rum?key=<key_id>` from one of `origins`, the
      client IP used for GeoIP then truncated or dropped (`ip_policy`).
    """

    key_id: str
    secret: str
    tenant: str
    created_at: int = 0
    revoked_at: int = 0
    type: KeyType = "hmac"
    token_sha256: str = ""
    allow_native: bool = False
    origins: tuple[str, ...] = ()
    ip_policy: IpPolicy = "truncate"
