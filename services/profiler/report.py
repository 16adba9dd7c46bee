"""Reports over parsed profiles: pprof's `-top`, folded stacks, a flame graph SVG, a diff (pure).

Every report takes one profile or several; several are merged by summing the values of the
chosen sample type. `sample_index` follows pprof's `-sample_index` (see
`pprof.sample_type_index`; default: the profile's default_sample_type, else the last type) and is
resolved on the first profile, then matched by type name in the others. When their units differ
within one family (ms and ns, kB and B), values are converted to the finest unit, as pprof's
merge does; other mismatches raise ValueError.

`top` / `format_top` reproduce `go tool pprof -top` (internal/report, internal/graph):
- nodes are functions (`functions`) or function + source file (`filefunctions`); with
  `noinlines`, inlined frames are dropped and their cost goes to the function they were inlined
  into;
- flat is what a node costs as a sample's leaf; cum counts a node once per sample even when it
  recurses; the total is the sum of |value| over all samples;
- rows are sorted by |flat| desc, then name asc, then |cum| desc (`sort_by_cum`: |cum| desc,
  name asc, |flat| desc); ties end on pprof's printed node info;
- a node is "(inline)" when every call edge into it is an inlined call, "(partial-inline)" when
  only some are; edges are those pprof keeps after trimming;
- trimming (`format_top`): nodes with |cum| < nodefraction x (sum of flat) are dropped and the
  graph rebuilt without them (bridging edges join the nearest kept caller), then the first
  `nodecount` nodes are kept, then edges lighter than edgefraction x (sum of flat) are removed;
- values print in the unit pprof's `-unit=minimum` picks from the smallest shown value and the
  total (see `units`).

`folded` prints Brendan Gregg's folded stacks; `flamegraph_svg` draws them as a standalone SVG;
`diff` compares each function's share of the total between two sets of profiles.
"""

from __future__ import annotations

import datetime as dt
import html
import posixpath
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Final, Literal, TypeAlias

import msgspec

from services.profiler import units
from services.profiler.pprof import Frame, ParsedProfile, Sample, ValueType, sample_type_index

Granularity: TypeAlias = Literal["functions", "filefunctions"]
Profiles: TypeAlias = ParsedProfile | Sequence[ParsedProfile]

# pprof's CLI defaults (its own tests use 0.05 / 0.01 with nodecount 20).
DEFAULT_NODEFRACTION: Final = 0.005
DEFAULT_EDGEFRACTION: Final = 0.001


class NodeKey(msgspec.Struct, frozen=True):
    """What makes two frames one report node (pprof's NodeInfo at function granularity)."""

    name: str
    file: str = ""
    start_line: int = 0
    objfile: str = ""  # mapping file, kept only for frames without a function name

    def printable(self) -> str:
        parts = [self.name] if self.name else []
        if self.file:
            parts.append(self.file)
        elif not self.name:
            parts.append(f"[{_go_base(self.objfile)}]" if self.objfile else "<unknown>")
        return " ".join(parts)


class CallPath(msgspec.Struct, frozen=True):
    """A distinct call path (root first, indexes into `TopReport.nodes`) and its summed value."""

    nodes: tuple[int, ...]
    inlined: tuple[bool, ...]  # per node: reached from its caller through an inlined call
    value: int


class TopRow(msgspec.Struct, frozen=True):
    name: str
    flat: int
    flat_pct: float
    sum_pct: float
    cum: int
    cum_pct: float
    inline: str = ""  # "", "(inline)" or "(partial-inline)"


class ReportHeader(msgspec.Struct, frozen=True):
    """What pprof prints above a report when it shows profile labels."""

    main_binary: str = ""
    build_id: str = ""
    comments: tuple[str, ...] = ()
    doc_url: str = ""
    time_nanos: int = 0
    duration_nanos: int = 0


class TopReport(msgspec.Struct, frozen=True):
    """Untrimmed `-top` rows, plus the call paths `format_top` needs to trim like pprof."""

    sample_type: ValueType
    total: int
    rows: tuple[TopRow, ...]
    sort_by_cum: bool
    nodes: tuple[NodeKey, ...]
    paths: tuple[CallPath, ...]
    header: ReportHeader = ReportHeader()


