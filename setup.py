"""Builds the optional compiled hot path; everything else is in pyproject.toml.

The modules in `[tool.rivulet] compiled` (event validation, PII scrubbing, normalisation, stream
entry codecs, command framing) are compiled with mypyc when it and a C compiler are present: the
same source, type-checked by `mypy --strict`, at ~22% fewer instructions per normalised log event
and ~32% fewer per gateway validation (docs/performance.md). Without a compiler, or with
RIVULET_PURE_PYTHON=1, the pure-Python modules are installed and behave the same. mypyc
type-checks what the modules import, so the dependencies must be installed first: `make`
installs the project pure, then compiles in place (`setup.py build_ext --inplace`); the
Dockerfile installs the dependencies before the project. When mypyc cannot run, the install goes
on as pure Python, with a warning.
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
    try:
        extensions: list[Extension] = mypycify(compiled_sources(), opt_level="3", separate=True)
    except SystemExit as failure:
        # mypyc type-checks what the modules import; when the dependencies are not installed
        # yet (a fresh environment), it cannot, and the modules stay pure Python.
        print(f"rivulet: not compiling the hot path ({failure}); installing pure Python")
        return []
    return extensions


setup(ext_modules=ext_modules())
