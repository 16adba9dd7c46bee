"""Where the test servers are, and what to do when one is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REDIS_URL = os.environ.get("RIVULET_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_DSN = os.environ.get("RIVULET_TEST_PG_DSN", "postgresql://127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"
SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"


def unavailable(reason: str) -> None:
    """Skip locally; fail in CI, where every server must be present."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: servers must be available)")
    pytest.skip(reason)
