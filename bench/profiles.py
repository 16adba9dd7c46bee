"""Profiles per second through a running pipeline: signed pprof in, rows in ClickHouse out.

    .venv/bin/python bench/profiles.py [-n 300] [--concurrency 8] [--stacks 200] [--samples 2000]
        [--url http://127.0.0.1:8080] [--key-id K --secret S]

Run it beside `rivulet up` (same environment: RIVULET_* variables, or `--config`), or beside any
topology whose writer stores `profiles`. It builds N distinct CPU profiles (services.profiler.synth,
`--stacks` distinct stacks up to 24 frames deep over 150 functions, `--samples` samples each,
gzipped), then, timed: POSTs them (signed, `--concurrency` at once) and polls `rivulet.profiles`
until all N rows are there. Prints the gateway's acceptance rate, the end-to-end rate (first POST to
last row: gateway parse + append, profiler decode, writer insert into four tables) and, for
reference, the profiler's decode step alone in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from urllib.parse import urlencode

import httpx
import msgspec

from services.profiler.app import limits_of, process_batch
from services.profiler.route import ClickHouseRoute
from services.profiler.store import quote
from services.profiler.synth import random_example
from shared.apikeys import KeyStore
from shared.config import Settings, load_settings
from shared.entries import delivery_of
from shared.profile_streams import raw_profile_fields
from shared.schemas import RawProfileEntry
from shared.signing import signed_headers
from shared.streams import Keys, connect


async def make_key(settings: Settings) -> tuple[str, str]:
    redis = connect(settings.redis_url)
    try:
        key = await KeyStore(redis, Keys(settings.namespace).api_keys).create("bench")
    finally:
        await redis.aclose()
    return key.key_id, key.secret


async def post_all(
    url: str, key_id: str, secret: str, service: str, bodies: list[bytes], concurrency: int
) -> float:
    """Seconds until every profile was answered 202."""
    path = "/v1/ingest/profiles?" + urlencode({"service": service, "type": "cpu"})
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            while True:
                headers = {"Content-Type": "application/octet-stream"}
                headers.update(signed_headers(key_id, secret, "POST", path, body))
                response = await client.post(path, content=body, headers=headers)
                if response.status_code == 202:
                    break
                if response.status_code not in (409, 429, 503):
                    raise SystemExit(f"gateway answered {response.status_code}: {response.text}")
                await asyncio.sleep(0.2)

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return time.perf_counter() - started


async def wait_rows(settings: Settings, service: str, n: int, timeout_s: float) -> None:
    route = ClickHouseRoute(settings, open_engine=False)
    sql = (
        f"SELECT count() AS n FROM `{settings.clickhouse_database}`.profiles "
        f"WHERE service = {quote(service)}"
    )
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            rows = msgspec.json.decode(await route(sql))
            if int(rows["n"]) >= n:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"only {rows['n']} of {n} profiles stored after {timeout_s}s")
            await asyncio.sleep(0.1)
    finally:
        await route.close()


def decode_only(settings: Settings, bodies: list[bytes]) -> float:
    """Profiles/s of the profiler's pure step (parse + build the clean entry), one thread."""
    deliveries = []
    for i, body in enumerate(bodies):
        entry = RawProfileEntry("bench", f"p{i}", 1, "bench", "cpu", body)
        fields = {
            k.encode(): v if isinstance(v, bytes) else str(v).encode()
            for k, v in raw_profile_fields(entry)
        }
        deliveries.append(delivery_of(f"{i}-0".encode(), fields))
    started = time.perf_counter()
    batch = process_batch(deliveries, limits_of(settings), 5)
    assert len(batch.outputs) == len(bodies), batch.dead_letters[:1]
    return len(bodies) / (time.perf_counter() - started)


async def main(args: argparse.Namespace) -> None:
    settings = load_settings(args.config)
    url = args.url or f"http://{settings.http_host}:{settings.http_port}"
    key_id, secret = (args.key_id, args.secret)
    if not (key_id and secret):
        key_id, secret = await make_key(settings)
    service = f"bench-{uuid.uuid4().hex[:8]}"
    bodies = [
        random_example(
            seed, stacks=args.stacks, samples=args.samples, time_nanos=time.time_ns()
        ).encode(gzipped=True)
        for seed in range(args.n)
    ]
    size = sum(len(b) for b in bodies) / len(bodies)
    print(
        f"{args.n} profiles: {args.samples} samples, {args.stacks} stacks each, "
        f"{size / 1024:.1f} KiB gzipped on average; concurrency {args.concurrency}"
    )
    started = time.perf_counter()
    sent_s = await post_all(url, key_id, secret, service, bodies, args.concurrency)
    await wait_rows(settings, service, args.n, args.timeout)
    total_s = time.perf_counter() - started
    print(f"accepted by the gateway : {args.n / sent_s:8.1f} profiles/s ({sent_s:.1f} s)")
    print(f"stored end to end       : {args.n / total_s:8.1f} profiles/s ({total_s:.1f} s)")
    sample = bodies[: min(len(bodies), 100)]
    print(f"profiler decode alone   : {decode_only(settings, sample):8.1f} profiles/s (1 thread)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--stacks", type=int, default=200)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--url")
    parser.add_argument("--key-id")
    parser.add_argument("--secret")
    parser.add_argument("--config")
    parser.add_argument("--timeout", type=float, default=600)
    asyncio.run(main(parser.parse_args()))
