"""Settings: defaults, then an optional TOML file (`--config`), then `RIVULET_*` environment.

Every field maps to one environment variable: `RIVULET_<FIELD NAME UPPER-CASED>`. The names that
CONTRACT.md fixes (RIVULET_REDIS_URL, RIVULET_CLICKHOUSE_URL, RIVULET_TIMESCALE_DSN,
RIVULET_GEOIP_CITY_DB, RIVULET_HTTP_PORT) keep their meaning; the rest bound batches, bodies,
rates and backlogs.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    redis_url: str = "redis://127.0.0.1:6379/0"
    # fsync policy of the private Redis `rivulet up` starts (always | everysec | no): how many
    # accepted events a Redis crash may lose (see docs/guarantees.md)
    redis_appendfsync: str = "everysec"
    clickhouse_url: str = ""  # "" means chdb:///<cwd>/var/clickhouse
    clickhouse_database: str = "rivulet"
    timescale_dsn: str = "postgresql://127.0.0.1:5432/rivulet"
    timescale_schema: str = "rivulet"
    geoip_city_db: str = ""
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # The chdb owner (the ClickHouse writer) answers `rivulet query` here.
    query_port: int = 8124
    # Prefix of every Redis key; tests isolate themselves with their own.
    namespace: str = "rivulet"
    var_dir: str = "var"
    log_level: str = "info"
    # Workers serve /metrics, /healthz and /readyz on this port (0: not served; `rivulet up`
    # runs several workers on one host). Kubernetes and compose set it.
    metrics_port: int = 0
    metrics_host: str = "0.0.0.0"

    # gateway
    max_body_bytes: int = 5 * 1024 * 1024
    max_decompressed_bytes: int = 50 * 1024 * 1024
    max_events_per_request: int = 10_000
    max_event_bytes: int = 1024 * 1024
    signature_window_s: int = 300
    idempotency_ttl_s: int = 24 * 3600
    rate_limit_events_per_s: float = 200_000.0
    rate_limit_burst: float = 400_000.0
    raw_high_watermark: int = 1_000_000
    trusted_proxies: tuple[str, ...] = ()
    key_cache_ttl_s: float = 5.0

    # browser RUM (public browser keys on /v1/ingest/rum?key=): smaller bodies, and token buckets
    # per key and per client IP (an IPv6 client counts per /64) on top of the tenant's
    rum_max_body_bytes: int = 64 * 1024
    rum_max_events_per_request: int = 200  # at most rum_ip_burst, or such a batch never fits
    rum_key_rate_per_s: float = 500.0
    rum_key_burst: float = 2_000.0
    rum_ip_rate_per_s: float = 20.0
    rum_ip_burst: float = 200.0

    # normalizer
    normalizer_batch: int = 500
    # Bytes of entries per normalizer read (shared/budget.py): its commit carries every body in
    # one Redis command.
    normalizer_batch_bytes: int = 8 * 1024 * 1024
    normalizer_consumers: int = 2  # per kind: one processes while another waits on Redis
    # normalizer processes `rivulet up` runs: one process is bound to one core by the GIL
    up_normalizers: int = 2
    clean_high_watermark: int = 1_000_000
    dedupe_window_s: int = 24 * 3600
    claim_idle_ms: int = 30_000
    max_deliveries: int = 5
    dlq_maxlen: int = 1_000_000

    # writer
    # 10,000 rather than 5,000 rows per insert: in `up` at ~48k logs/s, the writer's CPU per row
    # fell from ~10.6-11.3 to ~9.1 us (fewer parts for the engine to write and merge), for
    # ~25 MiB more heap (docs/performance.md).
    writer_batch_size: int = 10_000
    writer_batch_age_ms: int = 500
    # Bytes of entries per writer batch (shared/budget.py): bounded by entries alone, 10,000 logs
    # of 8 KB took a writer to ~800 MiB of anonymous memory (docs/performance.md).
    writer_batch_bytes: int = 16 * 1024 * 1024
    writer_consumers: int = 2
    retry_attempts: int = 6
    retry_base_s: float = 0.2
    retry_max_s: float = 10.0
    clickhouse_ttl_days: int = 30
    # Entries a trim leaves behind hold Redis memory, and each new entry's page is faulted in
    # afresh unless freed ones can be reused: 5 s let a 200,000-log burst fault ~50,000 pages
    # into Redis, 0.5 s ~13,000 (docs/performance.md).
    trim_interval_s: float = 0.5

    # profiles (gateway limits, profiler, its HTTP reports, the writer's profiles path)
    max_profile_bytes: int = 8 * 1024 * 1024  # one profile on the wire (413)
    max_profile_decoded_bytes: int = 32 * 1024 * 1024  # after gunzip (413 / DLQ)
    max_profile_samples: int = 1_000_000  # samples in one profile (422 / DLQ)
    max_profile_stack_depth: int = 1024  # frames in one stack (422 / DLQ)
    max_profile_labels: int = 64  # query-string labels per profile (400)
    profile_raw_high_watermark: int = 10_000  # profiles waiting for the profiler (503 above)
    profiler_batch: int = 8  # raw profiles per profiler read
    profiler_http_host: str = "127.0.0.1"
    profiler_http_port: int = 8125  # reports: /v1/profiles/top, /flamegraph, /diff
    profile_writer_batch_size: int = 50  # clean profiles per writer insert

    @property
    def clickhouse_dsn(self) -> str:
        if self.clickhouse_url:
            return self.clickhouse_url
        return f"chdb://{Path.cwd() / self.var_dir / 'clickhouse'}"

    @property
    def uses_chdb(self) -> bool:
        return self.clickhouse_dsn.startswith("chdb:")


_FIELDS: tuple[str, ...] = Settings.__struct_fields__


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for field in _FIELDS:
        raw = environ.get(f"RIVULET_{field.upper()}")
        if raw is None:
            continue
        if field == "trusted_proxies":
            found[field] = [part.strip() for part in raw.split(",") if part.strip()]
        else:
            found[field] = raw
    return found


def load_settings(
    config_file: str | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build Settings; raises ValueError naming the bad field on invalid input."""
    values: dict[str, Any] = {}
    if config_file:
        with open(config_file, "rb") as fh:
            values.update(tomllib.load(fh))
    values.update(_from_env(os.environ if environ is None else environ))
    try:
        return msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid configuration: {exc}") from exc
