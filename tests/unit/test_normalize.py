"""Unit tests for services.normalizer.normalize and the pure `process_batch` of the normalizer."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from services.normalizer.normalize import (
    CLIENT_IP_ATTRIBUTES,
    Enrichment,
    normalize,
    process_batch,
    to_clean_entry,
)
from shared.entries import Delivery, decode_raw, delivery_of
from shared.events import InvalidEvent, parse_event
from shared.schemas import (
    CLEAN_TYPES,
    GeoInfo,
    Kind,
    Log,
    Metric,
    RawEntry,
    Rum,
    Span,
    UserAgentInfo,
)

TENANT = "acme"
TS = 1_704_067_200_000_000_000
RECEIVED_AT = TS + 5_000_000
LONDON = GeoInfo(country="GB", city="London", lat=51.5, lon=-0.09)
CHROME = UserAgentInfo(browser="Chrome", browser_version="120.0", os="Linux", device="Other")
UA_HEADER = "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0"
CLIENT_IP = "81.2.69.160"


class FakeLookups:
    """Plain functions returning fixed answers, recording what they were asked."""

    def __init__(self) -> None:
        self.geo_calls: list[str] = []
        self.ua_calls: list[str] = []

    def geo(self, ip: str) -> GeoInfo:
        self.geo_calls.append(ip)
        return LONDON

    def user_agent(self, user_agent: str) -> UserAgentInfo:
        self.ua_calls.append(user_agent)
        return CHROME

    @property
    def enrichment(self) -> Enrichment:
        return Enrichment(geo=self.geo, user_agent=self.user_agent)


@pytest.fixture
def fakes() -> FakeLookups:
    return FakeLookups()


def body(**event: Any) -> bytes:
    return msgspec.json.encode(event)


def log_body(**overrides: Any) -> bytes:
    event: dict[str, Any] = {"ts": TS, "service": "checkout", "level": "info", "message": "ok"}
    event.update(overrides)
    return body(**event)


def rum_body(**overrides: Any) -> bytes:
    event: dict[str, Any] = {
        "ts": TS,
        "session_id": "s1",
        "type": "page_view",
        "url": "https://shop.example.com/",
    }
    event.update(overrides)
    return body(**event)


def span_body(**overrides: Any) -> bytes:
    event: dict[str, Any] = {
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": "b7ad6b7169203331",
        "service": "api",
        "name": "GET /cart",
        "start": TS,
        "duration_ns": 1000,
    }
    event.update(overrides)
    return body(**event)


def metric_body(**overrides: Any) -> bytes:
    event: dict[str, Any] = {"ts": TS, "name": "cpu", "value": 1.0}
    event.update(overrides)
    return body(**event)


def fields(
    kind: Kind,
    raw: bytes,
    *,
    event_id: str | None = None,
    ip: str = "",
    ua: str = "",
    tenant: str = TENANT,
) -> dict[bytes, bytes]:
    """Raw stream entry fields exactly as the gateway's append script writes them."""
    if event_id is None:
        try:
            event_id = parse_event(kind, raw, tenant).id
        except InvalidEvent:
            event_id = ""
    return {
        b"tenant": tenant.encode(),
        b"kind": kind.encode(),
        b"id": event_id.encode(),
        b"received_at": str(RECEIVED_AT).encode(),
        b"body": raw,
        b"ip": ip.encode(),
        b"ua": ua.encode(),
    }


def entry(kind: Kind, raw: bytes, **kwargs: Any) -> RawEntry:
    return decode_raw(fields(kind, raw, **kwargs))


def normalize_log(raw: bytes, fakes: FakeLookups, **kwargs: Any) -> Log:
    event = normalize("logs", entry("logs", raw, **kwargs), fakes.enrichment)
    assert isinstance(event, Log)
    return event


def normalize_rum(raw: bytes, fakes: FakeLookups, **kwargs: Any) -> Rum:
    event = normalize("rum", entry("rum", raw, **kwargs), fakes.enrichment)
    assert isinstance(event, Rum)
    return event


