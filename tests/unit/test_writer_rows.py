"""Unit tests for services.writer.rows and the pure parts of services.writer.app."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

import msgspec
import pytest

from services.writer.app import insert_isolating
from services.writer.batches import decode_batch, insert_token
from services.writer.rows import (
    CLICKHOUSE_DDL,
    CLICKHOUSE_TABLES,
    INGEST_SCHEMA,
    INGEST_SELECT,
    INSERTED_AT,
    METRIC_COLUMNS,
    ingest_ddl,
    ingest_table,
    nanos_to_datetime,
    to_json_rows,
    to_metric_records,
)
from services.writer.sinks import RejectedBatch, RetryableSinkError, Sink, postgres_ddl
from shared.entries import delivery_of
from shared.schemas import (
    CLEAN_TYPES,
    CleanEvent,
    GeoInfo,
    Kind,
    Log,
    Metric,
    Rum,
    Span,
    StoredEvent,
    UserAgentInfo,
)
from tests.helpers import stored

TS = 1_704_067_200_123_456_789  # 2024-01-01T00:00:00.123456789Z
RECEIVED = TS + 1_000_000_500


def make_log(i: int = 0, message: str = "ok", tenant: str = "acme") -> Log:
    return Log(
        tenant=tenant,
        id=f"log-{i}",
        ts=TS + i,
        service="checkout",
        level="info",
        message=message,
        attrs={"k": "v"},
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331",
        host="h1",
        received_at=RECEIVED,
        geo=GeoInfo(country="GB", city="London", lat=51.5, lon=-0.09),
    )


def make_span() -> Span:
    return Span(
        tenant="acme",
        id="span-1",
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331",
        service="api",
        name="GET /cart",
        ts=TS,
        end_ts=TS + 10,
        duration_ns=10,
        parent_span_id="00f067aa0ba902b7",
        kind="server",
        status="error",
        status_message="boom",
        attrs={"route": "/cart"},
        received_at=RECEIVED,
    )


def make_rum() -> Rum:
    return Rum(
        tenant="acme",
        id="rum-1",
        ts=TS,
        session_id="s1",
        type="web_vital",
        url="https://shop.example.com/",
        referrer="https://ref.example.org/",
        user_id="u1",
        metrics={"lcp": 1.5},
        error={},
        attrs={"a": "b"},
        received_at=RECEIVED,
        geo=GeoInfo(country="JP"),
        user_agent=UserAgentInfo(browser="Firefox", browser_version="121.0", os="Windows"),
    )


def make_metric(labels: dict[str, str] | None = None, ts: int = TS) -> Metric:
    return Metric(
        tenant="acme",
        id="m-1",
        ts=ts,
        name="cpu.usage",
        value=0.5,
        type="counter",
        labels={"zone": "b", "az": "a"} if labels is None else labels,
        service="api",
        host="h1",
        received_at=RECEIVED,
    )


EVENTS: dict[str, CleanEvent] = {"logs": make_log(), "spans": make_span(), "rum": make_rum()}


# --- ClickHouse rows -----------------------------------------------------------------------------


def ddl_columns(kind: str) -> list[str]:
    ddl = CLICKHOUSE_DDL[kind]
    return [
        m.group(1)
        for m in re.finditer(r"^ +(\w+) [A-Z]", ddl, re.MULTILINE)
        if m.group(1) != "INDEX"
    ]


def select_columns(kind: str) -> list[str]:
    return [column for column, _ in INGEST_SELECT[kind]]


@pytest.mark.parametrize("kind", ["logs", "spans", "rum"])
def test_every_column_is_in_the_ddl(kind: str) -> None:
    ddl = CLICKHOUSE_DDL[kind]
    assert f".{CLICKHOUSE_TABLES[kind]} (" in ddl
    for name in select_columns(kind):
        assert re.search(rf"^ +{name} ", ddl, re.MULTILINE), f"{name} missing from {kind} DDL"


@pytest.mark.parametrize("kind", ["logs", "spans", "rum"])
def test_every_table_records_when_its_rows_were_inserted(kind: str) -> None:
    """`inserted_at` is the one column the view leaves to its default."""
    assert "    {inserted_at},\n" in CLICKHOUSE_DDL[kind]
    assert "inserted_at" not in select_columns(kind)


@pytest.mark.parametrize("kind", ["logs", "spans", "rum"])
def test_ddl_has_no_column_the_view_leaves_out(kind: str) -> None:
    assert sorted(ddl_columns(kind)) == sorted(select_columns(kind))


@pytest.mark.parametrize("kind", ["logs", "spans", "rum"])
def test_ingest_table_has_every_field_of_the_clean_event(kind: Kind) -> None:
    """A field added to a clean Struct must reach the ingest table, or it would be dropped."""
    top_level = re.sub(r"\([^()]*\)", "", re.sub(r"\([^()]*\)", "", INGEST_SCHEMA[kind]))
    columns = [part.split()[0] for part in top_level.split(",")]
    assert sorted(columns) == sorted(CLEAN_TYPES[kind].__struct_fields__)


@pytest.mark.parametrize("kind", ["logs", "spans", "rum"])
def test_json_rows_are_one_clean_event_per_line(kind: Kind) -> None:
    lines = to_json_rows(stored([EVENTS[kind], EVENTS[kind]])).split(b"\n")
    assert [msgspec.json.decode(line, type=CLEAN_TYPES[kind]) for line in lines] == [
        EVENTS[kind],
        EVENTS[kind],
    ]


def test_ingest_ddl_names_the_view_and_table() -> None:
    inserted_at, null_table, view = ingest_ddl("`db`", "rum")
    assert inserted_at == f"ALTER TABLE `db`.rum_events ADD COLUMN IF NOT EXISTS {INSERTED_AT}"
    assert null_table.startswith(f"CREATE TABLE IF NOT EXISTS `db`.{ingest_table('rum')} (")
    assert null_table.endswith("ENGINE = Null")
    assert " TO `db`.rum_events AS SELECT " in view
    assert "user_agent.browser AS browser" in view


# --- PostgreSQL records --------------------------------------------------------------------------


def test_metric_record_matches_columns_and_ddl() -> None:
    (record,) = to_metric_records([make_metric()])
    assert len(record) == len(METRIC_COLUMNS)
    table = postgres_ddl("rivulet", timescale=False)[1]
    for name in METRIC_COLUMNS:
        assert re.search(rf"^ +{name} ", table, re.MULTILINE), name


def test_metric_record_values() -> None:
    (record,) = to_metric_records([make_metric()])
    values = dict(zip(METRIC_COLUMNS, record, strict=True))
    assert values["ts"] == dt.datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=dt.UTC)
    assert values["received_at"] == dt.datetime(2024, 1, 1, 0, 0, 1, 123457, tzinfo=dt.UTC)
    assert values["ts"].utcoffset() == dt.timedelta(0)
    assert values["labels"] == '{"az":"a","zone":"b"}'
    assert (values["name"], values["value"], values["type"]) == ("cpu.usage", 0.5, "counter")


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({}, "{}"),
        ({"b": "2", "a": "1", "c": "3"}, '{"a":"1","b":"2","c":"3"}'),
        ({"q": 'say "hi"'}, '{"q":"say \\"hi\\""}'),
    ],
)
def test_metric_labels_json_sorted(labels: dict[str, str], expected: str) -> None:
    (record,) = to_metric_records([make_metric(labels=labels)])
    assert record[METRIC_COLUMNS.index("labels")] == expected
    assert msgspec.json.decode(expected) == labels


@pytest.mark.parametrize(
    ("nanos", "expected"),
    [
        (0, dt.datetime(1970, 1, 1, tzinfo=dt.UTC)),
        (999, dt.datetime(1970, 1, 1, tzinfo=dt.UTC)),
        (1_000, dt.datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=dt.UTC)),
        (TS, dt.datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=dt.UTC)),
        (-1, dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)),
        (-2_208_988_800 * 10**9, dt.datetime(1900, 1, 1, tzinfo=dt.UTC)),
        (9_214_646_400 * 10**9 - 1, dt.datetime(2261, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)),
    ],
)
def test_nanos_to_datetime(nanos: int, expected: dt.datetime) -> None:
    assert nanos_to_datetime(nanos) == expected
    assert nanos_to_datetime(nanos).tzinfo is not None


# --- decode_batch --------------------------------------------------------------------------------


def clean_fields(event: CleanEvent, kind: Kind, body: bytes | None = None) -> dict[bytes, bytes]:
    """A clean stream entry's fields as the normalizer's commit writes them."""
    return {
        b"tenant": event.tenant.encode(),
        b"kind": kind.encode(),
        b"id": event.id.encode(),
        b"received_at": str(event.received_at).encode(),
        b"body": msgspec.json.encode(event) if body is None else body,
    }


@pytest.mark.parametrize("kind", ["logs", "spans", "rum"])
def test_decode_batch_round_trip(kind: Kind) -> None:
    event = EVENTS[kind]
    batch = decode_batch(kind, [delivery_of(b"1-0", clean_fields(event, kind))])
    assert batch.events == stored([event])
    assert batch.entry_ids == [b"1-0"]
    assert batch.undecodable == []


def test_decode_batch_metrics() -> None:
    event = make_metric()
    batch = decode_batch("metrics", [delivery_of(b"1-0", clean_fields(event, "metrics"))])
    assert batch.events == stored([event])


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"",
        b"[]",
        b'{"tenant":"acme"}',  # missing required fields
        msgspec.json.encode(make_span()),  # a span body on the logs stream
    ],
)
def test_decode_batch_undecodable_is_dead_letter(body: bytes) -> None:
    good = make_log(1)
    bad = make_log(2)
    deliveries = [
        delivery_of(b"1-0", clean_fields(good, "logs")),
        delivery_of(b"2-0", clean_fields(bad, "logs", body=body), deliveries=3),
    ]
    batch = decode_batch("logs", deliveries)
    assert batch.events == stored([good])
    assert batch.entry_ids == [b"1-0", b"2-0"]
    (letter,) = batch.undecodable
    assert letter.stage == "writer"
    assert (letter.tenant, letter.kind, letter.id) == ("acme", "logs", "log-2")
    assert (letter.received_at, letter.body, letter.attempts) == (RECEIVED, body, 3)
    assert letter.reason.startswith("undecodable clean entry: ")


def test_decode_batch_malformed_fields_is_dead_letter() -> None:
    bad = clean_fields(make_log(2), "logs")
    bad[b"received_at"] = b"soon"
    batch = decode_batch(
        "logs", [delivery_of(b"1-0", clean_fields(make_log(1), "logs")), delivery_of(b"2-0", bad)]
    )
    assert len(batch.events) == 1
    assert len(batch.undecodable) == 1


# --- insert_token --------------------------------------------------------------------------------


def test_insert_token_deterministic() -> None:
    events = stored([make_log(1), make_log(2)])
    token = insert_token(events)
    assert token == insert_token(stored([make_log(1), make_log(2)]))
    assert re.fullmatch(r"[0-9a-f]{64}", token)


def test_insert_token_order_sensitive() -> None:
    assert insert_token(stored([make_log(1), make_log(2)])) != insert_token(
        stored([make_log(2), make_log(1)])
    )


def test_insert_token_depends_on_tenant_and_id_only() -> None:
    base = insert_token(stored([make_log(1)]))
    assert insert_token(stored([make_log(1, message="other")])) == base
    assert insert_token(stored([make_log(1, tenant="other")])) != base
    assert insert_token(stored([make_log(1), make_log(1)])) != base


def test_insert_token_field_boundaries() -> None:
    a = msgspec.structs.replace(make_log(), tenant="ab", id="c")
    b = msgspec.structs.replace(make_log(), tenant="a", id="bc")
    assert insert_token(stored([a])) != insert_token(stored([b]))


# --- insert_isolating ----------------------------------------------------------------------------


class FakeSink:
    """A Sink that refuses any batch holding a message "poison"; retryable failure on demand."""

    kinds: frozenset[Kind] = frozenset({"logs"})

    def __init__(self, retryable_on_call: int | None = None) -> None:
        self.retryable_on_call = retryable_on_call
        self.calls: list[tuple[list[str], str]] = []
        self.stored: list[StoredEvent] = []

    async def start(self) -> None:
        return None

    async def insert(self, kind: Kind, events: Sequence[StoredEvent], token: str) -> None:
        self.calls.append(([e.id for e in events], token))
        if self.retryable_on_call is not None and len(self.calls) >= self.retryable_on_call:
            raise RetryableSinkError("database away")
        poison = [e.id for e in events if b'"message":"poison"' in e.body]
        if poison:
            raise RejectedBatch(f"Code: 27. cannot parse {poison[0]}")
        self.stored.extend(events)

    async def existing_ids(self, kind: Kind, events: Sequence[StoredEvent]) -> set[str]:
        return set()

    async def close(self) -> None:
        return None


def batch_with_poison(size: int, poison_at: Sequence[int]) -> list[StoredEvent]:
    return stored([make_log(i, message="poison" if i in poison_at else "ok") for i in range(size)])


def test_fake_sink_is_a_sink() -> None:
    sink: Sink = FakeSink()
    assert sink.kinds == frozenset({"logs"})


async def test_insert_isolating_clean_batch_is_one_insert() -> None:
    sink = FakeSink()
    events = batch_with_poison(5, [])
    assert await insert_isolating(sink, "logs", events) == []
    assert sink.calls == [([e.id for e in events], insert_token(events))]
    assert sink.stored == events


async def test_insert_isolating_empty() -> None:
    sink = FakeSink()
    assert await insert_isolating(sink, "logs", []) == []
    assert sink.calls == []


@pytest.mark.parametrize(
    ("size", "poison_at"),
    [
        (1, [0]),
        (2, [1]),
        (8, [0]),
        (8, [7]),
        (8, [3, 4]),
        (9, [0, 4, 8]),
        (13, [2, 3, 4, 5]),
        (4, [0, 1, 2, 3]),
    ],
)
async def test_insert_isolating_returns_exactly_the_poison(size: int, poison_at: list[int]) -> None:
    sink = FakeSink()
    events = batch_with_poison(size, poison_at)
    refused = await insert_isolating(sink, "logs", events)

    assert [event for event, _ in refused] == [events[i] for i in poison_at]
    for event, reason in refused:
        assert reason == f"Code: 27. cannot parse {event.id}"
    healthy = [e for i, e in enumerate(events) if i not in poison_at]
    assert sink.stored == healthy  # each healthy event inserted exactly once, in order
    for ids, token in sink.calls:
        assert token == insert_token([e for e in events if e.id in ids])


@pytest.mark.parametrize("retryable_on_call", [1, 2, 3])
async def test_insert_isolating_retryable_propagates(retryable_on_call: int) -> None:
    sink = FakeSink(retryable_on_call=retryable_on_call)
    with pytest.raises(RetryableSinkError):
        await insert_isolating(sink, "logs", batch_with_poison(8, [5]))


async def test_insert_isolating_other_errors_propagate() -> None:
    class Broken(FakeSink):
        async def insert(self, kind: Kind, events: Sequence[StoredEvent], token: str) -> None:
            raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        await insert_isolating(Broken(), "logs", batch_with_poison(2, []))
