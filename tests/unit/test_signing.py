"""Unit tests for shared.signing (HMAC-SHA256 request signing, CONTRACT.md "Signing")."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from shared.signing import (
    KEY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
    sign_digest,
    signature_matches,
    signed_headers,
    string_to_sign,
)

SECRET = "s3cret"
TIMESTAMP = "1700000000"
METHOD = "POST"
PATH = "/v1/ingest/logs?x=1"
BODY = b'{"events":[]}'
# Computed outside the module (plain hmac/hashlib in a shell), pinned so a change is noticed.
BODY_SHA256 = "24de1c4a19c43ad41b013f13dcd858c17b0daa7f33a53f19913e5b11366d1c2e"
KNOWN_SIGNATURE = "72da6a87630006a8219c81ede19404a69ab1bbf7156c281a3324f526229a24a5"


def reference_signature(
    secret: str, timestamp: str, method: str, path_with_query: str, body: bytes
) -> str:
    """The contract's formula, written out independently of the module."""
    message = f"{timestamp}.{method}.{path_with_query}.{hashlib.sha256(body).hexdigest()}"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


# --- string_to_sign ------------------------------------------------------------------------------


def test_string_to_sign_exact_format() -> None:
    expected = f"{TIMESTAMP}.POST.{PATH}.{BODY_SHA256}".encode()
    assert string_to_sign(TIMESTAMP, METHOD, PATH, BODY) == expected


def test_string_to_sign_upper_cases_method() -> None:
    assert string_to_sign(TIMESTAMP, "post", PATH, BODY) == string_to_sign(
        TIMESTAMP, "POST", PATH, BODY
    )


def test_string_to_sign_hashes_empty_body() -> None:
    empty_sha = hashlib.sha256(b"").hexdigest()
    assert string_to_sign("1", "GET", "/", b"") == f"1.GET./.{empty_sha}".encode()


def test_string_to_sign_hashes_body_bytes_as_sent() -> None:
    # gzip bytes are signed as they are, not their decompressed content
    gz = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    assert string_to_sign(TIMESTAMP, METHOD, PATH, gz).endswith(
        hashlib.sha256(gz).hexdigest().encode()
    )


# --- sign ----------------------------------------------------------------------------------------


def test_known_answer_vector() -> None:
    assert sign(SECRET, TIMESTAMP, METHOD, PATH, BODY) == KNOWN_SIGNATURE
    assert reference_signature(SECRET, TIMESTAMP, METHOD, PATH, BODY) == KNOWN_SIGNATURE


def test_signing_a_precomputed_digest_gives_the_same_signature() -> None:
    assert sign_digest(SECRET, TIMESTAMP, "post", PATH, BODY_SHA256) == KNOWN_SIGNATURE


@pytest.mark.parametrize(
    ("secret", "timestamp", "method", "path", "body"),
    [
        ("k", "0", "POST", "/v1/ingest/metrics", b""),
        ("ünïcödé-secret", "1712345678", "POST", "/v1/ingest/rum?a=1&b=%20", b"\x00\xff" * 50),
        ("s", "1700000000", "GET", "/v1/ingest/profiles?service=api&type=cpu", b"x" * 10_000),
    ],
)
def test_sign_matches_reference(
    secret: str, timestamp: str, method: str, path: str, body: bytes
) -> None:
    signature = sign(secret, timestamp, method, path, body)
    assert signature == reference_signature(secret, timestamp, method, path, body)
    assert len(signature) == 64
    assert signature == signature.lower()


# --- signature_matches ---------------------------------------------------------------------------


def test_signature_matches_accepts_exact_signature() -> None:
    assert signature_matches(SECRET, TIMESTAMP, METHOD, PATH, BODY, KNOWN_SIGNATURE)


def test_signature_matches_accepts_upper_case_hex() -> None:
    assert signature_matches(SECRET, TIMESTAMP, METHOD, PATH, BODY, KNOWN_SIGNATURE.upper())


def test_signature_matches_ignores_surrounding_whitespace() -> None:
    assert signature_matches(SECRET, TIMESTAMP, METHOD, PATH, BODY, f" {KNOWN_SIGNATURE}\n")


@pytest.mark.parametrize(
    ("secret", "timestamp", "method", "path", "body"),
    [
        pytest.param(SECRET, TIMESTAMP, METHOD, PATH, BODY + b" ", id="body"),
        pytest.param(SECRET, TIMESTAMP, METHOD, "/v1/ingest/spans?x=1", BODY, id="path"),
        pytest.param(SECRET, TIMESTAMP, METHOD, "/v1/ingest/logs?x=2", BODY, id="query"),
        pytest.param(SECRET, TIMESTAMP, METHOD, "/v1/ingest/logs", BODY, id="query-dropped"),
        pytest.param(SECRET, "1700000001", METHOD, PATH, BODY, id="timestamp"),
        pytest.param(SECRET, TIMESTAMP, "PUT", PATH, BODY, id="method"),
        pytest.param("other", TIMESTAMP, METHOD, PATH, BODY, id="secret"),
    ],
)
def test_signature_matches_rejects_tampering(
    secret: str, timestamp: str, method: str, path: str, body: bytes
) -> None:
    assert not signature_matches(secret, timestamp, method, path, body, KNOWN_SIGNATURE)


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("z" * 64, id="non-hex"),
        pytest.param(KNOWN_SIGNATURE[:-1], id="truncated"),
        pytest.param(KNOWN_SIGNATURE + "0", id="too-long"),
        pytest.param("é" * 64, id="non-ascii"),
        pytest.param("\x00" * 64, id="nul"),
        pytest.param(KNOWN_SIGNATURE[:-1] + "é", id="almost-right-non-ascii"),
    ],
)
def test_signature_matches_rejects_malformed_without_raising(signature: str) -> None:
    assert signature_matches(SECRET, TIMESTAMP, METHOD, PATH, BODY, signature) is False


# --- signed_headers ------------------------------------------------------------------------------


def test_signed_headers_names_and_values() -> None:
    headers = signed_headers("key-1", SECRET, METHOD, PATH, BODY, now=1700000000.9)
    assert set(headers) == {"X-Rivulet-Key", "X-Rivulet-Timestamp", "X-Rivulet-Signature"}
    assert headers["X-Rivulet-Key"] == "key-1"
    assert headers["X-Rivulet-Timestamp"] == TIMESTAMP  # whole seconds, truncated
    assert headers["X-Rivulet-Signature"] == KNOWN_SIGNATURE


def test_signed_headers_lower_case_constants_match_header_names() -> None:
    headers = signed_headers("k", SECRET, METHOD, PATH, BODY, now=0)
    assert {name.lower() for name in headers} == {KEY_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER}


def test_signed_headers_verify_round_trip() -> None:
    headers = signed_headers("k", SECRET, "post", PATH, BODY)
    timestamp = headers["X-Rivulet-Timestamp"]
    assert timestamp.isdigit()
    assert signature_matches(SECRET, timestamp, "POST", PATH, BODY, headers["X-Rivulet-Signature"])
