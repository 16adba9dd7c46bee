"""Profiles end to end: services as processes, signed pprof in, `rivulet profile ...` out.

Topology: the gateway, the chdb-owning ClickHouse writer (with `profiles` among its kinds), and two
profiler replicas (one serving the HTTP reports). Every report the pipeline prints is compared
with `services.profiler.report` over the very same protobufs parsed locally, and the shared
`go tool pprof -top` goldens are compared function by function.
"""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import httpx
import msgspec
import pytest
import redis as syncredis

from services.profiler import report
from services.profiler.pprof import ParsedProfile, parse_profile
from services.profiler.records import profile_id
from services.profiler.synth import ProfileBuilder, cpu_example, random_example
from shared.schemas import ApiKey
from shared.signing import signed_headers
from tests.harness import Pipeline, free_port
from tests.servers import SHARED_DIR

TOPOLOGY: Final = (
    ("gateway", ("gateway",)),
    ("writer-clickhouse", ("writer", "--kinds", "logs,spans,rum,profiles", "--consumer", "ch")),
    ("profiler-1", ("profiler", "--consumer", "p1")),
    ("profiler-2", ("profiler", "--consumer", "p2", "--no-http")),
)
PPROF_DIR: Final = SHARED_DIR / "testdata" / "pprof"
GOLDEN_TRIM: Final = ("-n", "20", "--nodefraction", "0.05", "--edgefraction", "0.01")
MINUTE: Final = 60 * 10**9


@pytest.fixture
def profiles_pipeline(tmp_path: Path, namespace: str) -> Iterator[Pipeline]:
    pipe = Pipeline(
        tmp_path,
        namespace,
        extra_env={"RIVULET_PROFILER_HTTP_PORT": str(free_port()), "RIVULET_CLAIM_IDLE_MS": "1500"},
    )
    pipe.require_servers()
    try:
        pipe.start_standard(TOPOLOGY)
        pipe.wait_http(f"http://127.0.0.1:{pipe.env['RIVULET_PROFILER_HTTP_PORT']}/healthz")
        yield pipe
    finally:
        pipe.stop()
        pipe.cleanup()


def post_profile(
    client: httpx.Client,
    key: ApiKey,
    body: bytes,
    service: str = "api",
    type_: str = "cpu",
    **labels: str,
) -> httpx.Response:
    path = "/v1/ingest/profiles?" + urlencode({"service": service, "type": type_, **labels})
    headers = {"Content-Type": "application/octet-stream"}
    headers.update(signed_headers(key.key_id, key.secret, "POST", path, body))
    return client.post(path, content=body, headers=headers)


def send(client: httpx.Client, key: ApiKey, body: bytes, **kwargs: str) -> str:
    """Until a 202 (a crashed gateway or a spent signature second are retried); the id."""
    deadline = time.monotonic() + 120
    while True:
        try:
            response = post_profile(client, key, body, **kwargs)
            if response.status_code == 202:
                answer: dict[str, Any] = response.json()
                return str(answer["id"])
            assert response.status_code in (409, 503), response.text
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "profile never accepted"
        time.sleep(0.3)


def top(pipe: Pipeline, *args: str) -> str:
    return pipe.cli("profile", "top", *args).stdout


def golden_rows(text: str) -> tuple[str, list[list[str]]]:
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("Showing nodes accounting for"))
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["flat", "flat%"])
    return header, [line.split() for line in lines[start + 1 :]]


