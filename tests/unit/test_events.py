"""Unit tests for shared.events (timestamp parsing, event validation, event ids)."""

from __future__ import annotations

import datetime as dt
import re
import typing
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import events as events_module
from shared import schemas
from shared.events import (
    MAX_ATTRS,
    MAX_ID_CHARS,
    MAX_KEY_CHARS,
    MAX_TEXT_CHARS,
    MAX_TS_NS,
    MIN_TS_NS,
    InvalidEvent,
    event_id,
    parse_event,
    parse_timestamp,
)
from shared.schemas import WIRE_TYPES, Kind, Log, Metric, Rum, Span

TENANT = "acme"
TS_NS = 1_704_067_200_000_000_000  # 2024-01-01T00:00:00Z
TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
HEX32 = re.compile(r"[0-9a-f]{32}")


WIRE_FIELDS: dict[Kind, Any] = {
    "logs": schemas.LogInFields,
    "metrics": schemas.MetricInFields,
    "spans": schemas.SpanInFields,
    "rum": schemas.RumInFields,
}


@pytest.mark.parametrize("kind", list(WIRE_TYPES))
def test_wire_field_tuples_follow_the_wire_structs(kind: Kind) -> None:
    """The builders unpack each wire Struct by position: its tuple type must list the Struct's
    fields in declaration order, each with that field's type."""
    wire = WIRE_TYPES[kind]
    hints = typing.get_type_hints(wire)
    assert typing.get_args(WIRE_FIELDS[kind]) == tuple(
        hints[name] for name in wire.__struct_fields__
    )


# Every wire field set, each to a value no other field of its type has.
FULL_EVENTS: dict[Kind, dict[str, Any]] = {
    "logs": {
        "ts": TS_NS,
        "service": "svc",
        "level": "warn",
        "message": "msg",
        "attrs": {"a": "1"},
        "trace_id": TRACE,
        "span_id": SPAN,
        "host": "hst",
        "id": "ident",
    },
    "metrics": {
        "ts": TS_NS,
        "name": "nm",
        "value": 2.5,
        "type": "counter",
        "labels": {"l": "1"},
        "service": "svc",
        "host": "hst",
        "attrs": {"a": "1"},
        "id": "ident",
    },
    "spans": {
        "trace_id": TRACE,
        "span_id": SPAN,
        "service": "svc",
        "name": "nm",
        "start": TS_NS,
        "end": TS_NS + 7,
        "parent_span_id": "00f067aa0ba902b7",
        "kind": "server",
        "status": "error",
        "status_message": "why",
        "attrs": {"a": "1"},
        "id": "ident",
    },
    "rum": {
        "ts": TS_NS,
        "session_id": "sess",
        "type": "error",
        "url": "https://u.example/",
        "referrer": "https://r.example/",
        "user_id": "usr",
        "metrics": {"lcp": 1.5},
        "error": {"e": "1"},
        "attrs": {"a": "1"},
        "id": "ident",
    },
}
# Where a wire field's value lands under another name or form.
RENAMED: dict[Kind, dict[str, tuple[str, Any]]] = {
    "spans": {"start": ("ts", TS_NS), "end": ("end_ts", TS_NS + 7)},
}


@pytest.mark.parametrize("kind", list(WIRE_TYPES))
def test_every_wire_field_lands_in_its_place(kind: Kind) -> None:
    """Each field of the clean event comes from the wire field of its name: the builders read
    the wire fields by position."""
    wire = FULL_EVENTS[kind]
    assert set(WIRE_TYPES[kind].__struct_fields__) - {"histogram", "duration_ns"} == set(wire)
    event = parse(kind, wire)
    renamed = RENAMED.get(kind, {})
    for name, value in wire.items():
        target, expected = renamed.get(name, (name, value))
        assert getattr(event, target) == expected, name


def utc_ns(
    year: int, month: int, day: int, hour: int, minute: int, second: int, nanos: int = 0
) -> int:
    """Independent reference: whole seconds from datetime, plus the nanosecond fraction."""
    moment = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC)
    return int(moment.timestamp()) * 10**9 + nanos


def encode(obj: dict[str, Any]) -> bytes:
    return msgspec.json.encode(obj)