class DiffRow(msgspec.Struct, frozen=True):
    """A function's share of the total (0..1) in the base and the new profiles."""

    function: str
    base_share: float
    new_share: float
    delta: float  # new_share - base_share


# --- selection and merging ----------------------------------------------------------------------


def _as_list(profiles: Profiles) -> list[ParsedProfile]:
    items = [profiles] if isinstance(profiles, ParsedProfile) else list(profiles)
    if not items:
        raise ValueError("no profiles")
    return items


def _selected(
    profiles: Profiles, sample_index: int | str | None
) -> tuple[ValueType, list[tuple[Sample, int]]]:
    """The chosen sample type and every sample with its (unit-aligned) value."""
    items = _as_list(profiles)
    first = items[0]
    chosen = first.sample_types[sample_type_index(first, sample_index)]
    indexes: list[int] = []
    for p in items:
        matches = [i for i, vt in enumerate(p.sample_types) if vt.type == chosen.type]
        if not matches:
            raise ValueError(f"a profile has no sample type {chosen.type!r}")
        indexes.append(matches[0])
    unit_names = {p.sample_types[i].unit for p, i in zip(items, indexes, strict=True)}
    ratios = [1.0] * len(items)
    unit = chosen.unit
    if len(unit_names) > 1:
        sniffed = {u: units.sniff_unit(u) for u in unit_names}
        families = {id(found[0]) if found else None for found in sniffed.values()}
        if None in families or len(families) > 1:
            raise ValueError(f"incompatible units for {chosen.type!r}: {sorted(unit_names)}")
        unit = min(unit_names, key=lambda u: _factor(sniffed[u]))
        for n, (p, i) in enumerate(zip(items, indexes, strict=True)):
            ratios[n] = _factor(sniffed[p.sample_types[i].unit]) / _factor(sniffed[unit])
    selected: list[tuple[Sample, int]] = []
    for p, i, ratio in zip(items, indexes, ratios, strict=True):
        if ratio == 1.0:
            selected.extend((s, s.values[i]) for s in p.samples)
        else:
            selected.extend((s, int(s.values[i] * ratio)) for s in p.samples)
    return ValueType(type=chosen.type, unit=unit), selected


def _factor(found: tuple[units.UnitType, units.Unit] | None) -> float:
    return found[1].factor if found else 1.0


def _header(profiles: Profiles) -> ReportHeader:
    items = _as_list(profiles)
    first = items[0]
    comments: list[str] = []
    for p in items:
        comments.extend(c for c in p.comments if c not in comments)
    times = [p.time_nanos for p in items if p.time_nanos]
    return ReportHeader(
        main_binary=first.mappings[0].filename if first.mappings else "",
        build_id=first.mappings[0].build_id if first.mappings else "",
        comments=tuple(comments),
        doc_url=first.doc_url,
        time_nanos=min(times) if times else 0,
        duration_nanos=sum(p.duration_nanos for p in items),
    )


# --- nodes and call paths -----------------------------------------------------------------------


def _go_clean(path: str) -> str:
    """Go's filepath.Clean (posixpath.normpath keeps a leading "//")."""
    rooted = path.startswith("/")
    parts: list[str] = []
    for seg in path.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(seg)
    cleaned = "/".join(parts)
    return "/" + cleaned if rooted else cleaned or "."


def _go_base(path: str) -> str:
    stripped = path.rstrip("/")
    return posixpath.basename(stripped) if stripped else ("/" if path else ".")


def _report_file(filename: str) -> str:
    for prefix in ("/proc/self/cwd/./", "/proc/self/cwd/"):  # pprof's default trim_path
        if filename.startswith(prefix):
            filename = filename[len(prefix) :]
            break
    return _go_clean(filename) if filename else ""


def _node_key(frame: Frame, granularity: Granularity) -> NodeKey:
    file = _report_file(frame.filename) if granularity == "filefunctions" else ""
    if frame.function:
        return NodeKey(name=frame.function, file=file)
    return NodeKey(name="", file=file, start_line=frame.start_line, objfile=frame.mapping)


