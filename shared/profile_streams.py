"""Stream entries and atomic hand-offs for pprof profiles (`rivulet:{profiles}:...`).

Input/output: the gateway appends one raw entry per accepted profile; the profiler turns it into
one clean entry (or one dead letter) and acknowledges it. Profiles are large and binary, so their
entries carry more plain fields than events and keep the protobuf out of JSON:

    raw    tenant kind id received_at service type size labels(JSON) body(pprof bytes) ip ua
    clean  tenant kind id received_at service type ts sample_types samples stacks size
           body(msgpack CleanProfile: the row, its functions, stacks and per-stack values)
    dlq    the raw fields + reason stage attempts

Guarantee (same as `shared.streams`, whose scripts these mirror): each hand-off is ONE Lua script
on keys sharing the `{profiles}` hash tag. `PROFILE_APPEND` appends a profile together with the
replay guard, idempotency answer and rate debit, or nothing; `FIELDS_COMMIT` adds the clean entries
whose (tenant, id) was not seen within the dedupe window, the dead letters, and XACKs the input,
all at once, so a crash before it changes nothing and a crash after it loses nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import msgspec
import redis.asyncio as aioredis

from shared.entries import EntryId, Fields, MalformedEntry
from shared.schemas import PROFILES, CleanProfile, DeadLetter, RawProfileEntry
from shared.streams import Keys

FieldValue = bytes | str | int
FieldList = tuple[tuple[str, FieldValue], ...]

# KEYS: raw stream, rate bucket, idempotency key (the rate key when unused), signature key,
#       seen key of the profile
# ARGV: high watermark, rate/s, burst, idempotency ttl (0 = none), body hash, signature ttl,
#       profile id, field count n, then n field/value pairs of the raw entry
# Returns {"idem", stored} | {"replay", "1"} | {"backlog", "1"} | {"rate", retry_after_s}
#       | {"toolarge", burst} | {"ok", answer JSON}. As for events, the signature is spent only
#       by an accepted request, and a profile already seen is answered as a duplicate.
PROFILE_APPEND: Final = """
local raw = KEYS[1]
local idem_ttl = tonumber(ARGV[4])
if idem_ttl > 0 then
  local prev = redis.call('GET', KEYS[3])
  if prev then return {'idem', prev} end
end
if redis.call('EXISTS', KEYS[4]) == 1 then return {'replay', '1'} end
local need = 1
if redis.call('EXISTS', KEYS[5]) == 1 then need = 0 end
if need > 0 and redis.call('XLEN', raw) >= tonumber(ARGV[1]) then return {'backlog', '1'} end
local rate, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local bucket = redis.call('HMGET', KEYS[2], 'tokens', 'ts')
local tokens = tonumber(bucket[1]) or burst
local last = tonumber(bucket[2]) or t
tokens = math.min(burst, tokens + math.max(0, t - last) * rate)
if need > burst then return {'toolarge', tostring(burst)} end
if need > tokens then
  return {'rate', tostring(math.max(1, math.ceil((need - tokens) / rate)))}
