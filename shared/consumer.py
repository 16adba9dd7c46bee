"""Reading a stream in a consumer group: own pending first, then idle claims, then new entries.

Delivery guarantee (at-least-once into the handler): an entry stays in the group's pending list
until the handler's commit XACKs it. After a crash, a worker restarted under the same consumer
name re-reads its own pending entries at once; entries of a consumer that never comes back are
taken over by any replica with XAUTOCLAIM once idle for `claim_idle_ms`. Each delivery carries
Redis's delivery counter so handlers can dead-letter entries that keep failing.

Why not FastStream's subscriber here: its claimer (`min_idle_time`) claims one entry per round
trip and never reads new ones, batches have no linger, and our commit must XACK inside the same
Lua script that writes the output — see the note in README ("Design choices").
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from shared.entries import Delivery, deliveries_from_read, delivery_of

CLAIM_SCAN_LIMIT: Final = 10_000


def _unparsed_reply(response: Any, **_options: Any) -> Any:
    return response


class StreamReader:
    def __init__(
        self,
        redis: aioredis.Redis,
        stream: str,
        group: str,
        consumer: str,
        *,
        claim_idle_ms: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        # The same pool, with XREADGROUP replies left as hiredis parsed them: redis-py's callback
        # builds a dict per entry (deliveries_from_read keeps the field list).
        self._unparsed = aioredis.Redis(connection_pool=redis.connection_pool)
        self._unparsed.set_response_callback("XREADGROUP", _unparsed_reply)
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.claim_idle_ms = claim_idle_ms
        self._clock = clock
        self._own_pending = True
        self._next_claim = 0.0
        self._claim_cursor: bytes | str = "0-0"

    def reread_pending(self) -> None:
        """Call after a batch failed without acking: its entries come back on the next read."""
        self._own_pending = True

    async def read(self, count: int, block_ms: int) -> list[Delivery]:
        if self._own_pending:
            pending = await self._read_own_pending(count)
            if pending:
                return pending
            self._own_pending = False
        now = self._clock()
        if now >= self._next_claim:
            self._next_claim = now + max(self.claim_idle_ms / 2000, 0.05)
            claimed = await self._claim_idle(count)
            if claimed:
                return claimed
        reply = await self._unparsed.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        return deliveries_from_read(reply)

    async def _read_own_pending(self, count: int) -> list[Delivery]:
        reply = await self._unparsed.xreadgroup(
            self.group, self.consumer, {self.stream: "0"}, count=count
        )
        read = deliveries_from_read(reply)
        entries = [d for d in read if d.flat]
        deleted = [d.id for d in read if not d.flat]
        if deleted:  # trimmed away while pending: nothing left to process
            await self.redis.xack(self.stream, self.group, *deleted)
        return await self._with_counts(entries)

    async def _claim_idle(self, count: int) -> list[Delivery]:
        claimed: list[Delivery] = []
        scanned = 0
        while len(claimed) < count and scanned < CLAIM_SCAN_LIMIT:
            cursor, entries, deleted = await self.redis.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=self.claim_idle_ms,
                start_id=self._claim_cursor,
                count=count - len(claimed),
            )
            if deleted:
                await self.redis.xack(self.stream, self.group, *deleted)
            claimed.extend(delivery_of(i, f) for i, f in entries if f)
            scanned += len(entries) + len(deleted) + 1
            self._claim_cursor = cursor
            if cursor in (b"0-0", "0-0"):
                break
        return await self._with_counts(claimed)

    async def _with_counts(self, entries: list[Delivery]) -> list[Delivery]:
        if not entries:
            return []
        rows = await self.redis.xpending_range(
            self.stream,
            self.group,
            min=entries[0].id,
            max=entries[-1].id,
            count=len(entries) * 2 + 10,
            consumername=self.consumer,
        )
        counts = {row["message_id"]: int(row["times_delivered"]) for row in rows}
        return [Delivery(d.id, d.flat, counts.get(d.id, 2)) for d in entries]


async def ensure_group(redis: aioredis.Redis, stream: str, group: str) -> None:
    """Create the group at the stream's start, so entries appended before it are not skipped."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def default_consumer_name(service: str) -> str:
    return f"{service}-{socket.gethostname()}-{os.getpid()}"