class _Paths:
    """Samples folded into distinct node paths (a graph depends only on paths and their sums)."""

    def __init__(self, granularity: Granularity, noinlines: bool) -> None:
        self.granularity = granularity
        self.noinlines = noinlines
        self.index: dict[NodeKey, int] = {}
        self.keys: list[NodeKey] = []
        self.sums: dict[tuple[tuple[int, bool], ...], int] = {}
        self.by_stack: dict[int, tuple[tuple[int, bool], ...]] = {}
        self.total = 0

    def node(self, frame: Frame) -> int:
        key = _node_key(frame, self.granularity)
        found = self.index.get(key)
        if found is None:
            found = self.index[key] = len(self.keys)
            self.keys.append(key)
        return found

    def add(self, sample: Sample, value: int) -> None:
        self.total += abs(value)
        if value == 0:
            return
        stack = sample.stack
        path = self.by_stack.get(stack.id)
        if path is None:
            frames = reversed(stack.frames)
            if self.noinlines:
                path = tuple((self.node(f), False) for f in frames if not f.inlined)
            else:
                path = tuple((self.node(f), f.inlined) for f in frames)
            self.by_stack[stack.id] = path
        if path:
            self.sums[path] = self.sums.get(path, 0) + value

    def call_paths(self) -> tuple[CallPath, ...]:
        return tuple(
            CallPath(
                nodes=tuple(n for n, _ in path),
                inlined=tuple(i for _, i in path),
                value=value,
            )
            for path, value in self.sums.items()
        )


class _Edge:
    __slots__ = ("inline", "weight")

    def __init__(self, weight: int, inline: bool) -> None:
        self.weight = weight
        self.inline = inline


class _Graph:
    """pprof's graph.New over call paths, optionally restricted to `kept` nodes."""

    def __init__(self, paths: Iterable[CallPath], n_nodes: int, kept: set[int] | None) -> None:
        self.flat = [0] * n_nodes
        self.cum = [0] * n_nodes
        self.edges: dict[tuple[int, int], _Edge] = {}
        for path in paths:
            self._add(path, kept)
        self.nodes = [
            n
            for n in range(n_nodes)
            if (kept is None or n in kept) and (self.flat[n] != 0 or self.cum[n] != 0)
        ]

    def _add(self, path: CallPath, kept: set[int] | None) -> None:
        w = path.value
        seen_nodes: set[int] = set()
        seen_edges: set[tuple[int, int]] = set()
        parent: int | None = None
        residual = False
        for node, inline in zip(path.nodes, path.inlined, strict=True):
            if kept is not None and node not in kept:
                residual = True
                continue
            if node not in seen_nodes:
                seen_nodes.add(node)
                self.cum[node] += w
            if parent is not None and node != parent and (parent, node) not in seen_edges:
                seen_edges.add((parent, node))
                edge = self.edges.get((parent, node))
                if edge is None:
                    self.edges[(parent, node)] = _Edge(w, inline)
                else:
                    edge.weight += w
                    edge.inline = edge.inline and inline
            parent = node
            residual = False
        if parent is not None and not residual:
            self.flat[parent] += w

    def trim_edges(self, cutoff: int) -> None:
        self.edges = {k: e for k, e in self.edges.items() if abs(e.weight) >= cutoff}

    def inline_labels(self) -> dict[int, str]:
        inline: set[int] = set()
        plain: set[int] = set()
        for (_, dest), edge in self.edges.items():
            (inline if edge.inline else plain).add(dest)
        return {n: "(partial-inline)" if n in plain else "(inline)" for n in inline}

    def sorted_nodes(self, keys: Sequence[NodeKey], by_cum: bool) -> list[int]:
        def order(n: int) -> tuple[int, str, int, str]:
            key = keys[n]
            first, third = (self.cum[n], self.flat[n]) if by_cum else (self.flat[n], self.cum[n])
            # Go's fmt.Sprint(NodeInfo): the last, always-distinct tie breaker.
            info = f"{{{key.name}  0 {key.file} {key.start_line} 0 {key.objfile}}}"
            return (-abs(first), key.printable(), -abs(third), info)

        return sorted(self.nodes, key=order)


