"""Unit tests for services.profiler.report and services.profiler.units."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from services.profiler import units
from services.profiler.pprof import ParsedProfile, parse_profile
from services.profiler.report import (
    DiffRow,
    TopRow,
    diff,
    flamegraph_svg,
    folded,
    format_top,
    top,
)
from services.profiler.synth import ProfileBuilder

CPU_TYPES = [("samples", "count"), ("cpu", "nanoseconds")]
MS = 1_000_000
SVG = "{http://www.w3.org/2000/svg}"


def cpu_profile() -> ParsedProfile:
    """main -> a -> b (30ms), main -> a (20ms), main -> c (50ms), main -> c -> b (5ms)."""
    b = ProfileBuilder(CPU_TYPES)
    b.add(["b", "a", "main"], [3, 30 * MS])
    b.add(["a", "main"], [2, 20 * MS])
    b.add(["c", "main"], [5, 50 * MS])
    b.add(["b", "c", "main"], [1, 5 * MS])
    return parse_profile(b.encode())


def by_name(rows: tuple[TopRow, ...]) -> dict[str, tuple[int, int]]:
    return {r.name: (r.flat, r.cum) for r in rows}


def test_top_flat_cum_and_pprof_order() -> None:
    report = top(cpu_profile())
    assert report.sample_type.type == "cpu"  # the last sample type by default
    assert report.total == 105 * MS
    assert [(r.name, r.flat, r.cum) for r in report.rows] == [
        ("c", 50 * MS, 55 * MS),
        ("b", 35 * MS, 35 * MS),
        ("a", 20 * MS, 50 * MS),
        ("main", 0, 105 * MS),
    ]
    c, b, _, main = report.rows
    assert c.flat_pct == pytest.approx(100 * 50 / 105)
    assert b.sum_pct == pytest.approx(100 * 85 / 105)
    assert main.cum_pct == pytest.approx(100.0)
    assert all(r.inline == "" for r in report.rows)


def test_equal_flat_sorts_by_name_then_cum() -> None:
    b = ProfileBuilder([("samples", "count")])
    b.add(["zeta"], [5])
    b.add(["alpha", "root2"], [5])
    b.add(["mid", "root1"], [5])
    names = [r.name for r in top(parse_profile(b.encode())).rows]
    assert names == ["alpha", "mid", "zeta", "root1", "root2"]


def test_sample_index_by_name_and_number_and_sort_by_cum() -> None:
    p = cpu_profile()
    assert top(p, "samples").total == 11
    assert top(p, 0).total == 11
    assert top(p, "1").total == 105 * MS
    names = [r.name for r in top(p, sort_by_cum=True).rows]
    assert names == ["main", "c", "a", "b"]
    with pytest.raises(ValueError):
        top(p, "alloc_space")


def test_recursion_counts_cum_once_per_sample() -> None:
    b = ProfileBuilder([("samples", "count")])
    b.add(["f", "g", "f", "f", "main"], [10])
    rows = by_name(top(parse_profile(b.encode())).rows)
    assert rows == {"f": (10, 10), "g": (0, 10), "main": (0, 10)}


def test_merging_profiles_sums_values_and_aligns_units() -> None:
    a = ProfileBuilder([("cpu", "nanoseconds")])
    a.add(["work", "main"], [5 * MS])
    b = ProfileBuilder([("samples", "count"), ("cpu", "milliseconds")])
    b.add(["work", "main"], [1, 7])
    b.add(["idle", "main"], [1, 3])
    merged = top([parse_profile(a.encode()), parse_profile(b.encode())], "cpu")
    assert merged.sample_type.unit == "nanoseconds"
    assert by_name(merged.rows) == {
        "work": (12 * MS, 12 * MS),
        "idle": (3 * MS, 3 * MS),
        "main": (0, 15 * MS),
    }
    bytes_profile = ProfileBuilder([("cpu", "bytes")])
    with pytest.raises(ValueError, match="incompatible units"):
        top([parse_profile(a.encode()), parse_profile(bytes_profile.encode())], "cpu")


def test_inline_and_partial_inline_markers_and_noinlines() -> None:
    b = ProfileBuilder([("samples", "count")])
    b.add([("memcpy", "copy"), "main"], [10])  # memcpy inlined into copy
    b.add(["memcpy", "main"], [1])  # ...and also called for real from main
    b.add([("helper", "copy"), "main"], [4])  # helper only ever inlined
    report = top(parse_profile(b.encode()))
    marks = {r.name: r.inline for r in report.rows}
    assert marks == {"memcpy": "(partial-inline)", "helper": "(inline)", "copy": "", "main": ""}

    flat = top(parse_profile(b.encode()), noinlines=True)
    assert by_name(flat.rows) == {"copy": (14, 14), "memcpy": (1, 1), "main": (0, 15)}
    assert {r.inline for r in flat.rows} == {""}


def test_filefunctions_granularity_names_function_and_file() -> None:
    b = ProfileBuilder([("samples", "count")])
    b.function("work", "/proc/self/cwd/./src//work.go")
    b.add(["work", "main"], [3])
    names = [r.name for r in top(parse_profile(b.encode()), granularity="filefunctions").rows]
    assert names == ["work src/work.go", "main main.go"]


def test_unnamed_frames_print_their_binary_or_unknown() -> None:
    b = ProfileBuilder([("samples", "count")], mapping_file="/usr/lib/libfoo.so")
    b.msg.location.add(id=50, mapping_id=1, address=0x2000)
    b.msg.location.add(id=51, address=0x3000)
    b.msg.sample.add(location_id=[50, b.location("main")], value=[2])
    b.msg.sample.add(location_id=[51, b.location("main")], value=[1])
    assert by_name(top(parse_profile(b.encode())).rows) == {
        "[libfoo.so]": (2, 2),
        "<unknown>": (1, 1),
        "main": (0, 3),
    }


def test_format_top_layout_and_time_units() -> None:
    text = format_top(top(cpu_profile()))
    assert text == (
        "Showing nodes accounting for 105ms, 100% of 105ms total\n"
        "      flat  flat%   sum%        cum   cum%\n"
        "      50ms 47.62% 47.62%       55ms 52.38%  c\n"
        "      35ms 33.33% 80.95%       35ms 33.33%  b\n"
        "      20ms 19.05%   100%       50ms 47.62%  a\n"
        "         0     0%   100%      105ms   100%  main\n"
    )


def test_format_top_drops_light_nodes_and_limits_the_count() -> None:
    b = ProfileBuilder([("samples", "count"), ("cpu", "nanoseconds")])
    b.add(["hot", "main"], [1, 2_000 * MS])
    b.add(["warm", "main"], [1, 500 * MS])
    b.add(["cold", "main"], [1, 10 * MS])
    report = top(parse_profile(b.encode()))
    text = format_top(report, nodecount=2, nodefraction=0.05, edgefraction=0.01)
    assert text.splitlines()[:3] == [
        "Showing nodes accounting for 2500ms, 99.60% of 2510ms total",
        "Dropped 1 node (cum <= 125.50ms)",
        "Showing top 2 nodes out of 3",
    ]
    assert [line.split()[-1] for line in text.splitlines()[4:]] == ["hot", "warm"]


def test_format_top_scales_bytes_and_prints_counts_plain() -> None:
    b = ProfileBuilder([("alloc_objects", "count"), ("alloc_space", "bytes")])
    b.add(["big", "main"], [3, 50 * 1024 * 1024])
    b.add(["small", "main"], [1000, 100 * 1024])
    p = parse_profile(b.encode())
    space = format_top(top(p), nodefraction=0).splitlines()
    assert space[0] == "Showing nodes accounting for 50.10MB, 100% of 50.10MB total"
    assert space[2].split()[:2] == ["50MB", "99.81%"]
    assert space[3].split()[0] == "0.10MB"
    # the smallest value sets the unit when the total is not 100x larger
    near = ProfileBuilder([("alloc_space", "bytes")])
    near.add(["big", "main"], [5 * 1024 * 1024])
    near.add(["small", "main"], [512 * 1024])
    assert format_top(top(parse_profile(near.encode()))).splitlines()[0] == (
        "Showing nodes accounting for 5632kB, 100% of 5632kB total"
    )
    objects = format_top(top(p, "alloc_objects"), nodefraction=0).splitlines()
    assert objects[0] == "Showing nodes accounting for 1003, 100% of 1003 total"
    assert objects[2].split()[0] == "1000"


def test_format_top_profile_labels() -> None:
    b = ProfileBuilder(CPU_TYPES, mapping_file="/opt/app/server")
    b.msg.duration_nanos = 10_000_000_000
    b.msg.time_nanos = 1_700_000_000_000_000_000
    b.add(["work", "main"], [1, 2_000 * MS])
    text = format_top(top(parse_profile(b.encode())), profile_labels=True)
    assert text.splitlines()[:4] == [
        "File: server",
        "Type: cpu",
        "Time: 2023-11-14 22:13:20 UTC",
        "Duration: 10s, Total samples = 2s (20.00%)",
    ]


def test_units_match_pprof() -> None:
    assert units.scaled_label(1_100, "milliseconds", "s") == "1.10s"
    assert units.scaled_label(480 * MS, "nanoseconds", "ms") == "480ms"
    assert units.scaled_label(0, "nanoseconds", "ms") == "0"
    assert units.scaled_label(1536, "bytes", "minimum") == "1.50kB"
    assert units.scaled_label(42, "count", "count") == "42"
    assert units.scaled_label(7, "requests", "requests") == "7requests"
    assert units.label(90 * 60 * 10**9, "nanoseconds") == "1.50hrs"
    assert units.percentage(10, 1120) == " 0.89%"
    assert units.percentage(1, 111) == "  0.9%"
    assert units.percentage(1100, 1120) == "98.21%"
    assert units.percentage(11199, 11200) == "  100%"
    assert units.percentage(1119, 1120) == "99.91%"
    assert units.percentage(0, 0) == "    0%"


def test_folded_stacks() -> None:
    b = ProfileBuilder(CPU_TYPES)
    b.add(["b", "a", "main"], [3, 30])
    b.add(["b", "a", "main"], [1, 10])
    b.add([("inl", "c"), "main"], [1, 5])
    b.add(["we;ird\nname", "main"], [1, 1])
    b.add(["zero", "main"], [0, 0])
    assert folded(parse_profile(b.encode())) == ("main;a;b 40\nmain;c;inl 5\nmain;we:ird name 1\n")
    assert folded(parse_profile(b.encode()), "samples").splitlines()[0] == "main;a;b 4"


def test_flamegraph_svg_is_self_contained_and_proportional() -> None:
    b = ProfileBuilder(CPU_TYPES)
    b.add(["alpha", "main"], [3, 75 * MS])
    b.add(["<beta & co>", "main"], [1, 25 * MS])
    svg = flamegraph_svg(parse_profile(b.encode()), title="cpu <test>")
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag == f"{SVG}svg"
    frames = {g.attrib["data-n"]: g for g in root.iter(f"{SVG}g") if g.attrib.get("class") == "f"}
    assert set(frames) == {"all", "main", "alpha", "<beta & co>"}
    widths = {n: float(g.find(f"{SVG}rect").attrib["width"]) for n, g in frames.items()}  # type: ignore[union-attr]
    assert widths["alpha"] == pytest.approx(3 * widths["<beta & co>"], rel=1e-3)
    assert widths["main"] == pytest.approx(widths["all"])
    tips = {n: g.findtext(f"{SVG}title") for n, g in frames.items()}
    assert tips["alpha"] == "alpha (75ms, 75.00%)"
    assert tips["<beta & co>"] == "<beta & co> (25ms, 25.00%)"
    assert root.findtext(f"{SVG}script")
    assert not re.search(r"(href|src)=", svg)
    assert "cpu &lt;test&gt;" in svg


def test_flamegraph_truncates_names_to_fit() -> None:
    b = ProfileBuilder([("samples", "count")])
    long = "pkg.VeryLongFunctionName" * 10
    b.add([long, "main"], [1])
    b.add(["other", "main"], [99])
    root = ET.fromstring(flamegraph_svg(parse_profile(b.encode())))
    texts = {
        g.attrib["data-n"]: g.findtext(f"{SVG}text") or ""
        for g in root.iter(f"{SVG}g")
        if g.attrib.get("class") == "f"
    }
    assert texts[long] == ""  # 1% of 1180px: no room for three characters
    assert texts["other"].startswith("other")


def test_flamegraph_of_an_empty_profile() -> None:
    svg = flamegraph_svg(parse_profile(ProfileBuilder(CPU_TYPES).encode()))
    assert "no samples" in svg
    ET.fromstring(svg)


def test_diff_sorted_by_absolute_delta() -> None:
    base = ProfileBuilder([("cpu", "nanoseconds")])
    base.add(["a", "main"], [50])
    base.add(["b", "main"], [50])
    new = ProfileBuilder([("cpu", "nanoseconds")])
    new.add(["a", "main"], [20])
    new.add(["b", "main"], [70])
    new.add(["c", "main"], [10])
    rows = diff(parse_profile(base.encode()), parse_profile(new.encode()))
    assert rows == [
        DiffRow("a", 0.5, 0.2, pytest.approx(-0.3)),  # type: ignore[arg-type]
        DiffRow("b", 0.5, 0.7, pytest.approx(0.2)),  # type: ignore[arg-type]
        DiffRow("c", 0.0, 0.1, pytest.approx(0.1)),  # type: ignore[arg-type]
        DiffRow("main", 0.0, 0.0, 0.0),
    ]
    cum = diff(parse_profile(base.encode()), parse_profile(new.encode()), measure="cum")
    assert cum[-1].function == "main" and cum[-1].delta == 0.0
