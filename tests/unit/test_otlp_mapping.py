"""OTLP -> native events (services/gateway/otlp_mapping.py), pure.

The official OTLP JSON examples (tests/data/otlp, from opentelemetry-proto's examples/) decode to
the expected clean events; protobuf and JSON encodings of a record map to the same event and id;
every AnyValue type, severity, span kind/status/events/links and metric point type is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import msgspec
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from services.gateway.otlp_mapping import (
    Mapped,
    OtlpDecodeError,
    Signal,
    decode_request,
    export_response,
    map_request,
    record_count,
    severity_level,
)
from shared.events import InvalidEvent, parse_event
from shared.schemas import Histogram, Log, Metric
from shared.schemas import Span as CleanSpan

DATA: Final = Path(__file__).resolve().parents[1] / "data" / "otlp"
NOW: Final = 1_700_000_000_000_000_000
CONTEXT: Final = {
    "resource.service.name": "my.service",
    "otel.scope.name": "my.library",
    "otel.scope.version": "1.0.0",
    "scope.my.scope.attribute": "some scope attribute",
}


def example(signal: Signal, name: str) -> Mapped:
    request = decode_request(signal, (DATA / f"{name}.json").read_bytes(), "json")
    return map_request(signal, request, NOW)


def clean(mapped: Mapped) -> list[Any]:
    return [parse_event(mapped.kind, raw, "acme") for raw in mapped.events]


def test_official_trace_example() -> None:
    mapped = example("traces", "trace")
    [span] = clean(mapped)
    assert mapped.rejected == []
    assert isinstance(span, CleanSpan)
    assert (span.trace_id, span.span_id, span.parent_span_id) == (
        "5b8efff798038103d269b633813fc60c",
        "eee19b7ec3c1b174",
        "eee19b7ec3c1b173",
    )
    assert (span.service, span.name, span.kind, span.status) == (
        "my.service",
        "I'm a server span",
        "server",
        "unset",
    )
    assert (span.ts, span.end_ts, span.duration_ns) == (
        1544712660000000000,
        1544712661000000000,
        10**9,
    )
    assert span.attrs == {**CONTEXT, "my.span.attr": "some value"}
    assert len(span.id) == 32


def test_official_logs_example() -> None:
    [log] = clean(example("logs", "logs"))
    assert isinstance(log, Log)
    assert (log.ts, log.service, log.level, log.message) == (
        1544712660300000000,
        "my.service",
        "information",  # severityText only: its text, lower-cased
        "Example log record",
    )
    assert (log.trace_id, log.span_id) == ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174")
    assert log.attrs == {
        **CONTEXT,
        "string.attribute": "some string",
        "boolean.attribute": "true",
        "int.attribute": "10",
        "double.attribute": "637.704",
        "array.attribute": '["many","values"]',
        "map.attribute": '{"some.map.key":"some value"}',
        "otel.severity_text": "Information",
    }


def test_official_metrics_example() -> None:
    counter, gauge, histogram = clean(example("metrics", "metrics"))
    assert isinstance(counter, Metric) and isinstance(gauge, Metric)
    assert isinstance(histogram, Metric)
    assert (counter.name, counter.value, counter.type, counter.ts) == (
        "my.counter",
        5.0,
        "counter",
        1544712660300000000,
    )
    assert counter.labels == {"my.counter.attr": "some value"}
    assert counter.attrs == {
        **CONTEXT,
        "otel.metric_type": "sum",
        "otel.unit": "1",
        "otel.description": "I am a Counter",
        "otel.start_time_unix_nano": "1544712660300000000",
        "otel.temporality": "delta",
        "otel.monotonic": "true",
    }
    assert (gauge.name, gauge.value, gauge.type, gauge.labels) == (
        "my.gauge",
        10.0,
        "gauge",
        {"my.gauge.attr": "some value"},
    )
    assert counter.histogram is None and gauge.histogram is None
    assert (histogram.name, histogram.type, histogram.value) == ("my.histogram", "histogram", 2.0)
    assert histogram.histogram == Histogram(
        count=2,
        scheme="explicit",
        temporality="delta",
        sum=2.0,
        min=0.0,
        max=2.0,
        bounds=[1.0],
        counts=[1, 1],
        start_ns=1544712660300000000,
    )


@pytest.mark.parametrize(
    ("signal", "name"), [("traces", "trace"), ("logs", "logs"), ("metrics", "metrics")]
)
def test_protobuf_and_json_of_the_same_records_map_to_the_same_events(
    signal: Signal, name: str
) -> None:
    from_json = decode_request(signal, (DATA / f"{name}.json").read_bytes(), "json")
    from_protobuf = decode_request(signal, from_json.SerializeToString(), "protobuf")
    assert map_request(signal, from_protobuf, NOW).events == example(signal, name).events
    assert record_count(signal, from_json) == len(example(signal, name).events)


def test_json_mapping_rules() -> None:
    body = msgspec.json.encode(
        {
            "resourceSpans": [
                {
                    "resource": {
                        "attributes": [{"key": "service.name", "value": {"stringValue": "a"}}]
                    },
                    "scopeSpans": [
                        {
                            "spans": [
                                {
                                    "trace_id": "0102030405060708090a0b0c0d0e0f10",  # snake_case
                                    "spanId": "A1A2A3A4A5A6A7A8",  # upper-case hex
                                    "name": "x",
                                    "kind": 3,  # enum as integer
                                    "startTimeUnixNano": "1000",  # int64 as string
                                    "endTimeUnixNano": 2000,
                                    "status": {"code": 2, "message": "boom"},
                                    "unknownField": [1, 2],
                                }
                            ]
                        }
                    ],
                }
            ]
        }
    )
    [span] = clean(map_request("traces", decode_request("traces", body, "json"), NOW))
    assert (span.trace_id, span.span_id) == ("0102030405060708090a0b0c0d0e0f10", "a1a2a3a4a5a6a7a8")
    assert (span.kind, span.status, span.status_message) == ("client", "error", "boom")
    assert (span.ts, span.end_ts) == (1000, 2000)


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b"{",
        b'{"resourceSpans": 3}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "xyz"}]}]}]}',
    ],
)
def test_undecodable_json(body: bytes) -> None:
    with pytest.raises(OtlpDecodeError):
        decode_request("traces", body, "json")


def test_undecodable_protobuf() -> None:
    with pytest.raises(OtlpDecodeError):
        decode_request("logs", b"\x0a\xff\xff\xff\xff\x0f", "protobuf")


def test_span_events_links_and_odd_ids() -> None:
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    span = spans.add(
        trace_id=bytes(range(1, 17)),
        span_id=bytes(range(1, 9)),
        parent_span_id=bytes(8),  # all zero: no parent
        name="op",
        kind=Span.SPAN_KIND_PRODUCER,
        start_time_unix_nano=10,
        end_time_unix_nano=20,
        trace_state="k=v",
        dropped_events_count=2,
    )
    event = span.events.add(time_unix_nano=15, name="exception")
    event.attributes.add(key="exception.message", value=AnyValue(string_value="bad"))
    link = span.links.add(trace_id=bytes(range(2, 18)), span_id=bytes(range(2, 10)))
    link.attributes.add(key="why", value=AnyValue(int_value=1))
    spans.add(trace_id=bytes(16), span_id=bytes(range(1, 9)), name="no trace id")
    spans.add(trace_id=bytes(range(1, 17)), span_id=b"\x01", name="short span id")
    mapped = map_request("traces", request, NOW)
    assert len(mapped.rejected) == 2
    [out] = clean(mapped)
    assert out.parent_span_id == "" and out.kind == "producer" and out.service == "unknown_service"
    assert msgspec.json.decode(out.attrs["otel.events"]) == [
        {"time_unix_nano": 15, "name": "exception", "attributes": {"exception.message": "bad"}}
    ]
    assert msgspec.json.decode(out.attrs["otel.links"]) == [
        {
            "trace_id": bytes(range(2, 18)).hex(),
            "span_id": bytes(range(2, 10)).hex(),
            "attributes": {"why": 1},
        }
    ]
    assert out.attrs["otel.trace_state"] == "k=v"
    assert out.attrs["otel.dropped_events_count"] == "2"


@pytest.mark.parametrize(
    ("value", "message", "body_type"),
    [
        (AnyValue(string_value="plain"), "plain", None),
        (AnyValue(bool_value=False), "false", "bool"),
        (AnyValue(int_value=2**62), str(2**62), "int"),
        (AnyValue(double_value=1.5), "1.5", "double"),
        (AnyValue(bytes_value=b"\x00\xff"), '"AP8="', "bytes"),
        (AnyValue(), "", None),
    ],
)
def test_log_bodies_of_every_type(value: AnyValue, message: str, body_type: str | None) -> None:
    request = ExportLogsServiceRequest()
    record = request.resource_logs.add().scope_logs.add().log_records.add(time_unix_nano=5)
    record.body.CopyFrom(value)
    [log] = clean(map_request("logs", request, NOW))
    assert log.message == message
    assert log.attrs.get("otel.body_type") == body_type


def test_nested_log_body_and_missing_time() -> None:
    request = ExportLogsServiceRequest()
    record = request.resource_logs.add().scope_logs.add().log_records.add(severity_number=9)
    json_format.ParseDict(
        {
            "kvlistValue": {
                "values": [{"key": "a", "value": {"arrayValue": {"values": [{"intValue": "1"}]}}}]
            }
        },
        record.body,
    )
    first = map_request("logs", request, NOW)
    later = map_request("logs", request, NOW + 10**9)
    [log] = clean(first)
    assert log.message == '{"a":[1]}' and log.level == "info" and log.ts == NOW
    assert clean(later)[0].id == log.id  # the id covers the record as sent, not the arrival time


@pytest.mark.parametrize(
    ("number", "text", "level"),
    [
        (0, "", "unspecified"),
        (1, "", "trace"),
        (8, "x", "debug"),
        (12, "", "info"),
        (13, "", "warn"),
        (20, "", "error"),
        (24, "", "fatal"),
        (0, " Warning ", "warning"),
        (30, "custom", "custom"),
    ],
)
def test_severity(number: int, text: str, level: str) -> None:
    assert severity_level(number, text) == level


def test_metric_point_types() -> None:
    request = ExportMetricsServiceRequest()
    metrics = request.resource_metrics.add().scope_metrics.add().metrics
    updown = metrics.add(name="updown")
    updown.sum.is_monotonic = False
    updown.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    updown.sum.data_points.add(time_unix_nano=1, as_int=-3)
    updown.sum.data_points.add(time_unix_nano=1, flags=1)  # no recorded value: skipped
    updown.sum.data_points.add(time_unix_nano=1)  # no value at all: rejected
    exp = metrics.add(name="latency")
    exp.exponential_histogram.aggregation_temporality = (
        AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
    )
    point = exp.exponential_histogram.data_points.add(
        time_unix_nano=2, count=6, sum=12.5, scale=3, zero_count=1, zero_threshold=0.001
    )
    point.positive.offset = -2
    point.positive.bucket_counts.extend([1, 0, 3])
    point.negative.offset = 1
    point.negative.bucket_counts.extend([1])
    summary = metrics.add(name="rpc")
    quantiles = summary.summary.data_points.add(time_unix_nano=3, count=4, sum=10.0)
    quantiles.quantile_values.add(quantile=0.5, value=2.0)
    mapped = map_request("metrics", request, NOW)
    assert mapped.skipped == 1 and len(mapped.rejected) == 1
    gauge, histogram, rpc = clean(mapped)
    assert (gauge.type, gauge.value, gauge.attrs["otel.temporality"]) == (
        "gauge",
        -3.0,
        "cumulative",
    )
    assert histogram.histogram == Histogram(
        count=6,
        scheme="exponential",
        temporality="delta",
        sum=12.5,
        scale=3,
        zero_count=1,
        zero_threshold=0.001,
        positive_offset=-2,
        positive_counts=[1, 0, 3],
        negative_offset=1,
        negative_counts=[1],
    )
    assert (rpc.value, rpc.attrs["otel.count"]) == (10.0, "4")
    assert msgspec.json.decode(rpc.attrs["otel.quantiles"]) == [{"quantile": 0.5, "value": 2.0}]


@pytest.mark.parametrize(
    "histogram",
    [
        {"count": 1, "bounds": [1.0, 2.0], "counts": [1, 0]},
        {"count": 1, "bounds": [2.0, 1.0], "counts": [1, 0, 0]},
        {"count": -1},
        {"count": 2**63},
        {"count": 1, "scheme": "exponential", "scale": 21},
    ],
)
def test_native_histogram_validation(histogram: dict[str, Any]) -> None:
    event = {"ts": 1, "name": "h", "value": 0, "type": "histogram", "histogram": histogram}
    with pytest.raises(InvalidEvent):
        parse_event("metrics", msgspec.json.encode(event), "acme")


def test_export_response_has_partial_success_only_when_something_was_rejected() -> None:
    assert not export_response("logs", 0, "").HasField("partial_success")
    partial = export_response("metrics", 3, "why").partial_success  # type: ignore[attr-defined]
    assert (partial.rejected_data_points, partial.error_message) == (3, "why")