def log(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"ts": TS_NS, "service": "checkout", "level": "info", "message": "hi"}
    event.update(overrides)
    return event


def metric(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"ts": TS_NS, "name": "cpu.usage", "value": 0.5}
    event.update(overrides)
    return event


def span(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "trace_id": TRACE,
        "span_id": SPAN,
        "service": "api",
        "name": "GET /cart",
        "start": TS_NS,
        "duration_ns": 1_000,
    }
    event.update(overrides)
    return event


def rum(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "ts": TS_NS,
        "session_id": "s1",
        "type": "page_view",
        "url": "https://shop.example.com/",
    }
    event.update(overrides)
    return event


FACTORIES: dict[Kind, Any] = {"logs": log, "metrics": metric, "spans": span, "rum": rum}


def parse(kind: Kind, obj: dict[str, Any], tenant: str = TENANT, received_at: int = 0) -> Any:
    return parse_event(kind, encode(obj), tenant, received_at)


def parse_log(obj: dict[str, Any]) -> Log:
    event = parse("logs", obj)
    assert isinstance(event, Log)
    return event


def parse_span(obj: dict[str, Any]) -> Span:
    event = parse("spans", obj)
    assert isinstance(event, Span)
    return event


def rejected(kind: Kind, obj: dict[str, Any]) -> str:
    with pytest.raises(InvalidEvent) as info:
        parse(kind, obj)
    return str(info.value)


# --- parse_timestamp -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-01T00:00:00Z", TS_NS),
        ("2024-01-01t00:00:00z", TS_NS),
        ("2024-01-01 00:00:00Z", TS_NS),
        ("2024-01-01T00:00:00+00:00", TS_NS),
        ("2024-01-01T00:00:00-00:00", TS_NS),
        ("2024-01-01T02:00:00+02:00", TS_NS),
        ("2023-12-31T18:30:00-05:30", TS_NS),
        ("2024-01-01T00:00:00.5Z", TS_NS + 500_000_000),
        ("2024-01-01T00:00:00.000000001Z", TS_NS + 1),
        ("2024-01-01T00:00:00.123456789Z", TS_NS + 123_456_789),
        ("2024-01-01T00:00:00.123456789999Z", TS_NS + 123_456_789),  # >9 digits truncated
        ("2024-02-29T12:34:56.123456789+02:00", utc_ns(2024, 2, 29, 10, 34, 56, nanos=123456789)),
        ("1900-01-01T00:00:00Z", MIN_TS_NS),
        ("2261-12-31T23:59:59.999999999Z", MAX_TS_NS - 1),
        ("1969-12-31T23:59:59.5Z", -500_000_000),
    ],
)
def test_parse_timestamp_rfc3339(text: str, expected: int) -> None:
    assert parse_timestamp(text) == expected


def test_parse_timestamp_known_value() -> None:
    # 2009-02-13T23:31:30Z is unix second 1234567890
    assert parse_timestamp("2009-02-13T23:31:30.000000042Z") == 1_234_567_890_000_000_042


@pytest.mark.parametrize(
    "text",
    [
        "2024-02-30T00:00:00Z",  # no such day
        "2023-02-29T00:00:00Z",  # not a leap year
        "2024-04-31T00:00:00Z",
        "2024-13-01T00:00:00Z",
        "2024-00-10T00:00:00Z",
        "2024-01-00T00:00:00Z",
        "2024-01-01T24:00:00Z",  # hour 24
        "2024-01-01T23:60:00Z",
        "2024-01-01T23:59:60Z",  # leap seconds are not representable
        "2024-01-01T00:00:00",  # no offset
        "2024-01-01",
        "2024-01-01T00:00Z",  # no seconds
        "2024-01-01T00:00:00.Z",  # empty fraction
        "2024-01-01T00:00:00+0200",  # offset without colon
        "2024-01-01T00:00:00 UTC",
        "24-01-01T00:00:00Z",
        "",
        "yesterday",
        "0001-01-01T00:00:00Z",  # below 1900
        "1899-12-31T23:59:59.999999999Z",
        "2262-01-01T00:00:00Z",  # above the range
        "9999-12-31T23:59:59Z",
    ],
)
def test_parse_timestamp_rejects(text: str) -> None:
    with pytest.raises(InvalidEvent):
        parse_timestamp(text)


