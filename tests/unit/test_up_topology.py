"""`rivulet up`'s children: how many normalizers, a clear refusal of a bad count, and the Redis
URL they get when `rivulet up` started a private Redis."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rivulet_cli.up import MAX_NORMALIZERS, child_environment, children_argv
from shared.config import load_settings
from shared.localservers import PrivateServer


def test_default_runs_two_normalizers_with_stable_consumer_names() -> None:
    topology = children_argv(load_settings(environ={}).up_normalizers)
    names = [name for name, _ in topology]
    assert names == ["gateway", "normalizer-1", "normalizer-2", "writer", "profiler"]
    consumers = [argv[argv.index("--consumer") + 1] for _, argv in topology if "--consumer" in argv]
    assert len(set(consumers)) == len(consumers)


def test_the_count_comes_from_the_environment() -> None:
    settings = load_settings(environ={"RIVULET_UP_NORMALIZERS": "3"})
    normalizers = [
        argv for _, argv in children_argv(settings.up_normalizers) if argv[0] == "normalizer"
    ]
    assert [argv[-1] for argv in normalizers] == ["normalizer-1", "normalizer-2", "normalizer-3"]


@pytest.mark.parametrize("count", [0, -1, MAX_NORMALIZERS + 1])
def test_a_count_out_of_range_is_refused(count: int) -> None:
    with pytest.raises(ValueError, match=f"normalizers must be between 1 and {MAX_NORMALIZERS}"):
        children_argv(count)


def test_up_refuses_a_bad_count_before_starting_anything() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rivulet_cli.main", "up", "--normalizers", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "rivulet up: normalizers must be between 1 and 64, got 0" in result.stderr
    assert "started private" not in result.stdout


def test_children_use_a_private_redis_through_its_socket() -> None:
    redis = PrivateServer(
        "redis", "redis://127.0.0.1:6390/0", None, local_url="unix:///r.sock?db=0"
    )
    postgres = PrivateServer("postgres", "postgresql://127.0.0.1:5433/x", None)
    assert child_environment([postgres, redis]) == {"RIVULET_REDIS_URL": "unix:///r.sock?db=0"}


def test_children_keep_the_configured_redis_otherwise() -> None:
    assert child_environment([]) == {}
    no_socket = PrivateServer("redis", "redis://127.0.0.1:6390/0", None)
    assert child_environment([no_socket]) == {}
