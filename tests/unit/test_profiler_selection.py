"""Unit tests for services.profiler.selection, the SQL of services.profiler.store and the
option parsing of services.profiler.views (pure)."""

from __future__ import annotations

import pytest

from services.profiler.selection import (
    Selection,
    SelectionError,
    Window,
    flame_format,
    granularity_option,
    parse_duration,
    parse_instant,
    parse_window,
    sample_index_option,
    selection,
)
from services.profiler.store import (
    ProfileMeta,
    chosen_sample_type,
    functions_sql,
    header,
    meta_sql,
    quote,
    stacks_sql,
    sums_sql,
)
from services.profiler.views import diff_selections, options_from, selection_from

NOW = 1_800_000_000 * 10**9
H = 3600 * 10**9


def test_durations() -> None:
    assert parse_duration("90s") == 90 * 10**9
    assert parse_duration("1h30m") == 90 * 60 * 10**9
    assert parse_duration("1.5h") == 90 * 60 * 10**9
    assert parse_duration("2d") == 48 * H
    assert parse_duration("250ms") == 250 * 10**6
    for bad in ("", "h", "1x", "1h-", "-1h", "1 h"):
        with pytest.raises(SelectionError):
            parse_duration(bad)


def test_instants_and_windows() -> None:
    assert parse_instant("now", NOW) == NOW
    assert parse_instant("2h", NOW) == NOW - 2 * H
    assert parse_instant("2026-01-01T00:00:00Z", NOW) == 1_767_225_600 * 10**9
    assert parse_instant("2026-01-01T01:00:00+01:00", NOW) == 1_767_225_600 * 10**9
    assert parse_window("1h", NOW) == Window(NOW - H, NOW)
    assert parse_window("2h..1h", NOW) == Window(NOW - 2 * H, NOW - H)
    assert parse_window("3h..", NOW) == Window(NOW - 3 * H, NOW)
    assert parse_window("2026-01-01T00:00:00Z..2026-01-01T01:00:00Z", NOW) == Window(
        1_767_225_600 * 10**9, 1_767_229_200 * 10**9
    )
    for bad in ("1h..2h", "now..now", "yesterday", "1h..soon"):
        with pytest.raises(SelectionError):
            parse_window(bad, NOW)


def test_selection_rules() -> None:
    sel = selection(tenant=None, service="api", type_="", since=None, profile_id=None, now_ns=NOW)
    assert sel == Selection(service="api", window=Window(NOW - H, NOW))
    one = selection(tenant="t", service=None, type_=None, since=None, profile_id="p", now_ns=NOW)
    assert one == Selection(tenant="t", profile_id="p")
    with pytest.raises(SelectionError, match="service"):
        selection(tenant=None, service=None, type_=None, since="1h", profile_id=None, now_ns=NOW)
    with pytest.raises(SelectionError, match="either"):
        selection(tenant=None, service="a", type_=None, since="1h", profile_id="p", now_ns=NOW)
    with pytest.raises(SelectionError, match="longer"):
        selection(tenant=None, service="a" * 300, type_=None, since=None, profile_id=None, now_ns=0)


def test_option_values() -> None:
    assert sample_index_option(None) is None
    assert sample_index_option("2") == 2
    assert sample_index_option("inuse_space") == "inuse_space"
    assert granularity_option(None) == "functions"
    assert granularity_option("filefunctions") == "filefunctions"
    assert flame_format("svg") == "svg" and flame_format(None) == "folded"
    with pytest.raises(SelectionError):
        granularity_option("lines")
    with pytest.raises(SelectionError):
        flame_format("png")


