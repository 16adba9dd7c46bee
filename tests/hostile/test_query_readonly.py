"""`rivulet query` is read-only on both stores, whatever the SQL text says.

ClickHouse: the sink's `query_json_lines` (what the chdb owner's loopback query port and
`rivulet query` run) must refuse writes, DDL, setting changes and multi-statements; the tables a
writer created and their rows survive every attempt. PostgreSQL: `rivulet_cli.ops.query_timescale`
runs the SQL in a read-only transaction; writes and DDL raise and the data is intact.
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Final

import asyncpg
import httpx
import msgspec
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from rivulet_cli.ops import query_clickhouse, query_timescale
from services.writer.query import QueryApp
from services.writer.sinks import ClickHouseSink, PostgresSink
from shared.config import Settings
from shared.events import parse_event
from shared.schemas import Kind
from tests.helpers import log_event, metric_event, stored

CLICKHOUSE_TABLES: Final = ("logs", "rum_events", "spans")


def clean(kind: Kind, event: dict[str, Any]) -> Any:
    return parse_event(kind, msgspec.json.encode(event), "acme", received_at=time.time_ns())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- ClickHouse -----------------------------------------------------------------------------------


@pytest.fixture
async def ch_sink(chdb_dsn: str, clickhouse_database: str) -> AsyncIterator[ClickHouseSink]:
    """The sink a ClickHouse writer owns (and serves `rivulet query` from), with 3 log rows."""
    sink = ClickHouseSink(chdb_dsn, clickhouse_database, 0)
    try:
        await sink.start()  # creates the database and the writer's tables
        await sink.insert(
            "logs", stored([clean("logs", log_event(i)) for i in range(3)]), token="hostile-1"
        )
        yield sink
    finally:
        await sink.close()
        admin = ClickHouseSink(chdb_dsn, clickhouse_database, 0)  # a session of its own
        try:
            await admin._call(
                lambda client: client.command(f"DROP DATABASE IF EXISTS `{clickhouse_database}`")
            )
        finally:
            await admin.close()


@pytest.fixture
async def observer(ch_sink: ClickHouseSink) -> AsyncIterator[ClickHouseSink]:
    """Another sink on the same engine: checks what is stored without sharing ch_sink's session."""
    sink = ClickHouseSink(ch_sink.dsn, ch_sink.database, 0)
    try:
        yield sink
    finally:
        await sink.close()


async def clickhouse_state(observer: ClickHouseSink) -> tuple[list[str], list[str], list[str]]:
    db = observer.database
    tables = await observer.query_json_lines(
        f"SELECT name FROM system.tables WHERE database = '{db}'"
    )
    databases = await observer.query_json_lines("SELECT name FROM system.databases")
    ids = await observer.query_json_lines(f"SELECT id FROM `{db}`.logs ORDER BY id")
    return (
        sorted(msgspec.json.decode(r)["name"] for r in tables.splitlines()),
        sorted(msgspec.json.decode(r)["name"] for r in databases.splitlines()),
        [msgspec.json.decode(r)["id"] for r in ids.splitlines()],
    )


CLICKHOUSE_WRITES: Final = [
    "INSERT INTO {db}.logs (tenant, id, service, level, message) "
    "VALUES ('evil', 'x', 's', 'i', 'm')",
    "INSERT INTO {db}.logs SELECT * FROM {db}.logs",
    "INSERT INTO FUNCTION file('rivulet-hostile.csv', 'CSV', 'a Int8') SELECT 1",
    "DROP TABLE {db}.logs",
    "DROP TABLE IF EXISTS {db}.spans SYNC",
    "DROP DATABASE {db}",
    "CREATE TABLE {db}.evil (a Int8) ENGINE = Memory",
    "CREATE TABLE {db}.evil AS {db}.logs",
    "CREATE DATABASE rivulet_hostile_evil",
    "CREATE VIEW {db}.evil AS SELECT 1",
    "SELECT 1; DROP TABLE {db}.logs",
    "SELECT 1; CREATE TABLE {db}.evil (a Int8) ENGINE = Memory",
    "TRUNCATE TABLE {db}.logs",
    "DELETE FROM {db}.logs WHERE 1",
    "ALTER TABLE {db}.logs DELETE WHERE 1",
    "ALTER TABLE {db}.logs UPDATE message = 'x' WHERE 1",
    "ALTER TABLE {db}.logs DROP COLUMN message",
    "RENAME TABLE {db}.logs TO {db}.logs_gone",
    "DETACH TABLE {db}.logs",
    "OPTIMIZE TABLE {db}.logs FINAL",
    "SELECT count() FROM {db}.logs SETTINGS readonly = 0",
    "SELECT count() FROM {db}.logs SETTINGS readonly = 2",
    "SET readonly = 0",
]


