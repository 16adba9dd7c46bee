"""`rivulet send`: the reference agent. Reads JSON/NDJSON events, batches, signs, retries.

Every attempt is signed anew (a replayed signature is refused with 409), and every batch carries
one Idempotency-Key for all its attempts, so a retry after a lost answer appends nothing twice.
"""

from __future__ import annotations

import gzip
import time
import uuid
from collections.abc import Iterator
from typing import Any, Final

import httpx
import msgspec

from shared.retry import Backoff
from shared.signing import signed_headers

RETRY_STATUSES: Final = frozenset({429, 502, 503, 504})
_decoder: Final = msgspec.json.Decoder()
_encoder: Final = msgspec.json.Encoder()


def read_events(data: bytes) -> list[bytes]:
    """A JSON array, a `{"events": [...]}` object, a single JSON object, or NDJSON lines."""
    stripped = data.strip()
    if not stripped:
        return []
    try:
        document: Any = _decoder.decode(stripped)
    except msgspec.DecodeError:
        return [line for line in (ln.strip() for ln in stripped.split(b"\n")) if line]
    if isinstance(document, dict) and isinstance(document.get("events"), list):
        document = document["events"]
    if isinstance(document, list):
        return [_encoder.encode(event) for event in document]
    return [stripped]


def batches(events: list[bytes], size: int) -> Iterator[list[bytes]]:
    for start in range(0, len(events), size):
        yield events[start : start + size]


def send_batch(
    client: httpx.Client,
    url: str,
    kind: str,
    key_id: str,
    secret: str,
    events: list[bytes],
    *,
    compress: bool = False,
    attempts: int = 6,
) -> httpx.Response:
    path = f"/v1/ingest/{kind}"
    body = b"\n".join(events) + b"\n"
    headers = {"Content-Type": "application/x-ndjson", "Idempotency-Key": str(uuid.uuid4())}
    if compress:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    backoff = Backoff(0.5, 10.0)
    for attempt in range(1, attempts + 1):
        signed = {**headers, **signed_headers(key_id, secret, "POST", path, body)}
        try:
            response = client.post(url.rstrip("/") + path, content=body, headers=signed)
        except httpx.TransportError:
            if attempt == attempts:
                raise
            time.sleep(backoff.next())
            continue
        if response.status_code == 409 and attempt < attempts:
            # Same body in the same second as an earlier accepted request: the signature repeats.
            time.sleep(1.0 - time.time() % 1.0)
            continue
        if response.status_code not in RETRY_STATUSES or attempt == attempts:
            return response
        retry_after = response.headers.get("retry-after", "")
        time.sleep(float(retry_after) if retry_after.isdigit() else backoff.next())
    raise AssertionError("unreachable")
