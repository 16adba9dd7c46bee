"""Normalizer: `rivulet:{KIND}:raw` (group `normalizers`) -> `rivulet:{KIND}:clean` (+ `:dlq`).

Per batch (one read of up to `normalizer_batch` entries or `normalizer_batch_bytes` of them,
`shared.budget`): validate, canonicalise, enrich and scrub every event
(services.normalizer.normalize); then ONE Lua script appends the clean entries whose (tenant, id)
was not seen within the dedupe window, appends dead letters, and XACKs the raw entries.
Guarantee: every raw entry ends as exactly one clean entry or one dead letter (or as a duplicate
of an event already clean), even when replicas crash: unacked entries are re-read by the
restarted consumer or claimed by another after `claim_idle_ms`; an entry delivered more than
`max_deliveries` times is dead-lettered. While the clean backlog is above its watermark (writers
down), the normalizer stops reading.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Final

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from services.normalizer.enrich import UserAgentParser, open_geo
from services.normalizer.normalize import Enrichment, process_batch
from shared.budget import ReadBudget
from shared.config import Settings
from shared.consumer import StreamReader, ensure_group
from shared.entries import StageCommit
from shared.metrics import WorkerMetrics
from shared.retry import Backoff
from shared.schemas import Kind
from shared.streams import Keys, Streams
from shared.worker import StoppableWorker

log = structlog.get_logger()

# The clean backlog is checked at most this often, not per batch: a round trip per batch costs
# more than the few batches it can let past the watermark.
WATERMARK_CHECK_S: Final = 0.25


class Normalizer(StoppableWorker):
    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis,
        kinds: Sequence[Kind],
        consumer: str,
        enrichment: Enrichment,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.redis = redis
        self.keys = Keys(settings.namespace)
        self.streams = Streams(redis, self.keys)
        self.kinds = kinds
        self.consumer = consumer
        self.enrichment = enrichment
        self.group = self.keys.group("normalizer")
        self.metrics = metrics or WorkerMetrics("normalizer")
        self._cache_seen: dict[str, tuple[int, int]] = {}

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            for kind in self.kinds:
                for index in range(max(1, self.settings.normalizer_consumers)):
                    tasks.create_task(self._run_kind(kind, f"{self.consumer}-{index}"))
            tasks.create_task(
                self.trim_loop(
                    self.streams,
                    [self.keys.stream(k, "raw") for k in self.kinds],
                    self.settings.trim_interval_s,
                    dedupe_kinds=self.kinds,
                )
            )

    async def _run_kind(self, kind: Kind, consumer: str) -> None:
        raw = self.keys.stream(kind, "raw")
        clean = self.keys.stream(kind, "clean")
        reader = StreamReader(
            self.redis, raw, self.group, consumer, claim_idle_ms=self.settings.claim_idle_ms
        )
        bound = log.bind(stream=raw, consumer=consumer)
        backoff = Backoff(self.settings.retry_base_s, self.settings.retry_max_s)
        budget = ReadBudget(self.settings.normalizer_batch, self.settings.normalizer_batch_bytes)
        group_ready = False
        watermark_checked_at = -WATERMARK_CHECK_S
        while not self.stopping:
            try:
                if not group_ready:
                    await self.streams.prepare_dedupe(
                        kind, self.group, self.settings.dedupe_window_s
                    )
                    await ensure_group(self.redis, raw, self.group)
                    group_ready = True
                if time.monotonic() - watermark_checked_at >= WATERMARK_CHECK_S:
                    if await self.redis.xlen(clean) >= self.settings.clean_high_watermark:
                        await self.sleep(0.5)
                        continue
                    watermark_checked_at = time.monotonic()
                budget.begin()
                deliveries = await reader.read(budget.count(), block_ms=1000)
                if not deliveries:
                    continue
                budget.took(deliveries)
                read_at = time.monotonic()
                batch = process_batch(
                    kind, deliveries, self.enrichment, self.settings.max_deliveries
                )
                added, duplicates = await self.streams.commit(
                    kind,
                    self.group,
                    "raw",
                    batch,
                    self.settings.dedupe_window_s,
                    self.settings.dlq_maxlen,
                )
                self._observe(kind, len(deliveries), added, duplicates, batch, read_at)
                backoff.reset()
            except RedisError as exc:
                self.metrics.retries.labels("normalizer", kind).inc()
                group_ready = False
                reader.reread_pending()
                delay = backoff.next()
                bound.warning("normalizer.redis_error", error=str(exc), retry_in_s=round(delay, 2))
                await self.sleep(delay)

    def _observe(
        self,
        kind: Kind,
        size: int,
        added: int,
        duplicates: int,
        batch: StageCommit,
        read_at: float,
    ) -> None:
        m = self.metrics
        m.batch_size.labels("normalizer", kind).observe(size)
        m.batch_age.labels("normalizer", kind).observe(time.monotonic() - read_at)
        m.events.labels("normalizer", kind, "clean").inc(added)
        m.events.labels("normalizer", kind, "duplicate").inc(duplicates)
        m.events.labels("normalizer", kind, "dead_letter").inc(len(batch.dead_letters))
        m.dedupe_hits.labels(kind).inc(duplicates)
        for cache, lookup in (
            ("geo", self.enrichment.geo),
            ("user_agent", self.enrichment.user_agent),
        ):
            info = getattr(lookup, "cache_info", None)
            if info is not None:
                stats = info()
                self._cache_totals(cache, int(stats.hits), int(stats.misses))

    def _cache_totals(self, cache: str, hits: int, misses: int) -> None:
        """Enrichment caches count for themselves; export the growth since the last batch."""
        last_hits, last_misses = self._cache_seen.get(cache, (0, 0))
        self.metrics.cache_lookups.labels(cache, "hit").inc(max(0, hits - last_hits))
        self.metrics.cache_lookups.labels(cache, "miss").inc(max(0, misses - last_misses))
        self._cache_seen[cache] = (hits, misses)


def build_enrichment(settings: Settings) -> Enrichment:
    return Enrichment(geo=open_geo(settings.geoip_city_db or None), user_agent=UserAgentParser())
