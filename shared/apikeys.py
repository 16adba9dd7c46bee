"""API keys: `key_id -> {secret, tenant}` in one Redis hash, shared by every gateway replica.

Secrets are stored as issued because HMAC verification needs them; protect Redis accordingly.
Gateways cache lookups for `key_cache_ttl_s`, so a revocation takes effect within that time.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from typing import Final

import msgspec
import redis.asyncio as aioredis

from shared.schemas import ApiKey

TENANT_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_decoder: Final = msgspec.json.Decoder(ApiKey)


class KeyStore:
    def __init__(
        self,
        redis: aioredis.Redis,
        hash_key: str,
        cache_ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.hash_key = hash_key
        self.cache_ttl_s = cache_ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    async def create(self, tenant: str) -> ApiKey:
        if TENANT_PATTERN.fullmatch(tenant) is None:
            raise ValueError(
                "tenant must be 1-64 characters of letters, digits, '_', '.', '-' "
                "starting with a letter or digit"
            )
        key = ApiKey(
            key_id="rk_" + secrets.token_hex(8),
            secret=secrets.token_hex(32),  # hex: safe to paste into shells and argv
            tenant=tenant,
            created_at=int(time.time()),
        )
        await self.redis.hset(self.hash_key, key.key_id, msgspec.json.encode(key))
        return key

    async def list(self) -> list[ApiKey]:
        raw = await self.redis.hgetall(self.hash_key)
        return sorted((_decoder.decode(v) for v in raw.values()), key=lambda k: k.created_at)

    async def revoke(self, key_id: str) -> bool:
        raw = await self.redis.hget(self.hash_key, key_id)
        if raw is None:
            return False
        key = msgspec.structs.replace(_decoder.decode(raw), revoked_at=int(time.time()))
        await self.redis.hset(self.hash_key, key_id, msgspec.json.encode(key))
        self._cache.pop(key_id, None)
        return True

    async def lookup(self, key_id: str) -> ApiKey | None:
        """The active key, or None for unknown and revoked keys (cached briefly, misses too)."""
        now = self._clock()
        cached = self._cache.get(key_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        if len(key_id) > 64:
            return None
        raw = await self.redis.hget(self.hash_key, key_id)
        key = _decoder.decode(raw) if raw is not None else None
        if key is not None and key.revoked_at:
            key = None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key_id] = (now + self.cache_ttl_s, key)
        return key