def _rows(
    graph: _Graph, order: Sequence[int], keys: Sequence[NodeKey], total: int
) -> tuple[TopRow, ...]:
    labels = graph.inline_labels()
    rows: list[TopRow] = []
    running = 0
    for n in order:
        flat, cum = graph.flat[n], graph.cum[n]
        running += flat
        rows.append(
            TopRow(
                name=keys[n].printable(),
                flat=flat,
                flat_pct=_pct(flat, total),
                sum_pct=_pct(running, total),
                cum=cum,
                cum_pct=_pct(cum, total),
                inline=labels.get(n, ""),
            )
        )
    return tuple(rows)


def _pct(value: int, total: int) -> float:
    return abs(value / total) * 100 if total else 0.0


# --- top --------------------------------------------------------------------------------------


def top(
    profiles: Profiles,
    sample_index: int | str | None = None,
    sort_by_cum: bool = False,
    granularity: Granularity = "functions",
    noinlines: bool = False,
) -> TopReport:
    """Every node of pprof's `-top` for these profiles, untrimmed, in pprof's order."""
    if granularity not in ("functions", "filefunctions"):
        raise ValueError(f"unknown granularity {granularity!r}")
    sample_type, selected = _selected(profiles, sample_index)
    acc = _Paths(granularity, noinlines)
    for sample, value in selected:
        acc.add(sample, value)
    paths = acc.call_paths()
    keys = tuple(acc.keys)
    graph = _Graph(paths, len(keys), None)
    rows = _rows(graph, graph.sorted_nodes(keys, sort_by_cum), keys, acc.total)
    return TopReport(
        sample_type=sample_type,
        total=acc.total,
        rows=rows,
        sort_by_cum=sort_by_cum,
        nodes=keys,
        paths=paths,
        header=_header(profiles),
    )


def format_top(
    report: TopReport,
    nodecount: int = 0,
    nodefraction: float = DEFAULT_NODEFRACTION,
    edgefraction: float = DEFAULT_EDGEFRACTION,
    profile_labels: bool = False,
) -> str:
    """The text of `go tool pprof -top` (nodecount 0: no limit), trimmed as pprof trims it.

    With `profile_labels`, the lines pprof prints first (File, Type, Time, Duration...) lead;
    times are shown in UTC.
    """
    keys = report.nodes
    n_nodes = len(keys)
    graph = _Graph(report.paths, n_nodes, None)
    total_value = sum(graph.flat[n] for n in graph.nodes)
    node_cutoff = abs(int(total_value * nodefraction))
    edge_cutoff = abs(int(total_value * edgefraction))
    dropped_nodes = 0
    if node_cutoff > 0:
        kept = {n for n in graph.nodes if abs(graph.cum[n]) >= node_cutoff}
        if len(kept) != len(graph.nodes):
            dropped_nodes = len(graph.nodes) - len(kept)
            graph = _Graph(report.paths, n_nodes, kept)
    orig_count = len(graph.nodes)
    order = graph.sorted_nodes(keys, report.sort_by_cum)
    if nodecount > 0:
        graph.trim_edges(edge_cutoff)
        if len(order) > nodecount:
            graph = _Graph(report.paths, n_nodes, set(order[:nodecount]))
            order = graph.sorted_nodes(keys, report.sort_by_cum)
    graph.trim_edges(edge_cutoff)

    total = report.total
    sample_unit = report.sample_type.unit.lower()
    output_unit = _output_unit(graph, total, sample_unit)

    def fmt(v: int) -> str:
        return units.scaled_label(v, sample_unit, output_unit)

    lines: list[str] = []
    if profile_labels:
        lines.extend(_profile_labels(report, fmt))
    shown = sum(graph.flat[n] for n in order)
    lines.append(
        f"Showing nodes accounting for {fmt(shown)}, "
        f"{units.percentage(shown, total).strip()} of {fmt(total)} total"
    )
    if total != 0:
        if dropped_nodes > 0:
            cut = fmt(abs(int(total * nodefraction)))
            lines.append(
                f"Dropped {dropped_nodes} node{'s' if dropped_nodes > 1 else ''} (cum <= {cut})"
            )
        if 0 < len(order) < orig_count:
            lines.append(f"Showing top {len(order)} nodes out of {orig_count}")
    lines.append(f"{'flat':>10} {'flat':>5}% {'sum':>5}% {'cum':>10} {'cum':>5}%")
    running = 0
    for row, n in zip(_rows(graph, order, keys, total), order, strict=True):
        flat, cum = graph.flat[n], graph.cum[n]
        running += flat
        inline = f" {row.inline}" if row.inline else ""
        lines.append(
            f"{fmt(flat):>10} {units.percentage(flat, total)} {units.percentage(running, total)} "
            f"{fmt(cum):>10} {units.percentage(cum, total)}  {row.name}{inline}"
        )
    return "\n".join(lines) + "\n"


