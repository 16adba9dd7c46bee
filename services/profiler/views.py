"""The profile reports both `rivulet profile ...` and the profiler's HTTP endpoints answer.

Input: a `ProfileStore` (stored profiles, read through `rivulet query`'s route), a `Selection` and
`ReportOptions`. Output: text exactly as `services.profiler.report` formats it — `top` in
`go tool pprof -top`'s layout, folded stacks or an SVG flame graph, a diff table — or JSON.
Nothing here writes anywhere; the only I/O is the store's read-only queries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import msgspec

from services.profiler import report
from services.profiler.selection import (
    FlameFormat,
    ReportOptions,
    Selection,
    SelectionError,
    granularity_option,
    parse_window,
    sample_index_option,
    selection,
)
from services.profiler.store import ProfileStore

_json: Final = msgspec.json.Encoder()


class TopAnswer(msgspec.Struct, frozen=True):
    sample_type: str
    unit: str
    total: int
    profiles: int
    rows: list[report.TopRow]


async def top_report(
    store: ProfileStore, sel: Selection, opts: ReportOptions
) -> tuple[report.TopReport, int]:
    profiles, metas = await store.load(sel, opts.sample_index)
    return (
        report.top(
            profiles,
            sort_by_cum=opts.sort_by_cum,
            granularity=opts.granularity,
            noinlines=opts.noinlines,
        ),
        len(metas),
    )


async def top_text(store: ProfileStore, sel: Selection, opts: ReportOptions) -> str:
    """`go tool pprof -top` over the selection (several profiles: merged by summing)."""
    result, _ = await top_report(store, sel, opts)
    return report.format_top(
        result,
        nodecount=opts.nodecount,
        nodefraction=opts.nodefraction,
        edgefraction=opts.edgefraction,
        profile_labels=opts.profile_labels,
    )


async def top_json(store: ProfileStore, sel: Selection, opts: ReportOptions) -> bytes:
    """Every node, untrimmed, first `nodecount` rows (0: all)."""
    result, count = await top_report(store, sel, opts)
    rows = list(result.rows)
    if opts.nodecount > 0:
        rows = rows[: opts.nodecount]
    return _json.encode(
        TopAnswer(
            sample_type=result.sample_type.type,
            unit=result.sample_type.unit,
            total=result.total,
            profiles=count,
            rows=rows,
        )
    )


async def flamegraph(
    store: ProfileStore, sel: Selection, opts: ReportOptions, fmt: FlameFormat, title: str = ""
) -> str:
    profiles, _ = await store.load(sel, opts.sample_index)
    if fmt == "svg":
        return report.flamegraph_svg(profiles, title=title or _title(sel))
    return report.folded(profiles)


async def diff(
    store: ProfileStore, base: Selection, new: Selection, opts: ReportOptions
) -> list[report.DiffRow]:
    """Share of each function in `base` vs `new` (flat, or cum with `sort_by_cum`)."""
    base_profiles, _ = await store.load(base, opts.sample_index)
    chosen = base_profiles[0].sample_types[0].type
    new_profiles, _ = await store.load(new, chosen)
    return report.diff(
        base_profiles,
        new_profiles,
        measure="cum" if opts.sort_by_cum else "flat",
        granularity=opts.granularity,
    )


def diff_json(rows: list[report.DiffRow], limit: int) -> bytes:
    return _json.encode(rows[:limit] if limit > 0 else rows)


def _title(sel: Selection) -> str:
    parts = [p for p in (sel.service, sel.type, sel.profile_id) if p]
    return " ".join(parts) or "Flame Graph"


# --- options from an HTTP query string -------------------------------------------------------

_TRUE: Final = frozenset({"1", "true", "yes", "on"})


def flag(params: Mapping[str, str], name: str) -> bool:
    return params.get(name, "").strip().lower() in _TRUE


def _number(params: Mapping[str, str], name: str, default: float) -> float:
    raw = params.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SelectionError(f"{name} must be a number, not {raw[:40]!r}") from None
    if not 0 <= value <= 1:
        raise SelectionError(f"{name} must be between 0 and 1")
    return value


def _count(params: Mapping[str, str], name: str) -> int:
    raw = params.get(name, "") or "0"
    if not raw.isdigit() or len(raw) > 9:
        raise SelectionError(f"{name} must be a non-negative integer, not {raw[:40]!r}")
    return int(raw)


def options_from(params: Mapping[str, str]) -> ReportOptions:
    return ReportOptions(
        sample_index=sample_index_option(params.get("sample_index")),
        sort_by_cum=flag(params, "cum"),
        granularity=granularity_option(params.get("granularity")),
        noinlines=flag(params, "noinlines"),
        nodecount=_count(params, "n"),
        nodefraction=_number(params, "nodefraction", report.DEFAULT_NODEFRACTION),
        edgefraction=_number(params, "edgefraction", report.DEFAULT_EDGEFRACTION),
        profile_labels=flag(params, "labels"),
    )


def selection_from(params: Mapping[str, str], now_ns: int, since_key: str = "since") -> Selection:
    return selection(
        tenant=params.get("tenant"),
        service=params.get("service"),
        type_=params.get("type"),
        since=params.get(since_key),
        profile_id=params.get("profile"),
        now_ns=now_ns,
    )


def diff_selections(params: Mapping[str, str], now_ns: int) -> tuple[Selection, Selection]:
    base, new = params.get("base", ""), params.get("new", "")
    if not base or not new:
        raise SelectionError("give both base and new windows (e.g. base=2h..1h&new=1h)")
    if not params.get("service"):
        raise SelectionError("give a service")
    common = selection(
        tenant=params.get("tenant"),
        service=params.get("service"),
        type_=params.get("type"),
        since=base,
        profile_id=None,
        now_ns=now_ns,
    )
    return common, msgspec.structs.replace(common, window=parse_window(new, now_ns))