def test_parse_timestamp_year_zero_is_invalid_event() -> None:
    with pytest.raises(InvalidEvent):
        parse_timestamp("0000-01-01T00:00:00Z")


@pytest.mark.parametrize(
    "text",
    [
        "2024-01-01T00:00:00+99:99",
        "2024-01-01T00:00:00-24:00",
        "2024-01-01T00:00:00+01:60",
        "\u0662\u0660\u0662\u0664-01-01T00:00:00Z",  # Arabic-Indic digits for the year
    ],
)
def test_parse_timestamp_rejects_non_rfc3339(text: str) -> None:
    with pytest.raises(InvalidEvent):
        parse_timestamp(text)


@pytest.mark.parametrize("nanos", [0, -1, TS_NS, MIN_TS_NS, MAX_TS_NS - 1])
def test_parse_timestamp_integer_nanoseconds(nanos: int) -> None:
    assert parse_timestamp(nanos) == nanos


@pytest.mark.parametrize("nanos", [MIN_TS_NS - 1, MAX_TS_NS, 2**63, -(2**63)])
def test_parse_timestamp_integer_out_of_range(nanos: int) -> None:
    with pytest.raises(InvalidEvent):
        parse_timestamp(nanos)


@pytest.mark.parametrize("value", [True, False])
def test_parse_timestamp_rejects_bool(value: bool) -> None:
    with pytest.raises(InvalidEvent):
        parse_timestamp(value)


def test_parse_timestamp_names_the_field() -> None:
    with pytest.raises(InvalidEvent, match=r"^start: "):
        parse_timestamp("nope", field="start")


# --- parse_event: shared behaviour ---------------------------------------------------------------


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_parse_event_sets_tenant_and_received_at(kind: Kind) -> None:
    event = parse(kind, FACTORIES[kind](), tenant="t1", received_at=42)
    assert event.tenant == "t1"
    assert event.received_at == 42


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        ("logs", "ts"),
        ("logs", "service"),
        ("logs", "level"),
        ("logs", "message"),
        ("metrics", "ts"),
        ("metrics", "name"),
        ("metrics", "value"),
        ("spans", "trace_id"),
        ("spans", "span_id"),
        ("spans", "service"),
        ("spans", "name"),
        ("spans", "start"),
        ("rum", "ts"),
        ("rum", "session_id"),
        ("rum", "type"),
        ("rum", "url"),
    ],
)
def test_parse_event_required_fields(kind: Kind, field: str) -> None:
    obj = FACTORIES[kind]()
    del obj[field]
    assert field in rejected(kind, obj)


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"x"', b"null", b"not json", b"", b'{"ts":'])
@pytest.mark.parametrize("kind", list(FACTORIES))
def test_parse_event_not_an_object(kind: Kind, raw: bytes) -> None:
    with pytest.raises(InvalidEvent):
        parse_event(kind, raw, TENANT)


def test_parse_event_invalid_utf8_is_invalid_event() -> None:
    raw = b'{"ts":1704067200000000000,"service":"s","level":"info","message":"\xff"}'
    with pytest.raises(InvalidEvent):
        parse_event("logs", raw, TENANT)


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("logs", "service", 1),
        ("logs", "message", None),
        ("logs", "attrs", []),
        ("metrics", "name", ["x"]),
        ("spans", "duration_ns", "1000"),
        ("rum", "session_id", 5),
        ("logs", "ts", 1.7e18),  # float nanoseconds are not integers
    ],
)
def test_parse_event_wrong_types(kind: Kind, field: str, value: Any) -> None:
    with pytest.raises(InvalidEvent):
        parse(kind, FACTORIES[kind](**{field: value}))


# --- logs ----------------------------------------------------------------------------------------


def test_log_minimal() -> None:
    event = parse_log(log(ts="2024-01-01T00:00:00Z"))
    assert (event.ts, event.service, event.level, event.message) == (
        TS_NS,
        "checkout",
        "info",
        "hi",
    )
    assert event.attrs == {}
    assert (event.trace_id, event.span_id, event.host) == ("", "", "")


