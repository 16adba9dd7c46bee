"""Sinks: where clean events become rows. One small Protocol, two implementations.

Errors are classified here, once: `RetryableSinkError` (the database is away or overloaded: back
off, keep the batch pending) or `RejectedBatch` (the database refuses this data: isolate the bad
rows and dead-letter them). Both sinks are idempotent for a re-delivered batch: ClickHouse by an
existence check of ids plus insert deduplication tokens (ReplacingMergeTree as a last resort);
PostgreSQL by `ON CONFLICT DO NOTHING` on (tenant, id, ts).

Profiles (`ProfileSink`, implemented by ClickHouseSink) fill four tables per batch, in the order
functions, stacks, samples, profiles (see services/writer/profile_rows.py): the writer skips
profiles whose row exists, and after a failure inserts only the sample rows still missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

import asyncpg
import clickhouse_connect
import msgspec
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, DataError, ProgrammingError

from services.writer.histograms import histogram_ddl, insert_histograms
from services.writer.profile_rows import (
    FUNCTION_COLUMNS,
    PROFILE_COLUMNS,
    SAMPLE_COLUMNS,
    STACK_COLUMNS,
    SampleKey,
    function_rows,
    profile_ddl,
    profile_rows,
    rows_token,
    sample_rows,
    stack_rows,
)
from services.writer.rows import (
    CLICKHOUSE_DDL,
    CLICKHOUSE_TABLES,
    INSERTED_AT,
    METRIC_COLUMNS,
    ingest_ddl,
    ingest_table,
    to_json_rows,
    to_metric_records,
)
from shared.schemas import CleanProfile, Kind, Metric, StoredEvent

T = TypeVar("T")


class RetryableSinkError(Exception):
    """The store is unreachable or overloaded; the same batch may succeed later."""


class RejectedBatch(Exception):
    """The store refused the data itself; retrying the same rows cannot succeed."""


class Sink(Protocol):
    kinds: frozenset[Kind]

    async def start(self) -> None: ...

    async def insert(self, kind: Kind, events: Sequence[StoredEvent], token: str) -> None: ...

    async def existing_ids(self, kind: Kind, events: Sequence[StoredEvent]) -> set[str]: ...

    async def close(self) -> None: ...


@runtime_checkable
class ProfileSink(Protocol):
    """A store for the `profiles` kind (several tables per profile)."""

    async def existing_profile_ids(self, records: Sequence[CleanProfile]) -> set[tuple[str, str]]:
        """(tenant, id) of the records whose profile row is stored (their samples are too)."""
        ...

    async def insert_profiles(self, records: Sequence[CleanProfile], recheck: bool) -> None:
        """Store the records; with `recheck`, first drop sample rows an earlier attempt stored."""
        ...


# ClickHouse error codes that mean "this data can never be inserted" (bad values, bad types).
_CLICKHOUSE_DATA_ERRORS: Final = frozenset(
    {6, 26, 27, 32, 38, 41, 43, 53, 69, 70, 72, 76, 117, 131, 190, 321, 395, 469}
)
_CODE = re.compile(r"Code: (\d+)")


def classify_clickhouse(exc: BaseException) -> Exception:
    if isinstance(exc, DataError | ProgrammingError | TypeError | ValueError | OverflowError):
        return RejectedBatch(f"{type(exc).__name__}: {exc}"[:2000])
    if isinstance(exc, DatabaseError):
        match = _CODE.search(str(exc))
        if match and int(match.group(1)) in _CLICKHOUSE_DATA_ERRORS:
            return RejectedBatch(str(exc)[:2000])
    return RetryableSinkError(f"{type(exc).__name__}: {str(exc)[:500]}")


# The token deduplicates in the table behind the ingest view too; floats parse exactly as encoded.
_JSON_INSERT: Final[dict[str, Any]] = {
    "max_partitions_per_insert_block": 0,
    "deduplicate_blocks_in_dependent_materialized_views": 1,
    "precise_float_parsing": 1,
    "input_format_skip_unknown_fields": 1,
}


def insert_json_rows(client: Client, table: str, rows: bytes, token: str) -> None:
    """One JSONEachRow insert into an ingest table; `token` deduplicates a retried one."""
    client.raw_insert(
        table,
        None,
        rows,
        settings=_JSON_INSERT | {"insert_deduplication_token": token},
        fmt="JSONEachRow",
    )


class ClickHouseSink:
    """clickhouse-connect over HTTP, or the in-process chdb engine for `chdb:///path`.

    chdb has no async client and one engine per process, so every call runs on one dedicated
    thread: calls are serialized, and the same thread also answers read-only queries.
    """

    kinds: frozenset[Kind] = frozenset({"logs", "spans", "rum", "profiles"})

    def __init__(
        self,
        dsn: str,
        database: str,
        ttl_days: int,
        connect: Callable[[str], Client] | None = None,
    ) -> None:
        self.dsn = dsn
        self.database = database
        self.ttl_days = ttl_days
        self._connect = connect or (lambda d: clickhouse_connect.get_client(dsn=d))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._client: Client | None = None
        self._reader: Client | None = None  # chdb: the read-only session (query_json_lines)

    async def _call(self, fn: Callable[[Client], T]) -> T:
        def run() -> T:
            if self._client is None:
                self._client = self._connect(self.dsn)
            return fn(self._client)

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def start(self) -> None:
        # Retention counts from arrival, not from the event's own timestamp: an accepted event
        # with an old `ts` (a backfill) must still become a row.
        ttl = (
            f"TTL toDateTime(received_at) + INTERVAL {int(self.ttl_days)} DAY"
            if self.ttl_days > 0
            else ""
        )

        def create(client: Client) -> None:
            client.command(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
            for kind, ddl in CLICKHOUSE_DDL.items():
                client.command(
                    ddl.format(db=f"`{self.database}`", ttl=ttl, inserted_at=INSERTED_AT)
                )
                for statement in ingest_ddl(f"`{self.database}`", kind):
                    client.command(statement)
            for ddl in profile_ddl(f"`{self.database}`", self.ttl_days):
                client.command(ddl)

        try:
            await self._call(create)
        except Exception as exc:
            raise classify_clickhouse(exc) from exc

    async def insert(self, kind: Kind, events: Sequence[StoredEvent], token: str) -> None:
        table = f"`{self.database}`.{ingest_table(kind)}"
        rows = to_json_rows(events)

        try:
            await self._call(lambda client: insert_json_rows(client, table, rows, token))
        except Exception as exc:
            raise classify_clickhouse(exc) from exc

    async def existing_ids(self, kind: Kind, events: Sequence[StoredEvent]) -> set[str]:
        if not events:
            return set()
        table = f"`{self.database}`.{CLICKHOUSE_TABLES[kind]}"
        sql = (
            f"SELECT id FROM {table} WHERE tenant IN {{tenants:Array(String)}} "
            "AND ts BETWEEN fromUnixTimestamp64Nano({lo:Int64}) "
            "AND fromUnixTimestamp64Nano({hi:Int64}) "
            "AND id IN {ids:Array(String)}"
        )
        params: dict[str, Any] = {
            "tenants": sorted({e.tenant for e in events}),
            "lo": min(e.ts for e in events),
            "hi": max(e.ts for e in events),
            "ids": [e.id for e in events],
        }
        try:
            result = await self._call(lambda c: c.query(sql, parameters=params).result_rows)
        except Exception as exc:
            raise classify_clickhouse(exc) from exc
        return {row[0] for row in result}

    async def existing_profile_ids(self, records: Sequence[CleanProfile]) -> set[tuple[str, str]]:
        if not records:
            return set()
        sql = (
            f"SELECT tenant, id FROM `{self.database}`.profiles "
            "WHERE tenant IN {tenants:Array(String)} "
            "AND ts BETWEEN fromUnixTimestamp64Nano({lo:Int64}) "
            "AND fromUnixTimestamp64Nano({hi:Int64}) "
            "AND id IN {ids:Array(String)}"
        )
        params: dict[str, Any] = {
            "tenants": sorted({r.tenant for r in records}),
            "lo": min(r.ts for r in records),
            "hi": max(r.ts for r in records),
            "ids": sorted({r.id for r in records}),
        }
        try:
            result = await self._call(lambda c: c.query(sql, parameters=params).result_rows)
        except Exception as exc:
            raise classify_clickhouse(exc) from exc
        return {(row[0], row[1]) for row in result}

    async def stored_sample_keys(self, records: Sequence[CleanProfile]) -> set[SampleKey]:
        """Sample rows of these profiles already stored (after a failed or partial insert)."""
        if not records:
            return set()
        sql = (
            "SELECT tenant, profile_id, sample_type, stack_hash "
            f"FROM `{self.database}`.profile_samples "
            "WHERE tenant IN {tenants:Array(String)} AND service IN {services:Array(String)} "
            "AND ts BETWEEN fromUnixTimestamp64Nano({lo:Int64}) "
            "AND fromUnixTimestamp64Nano({hi:Int64}) "
            "AND profile_id IN {ids:Array(String)}"
        )
        params: dict[str, Any] = {
            "tenants": sorted({r.tenant for r in records}),
            "services": sorted({r.service for r in records}),
            "lo": min(r.ts for r in records),
            "hi": max(r.ts for r in records),
            "ids": sorted({r.id for r in records}),
        }
        try:
            result = await self._call(lambda c: c.query(sql, parameters=params).result_rows)
        except Exception as exc:
            raise classify_clickhouse(exc) from exc
        wanted = {(r.tenant, r.id) for r in records}
        return {
            (row[0], row[1], row[2], int(row[3])) for row in result if (row[0], row[1]) in wanted
        }

    async def insert_profiles(self, records: Sequence[CleanProfile], recheck: bool) -> None:
        if not records:
            return
        skip = frozenset(await self.stored_sample_keys(records)) if recheck else frozenset()
        samples = sample_rows(records, skip)
        steps = (
            ("profile_functions", FUNCTION_COLUMNS, function_rows(records), (0, 1, 6)),
            ("profile_stacks", STACK_COLUMNS, stack_rows(records), (0, 1, 7)),
            ("profile_samples", SAMPLE_COLUMNS, samples, (0, 6, 3, 7)),
            ("profiles", PROFILE_COLUMNS, profile_rows(records), (0, 1)),
        )
        for table, columns, rows, identity in steps:
            if not rows:
                continue
            token = rows_token(table, [tuple(row[i] for i in identity) for row in rows])
            await self._insert_rows(table, columns, rows, token)

    async def _insert_rows(
        self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]], token: str
    ) -> None:
        settings = {"insert_deduplication_token": token, "max_partitions_per_insert_block": 0}

        def insert(client: Client) -> None:
            client.insert(
                f"`{self.database}`.{table}", rows, column_names=list(columns), settings=settings
            )

        try:
            await self._call(insert)
        except Exception as exc:
            raise classify_clickhouse(exc) from exc

    async def query_json_lines(self, sql: str) -> bytes:
        """Read-only query (the engine enforces `readonly=1`), one JSON object per line.

        With chdb, settings are per session and a per-call `readonly=1` cannot be undone (the
        client's restoring `SET` is itself refused), which would leave the writer's session
        unable to insert after the first query: read-only queries get a session of their own,
        read-only for good. A refused query may leave output of its earlier statements in that
        session (`SELECT 1; DROP ...`), so a failure discards the session."""
        if self.dsn.startswith("chdb:"):

            def run_readonly(_: Client) -> bytes:
                if self._reader is None:
                    reader = self._connect(self.dsn)
                    reader.set_client_setting("readonly", "1")
                    self._reader = reader
                try:
                    return bytes(self._reader.raw_query(sql, fmt="JSONEachRow"))
                except Exception:
                    reader, self._reader = self._reader, None
                    with contextlib.suppress(Exception):
                        reader.close()
                    raise

            return await self._call(run_readonly)

        def run(client: Client) -> bytes:
            raw = client.raw_query(sql, fmt="JSONEachRow", settings={"readonly": 1})
            return bytes(raw)

        return await self._call(run)

    async def close(self) -> None:
        def close(client: Client) -> None:
            if self._reader is not None:
                self._reader.close()
            client.close()

        if self._client is not None:
            await self._call(close)
        self._executor.shutdown(wait=True)


# PostgreSQL SQLSTATE classes that mean the data itself is refused: 22 data exception,
# 23 integrity constraint violation.
_PG_DATA_CLASSES: Final = ("22", "23")


def classify_postgres(exc: BaseException) -> Exception:
    state = getattr(exc, "sqlstate", None) or ""
    if isinstance(exc, asyncpg.PostgresError) and state[:2] in _PG_DATA_CLASSES:
        return RejectedBatch(f"{type(exc).__name__}: {exc}"[:2000])
    if isinstance(exc, TypeError | ValueError | OverflowError):
        return RejectedBatch(f"{type(exc).__name__}: {exc}"[:2000])
    return RetryableSinkError(f"{type(exc).__name__}: {str(exc)[:500]}")


def postgres_ddl(schema: str, timescale: bool) -> list[str]:
    s = f'"{schema}"'
    statements = [
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        f"""CREATE TABLE IF NOT EXISTS {s}.metrics (
            tenant text NOT NULL,
            id text NOT NULL,
            ts timestamptz NOT NULL,
            name text NOT NULL,
            value double precision NOT NULL,
            type text NOT NULL,
            labels jsonb NOT NULL DEFAULT '{{}}',
            service text NOT NULL DEFAULT '',
            host text NOT NULL DEFAULT '',
            received_at timestamptz NOT NULL,
            attrs jsonb NOT NULL DEFAULT '{{}}',
            PRIMARY KEY (tenant, id, ts)
        )""",
        f"ALTER TABLE {s}.metrics ADD COLUMN IF NOT EXISTS attrs jsonb NOT NULL DEFAULT '{{}}'",
        f"CREATE INDEX IF NOT EXISTS metrics_tenant_name_ts_idx "
        f"ON {s}.metrics (tenant, name, ts DESC)",
    ]
    rollup = f"""SELECT tenant, name, {{bucket}} AS bucket, count(*) AS samples,
            sum(value) AS sum, min(value) AS min, max(value) AS max, avg(value) AS avg
            FROM {s}.metrics GROUP BY tenant, name, bucket"""
    if timescale:
        statements += [
            "CREATE EXTENSION IF NOT EXISTS timescaledb",
            f"SELECT create_hypertable('{schema}.metrics', 'ts', "
            "if_not_exists => TRUE, migrate_data => TRUE)",
            f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {s}.metrics_1m
                WITH (timescaledb.continuous) AS """
            + rollup.format(bucket="time_bucket('1 minute', ts)")
            + " WITH NO DATA",
            f"""SELECT add_continuous_aggregate_policy('{schema}.metrics_1m',
                start_offset => INTERVAL '1 day', end_offset => INTERVAL '1 minute',
                schedule_interval => INTERVAL '1 minute', if_not_exists => TRUE)""",
        ]
    else:
        statements.append(
            f"CREATE OR REPLACE VIEW {s}.metrics_1m AS "
            + rollup.format(bucket="date_trunc('minute', ts)")
        )
    return statements + histogram_ddl(schema, timescale)  # services/writer/histograms.py


