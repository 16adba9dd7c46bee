"""Unit tests for services.gateway.ingest (pure request handling of the gateway)."""

from __future__ import annotations

import gzip
import time
import tracemalloc
import zlib
from typing import Any

import msgspec
import pytest

from services.gateway.ingest import (
    HttpError,
    check_content_headers,
    client_ip,
    decompress,
    parse_networks,
    split_events,
    validate_events,
)
from shared.events import parse_event

MIB = 1024 * 1024
JSON = "application/json"
NDJSON = "application/x-ndjson"
TS = 1_704_067_200_000_000_000


def log(i: int, **overrides: Any) -> bytes:
    event: dict[str, Any] = {"ts": TS + i, "service": "s", "level": "info", "message": f"m{i}"}
    event.update(overrides)
    return msgspec.json.encode(event)


# --- check_content_headers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        " application/json ",
        "application/x-ndjson",
        "application/x-ndjson; charset=utf-8",
        "application/ndjson",
        "application/jsonl",
    ],
)
@pytest.mark.parametrize("encoding", ["", "identity", "gzip", "GZIP", " gzip "])
def test_check_content_headers_accepts(content_type: str, encoding: str) -> None:
    check_content_headers(content_type, encoding)


@pytest.mark.parametrize(
    "content_type",
    ["", "text/plain", "application/xml", "application/x-www-form-urlencoded", "json", "*/*"],
)
def test_check_content_headers_rejects_type(content_type: str) -> None:
    with pytest.raises(HttpError) as info:
        check_content_headers(content_type, "")
    assert info.value.status == 415


@pytest.mark.parametrize("encoding", ["br", "deflate", "zstd", "x-gzip", "gzip, br", "compress"])
def test_check_content_headers_rejects_encoding(encoding: str) -> None:
    with pytest.raises(HttpError) as info:
        check_content_headers(JSON, encoding)
    assert info.value.status == 415


# --- decompress ----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["", "identity"])
def test_decompress_identity(encoding: str) -> None:
    body = b'{"events":[]}'
    assert decompress(body, encoding, limit=len(body)) is body


def test_decompress_identity_over_limit() -> None:
    with pytest.raises(HttpError) as info:
        decompress(b"x" * 11, "", limit=10)
    assert info.value.status == 413


@pytest.mark.parametrize("encoding", ["gzip", "GZip"])
def test_decompress_gzip(encoding: str) -> None:
    data = b'{"a":1}\n' * 1000
    assert decompress(gzip.compress(data), encoding, limit=len(data)) == data


