"""Which stored profiles a report covers, and the report options (pure: no I/O).

Input: the options of `rivulet profile ...` and of the profiler's HTTP endpoints (strings).
Output: a `Selection` (tenant, service, type, time window or one profile id) and `ReportOptions`.

Windows: `1h` is the last hour (until now); `A..B` is from A to B, where each side is a duration
ago (`2h`), `now`, or an RFC 3339 timestamp (`2026-01-01T10:00:00Z`); start inclusive, end
exclusive. Durations: a number with ns, us, ms, s, m, h, d or w; parts may be chained (`1h30m`).
"""

from __future__ import annotations

import re
from typing import Final, Literal

import msgspec

from services.profiler.report import DEFAULT_EDGEFRACTION, DEFAULT_NODEFRACTION, Granularity
from shared.events import InvalidEvent, parse_timestamp

_UNITS: Final = {
    "ns": 1,
    "us": 10**3,
    "µs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
    "d": 86400 * 10**9,
    "w": 7 * 86400 * 10**9,
}
_PART: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h|d|w)")
MAX_NAME: Final = 256


class SelectionError(ValueError):
    """The options do not describe a selection (the message says why)."""


class Window(msgspec.Struct, frozen=True):
    start_ns: int  # inclusive
    end_ns: int  # exclusive


class Selection(msgspec.Struct, frozen=True):
    """Stored profiles to merge: every given field must match (None: any)."""

    tenant: str | None = None
    service: str | None = None
    type: str | None = None
    window: Window | None = None
    profile_id: str | None = None


class ReportOptions(msgspec.Struct, frozen=True):
    sample_index: int | str | None = None
    sort_by_cum: bool = False
    granularity: Granularity = "functions"
    noinlines: bool = False
    nodecount: int = 0  # 0: every node, as `go tool pprof -top`
    nodefraction: float = DEFAULT_NODEFRACTION
    edgefraction: float = DEFAULT_EDGEFRACTION
    profile_labels: bool = False


def parse_duration(text: str) -> int:
    """`1h30m` -> nanoseconds."""
    text = text.strip()
    pos = 0
    total = 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise SelectionError(f"not a duration: {text!r} (e.g. 90s, 15m, 1h30m, 2d)")
    return int(total)


def parse_instant(text: str, now_ns: int) -> int:
    text = text.strip()
    if text == "now":
        return now_ns
    if text[:1].isdigit() and _PART.match(text) and not re.match(r"[0-9]{4}-", text):
        return now_ns - parse_duration(text)
    try:
        return parse_timestamp(text, "time")
    except InvalidEvent as exc:
        raise SelectionError(
            f"not a time: {text!r}: use a duration ago (2h), now, or RFC 3339 ({exc})"
        ) from None


def parse_window(text: str, now_ns: int) -> Window:
    """`1h` (the last hour) or `A..B`."""
    text = text.strip()
    if ".." in text:
        start_text, _, end_text = text.partition("..")
        start = parse_instant(start_text, now_ns)
        end = parse_instant(end_text or "now", now_ns)
    else:
        start, end = now_ns - parse_duration(text), now_ns
    if end <= start:
        raise SelectionError(f"empty window {text!r}: its end is not after its start")
    return Window(start, end)


def _name(value: str | None, what: str) -> str | None:
    if value is None or value == "":
        return None
    if len(value) > MAX_NAME:
        raise SelectionError(f"{what} longer than {MAX_NAME} characters")
    return value


def selection(
    *,
    tenant: str | None,
    service: str | None,
    type_: str | None,
    since: str | None,
    profile_id: str | None,
    now_ns: int,
) -> Selection:
    """A window (`since`, default the last hour) over one service, or one profile by id."""
    profile = _name(profile_id, "profile id")
    service_name = _name(service, "service")
    if profile is not None and since:
        raise SelectionError("give either a profile id or a window, not both")
    if profile is None and service_name is None:
        raise SelectionError("give a service (or a profile id)")
    return Selection(
        tenant=_name(tenant, "tenant"),
        service=service_name,
        type=_name(type_, "type"),
        window=None if profile is not None else parse_window(since or "1h", now_ns),
        profile_id=profile,
    )


def sample_index_option(value: str | None) -> int | str | None:
    """pprof's -sample_index: a position (digits) or a type name; None for the default."""
    if value is None or value.strip() == "":
        return None
    value = value.strip()
    return int(value) if value.isdigit() else value


def granularity_option(value: str | None) -> Granularity:
    if value in (None, "", "functions"):
        return "functions"
    if value == "filefunctions":
        return "filefunctions"
    raise SelectionError(f"granularity must be functions or filefunctions, not {value!r}")


FlameFormat = Literal["folded", "svg"]


def flame_format(value: str | None) -> FlameFormat:
    if value in (None, "", "folded"):
        return "folded"
    if value == "svg":
        return "svg"
    raise SelectionError(f"format must be folded or svg, not {value!r}")
