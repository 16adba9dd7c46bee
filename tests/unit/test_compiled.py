"""The compiled hot path: pyproject's `[tool.rivulet] compiled`, built by setup.py with mypyc.

Where a C compiler exists the rest of the suite runs the compiled modules, because Python imports
an extension module before the source beside it. These tests check that such a module is not
older than its source, that CI builds it, and that it agrees with the pure-Python source (loaded
here under another name) on the same inputs, so both installs behave the same.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import random
import shutil
import sys
import sysconfig
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.events import make_events
from services.normalizer.normalize import Enrichment, normalize, process_batch
from shared.entries import delivery_of
from shared.events import parse_event
from shared.resp import pack_command
from shared.schemas import GeoInfo, Kind, RawEntry, UserAgentInfo
from shared.scrub import scrub_attrs, scrub_text

ROOT = Path(__file__).resolve().parents[2]
COMPILED: list[str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["rivulet"][
    "compiled"
]
KINDS: tuple[Kind, ...] = ("logs", "metrics", "spans", "rum")


def module_name(source: str) -> str:
    return source.removesuffix(".py").replace("/", ".")


def compiler_present() -> bool:
    compiler = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shutil.which(compiler.split()[0]) is not None


def load_source(source: str) -> ModuleType:
    """The module executed from its .py file, whatever is installed beside it."""
    name = "_pure_" + module_name(source).replace(".", "_")
    spec = importlib.util.spec_from_file_location(name, ROOT / source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


@pytest.fixture(scope="module")
def pure() -> Iterator[dict[str, ModuleType]]:
    yield {module_name(source): load_source(source) for source in COMPILED}


def outcome(call: Callable[..., object], *args: object) -> object:
    """The value, or the error's type name and message (the two copies' classes differ)."""
    try:
        return call(*args)
    except ValueError as error:
        return (type(error).__name__, str(error))


@pytest.mark.parametrize("source", COMPILED)
def test_a_compiled_module_is_not_older_than_its_source(source: str) -> None:
    path = Path(str(importlib.import_module(module_name(source)).__file__))
    if path.suffix == ".py":
        if os.environ.get("CI") == "true" and os.environ.get("RIVULET_PURE_PYTHON") != "1":
            assert not compiler_present(), f"{source} was not compiled although a compiler exists"
        pytest.skip("pure Python here (no C compiler, or RIVULET_PURE_PYTHON=1)")
    # The code lives in the module's own `__mypyc` library; the small module that loads it is
    # rewritten only when its text changes, so it may stay older than an edited source.
    built = max(p.stat().st_mtime for p in path.parent.glob(f"{path.name.split('.')[0]}*.so"))
    assert built >= (ROOT / source).stat().st_mtime, (
        f"{path.name} is older than {source}: run `make` (or setup.py build_ext --inplace)"
    )


def test_no_compiled_module_outlives_its_place_in_the_list() -> None:
    """A module dropped from the list (or a branch switched) must not keep running compiled."""
    stray = [
        str(path.relative_to(ROOT))
        for top in ("shared", "services", "rivulet_cli")
        for path in (ROOT / top).rglob("*.cpython-*.so")
        if not path.name.split(".")[0].endswith("__mypyc")  # a compiled module's own library
        and str(path.relative_to(ROOT)).split(".")[0] + ".py" not in COMPILED
    ]
    assert not stray, f"compiled modules not in [tool.rivulet] compiled: {stray}; `make clean`"


def bench_bodies(kind: Kind) -> list[bytes]:
    return [msgspec.json.encode(e) for e in make_events(kind, 0, 300, random.Random(7))]


BROKEN_BODIES = [
    b"",
    b"{",
    b"[]",
    b'{"ts": "yesterday", "message": "x"}',
    b'{"ts": 1, "message": 3}',
    b'{"ts": 1, "name": "m", "value": "NaN"}',
    b'{"ts": 1, "trace_id": "zz", "span_id": "00", "name": "s"}',
    b'{"ts": -1, "type": "page_view", "url": "' + b"u" * 70_000 + b'"}',
]


@pytest.mark.parametrize("kind", KINDS)
def test_parse_and_normalize_agree_with_the_source(kind: Kind, pure: dict[str, ModuleType]) -> None:
    def geo(ip: str) -> GeoInfo:
        return GeoInfo(country="DE", city="Berlin") if ip.startswith("1") else GeoInfo()

    def user_agent(user_agent: str) -> UserAgentInfo:
        return UserAgentInfo(browser=user_agent[:10])

    pure_enrichment: Any = pure["services.normalizer.normalize"].Enrichment(geo, user_agent)
    pure_parse = pure["shared.events"].parse_event
    pure_normalize = pure["services.normalizer.normalize"].normalize
    for body in [*bench_bodies(kind), *BROKEN_BODIES]:
        parsed = outcome(parse_event, kind, body, "acme", 5)
        assert parsed == outcome(pure_parse, kind, body, "acme", 5)
        entry = RawEntry(
            tenant="acme", kind=kind, id="e-1", received_at=5, body=body, ip="10.1.2.3", ua="UA/1"
        )
        clean = outcome(normalize, kind, entry, Enrichment(geo, user_agent))
        assert clean == outcome(pure_normalize, kind, entry, pure_enrichment)


# Pieces of the patterns scrub_text looks for, so that most examples reach its substitutions.
TEXT = st.lists(
    st.sampled_from(
        [
            *("a", "B", "7", "4111", "0", " ", ".", ":", "::", "-", "@x.io", "=", "&", "'", '"'),
            *("\t", "\n", "Bearer ", "password", "token", "api_key", "192.168.", "fe80"),
        ]
    ),
    max_size=40,
).map("".join)


@given(text=TEXT)
def test_scrub_text_agrees_with_the_source(text: str, pure: dict[str, ModuleType]) -> None:
    assert scrub_text(text) == pure["shared.scrub"].scrub_text(text)


@given(attrs=st.dictionaries(st.sampled_from(["api_key", "region", "msg", "x-token"]), TEXT))
def test_scrub_attrs_agrees_with_the_source(
    attrs: dict[str, str], pure: dict[str, ModuleType]
) -> None:
    assert scrub_attrs(attrs) == pure["shared.scrub"].scrub_attrs(attrs)


FIELD_NAMES = [b"tenant", b"kind", b"id", b"received_at", b"body", b"ip", b"ua", b"reason"]
FIELD_VALUES = st.binary(max_size=24) | st.sampled_from([b"acme", b"17954167780174198", b"{}"])


@given(pairs=st.lists(st.tuples(st.sampled_from(FIELD_NAMES), FIELD_VALUES), max_size=9))
def test_field_lists_decode_as_in_the_source(
    pairs: list[tuple[bytes, bytes]], pure: dict[str, ModuleType]
) -> None:
    flat = [item for pair in pairs for item in pair]
    for name in ("decode_raw_fields", "decode_clean_fields"):
        compiled = outcome(getattr(importlib.import_module("shared.entries"), name), flat)
        assert compiled == outcome(getattr(pure["shared.entries"], name), flat)


def test_process_batch_agrees_with_the_source(pure: dict[str, ModuleType]) -> None:
    enrichment = Enrichment(lambda ip: GeoInfo(), lambda ua: UserAgentInfo())
    deliveries = [
        delivery_of(
            f"{i}-0".encode(),
            {b"tenant": b"acme", b"kind": b"logs", b"id": f"e{i}".encode()}
            | {b"received_at": b"5", b"body": body, b"ip": b"10.0.0.1", b"ua": b""},
            deliveries=1 + i % 7,
        )
        for i, body in enumerate([*bench_bodies("logs"), *BROKEN_BODIES])
    ]
    deliveries.append(delivery_of(b"9-9", {b"kind": b"logs", b"body": b"{}"}))  # no tenant
    compiled = process_batch("logs", deliveries, enrichment, 5)
    assert compiled == pure["services.normalizer.normalize"].process_batch(
        "logs", deliveries, enrichment, 5
    )
    assert len(compiled.dead_letters) > len(BROKEN_BODIES)


@given(args=st.lists(st.binary(max_size=40) | st.text(max_size=20) | st.integers() | st.floats()))
def test_commands_are_framed_as_in_the_source(
    args: list[bytes | str | int | float], pure: dict[str, ModuleType]
) -> None:
    assert pack_command(args) == pure["shared.resp"].pack_command(args)