def _output_unit(graph: _Graph, total: int, sample_unit: str) -> str:
    """pprof's `-unit=minimum`: the unit of the smallest shown value, unless the total is over
    100x larger, then the unit in which that smallest value reads 0.01 or more."""
    if not graph.nodes:
        return "minimum"
    min_value = 0
    for n in graph.nodes:
        value = abs(graph.flat[n]) or abs(graph.cum[n])
        if value > 0 and (min_value == 0 or value < min_value):
            min_value = value
    max_value = total
    if min_value == 0:
        min_value = max_value
    _, min_unit = units.scale(min_value, sample_unit, "minimum")
    _, max_unit = units.scale(max_value, sample_unit, "minimum")
    unit = min_unit
    if min_unit != max_unit and min_value * 100 < max_value:
        _, unit = units.scale(100 * min_value, sample_unit, "minimum")
    return unit or sample_unit


def _profile_labels(report: TopReport, fmt: Callable[[int], str]) -> list[str]:
    h = report.header
    out: list[str] = []
    if h.main_binary:
        out.append(f"File: {_go_base(h.main_binary)}")
    if h.build_id:
        out.append(f"Build ID: {h.build_id}")
    out.extend(c for c in h.comments if not c.startswith("#"))
    out.append(f"Type: {report.sample_type.type}")
    if h.doc_url:
        out.append(f"Doc: {h.doc_url}")
    if h.time_nanos:
        when = dt.datetime.fromtimestamp(h.time_nanos / 1e9, tz=dt.UTC)
        out.append(f"Time: {when:%Y-%m-%d %H:%M:%S} UTC")
    if h.duration_nanos:
        duration = units.label(h.duration_nanos, "nanoseconds")
        total_ns, total_unit = units.scale(
            report.total, report.sample_type.unit.lower(), "nanoseconds"
        )
        ratio = ""
        if total_unit == "ns" and total_ns != 0:
            ratio = f"({units.percentage(int(total_ns), h.duration_nanos)})"
        out.append(f"Duration: {duration}, Total samples = {fmt(report.total)} {ratio}")
    return out


# --- folded stacks, flame graph, diff -----------------------------------------------------------


def _frame_name(frame: Frame) -> str:
    return _node_key(frame, "functions").printable()


def _stack_sums(
    profiles: Profiles, sample_index: int | str | None
) -> tuple[ValueType, dict[tuple[str, ...], int]]:
    """Summed value per distinct root-first stack of frame names (zero sums left out)."""
    sample_type, selected = _selected(profiles, sample_index)
    names: dict[int, tuple[str, ...]] = {}
    sums: dict[tuple[str, ...], int] = {}
    for sample, value in selected:
        if value == 0 or not sample.stack.frames:
            continue
        stack = names.get(sample.stack.id)
        if stack is None:
            stack = names[sample.stack.id] = tuple(
                _frame_name(f) for f in reversed(sample.stack.frames)
            )
        sums[stack] = sums.get(stack, 0) + value
    return sample_type, {k: v for k, v in sums.items() if v != 0}


def _folded_name(name: str) -> str:
    # The folded format has no escaping: ';' separates frames and a newline ends the record.
    return name.replace(";", ":").replace("\r", " ").replace("\n", " ")


def folded(profiles: Profiles, sample_index: int | str | None = None) -> str:
    """Brendan Gregg's folded stacks: `root;...;leaf value`, one line per distinct stack, sorted.

    Frames are function names (inlined functions are frames of their own; frames without a
    function read `[binary]` or `<unknown>`), values are raw sums in the sample type's unit, and
    stacks summing to zero are left out. ';' and line breaks inside names become ':' and ' '.
    """
    _, sums = _stack_sums(profiles, sample_index)
    lines = sorted(
        f"{';'.join(_folded_name(n) for n in stack)} {value}" for stack, value in sums.items()
    )
    return "".join(line + "\n" for line in lines)


