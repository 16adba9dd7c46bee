"""Redis Streams layout and the atomic hand-offs between stages.

Key layout (CONTRACT.md, "Streams"): every key of one kind shares the hash tag `{KIND}`, so one Lua
script may touch the streams, dedupe, idempotency, replay and rate keys of that kind together:

    <ns>:{KIND}:raw | clean | dlq           streams, one entry per event, plain UTF-8 fields
    <ns>:{KIND}:dedupe:<tenant>             dedupe markers: sorted set of event ids, each scored by
                                            the millisecond its window ends (normalizer)
    <ns>:{KIND}:dedupe-tenants              the tenants with such a sorted set, each scored by
                                            the earliest end of a window in it (for purging)
    <ns>:{KIND}:seen:<tenant>:<event id>    one key per marker (TTL = window): profiles' markers,
                                            and events' in the older layout (honoured until
                                            `seen-until`)
    <ns>:{KIND}:seen-until                  ms until which older markers may exist (0: none);
                                            until then the commit writes them too
    <ns>:{KIND}:idem:<tenant>:<sha256>      first 202 answer for an Idempotency-Key
    <ns>:{KIND}:sig:<signature>             replay guard for a signature (TTL > signing window)
    <ns>:{KIND}:rate:<tenant>               token bucket

Each stage hands off in ONE script: the gateway's append is all-or-nothing; the normalizer's
commit adds clean entries (skipping ids already seen), dead letters and XACKs its input in one
step, so a crash before the script changes nothing and a crash after it loses nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Final, Literal, cast

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool
from redis.exceptions import NoScriptError, ResponseError

from shared.entries import EntryId, Fields, StageCommit
from shared.resp import CommandArg, pack_command
from shared.schemas import DeadLetter, Kind

Stage = Literal["raw", "clean", "dlq"]

MAX_POOL_CONNECTIONS: Final = 64


def connect(url: str) -> aioredis.Redis:
    """A bounded pool; callers wait for a free connection instead of opening more."""
    pool = BlockingConnectionPool.from_url(
        url, max_connections=MAX_POOL_CONNECTIONS, timeout=10, health_check_interval=15
    )
    return aioredis.Redis(connection_pool=pool)


class Keys:
    """Every Redis key name Rivulet uses, under one namespace (default `rivulet`)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    def stream(self, kind: str, stage: Stage) -> str:
        return f"{self.namespace}:{{{kind}}}:{stage}"

    def dedupe(self, kind: str, tenant: str) -> str:
        return f"{self.dedupe_prefix(kind)}{tenant}"

    def dedupe_prefix(self, kind: str) -> str:
        return f"{self.namespace}:{{{kind}}}:dedupe:"

    def dedupe_tenants(self, kind: str) -> str:
        return f"{self.namespace}:{{{kind}}}:dedupe-tenants"

    def seen(self, kind: str, tenant: str, event_id: str) -> str:
        """One key per event: profiles' markers, and events' before the sorted sets."""
        return f"{self.seen_prefix(kind)}{tenant}:{event_id}"

    def seen_prefix(self, kind: str) -> str:
        return f"{self.namespace}:{{{kind}}}:seen:"

    def seen_until(self, kind: str) -> str:
        return f"{self.namespace}:{{{kind}}}:seen-until"

    def idempotency(self, kind: str, tenant: str, idempotency_key: str) -> str:
        digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
        return f"{self.namespace}:{{{kind}}}:idem:{tenant}:{digest}"

    def signature(self, kind: str, signature: str) -> str:
        return f"{self.namespace}:{{{kind}}}:sig:{signature}"

    def rate(self, kind: str, tenant: str) -> str:
        return f"{self.namespace}:{{{kind}}}:rate:{tenant}"

    @property
    def api_keys(self) -> str:
        return f"{self.namespace}:keys"

    def group(self, service: Literal["normalizer", "writer"]) -> str:
        return f"{service}s"


# --- typed reads (redis-py types stream replies loosely; entries here are always bytes) --------

Entry = tuple[EntryId, Fields]


def flatten_read(reply: Any) -> list[Entry]:
    """XREAD/XREADGROUP reply -> entries (a deleted-but-pending entry has empty fields)."""
    return [(i, f or {}) for _, entries in cast(list[Any], reply or []) for i, f in entries]