def test_http_options() -> None:
    opts = options_from({"sample_index": "cpu", "cum": "1", "n": "5", "noinlines": "true"})
    assert (opts.sample_index, opts.sort_by_cum, opts.nodecount, opts.noinlines) == (
        "cpu",
        True,
        5,
        True,
    )
    assert options_from({"nodefraction": "0.05"}).nodefraction == 0.05
    for bad in ({"n": "-1"}, {"nodefraction": "2"}, {"nodefraction": "x"}):
        with pytest.raises(SelectionError):
            options_from(bad)
    assert selection_from({"service": "api", "since": "2h"}, NOW).window == Window(NOW - 2 * H, NOW)
    base, new = diff_selections({"service": "api", "base": "2h..1h", "new": "1h"}, NOW)
    assert (base.window, new.window) == (Window(NOW - 2 * H, NOW - H), Window(NOW - H, NOW))
    with pytest.raises(SelectionError):
        diff_selections({"service": "api", "base": "1h"}, NOW)


# --- SQL -----------------------------------------------------------------------------------------


def test_quote_escapes_everything_that_could_end_the_literal() -> None:
    assert quote("plain") == "'plain'"
    assert quote("it's") == "'it\\'s'"
    assert quote("back\\slash") == "'back\\\\slash'"
    assert quote("a\nb\x00c") == "'a\\x0ab\\x00c'"
    assert quote("x' OR 1=1 --") == "'x\\' OR 1=1 --'"


def test_queries_are_narrowed_by_the_sort_keys() -> None:
    sel = Selection(tenant="acme", service="api", type="cpu", window=Window(1, 2))
    meta = meta_sql("rivulet", sel)
    assert "FROM `rivulet`.profiles WHERE tenant = 'acme' AND service = 'api'" in meta
    assert "type = 'cpu' AND ts >= fromUnixTimestamp64Nano(toInt64(1))" in meta
    assert "ts < fromUnixTimestamp64Nano(toInt64(2))" in meta
    sums = sums_sql("rivulet", sel, "cpu")
    assert "FROM `rivulet`.profile_samples WHERE tenant = 'acme'" in sums
    assert "sample_type = 'cpu'" in sums
    assert "(tenant, profile_id) IN (SELECT tenant, id FROM `rivulet`.profiles" in sums
    assert "GROUP BY stack_hash, sample_unit" in sums
    one = sums_sql("rivulet", Selection(tenant="a", service="s", type="t", profile_id="p"), "x", 9)
    assert "profile_id = 'p'" in one and "ts = fromUnixTimestamp64Nano(toInt64(9))" in one
    assert "LIMIT 1 BY stack_hash" in stacks_sql("rivulet", sel, "cpu")
    assert "LIMIT 1 BY function_hash" in functions_sql("rivulet", sel, "cpu")
    everyone = meta_sql("rivulet", Selection(service="api"))
    assert "tenant" not in everyone.split("WHERE")[1].split("ORDER")[0]


def meta(id_: str, types: list[str], *, default: str = "", time_nanos: int = 0) -> ProfileMeta:
    return ProfileMeta(
        tenant="acme",
        id=id_,
        service="api",
        type="cpu",
        ts_ns=1,
        received_ns=1,
        sample_types=types,
        sample_units=["count"] * len(types),
        default_sample_type=default,
        time_nanos=time_nanos,
        duration_ns=10,
        comments=[f"c{id_}", "shared"],
    )


def test_sample_type_is_resolved_on_the_first_profile_like_pprof() -> None:
    a = meta("a", ["samples", "cpu"])
    assert chosen_sample_type([a], None) == "cpu"
    assert chosen_sample_type([a], 0) == "samples"
    assert chosen_sample_type([meta("h", ["x", "y"], default="x")], None) == "x"
    assert chosen_sample_type([a, meta("b", ["cpu", "samples"])], None) == "cpu"
    with pytest.raises(ValueError, match="no sample type 'cpu'"):
        chosen_sample_type([a, meta("c", ["alloc"])], None)
    with pytest.raises(ValueError):
        chosen_sample_type([a], "nope")


def test_header_merges_like_report() -> None:
    merged = header([meta("a", ["x"], time_nanos=5), meta("b", ["x"], time_nanos=3)])
    assert (merged.time_nanos, merged.duration_nanos) == (3, 20)
    assert merged.comments == ("ca", "shared", "cb")