@pytest.mark.parametrize("template", CLICKHOUSE_WRITES)
async def test_clickhouse_query_refuses_writes_and_ddl(
    template: str, ch_sink: ClickHouseSink, observer: ClickHouseSink
) -> None:
    sql = template.format(db=f"`{ch_sink.database}`")
    before = await clickhouse_state(observer)
    assert set(CLICKHOUSE_TABLES) <= set(before[0])  # the writer's tables (and any others)
    assert before[2] == ["log-0", "log-1", "log-2"]

    with pytest.raises(DatabaseError):
        await ch_sink.query_json_lines(sql)

    assert await clickhouse_state(observer) == before


async def test_clickhouse_query_still_answers_reads(ch_sink: ClickHouseSink) -> None:
    out = await ch_sink.query_json_lines(
        f"SELECT count() AS n, uniqExact(id) AS u FROM `{ch_sink.database}`.logs"
    )
    assert msgspec.json.decode(out) == {"n": 3, "u": 3}


@pytest.mark.parametrize(
    "template",
    [
        "DROP TABLE {db}.logs;",
        "TRUNCATE TABLE {db}.logs ;;",
        "ALTER TABLE {db}.logs DELETE WHERE 1",
    ],
)
async def test_clickhouse_query_port_refuses_writes_with_400(
    template: str, ch_sink: ClickHouseSink, observer: ClickHouseSink
) -> None:
    """The loopback app `rivulet query` talks to while `rivulet up` runs (it strips ';')."""
    sql = template.format(db=f"`{ch_sink.database}`")
    before = await clickhouse_state(observer)
    transport = httpx.ASGITransport(app=QueryApp(ch_sink))  # as services/writer/main.py wires it
    async with httpx.AsyncClient(transport=transport, base_url="http://query") as client:
        refused = await client.post("/query", content=sql.encode())
        read = await client.post(
            "/query", content=f"SELECT count() AS n FROM `{ch_sink.database}`.logs;".encode()
        )

    assert refused.status_code == 400, refused.text
    assert "readonly" in refused.text.lower()
    assert read.status_code == 200
    assert msgspec.json.decode(read.content) == {"n": 3}
    assert await clickhouse_state(observer) == before


async def test_rivulet_query_clickhouse_path_refuses_a_drop(
    ch_sink: ClickHouseSink, observer: ClickHouseSink, settings: Settings
) -> None:
    """`ops.query_clickhouse` with no chdb owner listening opens the engine itself, read-only."""
    local = msgspec.structs.replace(settings, query_port=free_port())
    before = await clickhouse_state(observer)

    with pytest.raises(DatabaseError):
        await query_clickhouse(local, f"DROP TABLE `{ch_sink.database}`.logs;")
    rows = await query_clickhouse(local, f"SELECT count() AS n FROM `{ch_sink.database}`.logs")

    assert msgspec.json.decode(rows) == {"n": 3}
    assert await clickhouse_state(observer) == before


# A query used to leave the writer's own session read-only for good (chdb settings are per
# session and clickhouse-connect's restoring SET is refused in readonly mode), so that every
# later insert failed with Code 164 and the ClickHouse writer retried forever. Regression tests:


async def test_a_query_through_the_query_port_leaves_the_writer_able_to_insert(
    ch_sink: ClickHouseSink, observer: ClickHouseSink
) -> None:
    transport = httpx.ASGITransport(app=QueryApp(ch_sink))  # as services/writer/main.py wires it
    async with httpx.AsyncClient(transport=transport, base_url="http://query") as client:
        read = await client.post("/query", content=b"SELECT 1 AS one")
    assert read.status_code == 200

    await ch_sink.insert("logs", stored([clean("logs", log_event(7))]), token="after-a-query")

    assert (await clickhouse_state(observer))[2] == ["log-0", "log-1", "log-2", "log-7"]


async def test_a_refused_write_leaves_the_sink_able_to_create_its_tables(
    ch_sink: ClickHouseSink,
) -> None:
    with pytest.raises(DatabaseError):
        await ch_sink.query_json_lines(f"DROP TABLE `{ch_sink.database}`.logs")

    await ch_sink.start()  # a writer restarting its sink re-runs CREATE ... IF NOT EXISTS


async def test_a_refused_multi_statement_leaves_nothing_in_the_next_answer(
    ch_sink: ClickHouseSink,
) -> None:
    with pytest.raises(DatabaseError):
        await ch_sink.query_json_lines(f"SELECT 1; DROP TABLE `{ch_sink.database}`.logs")

    assert await ch_sink.query_json_lines("SELECT 42 AS answer") == b'{"answer":42}\n'


# --- PostgreSQL -----------------------------------------------------------------------------------


@pytest.fixture
async def pg_settings(settings: Settings, pg_dsn: str, pg_schema: str) -> AsyncIterator[Settings]:
    sink = PostgresSink(pg_dsn, pg_schema)
    try:
        await sink.start()
        await sink.insert(
            "metrics", stored([clean("metrics", metric_event(i)) for i in range(3)]), token="t"
        )
    finally:
        await sink.close()
    yield msgspec.structs.replace(settings, timescale_dsn=pg_dsn, timescale_schema=pg_schema)