# --- logs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("attribute", CLIENT_IP_ATTRIBUTES)
def test_log_geo_from_client_ip_attribute_then_ip_scrubbed(
    attribute: str, fakes: FakeLookups
) -> None:
    event = normalize_log(log_body(attrs={attribute: CLIENT_IP, "route": "/cart"}), fakes)
    assert fakes.geo_calls == [CLIENT_IP]
    assert event.geo == LONDON
    assert event.attrs == {attribute: "<ipv4>", "route": "/cart"}


def test_log_geo_from_unknown_top_level_client_ip(fakes: FakeLookups) -> None:
    event = normalize_log(log_body(client_ip=CLIENT_IP), fakes)
    assert fakes.geo_calls == [CLIENT_IP]
    assert event.geo == LONDON
    assert event.attrs == {"client_ip": "<ipv4>"}


def test_log_client_ip_attribute_precedence(fakes: FakeLookups) -> None:
    normalize_log(log_body(attrs={"ip": "198.51.100.1", "client_ip": CLIENT_IP}), fakes)
    assert fakes.geo_calls == [CLIENT_IP]


def test_log_ipv6_client_ip_scrubbed(fakes: FakeLookups) -> None:
    event = normalize_log(log_body(attrs={"client.address": "2a02:1234::1"}), fakes)
    assert fakes.geo_calls == ["2a02:1234::1"]
    assert event.attrs == {"client.address": "<ipv6>"}


def test_log_without_client_ip_gets_no_geo(fakes: FakeLookups) -> None:
    # the connection IP captured by the gateway is only used for RUM
    event = normalize_log(log_body(attrs={"route": "/"}), fakes, ip=CLIENT_IP, ua=UA_HEADER)
    assert fakes.geo_calls == []
    assert fakes.ua_calls == []
    assert event.geo == GeoInfo()


@pytest.mark.parametrize(
    ("message", "scrubbed"),
    [
        ("mail jane.doe@example.com now", "mail <email> now"),
        ("paid with 4111 1111 1111 1111", "paid with <card>"),
        ("card 4111-1111-1111-1111 by bob@example.org", "card <card> by <email>"),
        ("login password=hunter2 ok", "login password=<redacted> ok"),
        ("nothing to see", "nothing to see"),
    ],
)
def test_log_message_scrubbed(message: str, scrubbed: str, fakes: FakeLookups) -> None:
    assert normalize_log(log_body(message=message), fakes).message == scrubbed


def test_log_attrs_scrubbed(fakes: FakeLookups) -> None:
    event = normalize_log(
        log_body(attrs={"user": "jane@example.com", "db.password": "x", "n": 1}), fakes
    )
    assert event.attrs == {"user": "<email>", "db.password": "<redacted>", "n": "1"}


def test_log_keeps_received_at_and_tenant(fakes: FakeLookups) -> None:
    event = normalize_log(log_body(), fakes, tenant="t9")
    assert (event.tenant, event.received_at) == ("t9", RECEIVED_AT)


# --- rum -----------------------------------------------------------------------------------------


def test_rum_geo_and_user_agent_from_entry(fakes: FakeLookups) -> None:
    event = normalize_rum(rum_body(), fakes, ip=CLIENT_IP, ua=UA_HEADER)
    assert fakes.geo_calls == [CLIENT_IP]
    assert fakes.ua_calls == [UA_HEADER]
    assert event.geo == LONDON
    assert event.user_agent == CHROME


def test_rum_without_entry_ip_gets_no_geo(fakes: FakeLookups) -> None:
    event = normalize_rum(rum_body(), fakes)
    assert fakes.geo_calls == []
    assert event.geo == GeoInfo()


