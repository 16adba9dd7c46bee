"""Writer: `rivulet:{KIND}:clean` (group `writers`) -> ClickHouse or PostgreSQL.

logs, spans and rum go to ClickHouse; metrics to PostgreSQL/TimescaleDB; profiles (clean entries
written by the profiler) to ClickHouse's profile tables, through `ProfileSink`.

Per consumer: read until the batch is `writer_batch_size` entries, holds `writer_batch_bytes` of
them (`shared.budget`), or is `writer_batch_age_ms` old (or its stream has gone quiet at the end
of a burst, `QUIET_FLUSH_MS`), insert, then ONE Lua script XACKs the batch and dead-letters rows
the database refused (one plain XACK when it refused none). A kind's consumers in one process
take turns to read: one collects while the others insert.
Guarantee: an entry is acknowledged only after its row is stored (or its refusal is in the DLQ);
while a database is away the consumer retries the batch it holds with capped exponential backoff
and jitter and reads nothing new, so the backlog waits in Redis. A re-delivered batch (crash,
claim, retry) first drops ids the table already holds, so one clean entry is one row.

Profiles: batches of `profile_writer_batch_size`; every batch first drops the profiles whose row is
stored (a profile row is written after all its samples, so it marks a complete profile), and a
batch that failed before (re-delivery or in-process retry) inserts only the sample rows still
missing; stacks and functions are keyed by hash, so writing them twice is harmless.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Final

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from services.writer.batches import decode_batch, decode_profile_batch, insert_token
from services.writer.sinks import ProfileSink, RejectedBatch, RetryableSinkError, Sink
from shared.budget import ReadBudget
from shared.config import Settings
from shared.consumer import StreamReader, ensure_group
from shared.entries import Delivery, StageCommit
from shared.metrics import WorkerMetrics
from shared.profile_streams import encode_clean_profile
from shared.retry import Backoff
from shared.schemas import PROFILES, CleanProfile, DeadLetter, Kind, StoredEvent
from shared.streams import Keys, Streams
from shared.worker import StoppableWorker

log = structlog.get_logger()


# A batch may close before its age once no entry has come for this long, when it is a tenth of a
# full batch or its consumer's previous batch was full: the end of a burst is stored without
# waiting out the age, while a slow stream still makes few, large inserts (each insert is a part
# the engine merges later).
QUIET_FLUSH_MS: Final = 100
# Entries per XREADGROUP while a batch fills: the batch's age and byte budget are checked between
# reads.
READ_COUNT: Final = 1000


def _dead_letter(
    kind: Kind,
    tenant: str,
    event_id: str,
    received_at: int,
    body: bytes,
    reason: str,
    attempts: int,
) -> DeadLetter:
    return DeadLetter(
        tenant=tenant,
        kind=kind,
        id=event_id,
        received_at=received_at,
        body=body,
        reason=reason,
        stage="writer",
        attempts=attempts,
    )


async def insert_isolating(
    sink: Sink, kind: Kind, events: Sequence[StoredEvent]
) -> list[tuple[StoredEvent, str]]:
    """Insert; when the store refuses the batch, bisect until the refused rows stand alone.

    Returns the refused events with the store's reason. RetryableSinkError propagates.
    """
    if not events:
        return []
    try:
        await sink.insert(kind, events, insert_token(events))
        return []
    except RejectedBatch as exc:
        if len(events) == 1:
            return [(events[0], str(exc))]
    middle = len(events) // 2
    return await insert_isolating(sink, kind, events[:middle]) + await insert_isolating(
        sink, kind, events[middle:]
    )


async def insert_profiles_isolating(
    sink: ProfileSink, records: Sequence[CleanProfile], recheck: bool
) -> list[tuple[CleanProfile, str]]:
    """Insert; when the store refuses the batch, bisect until the refused profiles stand alone.

    A refused attempt may have stored part of its rows, so the halves insert with `recheck`.
    Returns the refused profiles with the store's reason. RetryableSinkError propagates.
    """
    if not records:
        return []
    try:
        await sink.insert_profiles(records, recheck)
        return []
    except RejectedBatch as exc:
        if len(records) == 1:
            return [(records[0], str(exc))]
    middle = len(records) // 2
    return await insert_profiles_isolating(
        sink, records[:middle], True
    ) + await insert_profiles_isolating(sink, records[middle:], True)


class Writer(StoppableWorker):
    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis,
        sinks: Sequence[Sink],
        kinds: Sequence[Kind],
        consumer: str,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        super().__init__()
        self.metrics = metrics or WorkerMetrics("writer")
        self.settings = settings
        self.redis = redis
        self.keys = Keys(settings.namespace)
        self.streams = Streams(redis, self.keys)
        self.sink_for = {kind: sink for sink in sinks for kind in sink.kinds if kind in kinds}
        missing = [k for k in kinds if k not in self.sink_for]
        if missing:
            raise ValueError(f"no sink configured for {missing}")
        if PROFILES in self.sink_for and not isinstance(self.sink_for[PROFILES], ProfileSink):
            raise ValueError("the sink for profiles cannot store profiles")
        self.kinds = kinds
        self.consumer = consumer
        self.group = self.keys.group("writer")
        # A kind's consumers take turns to collect: one fills its batch while the others insert
        # theirs. Collecting side by side, each filled a share of a batch at a steady rate, and
        # the engine's fixed cost per insert (~8-15 ms of CPU) was paid once per share.
        self._collecting = {kind: asyncio.Lock() for kind in kinds}

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            for kind in self.kinds:
                for index in range(max(1, self.settings.writer_consumers)):
                    tasks.create_task(self._consume(kind, f"{self.consumer}-{kind}-{index}"))
            tasks.create_task(
                self.trim_loop(
                    self.streams,
                    [self.keys.stream(k, "clean") for k in self.kinds],
                    self.settings.trim_interval_s,
                )
            )

    async def _consume(self, kind: Kind, consumer: str) -> None:
        stream = self.keys.stream(kind, "clean")
        reader = StreamReader(
            self.redis, stream, self.group, consumer, claim_idle_ms=self.settings.claim_idle_ms
        )
        backoff = Backoff(self.settings.retry_base_s, self.settings.retry_max_s)
        bound = log.bind(stream=stream, consumer=consumer)
        budget = ReadBudget(
            self.settings.profile_writer_batch_size
            if kind == PROFILES
            else self.settings.writer_batch_size,
            self.settings.writer_batch_bytes,
            READ_COUNT,
        )
        group_ready = False
        previous_full = False
        while not self.stopping:
            try:
                if not group_ready:
                    await ensure_group(self.redis, stream, self.group)
                    group_ready = True
                async with self._collecting[kind]:
                    batch = await self._collect(reader, budget, after_full=previous_full)
                previous_full = budget.full
                if batch:
                    flushed_from = time.monotonic()
                    if kind == PROFILES:
                        await self._flush_profiles(stream, consumer, batch, backoff, bound)
                    else:
                        await self._flush(kind, stream, consumer, batch, backoff, bound)
                    self._observe_batch(kind, len(batch), flushed_from)
                    backoff.reset()
            except RedisError as exc:
                self.metrics.retries.labels("writer", kind).inc()
                group_ready = False
                reader.reread_pending()
                delay = backoff.next()
                bound.warning("writer.redis_error", error=str(exc), retry_in_s=round(delay, 2))
                await self.sleep(delay)

    async def _collect(
        self, reader: StreamReader, budget: ReadBudget, *, after_full: bool = False
    ) -> list[Delivery]:
        """Read until `budget` is full (entries or bytes), `writer_batch_age_ms` after the first
        entry, or once the stream is quiet if the batch may close early (`QUIET_FLUSH_MS`)."""
        budget.begin()
        batch: list[Delivery] = []
        deadline = 0.0
        while not budget.full and not self.stopping:
            may_close_early = bool(batch) and (after_full or len(batch) >= budget.max_entries // 10)
            if batch:
                block_ms = int((deadline - time.monotonic()) * 1000)
                if block_ms <= 0:
                    break
                if may_close_early:
                    block_ms = min(block_ms, QUIET_FLUSH_MS)
            else:
                block_ms = 1000
            got = await reader.read(budget.count(), block_ms=max(block_ms, 1))
            if not got and (may_close_early or not batch):
                break
            if got and not batch:
                deadline = time.monotonic() + self.settings.writer_batch_age_ms / 1000
            budget.took(got)
            batch.extend(got)
        return batch

    def _observe_batch(self, kind: Kind, size: int, flushed_from: float) -> None:
        self.metrics.batch_size.labels("writer", kind).observe(size)
        self.metrics.batch_age.labels("writer", kind).observe(time.monotonic() - flushed_from)
        self.metrics.events.labels("writer", kind, "stored").inc(size)

    async def _flush(
        self,
        kind: Kind,
        stream: str,
        consumer: str,
        deliveries: list[Delivery],
        backoff: Backoff,
        bound: structlog.stdlib.BoundLogger,
    ) -> None:
        sink = self.sink_for[kind]
        decoded = decode_batch(kind, deliveries)
        events = decoded.events
        recheck = any(d.deliveries > 1 for d in deliveries)
        while True:
            try:
                if recheck:
                    present = await sink.existing_ids(kind, events)
                    events = [e for e in events if e.id not in present]
                insert_started = time.monotonic()
                refused = await insert_isolating(sink, kind, events)
                self.metrics.insert_seconds.labels(type(sink).__name__, kind).observe(
                    time.monotonic() - insert_started
                )
                break
            except RetryableSinkError as exc:
                recheck = True
                if not await self._wait_holding(
                    kind, exc, len(events), stream, consumer, decoded.entry_ids, backoff, bound
                ):
                    return
        dead = list(decoded.undecodable)
        for event, reason in refused:
            dead.append(
                _dead_letter(
                    kind,
                    event.tenant,
                    event.id,
                    event.received_at,
                    event.body,
                    reason,
                    1,
                )
            )
        await self._acknowledge(kind, decoded.entry_ids, dead, bound)

    async def _flush_profiles(
        self,
        stream: str,
        consumer: str,
        deliveries: list[Delivery],
        backoff: Backoff,
        bound: structlog.stdlib.BoundLogger,
    ) -> None:
        sink = self.sink_for[PROFILES]
        assert isinstance(sink, ProfileSink)  # checked in __init__
        decoded = decode_profile_batch(deliveries)
        records = decoded.records
        recheck = any(d.deliveries > 1 for d in deliveries)
        while True:
            try:
                # Always: a profile resent after the dedupe window must not become a second row.
                present = await sink.existing_profile_ids(records)
                records = [r for r in records if (r.tenant, r.id) not in present]
                refused = await insert_profiles_isolating(sink, records, recheck)
                break
            except RetryableSinkError as exc:
                recheck = True
                if not await self._wait_holding(
                    PROFILES, exc, len(records), stream, consumer, decoded.entry_ids, backoff, bound
                ):
                    return
        dead = list(decoded.undecodable)
        for record, reason in refused:
            dead.append(
                _dead_letter(
                    PROFILES,
                    record.tenant,
                    record.id,
                    record.received_at,
                    encode_clean_profile(record),
                    reason,
                    1,
                )
            )
        await self._acknowledge(PROFILES, decoded.entry_ids, dead, bound)

    async def _wait_holding(
        self,
        kind: Kind,
        exc: RetryableSinkError,
        size: int,
        stream: str,
        consumer: str,
        entry_ids: Sequence[bytes],
        backoff: Backoff,
        bound: structlog.stdlib.BoundLogger,
    ) -> bool:
        """Back off after a store failure, keeping the batch; False when stopping instead."""
        self.metrics.retries.labels("writer", kind).inc()
        delay = backoff.next()
        bound.warning(
            "writer.sink_unavailable", error=str(exc), batch=size, retry_in_s=round(delay, 2)
        )
        await self.sleep(delay)
        if self.stopping:
            return False  # unacked: the entries wait in the pending list for the next start
        # Keep ownership while we wait, so no other replica claims and inserts the batch.
        await self.redis.xclaim(stream, self.group, consumer, 0, list[Any](entry_ids), justid=True)
        return True

    async def _acknowledge(
        self,
        kind: Kind,
        entry_ids: Sequence[bytes],
        dead: Sequence[DeadLetter],
        bound: structlog.stdlib.BoundLogger,
    ) -> None:
        """XACK the batch and dead-letter the refused rows, atomically (`Streams.commit`)."""
        if dead:
            bound.warning("writer.dead_letters", count=len(dead), first_reason=dead[0].reason[:200])
        await self.streams.commit(
            kind,
            self.group,
            "clean",
            StageCommit(acked=entry_ids, dead_letters=dead),
            self.settings.dedupe_window_s,
            self.settings.dlq_maxlen,
        )
