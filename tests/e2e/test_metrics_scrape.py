"""The dashboards and alerts name only metrics that running services really export.

Starts a gateway and workers as processes with their metrics ports on, scrapes `/metrics`, and
checks every metric named in deploy/grafana/*.json and deploy/prometheus/*.yaml against what
was scraped (a histogram exposes _bucket/_sum/_count, a counter _total).
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.harness import Pipeline, free_port
from tests.unit.test_deploy import METRIC_NAME, all_queries

TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$", re.M)
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
    "summary": ("", "_sum", "_count", "_created"),
    "untyped": ("",),
}


def scraped_names(url: str) -> set[str]:
    text = httpx.get(url, timeout=10).text
    names: set[str] = set()
    for name, kind in TYPE_LINE.findall(text):
        base = name.removesuffix("_total") if kind == "counter" else name
        names.update(base + suffix for suffix in SUFFIXES[kind])
    return names


def test_dashboard_and_alert_metrics_are_exported(tmp_path: Path, namespace: str) -> None:
    pipeline = Pipeline(tmp_path, namespace)
    pipeline.require_servers()
    ports = {name: free_port() for name in ("normalizer", "writer", "profiler")}
    try:
        pipeline.start("gateway", "gateway")
        for name, port in ports.items():
            pipeline.env["RIVULET_METRICS_PORT"] = str(port)
            args = {
                "normalizer": ("normalizer", "--consumer", "n1"),
                "writer": ("writer", "--kinds", "metrics", "--consumer", "m1"),
                "profiler": ("profiler", "--consumer", "p1", "--no-http"),
            }[name]
            pipeline.start(name, *args)
        pipeline.wait_http(pipeline.url + "/healthz")
        for port in ports.values():
            pipeline.wait_http(f"http://127.0.0.1:{port}/readyz")
        exported = scraped_names(pipeline.url + "/metrics")
        for port in ports.values():
            exported |= scraped_names(f"http://127.0.0.1:{port}/metrics")
        used = {name for _, query in all_queries() for name in METRIC_NAME.findall(query)}
        assert used, "no metric names found in the dashboards and alerts"
        missing = sorted(used - exported)
        assert not missing, f"named in dashboards/alerts but not exported: {missing}"
    finally:
        pipeline.stop()
        pipeline.cleanup()
