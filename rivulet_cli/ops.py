"""Operator commands over Redis and the stores: keys, tail, status, dlq, query."""

from __future__ import annotations

import sys
from typing import Any, Final

import asyncpg
import httpx
import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from services.writer.sinks import ClickHouseSink
from shared.config import Settings
from shared.entries import Fields, entry_as_json
from shared.schemas import ALL_KINDS, PROFILES
from shared.streams import Keys, Stage, flatten_read, xrange, xrevrange

_encoder: Final = msgspec.json.Encoder()

# KEYS: dlq, raw, clean. ARGV: dlq entry id. Moves one dead letter back to the stream its stage
# reads (raw for gateway/normalizer letters, clean for writer letters) and deletes it, atomically,
# so two concurrent replays can never re-drive the same letter twice. A profile's letter keeps its
# plain fields (service, type, size, labels): the profiler needs them.
DLQ_REPLAY: Final = """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return 0 end
local f = found[1][2]
local fields = {}
for i = 1, #f, 2 do fields[f[i]] = f[i + 1] end
local target = KEYS[2]
if fields['stage'] == 'writer' then target = KEYS[3] end
local out = {'tenant', fields['tenant'] or '', 'kind', fields['kind'] or '',
  'id', fields['id'] or '', 'received_at', fields['received_at'] or '0',
  'body', fields['body'] or '', 'ip', fields['ip'] or '', 'ua', fields['ua'] or '',
  'replayed_from', ARGV[1]}
for _, name in ipairs({'service', 'type', 'size', 'labels'}) do
  if fields[name] then out[#out + 1] = name; out[#out + 1] = fields[name] end
end
redis.call('XADD', target, '*', unpack(out))
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
"""


def entry_line(kind: str, entry_id: bytes, fields: Fields) -> bytes:
    """One entry as JSON; a profile's body is binary (protobuf or msgpack), so it is summarized
    (`rivulet profile get` fetches a stored protobuf)."""
    if kind == PROFILES and b"body" in fields:
        fields = {**fields, b"body": f"<{len(fields[b'body'])} bytes, binary>".encode()}
    return entry_as_json(entry_id, fields)


def write_line(data: bytes) -> None:
    sys.stdout.buffer.write(data + b"\n")
    sys.stdout.buffer.flush()


async def tail(
    redis: aioredis.Redis, keys: Keys, kind: str, stage: Stage, count: int, follow: bool
) -> None:
    stream = keys.stream(kind, stage)
    entries = await xrevrange(redis, stream, count=count)
    last = b"$"
    for entry_id, fields in reversed(entries):
        write_line(entry_line(kind, entry_id, fields))
        last = entry_id
    while follow:
        reply = await redis.xread({stream: last}, count=1000, block=5000)
        for entry_id, fields in flatten_read(reply):
            write_line(entry_line(kind, entry_id, fields))
            last = entry_id


class GroupStatus(msgspec.Struct):
    name: str
    consumers: int
    pending: int
    lag: int | None
    last_delivered_id: str


class StreamStatus(msgspec.Struct):
    stream: str
    length: int
    groups: list[GroupStatus]


class KindStatus(msgspec.Struct):
    kind: str
    raw: StreamStatus
    clean: StreamStatus
    dlq: int


async def _stream_status(redis: aioredis.Redis, stream: str) -> StreamStatus:
    length = int(await redis.xlen(stream))
    try:
        infos = await redis.xinfo_groups(stream)
    except ResponseError:
        infos = []
    groups = [
        GroupStatus(
            name=_str(info["name"]),
            consumers=int(info["consumers"]),
            pending=int(info["pending"]),
            lag=None if info.get("lag") is None else int(info["lag"]),
            last_delivered_id=_str(info["last-delivered-id"]),
        )
        for info in infos
    ]
    return StreamStatus(stream, length, groups)


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def status(redis: aioredis.Redis, keys: Keys) -> list[KindStatus]:
    return [
        KindStatus(
            kind=kind,
            raw=await _stream_status(redis, keys.stream(kind, "raw")),
            clean=await _stream_status(redis, keys.stream(kind, "clean")),
            dlq=int(await redis.xlen(keys.stream(kind, "dlq"))),
        )
        for kind in ALL_KINDS
    ]