def test_rum_url_referrer_error_attrs_scrubbed(fakes: FakeLookups) -> None:
    event = normalize_rum(
        rum_body(
            url="https://shop.example.com/cart?email=jane@example.com&token=abc123&page=2",
            referrer="https://ref.example.org/?password=hunter2",
            type="error",
            error={"message": "failed for bob@example.org"},
            attrs={"visitor_ip": "203.0.113.9", "x-api-key": "k"},
        ),
        fakes,
        ip=CLIENT_IP,
    )
    assert event.url == "https://shop.example.com/cart?email=<email>&token=<redacted>&page=2"
    assert event.referrer == "https://ref.example.org/?password=<redacted>"
    assert event.error == {"message": "failed for <email>"}
    assert event.attrs == {"visitor_ip": "<ipv4>", "x-api-key": "<redacted>"}


# --- spans and metrics ---------------------------------------------------------------------------


def test_span_status_message_and_attrs_scrubbed(fakes: FakeLookups) -> None:
    event = normalize(
        "spans",
        entry(
            "spans",
            span_body(status="error", status_message="denied for a@b.io", attrs={"ip": CLIENT_IP}),
            ip=CLIENT_IP,
        ),
        fakes.enrichment,
    )
    assert isinstance(event, Span)
    assert event.status_message == "denied for <email>"
    assert event.attrs == {"ip": "<ipv4>"}
    assert fakes.geo_calls == []


def test_metric_labels_scrubbed(fakes: FakeLookups) -> None:
    event = normalize(
        "metrics",
        entry(
            "metrics",
            metric_body(labels={"peer": "10.1.2.3", "owner": "ops@example.com", "az": "a"}),
        ),
        fakes.enrichment,
    )
    assert isinstance(event, Metric)
    assert event.labels == {"peer": "<ipv4>", "owner": "<email>", "az": "a"}
    assert event.name == "cpu"


# --- ids -----------------------------------------------------------------------------------------


def test_entry_id_wins_over_computed_id(fakes: FakeLookups) -> None:
    assert normalize_log(log_body(), fakes, event_id="gateway-id").id == "gateway-id"


def test_entry_id_wins_over_client_id(fakes: FakeLookups) -> None:
    assert normalize_log(log_body(id="client"), fakes, event_id="gateway-id").id == "gateway-id"


def test_computed_id_when_entry_has_none(fakes: FakeLookups) -> None:
    raw = log_body()
    assert normalize_log(raw, fakes, event_id="").id == parse_event("logs", raw, TENANT).id


def test_gateway_and_normalizer_agree_on_id(fakes: FakeLookups) -> None:
    raw = log_body(attrs={"client_ip": CLIENT_IP})
    gateway_id = parse_event("logs", raw, TENANT).id  # computed without received_at
    assert normalize_log(raw, fakes, event_id="").id == gateway_id


def test_normalize_invalid_event_raises(fakes: FakeLookups) -> None:
    with pytest.raises(InvalidEvent):
        normalize("logs", entry("logs", b'{"ts":1}', event_id="x"), fakes.enrichment)


def test_to_clean_entry_round_trip(fakes: FakeLookups) -> None:
    event = normalize_rum(rum_body(), fakes, ip=CLIENT_IP, ua=UA_HEADER, event_id="r1")
    clean = to_clean_entry(event, "rum")
    assert (clean.tenant, clean.kind, clean.id, clean.received_at) == (
        TENANT,
        "rum",
        "r1",
        RECEIVED_AT,
    )
    assert msgspec.json.decode(clean.body, type=Rum) == event


# --- process_batch -------------------------------------------------------------------------------


def delivery(entry_id: bytes, kind: Kind, raw: bytes, deliveries: int = 1, **kw: Any) -> Delivery:
    return delivery_of(entry_id, fields(kind, raw, **kw), deliveries)