@pytest.mark.parametrize(("given", "stored"), [("INFO", "info"), ("Warn", "warn"), ("", "")])
def test_log_level_lower_cased(given: str, stored: str) -> None:
    assert parse_log(log(level=given)).level == stored


def test_log_unknown_top_level_fields_move_into_attrs_as_strings() -> None:
    event = parse_log(
        log(
            region="eu-west-1",
            retries=3,
            ratio=0.25,
            debug=True,
            ctx={"a": [1, 2]},
            nothing=None,
            attrs={"user": "u1"},
        )
    )
    assert event.attrs == {
        "region": "eu-west-1",
        "retries": "3",
        "ratio": "0.25",
        "debug": "true",
        "ctx": '{"a":[1,2]}',
        "nothing": "null",
        "user": "u1",
    }


def test_log_attrs_values_json_encoded() -> None:
    event = parse_log(log(attrs={"s": "text", "n": 1, "b": False, "l": [1, "x"], "z": None}))
    assert event.attrs == {"s": "text", "n": "1", "b": "false", "l": '[1,"x"]', "z": "null"}


@given(
    st.dictionaries(
        st.text(max_size=8),
        st.one_of(st.text(max_size=8), st.integers(), st.booleans(), st.none(), st.floats()),
        max_size=12,
    )
)
def test_attr_values_become_strings_in_order_whatever_their_mix(attrs: dict[str, Any]) -> None:
    """The values are converted in place, strings and others in any order."""
    event = parse_log(log(attrs=attrs))
    expected = {
        k: v if isinstance(v, str) else msgspec.json.encode(v).decode() for k, v in attrs.items()
    }
    assert list(event.attrs.items()) == list(expected.items())


def test_log_explicit_attr_wins_over_unknown_field_of_same_name() -> None:
    assert parse_log(log(region="top", attrs={"region": "inner"})).attrs == {"region": "inner"}


def test_log_trace_and_span_ids_lower_cased() -> None:
    event = parse_log(log(trace_id=TRACE.upper(), span_id=SPAN.upper()))
    assert (event.trace_id, event.span_id) == (TRACE, SPAN)


def test_log_empty_trace_ids_are_absent() -> None:
    event = parse_log(log(trace_id="", span_id=""))
    assert (event.trace_id, event.span_id) == ("", "")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("trace_id", "0" * 32),
        ("trace_id", TRACE[:-1]),
        ("trace_id", TRACE + "0"),
        ("trace_id", "g" + TRACE[1:]),
        ("trace_id", f" {TRACE[1:]}"),
        ("trace_id", f"{TRACE[:10]} {TRACE[11:]}"),
        ("trace_id", f"{TRACE[:10]}\u0660{TRACE[11:]}"),  # an Arabic-Indic digit zero
        ("span_id", "0" * 16),
        ("span_id", SPAN[:-1]),
        ("span_id", "z" * 16),
        ("span_id", TRACE),
    ],
)
def test_log_bad_trace_ids_rejected(field: str, value: str) -> None:
    assert field in rejected("logs", log(**{field: value}))


HEX_LIKE = st.sampled_from("0123456789abcdefABCDEFgG \t\n\u0660\uff10K")


@settings(max_examples=500)
@given(
    case=st.sampled_from([16, 32]).flatmap(
        lambda digits: st.tuples(
            st.just(digits),
            st.text(HEX_LIKE, min_size=digits - 1, max_size=digits + 1) | st.text(max_size=34),
        )
    )
)
def test_hex_ids_are_checked_as_a_full_regex_match(case: tuple[int, str]) -> None:
    digits, text = case
    as_regex = re.fullmatch(f"[0-9a-fA-F]{{{digits}}}", text) is not None
    assert events_module._is_hex(text, digits) is as_regex


def test_log_message_limit() -> None:
    assert parse_log(log(message="x" * MAX_TEXT_CHARS)).message == "x" * MAX_TEXT_CHARS
    assert "message" in rejected("logs", log(message="x" * (MAX_TEXT_CHARS + 1)))


def test_log_attr_value_limit() -> None:
    assert "attrs" in rejected("logs", log(attrs={"big": "x" * (MAX_TEXT_CHARS + 1)}))


