"""Instructions per event of the pure hot paths, counted by callgrind.

On a shared 2-core VM, wall-clock micro-benchmarks of one function swing by up to 2x between
runs. Instruction counts repeat, so they can show a change worth a few percent.

    .venv/bin/python -m bench.instructions [TARGET ...] [--events N] [--calls N]

Each target runs twice under `valgrind --tool=callgrind`: once with setup only, and once with
`--calls` more calls over the same `--events` bench log events. The difference per event is
printed. Needs valgrind (Debian: `apt-get install valgrind`). Not part of `make test`: figures,
not assertions. Targets:
- `gateway_parse`: `parse_event` as the gateway validates each event;
- `normalize`: the normalizer's `process_batch` (parse, enrich, scrub, encode);
- `writer_decode`: the writer's `decode_batch` of clean entries.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Callable

import msgspec

from bench.events import RECEIVED_AT, make_events, raw_log_delivery
from shared.entries import delivery_of

TARGETS = ("gateway_parse", "normalize", "writer_decode")


def log_bodies(count: int) -> list[bytes]:
    return [msgspec.json.encode(e) for e in make_events("logs", 0, count, random.Random(3))]


def prepare(target: str, count: int) -> Callable[[], object]:
    """The call to count, with its data built (setup is measured by the baseline run too)."""
    bodies = log_bodies(count)
    if target == "gateway_parse":
        from shared.events import parse_event

        return lambda: [parse_event("logs", body, "acme") for body in bodies]
    if target == "normalize":
        from services.normalizer.app import build_enrichment
        from services.normalizer.normalize import process_batch
        from shared.config import Settings

        enrichment = build_enrichment(Settings())
        raw = [raw_log_delivery(i, f"logs-{i}", body) for i, body in enumerate(bodies)]
        return lambda: process_batch("logs", raw, enrichment, 5)
    if target == "writer_decode":
        from services.normalizer.normalize import to_clean_entry
        from services.writer.batches import decode_batch
        from shared.events import parse_event

        clean = []
        for i, body in enumerate(bodies):
            entry = to_clean_entry(parse_event("logs", body, "acme", RECEIVED_AT), "logs")
            fields = {
                b"tenant": entry.tenant.encode(),
                b"kind": b"logs",
                b"id": entry.id.encode(),
                b"received_at": str(entry.received_at).encode(),
                b"body": entry.body,
            }
            clean.append(delivery_of(f"{i}-0".encode(), fields))
        return lambda: decode_batch("logs", clean)
    raise ValueError(f"unknown target {target!r}: choose from {', '.join(TARGETS)}")


def run_child(target: str, count: int, calls: int) -> None:
    call = prepare(target, count)
    call()  # first call outside the count difference: compiled regexes, caches, lazy imports
    for _ in range(calls):
        call()


def collected(target: str, count: int, calls: int) -> int:
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "bench.instructions",
        "--child",
        target,
        "--events",
        str(count),
        "--calls",
        str(calls),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    match = re.search(r"Collected : (\d+)", done.stderr)
    if match is None:
        raise RuntimeError(f"no callgrind total in: {done.stderr[-500:]}")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("targets", nargs="*", help=f"default: all of {', '.join(TARGETS)}")
    parser.add_argument("--events", type=int, default=500, help="log events per call")
    parser.add_argument("--calls", type=int, default=4, help="counted calls per target")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child, args.events, args.calls)
        return
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown targets {unknown}: choose from {', '.join(TARGETS)}")
    if shutil.which("valgrind") is None:
        parser.exit(2, "bench.instructions: valgrind is not installed (apt-get install valgrind)\n")
    for target in args.targets or TARGETS:
        base = collected(target, args.events, 0)
        total = collected(target, args.events, args.calls)
        per_event = (total - base) / (args.calls * args.events)
        print(f"{target:<15} {per_event:>10,.0f} instructions per event")


if __name__ == "__main__":
    main()
