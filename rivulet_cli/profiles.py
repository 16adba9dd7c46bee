"""`rivulet profile ...`: reports over stored profiles, and a reference profile sender.

    rivulet profile top --service S [--type T] [--since 1h | --profile ID] [--sample-index X]
                        [--cum] [-n 20] [--granularity functions|filefunctions] [--noinlines]
    rivulet profile flamegraph ... [--format folded|svg] [--output FILE]
    rivulet profile diff --service S --base 2h..1h --new 1h
    rivulet profile list --service S [--since 1h]
    rivulet profile get --profile ID [--output FILE]          the original protobuf, gzipped
    rivulet profile send --key-id K --secret S --service S --type T FILE|-

Reports read ClickHouse through `rivulet query`'s route (the chdb owner's loopback query port,
or the ClickHouse server; with chdb and no writer running, the engine is opened here) and print
exactly what services.profiler.report prints: `top` is `go tool pprof -top`'s text. An operator
tool: without `--tenant` every tenant's profiles are merged.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlencode

import httpx
import msgspec

from services.profiler import report, views
from services.profiler.route import ClickHouseRoute
from services.profiler.selection import (
    ReportOptions,
    Selection,
    SelectionError,
    flame_format,
    granularity_option,
    parse_window,
    sample_index_option,
    selection,
)
from services.profiler.store import NoProfiles, ProfileStore
from shared.config import Settings
from shared.retry import Backoff
from shared.signing import signed_headers

T = TypeVar("T")
RETRY_STATUSES = frozenset({429, 502, 503, 504})


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    profile = sub.add_parser("profile", help="profile reports (top, flamegraph, diff) and tools")
    commands = profile.add_subparsers(dest="profile_command", required=True)

    def common(p: argparse.ArgumentParser, *, window: bool = True) -> None:
        p.add_argument("--tenant", help="only this tenant's profiles (default: every tenant)")
        p.add_argument("--service", help="the service the profiles came from")
        p.add_argument("--type", help="profile type as sent (?type=cpu|heap|...)")
        if window:
            p.add_argument("--since", help="window: 1h (default), or A..B (2h..1h, RFC 3339)")
            p.add_argument("--profile", help="one profile by id instead of a window")

    def report_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--sample-index", help="sample type name or position (pprof's default)")
        p.add_argument("--cum", action="store_true", help="sort by cumulative value")
        p.add_argument("--granularity", choices=("functions", "filefunctions"))
        p.add_argument(
            "--noinlines", action="store_true", help="attribute inlined frames to their callers"
        )

    top = commands.add_parser("top", help="flat and cumulative per function (go tool pprof -top)")
    common(top)
    report_options(top)
    top.add_argument("-n", "--nodecount", type=int, default=0, help="rows to show (0: all)")
    top.add_argument("--nodefraction", type=float, default=report.DEFAULT_NODEFRACTION)
    top.add_argument("--edgefraction", type=float, default=report.DEFAULT_EDGEFRACTION)
    top.add_argument("--labels", action="store_true", help="print pprof's header lines first")
    top.add_argument("--json", action="store_true", help="rows as JSON instead of text")

    flame = commands.add_parser("flamegraph", help="folded stacks or an SVG flame graph")
    common(flame)
    flame.add_argument("--sample-index")
    flame.add_argument("--format", choices=("folded", "svg"), default="folded")
    flame.add_argument("--title", default="")
    flame.add_argument("--output", "-o", help="file to write (default: standard output)")

    diff = commands.add_parser("diff", help="functions whose share grew or shrank most")
    common(diff, window=False)
    report_options(diff)
    diff.add_argument("--base", required=True, help="base window, e.g. 2h..1h")
    diff.add_argument("--new", required=True, help="new window, e.g. 1h")
    diff.add_argument("-n", "--nodecount", type=int, default=20, help="rows (0: all)")
    diff.add_argument("--json", action="store_true")

    listing = commands.add_parser("list", help="stored profiles, newest last, as JSON lines")
    common(listing)
    listing.add_argument("--limit", type=int, default=100)

    get = commands.add_parser("get", help="the original protobuf of one profile (gzipped)")
    get.add_argument("--tenant")
    get.add_argument("--profile", required=True)
    get.add_argument("--output", "-o", help="file to write (default: standard output)")

    send = commands.add_parser("send", help="sign and send one pprof file")
    send.add_argument("--key-id", required=True)
    send.add_argument("--secret", required=True)
    send.add_argument("--service", required=True)
    send.add_argument("--type", required=True)
    send.add_argument("--id", help="profile id (default: derived from tenant and bytes)")
    send.add_argument("--label", action="append", default=[], help="KEY=VALUE (repeatable)")
    send.add_argument("--url")
    send.add_argument("file", help="path, or - for standard input")


def _options(args: argparse.Namespace) -> ReportOptions:
    return ReportOptions(
        sample_index=sample_index_option(args.sample_index),
        sort_by_cum=bool(getattr(args, "cum", False)),
        granularity=granularity_option(getattr(args, "granularity", None)),
        noinlines=bool(getattr(args, "noinlines", False)),
        nodecount=max(0, int(getattr(args, "nodecount", 0))),
        nodefraction=float(getattr(args, "nodefraction", report.DEFAULT_NODEFRACTION)),
        edgefraction=float(getattr(args, "edgefraction", report.DEFAULT_EDGEFRACTION)),
        profile_labels=bool(getattr(args, "labels", False)),
    )


def _selection(args: argparse.Namespace, now_ns: int) -> Selection:
    return selection(
        tenant=args.tenant,
        service=args.service,
        type_=args.type,
        since=getattr(args, "since", None),
        profile_id=getattr(args, "profile", None),
        now_ns=now_ns,
    )


def _with_store(settings: Settings, work: Callable[[ProfileStore], Awaitable[T]]) -> T:
    async def run() -> T:
        route = ClickHouseRoute(settings, open_engine=True)
        try:
            return await work(ProfileStore(route, settings.clickhouse_database))
        finally:
            await route.close()

    return asyncio.run(run())


def _write(data: bytes, output: str | None) -> None:
    if output:
        Path(output).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def run(args: argparse.Namespace, settings: Settings) -> int:
    command: str = args.profile_command
    if command == "send":
        return _send(args, settings)
    now = time.time_ns()
    try:
        if command == "top":
            sel, opts = _selection(args, now), _options(args)
            if args.json:
                data = _with_store(settings, lambda s: views.top_json(s, sel, opts)) + b"\n"
            else:
                data = _with_store(settings, lambda s: views.top_text(s, sel, opts)).encode()
            _write(data, None)
        elif command == "flamegraph":
            sel, opts = _selection(args, now), _options(args)
            fmt = flame_format(args.format)
            text = _with_store(
                settings, lambda s: views.flamegraph(s, sel, opts, fmt, title=args.title)
            )
            _write(text.encode(), args.output)
        elif command == "diff":
            if not args.service:
                raise SelectionError("give a service")
            base = selection(
                tenant=args.tenant,
                service=args.service,
                type_=args.type,
                since=args.base,
                profile_id=None,
                now_ns=now,
            )
            new = msgspec.structs.replace(base, window=parse_window(args.new, now))
            opts = _options(args)
            rows = _with_store(settings, lambda s: views.diff(s, base, new, opts))
            if args.json:
                _write(views.diff_json(rows, opts.nodecount) + b"\n", None)
            else:
                _write(report.format_diff(rows, opts.nodecount).encode(), None)
        elif command == "list":
            sel = _selection(args, now)
            metas = _with_store(settings, lambda s: s.profiles(sel, max(0, args.limit)))
            _write(b"".join(msgspec.json.encode(m) + b"\n" for m in metas), None)
        elif command == "get":
            sel = Selection(tenant=args.tenant, profile_id=args.profile)
            _write(_with_store(settings, lambda s: s.pprof(sel)), args.output)
        else:
            raise AssertionError(command)
    except NoProfiles as exc:
        print(f"rivulet profile: {exc}", file=sys.stderr)
        return 3
    return 0


# --- the reference sender --------------------------------------------------------------------


def send_profile(
    client: httpx.Client,
    url: str,
    key_id: str,
    secret: str,
    body: bytes,
    query: dict[str, str],
    *,
    attempts: int = 6,
) -> httpx.Response:
    """POST one profile, signed anew per attempt, one Idempotency-Key for all attempts."""
    path = "/v1/ingest/profiles?" + urlencode(query)
    headers = {"Content-Type": "application/octet-stream", "Idempotency-Key": str(uuid.uuid4())}
    backoff = Backoff(0.5, 10.0)
    for attempt in range(1, attempts + 1):
        signed = {**headers, **signed_headers(key_id, secret, "POST", path, body)}
        try:
            response = client.post(url.rstrip("/") + path, content=body, headers=signed)
        except httpx.TransportError:
            if attempt == attempts:
                raise
            time.sleep(backoff.next())
            continue
        if response.status_code == 409 and attempt < attempts:
            time.sleep(1.0 - time.time() % 1.0)  # same second, same body: the signature repeats
            continue
        if response.status_code not in RETRY_STATUSES or attempt == attempts:
            return response
        retry_after = response.headers.get("retry-after", "")
        time.sleep(float(retry_after) if retry_after.isdigit() else backoff.next())
    raise AssertionError("unreachable")


def _send(args: argparse.Namespace, settings: Settings) -> int:
    body = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    query = {"service": args.service, "type": args.type}
    if args.id:
        query["id"] = args.id
    for label in args.label:
        key, sep, value = label.partition("=")
        if not sep or not key or key in query or key in ("service", "type", "id"):
            raise SelectionError(f"--label wants a new KEY=VALUE, not {label!r}")
        query[key] = value
    url = args.url or f"http://{settings.http_host}:{settings.http_port}"
    with httpx.Client(timeout=60) as client:
        response = send_profile(client, url, args.key_id, args.secret, body, query)
    sys.stdout.write(response.text.strip() + "\n")
    return 1 if response.status_code >= 300 else 0