def test_log_attrs_count_limit() -> None:
    at_limit = {f"k{i}": "v" for i in range(MAX_ATTRS)}
    assert len(parse_log(log(attrs=at_limit)).attrs) == MAX_ATTRS
    over = {f"k{i}": "v" for i in range(MAX_ATTRS + 1)}
    assert "attrs" in rejected("logs", log(attrs=over))


def test_log_attrs_count_limit_includes_unknown_fields() -> None:
    attrs = {f"k{i}": "v" for i in range(MAX_ATTRS)}
    assert "attrs" in rejected("logs", log(attrs=attrs, extra_field="x"))


def test_log_attr_key_limit() -> None:
    assert len(parse_log(log(attrs={"k" * MAX_KEY_CHARS: "v"})).attrs) == 1
    assert "attrs" in rejected("logs", log(attrs={"k" * (MAX_KEY_CHARS + 1): "v"}))


def test_log_service_limit() -> None:
    assert "service" in rejected("logs", log(service="s" * 257))


# --- metrics -------------------------------------------------------------------------------------


def test_metric_minimal_defaults() -> None:
    event = parse("metrics", metric())
    assert isinstance(event, Metric)
    assert (event.name, event.value, event.type, event.labels) == ("cpu.usage", 0.5, "gauge", {})


@pytest.mark.parametrize("value", [0, 7, -3.25, 1e300])
def test_metric_value_numbers(value: float) -> None:
    event = parse("metrics", metric(value=value))
    assert isinstance(event, Metric)
    assert event.value == value
    assert isinstance(event.value, float)


@pytest.mark.parametrize("value", [True, False, "1.0", None, [1], {"v": 1}])
def test_metric_value_must_be_a_number(value: Any) -> None:
    assert "value" in rejected("metrics", metric(value=value))


@pytest.mark.parametrize("literal", [b"1e999", b"-1e999"])
def test_metric_value_must_be_finite(literal: bytes) -> None:
    raw = b'{"ts":1704067200000000000,"name":"n","value":' + literal + b"}"
    with pytest.raises(InvalidEvent):
        parse_event("metrics", raw, TENANT)


@pytest.mark.parametrize("metric_type", ["gauge", "counter", "histogram"])
def test_metric_types(metric_type: str) -> None:
    event = parse("metrics", metric(type=metric_type))
    assert isinstance(event, Metric)
    assert event.type == metric_type


def test_metric_unknown_type_rejected() -> None:
    assert "type" in rejected("metrics", metric(type="summary"))


def test_metric_labels_must_be_strings() -> None:
    assert "labels" in rejected("metrics", metric(labels={"host": 1}))


def test_metric_labels_limit() -> None:
    assert "labels" in rejected(
        "metrics", metric(labels={f"k{i}": "v" for i in range(MAX_ATTRS + 1)})
    )


def test_metric_unknown_top_level_field_is_accepted() -> None:
    # A metric has no attrs; an unknown field must at least not fail the event.
    assert isinstance(parse("metrics", metric(region="eu")), Metric)


# --- spans ---------------------------------------------------------------------------------------


def test_span_duration_gives_end() -> None:
    event = parse_span(span(start="2024-01-01T00:00:00Z", duration_ns=2_500))
    assert (event.ts, event.end_ts, event.duration_ns) == (TS_NS, TS_NS + 2_500, 2_500)


def test_span_end_gives_duration() -> None:
    event = parse_span(span(duration_ns=None, end="2024-01-01T00:00:01.5Z"))
    assert (event.ts, event.end_ts, event.duration_ns) == (
        TS_NS,
        TS_NS + 1_500_000_000,
        1_500_000_000,
    )


def test_span_zero_duration_allowed() -> None:
    assert parse_span(span(duration_ns=None, end=TS_NS)).duration_ns == 0


def test_span_end_wins_over_duration() -> None:
    event = parse_span(span(end=TS_NS + 10, duration_ns=999))
    assert (event.end_ts, event.duration_ns) == (TS_NS + 10, 10)


def test_span_needs_end_or_duration() -> None:
    obj = span()
    del obj["duration_ns"]
    assert "end" in rejected("spans", obj)