class _FlameNode:
    __slots__ = ("children", "name", "value")

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = 0
        self.children: dict[str, _FlameNode] = {}


_FRAME_H: Final = 16
_PAD: Final = 10
_TOP: Final = 44
_BOTTOM: Final = 24
_CHAR_W: Final = 7.2  # average advance of 12px monospace
_MIN_FRACTION: Final = 0.0001  # narrower frames (and their callees) are not drawn


def _xml(text: str) -> str:
    """Escape for XML text and attributes, dropping characters XML 1.0 cannot carry."""
    clean = "".join(
        ch
        for ch in text
        if ch in "\t\n\r"
        or ("\x20" <= ch <= "\ud7ff")
        or ("\ue000" <= ch <= "\ufffd")
        or ch > "\uffff"
    )
    return html.escape(clean, quote=True)


def _fit(name: str, width: float) -> str:
    room = int((width - 6) / _CHAR_W)
    if room < 3:
        return ""
    return name if len(name) <= room else name[: room - 2] + ".."


def _color(name: str) -> str:
    h = zlib.crc32(name.encode())
    return f"rgb({205 + h % 50},{(h >> 8) % 230},{(h >> 16) % 55})"


def _value_label(value: int, unit: str) -> str:
    if units.sniff_unit(unit) is not None:
        return units.label(value, unit)
    return f"{value} {unit}" if unit else str(value)


_FLAME_JS: Final = """
const W = %(width)d, PAD = %(pad)d, CW = %(cw)s;
const frames = Array.from(document.querySelectorAll("g.f"));
function fit(name, w) {
  const room = Math.floor((w - 6) / CW);
  if (room < 3) return "";
  return name.length <= room ? name : name.slice(0, room - 2) + "..";
}
function zoom(g) {
  const x0 = +g.dataset.x, w0 = +g.dataset.w, d0 = +g.dataset.d, eps = 1e-12;
  for (const f of frames) {
    const x = +f.dataset.x, w = +f.dataset.w, d = +f.dataset.d;
    const inside = d >= d0 && x >= x0 - eps && x + w <= x0 + w0 + eps;
    const above = d < d0 && x <= x0 + eps && x + w >= x0 + w0 - eps;
    if (!inside && !above) { f.style.display = "none"; continue; }
    f.style.display = "";
    const px = PAD + (above ? 0 : (x - x0) / w0) * (W - 2 * PAD);
    const pw = (above ? 1 : w / w0) * (W - 2 * PAD);
    const r = f.querySelector("rect"), t = f.querySelector("text");
    r.setAttribute("x", px.toFixed(2)); r.setAttribute("width", pw.toFixed(2));
    t.setAttribute("x", (px + 3).toFixed(2)); t.textContent = fit(f.dataset.n, pw);
    f.style.opacity = above ? "0.6" : "1";
  }
}
frames.forEach((f) => f.addEventListener("click", () => zoom(f)));
document.getElementById("reset").addEventListener("click", () => zoom(frames[0]));
"""