async def xrange(redis: aioredis.Redis, stream: str, *, count: int | None = None) -> list[Entry]:
    return cast(list[Entry], await redis.xrange(stream, count=count))


async def xrevrange(redis: aioredis.Redis, stream: str, *, count: int) -> list[Entry]:
    return cast(list[Entry], await redis.xrevrange(stream, count=count))


# --- Lua: dedupe markers --------------------------------------------------------------------------

# One sorted set per (kind, tenant): member = event id, score = the millisecond its window ends.
# A tenant's ids in a batch are checked with one ZMSCORE and marked with one ZADD, where one
# `SET NX` key per event cost a command each (and an entry in Redis's expiry table): in `up`,
# Redis's CPU per log event fell by ~2.5 us of ~19-22. An expired member counts as unseen, so the
# window is exact whenever the purge runs; the purge (`purge_dedupe`, from each normalizer's
# housekeeping loop) removes expired members in bounded steps, never a whole big key at once.
# Upgrading from the older layout (one key per event, `seen:<tenant>:<id>`): `PREPARE_DEDUPE`
# decides once whether such keys may exist, and if so sets `seen-until` a window plus
# UPGRADE_GRACE_MS after the first start of this layout. Until then the gateway and the commit
# also look the older keys up, and the commit also writes them, so that older replicas still
# running beside new ones (a rolling update) and a rollback within that time see what new ones
# marked. A missing `seen-until` is read as "they may exist".
NOW_MS: Final = """
local function now_ms()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end
"""

SEEN_POSITIONS: Final = (
    NOW_MS
    + """
-- {[i] = true} for each ids[i] seen within its window; `seen_until` is GET seen-until
local function seen_positions(set_key, seen_until, legacy_prefix, ids, now)
  local seen = {}
  for c = 1, #ids, 500 do
    local last = math.min(c + 499, #ids)
    local scores = redis.call('ZMSCORE', set_key, unpack(ids, c, last))
    for i = c, last do
      local score = scores[i - c + 1]
      if score and tonumber(score) > now then seen[i] = true end
    end
  end
  if not seen_until or tonumber(seen_until) > now then
    local keys, positions = {}, {}
    for i = 1, #ids do
      if not seen[i] then
        keys[#keys + 1] = legacy_prefix .. ids[i]
        positions[#positions + 1] = i
      end
    end
    for c = 1, #keys, 500 do
      local last = math.min(c + 499, #keys)
      if redis.call('EXISTS', unpack(keys, c, last)) > 0 then
        for j = c, last do
          if redis.call('EXISTS', keys[j]) == 1 then seen[positions[j]] = true end
        end
      end
    end
  end
  return seen
end
"""
)

# KEYS: seen-until key, raw stream. ARGV: normalizer group, window ms + grace ms.
# Run by each normalizer before it consumes a kind. The first run of this layout decides, for
# good, whether older markers may exist: they do if the normalizers' group already existed.
PREPARE_DEDUPE: Final = (
    NOW_MS
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('GET', KEYS[1]) end
local seen_until = 0
if redis.call('EXISTS', KEYS[2]) == 1 then
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[2])) do
    if group[2] == ARGV[1] then seen_until = now_ms() + tonumber(ARGV[2]) end
  end
end
redis.call('SET', KEYS[1], string.format('%d', seen_until))
return string.format('%d', seen_until)
"""
)

# KEYS: dedupe-tenants, the tenant's sorted set. ARGV: tenant, most members to remove.
# Returns how many expired members were removed; re-scores the tenant by its earliest window
# end left, or forgets it once its set is gone.
PURGE_DEDUPE: Final = (
    NOW_MS
    + """
