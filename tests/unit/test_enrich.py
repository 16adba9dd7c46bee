"""Unit tests for services.normalizer.enrich (GeoIP and User-Agent enrichment)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/unit has no __init__.py, so pytest's default (prepend) import mode only puts this directory
# on sys.path; make the repository root importable (a no-op when it already is).
_REPO_ROOT = str(Path(__file__).resolve().parents[1].parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from services.normalizer.enrich import (  # noqa: E402
    MAX_USER_AGENT_LENGTH,
    GeoLookup,
    MaxMindCityLookup,
    UserAgentLookup,
    UserAgentParser,
    no_geo,
    open_geo,
)
from shared.schemas import GeoInfo, UserAgentInfo  # noqa: E402
from tests.mmdb_fixture import build_city_mmdb, city_record  # noqa: E402

# MaxMind's official test database lives next to the repository (../shared from the repo root).
MAXMIND_TEST_DB = (
    Path(__file__).resolve().parents[3] / "shared/testdata/geoip/GeoIP2-City-Test.mmdb"
)

CHROME_LINUX = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.109 Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1"
)
FIREFOX_WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


# --- geo: database built at test time -------------------------------------------------------------


@pytest.fixture
def city_db(tmp_path: Path) -> Iterator[MaxMindCityLookup]:
    path = build_city_mmdb(
        tmp_path / "city.mmdb",
        {
            "81.2.69.0/24": city_record("GB", "London", 51.5142, -0.0931),
            "2a02:1234::/32": city_record("JP", "Tokyo", 35.68536, 139.75309),
            "198.51.100.0/24": city_record("US"),  # country only: no city, no location
            # private networks must never be reported, even if a database maps them
            "10.0.0.0/8": city_record("ZZ", "Nowhere", 1.0, 2.0),
            "fd00::/8": city_record("ZZ", "Nowhere", 1.0, 2.0),
        },
    )
    lookup = MaxMindCityLookup(path, cache_size=16)
    yield lookup
    lookup.close()


def test_built_db_ipv4_network(city_db: MaxMindCityLookup) -> None:
    geo = city_db("81.2.69.7")
    assert geo.country == "GB"
    assert geo.city == "London"
    assert geo.lat == pytest.approx(51.5142)
    assert geo.lon == pytest.approx(-0.0931)
    assert city_db("::ffff:81.2.69.7") == geo  # IPv4-mapped IPv6


def test_built_db_ipv6_network(city_db: MaxMindCityLookup) -> None:
    geo = city_db("2a02:1234:abcd::1")
    assert geo.country == "JP"
    assert geo.city == "Tokyo"
    assert geo.lat == pytest.approx(35.68536)
    assert geo.lon == pytest.approx(139.75309)


def test_built_db_partial_record(city_db: MaxMindCityLookup) -> None:
    assert city_db("198.51.100.20") == GeoInfo(country="US", city="", lat=None, lon=None)


@pytest.mark.parametrize(
    "ip",
    [
        "1.1.1.1",  # miss
        "2a03::1",  # IPv6 miss
        "10.1.2.3",  # private (mapped in the db, still filtered)
        "fd12::1",  # unique-local IPv6 (mapped in the db, still filtered)
        "::ffff:10.1.2.3",  # private behind an IPv4-mapped IPv6 address
        "127.0.0.1",
        "192.168.1.1",
        "::1",
        "fe80::1",
        "not-an-ip",
        "",
        "999.1.1.1",
        "81.2.69.7/24",
    ],
)
def test_built_db_misses(city_db: MaxMindCityLookup, ip: str) -> None:
    assert city_db(ip) == GeoInfo()


def test_geo_cache(city_db: MaxMindCityLookup) -> None:
    first = city_db("81.2.69.8")
    assert city_db("81.2.69.8") == first
    info = city_db.cache_info()
    assert info.hits == 1
    assert info.misses == 1
    for i in range(100):  # bounded
        city_db(f"81.2.69.{i}")
    assert city_db.cache_info().currsize <= 16


def test_geo_after_close(tmp_path: Path) -> None:
    path = build_city_mmdb(tmp_path / "c.mmdb", {"81.2.69.0/24": city_record("GB")})
    lookup = MaxMindCityLookup(path)
    assert lookup("81.2.69.1").country == "GB"
    lookup.close()
    assert lookup("81.2.69.1") == GeoInfo()


def test_geo_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mmdb"
    with pytest.raises(FileNotFoundError, match=r"nope\.mmdb"):
        MaxMindCityLookup(str(missing))
    with pytest.raises(FileNotFoundError):
        open_geo(str(missing))


def test_geo_unreadable_file(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.mmdb"
    bogus.write_bytes(b"this is not a maxmind database" * 10)
    with pytest.raises(ValueError, match=r"bogus\.mmdb"):
        MaxMindCityLookup(str(bogus))


def test_open_geo(tmp_path: Path) -> None:
    assert open_geo(None)("81.2.69.142") == GeoInfo()
    assert open_geo("")("81.2.69.142") == GeoInfo()
    assert no_geo("81.2.69.142") == GeoInfo()
    path = build_city_mmdb(tmp_path / "c.mmdb", {"81.2.69.0/24": city_record("GB")})
    lookup = open_geo(path)
    assert isinstance(lookup, MaxMindCityLookup)
    assert lookup("81.2.69.142").country == "GB"
    lookup.close()


def test_protocols_accept_implementations() -> None:
    # static check (mypy) that the implementations satisfy the protocols
    geo: GeoLookup = no_geo
    ua: UserAgentLookup = UserAgentParser(cache_size=4)
    assert geo("1.2.3.4") == GeoInfo()
    assert ua("") == UserAgentInfo()


# --- geo: MaxMind's official test database ------------------------------------------------------


@pytest.fixture(scope="module")
def maxmind_db() -> Iterator[MaxMindCityLookup]:
    if not MAXMIND_TEST_DB.is_file():
        pytest.skip(f"MaxMind test database not found at {MAXMIND_TEST_DB}")
    lookup = MaxMindCityLookup(str(MAXMIND_TEST_DB))
    yield lookup
    lookup.close()


@pytest.mark.parametrize(
    ("ip", "country", "city", "lat", "lon"),
    [
        ("81.2.69.142", "GB", "London", 51.5142, -0.0931),
        ("216.160.83.56", "US", "Milton", 47.2513, -122.3149),
        ("89.160.20.112", "SE", "Linköping", 58.4167, 15.6167),
        ("2001:218::1", "JP", "", 35.68536, 139.75309),
    ],
)
def test_maxmind_test_db(
    maxmind_db: MaxMindCityLookup, ip: str, country: str, city: str, lat: float, lon: float
) -> None:
    geo = maxmind_db(ip)
    assert geo.country == country
    assert geo.city == city
    assert geo.lat == pytest.approx(lat)
    assert geo.lon == pytest.approx(lon)


@pytest.mark.parametrize("ip", ["1.1.1.1", "10.0.0.1"])
def test_maxmind_test_db_misses(maxmind_db: MaxMindCityLookup, ip: str) -> None:
    assert maxmind_db(ip) == GeoInfo()


# --- user agent -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ua_parser() -> UserAgentParser:
    return UserAgentParser()


def test_ua_chrome_linux(ua_parser: UserAgentParser) -> None:
    info = ua_parser(CHROME_LINUX)
    assert info.browser == "Chrome"
    assert info.browser_version == "120.0.6099"
    assert info.os == "Linux"
    assert info.os_version == ""
    assert info.device == ""


def test_ua_safari_iphone(ua_parser: UserAgentParser) -> None:
    info = ua_parser(SAFARI_IPHONE)
    assert info.device == "iPhone"
    assert info.os == "iOS"
    assert info.os_version == "17.2.1"
    assert info.browser == "Mobile Safari"
    assert info.browser_version == "17.2"


def test_ua_firefox_windows(ua_parser: UserAgentParser) -> None:
    info = ua_parser(FIREFOX_WINDOWS)
    assert info.browser == "Firefox"
    assert info.browser_version == "121.0"
    assert info.os == "Windows"
    assert info.os_version == "10"


def test_ua_googlebot(ua_parser: UserAgentParser) -> None:
    info = ua_parser(GOOGLEBOT)
    assert info.browser == "Googlebot"
    assert info.browser_version == "2.1"
    assert info.device == "Spider"
    assert info.os == ""


def test_ua_empty_and_garbage(ua_parser: UserAgentParser) -> None:
    assert ua_parser("") == UserAgentInfo()
    garbage = ua_parser("\x00ž%$#" * 1000)  # 5000 chars
    assert isinstance(garbage, UserAgentInfo)
    assert ua_parser("x" * 5000) == UserAgentInfo()


def test_ua_oversized_is_truncated_not_dropped(ua_parser: UserAgentParser) -> None:
    long_ua = CHROME_LINUX + " " + "z" * 5000
    assert len(long_ua) > MAX_USER_AGENT_LENGTH
    assert ua_parser(long_ua).browser == "Chrome"


def test_ua_cache() -> None:
    parser = UserAgentParser(cache_size=8)
    first = parser(CHROME_LINUX)
    again = parser(CHROME_LINUX)
    assert again == first
    info = parser.cache_info()
    assert info.hits == 1
    assert info.misses == 1
    for i in range(50):  # bounded
        parser(f"{FIREFOX_WINDOWS} {i}")
    assert parser.cache_info().currsize <= 8
    assert parser(CHROME_LINUX) == first  # evicted, re-parsed, same answer
