"""`rivulet up` as a user runs it: banner, the printed `rivulet send` example, supervision."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.harness import free_port
from tests.servers import PG_DSN, REDIS_URL


def rivulet(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rivulet_cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_rows(cwd: Path, env: dict[str, str], want: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = rivulet(cwd, env, "query", "SELECT count() AS n FROM rivulet.logs")
        if result.returncode == 0 and json.loads(result.stdout)["n"] == want:
            return
        assert time.monotonic() < deadline, f"rows never reached {want}: {result}"
        time.sleep(0.5)


def up_environment(namespace: str, redis_url: str) -> dict[str, str]:
    """This process's environment (less RIVULET_UP_NORMALIZERS), on free ports."""
    return {
        **{k: v for k, v in os.environ.items() if k != "RIVULET_UP_NORMALIZERS"},
        "RIVULET_REDIS_URL": redis_url,
        "RIVULET_NAMESPACE": namespace,
        "RIVULET_TIMESCALE_DSN": PG_DSN,
        "RIVULET_TIMESCALE_SCHEMA": f"rivulet_{namespace}",
        "RIVULET_HTTP_PORT": str(free_port()),
        "RIVULET_QUERY_PORT": str(free_port()),
        "RIVULET_WRITER_BATCH_AGE_MS": "200",
    }


@contextlib.contextmanager
def running_up(cwd: Path, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`rivulet up` until its banner is out; yields the process and the banner. On exit, SIGTERM
    must stop it cleanly."""
    up = subprocess.Popen(
        [sys.executable, "-m", "rivulet_cli.main", "up"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert up.stdout is not None
        banner: list[str] = []
        deadline = time.monotonic() + 90
        while not any("Ctrl-C" in line for line in banner):
            assert time.monotonic() < deadline and up.poll() is None, "".join(banner)
            banner.append(up.stdout.readline())
        yield up, "".join(banner)
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            raise
    assert up.returncode == 0


def send_line(banner: str) -> list[str]:
    """The banner's `rivulet send` example, less its executable (run with this interpreter)."""
    line = next(line for line in banner.splitlines() if " send --key-id " in line)
    return shlex.split(line)[1:]


@pytest.mark.usefixtures("redis", "pg_schema")
def test_up_prints_a_working_send_example_and_restarts_children(
    tmp_path: Path, namespace: str
) -> None:
    env = up_environment(namespace, REDIS_URL)
    with running_up(tmp_path, env) as (up, banner):
        args = send_line(banner)
        sent = rivulet(tmp_path, env, *args)
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout)["accepted"] == 2
        wait_rows(tmp_path, env, 2)
        [row] = [
            json.loads(line)
            for line in rivulet(
                tmp_path, env, "query", "SELECT message FROM rivulet.logs WHERE level = 'error'"
            ).stdout.splitlines()
        ]
        assert row["message"] == "card <card> declined"
        normalizers = [
            child for child in psutil.Process(up.pid).children() if "normalizer" in child.cmdline()
        ]
        assert len(normalizers) == 2  # RIVULET_UP_NORMALIZERS' default

        # SIGKILL the writer (the chdb owner): `up` restarts it and its data survives
        writer = next(
            child for child in psutil.Process(up.pid).children() if "writer" in child.cmdline()
        )
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
        example = next(arg for arg in args if arg.endswith("example-logs.ndjson"))
        Path(example).write_text(
            '{"ts": 1700000000000000000, "service": "s", "level": "info", "message": "after"}\n'
        )
        sent = rivulet(tmp_path, env, *args)
        assert json.loads(sent.stdout)["accepted"] == 1, sent.stdout
        wait_rows(tmp_path, env, 3, timeout=90)


@pytest.mark.usefixtures("pg_schema")
def test_up_children_reach_its_private_redis_through_the_unix_socket(
    tmp_path: Path, namespace: str
) -> None:
    # nothing listens at this URL: `up` starts a private Redis
    env = up_environment(namespace, f"redis://127.0.0.1:{free_port()}/0")
    env["RIVULET_UP_NORMALIZERS"] = "1"
    with running_up(tmp_path, env) as (up, banner):
        socket_url = f"unix://{tmp_path.resolve() / 'var' / 'redis' / 'redis.sock'}?db=0"
        assert f"services use {socket_url}" in banner, banner
        services = [
            c for c in psutil.Process(up.pid).children() if "rivulet_cli.main" in c.cmdline()
        ]
        assert len(services) == 4  # gateway, normalizer, writer, profiler
        assert {child.environ()["RIVULET_REDIS_URL"] for child in services} == {socket_url}
        sent = rivulet(tmp_path, env, *send_line(banner))
        assert json.loads(sent.stdout)["accepted"] == 2, sent.stdout + sent.stderr
        wait_rows(tmp_path, env, 2)