end
if need > 0 then
  redis.call('HSET', KEYS[2], 'tokens', tostring(tokens - need), 'ts', tostring(t))
  redis.call('EXPIRE', KEYS[2], math.ceil(burst / rate) + 60)
  local f = {}
  for j = 9, 8 + 2 * tonumber(ARGV[8]) do f[#f + 1] = ARGV[j] end
  redis.call('XADD', raw, '*', unpack(f))
end
redis.call('SET', KEYS[4], '1', 'EX', ARGV[6])
local answer = '{"accepted":' .. need .. ',"duplicates":' .. (1 - need)
  .. ',"rejected":[],"id":"' .. ARGV[7] .. '"}'
if idem_ttl > 0 then redis.call('SET', KEYS[3], ARGV[5] .. '\\n' .. answer, 'EX', idem_ttl) end
return {'ok', answer}
"""

# KEYS: input stream, output stream, dlq stream, then one seen key per output entry
# ARGV: group, dedupe ttl, dlq maxlen, n_out, n_dlq, then per output and per dead letter a field
#       count n followed by n field/value pairs, then the input ids to acknowledge.
# Returns {added, duplicates}
FIELDS_COMMIT: Final = """
local group, ttl, dlq_maxlen = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local n_out, n_dlq = tonumber(ARGV[4]), tonumber(ARGV[5])
local o = 6
local added, dups = 0, 0
for i = 1, n_out do
  local n = tonumber(ARGV[o])
  if redis.call('SET', KEYS[3 + i], '1', 'NX', 'EX', ttl) then
    local f = {}
    for j = o + 1, o + 2 * n do f[#f + 1] = ARGV[j] end
    redis.call('XADD', KEYS[2], '*', unpack(f))
    added = added + 1
  else
    dups = dups + 1
  end
  o = o + 1 + 2 * n
end
for i = 1, n_dlq do
  local n = tonumber(ARGV[o])
  local f = {}
  for j = o + 1, o + 2 * n do f[#f + 1] = ARGV[j] end
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', dlq_maxlen, '*', unpack(f))
  o = o + 1 + 2 * n
end
local ids = {}
for i = o, #ARGV do
  ids[#ids + 1] = ARGV[i]
  if #ids == 500 then
    redis.call('XACK', KEYS[1], group, unpack(ids))
    ids = {}
  end
end
if #ids > 0 then redis.call('XACK', KEYS[1], group, unpack(ids)) end
return {added, dups}
"""

PROFILER_GROUP: Final = "profilers"
MAX_REASON: Final = 2000

_labels_encoder: Final = msgspec.json.Encoder(order="sorted")
_labels_decoder: Final = msgspec.json.Decoder(dict[str, str])
_profile_encoder: Final = msgspec.msgpack.Encoder()
_profile_decoder: Final = msgspec.msgpack.Decoder(CleanProfile)


class OutputEntry(msgspec.Struct, frozen=True):
    """One entry to append to the output stream unless (tenant, id) was seen in the window."""

    tenant: str
    id: str
    fields: FieldList


class FieldsCommit(msgspec.Struct, frozen=True):
    """What one batch of the profiler produced; applied atomically by `commit()`."""

    acked: Sequence[EntryId]
    outputs: Sequence[OutputEntry] = ()
    dead_letters: Sequence[FieldList] = ()


# --- codecs -------------------------------------------------------------------------------------


def _text(fields: Fields, name: bytes) -> str:
    return fields.get(name, b"").decode("utf-8", "replace")


def _integer(fields: Fields, name: bytes) -> int:
    raw = fields.get(name, b"0") or b"0"
    if not raw.isdigit() or len(raw) > 20:
        raise MalformedEntry(f"{name.decode()} is not a non-negative integer: {raw[:40]!r}")
    return int(raw)


def raw_profile_fields(entry: RawProfileEntry) -> FieldList:
    return (
        ("tenant", entry.tenant),
        ("kind", PROFILES),
        ("id", entry.id),
        ("received_at", entry.received_at),
        ("service", entry.service),
        ("type", entry.type),
        ("size", entry.size or len(entry.body)),
        ("labels", _labels_encoder.encode(entry.labels)),
        ("body", entry.body),
        ("ip", entry.ip),
        ("ua", entry.ua),
    )


def decode_raw_profile(fields: Fields) -> RawProfileEntry:
    """Raises MalformedEntry when the fields cannot be trusted."""
    tenant = _text(fields, b"tenant")
    if not tenant:
        raise MalformedEntry("no tenant")
    profile_id = _text(fields, b"id")
    if not profile_id:
        raise MalformedEntry("no id")
    try:
        labels = _labels_decoder.decode(fields.get(b"labels") or b"{}")
    except msgspec.DecodeError as exc:
        raise MalformedEntry(f"labels are not a JSON object of strings: {exc}") from None
    return RawProfileEntry(
        tenant=tenant,
        id=profile_id,
        received_at=_integer(fields, b"received_at"),
        service=_text(fields, b"service"),
        type=_text(fields, b"type"),
        body=fields.get(b"body", b""),
        labels=labels,
        size=_integer(fields, b"size"),
        ip=_text(fields, b"ip"),
        ua=_text(fields, b"ua"),
    )


def encode_clean_profile(profile: CleanProfile) -> bytes:
    return _profile_encoder.encode(profile)


def clean_profile_entry(profile: CleanProfile) -> OutputEntry:
    """The clean entry: `body` is self-contained (a replayed dead letter needs nothing else);
    the other fields are for people reading the stream."""
    type_units = zip(profile.sample_types, profile.sample_units, strict=False)
    fields: FieldList = (
        ("tenant", profile.tenant),
        ("kind", PROFILES),
        ("id", profile.id),
        ("received_at", profile.received_at),
        ("service", profile.service),
        ("type", profile.type),
        ("ts", profile.ts),
        ("sample_types", ",".join(f"{t}/{u}" for t, u in type_units)),
        ("samples", profile.samples),
        ("stacks", len(profile.stacks)),
        ("size", profile.size),
        ("body", encode_clean_profile(profile)),
    )
    return OutputEntry(tenant=profile.tenant, id=profile.id, fields=fields)


def decode_clean_profile(fields: Fields) -> CleanProfile:
    """Raises MalformedEntry or msgspec.DecodeError/ValidationError on a foreign entry."""
    body = fields.get(b"body")
    if not body:
        raise MalformedEntry("no body")
    profile = _profile_decoder.decode(body)
    if not profile.tenant or not profile.id:
        raise MalformedEntry("profile without tenant or id")
    if len(profile.values) != len(profile.stacks):
        raise MalformedEntry("values and stacks differ in length")
    return profile


def profile_dead_letter_fields(
    letter: DeadLetter, *, service: str = "", type_: str = "", labels: bytes = b"{}"
) -> FieldList:
    """A dead letter with the profile's plain fields, so `rivulet dlq replay` can re-drive it."""
    return (
        ("tenant", letter.tenant),
        ("kind", PROFILES),
        ("id", letter.id),
        ("received_at", letter.received_at),
        ("body", letter.body),
        ("reason", letter.reason[:MAX_REASON]),
        ("stage", letter.stage),
        ("attempts", letter.attempts),
        ("ip", letter.ip),
        ("ua", letter.ua),
        ("service", service),
        ("type", type_),
        ("size", len(letter.body)),
        ("labels", labels),
    )


# --- scripts ------------------------------------------------------------------------------------


class ProfileStreams:
    """The profile scripts bound to one Redis client and namespace."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._append = redis.register_script(PROFILE_APPEND)
        self._commit = redis.register_script(FIELDS_COMMIT)

    async def append(
        self,
        entry: RawProfileEntry,
        *,
        signature: str,
        signature_ttl_s: int,
        high_watermark: int,
        rate_per_s: float,
        burst: float,
        idempotency_key: str | None,
        idempotency_ttl_s: int,
        body_hash: str,
    ) -> tuple[str, bytes]:
        keys = [
            self.keys.stream(PROFILES, "raw"),
            self.keys.rate(PROFILES, entry.tenant),
            (
                self.keys.idempotency(PROFILES, entry.tenant, idempotency_key)
                if idempotency_key
                else self.keys.rate(PROFILES, entry.tenant)
            ),
            self.keys.signature(PROFILES, signature),
            self.keys.seen(PROFILES, entry.tenant, entry.id),
        ]
        fields = raw_profile_fields(entry)
        args: list[FieldValue | float] = [
            high_watermark,
            rate_per_s,
            burst,
            idempotency_ttl_s if idempotency_key else 0,
            body_hash,
            signature_ttl_s,
            entry.id,
            len(fields),
        ]
        for name, value in fields:
            args.extend((name, value))
        status, value = await self._append(keys=keys, args=args)
        return status.decode(), value

    async def commit(
        self, group: str, batch: FieldsCommit, dedupe_ttl_s: int, dlq_maxlen: int
    ) -> tuple[int, int]:
        """Atomically: add clean entries (skipping ids seen within the window), dead letters,
        and XACK the raw entries."""
        keys = [
            self.keys.stream(PROFILES, "raw"),
            self.keys.stream(PROFILES, "clean"),
            self.keys.stream(PROFILES, "dlq"),
        ]
        keys.extend(self.keys.seen(PROFILES, out.tenant, out.id) for out in batch.outputs)
        args: list[FieldValue] = [
            group,
            dedupe_ttl_s,
            dlq_maxlen,
            len(batch.outputs),
            len(batch.dead_letters),
        ]
        for fields in [out.fields for out in batch.outputs] + list(batch.dead_letters):
            args.append(len(fields))
            for name, value in fields:
                args.extend((name, value))
        args.extend(batch.acked)
        added, dups = await self._commit(keys=keys, args=args)
        return int(added), int(dups)