def format_status(rows: list[KindStatus]) -> str:
    lines = [
        f"{'stream':<26} {'length':>9} {'group':<12} {'consumers':>9} {'pending':>8} {'lag':>8}"
    ]
    for row in rows:
        for stream in (row.raw, row.clean):
            if not stream.groups:
                lines.append(
                    f"{stream.stream:<26} {stream.length:>9} {'-':<12} {0:>9} {0:>8} {'-':>8}"
                )
            for group in stream.groups:
                lag = "-" if group.lag is None else str(group.lag)
                lines.append(
                    f"{stream.stream:<26} {stream.length:>9} {group.name:<12} "
                    f"{group.consumers:>9} {group.pending:>8} {lag:>8}"
                )
        lines.append(f"{row.kind + ' dlq':<26} {row.dlq:>9}")
    return "\n".join(lines)


async def dlq_list(redis: aioredis.Redis, keys: Keys, kind: str, count: int) -> None:
    for entry_id, fields in await xrange(redis, keys.stream(kind, "dlq"), count=count):
        write_line(entry_line(kind, entry_id, fields))


async def dlq_replay(redis: aioredis.Redis, keys: Keys, kind: str, ids: list[str]) -> int:
    script = redis.register_script(DLQ_REPLAY)
    dlq = keys.stream(kind, "dlq")
    targets = [dlq, keys.stream(kind, "raw"), keys.stream(kind, "clean")]
    if not ids:
        ids = [_str(entry_id) for entry_id, _ in await xrange(redis, dlq)]
    replayed = 0
    for entry_id in ids:
        replayed += int(await script(keys=targets, args=[entry_id]))
    return replayed


async def dlq_drop(redis: aioredis.Redis, keys: Keys, kind: str, ids: list[str]) -> int:
    dlq = keys.stream(kind, "dlq")
    if ids:
        return int(await redis.xdel(dlq, *ids))
    length = int(await redis.xlen(dlq))
    await redis.delete(dlq)
    return length


async def query_clickhouse(settings: Settings, sql: str) -> bytes:
    """Through the chdb owner's query port when it runs; else open the engine (or server) here."""
    if settings.uses_chdb:
        try:
            async with httpx.AsyncClient(timeout=300) as client:
                response = await client.post(
                    f"http://127.0.0.1:{settings.query_port}/query", content=sql.encode()
                )
        except httpx.ConnectError:
            pass
        else:
            if response.status_code != 200:
                raise RuntimeError(response.text.strip())
            return response.content
    sink = ClickHouseSink(settings.clickhouse_dsn, settings.clickhouse_database, 0)
    try:
        return await sink.query_json_lines(sql.strip().rstrip(";"))
    finally:
        await sink.close()


async def query_timescale(settings: Settings, sql: str) -> list[bytes]:
    conn = await asyncpg.connect(settings.timescale_dsn, timeout=10)
    try:
        # Read-only, and rolled back rather than committed: on PostgreSQL < 16 a read-only
        # transaction still lets large-object functions (lo_create, lo_import…) write.
        transaction = conn.transaction(readonly=True)
        await transaction.start()
        try:
            records = await conn.fetch(sql)
        finally:
            await transaction.rollback()
    finally:
        await conn.close()
    return [_encoder.encode(_jsonable(dict(record))) for record in records]


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _json_value(v) for k, v in row.items()}


def _json_value(value: Any) -> Any:
    """JSON scalars and arrays (e.g. metric_histograms' bounds) as they are, the rest as text."""
    if isinstance(value, str | int | float | bool | None):
        return value
    if isinstance(value, list):
        return [_json_value(item) for item in value]
    return str(value)
