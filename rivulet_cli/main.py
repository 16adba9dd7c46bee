"""`rivulet`: run services, manage keys, send events, inspect streams, query the stores,
report on profiles."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
import msgspec
import redis.asyncio as aioredis

from rivulet_cli import ops
from rivulet_cli import profiles as profile_cli
from rivulet_cli.send import batches, read_events, send_batch
from shared.apikeys import KeyStore, describe_key
from shared.config import Settings, load_settings
from shared.schemas import ALL_KINDS, KINDS, Kind
from shared.streams import Keys, Stage, connect

T = TypeVar("T")


def _kinds_among(allowed: tuple[Kind, ...]) -> Callable[[str], list[Kind]]:
    def parse(value: str) -> list[Kind]:
        kinds = [k.strip() for k in value.split(",") if k.strip()]
        bad = [k for k in kinds if k not in allowed]
        if bad or not kinds:
            raise argparse.ArgumentTypeError(f"kinds must be among {', '.join(allowed)}")
        return cast(list[Kind], kinds)

    return parse


_kinds = _kinds_among(KINDS)  # normalizer: JSON events
_writer_kinds = _kinds_among(ALL_KINDS)  # writer: every clean stream, profiles too


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rivulet", description=__doc__)
    parser.add_argument("--config", help="TOML file with settings (environment wins)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole pipeline locally")
    up.add_argument(
        "--normalizers",
        type=int,
        help="normalizer processes (default RIVULET_UP_NORMALIZERS, 2)",
    )
    gateway = sub.add_parser("gateway", help="run the HTTP gateway")
    gateway.add_argument("--port", type=int)
    gateway.add_argument("--host")
    for name, parse, default in (
        ("normalizer", _kinds, KINDS),
        ("writer", _writer_kinds, ALL_KINDS),
    ):
        worker = sub.add_parser(name, help=f"run a {name} (any number of replicas)")
        worker.add_argument("--kinds", type=parse, default=list(default), help="comma-separated")
        worker.add_argument("--consumer", help="stable consumer name (default host-pid)")
    profiler = sub.add_parser(
        "profiler", help="run a profiler: pprof decoding (any number of replicas) + HTTP reports"
    )
    profiler.add_argument("--consumer", help="stable consumer name (default host-pid)")
    profiler.add_argument("--port", type=int, help="HTTP reports port (default 8125)")
    profiler.add_argument("--host", help="HTTP reports address (default 127.0.0.1)")
    profiler.add_argument("--no-http", action="store_true", help="decode only, serve no reports")

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create")
    create.add_argument("--tenant", required=True)
    create.add_argument(
        "--type",
        choices=("hmac", "token", "browser"),
        default="hmac",
        help="hmac: signs requests (default); token: bearer token for OTLP senders; "
        "browser: public key for /v1/ingest/rum from --origin pages",
    )
    create.add_argument(
        "--origin", action="append", default=[], help="browser keys: allowed page origin (repeat)"
    )
    create.add_argument(
        "--allow-native", action="store_true", help="token keys: also accepted on /v1/ingest/*"
    )
    create.add_argument(
        "--ip",
        choices=("truncate", "drop"),
        default="truncate",
        help="browser keys: after GeoIP, store the client IP truncated (/24, /48) or drop it",
    )
    keys.add_parser("list")
    revoke = keys.add_parser("revoke")
    revoke.add_argument("key_id")

    send = sub.add_parser("send", help="sign and send a JSON/NDJSON file of events")
    send.add_argument("--key-id", required=True)
    send.add_argument("--secret", required=True)
    send.add_argument("--kind", required=True, choices=KINDS)
    send.add_argument("--url")
    send.add_argument("--batch-size", type=int, default=500)
    send.add_argument("--gzip", action="store_true")
    send.add_argument("file", help="path, or - for standard input")

    tail = sub.add_parser("tail", help="print stream entries as JSON lines")
    tail.add_argument("kind", choices=ALL_KINDS)
    tail.add_argument("--stage", choices=("raw", "clean", "dlq"), default="clean")
    tail.add_argument("--follow", "-f", action="store_true")
    tail.add_argument("-n", type=int, default=10, help="entries to show first")

    status = sub.add_parser("status", help="stream lengths, group lag/pending/consumers, DLQ sizes")
    status.add_argument("--json", action="store_true")

    dlq = sub.add_parser("dlq", help="inspect and re-drive dead letters")
    dlq.add_argument("action", choices=("list", "replay", "drop"))
    dlq.add_argument("kind", choices=ALL_KINDS)
    dlq.add_argument("--id", action="append", default=[], help="entry id (repeatable); default all")
    dlq.add_argument("-n", type=int, default=100)

    query = sub.add_parser("query", help="read-only SQL, JSON lines out")
    query.add_argument("--timescale", action="store_true", help="PostgreSQL instead of ClickHouse")
    query.add_argument("sql")

    profile_cli.add_parser(sub)
    return parser


def _with_redis(settings: Settings, work: Callable[[aioredis.Redis, Keys], Awaitable[T]]) -> T:
    async def run() -> T:
        redis = connect(settings.redis_url)
        try:
            return await work(redis, Keys(settings.namespace))
        finally:
            await redis.aclose()

    return asyncio.run(run())


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    command: str = args.command
    if command == "up":
        from rivulet_cli.up import run_up

        if args.normalizers is not None:
            settings = msgspec.structs.replace(settings, up_normalizers=args.normalizers)
        return run_up(settings, args.config)
    if command == "gateway":
        from services.gateway.main import run as run_gateway

        overrides: dict[str, Any] = {}
        if args.port:
            overrides["http_port"] = args.port
        if args.host:
            overrides["http_host"] = args.host
        run_gateway(msgspec.structs.replace(settings, **overrides))
        return 0
    if command == "normalizer":
        from services.normalizer.main import run as run_normalizer

        run_normalizer(settings, args.kinds, args.consumer)
        return 0
    if command == "writer":
        from services.writer.main import run as run_writer

        run_writer(settings, args.kinds, args.consumer)
        return 0
    if command == "profiler":
        from services.profiler.main import run as run_profiler

        changes: dict[str, Any] = {}
        if args.port:
            changes["profiler_http_port"] = args.port
        if args.host:
            changes["profiler_http_host"] = args.host
        run_profiler(msgspec.structs.replace(settings, **changes), args.consumer, not args.no_http)
        return 0
    if command == "profile":
        return profile_cli.run(args, settings)
    if command == "keys":
        return _keys(args, settings)
    if command == "send":
        return _send(args, settings)
    if command == "tail":
        stage: Stage = args.stage
        _with_redis(settings, lambda r, k: ops.tail(r, k, args.kind, stage, args.n, args.follow))
        return 0
    if command == "status":
        rows = _with_redis(settings, ops.status)
        if args.json:
            ops.write_line(msgspec.json.encode(rows))
        else:
            print(ops.format_status(rows))
        return 0
    if command == "dlq":
        return _dlq(args, settings)
    if command == "query":
        if args.timescale:
            for line in asyncio.run(ops.query_timescale(settings, args.sql)):
                ops.write_line(line)
        else:
            sys.stdout.buffer.write(asyncio.run(ops.query_clickhouse(settings, args.sql)))
        return 0
    raise AssertionError(command)


def _keys(args: argparse.Namespace, settings: Settings) -> int:
    def store(redis: aioredis.Redis, keys: Keys) -> KeyStore:
        return KeyStore(redis, keys.api_keys)

    if args.keys_command == "create":
        key = _with_redis(
            settings,
            lambda r, k: store(r, k).create(
                args.tenant,
                args.type,
                origins=args.origin,
                allow_native=args.allow_native,
                ip_policy=args.ip,
            ),
        )
        ops.write_line(msgspec.json.encode(describe_key(key, created=True)))
    elif args.keys_command == "list":
        for key in _with_redis(settings, lambda r, k: store(r, k).list()):
            ops.write_line(
                msgspec.json.encode(
                    {
                        "key_id": key.key_id,
                        "tenant": key.tenant,
                        "created_at": key.created_at,
                        "revoked": bool(key.revoked_at),
                        **describe_key(key, created=False),
                    }
                )
            )
    else:
        if not _with_redis(settings, lambda r, k: store(r, k).revoke(args.key_id)):
            print(f"no such key: {args.key_id}", file=sys.stderr)
            return 1
        print(f"revoked {args.key_id}")
    return 0


def _send(args: argparse.Namespace, settings: Settings) -> int:
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    events = read_events(data)
    if not events:
        print("no events in input", file=sys.stderr)
        return 1
    url = args.url or f"http://{settings.http_host}:{settings.http_port}"
    failed = False
    with httpx.Client(timeout=30) as client:
        for chunk in batches(events, max(1, args.batch_size)):
            response = send_batch(
                client, url, args.kind, args.key_id, args.secret, chunk, compress=args.gzip
            )
            sys.stdout.write(response.text.strip() + "\n")
            failed = failed or response.status_code >= 300
    return 1 if failed else 0


def _dlq(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "list":
        _with_redis(settings, lambda r, k: ops.dlq_list(r, k, args.kind, args.n))
    elif args.action == "replay":
        count = _with_redis(settings, lambda r, k: ops.dlq_replay(r, k, args.kind, args.id))
        print(f"replayed {count} dead letters of {args.kind}")
    else:
        count = _with_redis(settings, lambda r, k: ops.dlq_drop(r, k, args.kind, args.id))
        print(f"dropped {count} dead letters of {args.kind}")
    return 0


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        code = _dispatch(args, settings)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"rivulet: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
