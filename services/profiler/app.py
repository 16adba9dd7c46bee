"""Profiler: `rivulet:{profiles}:raw` (group `profilers`) -> `rivulet:{profiles}:clean` (+ `:dlq`).

Input: raw profile entries (a pprof protobuf, gzipped or not, with tenant, id, service, type,
labels), appended by the gateway.
Output: per raw entry, one clean entry whose body is a `CleanProfile` (msgpack: the profile row,
its functions, distinct stacks and per-stack summed values, the protobuf gzipped), or one dead
letter saying why the profile was refused (`parse_profile`'s reason, or a limit).
Guarantee: the clean entries, dead letters, dedupe markers and the XACK of the raw batch are one
Lua script (`shared.profile_streams.FIELDS_COMMIT`), and a (tenant, id) seen within the dedupe
window is not output again: every raw entry ends as exactly one clean entry, one dead letter, or
a duplicate of a profile already clean — with any number of replicas, crashes and retries. An
entry delivered more than `max_deliveries` times (one that keeps killing its worker) is
dead-lettered. While the clean backlog is above `profile_raw_high_watermark`, reading pauses.

Decoding is CPU work: it runs in a thread (`process_batch` is pure), so the process keeps
serving its HTTP reports meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from services.profiler.pprof import InvalidProfile, ProfileLimits, parse_profile
from services.profiler.records import to_clean_profile
from shared.config import Settings
from shared.consumer import StreamReader, ensure_group
from shared.entries import Delivery, MalformedEntry
from shared.profile_streams import (
    PROFILER_GROUP,
    FieldList,
    FieldsCommit,
    OutputEntry,
    ProfileStreams,
    clean_profile_entry,
    decode_raw_profile,
    profile_dead_letter_fields,
)
from shared.retry import Backoff
from shared.schemas import PROFILES, DeadLetter
from shared.streams import Keys, Streams
from shared.worker import StoppableWorker

log = structlog.get_logger()


def limits_of(settings: Settings) -> ProfileLimits:
    return ProfileLimits(
        max_bytes=settings.max_profile_decoded_bytes,
        max_samples=settings.max_profile_samples,
        max_stack_depth=settings.max_profile_stack_depth,
    )


def salvaged(delivery: Delivery, reason: str) -> FieldList:
    """A dead letter for a raw entry that did not decode: keep whatever it had."""
    fields = delivery.fields
    received_at = fields.get(b"received_at", b"0")
    letter = DeadLetter(
        tenant=fields.get(b"tenant", b"").decode("utf-8", "replace"),
        kind=PROFILES,
        id=fields.get(b"id", b"").decode("utf-8", "replace"),
        received_at=int(received_at) if received_at.isdigit() and len(received_at) < 20 else 0,
        body=fields.get(b"body", b""),
        reason=reason,
        stage="profiler",
        attempts=delivery.deliveries,
        ip=fields.get(b"ip", b"").decode("utf-8", "replace"),
        ua=fields.get(b"ua", b"").decode("utf-8", "replace"),
    )
    return profile_dead_letter_fields(
        letter,
        service=fields.get(b"service", b"").decode("utf-8", "replace"),
        type_=fields.get(b"type", b"").decode("utf-8", "replace"),
        labels=fields.get(b"labels", b"{}"),
    )


def process_batch(
    deliveries: Sequence[Delivery], limits: ProfileLimits, max_deliveries: int
) -> FieldsCommit:
    """Pure: what a batch of raw profile deliveries becomes."""
    outputs: list[OutputEntry] = []
    dead: list[FieldList] = []
    for delivery in deliveries:
        try:
            entry = decode_raw_profile(delivery.fields)
        except MalformedEntry as exc:
            dead.append(salvaged(delivery, f"malformed raw entry: {exc}"))
            continue
        reason = ""
        if delivery.deliveries > max_deliveries:
            reason = f"delivered {delivery.deliveries} times without being processed"
        elif not entry.service or not entry.type:
            reason = "invalid profile: no service or no type"
        else:
            try:
                parsed = parse_profile(entry.body, limits)
                outputs.append(clean_profile_entry(to_clean_profile(entry, parsed)))
            except InvalidProfile as exc:
                reason = f"invalid profile: {exc.reason}"
            except Exception as exc:  # a bug must not wedge the stream: park the profile
                reason = f"profiler error: {type(exc).__name__}: {exc}"
        if reason:
            letter = DeadLetter(
                tenant=entry.tenant,
                kind=PROFILES,
                id=entry.id,
                received_at=entry.received_at,
                body=entry.body,
                reason=reason,
                stage="profiler",
                attempts=delivery.deliveries,
                ip=entry.ip,
                ua=entry.ua,
            )
            dead.append(
                profile_dead_letter_fields(
                    letter,
                    service=entry.service,
                    type_=entry.type,
                    labels=delivery.fields.get(b"labels", b"{}"),
                )
            )
    return FieldsCommit(acked=[d.id for d in deliveries], outputs=outputs, dead_letters=dead)


class Profiler(StoppableWorker):
    def __init__(self, settings: Settings, redis: aioredis.Redis, consumer: str) -> None:
        super().__init__()
        self.settings = settings
        self.redis = redis
        self.keys = Keys(settings.namespace)
        self.streams = ProfileStreams(redis, self.keys)
        self.consumer = consumer
        self.limits = limits_of(settings)
        self.decoded = 0  # profiles turned into clean entries by this process
        self.refused = 0

    async def run(self) -> None:
        raw = self.keys.stream(PROFILES, "raw")
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._consume())
            tasks.create_task(
                self.trim_loop(Streams(self.redis, self.keys), [raw], self.settings.trim_interval_s)
            )

    async def _decode(self, raw: str, deliveries: list[Delivery]) -> FieldsCommit:
        """`process_batch` in a thread; meanwhile the entries stay ours (a big batch may take
        longer than `claim_idle_ms`, and another replica would claim and decode it again)."""
        ids: list[Any] = [d.id for d in deliveries]
        work = asyncio.ensure_future(
            asyncio.to_thread(process_batch, deliveries, self.limits, self.settings.max_deliveries)
        )
        interval = max(0.05, self.settings.claim_idle_ms / 3000)
        while True:
            done, _ = await asyncio.wait({work}, timeout=interval)
            if done:
                return work.result()
            # on an outage, the commit after decoding meets it too, and retries
            with contextlib.suppress(RedisError):
                await self.redis.xclaim(raw, PROFILER_GROUP, self.consumer, 0, ids, justid=True)

    async def _consume(self) -> None:
        raw = self.keys.stream(PROFILES, "raw")
        clean = self.keys.stream(PROFILES, "clean")
        reader = StreamReader(
            self.redis,
            raw,
            PROFILER_GROUP,
            self.consumer,
            claim_idle_ms=self.settings.claim_idle_ms,
        )
        bound = log.bind(stream=raw, consumer=self.consumer)
        backoff = Backoff(self.settings.retry_base_s, self.settings.retry_max_s)
        group_ready = False
        while not self.stopping:
            try:
                if not group_ready:
                    await ensure_group(self.redis, raw, PROFILER_GROUP)
                    group_ready = True
                if await self.redis.xlen(clean) >= self.settings.profile_raw_high_watermark:
                    await self.sleep(0.5)
                    continue
                deliveries = await reader.read(max(1, self.settings.profiler_batch), block_ms=1000)
                if not deliveries:
                    continue
                batch = await self._decode(raw, deliveries)
                await self.streams.commit(
                    PROFILER_GROUP, batch, self.settings.dedupe_window_s, self.settings.dlq_maxlen
                )
                self.decoded += len(batch.outputs)
                self.refused += len(batch.dead_letters)
                if batch.dead_letters:
                    bound.warning("profiler.dead_letters", count=len(batch.dead_letters))
                backoff.reset()
            except RedisError as exc:
                group_ready = False
                reader.reread_pending()
                delay = backoff.next()
                bound.warning("profiler.redis_error", error=str(exc), retry_in_s=round(delay, 2))
                await self.sleep(delay)
