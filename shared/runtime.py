"""How every service process runs: on uvloop, with CPython's cyclic GC and glibc's malloc tuned
for batch work.

Why the GC: a batch is thousands of short-lived containers (Structs, dicts, lists) that live
just long enough to be promoted, so CPython's default thresholds (700, 10, 10) keep running
collections, including full ones over the whole heap (chdb, ua-parser tables, modules), many
times a second. Almost everything a batch allocates is freed by reference counting; cycles are
rare (exceptions with tracebacks, asyncio internals). So the objects that exist at start are
moved out of the collector's sight (`gc.freeze`) and the young generation is collected every
`GC_GEN0_THRESHOLD` allocations instead of 700. Measured: `bench/run.py --py-spy` (README).

Why malloc: every batch moves a few buffers of 0.2-2 MB (a 500-event command or reply, a
5,000-row insert). glibc hands a freed block above its mmap threshold (128 KiB, then adapting)
back to the kernel and trims the heap's top above twice that, so the next batch's buffers cost
fresh zeroed pages, a page fault per 4 KiB: ~250 us of system time per 250 KB command
(docs/performance.md). Fixed thresholds keep such buffers in the heap; what stays mapped after a
burst is bounded by `MALLOC_TRIM_THRESHOLD`.
"""

from __future__ import annotations

import ctypes
import gc
import platform
from collections.abc import Coroutine
from typing import Any, Final, TypeVar

import uvloop

GC_GEN0_THRESHOLD: Final = 50_000
GC_GEN1_THRESHOLD: Final = 20
GC_GEN2_THRESHOLD: Final = 100

# mallopt(3) parameters and the values set (all fixed, which also stops glibc's adapting)
M_TRIM_THRESHOLD: Final = -1
M_TOP_PAD: Final = -2
M_MMAP_THRESHOLD: Final = -3
MALLOC_TRIM_THRESHOLD: Final = 32 * 1024 * 1024
MALLOC_TOP_PAD: Final = 16 * 1024 * 1024
MALLOC_MMAP_THRESHOLD: Final = 32 * 1024 * 1024  # glibc's maximum on 64-bit

T = TypeVar("T")


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, GC_GEN1_THRESHOLD, GC_GEN2_THRESHOLD)


def tune_malloc() -> bool:
    """Fixed malloc thresholds (see the module doc); False where the C library is not glibc."""
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    settings = (
        (M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD),
        (M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD),
        (M_TOP_PAD, MALLOC_TOP_PAD),
    )
    return all(mallopt(param, value) == 1 for param, value in settings)


def tune_runtime() -> None:
    """What a service process does once, before it starts serving."""
    tune_malloc()
    tune_gc()


def run_service(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` for a long-running service: tuned malloc and GC, uvloop event loop."""
    tune_runtime()
    return uvloop.run(main)
