"""OTLP export requests -> Rivulet native events (docs/otlp.md). Pure: no I/O.

`decode_request` parses a request body with opentelemetry-proto's generated classes: protobuf
(`application/x-protobuf`) as is, JSON (`application/json`) through google.protobuf's json_format
after turning the OTLP JSON mapping's hex trace/span ids into the base64 json_format expects
(enums as integers, 64-bit integers as strings or numbers and unknown fields are json_format's
own rules). `map_request` turns every span, log record and metric data point into one native
event (the JSON the native endpoint accepts), with a deterministic `id` (a hash of the mapped
record), so that a resent export is deduplicated like any resent native event.

Attributes: the record's own attributes keep their keys; resource attributes are prefixed
`resource.`, instrumentation-scope attributes `scope.`; OTLP fields that have no native column go
to `otel.*` attributes. Non-string values are stored as their JSON text by the native rules.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

import msgspec
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    ExponentialHistogramDataPoint,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    SummaryDataPoint,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from shared.schemas import Kind

Signal: TypeAlias = Literal["traces", "logs", "metrics"]
Encoding: TypeAlias = Literal["protobuf", "json"]
Request: TypeAlias = (
    ExportTraceServiceRequest | ExportLogsServiceRequest | ExportMetricsServiceRequest
)

SIGNALS: Final[dict[Signal, Kind]] = {"traces": "spans", "logs": "logs", "metrics": "metrics"}
PROTOBUF_TYPES: Final = frozenset({"application/x-protobuf", "application/protobuf"})
JSON_TYPES: Final = frozenset({"application/json"})
UNKNOWN_SERVICE: Final = "unknown_service"
SPAN_KINDS: Final = ("unspecified", "internal", "server", "client", "producer", "consumer")
STATUS_CODES: Final = ("unset", "ok", "error")
TEMPORALITIES: Final = ("unspecified", "delta", "cumulative")
SEVERITIES: Final = ("trace", "debug", "info", "warn", "error", "fatal")  # 1-4, 5-8, ... 21-24
NO_RECORDED_VALUE: Final = 1  # DataPointFlags.FLAG_NO_RECORDED_VALUE_MASK
# JSON keys that carry trace/span ids as hex in OTLP JSON (json_format wants base64 for bytes)
_ID_KEYS: Final = frozenset(
    {"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"}
)
_canonical: Final = msgspec.json.Encoder(order="sorted")
_encoder: Final = msgspec.json.Encoder()
_json_decoder: Final = msgspec.json.Decoder()


class OtlpDecodeError(ValueError):
    """The body is not an OTLP export request of this signal (answered 400)."""


REQUEST_TYPES: Final[dict[Signal, type[Request]]] = {
    "traces": ExportTraceServiceRequest,
    "logs": ExportLogsServiceRequest,
    "metrics": ExportMetricsServiceRequest,
}
RESPONSE_TYPES: Final[dict[Signal, type[Message]]] = {
    "traces": ExportTraceServiceResponse,
    "logs": ExportLogsServiceResponse,
    "metrics": ExportMetricsServiceResponse,
}
REJECTED_FIELD: Final[dict[Signal, str]] = {
    "traces": "rejected_spans",
    "logs": "rejected_log_records",
    "metrics": "rejected_data_points",
}


def encoding_of(content_type: str) -> Encoding | None:
    media = content_type.split(";", 1)[0].strip().lower()
    if media in PROTOBUF_TYPES:
        return "protobuf"
    if media in JSON_TYPES:
        return "json"
    return None


def decode_request(signal: Signal, body: bytes, encoding: Encoding) -> Request:
    message = REQUEST_TYPES[signal]()
    try:
        if encoding == "protobuf":
            message.ParseFromString(body)
        else:
            obj = _json_decoder.decode(body)
            if not isinstance(obj, dict):
                raise OtlpDecodeError("not a JSON object")
            json_format.ParseDict(_hex_ids_to_base64(obj), message, ignore_unknown_fields=True)
    except (DecodeError, json_format.ParseError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise OtlpDecodeError(f"not an OTLP {signal} export request: {exc}"[:500]) from None
    except RecursionError:
        raise OtlpDecodeError("body nested too deeply") from None
    return message


def _hex_ids_to_base64(value: Any) -> Any:
    """OTLP JSON writes trace/span ids as (case-insensitive) hex; proto3 JSON bytes are base64."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in _ID_KEYS and isinstance(item, str):
                try:
                    item = base64.b64encode(bytes.fromhex(item)).decode()
                except ValueError:
                    raise OtlpDecodeError(f"{key}: not a hex string: {item[:64]!r}") from None
            else:
                item = _hex_ids_to_base64(item)
            out[key] = item
        return out
    if isinstance(value, list):
        return [_hex_ids_to_base64(item) for item in value]
    return value


