"""Stream entries as Rivulet writes them, and what a stage made of a batch: pure codecs, no I/O.

Raw entries (gateway -> normalizer) carry `tenant kind id received_at body ip ua`; clean entries
(normalizer -> writer) `tenant kind id received_at body`; dead letters add `reason stage
attempts` (CONTRACT.md, "Streams"). Fields arrive as bytes from redis-py. An entry that is not
what Rivulet writes (hand-made, corrupted) raises `MalformedEntry`, and its stage dead-letters it
with whatever bytes it had (`salvage_dead_letter`), so nothing read is dropped unseen.

Compiled with mypyc when a compiler is present (pyproject's `[tool.rivulet] compiled`): every
event read by a normalizer or a writer passes through here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Literal

import msgspec

from shared.schemas import CleanEntry, DeadLetter, Kind, RawEntry

EntryId = bytes
Fields = dict[bytes, bytes]
# An entry's fields as Redis returns them: name, value, name, value, ...
FieldList = list[bytes]

# The order in which Rivulet's scripts write the fields of raw and clean entries (streams.py).
_RAW_NAMES: Final = [b"tenant", b"kind", b"id", b"received_at", b"body", b"ip", b"ua"]
_CLEAN_NAMES: Final = [b"tenant", b"kind", b"id", b"received_at", b"body"]


class Delivery(msgspec.Struct, frozen=True):
    """One entry as a consumer group handed it over, and Redis's delivery counter.

    The fields stay the list Redis returned: a dict per entry cost ~0.6 us of a ~2 us read, and
    the hot paths (`decode_raw_fields`, `decode_clean_fields`) read Rivulet's own entries by
    position. `fields` builds the dict, for everything else."""

    id: EntryId
    flat: FieldList
    deliveries: int = 1

    @property
    def fields(self) -> Fields:
        return fields_of(self.flat)


def delivery_of(entry_id: EntryId, fields: Fields, deliveries: int = 1) -> Delivery:
    return Delivery(entry_id, [item for pair in fields.items() for item in pair], deliveries)


def entries_bytes(deliveries: Sequence[Delivery]) -> int:
    """The bytes of the entries' field names and values: what holding them costs a worker."""
    total = 0
    for delivery in deliveries:
        for item in delivery.flat:
            total += len(item)
    return total


def fields_of(flat: FieldList) -> Fields:
    fields: Fields = {}
    for i in range(0, len(flat) - 1, 2):
        fields[flat[i]] = flat[i + 1]
    return fields


def _laid_out(flat: FieldList, names: list[bytes]) -> bool:
    """The names at their positions, compared in place: compiled, cheaper than building
    `flat[::2]` to compare it."""
    return len(flat) == 2 * len(names) and all(
        flat[2 * position] == name for position, name in enumerate(names)
    )


class StageCommit(msgspec.Struct, frozen=True):
    """What one batch of one stage produced; applied atomically by `commit()`."""

    acked: Sequence[EntryId]
    outputs: Sequence[CleanEntry] = ()
    dead_letters: Sequence[DeadLetter] = ()


class MalformedEntry(ValueError):
    """A stream entry whose fields are not what Rivulet writes (hand-made or corrupted)."""


def _text(fields: Fields, name: bytes) -> str:
    return fields.get(name, b"").decode("utf-8", "replace")


def _nanos(fields: Fields) -> int:
    return _received_at.parse(fields.get(b"received_at", b"0"))


class _LastNanos:
    """The last `received_at` parsed, and its value."""

    def __init__(self) -> None:
        self.parsed: tuple[bytes, int] = (b"", 0)

    def parse(self, value: bytes) -> int:
        raw = value or b"0"
        last_raw, last_value = self.parsed
        if raw == last_raw:
            return last_value
        if not raw.isdigit() or len(raw) > 20:
            raise MalformedEntry(f"received_at is not integer nanoseconds: {raw[:40]!r}")
        nanos = int(raw)
        self.parsed = (raw, nanos)  # one tuple: the pair is replaced at once
        return nanos


# Every event of one gateway request has the same `received_at` (and tenant, kind, ip, ua), and
# a read holds whole requests: comparing the bytes with the last ones is far cheaper than `int()`
# or decoding them again (docs/performance.md).
_received_at: Final = _LastNanos()


def _tenant(fields: Fields) -> str:
    tenant = _text(fields, b"tenant")
    if not tenant:
        raise MalformedEntry("no tenant")
    return tenant


def decode_raw(fields: Fields) -> RawEntry:
    """Raises MalformedEntry when the fields cannot be trusted."""
    kind = _text(fields, b"kind")
    return RawEntry(
        tenant=_tenant(fields),
        kind=kind,  # type: ignore[arg-type]  # checked by the consumer of this kind's stream
        id=_text(fields, b"id"),
        received_at=_nanos(fields),
        body=fields.get(b"body", b""),
        ip=_text(fields, b"ip"),
        ua=_text(fields, b"ua"),
    )


