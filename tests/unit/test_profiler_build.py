"""The committed profile_pb2 modules are exactly what build_proto generates from profile.proto."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from services.profiler import build_proto


def test_generated_modules_are_fresh() -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        reason = "grpcio-tools is not installed: cannot regenerate profile_pb2"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    assert build_proto.stale_files() == [], (
        "profile_pb2 is stale or hand-edited: run `python -m services.profiler.build_proto`"
    )
    assert build_proto.main(["--check"]) == 0


def test_check_reports_a_stale_file(tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools is not installed")
    build_proto.write(tmp_path)
    assert build_proto.stale_files(tmp_path) == []
    stub = tmp_path / "profile_pb2.pyi"
    stub.write_text(stub.read_text() + "# edited by hand\n")
    assert build_proto.stale_files(tmp_path) == ["profile_pb2.pyi"]
    (tmp_path / "profile_pb2.py").unlink()
    assert build_proto.stale_files(tmp_path) == ["profile_pb2.py", "profile_pb2.pyi"]
