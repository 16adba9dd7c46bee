"""Unit tests for shared.entries: a delivery's field list read by position where Rivulet wrote it,
and by name, with the same result, where it did not (hand-made or reordered entries)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.entries import (
    Delivery,
    FieldList,
    Fields,
    MalformedEntry,
    decode_clean,
    decode_clean_fields,
    decode_raw,
    decode_raw_fields,
    deliveries_from_read,
    delivery_of,
    fields_of,
)

RAW: Fields = {
    b"tenant": b"acme",
    b"kind": b"logs",
    b"id": b"e1",
    b"received_at": b"1795416778017419836",
    b"body": b'{"message":"hi"}',
    b"ip": b"203.0.113.7",
    b"ua": b"curl/8.5",
}
CLEAN: Fields = {k: RAW[k] for k in (b"tenant", b"kind", b"id", b"received_at", b"body")}


def flat(fields: Fields) -> FieldList:
    return [item for pair in fields.items() for item in pair]


def outcome(call: object, *args: object) -> object:
    try:
        return call(*args)  # type: ignore[operator]
    except MalformedEntry as error:
        return ("MalformedEntry", str(error))


def test_delivery_keeps_the_list_and_gives_the_dict() -> None:
    delivery = delivery_of(b"1-0", RAW, deliveries=3)
    assert delivery.flat == flat(RAW)
    assert delivery.fields == RAW
    assert delivery.deliveries == 3
    assert fields_of([]) == {}


def test_the_layouts_rivulet_writes_are_read_by_position() -> None:
    assert decode_raw_fields(flat(RAW)) == decode_raw(RAW)
    assert decode_raw_fields(flat(RAW)).received_at == 1795416778017419836
    assert decode_clean_fields(flat(CLEAN)) == (1795416778017419836, b'{"message":"hi"}')


@pytest.mark.parametrize(
    "fields",
    [
        dict(reversed(RAW.items())),  # reordered by hand
        {**RAW, b"extra": b"x"},  # a field more
        {k: v for k, v in RAW.items() if k != b"ua"},  # a field less
        {**RAW, b"tenant": b""},
        {**RAW, b"received_at": b"yesterday"},
        {**RAW, b"received_at": b""},
        {**RAW, b"received_at": b"9" * 21},
        {},
    ],
)
def test_other_layouts_decode_as_by_name(fields: Fields) -> None:
    assert outcome(decode_raw_fields, flat(fields)) == outcome(decode_raw, fields)
    assert outcome(decode_clean_fields, flat(fields)) == outcome(decode_clean, fields)


@pytest.mark.parametrize("name", [b"tenant", b"kind", b"id", b"ip", b"ua"])
def test_invalid_utf8_decodes_with_replacement_either_way(name: bytes) -> None:
    fields = {**RAW, name: b"\xff\xfe" + RAW[name]}
    decoded = decode_raw_fields(flat(fields))
    assert decoded == decode_raw(fields)
    assert getattr(decoded, name.decode()) == "\ufffd\ufffd" + RAW[name].decode()


def test_a_repeated_name_reads_its_last_value_either_way() -> None:
    """A dict keeps the last of repeated names; the positional read must agree."""
    doubled = [b"body", b"first", b"received_at", b"1", *flat(CLEAN)[2:]]
    assert decode_clean_fields(doubled) == decode_clean(fields_of(doubled))
    assert decode_raw_fields([b"tenant", b"other", *flat(RAW)]) == decode_raw(
        fields_of([b"tenant", b"other", *flat(RAW)])
    )


def test_malformed_positional_entries_raise() -> None:
    with pytest.raises(MalformedEntry, match="no tenant"):
        decode_raw_fields(flat({**RAW, b"tenant": b""}))
    with pytest.raises(MalformedEntry, match="received_at"):
        decode_clean_fields(flat({**CLEAN, b"received_at": b"-1"}))


# Values of equal lengths, so that only their bytes tell them apart.
received_ats = st.sampled_from([b"1795416778017419836", b"1795416778017419837", b"7", b"8"])
texts = st.sampled_from([b"acme", b"acmf", b"\xffcme", b"", b"caf\xc3\xa9", b"caf\xc3\xa8"])


@given(st.lists(st.tuples(texts, texts, texts, received_ats | st.just(b"-1")), max_size=12))
def test_entries_decode_alike_however_they_follow_each_other(
    series: list[tuple[bytes, bytes, bytes, bytes]],
) -> None:
    # The last tenant, kind, ip, ua and received_at read are remembered: a repeat, a new value
    # or an invalid one after a valid one must each come out as if read alone.
    for tenant, ip, ua, received_at in series:
        raw = {**RAW, b"tenant": tenant, b"received_at": received_at, b"ip": ip, b"ua": ua}
        if not tenant or received_at == b"-1":
            with pytest.raises(MalformedEntry):
                decode_raw_fields(flat(raw))
            continue
        entry = decode_raw_fields(flat(raw))
        assert (entry.tenant, entry.ip, entry.ua) == tuple(
            value.decode("utf-8", "replace") for value in (tenant, ip, ua)
        )
        assert entry.received_at == int(received_at)
        clean = {**CLEAN, b"received_at": received_at}
        assert decode_clean_fields(flat(clean)) == (int(received_at), CLEAN[b"body"])


names = st.sampled_from([*RAW, b"reason", b""])
values = st.binary(max_size=24) | st.sampled_from(list(RAW.values()))


@given(st.lists(st.tuples(names, values), max_size=10))
def test_any_field_list_decodes_as_its_dict(pairs: list[tuple[bytes, bytes]]) -> None:
    items: FieldList = [item for pair in pairs for item in pair]
    assert outcome(decode_raw_fields, items) == outcome(decode_raw, fields_of(items))
    assert outcome(decode_clean_fields, items) == outcome(decode_clean, fields_of(items))


def test_deliveries_from_either_protocols_reply() -> None:
    entries = [[b"1-0", flat(RAW)], [b"2-0", None]]  # nil: deleted while pending
    want = [Delivery(b"1-0", flat(RAW)), Delivery(b"2-0", [])]
    assert deliveries_from_read({b"s": entries}) == want  # RESP3: a map of streams
    assert deliveries_from_read([[b"s", entries]]) == want  # RESP2: pairs
    assert deliveries_from_read(None) == []
    assert deliveries_from_read({}) == []