def encode_message(message: Message, encoding: Encoding) -> bytes:
    if encoding == "protobuf":
        return message.SerializeToString()
    return json_format.MessageToJson(message, indent=None).encode()


def export_response(signal: Signal, rejected: int, error_message: str) -> Message:
    """The ExportXServiceResponse: `partial_success` only when something was rejected."""
    response = RESPONSE_TYPES[signal]()
    if rejected or error_message:
        partial = response.partial_success  # type: ignore[attr-defined]
        setattr(partial, REJECTED_FIELD[signal], rejected)
        partial.error_message = error_message
    return response


# --- mapping ----------------------------------------------------------------------------------


@dataclass
class Mapped:
    """Native events (JSON bytes, each with its id) and the records that could not be mapped."""

    kind: Kind
    events: list[bytes] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    skipped: int = 0  # data points flagged "no recorded value": nothing to store


class _Reject(ValueError):
    pass


def any_value(value: AnyValue) -> Any:
    """AnyValue -> plain JSON value (bytes as base64, an unset value as null)."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, which)


def attributes(pairs: Iterable[KeyValue], prefix: str = "") -> dict[str, Any]:
    return {prefix + kv.key: any_value(kv.value) for kv in pairs}


def _hex(raw: bytes, size: int, name: str) -> str | None:
    """A trace/span id as lower-case hex; absent (None) when empty or all zero."""
    if not raw or raw == bytes(len(raw)):
        return None
    if len(raw) != size:
        raise _Reject(f"{name}: expected {size} bytes, got {len(raw)}")
    return binascii.hexlify(raw).decode()


class _Context:
    """What a resource and a scope contribute to each of their records."""

    def __init__(self, resource: Resource, scope: InstrumentationScope, schema_url: str) -> None:
        resource_attrs = attributes(resource.attributes)
        service = resource_attrs.get("service.name")
        self.service = service if isinstance(service, str) and service else UNKNOWN_SERVICE
        host = resource_attrs.get("host.name")
        self.host = host if isinstance(host, str) else None
        attrs = {f"resource.{k}": v for k, v in resource_attrs.items()}
        if scope.name:
            attrs["otel.scope.name"] = scope.name
        if scope.version:
            attrs["otel.scope.version"] = scope.version
        attrs.update(attributes(scope.attributes, "scope."))
        if schema_url:
            attrs["otel.schema_url"] = schema_url
        self.attrs = attrs


def _with_id(kind: Kind, event: dict[str, Any]) -> bytes:
    """Stamp the deterministic id: a hash of the mapped record (the same record, resent in any
    encoding, gets the same id)."""
    digest = hashlib.sha256(b"otlp\0" + kind.encode() + b"\0" + _canonical.encode(event))
    event["id"] = digest.hexdigest()[:32]
    return _encoder.encode(event)


def map_request(signal: Signal, request: Request, now_ns: int) -> Mapped:
    """Every record of the request as a native event; `now_ns` stands in for a missing time."""
    kind = SIGNALS[signal]
    mapped = Mapped(kind)
    for item in _records(signal, request, now_ns):
        if isinstance(item, _Reject):
            mapped.rejected.append(str(item))
        elif item is None:
            mapped.skipped += 1
        else:
            mapped.events.append(item)
    return mapped


def record_count(signal: Signal, request: Request) -> int:
    """Spans, log records or data points in the request (the unit partial_success counts)."""
    if isinstance(request, ExportTraceServiceRequest):
        return sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
    if isinstance(request, ExportLogsServiceRequest):
        return sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)
    return sum(
        len(_points(m))
        for r in request.resource_metrics
        for s in r.scope_metrics
        for m in s.metrics
    )


def _records(signal: Signal, request: Request, now_ns: int) -> Iterator[bytes | _Reject | None]:
    if isinstance(request, ExportTraceServiceRequest):
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                context = _Context(
                    resource_spans.resource,
                    scope_spans.scope,
                    scope_spans.schema_url or resource_spans.schema_url,
                )
                for span in scope_spans.spans:
                    yield _guard(lambda s=span, c=context: _span(s, c))
    elif isinstance(request, ExportLogsServiceRequest):
        for resource_logs in request.resource_logs:
            for scope_logs in resource_logs.scope_logs:
                context = _Context(
                    resource_logs.resource,
                    scope_logs.scope,
                    scope_logs.schema_url or resource_logs.schema_url,
                )
                for record in scope_logs.log_records:
                    yield _guard(lambda r=record, c=context: _log(r, c, now_ns))
    else:
        for resource_metrics in request.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                context = _Context(
                    resource_metrics.resource,
                    scope_metrics.scope,
                    scope_metrics.schema_url or resource_metrics.schema_url,
                )
                for metric in scope_metrics.metrics:
                    for point in _points(metric):
                        yield _guard(lambda m=metric, p=point, c=context: _metric(m, p, c, now_ns))


def _guard(build: Any) -> bytes | _Reject | None:
    try:
        result: bytes | None = build()
    except _Reject as exc:
        return exc
    return result


# --- spans ------------------------------------------------------------------------------------


def _span(span: Span, context: _Context) -> bytes:
    trace_id = _hex(span.trace_id, 16, "trace_id")
    span_id = _hex(span.span_id, 8, "span_id")
    if trace_id is None or span_id is None:
        raise _Reject("span without trace_id or span_id")
    attrs = dict(context.attrs)
    attrs.update(attributes(span.attributes))
    if span.trace_state:
        attrs["otel.trace_state"] = span.trace_state
    if span.flags:
        attrs["otel.flags"] = span.flags
    if span.kind >= len(SPAN_KINDS):
        attrs["otel.kind"] = span.kind
    if span.events:
        attrs["otel.events"] = [
            _drop_empty(
                {
                    "time_unix_nano": e.time_unix_nano,
                    "name": e.name,
                    "attributes": attributes(e.attributes),
                    "dropped_attributes_count": e.dropped_attributes_count,
                }
            )
            for e in span.events
        ]
    if span.links:
        attrs["otel.links"] = [
            _drop_empty(
                {
                    "trace_id": _hex(link.trace_id, 16, "link trace_id"),
                    "span_id": _hex(link.span_id, 8, "link span_id"),
                    "trace_state": link.trace_state,
                    "attributes": attributes(link.attributes),
                    "dropped_attributes_count": link.dropped_attributes_count,
                    "flags": link.flags,
                }
            )
            for link in span.links
        ]
    for name in ("attributes", "events", "links"):
        dropped = getattr(span, f"dropped_{name}_count")
        if dropped:
            attrs[f"otel.dropped_{name}_count"] = dropped
    status_code = span.status.code
    if status_code >= len(STATUS_CODES):
        attrs["otel.status_code"] = status_code
    event: dict[str, Any] = {
        "trace_id": trace_id,
        "span_id": span_id,
        "service": context.service,
        "name": span.name,
        "start": span.start_time_unix_nano,
        "end": span.end_time_unix_nano,
        "kind": SPAN_KINDS[span.kind] if span.kind < len(SPAN_KINDS) else "unspecified",
        "status": STATUS_CODES[status_code] if status_code < len(STATUS_CODES) else "unset",
        "attrs": attrs,
    }
    parent = _hex(span.parent_span_id, 8, "parent_span_id")
    if parent is not None:
        event["parent_span_id"] = parent
    if span.status.message:
        event["status_message"] = span.status.message
    return _with_id("spans", event)


def _drop_empty(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if v not in (None, "", 0, {}, [])}


# --- logs -------------------------------------------------------------------------------------


def severity_level(number: int, text: str) -> str:
    if 1 <= number <= 24:
        return SEVERITIES[(number - 1) // 4]
    return text.strip().lower()[:32] or "unspecified"


def _log(record: LogRecord, context: _Context, now_ns: int) -> bytes:
    attrs = dict(context.attrs)
    attrs.update(attributes(record.attributes))
    if record.severity_number:
        attrs["otel.severity_number"] = record.severity_number
    if record.severity_text:
        attrs["otel.severity_text"] = record.severity_text
    if record.observed_time_unix_nano not in (0, record.time_unix_nano):
        attrs["otel.observed_time_unix_nano"] = record.observed_time_unix_nano
    if record.flags:
        attrs["otel.flags"] = record.flags
    if record.dropped_attributes_count:
        attrs["otel.dropped_attributes_count"] = record.dropped_attributes_count
    if record.event_name:
        attrs["otel.event_name"] = record.event_name
    body_type = record.body.WhichOneof("value")
    if body_type is None:
        message = ""
    elif body_type == "string_value":
        message = record.body.string_value
    else:
        message = _encoder.encode(any_value(record.body)).decode()
        attrs["otel.body_type"] = body_type.removesuffix("_value")
    event: dict[str, Any] = {
        "ts": record.time_unix_nano or record.observed_time_unix_nano,
        "service": context.service,
        "level": severity_level(record.severity_number, record.severity_text),
        "message": message,
        "attrs": attrs,
    }
    trace_id = _hex(record.trace_id, 16, "trace_id")
    span_id = _hex(record.span_id, 8, "span_id")
    if trace_id is not None:
        event["trace_id"] = trace_id
    if span_id is not None:
        event["span_id"] = span_id
    if context.host is not None:
        event["host"] = context.host
    return _timed("logs", event, now_ns)


def _timed(kind: Kind, event: dict[str, Any], now_ns: int) -> bytes:
    """The id covers the record as sent; a record without any time gets the arrival time."""
    body = _with_id(kind, event)
    if event["ts"]:
        return body
    event["ts"] = now_ns
    return _encoder.encode(event)


# --- metrics ----------------------------------------------------------------------------------

Point: TypeAlias = (
    NumberDataPoint | HistogramDataPoint | ExponentialHistogramDataPoint | SummaryDataPoint
)


def _points(metric: Metric) -> list[Point]:
    which = metric.WhichOneof("data")
    if which is None:
        return []
    return list(getattr(metric, which).data_points)


def _metric(metric: Metric, point: Point, context: _Context, now_ns: int) -> bytes | None:
    which = metric.WhichOneof("data")
    assert which is not None
    if point.flags & NO_RECORDED_VALUE:
        return None
    attrs = dict(context.attrs)
    attrs["otel.metric_type"] = which
    if metric.unit:
        attrs["otel.unit"] = metric.unit
    if metric.description:
        attrs["otel.description"] = metric.description
    attrs.update(attributes(metric.metadata, "metadata."))
    if point.flags:
        attrs["otel.flags"] = point.flags
    if point.start_time_unix_nano and not isinstance(
        point, HistogramDataPoint | ExponentialHistogramDataPoint
    ):
        attrs["otel.start_time_unix_nano"] = point.start_time_unix_nano
    exemplars = getattr(point, "exemplars", ())
    if exemplars:
        attrs["otel.exemplars"] = [
            _drop_empty(
                {
                    "time_unix_nano": e.time_unix_nano,
                    "value": getattr(e, e.WhichOneof("value") or "as_double"),
                    "trace_id": _hex(e.trace_id, 16, "exemplar trace_id"),
                    "span_id": _hex(e.span_id, 8, "exemplar span_id"),
                    "filtered_attributes": attributes(e.filtered_attributes),
                }
            )
            for e in exemplars
        ]
    labels = {
        k: v if isinstance(v, str) else _encoder.encode(v).decode()
        for k, v in attributes(point.attributes).items()
    }
    event: dict[str, Any] = {
        "ts": point.time_unix_nano,
        "name": metric.name,
        "labels": labels,
        "service": context.service,
        "attrs": attrs,
    }
    if context.host is not None:
        event["host"] = context.host
    if isinstance(point, NumberDataPoint):
        value_field = point.WhichOneof("value")
        if value_field is None:
            raise _Reject(f"{metric.name}: data point without a value")
        event["value"] = float(getattr(point, value_field))
        if which == "sum":
            attrs["otel.temporality"] = TEMPORALITIES[metric.sum.aggregation_temporality % 3]
            attrs["otel.monotonic"] = metric.sum.is_monotonic
            event["type"] = "counter" if metric.sum.is_monotonic else "gauge"
        else:
            event["type"] = "gauge"
    elif isinstance(point, HistogramDataPoint):
        event["type"] = "histogram"
        event["value"] = point.sum if point.HasField("sum") else 0.0
        event["histogram"] = _drop_none(
            {
                "count": point.count,
                "scheme": "explicit",
                "temporality": TEMPORALITIES[metric.histogram.aggregation_temporality % 3],
                "sum": point.sum if point.HasField("sum") else None,
                "min": point.min if point.HasField("min") else None,
                "max": point.max if point.HasField("max") else None,
                "bounds": list(point.explicit_bounds),
                "counts": list(point.bucket_counts),
                "start_ns": point.start_time_unix_nano,
            }
        )
    elif isinstance(point, ExponentialHistogramDataPoint):
        temporality = metric.exponential_histogram.aggregation_temporality % 3
        event["type"] = "histogram"
        event["value"] = point.sum if point.HasField("sum") else 0.0
        event["histogram"] = _drop_none(
            {
                "count": point.count,
                "scheme": "exponential",
                "temporality": TEMPORALITIES[temporality],
                "sum": point.sum if point.HasField("sum") else None,
                "min": point.min if point.HasField("min") else None,
                "max": point.max if point.HasField("max") else None,
                "scale": point.scale,
                "zero_count": point.zero_count,
                "zero_threshold": point.zero_threshold,
                "positive_offset": point.positive.offset,
                "positive_counts": list(point.positive.bucket_counts),
                "negative_offset": point.negative.offset,
                "negative_counts": list(point.negative.bucket_counts),
                "start_ns": point.start_time_unix_nano,
            }
        )
    else:
        # a (legacy) summary: the sum as value, count and quantiles kept in attributes
        event["type"] = "gauge"
        event["value"] = point.sum
        attrs["otel.count"] = point.count
        attrs["otel.quantiles"] = [
            {"quantile": q.quantile, "value": q.value} for q in point.quantile_values
        ]
    return _timed("metrics", event, now_ns)


def _drop_none(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if v is not None}
