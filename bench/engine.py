"""The ClickHouse engine's own CPU per inserted log row: parsing alone, and the whole insert.

    .venv/bin/python -m bench.engine [--variants full,parse] [--runs 2] [--batches 40]

Each run is a process of its own (chdb runs one engine per process) on a fresh data path. The
data paths are removed only after the last run: these VMs' ext4 has no journal, and such an ext4
checks every inode deleted in the last 60-360 s before it reuses one, so a run that deleted its
predecessor's ~30,000 files paid up to ~2.8x the engine's CPU per insert (docs/performance.md).
It builds its batches first: bench log events through the normalizer's `process_batch`, each with
an id of its own, so that no two rows share a sorting key. Then it inserts them as the writer
does (JSONEachRow into the kind's ingest table, the writer's settings, a dedupe token per batch),
one batch every `--interval-ms`, and waits `--settle-s` for merges. It prints the process's CPU
per row (the engine's threads included) while inserting and with the merges after, and the rows
the table holds. Variants, alternated run by run:
- `full`: the writer's tables (the Null ingest table and its view into `logs`);
- `parse`: the ingest table without its view, so the engine parses the rows and stores nothing.

Check the row count of every variant of a table: `ReplacingMergeTree` collapses rows whose
sorting key is equal as it inserts, and a table that drops rows costs less per row sent
(docs/performance.md). Not part of `make test`: figures, not assertions.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import clickhouse_connect
import msgspec

from bench.events import make_events, raw_log_delivery
from services.normalizer.app import build_enrichment
from services.normalizer.normalize import process_batch
from services.writer.rows import CLICKHOUSE_DDL, INSERTED_AT, ingest_ddl, ingest_table
from services.writer.sinks import insert_json_rows
from shared.config import Settings

VARIANTS = ("full", "parse")
DATABASE = "rivulet"


def clean_batches(batches: int, rows: int) -> list[bytes]:
    """JSONEachRow bodies of `batches` batches, as the normalizer writes clean log events."""
    enrichment = build_enrichment(Settings())
    events = make_events("logs", 0, rows, random.Random(7))
    bodies = [msgspec.json.encode(event) for event in events]
    out = []
    for batch in range(batches):
        raw = [raw_log_delivery(i, f"b{batch}-{i}", body) for i, body in enumerate(bodies)]
        out.append(
            b"\n".join(entry.body for entry in process_batch("logs", raw, enrichment, 5).outputs)
        )
    return out


def run_child(
    variant: str, batches: int, rows: int, interval_s: float, settle_s: float, parent: str
) -> None:
    inserts = clean_batches(batches, rows)
    path = tempfile.mkdtemp(prefix="run-", dir=parent)
    client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
    client.command(f"CREATE DATABASE {DATABASE}")
    client.command(CLICKHOUSE_DDL["logs"].format(db=DATABASE, ttl="", inserted_at=INSERTED_AT))
    for statement in ingest_ddl(DATABASE, "logs"):
        if variant == "parse" and "MATERIALIZED VIEW" in statement:
            continue
        client.command(statement)
    table = f"{DATABASE}.{ingest_table('logs')}"
    started = time.process_time()
    for rows_json in inserts:
        insert_json_rows(client, table, rows_json, hashlib.sha256(rows_json).hexdigest())
        time.sleep(interval_s)
    inserting = time.process_time() - started
    time.sleep(settle_s)
    with_merges = time.process_time() - started
    stored = client.command(f"SELECT count() FROM {DATABASE}.logs")
    sent = batches * rows
    print(
        f"{variant:6} {inserting / sent * 1e6:6.2f} µs/row inserting, "
        f"{with_merges / sent * 1e6:6.2f} with {settle_s:g} s of merges after; "
        f"{stored} of {sent} rows in logs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--runs", type=int, default=2, help="runs of each variant, alternated")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--rows", type=int, default=5000, help="rows per batch")
    parser.add_argument("--interval-ms", type=float, default=100.0)
    parser.add_argument("--settle-s", type=float, default=15.0)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--data-root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(
            args.child,
            args.batches,
            args.rows,
            args.interval_ms / 1000,
            args.settle_s,
            args.data_root,
        )
        return
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}: choose from {', '.join(VARIANTS)}")
    with tempfile.TemporaryDirectory(prefix="rivulet-engine-") as data_root:
        for _ in range(args.runs):
            for variant in variants:
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "bench.engine",
                        *("--child", variant, "--data-root", data_root),
                        *("--batches", str(args.batches), "--rows", str(args.rows)),
                        *("--interval-ms", str(args.interval_ms)),
                        *("--settle-s", str(args.settle_s)),
                    ],
                    check=True,
                    cwd=Path(__file__).resolve().parent.parent,
                )


if __name__ == "__main__":
    main()