def flamegraph_svg(
    profiles: Profiles,
    sample_index: int | str | None = None,
    title: str = "Flame Graph",
    width: int = 1200,
) -> str:
    """A standalone SVG flame graph: root at the bottom, one rectangle per frame, widths
    proportional to cum, hover tooltips (value and share of the total), click to zoom.

    Only stacks with a positive summed value are drawn; frames narrower than 1/10000 of the
    total are left out. No external script, style sheet or font is referenced.
    """
    sample_type, sums = _stack_sums(profiles, sample_index)
    root = _FlameNode("all")
    for stack, value in sums.items():
        if value <= 0:
            continue
        node = root
        node.value += value
        for name in stack:
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = _FlameNode(name)
            child.value += value
            node = child
    total = root.value
    inner = width - 2 * _PAD

    placed: list[tuple[_FlameNode, int, float]] = []  # node, depth, start fraction
    todo: list[tuple[_FlameNode, int, float]] = [(root, 0, 0.0)]
    while todo:
        node, depth, start = todo.pop()
        placed.append((node, depth, start))
        offset = start
        for child in sorted(node.children.values(), key=lambda c: c.name):
            fraction = child.value / total
            if fraction >= _MIN_FRACTION:
                todo.append((child, depth + 1, offset))
            offset += fraction
    placed.sort(key=lambda item: (item[1], item[2]))
    depth_max = max(d for _, d, _ in placed) if total else 0
    height = _TOP + (depth_max + 1) * _FRAME_H + _BOTTOM
    unit = sample_type.unit

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">',
        "<style>text{font-family:monospace;font-size:12px;fill:#000}"
        "g.f{cursor:pointer}g.f:hover rect{stroke:#000;stroke-width:0.5}"
        "#reset{cursor:pointer;fill:#33d}</style>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fdfdf6"/>',
        f'<text x="{width / 2:.0f}" y="22" text-anchor="middle" style="font-size:16px">'
        f"{_xml(title)}</text>",
        f'<text x="{_PAD}" y="22" id="reset">Reset zoom</text>',
        f'<text x="{width - _PAD}" y="22" text-anchor="end">'
        f"{_xml(sample_type.type)} ({_xml(unit)})</text>",
    ]
    if not total:
        out.append(
            f'<text x="{width / 2:.0f}" y="{_TOP + 12}" text-anchor="middle">no samples</text>'
        )
    for node, depth, start in placed if total else []:
        fraction = node.value / total
        x = _PAD + start * inner
        w = fraction * inner
        y = height - _BOTTOM - (depth + 1) * _FRAME_H
        tip = f"{node.name} ({_value_label(node.value, unit)}, {fraction * 100:.2f}%)"
        out.append(
            f'<g class="f" data-d="{depth}" data-x="{start!r}" data-w="{fraction!r}" '
            f'data-n="{_xml(node.name)}"><title>{_xml(tip)}</title>'
            f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{_FRAME_H - 1}" rx="2" '
            f'fill="{_color(node.name)}"/>'
            f'<text x="{x + 3:.2f}" y="{y + 11.5}">{_xml(_fit(node.name, w))}</text></g>'
        )
    script = _FLAME_JS % {"width": width, "pad": _PAD, "cw": repr(_CHAR_W)}
    out.append(f'<script type="text/javascript"><![CDATA[{script}]]></script>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def diff(
    base_profiles: Profiles,
    new_profiles: Profiles,
    sample_index: int | str | None = None,
    measure: Literal["flat", "cum"] = "flat",
    granularity: Granularity = "functions",
) -> list[DiffRow]:
    """Each function's share of its side's total (pprof's total: sum of |value|), base vs new,
    sorted by |delta| desc, then name. `sample_index` is resolved on the base profiles and
    matched by type name in the new ones. Functions present on one side only have share 0 on
    the other."""
    base = top(base_profiles, sample_index, granularity=granularity)
    new = top(new_profiles, base.sample_type.type, granularity=granularity)

    def shares(report: TopReport) -> dict[str, float]:
        out: dict[str, float] = {}
        for row in report.rows:
            value = row.flat if measure == "flat" else row.cum
            if report.total:
                out[row.name] = out.get(row.name, 0.0) + value / report.total
        return out

    before, after = shares(base), shares(new)
    rows = [
        DiffRow(
            function=name,
            base_share=before.get(name, 0.0),
            new_share=after.get(name, 0.0),
            delta=after.get(name, 0.0) - before.get(name, 0.0),
        )
        for name in before.keys() | after.keys()
    ]
    rows.sort(key=lambda r: (-abs(r.delta), r.function))
    return rows


def format_diff(rows: Sequence[DiffRow], limit: int = 0) -> str:
    """`diff` rows as text: change of share (percentage points), base share, new share, name;
    the first `limit` rows (0: all), biggest changes first."""
    shown = rows[:limit] if limit > 0 else rows
    lines = [f"{'delta':>9} {'base':>8} {'new':>8}  function"]
    for row in shown:
        lines.append(
            f"{row.delta * 100:>+8.2f}% {row.base_share * 100:>7.2f}% "
            f"{row.new_share * 100:>7.2f}%  {row.function}"
        )
    return "\n".join(lines) + "\n"
