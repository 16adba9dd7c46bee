"""API keys: `key_id -> {secret, tenant}` in one Redis hash, shared by every gateway replica.

Secrets are stored as issued because HMAC verification needs them; protect Redis accordingly.
Gateways cache lookups for `key_cache_ttl_s`, so a revocation takes effect within that time.

Key types (`ApiKey.type`): `hmac` (default: signed requests), `token` (bearer tokens for OTLP
senders: only the secret's SHA-256 is stored) and `browser` (public, no secret, bound to a list
of page origins).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Final
from urllib.parse import urlsplit

import msgspec
import redis.asyncio as aioredis

from shared.schemas import ApiKey, IpPolicy, KeyType

TENANT_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_decoder: Final = msgspec.json.Decoder(ApiKey)
KEY_PREFIX: Final[dict[KeyType, str]] = {"hmac": "rk_", "token": "rt_", "browser": "rb_"}
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def normalize_origin(origin: str) -> str:
    """`scheme://host[:port]` as browsers send it in `Origin` (lower case, default port dropped);
    raises ValueError for anything else (paths, wildcards, credentials)."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        raise ValueError(f"not an origin: {origin!r}") from None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if (
        scheme not in _DEFAULT_PORTS
        or not host
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "*" in host
    ):
        raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{scheme}://{host}" + (f":{port}" if port and port != _DEFAULT_PORTS[scheme] else "")


# Set by the gateway on every event a browser key sends (any value a page sent is replaced), read
# and removed by the normalizer: what to keep of the client IP once GeoIP has used it.
IP_POLICY_ATTR: Final = "rivulet.ip_policy"
ORIGIN_ATTR: Final = "origin"
TRUNCATED_IP_ATTR: Final = "client.address"


def truncate_ip(ip: str) -> str:
    """The /24 (IPv4) or /48 (IPv6) network address of `ip`; "" when it is not an address."""
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


def describe_key(key: ApiKey, created: bool) -> dict[str, object]:
    """What `rivulet keys create` (created=True: with the secret, shown once) and `keys list`
    print about a key beyond its id and tenant."""
    out: dict[str, object] = {"type": key.type}
    if created:
        out = {"key_id": key.key_id, "secret": key.secret, "tenant": key.tenant, **out}
        if key.type == "token":
            out["token"] = f"{key.key_id}.{key.secret}"
    if key.type == "token":
        out["allow_native"] = key.allow_native
    if key.type == "browser":
        out["origins"] = list(key.origins)
        out["ip"] = key.ip_policy
    return out


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_bearer(authorization: str) -> tuple[str, str] | None:
    """`Bearer <key_id>.<secret>` -> (key_id, secret), else None."""
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    key_id, dot, secret = credentials.strip().partition(".")
    if not (dot and key_id and secret) or len(key_id) > 64 or len(secret) > 256:
        return None
    return key_id, secret


def token_matches(key: ApiKey, secret: str) -> bool:
    """Constant-time check of a bearer secret against a token key's stored hash."""
    if key.type != "token" or not key.token_sha256:
        return False
    return hmac.compare_digest(key.token_sha256.encode(), _sha256(secret).encode())


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

    async def create(
        self,
        tenant: str,
        type: KeyType = "hmac",
        *,
        origins: Sequence[str] = (),
        allow_native: bool = False,
        ip_policy: IpPolicy = "truncate",
    ) -> ApiKey:
        """A new key; for token keys the returned key holds the secret, the stored one only its
        hash. Browser keys need at least one origin (`https://shop.example.com`)."""
        if TENANT_PATTERN.fullmatch(tenant) is None:
            raise ValueError(
                "tenant must be 1-64 characters of letters, digits, '_', '.', '-' "
                "starting with a letter or digit"
            )
        if type not in KEY_PREFIX:
            raise ValueError(f"key type must be one of {', '.join(KEY_PREFIX)}")
        if type == "browser" and not origins:
            raise ValueError("a browser key needs at least one --origin")
        if type != "browser" and origins:
            raise ValueError("--origin is for browser keys")
        if allow_native and type != "token":
            raise ValueError("--allow-native is for token keys")
        secret = "" if type == "browser" else secrets.token_hex(32)  # hex: safe in shells, argv
        key = ApiKey(
            key_id=KEY_PREFIX[type] + secrets.token_hex(8),
            secret=secret,
            tenant=tenant,
            created_at=int(time.time()),
            type=type,
            allow_native=allow_native,
            origins=tuple(dict.fromkeys(normalize_origin(o) for o in origins)),
            ip_policy=ip_policy,
        )
        stored = key
        if type == "token":
            stored = msgspec.structs.replace(key, secret="", token_sha256=_sha256(secret))
        await self.redis.hset(self.hash_key, key.key_id, msgspec.json.encode(stored))
        return msgspec.structs.replace(stored, secret=secret)

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