@pytest.mark.parametrize(
    "overrides",
    [
        {"duration_ns": None, "end": TS_NS - 1},
        {"duration_ns": None, "end": "2023-12-31T23:59:59Z"},
        {"duration_ns": -1},
        {"duration_ns": MAX_TS_NS},  # end beyond the storable range
    ],
)
def test_span_end_before_start_or_out_of_range(overrides: dict[str, Any]) -> None:
    obj = span(**overrides)
    if obj.get("duration_ns") is None:
        del obj["duration_ns"]
    assert "end" in rejected("spans", obj)


def test_span_ids_lower_cased_and_parent_optional() -> None:
    event = parse_span(span(trace_id=TRACE.upper(), span_id=SPAN.upper()))
    assert (event.trace_id, event.span_id, event.parent_span_id) == (TRACE, SPAN, "")
    parent = parse_span(span(parent_span_id="ABCDEF0123456789")).parent_span_id
    assert parent == "abcdef0123456789"
    assert parse_span(span(parent_span_id="")).parent_span_id == ""


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("trace_id", ""),
        ("trace_id", "0" * 32),
        ("trace_id", "f" * 31),
        ("trace_id", "x" * 32),
        ("span_id", ""),
        ("span_id", "0" * 16),
        ("span_id", "f" * 17),
        ("parent_span_id", "0" * 16),
        ("parent_span_id", "nothex!!nothex!!"),
    ],
)
def test_span_bad_ids_rejected(field: str, value: str) -> None:
    assert field in rejected("spans", span(**{field: value}))


@pytest.mark.parametrize(("field", "value"), [("kind", "weird"), ("status", "failed")])
def test_span_enums(field: str, value: str) -> None:
    assert field in rejected("spans", span(**{field: value}))


def test_span_unknown_fields_into_attrs() -> None:
    event = parse_span(span(http_status=503, attrs={"route": "/cart"}))
    assert event.attrs == {"http_status": "503", "route": "/cart"}


# --- rum -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rum_type", ["page_view", "web_vital", "error", "resource", "action"])
def test_rum_types(rum_type: str) -> None:
    event = parse("rum", rum(type=rum_type))
    assert isinstance(event, Rum)
    assert event.type == rum_type


@pytest.mark.parametrize("rum_type", ["click", "PAGE_VIEW", ""])
def test_rum_unknown_type_rejected(rum_type: str) -> None:
    assert "type" in rejected("rum", rum(type=rum_type))


def test_rum_fields() -> None:
    event = parse(
        "rum",
        rum(
            type="error",
            referrer="https://ref.example.org/",
            user_id="u1",
            metrics={"lcp": 1.5, "cls": 0},
            error={"message": "boom", "line": 3},
            browser_hint="x",
        ),
    )
    assert isinstance(event, Rum)
    assert event.metrics == {"lcp": 1.5, "cls": 0.0}
    assert event.error == {"message": "boom", "line": "3"}
    assert event.attrs == {"browser_hint": "x"}
    assert (event.referrer, event.user_id) == ("https://ref.example.org/", "u1")


@pytest.mark.parametrize("value", ["1.5", True, None])
def test_rum_metrics_must_be_numbers(value: Any) -> None:
    assert "metrics" in rejected("rum", rum(metrics={"lcp": value}))


def test_rum_metrics_must_be_finite() -> None:
    raw = encode(rum())[:-1] + b',"metrics":{"lcp":1e999}}'
    with pytest.raises(InvalidEvent):
        parse_event("rum", raw, TENANT)


def test_rum_url_limit() -> None:
    assert "url" in rejected("rum", rum(url="https://x/" + "a" * 8192))


# --- event ids -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_event_id_deterministic(kind: Kind) -> None:
    first = parse(kind, FACTORIES[kind]())
    second = parse(kind, FACTORIES[kind]())
    assert first.id == second.id
    assert HEX32.fullmatch(first.id)
    assert event_id(first) == first.id


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_event_id_independent_of_received_at(kind: Kind) -> None:
    early = parse(kind, FACTORIES[kind](), received_at=1)
    late = parse(kind, FACTORIES[kind](), received_at=2)
    assert (early.received_at, late.received_at) == (1, 2)
    assert early.id == late.id


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_event_id_differs_by_tenant(kind: Kind) -> None:
    assert (
        parse(kind, FACTORIES[kind](), tenant="a").id
        != parse(kind, FACTORIES[kind](), tenant="b").id
    )


