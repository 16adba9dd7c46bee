"""How every service process runs: on uvloop, with CPython's cyclic GC tuned for batch work.

Why the GC: a batch is thousands of short-lived containers (Structs, dicts, lists) that live
just long enough to be promoted, so CPython's default thresholds (700, 10, 10) keep running
collections, including full ones over the whole heap (chdb, ua-parser tables, modules), many
times a second. Almost everything a batch allocates is freed by reference counting; cycles are
rare (exceptions with tracebacks, asyncio internals). So the objects that exist at start are
moved out of the collector's sight (`gc.freeze`) and the young generation is collected every
`GC_GEN0_THRESHOLD` allocations instead of 700. Measured: `bench/run.py --py-spy` (README).
"""

from __future__ import annotations

import gc
from collections.abc import Coroutine
from typing import Any, Final, TypeVar

import uvloop

GC_GEN0_THRESHOLD: Final = 50_000
GC_GEN1_THRESHOLD: Final = 20
GC_GEN2_THRESHOLD: Final = 100

T = TypeVar("T")


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, GC_GEN1_THRESHOLD, GC_GEN2_THRESHOLD)


def run_service(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` for a long-running service: tuned GC, uvloop event loop."""
    tune_gc()
    return uvloop.run(main)