def test_decompress_gzip_just_over_limit() -> None:
    data = b"y" * 1001
    with pytest.raises(HttpError) as info:
        decompress(gzip.compress(data), "gzip", limit=1000)
    assert info.value.status == 413


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """64 MiB of zeros, gzipped (about 64 KiB), built chunk by chunk."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(MIB)
    parts = [packer.compress(chunk) for _ in range(64)]
    parts.append(packer.flush())
    return b"".join(parts)


def test_decompress_gzip_bomb_is_bounded(gzip_bomb: bytes) -> None:
    assert len(gzip_bomb) < MIB
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(HttpError) as info:
            decompress(gzip_bomb, "gzip", limit=MIB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    assert info.value.status == 413
    assert peak < 8 * MIB, f"peak {peak} bytes while inflating a 64 MiB bomb"
    assert elapsed < 2.0


def test_decompress_corrupt_gzip() -> None:
    with pytest.raises(HttpError) as info:
        decompress(b"\x1f\x8b\x08\x00garbage-not-deflate" * 4, "gzip", limit=MIB)
    assert info.value.status == 422


def test_decompress_not_gzip_at_all() -> None:
    with pytest.raises(HttpError) as info:
        decompress(b'{"events":[]}', "gzip", limit=MIB)
    assert info.value.status == 422


@pytest.mark.parametrize("cut", [1, 8, 20])
def test_decompress_truncated_gzip(cut: int) -> None:
    body = gzip.compress(b'{"message":"hello"}\n' * 100)
    with pytest.raises(HttpError) as info:
        decompress(body[:-cut], "gzip", limit=MIB)
    assert info.value.status == 422


def test_decompress_empty_gzip_body_yields_no_events() -> None:
    # an empty gzip body is refused, here or by split_events: never a 202
    with pytest.raises(HttpError) as info:
        split_events(decompress(b"", "gzip", limit=MIB), NDJSON, 10)
    assert info.value.status == 422


def test_decompress_multi_member_gzip() -> None:
    # RFC 1952: concatenated members are one gzip stream; no member may be dropped
    body = gzip.compress(b'{"a":1}\n') + gzip.compress(b'{"b":2}\n') + gzip.compress(b"")
    assert decompress(body, "gzip", limit=MIB) == b'{"a":1}\n{"b":2}\n'


def test_decompress_multi_member_limit_is_for_the_total() -> None:
    member = gzip.compress(bytes(400 * 1024))
    assert len(decompress(member * 2, "gzip", limit=MIB)) == 800 * 1024
    with pytest.raises(HttpError) as info:
        decompress(member * 3, "gzip", limit=MIB)
    assert info.value.status == 413


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b"trailing garbage", id="garbage"),
        pytest.param(gzip.compress(b"b\n")[:-4], id="truncated-second-member"),
    ],
)
def test_decompress_rejects_bad_data_after_first_member(tail: bytes) -> None:
    with pytest.raises(HttpError) as info:
        decompress(gzip.compress(b"a\n") + tail, "gzip", limit=MIB)
    assert info.value.status == 422


# --- split_events --------------------------------------------------------------------------------


def test_split_json_keeps_raw_bytes_as_sent() -> None:
    body = b'{"events": [ {"b": 2,  "a" : 1} ,{"x":"\\u00e9"},\n{}], "meta": {"ignored": true}}'
    assert split_events(body, JSON, 10) == [b'{"b": 2,  "a" : 1}', b'{"x":"\\u00e9"}', b"{}"]


def test_split_json_with_charset_param() -> None:
    assert split_events(b'{"events":[{"a":1}]}', "application/json; charset=utf-8", 10) == [
        b'{"a":1}'
    ]


def test_split_ndjson_blank_lines_and_crlf() -> None:
    body = b'\r\n{"a":1}\r\n\r\n  \n{"b":2}\n{"c":3}'
    assert split_events(body, NDJSON, 10) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']


def test_split_ndjson_keeps_lines_as_sent() -> None:
    body = b'{ "a" : 1 }\n[1,2]\nnot json\n'
    assert split_events(body, NDJSON, 10) == [b'{ "a" : 1 }', b"[1,2]", b"not json"]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"", JSON),
        (b'{"events":[]}', JSON),
        (b"", NDJSON),
        (b"\n\r\n   \n", NDJSON),
    ],
)
def test_split_empty_batch(body: bytes, content_type: str) -> None:
    with pytest.raises(HttpError) as info:
        split_events(body, content_type, 10)
    assert info.value.status == 422


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'[{"a":1}]',
        b'"events"',
        b"null",
        b"{}",
        b'{"events":{"a":1}}',
        b'{"events":null}',
        b'{"events":[{"a":1}]} trailing',
        b'{"events":[{"a":1}',
        b'{"a":1}\n{"b":2}\n',  # NDJSON sent as application/json
    ],
)
def test_split_json_not_a_batch(body: bytes) -> None:
    with pytest.raises(HttpError) as info:
        split_events(body, JSON, 10)
    assert info.value.status == 422


@pytest.mark.parametrize(
    "body", [b'{"ev\xffents":[{"a":1}]}', b'\xff{"events":[]}', b'{"events":[{"a":1}]}\xff']
)
def test_split_json_invalid_utf8_outside_events(body: bytes) -> None:
    with pytest.raises(HttpError) as info:
        split_events(body, JSON, 10)
    assert info.value.status == 422


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"events":[' + b",".join([b"{}"] * 4) + b"]}", JSON),
        (b"{}\n" * 4, NDJSON),
    ],
)
def test_split_too_many_events(body: bytes, content_type: str) -> None:
    assert len(split_events(body, content_type, 4)) == 4
    with pytest.raises(HttpError) as info:
        split_events(body, content_type, 3)
    assert info.value.status == 413


@pytest.mark.parametrize("newlines", range(1, 12))
def test_blank_lines_beyond_twice_the_events_are_refused_unsplit(newlines: int) -> None:
    """Up to 2 * max_events + 1 newlines pass (blank lines, CRLF); one more is a 413."""
    body = b"{}" + b"\n" * newlines
    if newlines > 2 * 3 + 1:
        with pytest.raises(HttpError) as info:
            split_events(body, NDJSON, 3)
        assert info.value.status == 413
    else:
        assert split_events(body, NDJSON, 3) == [b"{}"]


# --- validate_events -----------------------------------------------------------------------------


def test_validate_partial_success() -> None:
    events = [
        log(0),
        b"[1, 2]",
        log(2, level=None),
        log(3, ts="2024-02-30T00:00:00Z"),
        log(4, id="client-4"),
        b"{not json",
    ]
    valid, rejected = validate_events("logs", events, "acme", max_event_bytes=10_000)
    assert [raw for _, raw in valid] == [events[0], events[4]]
    assert valid[0][0] == parse_event("logs", events[0], "acme").id
    assert valid[1][0] == "client-4"
    assert [r.index for r in rejected] == [1, 2, 3, 5]
    reasons = {r.index: r.reason for r in rejected}
    assert "level" in reasons[2]
    assert "ts" in reasons[3]
    assert all(r.reason for r in rejected)


def test_validate_ids_depend_on_tenant() -> None:
    (a,), _ = validate_events("logs", [log(0)], "a", 10_000)
    (b,), _ = validate_events("logs", [log(0)], "b", 10_000)
    assert a[0] != b[0]


def test_validate_oversized_event() -> None:
    big = log(1, message="x" * 500)
    valid, rejected = validate_events("logs", [log(0), big], "acme", max_event_bytes=len(big) - 1)
    assert [raw for _, raw in valid] == [log(0)]
    assert len(rejected) == 1
    assert rejected[0].index == 1
    assert str(len(big) - 1) in rejected[0].reason


def test_validate_reason_is_bounded() -> None:
    event = log(0, ts="x" * 10_000)
    _, rejected = validate_events("logs", [event], "acme", max_event_bytes=100_000)
    assert len(rejected[0].reason) <= 500


def test_validate_all_bad_is_still_an_answer() -> None:
    valid, rejected = validate_events("metrics", [b"{}", b"{}"], "acme", 10_000)
    assert valid == []
    assert [r.index for r in rejected] == [0, 1]


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(
            b'{"ts":1704067200000000000,"service":"s","level":"i","message":"\xff"}', id="utf8"
        ),
        pytest.param(log(1, ts="0000-01-01T00:00:00Z"), id="year-0"),
    ],
)
def test_validate_one_bad_event_never_sinks_the_batch(bad: bytes) -> None:
    body = b'{"events":[' + log(0) + b"," + bad + b"]}"
    events = split_events(body, JSON, 10)
    valid, rejected = validate_events("logs", events, "acme", 10_000)
    assert len(valid) == 1
    assert [r.index for r in rejected] == [1]


# --- client_ip -----------------------------------------------------------------------------------

TRUSTED = parse_networks(["10.0.0.0/8", "192.168.1.1", "fd00::/8"])


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        pytest.param("203.0.113.7", "", "203.0.113.7", id="no-xff"),
        pytest.param("10.0.0.2", "", "10.0.0.2", id="trusted-peer-no-xff"),
        pytest.param("203.0.113.7", "198.51.100.1", "203.0.113.7", id="untrusted-peer-ignored"),
        pytest.param("203.0.113.7", "10.0.0.3", "203.0.113.7", id="untrusted-peer-trusted-hop"),
        pytest.param("10.0.0.2", "198.51.100.1", "198.51.100.1", id="trusted-peer"),
        pytest.param(
            "10.0.0.2", "198.51.100.1, 10.0.0.9", "198.51.100.1", id="client-then-trusted-proxy"
        ),
        pytest.param(
            "10.0.0.2",
            "6.6.6.6, 198.51.100.1, 192.168.1.1",
            "198.51.100.1",
            id="spoofed-leftmost-ignored",
        ),
        pytest.param(
            "10.0.0.2", " 198.51.100.1 ,, 10.0.0.9 ", "198.51.100.1", id="spaces-and-empty-hops"
        ),
        pytest.param("10.0.0.2", "not-an-ip", "10.0.0.2", id="garbage-hop"),
        pytest.param("10.0.0.2", "198.51.100.1, junk", "10.0.0.2", id="garbage-nearest-hop"),
        pytest.param("10.0.0.2", "10.0.0.8, 10.0.0.9", "10.0.0.2", id="all-hops-trusted"),
        pytest.param("192.168.1.2", "198.51.100.1", "192.168.1.2", id="single-host-cidr"),
        pytest.param("fd00::1", "2001:DB8::0001", "2001:db8::1", id="ipv6-normalized"),
        pytest.param("fd00::1", "2001:db8::1, fd00::2", "2001:db8::1", id="ipv6-chain"),
        pytest.param("2001:db8::5", "198.51.100.1", "2001:db8::5", id="ipv6-untrusted-peer"),
        pytest.param("10.0.0.2", "2001:db8::7", "2001:db8::7", id="ipv6-client-ipv4-proxy"),
        pytest.param("not-an-ip", "198.51.100.1", "not-an-ip", id="garbage-peer"),
    ],
)
def test_client_ip(peer: str, forwarded_for: str, expected: str) -> None:
    assert client_ip(peer, forwarded_for, TRUSTED) == expected


def test_client_ip_no_trusted_proxies() -> None:
    assert client_ip("10.0.0.2", "198.51.100.1", ()) == "10.0.0.2"


def test_parse_networks_non_strict() -> None:
    (net,) = parse_networks(["10.1.2.3/8"])
    assert str(net) == "10.0.0.0/8"