@pytest.mark.parametrize(
    ("kind", "change"),
    [
        ("logs", {"message": "other"}),
        ("logs", {"ts": TS_NS + 1}),
        ("logs", {"attrs": {"a": "1"}}),
        ("logs", {"unknown": "x"}),
        ("metrics", {"value": 0.6}),
        ("metrics", {"labels": {"h": "1"}}),
        ("spans", {"duration_ns": 1_001}),
        ("rum", {"url": "https://shop.example.com/other"}),
    ],
)
def test_event_id_differs_by_content(kind: Kind, change: dict[str, Any]) -> None:
    assert parse(kind, FACTORIES[kind]()).id != parse(kind, FACTORIES[kind](**change)).id


def test_event_id_independent_of_attribute_and_field_order() -> None:
    a = b'{"ts":1704067200000000000,"service":"s","level":"info","message":"m",'
    a += b'"attrs":{"a":"1","b":"2"},"x":1,"y":2}'
    b = b'{"y":2,"attrs":{"b":"2","a":"1"},"message":"m","x":1,"level":"info",'
    b += b'"service":"s","ts":1704067200000000000}'
    assert parse_event("logs", a, TENANT).id == parse_event("logs", b, TENANT).id


@pytest.mark.parametrize(
    "ts", ["2024-01-01T00:00:00Z", "2024-01-01T01:00:00+01:00", "2024-01-01 00:00:00.000z"]
)
def test_event_id_independent_of_timestamp_representation(ts: str) -> None:
    assert parse("logs", log(ts=ts)).id == parse("logs", log(ts=TS_NS)).id


def test_event_id_span_independent_of_end_vs_duration() -> None:
    by_duration = parse("spans", span(duration_ns=1_000))
    obj = span(end="2024-01-01T00:00:00.000001Z")
    del obj["duration_ns"]
    assert parse("spans", obj).id == by_duration.id


@pytest.mark.parametrize("client_id", ["abc", "  Weird/ID ü  ", "x" * MAX_ID_CHARS, "0"])
@pytest.mark.parametrize("kind", list(FACTORIES))
def test_client_id_kept_verbatim(kind: Kind, client_id: str) -> None:
    assert parse(kind, FACTORIES[kind](id=client_id)).id == client_id


@pytest.mark.parametrize("client_id", ["", "x" * (MAX_ID_CHARS + 1)])
@pytest.mark.parametrize("kind", list(FACTORIES))
def test_client_id_length_rejected(kind: Kind, client_id: str) -> None:
    assert "id" in rejected(kind, FACTORIES[kind](id=client_id))


# --- the fast path (straight into the wire Struct) agrees with the general path ------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
_field_values = st.sampled_from(
    [
        "2024-01-01T00:00:00Z",
        "not a time",
        1_704_067_200_000_000_000,
        "0af7651916cd43dd8448eb211c80319c",
        "b7ad6b7169203331",
        "ok",
        "page_view",
        "server",
        "counter",
        1.5,
        {"k": "v"},
        {"n": 1},
    ]
)


def _general(kind: Kind, raw: bytes) -> Any:
    try:
        wire, extras = events_module._decode_general(kind, raw)
        event = events_module._build(kind, wire, extras, "acme")
        return msgspec.structs.replace(event, id=event.id or event_id(event))
    except InvalidEvent as exc:
        return ("invalid", str(exc))


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["logs", "metrics", "spans", "rum"]),
    known=st.data(),
    unknown=st.dictionaries(st.text(max_size=6), _json_values, max_size=2),
)
def test_fast_path_agrees_with_general_path(
    kind: Kind, known: st.DataObject, unknown: dict[str, Any]
) -> None:
    """A valid event of the kind, some fields replaced, maybe unknown fields added."""
    fields = sorted(WIRE_TYPES[kind].__struct_fields__)
    chosen = known.draw(
        st.dictionaries(st.sampled_from(fields), _field_values | _json_values, max_size=2)
    )
    raw = msgspec.json.encode({**unknown, **FACTORIES[kind](), **chosen})
    try:
        fast: Any = parse_event(kind, raw, "acme")
    except InvalidEvent as exc:
        fast = ("invalid", str(exc))
    assert fast == _general(kind, raw)