def test_process_batch_mixed(fakes: FakeLookups) -> None:
    good = log_body(message="mail a@b.io", attrs={"client_ip": CLIENT_IP})
    bad = b'{"ts":"2024-02-30T00:00:00Z","service":"s","level":"info","message":"m"}'
    batch = [
        delivery(b"1-0", "logs", good, event_id="id-good"),
        delivery(b"2-0", "logs", bad, event_id="id-bad"),
        delivery(b"3-0", "logs", b"not json", event_id="id-junk"),
    ]
    commit = process_batch("logs", batch, fakes.enrichment, max_deliveries=5)

    assert list(commit.acked) == [b"1-0", b"2-0", b"3-0"]
    (out,) = commit.outputs
    assert (out.id, out.kind, out.tenant, out.received_at) == (
        "id-good",
        "logs",
        TENANT,
        RECEIVED_AT,
    )
    clean = msgspec.json.decode(out.body, type=CLEAN_TYPES["logs"])
    assert isinstance(clean, Log)
    assert clean.message == "mail <email>"
    assert clean.geo == LONDON

    assert [d.id for d in commit.dead_letters] == ["id-bad", "id-junk"]
    for letter, original in zip(commit.dead_letters, [bad, b"not json"], strict=True):
        assert letter.stage == "normalizer"
        assert letter.kind == "logs"
        assert letter.tenant == TENANT
        assert letter.received_at == RECEIVED_AT
        assert letter.body == original
        assert letter.attempts == 1
        assert letter.reason.startswith("invalid event: ")
    assert "ts" in commit.dead_letters[0].reason


def test_process_batch_over_delivered_is_dead_lettered(fakes: FakeLookups) -> None:
    raw = log_body()
    batch = [
        delivery(b"1-0", "logs", raw, deliveries=5, event_id="a"),
        delivery(b"2-0", "logs", raw, deliveries=6, event_id="b"),
    ]
    commit = process_batch("logs", batch, fakes.enrichment, max_deliveries=5)
    assert list(commit.acked) == [b"1-0", b"2-0"]
    assert [o.id for o in commit.outputs] == ["a"]
    (letter,) = commit.dead_letters
    assert (letter.id, letter.stage, letter.attempts, letter.body) == ("b", "normalizer", 6, raw)
    assert "6 times" in letter.reason


def test_process_batch_lookup_failure_is_parked_not_raised() -> None:
    def broken_geo(ip: str) -> GeoInfo:
        raise RuntimeError("mmdb closed")

    def ua(user_agent: str) -> UserAgentInfo:
        return UserAgentInfo()

    batch = [
        delivery(b"1-0", "rum", rum_body(), ip=CLIENT_IP),
        delivery(b"2-0", "rum", rum_body(url="https://x/")),
    ]
    commit = process_batch("rum", batch, Enrichment(geo=broken_geo, user_agent=ua), 5)
    assert list(commit.acked) == [b"1-0", b"2-0"]
    assert len(commit.outputs) == 1
    (letter,) = commit.dead_letters
    assert letter.reason.startswith("normalizer error: RuntimeError")
    assert letter.stage == "normalizer"


def test_process_batch_empty(fakes: FakeLookups) -> None:
    commit = process_batch("logs", [], fakes.enrichment, max_deliveries=5)
    assert (list(commit.acked), list(commit.outputs), list(commit.dead_letters)) == ([], [], [])


@pytest.mark.parametrize("kind", ["logs", "metrics", "spans", "rum"])
def test_process_batch_every_kind(kind: Kind, fakes: FakeLookups) -> None:
    raw = {"logs": log_body, "metrics": metric_body, "spans": span_body, "rum": rum_body}[kind]()
    commit = process_batch(kind, [delivery(b"9-0", kind, raw)], fakes.enrichment, 5)
    (out,) = commit.outputs
    assert out.kind == kind
    assert out.id == parse_event(kind, raw, TENANT).id
    assert isinstance(msgspec.json.decode(out.body, type=CLEAN_TYPES[kind]), CLEAN_TYPES[kind])
    assert list(commit.dead_letters) == []


def test_process_batch_malformed_entry_is_dead_lettered(fakes: FakeLookups) -> None:
    bad_fields = fields("logs", log_body(), event_id="x")
    bad_fields[b"received_at"] = b"soon"
    batch = [delivery_of(b"1-0", bad_fields), delivery(b"2-0", "logs", log_body(message="fine"))]
    commit = process_batch("logs", batch, fakes.enrichment, max_deliveries=5)
    assert list(commit.acked) == [b"1-0", b"2-0"]
    assert len(commit.outputs) == 1
    assert len(commit.dead_letters) == 1
