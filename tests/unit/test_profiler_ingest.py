"""Unit tests for the pure halves of profile ingest: the gateway's checks
(services.gateway.profiles), the stream codecs (shared.profile_streams) and the profiler's batch
step (services.profiler.app.process_batch)."""

from __future__ import annotations

import gzip

import pytest

from services.gateway.ingest import HttpError
from services.gateway.profiles import (
    check_profile_content,
    parse_profile_query,
    profile_payload,
    validate_profile,
)
from services.profiler.app import process_batch
from services.profiler.pprof import ProfileLimits
from services.profiler.synth import ProfileBuilder, cpu_example
from shared.entries import MalformedEntry, delivery_of
from shared.profile_streams import decode_raw_profile, raw_profile_fields
from shared.schemas import RawProfileEntry

LIMITS = ProfileLimits(max_bytes=1024 * 1024, max_samples=100, max_stack_depth=32)


def test_query_string() -> None:
    q = parse_profile_query("service=api&type=cpu&env=prod&region=eu-west", 8)
    assert (q.service, q.type, q.id, q.labels) == (
        "api",
        "cpu",
        None,
        {"env": "prod", "region": "eu-west"},
    )
    assert parse_profile_query("service=a%20b&type=heap&id=x-1", 8).service == "a b"
    assert parse_profile_query("service=a&type=heap&id=x-1", 8).id == "x-1"
    for bad, why in [
        ("", "service"),
        ("type=cpu", "service"),
        ("service=api", "type"),
        ("service=api&type=c%20pu", "type"),
        ("service=a%0Ab&type=cpu", "service"),
        ("service=api&type=cpu&id=a%22b", "id"),
        ("service=api&type=cpu&1x=1", "label name"),
        ("service=api&type=cpu&k=%00", "label"),
        ("service=api&type=cpu&a=1&b=2&c=3", "more than 2 labels"),
        ("service=api&type=cpu&type=heap", "twice"),
        ("service=api&type=cpu&flag", "malformed"),
    ]:
        with pytest.raises(HttpError) as caught:
            parse_profile_query(bad, 2)
        assert caught.value.status == 400 and why in caught.value.message, bad


def test_content_headers() -> None:
    for ok in ("", "application/octet-stream", "application/x-protobuf; proto=x"):
        check_profile_content(ok, "")
    check_profile_content("application/octet-stream", "gzip")
    for content_type, encoding in [("application/json", ""), ("", "br")]:
        with pytest.raises(HttpError) as caught:
            check_profile_content(content_type, encoding)
        assert caught.value.status == 415


def test_payload_and_validation() -> None:
    plain = cpu_example().encode()
    zipped = gzip.compress(plain)
    assert profile_payload(plain, "", 1 << 20) == plain
    assert profile_payload(zipped, "gzip", 1 << 20) == zipped  # a gzipped protobuf as sent
    assert profile_payload(gzip.compress(zipped), "gzip", 1 << 20) == zipped  # double gzip
    assert validate_profile(plain, LIMITS) == 5
    assert validate_profile(zipped, LIMITS) == 5
    deep = ProfileBuilder([("samples", "count")])
    deep.add([f"f{i}" for i in range(40)], [1])
    many = ProfileBuilder([("samples", "count")])
    for i in range(101):
        many.add([f"f{i % 3}"], [1])
    cases = [
        (gzip.compress(b"\0" * (2 * 1024 * 1024)), 413),  # a gzip bomb
        (b"\0" * (LIMITS.max_bytes + 1), 413),
        (b"", 422),
        (b"garbage \xff\xff", 422),
        (zipped[:-4], 422),
        (plain[:-3], 422),
        (deep.encode(), 422),
        (many.encode(), 422),
    ]
    for body, status in cases:
        with pytest.raises(HttpError) as caught:
            validate_profile(body, LIMITS)
        assert caught.value.status == status, caught.value.message
    with pytest.raises(HttpError) as caught:
        profile_payload(gzip.compress(b"\0" * (2 << 20)), "gzip", 1 << 20)
    assert caught.value.status == 413


def raw_fields(entry: RawProfileEntry) -> dict[bytes, bytes]:
    return {
        k.encode(): v if isinstance(v, bytes) else str(v).encode()
        for k, v in raw_profile_fields(entry)
    }


def test_raw_entry_codec() -> None:
    entry = RawProfileEntry(
        "acme", "p1", 7, "api", "cpu", b"\x1f\x8b...", labels={"env": "prod"}, size=9, ip="::1"
    )
    fields = raw_fields(entry)
    assert fields[b"kind"] == b"profiles" and fields[b"labels"] == b'{"env":"prod"}'
    assert decode_raw_profile(fields) == entry
    for broken in (
        {**fields, b"tenant": b""},
        {**fields, b"id": b""},
        {**fields, b"received_at": b"soon"},
        {**fields, b"labels": b"[1]"},
    ):
        with pytest.raises(MalformedEntry):
            decode_raw_profile(broken)


def test_process_batch_outputs_clean_entries_and_dead_letters() -> None:
    good = raw_fields(RawProfileEntry("acme", "p1", 7, "api", "cpu", cpu_example().encode()))
    deliveries = [
        delivery_of(b"1-0", good),
        delivery_of(b"2-0", {**good, b"id": b"p2", b"body": b"\xff\xff"}),
        delivery_of(b"3-0", {**good, b"id": b"p3"}, deliveries=9),
        delivery_of(b"4-0", {**good, b"tenant": b""}),
        delivery_of(b"5-0", {**good, b"id": b"p5", b"service": b""}),
    ]
    batch = process_batch(deliveries, LIMITS, max_deliveries=5)
    assert list(batch.acked) == [b"1-0", b"2-0", b"3-0", b"4-0", b"5-0"]
    assert [o.id for o in batch.outputs] == ["p1"]
    letters = [dict(letter) for letter in batch.dead_letters]
    assert [(d["id"], d["stage"]) for d in letters] == [
        ("p2", "profiler"),
        ("p3", "profiler"),
        ("p1", "profiler"),
        ("p5", "profiler"),
    ]
    reasons = [str(d["reason"]) for d in letters]
    assert reasons[0].startswith("invalid profile: not a valid pprof protobuf")
    assert reasons[1] == "delivered 9 times without being processed"
    assert reasons[2] == "malformed raw entry: no tenant"
    assert reasons[3] == "invalid profile: no service or no type"
    assert letters[0]["body"] == b"\xff\xff" and letters[0]["service"] == "api"
