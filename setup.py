"""Builds the optional compiled hot path; everything else is in pyproject.toml.

The modules in `[tool.rivulet] compiled` (event validation, PII scrubbing, normalisation) are
compiled with mypyc when it and a C compiler are present: the same source, type-checked by
`mypy --strict`, at ~22% fewer instructions per normalised log event and ~32% fewer per
gateway validation (docs/performance.md). Without a compiler, or with RIVULET_PURE_PYTHON=1,
the pure-Python modules are installed and behave the same. A compiler that is present but
fails stops the install with its error; RIVULET_PURE_PYTHON=1 then installs without it.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
import tomllib
from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent


def compiled_sources() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        sources: list[str] = tomllib.load(f)["tool"]["rivulet"]["compiled"]
    return sources


def can_compile() -> bool:
    if os.environ.get("RIVULET_PURE_PYTHON") == "1":
        return False
    compiler = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    return shutil.which(compiler.split()[0]) is not None and headers.is_file()


def ext_modules() -> list[Extension]:
    if not can_compile():
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        return []
    extensions: list[Extension] = mypycify(compiled_sources(), opt_level="3", group_name="rivulet")
    return extensions


setup(ext_modules=ext_modules())
