"""OTLP end to end: the real OpenTelemetry SDK with its OTLP/HTTP exporters (protobuf, gzipped,
and JSON) sends spans, logs and metrics to a gateway process with a bearer token; the official
OTLP JSON examples are posted as they are; rows are checked in ClickHouse and PostgreSQL with
their attributes, and a resent export becomes no second row.

Topology: tests/harness.Pipeline (gateway, two normalizers, the chdb-owning writer, two metrics
writers, all processes).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import httpx
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.json.http._log_exporter import (
    OTLPLogExporter as JsonLogExporter,
)
from opentelemetry.exporter.otlp.json.http.metric_exporter import (
    OTLPMetricExporter as JsonMetricExporter,
)
from opentelemetry.exporter.otlp.json.http.trace_exporter import (
    OTLPSpanExporter as JsonSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import LogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from tests.harness import Pipeline

DATA: Final = Path(__file__).resolve().parents[1] / "data" / "otlp"


class Recording(SpanExporter):
    """Passes spans on to a real exporter and keeps them, to resend the very same export."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter
        self.batches: list[Sequence[ReadableSpan]] = []
        self.results: list[SpanExportResult] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.batches.append(list(spans))
        result = self.exporter.export(spans)
        self.results.append(result)
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()


def emit_all(
    service: str,
    spans: SpanExporter,
    logs: LogRecordExporter,
    metrics: MetricExporter,
) -> None:
    """One trace (server span, client child with a link, an event, an error status), two logs
    inside it (string and map bodies), and one point per instrument kind."""
    resource = Resource.create({"service.name": service, "deployment.environment": "test"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    reader = PeriodicExportingMetricReader(metrics, export_interval_millis=3_600_000)
    exponential = View(
        instrument_name="checkout.latency.exp", aggregation=ExponentialBucketHistogramAggregation()
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader], views=[exponential])

    tracer = tracer_provider.get_tracer("tests.e2e", "1.2.3")
    logger = logger_provider.get_logger("tests.e2e")
    with tracer.start_as_current_span(
        "GET /cart",
        kind=SpanKind.SERVER,
        attributes={"http.route": "/cart", "http.status_code": 200, "retry": False},
    ) as server:
        server.add_event("cache miss", {"cache.key": "cart:42"})
        logger.emit(
            body="cart loaded",
            severity_number=SeverityNumber.INFO,
            attributes={"cart.items": 3},
        )
        other = trace.SpanContext(
            trace_id=0x0AF7651916CD43DD8448EB211C80319C,
            span_id=0x00F067AA0BA902B7,
            is_remote=True,
            trace_flags=trace.TraceFlags(1),
        )
        with tracer.start_as_current_span(
            "SELECT carts", kind=SpanKind.CLIENT, links=[Link(other, {"link.reason": "batch"})]
        ) as client:
            client.set_status(Status(StatusCode.ERROR, "db timeout"))
            logger.emit(
                body={"error": "timeout", "after_ms": [100, 200]},
                severity_number=SeverityNumber.ERROR,
                severity_text="ERROR",
            )

    meter = meter_provider.get_meter("tests.e2e")
    meter.create_counter("checkout.orders", unit="1").add(3, {"route": "/cart"})
    meter.create_up_down_counter("checkout.sessions").add(-2, {"route": "/cart"})
    meter.create_gauge("checkout.queue").set(42.5, {"queue": "emails"})
    histogram = meter.create_histogram("checkout.latency", unit="ms")
    exp_histogram = meter.create_histogram("checkout.latency.exp", unit="ms")
    for value in (0.5, 3.0, 7.0, 120.0):
        histogram.record(value, {"route": "/cart"})
        exp_histogram.record(value, {"route": "/cart"})

    tracer_provider.shutdown()
    logger_provider.shutdown()
    meter_provider.shutdown()  # collects once and exports


def post_example(client: httpx.Client, token: str, signal: str, name: str) -> httpx.Response:
    return client.post(
        f"/otlp/v1/{signal}",
        content=(DATA / f"{name}.json").read_bytes(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )


def pg(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rivulet query --timescale` prints jsonb columns as JSON text."""
    return [
        {k: json.loads(v) if k in ("labels", "attrs") else v for k, v in row.items()}
        for row in rows
    ]


def one(rows: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(rows) == 1, rows
    return rows[0]


def test_opentelemetry_sdk_and_official_examples_end_to_end(pipeline: Pipeline) -> None:
    started = time.monotonic()
    created = json.loads(
        pipeline.cli("keys", "create", "--tenant", "acme", "--type", "token").stdout
    )
    assert created["type"] == "token" and created["key_id"].startswith("rt_")
    token = created["token"]
    headers = {"Authorization": f"Bearer {token}"}
    base = pipeline.url + "/otlp/v1/"

    proto_spans = Recording(
        OTLPSpanExporter(endpoint=base + "traces", headers=headers, compression=Compression.Gzip)
    )
    emit_all(
        "shop-proto",
        proto_spans,
        OTLPLogExporter(endpoint=base + "logs", headers=headers, compression=Compression.Gzip),
        OTLPMetricExporter(endpoint=base + "metrics", headers=headers),
    )
    json_spans = Recording(JsonSpanExporter(endpoint=base + "traces", headers=headers))
    emit_all(
        "shop-json",
        json_spans,
        JsonLogExporter(endpoint=base + "logs", headers=headers),
        JsonMetricExporter(endpoint=base + "metrics", headers=headers),
    )
    assert proto_spans.results == [SpanExportResult.SUCCESS] * 2
    assert json_spans.results == [SpanExportResult.SUCCESS] * 2

    with httpx.Client(base_url=pipeline.url, timeout=30) as client:
        for signal, name in (("traces", "trace"), ("logs", "logs"), ("metrics", "metrics")):
            response = post_example(client, token, signal, name)
            assert response.status_code == 200, response.text
            assert response.json() == {}
        refused = post_example(client, token.split(".")[0] + ".wrong", "logs", "logs")
        assert refused.status_code == 401

    pipeline.wait_drained(90)
    # the same exports again (an exporter retry, a collector replay): no second row
    resent = Recording(OTLPSpanExporter(endpoint=base + "traces", headers=headers))
    for batch in proto_spans.batches:
        assert resent.export(batch) == SpanExportResult.SUCCESS
    with httpx.Client(base_url=pipeline.url, timeout=30) as client:
        for signal, name in (("traces", "trace"), ("logs", "logs"), ("metrics", "metrics")):
            assert post_example(client, token, signal, name).status_code == 200
    pipeline.wait_drained(90)
    elapsed = time.monotonic() - started

    assert pipeline.clickhouse_counts("spans") == (5, 5)  # 2 + 2 from the SDK, 1 example
    assert pipeline.clickhouse_counts("logs") == (5, 5)
    schema = pipeline.schema
    [metric_count] = pipeline.query(
        f'SELECT count(*) AS n, count(DISTINCT id) AS u FROM "{schema}".metrics', timescale=True
    )
    assert metric_count == {"n": 8, "u": 8}  # 3 instruments x 2 encodings, 2 example points
    [histogram_count] = pipeline.query(
        f'SELECT count(*) AS n FROM "{schema}".metric_histograms', timescale=True
    )
    assert histogram_count == {"n": 5}  # 2 kinds x 2 encodings, 1 example

    for service in ("shop-proto", "shop-json"):
        check_service_rows(pipeline, service)
    check_example_rows(pipeline)
    print(f"\notlp end-to-end: SDK (protobuf+gzip, JSON) and examples, resent, in {elapsed:.1f}s")


def check_service_rows(pipeline: Pipeline, service: str) -> None:
    server = one(
        pipeline.query(
            "SELECT trace_id, span_id, parent_span_id, name, kind, status, attrs "
            f"FROM rivulet.spans WHERE service = '{service}' AND name = 'GET /cart'"
        )
    )
    client = one(
        pipeline.query(
            "SELECT trace_id, parent_span_id, kind, status, status_message, attrs "
            f"FROM rivulet.spans WHERE service = '{service}' AND name = 'SELECT carts'"
        )
    )
    assert (server["kind"], server["status"], server["parent_span_id"]) == ("server", "unset", "")
    assert (client["kind"], client["status"], client["status_message"]) == (
        "client",
        "error",
        "db timeout",
    )
    assert (
        client["trace_id"] == server["trace_id"] and client["parent_span_id"] == server["span_id"]
    )
    attrs = server["attrs"]
    assert attrs["http.route"] == "/cart"
    assert attrs["http.status_code"] == "200"
    assert attrs["retry"] == "false"
    assert attrs["resource.service.name"] == service
    assert attrs["resource.deployment.environment"] == "test"
    assert attrs["resource.telemetry.sdk.language"] == "python"
    assert (attrs["otel.scope.name"], attrs["otel.scope.version"]) == ("tests.e2e", "1.2.3")
    [event] = json.loads(attrs["otel.events"])
    assert event["name"] == "cache miss" and event["attributes"] == {"cache.key": "cart:42"}
    [link] = json.loads(client["attrs"]["otel.links"])
    assert link["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert link["span_id"] == "00f067aa0ba902b7"
    assert link["attributes"] == {"link.reason": "batch"}

    logs = pipeline.query(
        "SELECT level, message, trace_id, span_id, attrs FROM rivulet.logs "
        f"WHERE service = '{service}' ORDER BY ts"
    )
    assert [(row["level"], row["trace_id"]) for row in logs] == [
        ("info", server["trace_id"]),
        ("error", server["trace_id"]),
    ]
    assert logs[0]["message"] == "cart loaded" and logs[0]["span_id"] == server["span_id"]
    assert logs[0]["attrs"]["cart.items"] == "3"
    assert logs[0]["attrs"]["otel.severity_number"] == "9"
    assert json.loads(logs[1]["message"]) == {"error": "timeout", "after_ms": [100, 200]}
    assert logs[1]["attrs"]["otel.body_type"] == "kvlist"
    assert logs[1]["attrs"]["otel.severity_text"] == "ERROR"

    schema = pipeline.schema
    metrics = {
        row["name"]: row
        for row in pg(
            pipeline.query(
                f'SELECT name, value, type, labels, attrs FROM "{schema}".metrics '
                f"WHERE service = '{service}'",
                timescale=True,
            )
        )
    }
    assert set(metrics) == {"checkout.orders", "checkout.sessions", "checkout.queue"}
    orders, sessions, queue = (
        metrics["checkout.orders"],
        metrics["checkout.sessions"],
        metrics["checkout.queue"],
    )
    assert (orders["value"], orders["type"], orders["labels"]) == (
        3.0,
        "counter",
        {"route": "/cart"},
    )
    assert orders["attrs"]["otel.temporality"] == "cumulative"
    assert orders["attrs"]["otel.unit"] == "1"
    assert (sessions["value"], sessions["type"]) == (-2.0, "gauge")
    assert sessions["attrs"]["otel.monotonic"] == "false"
    assert (queue["value"], queue["labels"]) == (42.5, {"queue": "emails"})
    histograms = {
        row["name"]: row
        for row in pg(
            pipeline.query(
                "SELECT name, scheme, temporality, count, sum, min, max, bounds, bucket_counts, "
                "scale, zero_count, positive_offset, positive_counts, labels "
                f"FROM \"{schema}\".metric_histograms WHERE service = '{service}'",
                timescale=True,
            )
        )
    }
    explicit, exponential = histograms["checkout.latency"], histograms["checkout.latency.exp"]
    assert (explicit["scheme"], explicit["count"], explicit["sum"]) == ("explicit", 4, 130.5)
    assert (explicit["min"], explicit["max"]) == (0.5, 120.0)
    assert explicit["bounds"][:4] == [0.0, 5.0, 10.0, 25.0]  # the SDK's default boundaries
    assert len(explicit["bucket_counts"]) == len(explicit["bounds"]) + 1
    assert sum(explicit["bucket_counts"]) == 4
    assert explicit["bucket_counts"][:3] == [0, 2, 1]
    assert explicit["labels"] == {"route": "/cart"}
    assert (exponential["scheme"], exponential["count"], exponential["zero_count"]) == (
        "exponential",
        4,
        0,
    )
    assert sum(exponential["positive_counts"]) == 4 and exponential["scale"] is not None


def check_example_rows(pipeline: Pipeline) -> None:
    span = one(
        pipeline.query(
            "SELECT trace_id, span_id, parent_span_id, name, kind, "
            "toUnixTimestamp64Nano(ts) AS ts, duration_ns, attrs "
            "FROM rivulet.spans WHERE service = 'my.service'"
        )
    )
    assert span == {
        "trace_id": "5b8efff798038103d269b633813fc60c",
        "span_id": "eee19b7ec3c1b174",
        "parent_span_id": "eee19b7ec3c1b173",
        "name": "I'm a server span",
        "kind": "server",
        "ts": 1544712660000000000,
        "duration_ns": 1000000000,
        "attrs": {
            "my.span.attr": "some value",
            "otel.scope.name": "my.library",
            "otel.scope.version": "1.0.0",
            "resource.service.name": "my.service",
            "scope.my.scope.attribute": "some scope attribute",
        },
    }
    log = one(
        pipeline.query(
            "SELECT level, message, trace_id, span_id, attrs FROM rivulet.logs "
            "WHERE service = 'my.service'"
        )
    )
    assert (log["level"], log["message"], log["trace_id"], log["span_id"]) == (
        "information",
        "Example log record",
        "5b8efff798038103d269b633813fc60c",
        "eee19b7ec3c1b174",
    )
    assert log["attrs"]["boolean.attribute"] == "true"
    assert log["attrs"]["int.attribute"] == "10"
    assert log["attrs"]["double.attribute"] == "637.704"
    assert json.loads(log["attrs"]["array.attribute"]) == ["many", "values"]
    assert json.loads(log["attrs"]["map.attribute"]) == {"some.map.key": "some value"}
    schema = pipeline.schema
    metrics = pg(
        pipeline.query(
            f'SELECT name, value, type, labels FROM "{schema}".metrics '
            "WHERE service = 'my.service' ORDER BY name",
            timescale=True,
        )
    )
    assert metrics == [
        {
            "name": "my.counter",
            "value": 5.0,
            "type": "counter",
            "labels": {"my.counter.attr": "some value"},
        },
        {
            "name": "my.gauge",
            "value": 10.0,
            "type": "gauge",
            "labels": {"my.gauge.attr": "some value"},
        },
    ]
    histogram = one(
        pipeline.query(
            "SELECT name, count, sum, min, max, bounds, bucket_counts, temporality "
            f"FROM \"{schema}\".metric_histograms WHERE service = 'my.service'",
            timescale=True,
        )
    )
    assert histogram == {
        "name": "my.histogram",
        "count": 2,
        "sum": 2.0,
        "min": 0.0,
        "max": 2.0,
        "bounds": [1.0],
        "bucket_counts": [1, 1],
        "temporality": "delta",
    }
