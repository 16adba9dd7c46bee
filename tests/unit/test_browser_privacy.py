"""What the normalizer keeps of a browser visitor's IP (the browser key's `ip_policy`), and the
page origin the gateway checked. GeoIP always sees the full address first."""

from __future__ import annotations

import pytest

from shared.apikeys import IP_POLICY_ATTR, truncate_ip
from tests.unit.test_normalize import CLIENT_IP, LONDON, FakeLookups, normalize_rum, rum_body

ORIGIN = "http://127.0.0.1:8000"  # an IP-literal origin: would be scrubbed as free text


@pytest.fixture
def fakes() -> FakeLookups:
    return FakeLookups()


def test_truncate_keeps_the_network_after_geoip(fakes: FakeLookups) -> None:
    attrs = {"origin": ORIGIN, IP_POLICY_ATTR: "truncate", "note": "from 10.1.2.3"}
    event = normalize_rum(rum_body(attrs=attrs), fakes, ip=CLIENT_IP)
    assert fakes.geo_calls == [CLIENT_IP]
    assert event.geo == LONDON
    assert event.attrs == {"origin": ORIGIN, "client.address": "81.2.69.0", "note": "from <ipv4>"}


def test_drop_keeps_no_address(fakes: FakeLookups) -> None:
    attrs = {"origin": ORIGIN, IP_POLICY_ATTR: "drop"}
    event = normalize_rum(rum_body(attrs=attrs), fakes, ip="2001:db8:1:2::7")
    assert fakes.geo_calls == ["2001:db8:1:2::7"]
    assert event.attrs == {"origin": ORIGIN}


def test_native_rum_is_unchanged(fakes: FakeLookups) -> None:
    event = normalize_rum(rum_body(attrs={"origin": ORIGIN}), fakes, ip=CLIENT_IP)
    assert event.attrs == {"origin": "http://<ipv4>:8000"}  # scrubbed like any attribute


@pytest.mark.parametrize(
    ("ip", "network"),
    [
        ("81.2.69.142", "81.2.69.0"),
        ("2001:db8:abcd:12:1::9", "2001:db8:abcd::"),
        ("::ffff:81.2.69.142", "81.2.69.0"),
        ("", ""),
        ("unknown", ""),
    ],
)
def test_truncate_ip(ip: str, network: str) -> None:
    assert truncate_ip(ip) == network
