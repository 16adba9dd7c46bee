"""shared.runtime: a tuned service process reuses its batch-sized buffers instead of faulting in
fresh pages for each one."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# A service's batch loop in miniature: per batch, an encoded payload, the command packed around
# it and a decoded copy (~250 KB each) live together, then are freed.
_FAULTS_PER_BATCH = """
import resource, sys
from shared.runtime import tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc()
def batches(n):
    for _ in range(n):
        payload = bytes(250_000)
        packed = b"".join([b"*2\\r\\n", payload, b"\\r\\n"])
        text = packed.decode("latin-1")
        del payload, packed, text
batches(20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
batches(200)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 200)
"""

glibc_only = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's"
)


def faults_per_batch(mode: str) -> float:
    result = subprocess.run(
        [sys.executable, "-c", _FAULTS_PER_BATCH, mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return float(result.stdout)


@glibc_only
def test_tuned_process_reuses_batch_sized_buffers() -> None:
    # Untuned, glibc trims the heap after each batch and faults the pages in again on the next.
    assert faults_per_batch("default") > 50
    assert faults_per_batch("tuned") < 5


@glibc_only
def test_tune_malloc_can_run_again() -> None:
    from shared.runtime import tune_malloc

    assert tune_malloc()
    assert tune_malloc()