def test_profiles_round_trip_reports_and_refusals(profiles_pipeline: Pipeline) -> None:
    pipe = profiles_pipeline
    key = pipe.create_key("acme")
    other = pipe.create_key("globex")
    now = time.time_ns()
    old = cpu_example(1, time_nanos=now - 90 * MINUTE).encode(gzipped=True)
    recent = [
        cpu_example(2, time_nanos=now - 20 * MINUTE, extra="main.new").encode(),
        random_example(3, time_nanos=now - 10 * MINUTE).encode(gzipped=True),
    ]
    heap = ProfileBuilder(
        [
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes"),
        ]
    )
    heap.msg.default_sample_type = heap.string("alloc_space")
    heap.add(["bytes.makeSlice", "main.load"], [2, 4096, 1, 2048])
    heap.add(["main.cache", "main.load"], [1, 1 << 20, 1, 1 << 20])
    heap_body = heap.encode()
    with httpx.Client(base_url=pipe.url, timeout=30) as client:
        old_id = send(client, key, old, env="prod")
        for body in recent:
            send(client, key, body)
        heap_id = send(client, key, heap_body, service="api", type_="heap")
        send(client, other, recent[0])  # another tenant, same bytes: its own profile
        again = post_profile(client, key, old)  # a resend: no second row, ever
        assert again.status_code == 202, again.text

        # refusals the gateway can tell, nothing appended
        huge = post_profile(client, key, b"\0" * (9 * 1024 * 1024))
        assert huge.status_code == 413, huge.text
        bomb = post_profile(client, key, gzip.compress(b"\0" * (200 * 1024 * 1024)))
        assert bomb.status_code == 413 and "larger than" in bomb.text
        garbage = post_profile(client, key, b"\x0a\x05hello, not a profile")
        assert garbage.status_code == 422 and "invalid profile" in garbage.text
        missing = post_profile(client, key, cpu_example().encode(), service="")
        assert missing.status_code == 400
    assert old_id == profile_id("acme", old)

    # another producer appended a profile the profiler must refuse: DLQ with the reason
    redis = syncredis.Redis.from_url(pipe.redis_url)
    redis.xadd(
        f"{pipe.namespace}:{{profiles}}:raw",
        {
            "tenant": "acme",
            "kind": "profiles",
            "id": "bad-1",
            "received_at": str(now),
            "service": "api",
            "type": "cpu",
            "body": gzip.compress(b"\x0a\xff\xff"),
        },
    )
    redis.close()
    pipe.wait_drained(90)

    [counts] = pipe.query("SELECT count() AS n, uniqExact(tenant, id) AS u FROM rivulet.profiles")
    assert (int(counts["n"]), int(counts["u"])) == (5, 5)
    [letter] = [
        json.loads(line) for line in pipe.cli("dlq", "list", "profiles").stdout.splitlines()
    ]
    assert letter["id"] == "bad-1" and letter["stage"] == "profiler"
    assert letter["reason"].startswith("invalid profile: not a valid pprof protobuf")
    [listed] = [
        json.loads(line)
        for line in pipe.cli(
            "profile", "list", "--tenant", "acme", "--service", "api", "--since", "2h..80m"
        ).stdout.splitlines()
    ]
    assert listed["id"] == old_id and listed["labels"] == {"env": "prod"}

    # one profile by id: exactly what report.format_top prints for it parsed locally
    parsed_old = parse_profile(old)
    assert top(pipe, "--profile", old_id, "--tenant", "acme") == report.format_top(
        report.top(parsed_old)
    )
    parsed_heap = parse_profile(heap_body)
    for index in ("inuse_space", "0"):
        assert top(pipe, "--profile", heap_id, "--sample-index", index) == report.format_top(
            report.top(parsed_heap, index)
        )

    # a window: the last hour of service api, cpu, tenant acme — merged by summing
    parsed_recent: list[ParsedProfile] = [parse_profile(b) for b in recent]
    window = ("--tenant", "acme", "--service", "api", "--type", "cpu", "--since", "1h")
    assert top(pipe, *window) == report.format_top(report.top(parsed_recent))
    assert top(pipe, *window, "--cum", "-n", "5") == report.format_top(
        report.top(parsed_recent, sort_by_cum=True), nodecount=5
    )
    folded = pipe.cli("profile", "flamegraph", *window, "--format", "folded").stdout
    assert folded == report.folded(parsed_recent)
    svg = pipe.root / "flame.svg"
    pipe.cli("profile", "flamegraph", *window, "--format", "svg", "--output", str(svg))
    assert svg.read_text() == report.flamegraph_svg(parsed_recent, title="api cpu")
    diff = pipe.cli(
        "profile", "diff", "--tenant", "acme", "--service", "api", "--type", "cpu",
        "--base", "2h..1h", "--new", "1h",
    ).stdout  # fmt: skip
    assert diff == report.format_diff(report.diff(parsed_old, parsed_recent), 20)

    # the profiler's HTTP reports say the same
    base = f"http://127.0.0.1:{pipe.env['RIVULET_PROFILER_HTTP_PORT']}"
    with httpx.Client(base_url=base, timeout=60) as http:
        params = {"tenant": "acme", "service": "api", "type": "cpu", "since": "1h"}
        answer = http.get("/v1/profiles/top", params=params)
        assert answer.status_code == 200 and answer.text == report.format_top(
            report.top(parsed_recent)
        )
        as_json = http.get("/v1/profiles/top", params={**params, "format": "json", "n": "3"})
        assert [r["name"] for r in as_json.json()["rows"]] == [
            r.name for r in report.top(parsed_recent).rows[:3]
        ]
        pprof = http.get("/v1/profiles/pprof", params={"profile": old_id, "tenant": "acme"})
        assert pprof.status_code == 200 and parse_profile(pprof.content) == parsed_old
        assert http.get("/v1/profiles/top", params={"service": "nope"}).status_code == 404
        assert http.get("/v1/profiles/top", params={"since": "1h"}).status_code == 400
        assert http.post("/v1/profiles/top").status_code == 405


