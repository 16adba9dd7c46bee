"""Per-event enrichment for the normalizer: client IP -> city-level geo, User-Agent -> browser/OS.

Both lookups are plain callables behind small protocols (`GeoLookup`, `UserAgentLookup`), so the
normalizer and tests can inject fakes:

- `MaxMindCityLookup` reads a MaxMind City-style ``.mmdb`` with the raw `maxminddb` reader (the C
  extension when available, ``MODE_AUTO``) and picks ``country.iso_code``, ``city.names.en`` and
  ``location.latitude/longitude`` out of the record dict; invalid, private, loopback and unknown
  addresses give an empty `GeoInfo`. `no_geo` is the stand-in when no database is configured.
- `UserAgentParser` uses ua-parser 1.x with the fastest resolver available (ua-parser-rs, else the
  builtin pure-Python regexes).

Lookups run once per event, so both classes memoise their results in an LRU cache bounded by
``cache_size`` entries (`functools.lru_cache`): a cache hit costs one dict probe, a miss costs a
database/regex lookup. User-Agent strings are truncated to `MAX_USER_AGENT_LENGTH` characters before
parsing (and caching), which bounds both the regex work and the memory held by the cache keys.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import threading
from collections.abc import Mapping
from typing import Any, Final, Protocol

import maxminddb
import ua_parser
from ua_parser import Domain, Resolver

from shared.schemas import GeoInfo, UserAgentInfo

__all__ = [
    "MAX_USER_AGENT_LENGTH",
    "GeoLookup",
    "MaxMindCityLookup",
    "UserAgentLookup",
    "UserAgentParser",
    "no_geo",
    "open_geo",
]

MAX_USER_AGENT_LENGTH: Final = 1024
"""User-Agent strings longer than this are truncated before parsing."""

_EMPTY_GEO: Final = GeoInfo()
_EMPTY_UA: Final = UserAgentInfo()
_OTHER: Final = "Other"  # ua-parser's family for "no match"


class GeoLookup(Protocol):
    def __call__(self, ip: str) -> GeoInfo: ...


class UserAgentLookup(Protocol):
    def __call__(self, user_agent: str) -> UserAgentInfo: ...


# --- geo -----------------------------------------------------------------------------------------


def no_geo(ip: str) -> GeoInfo:
    """`GeoLookup` used when no GeoIP database is configured: always an empty `GeoInfo`."""
    return _EMPTY_GEO


# Addresses that are never in a public GeoIP database (and must not be reported even if a custom
# database maps them). Documentation ranges (192.0.2.0/24, 2001:db8::/32, ...) are deliberately not
# listed: test databases commonly use them.
_NON_PUBLIC_NETWORKS: Final[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this" network
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # carrier-grade NAT (RFC 6598)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local
        "172.16.0.0/12",  # RFC 1918
        "192.168.0.0/16",  # RFC 1918
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved + broadcast
        "::/128",  # unspecified
        "::1/128",  # loopback
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "ff00::/8",  # multicast
    )
)


# (version, first, last) integer ranges: cheaper to test than `addr in network`
_NON_PUBLIC_RANGES: Final[tuple[tuple[int, int, int], ...]] = tuple(
    (net.version, int(net.network_address), int(net.broadcast_address))
    for net in _NON_PUBLIC_NETWORKS
)


def _is_public(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    version, n = addr.version, int(addr)
    return not any(v == version and lo <= n <= hi for v, lo, hi in _NON_PUBLIC_RANGES)


def _float_or_none(value: Any) -> float | None:
    # bool is an int subclass; a latitude of True is garbage, not 1.0
    if isinstance(value, float | int) and not isinstance(value, bool):
        return float(value)
    return None


def _geo_from_record(record: Any) -> GeoInfo:
    """Picks the `GeoInfo` fields out of a MaxMind City record dict (tolerating missing parts)."""
    if not isinstance(record, Mapping):
        return _EMPTY_GEO
    country = record.get("country")
    iso = country.get("iso_code") if isinstance(country, Mapping) else None
    city = record.get("city")
    names = city.get("names") if isinstance(city, Mapping) else None
    name = names.get("en") if isinstance(names, Mapping) else None
    location = record.get("location")
    if isinstance(location, Mapping):
        lat = _float_or_none(location.get("latitude"))
        lon = _float_or_none(location.get("longitude"))
    else:
        lat = lon = None
    geo = GeoInfo(
        country=iso if isinstance(iso, str) else "",
        city=name if isinstance(name, str) else "",
        lat=lat,
        lon=lon,
    )
    return _EMPTY_GEO if geo == _EMPTY_GEO else geo


class MaxMindCityLookup:
    """`GeoLookup` backed by a MaxMind City(-compatible) ``.mmdb`` file, with a bounded LRU cache.

    Thread-safe: the maxminddb reader and `functools.lru_cache` both are.
    """

    def __init__(self, path: str, cache_size: int = 65536) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"GeoIP database not found: {path!r}")
        try:
            self._reader = maxminddb.open_database(path, maxminddb.MODE_AUTO)
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise ValueError(f"cannot open GeoIP database {path!r}: {exc}") from exc
        self.path = path
        self._lookup = functools.lru_cache(maxsize=cache_size)(self._uncached)

    def __call__(self, ip: str) -> GeoInfo:
        return self._lookup(ip)

    def _uncached(self, ip: str) -> GeoInfo:
        try:
            addr = ipaddress.ip_address(ip.strip())
        except (ValueError, TypeError, AttributeError):
            return _EMPTY_GEO
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            # ::ffff:a.b.c.d (dual-stack sockets): look up, and filter, the IPv4 address itself;
            # not every database aliases ::ffff:0:0/96 to its IPv4 subtree
            addr = addr.ipv4_mapped
        try:
            record = self._reader.get(addr)
        except ValueError:  # e.g. an IPv6 address against an IPv4-only database, or closed
            return _EMPTY_GEO
        # public databases have no record for private ranges, so only hits need the check
        if record is None or not _is_public(addr):
            return _EMPTY_GEO
        return _geo_from_record(record)

    def cache_info(self) -> functools._CacheInfo:
        """Hit/miss statistics of the lookup cache (for metrics)."""
        return self._lookup.cache_info()

    def close(self) -> None:
        """Closes the database and drops the cache; later lookups return an empty `GeoInfo`."""
        self._lookup.cache_clear()
        self._reader.close()


def open_geo(path: str | None) -> GeoLookup:
    """`MaxMindCityLookup` for ``path``, or `no_geo` when no database is configured."""
    if not path:
        return no_geo
    return MaxMindCityLookup(path)


# --- user agent ----------------------------------------------------------------------------------

_resolver_lock = threading.Lock()
_resolver: Resolver | None = None


def _shared_resolver() -> Resolver:
    """The uncached ua-parser resolver, built once per process (the Rust one takes ~0.4 s)."""
    global _resolver
    with _resolver_lock:
        if _resolver is None:
            if ua_parser.RegexResolver is not None:  # ua-parser-rs is importable
                _resolver = ua_parser.RegexResolver(ua_parser.load_lazy_builtins())
            else:
                _resolver = ua_parser.BasicResolver(ua_parser.load_builtins())
        return _resolver


def _version(major: str | None, minor: str | None, patch: str | None) -> str:
    parts: list[str] = []
    for part in (major, minor, patch):
        if not part:
            break
        parts.append(part)
    return ".".join(parts)


def _family(family: str) -> str:
    return "" if family == _OTHER else family


class UserAgentParser:
    """`UserAgentLookup` on ua-parser 1.x (ua-parser-rs when installed), with a bounded LRU cache.

    Family names are ua-parser's ("Chrome", "Mobile Safari", "Mac OS X", "iPhone", ...); versions
    join the major/minor/patch components that are present with "."; "Other" (no match) becomes "".
    """

    def __init__(self, cache_size: int = 4096) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self._resolver = _shared_resolver()
        self._lookup = functools.lru_cache(maxsize=cache_size)(self._uncached)

    def __call__(self, user_agent: str) -> UserAgentInfo:
        if not user_agent:
            return _EMPTY_UA
        if len(user_agent) > MAX_USER_AGENT_LENGTH:
            user_agent = user_agent[:MAX_USER_AGENT_LENGTH]
        return self._lookup(user_agent)

    def _uncached(self, user_agent: str) -> UserAgentInfo:
        result = self._resolver(user_agent, Domain.ALL)
        browser = browser_version = os_name = os_version = device = ""
        if (ua := result.user_agent) is not None and (browser := _family(ua.family)):
            browser_version = _version(ua.major, ua.minor, ua.patch)
        if (o := result.os) is not None and (os_name := _family(o.family)):
            os_version = _version(o.major, o.minor, o.patch)
        if result.device is not None:
            device = _family(result.device.family)
        info = UserAgentInfo(
            browser=browser,
            browser_version=browser_version,
            os=os_name,
            os_version=os_version,
            device=device,
        )
        return _EMPTY_UA if info == _EMPTY_UA else info

    def cache_info(self) -> functools._CacheInfo:
        """Hit/miss statistics of the parse cache (for metrics)."""
        return self._lookup.cache_info()
