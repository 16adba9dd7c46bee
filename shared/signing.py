"""HMAC-SHA256 request signing (CONTRACT.md, "Signing").

    hex = HMAC_SHA256(secret, f"{timestamp}.{METHOD}.{path_with_query}.{sha256_hex(body)}")

The body is hashed exactly as sent (compressed bytes when gzipped), so a gateway verifies before
it decompresses or parses anything.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Final

KEY_HEADER: Final = "x-rivulet-key"
TIMESTAMP_HEADER: Final = "x-rivulet-timestamp"
SIGNATURE_HEADER: Final = "x-rivulet-signature"


def string_to_sign(timestamp: str, method: str, path_with_query: str, body: bytes) -> bytes:
    return _message(timestamp, method, path_with_query, hashlib.sha256(body).hexdigest())


def _message(timestamp: str, method: str, path_with_query: str, body_sha256_hex: str) -> bytes:
    return f"{timestamp}.{method.upper()}.{path_with_query}.{body_sha256_hex}".encode()


def sign(secret: str, timestamp: str, method: str, path_with_query: str, body: bytes) -> str:
    digest = hashlib.sha256(body).hexdigest()
    return sign_digest(secret, timestamp, method, path_with_query, digest)


def sign_digest(
    secret: str, timestamp: str, method: str, path_with_query: str, body_sha256_hex: str
) -> str:
    """`sign` for a sender that hashed its body once and signs each attempt anew."""
    message = _message(timestamp, method, path_with_query, body_sha256_hex)
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_matches(
    secret: str, timestamp: str, method: str, path_with_query: str, body: bytes, signature: str
) -> bool:
    """Constant-time comparison; a malformed signature simply does not match."""
    expected = sign(secret, timestamp, method, path_with_query, body)
    return hmac.compare_digest(
        expected.encode(), signature.strip().lower().encode("ascii", "replace")
    )


def signed_headers(
    key_id: str,
    secret: str,
    method: str,
    path_with_query: str,
    body: bytes,
    now: float | None = None,
) -> dict[str, str]:
    timestamp = str(int(time.time() if now is None else now))
    return {
        "X-Rivulet-Key": key_id,
        "X-Rivulet-Timestamp": timestamp,
        "X-Rivulet-Signature": sign(secret, timestamp, method, path_with_query, body),
    }