def test_profiles_survive_kill_9_of_profiler_and_writer(profiles_pipeline: Pipeline) -> None:
    pipe = profiles_pipeline
    key = pipe.create_key("acme")
    bodies = [
        random_example(100 + i, stacks=60, samples=400).encode(gzipped=i % 2 == 0)
        for i in range(30)
    ]
    ids: list[str] = []

    def sender() -> None:
        with httpx.Client(base_url=pipe.url, timeout=30) as client:
            for body in bodies:
                ids.append(send(client, key, body))
                time.sleep(0.05)

    thread = threading.Thread(target=sender)
    thread.start()
    time.sleep(0.5)
    pipe.kill("profiler-1")
    time.sleep(0.5)
    pipe.kill("writer-clickhouse")
    time.sleep(0.5)
    pipe.restart("profiler-1")
    pipe.kill("profiler-2")
    pipe.restart("writer-clickhouse")
    time.sleep(1.0)
    pipe.restart("profiler-2")
    thread.join(180)
    pipe.wait_http(f"http://127.0.0.1:{pipe.query_port}/healthz")
    pipe.wait_drained(180)

    assert len(ids) == 30
    [counts] = pipe.query("SELECT count() AS n, uniqExact(id) AS u FROM rivulet.profiles")
    assert (int(counts["n"]), int(counts["u"])) == (30, 30)
    stored = {
        row["profile_id"]: (int(row["v"]), int(row["n"]))
        for row in pipe.query(
            "SELECT profile_id, toString(sum(value)) AS v, count() AS n "
            "FROM rivulet.profile_samples WHERE sample_type = 'cpu' GROUP BY profile_id"
        )
    }
    for body, pid in zip(bodies, ids, strict=True):
        parsed = parse_profile(body)
        stacks = {s.stack.id for s in parsed.samples}
        assert stored[pid] == (sum(s.values[1] for s in parsed.samples), len(stacks)), pid
    assert pipe.dead_letter_ids("profiles") == []


def test_pipeline_top_matches_pprof_goldens(profiles_pipeline: Pipeline) -> None:
    """Acceptance: `rivulet profile top` through the whole pipeline vs `go tool pprof -top`."""
    driver = PPROF_DIR / "pprof-driver"
    if not driver.exists():
        pytest.skip("../shared/testdata is absent (a user's clone)")
    pipe = profiles_pipeline
    key = pipe.create_key("acme")
    sources = ["cpu.pb.gz", "long_name_funcs.pb.gz"]
    ids: dict[str, str] = {}
    with httpx.Client(base_url=pipe.url, timeout=30) as client:
        for source in sources:
            ids[source] = send(client, key, (driver / source).read_bytes(), service="golden")
        speedscope = (PPROF_DIR / "speedscope" / "simple.prof").read_bytes()
        ids["simple.prof"] = send(client, key, speedscope, service="speedscope")
    pipe.wait_drained(90)

    goldens: list[tuple[str, str, tuple[str, ...]]] = [
        ("pprof.cpu.flat.functions.text", "cpu.pb.gz", ()),
        ("pprof.cpu.flat.functions.noinlines.text", "cpu.pb.gz", ("--noinlines",)),
        (
            "pprof.cpu.flat.filefunctions.noinlines.text",
            "cpu.pb.gz",
            ("--noinlines", "--granularity", "filefunctions"),
        ),
        ("pprof.long_name_funcs.text", "long_name_funcs.pb.gz", ()),
    ]
    for golden, source, options in goldens:
        ours = top(pipe, "--profile", ids[source], *GOLDEN_TRIM, *options)
        expected = (driver / golden).read_text()
        expected_header, expected_rows = golden_rows(expected)
        header, rows = golden_rows(ours)
        assert header == expected_header, golden
        # function by function, in the golden's order
        names = [" ".join(r[5:]) for r in rows]
        for row in expected_rows:
            name = " ".join(row[5:])
            assert name in names, f"{golden}: {name} missing from\n{ours}"
            mine = rows[names.index(name)]
            assert [mine[0], mine[1], mine[3], mine[4]] == [row[0], row[1], row[3], row[4]]
        assert ours == expected, golden

    # the speedscope profile: cpu flat/cum per function as its README table says
    table = top(pipe, "--service", "speedscope", "--since", "3650d", "--sample-index", "cpu")
    expected_ms = {
        "main.alpha": ("0.48s", "0.48s"),
        "main.beta": ("0.39s", "0.39s"),
        "main.gamma": ("0.27s", "0.27s"),
        "main.delta": ("0.22s", "0.58s"),
        "runtime.duffcopy": ("0.11s", "0.11s"),
        "main.main": ("0", "1.36s"),
        "runtime.main": ("0", "1.36s"),
    }
    found = {
        m.group(5): (m.group(1), m.group(4))
        for m in re.finditer(r"^\s*(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+\S+\s+(\S+)$", table, re.M)
    }
    assert {name: found[name] for name in expected_ms} == expected_ms
    assert table.startswith("Showing nodes accounting for 1.50s, 100% of 1.50s total")
    assert (
        msgspec.json.decode(
            pipe.cli("profile", "top", "--profile", ids["simple.prof"], "--json").stdout
        )["total"]
        == 1_500_000_000
    )