def decode_clean(fields: Fields) -> tuple[int, bytes]:
    """(received_at, body) of a clean entry: all a writer reads from the fields, since the body
    carries the tenant and id the normalizer wrote. Raises MalformedEntry."""
    return _nanos(fields), fields.get(b"body", b"")


def _utf8(value: bytes) -> str:
    """`value.decode("utf-8", "replace")`; the strict decode is faster, and almost always right."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("utf-8", "replace")


class _LastText:
    """The last bytes of one raw field decoded, and their text."""

    def __init__(self) -> None:
        self.decoded: tuple[bytes, str] = (b"", "")

    def decode(self, value: bytes) -> str:
        last_raw, last_text = self.decoded
        if value == last_raw:
            return last_text
        text = _utf8(value)
        self.decoded = (value, text)
        return text


_tenant_text: Final = _LastText()
_kind_text: Final = _LastText()
_ip_text: Final = _LastText()
_ua_text: Final = _LastText()


def decode_raw_fields(flat: FieldList) -> RawEntry:
    """`decode_raw` of a delivery's field list; by position when the gateway wrote it."""
    if not _laid_out(flat, _RAW_NAMES):
        return decode_raw(fields_of(flat))
    tenant = _tenant_text.decode(flat[1])
    if not tenant:
        raise MalformedEntry("no tenant")
    return RawEntry(
        tenant,
        _kind_text.decode(flat[3]),  # type: ignore[arg-type]  # the kind, checked as in decode_raw
        _utf8(flat[5]),
        _received_at.parse(flat[7]),
        flat[9],
        _ip_text.decode(flat[11]),
        _ua_text.decode(flat[13]),
    )


def decode_clean_fields(flat: FieldList) -> tuple[int, bytes]:
    """`decode_clean` of a delivery's field list; by position when the normalizer wrote it. Only
    the two names read are checked: a repeated name elsewhere would lose to these, the last
    ones, in a dict too."""
    if len(flat) != 2 * len(_CLEAN_NAMES) or flat[6] != b"received_at" or flat[8] != b"body":
        return decode_clean(fields_of(flat))
    return _received_at.parse(flat[7]), flat[9]


def salvage_dead_letter(
    fields: Fields, kind: Kind, stage: Literal["normalizer", "writer"], reason: str, attempts: int
) -> DeadLetter:
    """A dead letter for an entry that did not decode: keep whatever bytes it had."""
    try:
        received_at = _nanos(fields)
    except MalformedEntry:
        received_at = 0
    return DeadLetter(
        tenant=_text(fields, b"tenant"),
        kind=kind,
        id=_text(fields, b"id"),
        received_at=received_at,
        body=fields.get(b"body", b""),
        reason=reason,
        stage=stage,
        attempts=attempts,
        ip=_text(fields, b"ip"),
        ua=_text(fields, b"ua"),
    )


def decode_dead_letter(fields: Fields) -> DeadLetter:
    return DeadLetter(
        tenant=_text(fields, b"tenant"),
        kind=_text(fields, b"kind"),  # type: ignore[arg-type]
        id=_text(fields, b"id"),
        received_at=int(fields.get(b"received_at", b"0") or 0),
        body=fields.get(b"body", b""),
        reason=_text(fields, b"reason"),
        stage=_text(fields, b"stage"),  # type: ignore[arg-type]
        attempts=int(fields.get(b"attempts", b"1") or 1),
        ip=_text(fields, b"ip"),
        ua=_text(fields, b"ua"),
    )


def entry_as_json(entry_id: bytes, fields: Fields) -> bytes:
    """One stream entry as one JSON object (for `rivulet tail` and `rivulet dlq list`)."""
    out: dict[str, str] = {"stream_id": entry_id.decode()}
    for key, value in fields.items():
        out[key.decode()] = value.decode("utf-8", "replace")
    return msgspec.json.encode(out)


def deliveries_from_read(reply: Any) -> list[Delivery]:
    """An XREADGROUP reply as hiredis parsed it, without redis-py's callback: RESP3's map
    `{stream: [[id, [field, value, ...]], ...]}` or RESP2's `[[stream, [...]], ...]`. A deleted
    entry still pending has no fields (nil): it becomes a delivery with empty fields."""
    if not reply:
        return []
    streams: list[Any] = list(reply.values()) if isinstance(reply, dict) else [s[1] for s in reply]
    out: list[Delivery] = []
    for entries in streams:
        for entry in entries:
            out.append(Delivery(entry[0], entry[1] or []))
    return out
