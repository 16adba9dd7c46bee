"""Builds small MaxMind City-shaped ``.mmdb`` databases for tests (with mmdb-writer).

    build_city_mmdb(tmp_path / "city.mmdb", {
        "81.2.69.0/24": city_record("GB", "London", 51.5142, -0.0931),
        "2001:db8::/32": city_record("JP", None, 35.68536, 139.75309),
    })

The database is IPv6 with IPv4 networks mapped under ``::/96`` (like MaxMind's own), so both IPv4
and IPv6 addresses can be looked up.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet


def city_record(
    country: str | None = None,
    city: str | None = None,
    lat: float | None = None,
    lon: float | None = None,
) -> dict[str, Any]:
    """A record shaped like a GeoIP2 City one; parts whose values are all None are left out."""
    record: dict[str, Any] = {}
    if country is not None:
        record["country"] = {"iso_code": country, "names": {"en": country}}
    if city is not None:
        record["city"] = {"names": {"en": city}}
    location: dict[str, Any] = {}
    if lat is not None:
        location["latitude"] = float(lat)
    if lon is not None:
        location["longitude"] = float(lon)
    if location:
        location["accuracy_radius"] = 100
        record["location"] = location
    return record


def build_city_mmdb(path: str | os.PathLike[str], records: Mapping[str, Mapping[str, Any]]) -> str:
    """Writes ``records`` (CIDR or single address -> record dict) to ``path``; returns the path.

    Networks must not overlap (mmdb-writer would silently split the supernet).
    """
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type="GeoIP2-City",
        languages=["en"],
        description="Rivulet test City database",
    )
    for network, record in records.items():
        writer.insert_network(IPSet([network]), dict(record))
    out = os.fspath(path)
    writer.to_db_file(out)
    return out
