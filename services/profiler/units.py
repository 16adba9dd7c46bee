"""pprof's measurement rules: unit conversion, value labels and percentages (pure).

A port of the behaviour of pprof's `internal/measurement`, so reports print what `go tool pprof`
prints:
- units are matched case-insensitively, a trailing "s" dropped when the name is longer than two
  bytes ("nanoseconds" -> "nanosecond", "ms" stays); memory units step by 1024 (B, kB, MB, ...),
  time units are ns, us, ms, s, hrs; anything else (e.g. "count") is printed unscaled;
- `scaled_label` prints at most two decimals, dropping a ".00" ("1.10s", "480ms", "1s", "0");
- `percentage` prints "  100%" near 100, "%5.2f%%" from 1% up, two significant digits below.
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple


class Unit(NamedTuple):
    name: str
    aliases: tuple[str, ...]
    factor: float


class UnitType(NamedTuple):
    default: Unit
    units: tuple[Unit, ...]


UNIT_TYPES: Final = (
    UnitType(
        default=Unit("B", ("b", "byte"), 1),
        units=(
            Unit("B", ("b", "byte"), 1),
            Unit("kB", ("kb", "kbyte", "kilobyte"), float(1 << 10)),
            Unit("MB", ("mb", "mbyte", "megabyte"), float(1 << 20)),
            Unit("GB", ("gb", "gbyte", "gigabyte"), float(1 << 30)),
            Unit("TB", ("tb", "tbyte", "terabyte"), float(1 << 40)),
            Unit("PB", ("pb", "pbyte", "petabyte"), float(1 << 50)),
        ),
    ),
    UnitType(
        default=Unit("s", (), 1e9),
        units=(
            Unit("ns", ("ns", "nanosecond"), 1),
            Unit("us", ("μs", "us", "microsecond"), 1e3),
            Unit("ms", ("ms", "millisecond"), 1e6),
            Unit("s", ("s", "sec", "second"), 1e9),
            Unit("hrs", ("hour", "hr"), 3600e9),
        ),
    ),
    UnitType(
        default=Unit("GCU", (), 1.0),
        units=(
            Unit("n*GCU", ("nanogcu",), 1e-9),
            Unit("u*GCU", ("microgcu",), 1e-6),
            Unit("m*GCU", ("milligcu",), 1e-3),
            Unit("GCU", ("gcu",), 1),
            Unit("k*GCU", ("kilogcu",), 1e3),
            Unit("M*GCU", ("megagcu",), 1e6),
            Unit("G*GCU", ("gigagcu",), 1e9),
            Unit("T*GCU", ("teragcu",), 1e12),
            Unit("P*GCU", ("petagcu",), 1e15),
        ),
    ),
)

_UNSCALED: Final = frozenset({"count", "sample", "unit", "minimum", "auto"})


def sniff_unit(unit: str) -> tuple[UnitType, Unit] | None:
    """The unit family and unit a unit name denotes, or None when pprof does not know it."""
    unit = unit.lower()
    if len(unit.encode()) > 2:  # pprof counts bytes: "μs" is three
        unit = unit.removesuffix("s")
    for ut in UNIT_TYPES:
        for u in ut.units:
            if unit in u.aliases:
                return ut, u
    return None


def _auto_scale(ut: UnitType, value: float) -> tuple[float, str] | None:
    factor = 0.0
    name = ""
    for u in ut.units:
        if u.factor >= factor and value / u.factor >= 1.0:
            factor = u.factor
            name = u.name
    if factor == 0:
        return None
    return value / factor, name


def scale(value: int, from_unit: str, to_unit: str) -> tuple[float, str]:
    """`value` in `from_unit` expressed in `to_unit` ("minimum"/"auto": the largest unit that
    keeps it >= 1). The unit returned is "" when not worth printing (counts)."""
    if value < 0:
        v, u = scale(-value, from_unit, to_unit)
        return -v, u
    found = sniff_unit(from_unit)
    if found is not None:
        ut, unit = found
        v = float(value) * unit.factor
        if to_unit in ("minimum", "auto"):
            scaled = _auto_scale(ut, v)
            if scaled is not None:
                return scaled
            return v / ut.default.factor, ut.default.name
        target = sniff_unit(to_unit)
        if target is None or target[0] is not ut:
            return v / ut.default.factor, ut.default.name
        return v / target[1].factor, target[1].name
    if to_unit in _UNSCALED:
        return float(value), ""
    return float(value), to_unit


def scaled_label(value: int, from_unit: str, to_unit: str) -> str:
    """`value` printed in `to_unit` the way pprof prints report values."""
    if from_unit == "" and to_unit == "count":
        return str(value)
    v, u = scale(value, from_unit, to_unit)
    text = f"{v:.2f}".removesuffix(".00")
    if text in ("0", "-0"):
        return "0"
    return text + u


def label(value: int, unit: str) -> str:
    """`value` in the most readable unit of its family."""
    return scaled_label(value, unit, "auto")


def percentage(value: int, total: int) -> str:
    """`value` as a percentage of `total`, padded like pprof's columns."""
    ratio = math.fabs(value / total) * 100 if total != 0 else 0.0
    if 99.95 <= ratio <= 100.05:
        return "  100%"
    if ratio >= 1.0:
        return f"{ratio:5.2f}%"
    return f"{ratio:5.2g}%"