async def pg_state(dsn: str, schema: str) -> tuple[list[str], list[tuple[str, float]], list[str]]:
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1"
            " ORDER BY table_name",
            schema,
        )
        rows = await conn.fetch(f'SELECT id, value FROM "{schema}".metrics ORDER BY id')
        schemas = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'rivulet_hostile%'"
        )
    finally:
        await conn.close()
    return (
        [r["table_name"] for r in tables],
        [(r["id"], r["value"]) for r in rows],
        [r["nspname"] for r in schemas],
    )


POSTGRES_WRITES: Final = [
    "INSERT INTO {s}.metrics (tenant, id, ts, name, value, type, received_at) "
    "VALUES ('evil', 'x', now(), 'n', 1, 'gauge', now())",
    "INSERT INTO {s}.metrics SELECT * FROM {s}.metrics ON CONFLICT DO NOTHING",
    "UPDATE {s}.metrics SET value = -1",
    "DELETE FROM {s}.metrics",
    "TRUNCATE {s}.metrics",
    "DROP TABLE {s}.metrics CASCADE",
    "DROP SCHEMA {s} CASCADE",
    "CREATE TABLE {s}.evil (a int)",
    "CREATE TEMP TABLE evil (a int)",
    "CREATE SCHEMA rivulet_hostile_evil",
    "CREATE INDEX evil_idx ON {s}.metrics (value)",
    "ALTER TABLE {s}.metrics DROP COLUMN value",
    "COMMENT ON TABLE {s}.metrics IS 'evil'",
    "SELECT 1; DROP TABLE {s}.metrics",
    "COMMIT; DROP TABLE {s}.metrics",
    "SET TRANSACTION READ WRITE; DROP TABLE {s}.metrics",
    "WITH gone AS (DELETE FROM {s}.metrics RETURNING *) SELECT count(*) FROM gone",
    "SELECT set_config('transaction_read_only', 'off', true)",
    "DO $$ BEGIN SET TRANSACTION READ WRITE; DROP TABLE {s}.metrics; END $$",
    "DO $$ BEGIN DELETE FROM {s}.metrics; END $$",
    "SELECT * FROM {s}.metrics FOR UPDATE",
]


@pytest.mark.parametrize("template", POSTGRES_WRITES)
async def test_timescale_query_refuses_writes_and_ddl(
    template: str, pg_settings: Settings, pg_dsn: str, pg_schema: str
) -> None:
    sql = template.format(s=f'"{pg_schema}"')
    before = await pg_state(pg_dsn, pg_schema)
    assert "metrics" in before[0]
    assert len(before[1]) == 3

    with pytest.raises(asyncpg.PostgresError):
        await query_timescale(pg_settings, sql)

    assert await pg_state(pg_dsn, pg_schema) == before


async def test_timescale_query_still_answers_reads(pg_settings: Settings, pg_schema: str) -> None:
    rows = await query_timescale(
        pg_settings, f"SELECT count(*) AS n FROM \"{pg_schema}\".metrics WHERE tenant = 'acme'"
    )
    assert [msgspec.json.decode(r) for r in rows] == [{"n": 3}]


async def _lo_oids(conn: asyncpg.Connection, marker: bytes) -> list[int]:
    rows = await conn.fetch(
        "SELECT oid FROM pg_largeobject_metadata m WHERE lo_get(m.oid) = $1", marker
    )
    return [int(r["oid"]) for r in rows]


@pytest.fixture
async def pg_server_version(pg_dsn: str) -> int:
    conn = await asyncpg.connect(pg_dsn)
    try:
        return int(await conn.fetchval("SHOW server_version_num"))
    finally:
        await conn.close()


async def test_timescale_query_refuses_creating_a_large_object(
    request: pytest.FixtureRequest, pg_settings: Settings, pg_dsn: str, pg_server_version: int
) -> None:
    marker = f"rivulet-hostile-{uuid.uuid4().hex}".encode()
    conn = await asyncpg.connect(pg_dsn)
    try:
        with contextlib.suppress(asyncpg.PostgresError):  # refused, or rolled back
            await query_timescale(
                pg_settings, f"SELECT lo_from_bytea(0, '\\x{marker.hex()}'::bytea)"
            )
        assert await _lo_oids(conn, marker) == []
    finally:
        for oid in await _lo_oids(conn, marker):
            await conn.execute("SELECT lo_unlink($1::oid)", oid)
        await conn.close()


async def test_timescale_query_refuses_deleting_a_large_object(
    request: pytest.FixtureRequest, pg_settings: Settings, pg_dsn: str, pg_server_version: int
) -> None:
    marker = f"rivulet-hostile-{uuid.uuid4().hex}".encode()
    conn = await asyncpg.connect(pg_dsn)
    try:
        oid = int(await conn.fetchval("SELECT lo_from_bytea(0, $1)", marker))
        with contextlib.suppress(asyncpg.PostgresError):  # refused, or rolled back
            await query_timescale(pg_settings, f"SELECT lo_unlink({oid})")
        assert await _lo_oids(conn, marker) == [oid]
    finally:
        for left in await _lo_oids(conn, marker):
            await conn.execute("SELECT lo_unlink($1::oid)", left)
        await conn.close()
