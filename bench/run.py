"""`make bench`: the pipeline against the raw limits of its parts, on this machine.

1. Raw limits on the same data shape: Redis pipelined XADD entries/s (from redis-py, and from
   redis-benchmark's C client when it is installed: the server's own ceiling, which the gateway's
   ratio uses), ClickHouse insert rows/s through clickhouse-connect (chdb, or the server in
   RIVULET_CLICKHOUSE_URL), PostgreSQL COPY rows/s through asyncpg.
2. The pipeline as processes (`rivulet up`'s topology: 2 normalizers, 1 writer; then 2 normalizers
   + 2 metrics writers), fed by concurrent signed senders with realistic events in batches of 500.
3. One table: gateway accepted events/s, end-to-end events/s (first send to last row queryable),
   p50/p95/p99 ingest->queryable latency of sampled events, CPU seconds per 1M events and peak RSS
   per service, each stage as a ratio of its raw limit.

The Redis is the test suite's (RIVULET_TEST_REDIS_URL) and the table says what it keeps on disk;
`--durable-redis` starts a private one with the append-only file `rivulet up` gives its own.

    .venv/bin/python -m bench.run [--events N] [--duration S] [--rate R] [--json FILE] [--soak]
        [--durable-redis [--redis-config NAME=VALUE ...]]

Not part of `make test`: figures, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import json
import multiprocessing
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, cast

import asyncpg
import httpx
import msgspec
import psutil
import redis as syncredis
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from bench.events import CLIENT_IPS, USER_AGENTS, make_events
from rivulet_cli.up import children_argv
from services.writer.rows import METRIC_COLUMNS, to_metric_records
from services.writer.sinks import ClickHouseSink, postgres_ddl
from shared.config import Settings, load_settings
from shared.events import parse_event
from shared.localservers import ensure_redis
from shared.schemas import ApiKey, Kind, Log, Metric
from shared.signing import sign_digest
from tests.harness import STANDARD_TOPOLOGY, Pipeline, free_port
from tests.helpers import ndjson, stored
from tests.servers import PG_DSN, REDIS_URL

LATENCY_SAMPLE_EVERY = 50
# Load shedding (rate limit, backlog watermark): the batch is resent after Retry-After.
RETRYABLE_STATUSES = frozenset({429, 503})
# The services' URL for the benchmark's Redis when it differs from the benchmark's own (the unix
# socket of the server `--durable-redis` starts, as `rivulet up` hands its children).
SERVICES_REDIS_URL_VAR = "RIVULET_BENCH_SERVICES_REDIS_URL"
# Settings that tests/harness.py shortens so tests run fast.
HARNESS_TUNINGS = ("writer_batch_age_ms", "claim_idle_ms", "trim_interval_s", "retry_max_s")


# --- raw limits ----------------------------------------------------------------------------------


def redis_xadd_limit(redis_url: str, n: int, body: bytes) -> float:
    client = syncredis.Redis.from_url(redis_url)
    stream = f"bench:xadd:{uuid.uuid4().hex}"
    fields: dict[Any, Any] = {
        "tenant": "acme",
        "kind": "logs",
        "id": "x",
        "received_at": "1",
        "body": body,
    }
    started = time.perf_counter()
    for chunk in range(0, n, 500):
        with client.pipeline(transaction=False) as pipe:
            for _ in range(min(500, n - chunk)):
                pipe.xadd(stream, fields)
            pipe.execute()
    elapsed = time.perf_counter() - started
    client.delete(stream)
    client.close()
    return n / elapsed


def redis_server_xadd_limit(redis_url: str, n: int, body: bytes) -> float | None:
    """XADD entries/s the server takes from a C client (`redis-benchmark`, 4 connections, 500
    per pipeline): Redis's own ceiling, where `redis_xadd_limit` is a Python client's."""
    exe = shutil.which("redis-benchmark")
    if exe is None:
        return None
    url = urllib.parse.urlsplit(redis_url)
    stream = f"bench:xadd:{uuid.uuid4().hex}"
    fields = ["tenant", "acme", "kind", "logs", "id", "x", "received_at", "1"]
    result = subprocess.run(
        [
            *(exe, "-h", url.hostname or "127.0.0.1", "-p", str(url.port or 6379)),
            *("--dbnum", url.path.lstrip("/") or "0", "-n", str(n), "-P", "500", "-c", "4"),
            *("--csv", "XADD", stream, "*", *fields, "body", body.decode()),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    syncredis.Redis.from_url(redis_url).delete(stream)
    # the last line is the result; its 7 trailing columns are numbers, the first the command
    return float(result.stdout.strip().splitlines()[-1].rsplit(",", 7)[1].strip('"'))


def clickhouse_insert_limit(n: int, events: list[Log]) -> float:
    dsn = (
        os.environ.get("RIVULET_CLICKHOUSE_URL") or f"chdb://{tempfile.mkdtemp(prefix='bench-ch-')}"
    )
    database = f"bench_{uuid.uuid4().hex[:8]}"

    async def run() -> float:
        sink = ClickHouseSink(dsn, database, 0)
        await sink.start()
        rows = stored(
            [
                msgspec.structs.replace(e, id=f"{i}")
                for i, e in enumerate(events * (n // len(events)))
            ]
        )
        started = time.perf_counter()
        for chunk in range(0, len(rows), 5000):
            await sink.insert("logs", rows[chunk : chunk + 5000], uuid.uuid4().hex)
        elapsed = time.perf_counter() - started
        await sink.close()
        return len(rows) / elapsed

    return asyncio.run(run())


def postgres_copy_limit(dsn: str, n: int, events: list[Metric]) -> float:
    schema = f"bench_{uuid.uuid4().hex[:8]}"

    async def run() -> float:
        conn = await asyncpg.connect(dsn)
        try:
            for statement in postgres_ddl(schema, timescale=False):
                await conn.execute(statement)
            records = to_metric_records(
                [
                    msgspec.structs.replace(e, id=f"{i}")
                    for i, e in enumerate(events * (n // len(events)))
                ]
            )
            started = time.perf_counter()
            for chunk in range(0, len(records), 5000):
                await conn.copy_records_to_table(
                    "metrics",
                    schema_name=schema,
                    records=records[chunk : chunk + 5000],
                    columns=list(METRIC_COLUMNS),
                )
            elapsed = time.perf_counter() - started
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
            return len(records) / elapsed
        finally:
            await conn.close()

    return asyncio.run(run())


# --- the pipeline --------------------------------------------------------------------------------


class Monitor(threading.Thread):
    """CPU seconds and peak RSS per service process, sampled every 0.5 s."""

    def __init__(self, pipeline: Pipeline) -> None:
        super().__init__(daemon=True)
        self.pipeline = pipeline
        self.peak_rss: dict[str, int] = {}
        self.peak_anon: dict[str, int] = {}
        self.cpu_start: dict[str, float] = {}
        self.cpu_end: dict[str, float] = {}
        # (seconds since start, {process: (RSS bytes, anonymous bytes)})
        self.rss_samples: list[tuple[float, dict[str, tuple[int, int]]]] = []
        self.wall_start = 0.0
        self.wall_s = 0.0
        self.thread_cpu: dict[str, dict[str, float]] = {}
        self.aof_rewrites_at_start: int | None = None
        self.aof_rewrites: int | None = None
        self.done = threading.Event()

    def _cpu(self, pid: int) -> float:
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)

    def _shared_cpu(self) -> dict[str, float]:
        """What the services share: the Redis server (INFO cpu: its threads and children) and this
        process, the load generator (its senders and the latency probe)."""
        client = syncredis.Redis.from_url(REDIS_URL)
        try:
            info = client.info("cpu")
        finally:
            client.close()
        return {
            "redis-server": redis_cpu_s(info),
            # with its sender processes, once they have exited
            "load-generator": self._cpu(os.getpid()) + children_cpu(),
        }

    def start_counting(self) -> None:
        for name, process in self.pipeline.processes.items():
            self.cpu_start[name] = self._cpu(process.pid)
        self.cpu_start.update(self._shared_cpu())
        self.aof_rewrites_at_start = aof_rewrites(REDIS_URL)
        self.wall_start = time.monotonic()

    def stop_counting(self) -> None:
        for name, process in self.pipeline.processes.items():
            self.cpu_end[name] = self._cpu(process.pid)
            self.thread_cpu[name] = thread_cpu(process.pid)
        self.cpu_end.update(self._shared_cpu())
        rewrites = aof_rewrites(REDIS_URL)
        if rewrites is not None and self.aof_rewrites_at_start is not None:
            self.aof_rewrites = rewrites - self.aof_rewrites_at_start
        self.wall_s = time.monotonic() - self.wall_start
        self.done.set()

    def run(self) -> None:
        started = time.monotonic()
        while not self.done.is_set():
            sample: dict[str, tuple[int, int]] = {}
            for name, process in self.pipeline.processes.items():
                try:
                    memory = psutil.Process(process.pid).memory_info()
                    rss = int(memory.rss)
                except psutil.Error:
                    continue
                self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss)
                # RSS counts pages mapped from files too: chdb's ~550 MB library alone puts
                # ~200 MiB there. Anonymous memory (RSS minus file-backed pages) is the heap.
                anon = rss - int(memory.shared)
                self.peak_anon[name] = max(self.peak_anon.get(name, 0), anon)
                sample[name] = (rss, anon)
            self.rss_samples.append((time.monotonic() - started, sample))
            time.sleep(0.5)


def children_cpu() -> float:
    times = psutil.Process().cpu_times()
    return float(times.children_user + times.children_system)


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds since start per thread name (Linux /proc): the Python thread vs chdb's own."""
    out: dict[str, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return dict(sorted(out.items(), key=lambda item: -item[1]))


def service_of(process_name: str) -> str:
    return process_name.rsplit("-", 1)[0] if process_name[-1].isdigit() else process_name


class Batch(msgspec.Struct, frozen=True):
    """One request, encoded and hashed before the clock starts (only the signature is per send)."""

    kind: str
    body: bytes
    body_sha256: str
    user_agent: str
    client_ip: str
    sampled_ids: list[str]


class KeepAliveSender:
    """A minimal HTTP/1.1 client on one keep-alive socket: Content-Length bodies only.

    The load generator shares the machine with what it measures; httpx cost it ~2 ms of CPU per
    500-event request, which this cuts to the socket writes and a few header lines.
    """

    def __init__(self, url: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.host = parsed.netloc
        self.sock = socket.create_connection((parsed.hostname, parsed.port or 80), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")

    def post(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str]]:
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n"
        self.sock.sendall(f"{head}{lines}\r\n".encode() + body)
        status = int(self.reader.readline().split(b" ", 2)[1])
        answer: dict[str, str] = {}
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            answer[name.strip().lower()] = value.strip()
        if "content-length" not in answer:
            raise RuntimeError(f"gateway answered {status} without Content-Length: {answer}")
        self.reader.read(int(answer["content-length"]))
        return status, answer

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def make_batches(kinds: tuple[str, ...], per_kind: int) -> list[Batch]:
    rng = random.Random(1)
    batches: list[Batch] = []
    for kind in kinds:
        for start in range(0, per_kind, 500):
            events = make_events(kind, start, min(500, per_kind - start), rng)
            batches.append(
                Batch(
                    kind=kind,
                    body=(body := ndjson(events)),
                    body_sha256=hashlib.sha256(body).hexdigest(),
                    user_agent=rng.choice(USER_AGENTS),
                    client_ip=rng.choice(CLIENT_IPS),
                    sampled_ids=[e["id"] for e in events[::LATENCY_SAMPLE_EVERY]],
                )
            )
    rng.shuffle(batches)
    return batches


PY_SPY = Path(sys.executable).with_name("py-spy")


def start_py_spy(pipeline: Pipeline, directory: Path) -> list[subprocess.Popen[bytes]]:
    """`py-spy record` on every service process until it is stopped (SIGINT writes the file)."""
    directory.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                *(
                    str(PY_SPY),
                    "record",
                    "--pid",
                    str(process.pid),
                    "--rate",
                    "200",
                    "--nonblocking",
                ),
                *("--format", "raw", "-o", str(directory / f"{name}.folded")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, process in pipeline.processes.items()
    ]


class Pace(msgspec.Struct, frozen=True):
    """When each sender may send its n-th request (no pacing without a rate)."""

    started: float
    rate: float | None
    senders: int

    def wait(self, index: int) -> None:
        if self.rate:
            due = self.started + (index * self.senders * 500) / self.rate
            time.sleep(max(0.0, due - time.monotonic()))


def send_share(
    url: str,
    key: ApiKey,
    share: list[Batch],
    pace: Pace,
    record: Callable[[Batch, int], None] | None = None,
) -> int:
    """Send each batch until it is accepted (202); returns the events sent."""
    done = 0
    sender = KeepAliveSender(url)
    try:
        for index, batch in enumerate(share):
            pace.wait(index)
            path = f"/v1/ingest/{batch.kind}"
            while True:
                first_sent = time.time_ns()
                timestamp = str(int(time.time()))
                status, answer = sender.post(
                    path,
                    {
                        "Content-Type": "application/x-ndjson",
                        "User-Agent": batch.user_agent,
                        "X-Forwarded-For": batch.client_ip,
                        "X-Rivulet-Key": key.key_id,
                        "X-Rivulet-Timestamp": timestamp,
                        "X-Rivulet-Signature": sign_digest(
                            key.secret, timestamp, "POST", path, batch.body_sha256
                        ),
                    },
                    batch.body,
                )
                if status == 202:
                    break
                if status not in RETRYABLE_STATUSES:
                    raise RuntimeError(f"gateway answered {status} to a {batch.kind} batch")
                time.sleep(float(answer.get("retry-after", "1")))
            done += batch.body.count(b"\n")
            if record is not None:
                record(batch, first_sent)
    finally:
        sender.close()
    return done


def send_from_processes(
    url: str, key: ApiKey, shares: list[list[Batch]], rate: float | None
) -> tuple[int, float]:
    """Sender processes forked with their shares in memory and released together, so the clock
    covers the sending and not the hand-over of the batches (a pool pickles ~70 MB to its
    workers for 200,000 events). Returns (events sent, the monotonic time of the release)."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(shares) + 1)
    results: multiprocessing.SimpleQueue[int] = context.SimpleQueue()
    processes = [
        context.Process(
            target=_sender_process,
            args=(url, key, share, rate, len(shares), barrier, results),
            daemon=True,
        )
        for share in shares
    ]
    for process in processes:
        process.start()
    barrier.wait(timeout=60)
    started = time.monotonic()
    for process in processes:
        process.join()
    failed = [process.exitcode for process in processes if process.exitcode != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} sender processes failed (exit codes {failed})")
    return sum(results.get() for _ in processes), started


def _sender_process(
    url: str,
    key: ApiKey,
    share: list[Batch],
    rate: float | None,
    senders: int,
    barrier: Barrier,
    results: multiprocessing.SimpleQueue[int],
) -> None:
    barrier.wait(timeout=60)
    results.put(send_share(url, key, share, Pace(time.monotonic(), rate, senders)))


def bench_pipeline(root: Path, raw_backlog: int = 0) -> Pipeline:
    """The test harness's pipeline with its test tunings put back to the defaults a user runs.

    `raw_backlog`: events that will wait in one raw stream with nothing consuming them (the
    gateway measured alone). The raw watermark is raised to hold them; the default would
    answer 503 to every batch above it, for as long as the run lasts.
    """
    defaults = Settings()
    # A value set in the bench's own environment wins: that is how a tuning is compared.
    env = {
        var: os.environ.get(var, str(getattr(defaults, name)))
        for name in HARNESS_TUNINGS
        for var in [f"RIVULET_{name.upper()}"]
    }
    if raw_backlog >= defaults.raw_high_watermark:
        env["RIVULET_RAW_HIGH_WATERMARK"] = str(2 * raw_backlog)
    return Pipeline(
        root,
        f"bench{uuid.uuid4().hex[:8]}",
        redis_url=os.environ.get(SERVICES_REDIS_URL_VAR) or REDIS_URL,
        extra_env={"RIVULET_LOG_LEVEL": "warning", **env},
    )


def run_pipeline(
    name: str,
    topology: tuple[tuple[str, tuple[str, ...]], ...],
    total: int,
    rate: float | None,
    senders: int,
    kinds: tuple[str, ...],
    py_spy: Path | None = None,
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-"))
    per_kind = total // len(kinds)
    gateway_only = all(args[0] == "gateway" for _, args in topology)
    pipeline = bench_pipeline(root, per_kind if gateway_only else 0)
    pipeline.require_servers()
    monitor = Monitor(pipeline)
    batches = make_batches(kinds, per_kind)
    spies: list[subprocess.Popen[bytes]] = []
    try:
        if gateway_only:
            pipeline.start("gateway", "gateway")
            pipeline.wait_http(pipeline.url + "/healthz")
        else:
            pipeline.start_standard(topology)
        key = pipeline.create_key()
        if py_spy is not None:
            spies = start_py_spy(pipeline, py_spy)
        monitor.start()
        monitor.start_counting()
        sent_at: dict[str, int] = {}
        lock = threading.Lock()
        shares = [batches[i::senders] for i in range(senders)]
        if gateway_only:
            # Nothing to measure downstream: sender processes, so the load generator's GIL
            # cannot be what limits the gateway.
            accepted, started = send_from_processes(pipeline.url, key, shares, rate)
        else:
            started = time.monotonic()
            pace = Pace(started, rate, senders)

            def record(batch: Batch, first_sent: int) -> None:
                with lock:
                    for event_id in batch.sampled_ids:
                        sent_at[f"{batch.kind}:{event_id}"] = first_sent

            with ThreadPoolExecutor(senders) as pool:
                futures = [
                    pool.submit(send_share, pipeline.url, key, share, pace, record)
                    for share in shares
                ]
                accepted = sum(f.result() for f in futures)
        sent_s = time.monotonic() - started
        if not gateway_only:
            wait_rows(pipeline, kinds, per_kind)
        end_to_end_s = time.monotonic() - started
        monitor.stop_counting()
        cpu: dict[str, float] = {}
        rss: dict[str, float] = {}
        anon: dict[str, float] = {}
        for process_name in monitor.cpu_end:
            service = service_of(process_name)
            cpu[service] = cpu.get(service, 0.0) + (
                monitor.cpu_end[process_name] - monitor.cpu_start[process_name]
            )
        for process_name in pipeline.processes:
            service = service_of(process_name)
            rss[service] = max(rss.get(service, 0.0), monitor.peak_rss.get(process_name, 0) / 2**20)
            anon[service] = max(
                anon.get(service, 0.0), monitor.peak_anon.get(process_name, 0) / 2**20
            )
        lat = [] if gateway_only else sorted(latencies_ms(pipeline, sent_at))
        return {
            "variant": name,
            "kinds": list(kinds),
            "events": accepted,
            "gateway_events_per_s": accepted / sent_s,
            "end_to_end_events_per_s": None if gateway_only else accepted / end_to_end_s,
            "latency_ms": {p: percentile(lat, p) for p in (50, 95, 99)},
            "latency_samples": len(lat),
            "cpu_s_per_million": {s: c / accepted * 1e6 for s, c in cpu.items()},
            "cores_busy": sum(cpu.values()) / monitor.wall_s,
            "redis_aof_rewrites": monitor.aof_rewrites,
            "peak_rss_mib": rss,
            "peak_anon_mib": anon,
            "thread_cpu_s_since_start": monitor.thread_cpu,
            "rss_samples": monitor.rss_samples,
        }
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(30)
        monitor.done.set()
        pipeline.stop()
        pipeline.cleanup()


def fill_raw(pipeline: Pipeline, batches: list[Batch]) -> int:
    """Append every event to its raw stream as the gateway would (fields, id, ip, ua)."""
    client = syncredis.Redis.from_url(REDIS_URL)
    appended = 0
    try:
        for batch in batches:
            stream = f"{pipeline.namespace}:{{{batch.kind}}}:raw"
            with client.pipeline(transaction=False) as pipe:
                for line in batch.body.splitlines():
                    fields: dict[Any, Any] = {
                        "tenant": "acme",
                        "kind": batch.kind,
                        "id": parse_event(cast(Kind, batch.kind), line, "acme").id,
                        "received_at": str(time.time_ns()),
                        "body": line,
                        "ip": batch.client_ip,
                        "ua": batch.user_agent,
                    }
                    pipe.xadd(stream, fields)
                appended += len(pipe.execute())
    finally:
        client.close()
    return appended


def stream_progress(
    client: syncredis.Redis, namespace: str, kinds: tuple[str, ...], stage: str, group: str
) -> int:
    """Entries of `stage` streams that `group` has read and acknowledged (all kinds)."""
    done = 0
    for kind in kinds:
        with contextlib.suppress(syncredis.ResponseError):
            for info in client.xinfo_groups(f"{namespace}:{{{kind}}}:{stage}"):
                if info["name"] in (group, group.encode()):
                    done += int(info.get("entries-read") or 0) - int(info["pending"])
    return done


def run_stages(
    topology: tuple[tuple[str, tuple[str, ...]], ...], total: int, kinds: tuple[str, ...]
) -> list[dict[str, Any]]:
    """The normalizers alone on a pre-filled raw stream, then the writer alone on the clean
    streams they left: what each stage can do when it has the machine (less Redis) to itself.
    Counting starts at the first acknowledgement, so process start-up is not measured."""
    root = Path(tempfile.mkdtemp(prefix="bench-"))
    pipeline = bench_pipeline(root)
    pipeline.require_servers()
    results: list[dict[str, Any]] = []
    client = syncredis.Redis.from_url(REDIS_URL)
    try:
        appended = fill_raw(pipeline, make_batches(kinds, total // len(kinds)))
        for stage, group, service in (
            ("raw", "normalizers", "normalizer"),
            ("clean", "writers", "writer"),
        ):
            progress = functools.partial(
                stream_progress, client, pipeline.namespace, kinds, stage, group
            )
            names = [name for name, args in topology if args[0] == service]
            for name, args in topology:
                if name in names:
                    pipeline.start(name, *args)
            monitor = Monitor(pipeline)
            monitor.start()
            deadline = time.monotonic() + 900
            while (first := progress()) == 0:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{service} never acknowledged an entry")
                time.sleep(0.02)
            monitor.start_counting()
            while (done := progress()) < appended:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{service} acknowledged {done} of {appended}")
                time.sleep(0.02)
            monitor.stop_counting()
            counted = done - first
            cpu: dict[str, float] = {}
            for process_name in monitor.cpu_end:
                if process_name != "load-generator":
                    service_name = service_of(process_name)
                    cpu[service_name] = cpu.get(service_name, 0.0) + (
                        monitor.cpu_end[process_name] - monitor.cpu_start[process_name]
                    )
            results.append(
                {
                    "variant": f"{service} alone ({len(names)} process"
                    f"{'es' if len(names) > 1 else ''}), {stage} -> "
                    f"{'clean' if stage == 'raw' else 'rows'}",
                    "stage": service,
                    "kinds": list(kinds),
                    "events": counted,
                    "stage_events_per_s": counted / monitor.wall_s,
                    "cpu_s_per_million": {s: c / counted * 1e6 for s, c in cpu.items()},
                    "cores_busy": sum(cpu.values()) / monitor.wall_s,
                    "redis_aof_rewrites": monitor.aof_rewrites,
                    "thread_cpu_s_since_start": monitor.thread_cpu,
                }
            )
            for name in names:
                pipeline.kill(name, signal.SIGTERM)
                del pipeline.processes[name]
    finally:
        client.close()
        pipeline.stop()
        pipeline.cleanup()
    return results


def latencies_ms(pipeline: Pipeline, sent_at: dict[str, int]) -> list[float]:
    """Per sampled event: when the engine took its row (`inserted_at`, set by the table's
    default as the insert that made it queryable began) minus when its request was first sent.
    Read once, after the run, so measuring costs the pipeline nothing. Metrics (PostgreSQL) are
    not sampled."""
    tables = {"logs": "logs", "spans": "spans", "rum": "rum_events"}
    by_kind: dict[str, list[str]] = {}
    for key in sent_at:
        kind, _, event_id = key.partition(":")
        if kind in tables:
            by_kind.setdefault(kind, []).append(event_id)
    values: list[float] = []
    with httpx.Client(timeout=60) as client:
        for kind, ids in by_kind.items():
            for start in range(0, len(ids), 5000):
                listed = ",".join(f"'{i}'" for i in ids[start : start + 5000])
                sql = (
                    f"SELECT id, toUnixTimestamp64Milli(inserted_at) AS at "
                    f"FROM rivulet.{tables[kind]} WHERE id IN ({listed}) "
                    "SETTINGS output_format_json_quote_64bit_integers = 0"
                )
                url = f"http://127.0.0.1:{pipeline.query_port}/query"
                for line in client.post(url, content=sql.encode()).content.splitlines():
                    row = json.loads(line)
                    values.append(row["at"] - sent_at[f"{kind}:{row['id']}"] / 1e6)
    return values


# KEYS: one kind's streams (one hash tag). 1: every consumer group of each has read and
# acknowledged every entry; 0: one has not, or a stream or its groups do not exist yet; -1: Redis
# cannot tell (a group's lag is unknown). One call and a number back: `XINFO GROUPS` through
# redis-py cost the bench ~0.12 ms of CPU a stream.
STREAMS_DRAINED = """
for _, stream in ipairs(KEYS) do
  if redis.call('EXISTS', stream) == 0 then return 0 end
  local groups = redis.call('XINFO', 'GROUPS', stream)
  if #groups == 0 then return 0 end
  for _, group in ipairs(groups) do
    local pending, lag
    for i = 1, #group, 2 do
      if group[i] == 'pending' then pending = group[i + 1] end
      if group[i] == 'lag' then lag = group[i + 1] end
    end
    if not lag then return -1 end
    if pending ~= 0 or lag ~= 0 then return 0 end
  end
end
return 1
"""


async def streams_drained(script: AsyncScript, streams_by_kind: list[list[str]]) -> bool | None:
    """True when every consumer group of these streams has read and acknowledged every entry,
    False while one has not, None when Redis cannot tell: a hint for when to count, not a count.
    `script` is `STREAMS_DRAINED` registered on the client."""
    for streams in streams_by_kind:
        answer = await script(keys=streams)
        if answer != 1:
            return None if answer == -1 else False
    return True


# A count over the writer's query port costs the writer ~2.2 ms of CPU and the bench ~0.8
# (docs/performance.md): every 50 ms that was ~6% of a core taken from the pipeline it measures.
# Redis's group counters are checked every 10 ms instead, and rows are counted once they say the
# writers have acknowledged everything (a writer acknowledges only what it stored).
DRAIN_POLL_S = 0.01
COUNT_POLL_S = 0.05


def wait_rows(pipeline: Pipeline, kinds: tuple[str, ...], per_kind: int) -> None:
    """Until every kind has its rows; counts over the writer's query port and asyncpg, since a
    CLI process per check would cost the machine the CPU we are measuring."""
    tables = {"logs": "logs", "spans": "spans", "rum": "rum_events"}
    query_url = f"http://127.0.0.1:{pipeline.query_port}/query"
    streams = [
        [f"{pipeline.namespace}:{{{kind}}}:{stage}" for stage in ("raw", "clean")] for kind in kinds
    ]

    async def run() -> None:
        conn = await asyncpg.connect(PG_DSN) if "metrics" in kinds else None
        redis = aioredis.Redis.from_url(pipeline.redis_url)
        drained = redis.register_script(STREAMS_DRAINED)
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                deadline = time.monotonic() + 900
                while time.monotonic() < deadline:
                    if await streams_drained(drained, streams) is False:
                        await asyncio.sleep(DRAIN_POLL_S)
                        continue
                    counts: list[int] = []
                    for kind in kinds:
                        if kind == "metrics":
                            assert conn is not None
                            sql = f'SELECT count(*) FROM "{pipeline.schema}".metrics'
                            with contextlib.suppress(asyncpg.UndefinedTableError):
                                counts.append(int(await conn.fetchval(sql)))
                            continue
                        sql = f"SELECT count() AS n FROM rivulet.{tables[kind]}"
                        with contextlib.suppress(httpx.TransportError, ValueError, KeyError):
                            body = (await client.post(query_url, content=sql.encode())).content
                            counts.append(int(json.loads(body.splitlines()[0])["n"]))
                    if len(counts) == len(kinds) and min(counts) >= per_kind:
                        return
                    await asyncio.sleep(COUNT_POLL_S)
        finally:
            await redis.aclose()
            if conn is not None:
                await conn.close()
        raise TimeoutError("rows never became queryable")

    asyncio.run(run())


def percentile(values: list[float], p: int) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(len(values) * p / 100))]


# --- report --------------------------------------------------------------------------------------


def redis_cpu_s(info: Mapping[str, Any]) -> float:
    """CPU seconds of a Redis server from `INFO cpu`: all its threads, and the children it has
    forked and reaped (AOF rewrites, snapshots), which take the same cores from the pipeline.
    A child still running when counting stops is not in it."""
    fields = ("used_cpu_user", "used_cpu_sys", "used_cpu_user_children", "used_cpu_sys_children")
    return sum(float(info.get(field, 0)) for field in fields)


def redis_persistence(redis_url: str) -> str:
    """What the benchmark's Redis keeps on disk: its cost is part of every Redis figure."""
    client = syncredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        aof_enabled = bool(client.info("persistence")["aof_enabled"])
        try:
            config = {
                str(key): str(value)
                for name in ("appendfsync", "auto-aof-rewrite-*", "save")
                for key, value in client.config_get(name).items()
            }
        except syncredis.ResponseError:  # managed servers may refuse CONFIG
            return f"{'AOF' if aof_enabled else 'no AOF'}, the rest unknown (CONFIG refused)"
    finally:
        client.close()
    snapshots = f"RDB save {config['save']!r}" if config["save"] else "no RDB snapshots"
    if not aof_enabled:
        return f"no AOF, {snapshots}"
    growth = int(config["auto-aof-rewrite-percentage"])
    min_mib = int(config["auto-aof-rewrite-min-size"]) / 2**20
    rewrites = f"rewritten at +{growth}% from {min_mib:g} MiB" if growth else "no auto-rewrites"
    return f"AOF, appendfsync {config['appendfsync']}, {rewrites}, {snapshots}"


def aof_rewrites(redis_url: str) -> int | None:
    """How many times the server has rewritten its append-only file since it started; None
    without the file (or from a server too old to count them)."""
    client = syncredis.Redis.from_url(redis_url)
    try:
        info = client.info("persistence")
    finally:
        client.close()
    count = info.get("aof_rewrites")
    return int(count) if info["aof_enabled"] and count is not None else None


def redis_config_pairs(values: Sequence[str]) -> list[tuple[str, str]]:
    """`--redis-config NAME=VALUE` arguments as pairs for `CONFIG SET`."""
    pairs = []
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not name or not setting:
            raise ValueError(f"--redis-config wants NAME=VALUE, not {value!r}")
        pairs.append((name, setting))
    return pairs


def argv_for_durable_run(argv: Sequence[str]) -> list[str]:
    """The arguments again without the ones `run_on_durable_redis` has acted on."""
    passed: list[str] = []
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
        elif arg == "--redis-config":
            skip_value = True
        elif arg != "--durable-redis" and not arg.startswith("--redis-config="):
            passed.append(arg)
    return passed


def run_on_durable_redis(argv: list[str], config: Sequence[tuple[str, str]] = ()) -> int:
    """This benchmark again, with `argv`, against a private Redis started the way `rivulet up`
    starts one where none answers (`ensure_redis`: AOF, `appendfsync` from the settings, so
    `RIVULET_REDIS_APPENDFSYNC` too), on a free port, then given `config` by `CONFIG SET`. The
    services reach it over its unix socket, as `rivulet up`'s children do; the benchmark's own
    clients (and `redis-benchmark`) over TCP."""
    port = free_port()
    var_dir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    server = ensure_redis(f"redis://127.0.0.1:{port}/0", var_dir, load_settings().redis_appendfsync)
    if server is None:
        raise RuntimeError(f"something already answers on port {port}")
    try:
        client = syncredis.Redis.from_url(server.url)
        try:
            for name, value in config:
                try:
                    client.config_set(name, value)
                except syncredis.ResponseError as exc:
                    sys.exit(f"--redis-config {name}={value}: {exc}")
        finally:
            client.close()
        env = {
            **os.environ,
            "RIVULET_TEST_REDIS_URL": server.url,
            SERVICES_REDIS_URL_VAR: server.local_url or server.url,
        }
        return subprocess.run([sys.executable, "-m", "bench.run", *argv], env=env).returncode
    finally:
        server.stop()
        shutil.rmtree(var_dir, ignore_errors=True)


def machine() -> str:
    memory = psutil.virtual_memory().total / 2**30
    python = f"{platform.python_implementation()} {platform.python_version()}"
    return f"{platform.node()}: {os.cpu_count()} cores, {memory:.0f} GiB, {python}"


def aof_rewrites_line(result: Mapping[str, Any]) -> list[str]:
    rewrites = result.get("redis_aof_rewrites")
    return [] if rewrites is None else [f"  redis AOF rewrites during it    {rewrites}"]


def table(limits: dict[str, float | None], results: list[dict[str, Any]]) -> str:
    server_xadd = limits.get("redis_server_xadd_per_s")
    xadd_limit = server_xadd or limits["redis_xadd_per_s"]
    lines = [
        f"machine: {machine()}  ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)",
        f"redis: {redis_persistence(REDIS_URL)}",
        "",
        "raw limits (same event shape):",
        f"  redis pipelined XADD (redis-py) {limits['redis_xadd_per_s']:>12,.0f} entries/s",
        *(
            [f"  redis pipelined XADD (server)   {server_xadd:>12,.0f} entries/s  (C client)"]
            if server_xadd
            else []
        ),
        f"  clickhouse insert (logs rows)   {limits['clickhouse_rows_per_s']:>12,.0f} rows/s",
        f"  postgres COPY (metrics rows)    {limits['postgres_rows_per_s']:>12,.0f} rows/s",
        "",
    ]
    for r in results:
        if "stage" in r:
            ratio = (
                f"  ({r['stage_events_per_s'] / limits['clickhouse_rows_per_s']:.0%}"
                " of clickhouse insert)"
                if r["stage"] == "writer"
                else ""
            )
            lines += [
                f"stage: {r['variant']} ({r['events']:,} {'+'.join(r['kinds'])} events)",
                f"  acknowledged                   {r['stage_events_per_s']:>10,.0f} events/s"
                + ratio,
                "  CPU s per 1M events             "
                + "  ".join(f"{s}={v:.1f}" for s, v in sorted(r["cpu_s_per_million"].items())),
                f"  cores busy (all of the above)   {r['cores_busy']:.2f} of {os.cpu_count()}",
                *aof_rewrites_line(r),
                "",
            ]
            continue
        lines += [
            f"pipeline: {r['variant']} ({r['events']:,} {'+'.join(r['kinds'])} events)",
            f"  gateway accepted               {r['gateway_events_per_s']:>10,.0f} events/s"
            f"  ({r['gateway_events_per_s'] / xadd_limit:.0%} of redis XADD)",
        ]
        if r["end_to_end_events_per_s"] is not None:
            lines += [
                f"  end to end (send -> queryable) {r['end_to_end_events_per_s']:>10,.0f} events/s"
                f"  ({r['end_to_end_events_per_s'] / limits['clickhouse_rows_per_s']:.0%}"
                " of clickhouse insert)",
                f"  ingest->queryable latency ms   p50 {r['latency_ms'][50]:.0f}"
                f"  p95 {r['latency_ms'][95]:.0f}  p99 {r['latency_ms'][99]:.0f}"
                f"  ({r['latency_samples']} sampled events)",
            ]
        lines += [
            "  CPU s per 1M events             "
            + "  ".join(f"{s}={v:.1f}" for s, v in sorted(r["cpu_s_per_million"].items())),
            f"  cores busy (all of the above)   {r['cores_busy']:.2f} of {os.cpu_count()}",
            *aof_rewrites_line(r),
            "  peak RSS MiB                    "
            + "  ".join(f"{s}={v:.0f}" for s, v in sorted(r["peak_rss_mib"].items())),
            "  peak anonymous MiB (heap)       "
            + "  ".join(f"{s}={v:.0f}" for s, v in sorted(r["peak_anon_mib"].items())),
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # the options --durable-redis takes must be found to be passed on
    )
    parser.add_argument("--events", type=int, default=200_000, help="events per pipeline variant")
    parser.add_argument("--duration", type=float, help="with --rate: send for this many seconds")
    parser.add_argument(
        "--rate", type=float, help="offered events/s (default: as fast as possible)"
    )
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--kinds", default="logs,metrics,spans,rum")
    parser.add_argument(
        "--variants",
        default="gateway,up,replicas",
        help="gateway (alone), up (rivulet up topology), replicas, stages (normalizers, then "
        "the writer, each alone on a pre-filled stream); comma-separated",
    )
    parser.add_argument(
        "--py-spy", metavar="DIR", help="collapsed stacks of every service, for flamegraphs"
    )
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--soak", action="store_true", help="10 minutes at --rate (default 5000/s), RSS over time"
    )
    parser.add_argument(
        "--durable-redis",
        action="store_true",
        help="run against a private Redis with the AOF that `rivulet up` gives the one it starts",
    )
    parser.add_argument(
        "--redis-config",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="with --durable-redis: CONFIG SET on that server first (repeatable), e.g. "
        "auto-aof-rewrite-min-size=1gb",
    )
    args = parser.parse_args()
    try:
        redis_config = redis_config_pairs(args.redis_config)
    except ValueError as exc:
        parser.error(str(exc))
    if redis_config and not args.durable_redis:
        parser.error("--redis-config sets the private server of --durable-redis only")
    if args.durable_redis:
        sys.exit(run_on_durable_redis(argv_for_durable_run(sys.argv[1:]), redis_config))
    if args.py_spy and not PY_SPY.exists():
        parser.error(f"--py-spy needs {PY_SPY}: {PY_SPY.with_name('pip')} install py-spy")
    kinds = tuple(k for k in args.kinds.split(",") if k)
    rng = random.Random(3)
    logs = [
        parse_event("logs", msgspec.json.encode(e), "acme")
        for e in make_events("logs", 0, 500, rng)
    ]
    metrics = [
        parse_event("metrics", msgspec.json.encode(e), "acme")
        for e in make_events("metrics", 0, 500, rng)
    ]
    body = msgspec.json.encode(make_events("logs", 0, 1, rng)[0])
    limits = {
        "redis_xadd_per_s": redis_xadd_limit(REDIS_URL, 100_000, body),
        "redis_server_xadd_per_s": redis_server_xadd_limit(REDIS_URL, 300_000, body),
        "clickhouse_rows_per_s": clickhouse_insert_limit(
            100_000, [e for e in logs if isinstance(e, Log)]
        ),
        "postgres_rows_per_s": postgres_copy_limit(
            PG_DSN, 100_000, [m for m in metrics if isinstance(m, Metric)]
        ),
    }
    rate = args.rate
    total = args.events
    if args.soak:
        rate = rate or 5000.0
        total = int(rate * (args.duration or 600))
    elif args.duration and rate:
        total = int(rate * args.duration)
    chosen = ["up"] if args.soak else [v for v in args.variants.split(",") if v]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}: choose from {sorted(VARIANTS)}")
    results: list[dict[str, Any]] = []
    for variant in chosen:
        label, topology = VARIANTS[variant]
        if variant == "stages":
            results += run_stages(topology, total, kinds)
            continue
        spy_dir = Path(args.py_spy) / variant if args.py_spy else None
        results.append(run_pipeline(label, topology, total, rate, args.senders, kinds, spy_dir))
    print(table(limits, results))
    if args.soak:
        print("MiB over time (soak), RSS/anonymous:")
        for second, sample in results[0]["rss_samples"][::20]:
            print(
                f"  t={second:6.0f}s  "
                + "  ".join(
                    f"{n}={rss / 2**20:.0f}/{anon / 2**20:.0f}"
                    for n, (rss, anon) in sorted(sample.items())
                )
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "redis": redis_persistence(REDIS_URL),
                    "limits": limits,
                    "results": results,
                },
                indent=2,
            )
        )


# `rivulet up`'s children with its defaults, less the profiler (no profiles are sent)
UP_TOPOLOGY: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
    (name, tuple(argv))
    for name, argv in children_argv(Settings().up_normalizers)
    if name != "profiler"
)

VARIANTS: dict[str, tuple[str, tuple[tuple[str, tuple[str, ...]], ...]]] = {
    "gateway": ("gateway alone (nothing downstream)", (("gateway", ("gateway",)),)),
    "up": (
        f"rivulet up defaults ({Settings().up_normalizers} normalizers, 1 writer)",
        UP_TOPOLOGY,
    ),
    "replicas": ("2 normalizers + 2 metrics writers", STANDARD_TOPOLOGY),
    "stages": ("normalizers, then the writer, each alone", UP_TOPOLOGY),
}


if __name__ == "__main__":
    main()