_metric_decoder: Final = msgspec.json.Decoder(Metric)


class PostgresSink:
    """asyncpg: COPY into a per-connection temp table, then INSERT ... ON CONFLICT DO NOTHING."""

    kinds: frozenset[Kind] = frozenset({"metrics"})

    def __init__(self, dsn: str, schema: str, pool_size: int = 4) -> None:
        self.dsn = dsn
        self.schema = schema
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self.timescale = False

    async def _ensure_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            try:
                self._pool = await asyncpg.create_pool(
                    self.dsn, min_size=1, max_size=self.pool_size, timeout=10, command_timeout=60
                )
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                raise RetryableSinkError(f"postgres unreachable: {exc}") from exc
        return self._pool

    async def start(self) -> None:
        pool = await self._ensure_pool()
        try:
            async with pool.acquire() as conn, conn.transaction():
                # Replicas start together: serialize DDL so IF NOT EXISTS never races.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('rivulet.schema'))")
                self.timescale = bool(
                    await conn.fetchval(
                        "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
                    )
                )
                for statement in postgres_ddl(self.schema, self.timescale):
                    await conn.execute(statement)
        except Exception as exc:
            raise classify_postgres(exc) from exc

    async def insert(self, kind: Kind, events: Sequence[StoredEvent], token: str) -> None:
        try:
            decoded = [_metric_decoder.decode(e.body) for e in events]
        except msgspec.DecodeError as exc:
            raise RejectedBatch(f"undecodable clean entry: {exc}") from exc
        metrics = [m for m in decoded if m.histogram is None]
        histograms = [m for m in decoded if m.histogram is not None]
        pool = await self._ensure_pool()
        columns = ", ".join(METRIC_COLUMNS)
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS metrics_stage "
                    f'(LIKE "{self.schema}".metrics INCLUDING DEFAULTS) ON COMMIT DELETE ROWS'
                )
                await conn.copy_records_to_table(
                    "metrics_stage",
                    records=to_metric_records(metrics),
                    columns=list(METRIC_COLUMNS),
                )
                await conn.execute(
                    f'INSERT INTO "{self.schema}".metrics ({columns}) '
                    f"SELECT {columns} FROM metrics_stage ON CONFLICT DO NOTHING"
                )
                if histograms:  # OTLP histogram points: one row each in metric_histograms
                    await insert_histograms(conn, self.schema, histograms)
        except Exception as exc:
            raise classify_postgres(exc) from exc

    async def existing_ids(self, kind: Kind, events: Sequence[StoredEvent]) -> set[str]:
        return set()  # ON CONFLICT DO NOTHING already makes re-inserts harmless

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
