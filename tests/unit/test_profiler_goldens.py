"""Acceptance: `format_top` against `go tool pprof -top` goldens and the speedscope profile.

The data lives in the shared test data beside the repository (../shared/testdata/pprof, see its
README); the tests skip when it is absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from services.profiler.pprof import ParsedProfile, parse_profile
from services.profiler.report import format_top, top

PPROF_DIR = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "pprof"
DRIVER = PPROF_DIR / "pprof-driver"
# The options pprof's own driver tests run with.
TEST_TRIM: dict[str, Any] = {"nodecount": 20, "nodefraction": 0.05, "edgefraction": 0.01}

GOLDENS: list[tuple[str, str, dict[str, Any]]] = [
    ("pprof.cpu.flat.functions.text", "cpu.pb.gz", {}),
    ("pprof.cpu.flat.functions.noinlines.text", "cpu.pb.gz", {"noinlines": True}),
    (
        "pprof.cpu.flat.filefunctions.noinlines.text",
        "cpu.pb.gz",
        {"noinlines": True, "granularity": "filefunctions"},
    ),
    ("pprof.long_name_funcs.text", "long_name_funcs.pb.gz", {}),
]


class Row(msgspec.Struct, frozen=True):
    flat: str
    flat_pct: str
    cum: str
    cum_pct: str
    name: str  # with its "(inline)" marker, if any


def load(path: Path) -> ParsedProfile:
    if not path.exists():
        pytest.skip(f"shared test data absent: {path}")
    return parse_profile(path.read_bytes())


def rows(text: str) -> tuple[str, list[Row]]:
    """The "Showing nodes ..." line and the table rows of a `-top` text."""
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("Showing nodes accounting for"))
    start = next(
        i
        for i, line in enumerate(lines)
        if line.split() == ["flat", "flat%", "sum%", "cum", "cum%"]
    )
    out = []
    for line in lines[start + 1 :]:
        flat, flat_pct, _sum, cum, cum_pct, *name = line.split()
        out.append(Row(flat, flat_pct, cum, cum_pct, " ".join(name)))
    return header, out


@pytest.mark.parametrize(("golden", "source", "options"), GOLDENS, ids=[g[0] for g in GOLDENS])
def test_top_matches_pprof_golden(golden: str, source: str, options: dict[str, Any]) -> None:
    profile = load(DRIVER / source)
    expected_text = (DRIVER / golden).read_text()
    ours_text = format_top(top(profile, **options), **TEST_TRIM)

    expected_header, expected_rows = rows(expected_text)
    header, ours = rows(ours_text)
    assert header == expected_header
    # Every golden row, function by function, in the golden's order.
    positions = {row.name: i for i, row in enumerate(ours)}
    for row in expected_rows:
        assert row.name in positions, f"{row.name} missing from:\n{ours_text}"
        assert ours[positions[row.name]] == row
    assert sorted(positions[r.name] for r in expected_rows) == [
        positions[r.name] for r in expected_rows
    ]
    assert ours_text == expected_text  # and, in fact, byte for byte


def test_speedscope_simple_profile_matches_readme_table() -> None:
    profile = load(PPROF_DIR / "speedscope" / "simple.prof")
    assert len(profile.samples) == 9
    assert [vt.type for vt in profile.sample_types] == ["samples", "cpu"]
    assert not any(f.inlined for s in profile.samples for f in s.stack.frames)

    report = top(profile, "cpu")
    assert report.total == 1_500_000_000
    text = format_top(report, **TEST_TRIM)
    header, ours = rows(text)
    assert header.endswith("of 1500ms total")
    by_name = {row.name: row for row in ours}
    expected = {
        "main.alpha": ("480ms", "480ms"),
        "main.beta": ("390ms", "390ms"),
        "main.gamma": ("270ms", "270ms"),
        "main.delta": ("220ms", "580ms"),
        "runtime.duffcopy": ("110ms", "110ms"),
        "main.main": ("0", "1360ms"),
        "runtime.main": ("0", "1360ms"),
    }
    assert {name: (by_name[name].flat, by_name[name].cum) for name in expected} == expected
    names = [row.name for row in ours]
    assert names[:5] == ["main.alpha", "main.beta", "main.gamma", "main.delta", "runtime.duffcopy"]


def test_speedscope_default_trim_shows_every_function_in_seconds() -> None:
    report = top(load(PPROF_DIR / "speedscope" / "simple.prof"))
    header, ours = rows(format_top(report))
    assert header == "Showing nodes accounting for 1.50s, 100% of 1.50s total"
    assert len(ours) == len(report.rows) == 25
    assert ours[0] == Row("0.48s", "32.00%", "0.48s", "32.00%", "main.alpha")
