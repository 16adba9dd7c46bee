"""Fixtures for real servers: Redis, PostgreSQL and the ClickHouse engine (chdb).

Each test gets its own Redis namespace, PostgreSQL schema and ClickHouse database, so tests never
flush or share state. A server that is not reachable skips the test locally and fails it in CI
(`CI=true`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared.config import Settings, load_settings
from shared.localservers import postgres_reachable
from shared.streams import connect
from tests.harness import Pipeline
from tests.servers import PG_DSN, REDIS_URL, SHARED_DIR, unavailable


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis(namespace: str) -> AsyncIterator[aioredis.Redis]:
    client = connect(REDIS_URL)
    try:
        await client.ping()
    except RedisError as exc:
        await client.aclose()
        unavailable(f"redis not reachable at {REDIS_URL}: {exc}")
    yield client
    keys = [key async for key in client.scan_iter(match=f"{namespace}:*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture(scope="session")
def chdb_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One engine path for the whole session: chdb allows one path per process."""
    return f"chdb://{tmp_path_factory.mktemp('clickhouse')}"


@pytest.fixture
def clickhouse_database(namespace: str) -> str:
    return f"rivulet_{namespace}"


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    if not postgres_reachable(PG_DSN):
        unavailable(f"postgres not reachable at {PG_DSN}")
    return PG_DSN


@pytest.fixture
async def pg_schema(pg_dsn: str, namespace: str) -> AsyncIterator[str]:
    schema = f"rivulet_{namespace}"
    yield schema
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
def settings(namespace: str, chdb_dsn: str, clickhouse_database: str) -> Settings:
    """Settings isolated to this test; short idle/age bounds so tests run fast."""
    base = load_settings(environ={})
    return msgspec.structs.replace(
        base,
        redis_url=REDIS_URL,
        namespace=namespace,
        clickhouse_url=chdb_dsn,
        clickhouse_database=clickhouse_database,
        timescale_dsn=PG_DSN,
        timescale_schema=f"rivulet_{namespace}",
        writer_batch_age_ms=100,
        claim_idle_ms=1000,
        trim_interval_s=0.5,
        retry_base_s=0.05,
        retry_max_s=0.5,
    )


@pytest.fixture
def pipeline(tmp_path: Path, namespace: str) -> Iterator[Pipeline]:
    """The issue's topology as processes: gateway, 2 normalizers, the chdb-owning writer
    (logs/spans/rum, two consumers per kind) and 2 metrics writers."""
    pipe = Pipeline(tmp_path, namespace)
    pipe.require_servers()
    try:
        pipe.start_standard()
        yield pipe
    finally:
        pipe.stop()
        pipe.cleanup()


@pytest.fixture
def geoip_test_db() -> Iterator[Path]:
    path = SHARED_DIR / "testdata" / "geoip" / "GeoIP2-City-Test.mmdb"
    if not path.exists():
        pytest.skip("../shared/testdata is absent (a user's clone)")
    yield path