local expired = redis.call('ZCOUNT', KEYS[2], '-inf', now_ms())
local removed = math.min(expired, tonumber(ARGV[2]))
if removed > 0 then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, removed - 1) end
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if first[2] then
  redis.call('ZADD', KEYS[1], first[2], ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return removed
"""
)

# At most this many members per purge call (~7 ms of Redis here): others are served in between.
PURGE_STEP: Final = 10_000
# Tenants looked at per purge pass; the rest wait for the next pass.
PURGE_TENANTS: Final = 1_000
# How long after the first start of the sorted sets older replicas may still write per-event keys.
UPGRADE_GRACE_MS: Final = 3_600_000

# --- Lua: gateway append ------------------------------------------------------------------------

# A batch's short per-event values travel as ONE MessagePack argument (strings only: Redis's
# cmsgpack has no `bin` type, and Lua numbers would round 19-digit nanoseconds), and each event's
# body as an argument of its own, the whole command framed by `shared.resp.pack_command`
# (`PackedScript`). Redis's Lua hashes every byte that becomes a Lua string (~1.4 ns a byte here):
# bodies inside the MessagePack argument, unpacked into strings again, cost each byte twice.
# Every argument costs the client too (redis-py's packer ~0.5 us, hiredis's ~0.46 us for a
# body, ours ~0.08), so the short values, five or so per event, stay in the one MessagePack
# argument.
# Older-layout marker keys are built in the script from a declared prefix; the `{KIND}` hash tag
# keeps them in the slot of the script's declared keys, as BullMQ and Sidekiq do for their
# per-job keys.
#
# KEYS: raw stream, rate bucket, idempotency key (any same-slot key when unused), signature key,
#       the tenant's dedupe set, seen-until key
# ARGV: high watermark, rate/s, burst, idempotency ttl (0 = none), body hash, rejected JSON,
#       tenant, kind, received_at, ip, ua, signature ttl, seen-key prefix (`...:seen:<tenant>:`),
#       MessagePack [id, ...], then each event's body
# Returns {"idem", stored} | {"replay", "1"} | {"backlog", "1"} | {"rate", retry_after_s}
#       | {"toolarge", burst} (a batch no bucket can ever hold: retrying cannot help)
#       | {"ok", answer JSON}. The signature is spent only by an accepted request, so a client
#       may resend the very same signed request after a 429/503.
GATEWAY_APPEND: Final = (
    SEEN_POSITIONS
    + """
local raw = KEYS[1]
local idem_ttl = tonumber(ARGV[4])
if idem_ttl > 0 then
  local prev = redis.call('GET', KEYS[3])
  if prev then return {'idem', prev} end
end
if redis.call('EXISTS', KEYS[4]) == 1 then return {'replay', '1'} end
if redis.call('XLEN', raw) >= tonumber(ARGV[1]) then return {'backlog', '1'} end
local ids = cmsgpack.unpack(ARGV[14])
local seen = seen_positions(KEYS[5], redis.call('GET', KEYS[6]), ARGV[13], ids, now_ms())
local fresh = {}
local dups = 0
local in_batch = {}
for i = 1, #ids do
  local id = ids[i]
  if seen[i] or in_batch[id] then
    dups = dups + 1
  else
    in_batch[id] = true
    fresh[#fresh + 1] = i
  end
end
local rate, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local bucket = redis.call('HMGET', KEYS[2], 'tokens', 'ts')
local tokens = tonumber(bucket[1]) or burst
local last = tonumber(bucket[2]) or t
tokens = math.min(burst, tokens + math.max(0, t - last) * rate)
local need = #fresh
if need > burst then return {'toolarge', tostring(burst)} end
if need > tokens then
  return {'rate', tostring(math.max(1, math.ceil((need - tokens) / rate)))}
end
redis.call('HSET', KEYS[2], 'tokens', tostring(tokens - need), 'ts', tostring(t))
redis.call('EXPIRE', KEYS[2], math.ceil(burst / rate) + 60)
for _, i in ipairs(fresh) do
  redis.call('XADD', raw, '*', 'tenant', ARGV[7], 'kind', ARGV[8], 'id', ids[i],
    'received_at', ARGV[9], 'body', ARGV[14 + i], 'ip', ARGV[10], 'ua', ARGV[11])
end
redis.call('SET', KEYS[4], '1', 'EX', ARGV[12])
local answer = '{"accepted":' .. need .. ',"duplicates":' .. dups
  .. ',"rejected":' .. ARGV[6] .. '}'
if idem_ttl > 0 then redis.call('SET', KEYS[3], ARGV[5] .. '\\n' .. answer, 'EX', idem_ttl) end
return {'ok', answer}
"""
)

# --- Lua: stage commit (normalizer and writer) ----------------------------------------------------

# KEYS: input stream, output stream, dlq stream, dedupe-tenants, seen-until key
# ARGV: group, dedupe ttl, dlq maxlen, dedupe-set prefix (`...:dedupe:`), seen-key prefix
#       (`...:seen:`), upgrade grace ms, the outputs' kind,
#       MessagePack [id, ...] input ids to acknowledge,
#       MessagePack [tenant, id, received_at, tenant, id, ...] outputs (flat: a Lua table per
#       output cost Redis ~0.2-0.4 us an event to unpack), then each output's body,
#       then per dead letter (tenant, kind, id, received_at, body, reason, stage, attempts, ip,
#       ua) as plain arguments: rare, and their bytes may be anything a client or operator wrote.
# Returns {added, duplicates}
STAGE_COMMIT: Final = (
    SEEN_POSITIONS
    + """
local group, ttl, dlq_maxlen = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local dedupe_prefix, seen_prefix, kind = ARGV[4], ARGV[5], ARGV[7]
local acked = cmsgpack.unpack(ARGV[8])
local outputs = cmsgpack.unpack(ARGV[9])
local n = #outputs / 3
local added, dups = 0, 0
if n > 0 then
  local now = now_ms()
  local expire_at = string.format('%d', now + ttl * 1000)
  local seen_until = redis.call('GET', KEYS[5])
  if not seen_until then
    -- lost (deleted, evicted): older markers may exist for all we know
    seen_until = string.format('%d', now + ttl * 1000 + tonumber(ARGV[6]))
    redis.call('SET', KEYS[5], seen_until)
  end
  local upgrading = tonumber(seen_until) > now
  local by_tenant, tenants = {}, {}
  for i = 1, n do
    local tenant = outputs[3 * i - 2]
    local positions = by_tenant[tenant]
    if not positions then
      positions = {}
      by_tenant[tenant] = positions
      tenants[#tenants + 1] = tenant
    end
    positions[#positions + 1] = i
  end
  local fresh = {}
  for _, tenant in ipairs(tenants) do
    local positions = by_tenant[tenant]
    local ids = {}
    for j, i in ipairs(positions) do ids[j] = outputs[3 * i - 1] end
    local set_key = dedupe_prefix .. tenant
    local seen = seen_positions(set_key, seen_until, seen_prefix .. tenant .. ':', ids, now)
    local in_batch, marks = {}, {}
    for j, i in ipairs(positions) do
      local id = ids[j]
      if seen[j] or in_batch[id] then
        dups = dups + 1
      else
        in_batch[id] = true
        fresh[i] = true
        marks[#marks + 1] = expire_at
        marks[#marks + 1] = id
      end
    end
    if #marks > 0 then
      for c = 1, #marks, 1000 do
        redis.call('ZADD', set_key, unpack(marks, c, math.min(c + 999, #marks)))
      end
      -- NX: a tenant already listed has an earlier window end than these
      redis.call('ZADD', KEYS[4], 'NX', expire_at, tenant)
      if upgrading then
        for m = 2, #marks, 2 do
          redis.call('SET', seen_prefix .. tenant .. ':' .. marks[m], '1', 'PXAT', expire_at)
        end
      end
    end
  end
  for i = 1, n do
    if fresh[i] then
      redis.call('XADD', KEYS[2], '*', 'tenant', outputs[3 * i - 2], 'kind', kind,
        'id', outputs[3 * i - 1], 'received_at', outputs[3 * i], 'body', ARGV[9 + i])
      added = added + 1
    end
  end
end
for o = 9 + n, #ARGV - 1, 10 do
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', dlq_maxlen, '*', 'tenant', ARGV[o + 1],
    'kind', ARGV[o + 2], 'id', ARGV[o + 3], 'received_at', ARGV[o + 4], 'body', ARGV[o + 5],
    'reason', ARGV[o + 6], 'stage', ARGV[o + 7], 'attempts', ARGV[o + 8],
    'ip', ARGV[o + 9], 'ua', ARGV[o + 10])
end
for i = 1, #acked, 500 do
  redis.call('XACK', KEYS[1], group, unpack(acked, i, math.min(i + 499, #acked)))
end
return {added, dups}
"""
)

_msgpack: Final = msgspec.msgpack.Encoder()


def dead_letter_args(letter: DeadLetter) -> list[bytes | str | int]:
    return [
        letter.tenant,
        letter.kind,
        letter.id,
        letter.received_at,
        letter.body,
        letter.reason[:2000],
        letter.stage,
        letter.attempts,
        letter.ip,
        letter.ua,
    ]


class PackedScript:
    """A Lua script whose command is framed once (`shared.resp.pack_command`): for the scripts
    that carry a batch, with a body per argument (see above), where redis-py's packer costs
    ~0.5 us an argument.

    Same contract as redis-py's `Script`: loads itself on NOSCRIPT; a connection error is raised
    to the caller, which retries (a script runs whole or not at all)."""

    def __init__(self, redis: aioredis.Redis, text: str) -> None:
        self.redis = redis
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    async def __call__(self, keys: Sequence[str], args: Sequence[CommandArg]) -> Any:
        command = pack_command(("EVALSHA", self.sha, len(keys), *keys, *args))
        try:
            return await send_packed(self.redis, command)
        except NoScriptError:
            await self.redis.script_load(self.text)
            return await send_packed(self.redis, command)


async def send_packed(redis: aioredis.Redis, command: bytes) -> Any:
    """One command already framed as RESP, on a pooled connection; its reply, or the error
    redis-py raises for it."""
    pool = redis.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        # Both calls close the connection themselves when they fail or are cancelled, so a
        # reply never read cannot be taken for the answer to the next command on it.
        await connection.send_packed_command(command)
        return await connection.read_response()
    finally:
        await pool.release(connection)


class Streams:
    """Scripts and stream operations bound to one Redis client and namespace."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._acked_trim: bool | None = None  # XTRIM ... ACKED exists from Redis 8.2
        self._append = PackedScript(redis, GATEWAY_APPEND)
        self._commit = PackedScript(redis, STAGE_COMMIT)
        self._prepare_dedupe = redis.register_script(PREPARE_DEDUPE)
        self._purge_dedupe = redis.register_script(PURGE_DEDUPE)

    async def gateway_append(
        self,
        kind: Kind,
        tenant: str,
        received_at: int,
        ip: str,
        ua: str,
        events: Sequence[tuple[str, bytes]],
        *,
        signature: str,
        signature_ttl_s: int,
        high_watermark: int,
        rate_per_s: float,
        burst: float,
        idempotency_key: str | None,
        idempotency_ttl_s: int,
        body_hash: str,
        rejected_json: bytes,
    ) -> tuple[str, bytes]:
        idem = (
            self.keys.idempotency(kind, tenant, idempotency_key)
            if idempotency_key
            else self.keys.rate(kind, tenant)
        )
        keys = [
            self.keys.stream(kind, "raw"),
            self.keys.rate(kind, tenant),
            idem,
            self.keys.signature(kind, signature),
            self.keys.dedupe(kind, tenant),
            self.keys.seen_until(kind),
        ]
        args: list[bytes | str | int | float] = [
            high_watermark,
            rate_per_s,
            burst,
            idempotency_ttl_s if idempotency_key else 0,
            body_hash,
            rejected_json,
            tenant,
            kind,
            received_at,
            ip,
            ua,
            signature_ttl_s,
            f"{self.keys.seen_prefix(kind)}{tenant}:",
            _msgpack.encode([event_id for event_id, _ in events]),
            *[body for _, body in events],
        ]
        status, value = await self._append(keys, args)
        return status.decode(), value

    async def commit(
        self,
        kind: Kind,
        group: str,
        input_stage: Stage,
        batch: StageCommit,
        dedupe_ttl_s: int,
        dlq_maxlen: int,
    ) -> tuple[int, int]:
        """Atomically: add outputs (skipping ids seen within the window), dead letters, XACK."""
        if not batch.outputs and not batch.dead_letters:
            # A writer's batch that stored every row: one plain XACK costs Redis half of what
            # the script's unpacking and XACKs do (~0.26 against ~0.5 us an id).
            if batch.acked:
                stream = self.keys.stream(kind, input_stage)
                await send_packed(self.redis, pack_command(("XACK", stream, group, *batch.acked)))
            return 0, 0
        if any(out.kind != kind for out in batch.outputs):
            # the script writes the commit's kind on every output entry
            raise ValueError(f"a {kind} commit holds outputs of another kind")
        output_stage: Stage = "clean" if input_stage == "raw" else "dlq"
        keys = [
            self.keys.stream(kind, input_stage),
            self.keys.stream(kind, output_stage),
            self.keys.stream(kind, "dlq"),
            self.keys.dedupe_tenants(kind),
            self.keys.seen_until(kind),
        ]
        args: list[bytes | str | int] = [
            group,
            dedupe_ttl_s,
            dlq_maxlen,
            self.keys.dedupe_prefix(kind),
            self.keys.seen_prefix(kind),
            UPGRADE_GRACE_MS,
            kind,
            _msgpack.encode([entry_id.decode() for entry_id in batch.acked]),
            _msgpack.encode(
                [
                    value
                    for out in batch.outputs
                    for value in (out.tenant, out.id, str(out.received_at))
                ]
            ),
            *[out.body for out in batch.outputs],
        ]
        for letter in batch.dead_letters:
            args.extend(dead_letter_args(letter))
        added, dups = await self._commit(keys, args)
        return int(added), int(dups)

    async def prepare_dedupe(self, kind: Kind, group: str, window_s: int) -> int:
        """Before a normalizer consumes `kind`: returns the ms until which markers of the older
        layout are honoured (0: there are none)."""
        keys = [self.keys.seen_until(kind), self.keys.stream(kind, "raw")]
        args: list[str | int] = [group, window_s * 1000 + UPGRADE_GRACE_MS]
        return int(await self._prepare_dedupe(keys=keys, args=args))

    async def purge_dedupe(self, kind: Kind) -> int:
        """Remove the expired dedupe markers of `kind`, in bounded steps; returns how many."""
        tenants_key = self.keys.dedupe_tenants(kind)
        seconds, micros = await self.redis.time()
        now_ms = seconds * 1000 + micros // 1000
        due = await self.redis.zrangebyscore(tenants_key, "-inf", now_ms, 0, PURGE_TENANTS)
        removed = 0
        for tenant in cast(list[bytes], due):
            keys = [tenants_key, self.keys.dedupe(kind, tenant.decode())]
            while True:
                step = int(await self._purge_dedupe(keys=keys, args=[tenant, PURGE_STEP]))
                removed += step
                if step < PURGE_STEP:
                    break
        return removed

    async def safe_trim(self, stream: str) -> int:
        """Drop only entries every group has acknowledged; returns how many were removed.

        The cut is the lowest of, per group, its oldest pending id or the id after its last
        delivered one; a stream without groups is never trimmed.
        """
        try:
            groups = await self.redis.xinfo_groups(stream)
        except ResponseError:
            return 0
        if not groups:
            return 0
        cut: tuple[int, int] | None = None
        for info in groups:
            summary = await self.redis.xpending(stream, info["name"])
            if summary["pending"] and summary["min"]:
                candidate = _parse_id(summary["min"])
            else:
                ms, seq = _parse_id(info["last-delivered-id"])
                candidate = (ms, seq + 1)
            cut = candidate if cut is None else min(cut, candidate)
        assert cut is not None
        if cut == (0, 1):
            return 0
        minid = f"{cut[0]}-{cut[1]}"
        if self._acked_trim is None:
            self._acked_trim = server_version(await self.redis.info("server")) >= (8, 2)
        if self._acked_trim:
            # the server re-checks every group's acknowledgements: safe even against a group
            # created between our XINFO and this call
            trimmed = await self.redis.execute_command(  # type: ignore[no-untyped-call]
                "XTRIM", stream, "MINID", minid, "ACKED"
            )
            return int(trimmed)
        # `MINID ~` drops whole nodes only, and at most 100 nodes (10,000 entries) per call: one
        # call every few seconds falls behind any inflow above a few thousand entries/s. Repeat
        # until nothing is dropped; each call stays short, so Redis serves others in between.
        trimmed = 0
        while dropped := int(await self.redis.xtrim(stream, minid=minid)):
            trimmed += dropped
        return trimmed


def server_version(info: dict[str, Any]) -> tuple[int, ...]:
    """`INFO server` -> (major, minor, patch)."""
    raw = info.get("redis_version", "0")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def _parse_id(value: bytes | str) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
