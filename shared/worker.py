"""What every stream worker shares: a stop signal, interruptible sleeps, periodic safe trimming
and purging of expired dedupe markers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog

from shared.schemas import Kind
from shared.streams import Streams

log = structlog.get_logger()


class StoppableWorker:
    def __init__(self) -> None:
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Finish the batch in hand, then return from `run()`; unacked entries stay pending."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def trim_loop(
        self,
        streams: Streams,
        names: Sequence[str],
        interval_s: float,
        dedupe_kinds: Sequence[Kind] = (),
    ) -> None:
        """Trim the streams this worker's group consumes, never past any group's pending entries,
        and purge the expired dedupe markers of `dedupe_kinds`."""
        while not self.stopping:
            await self.sleep(interval_s)
            for name in names:
                try:
                    await streams.safe_trim(name)
                except Exception as exc:  # housekeeping: it must never stop a worker
                    log.warning("worker.trim_failed", stream=name, error=repr(exc))
            for kind in dedupe_kinds:
                try:
                    await streams.purge_dedupe(kind)
                except Exception as exc:
                    log.warning("worker.dedupe_purge_failed", kind=kind, error=repr(exc))
