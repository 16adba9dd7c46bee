"""`python -m tests.faults.faulty_clickhouse <rivulet args>`: the real `rivulet` CLI whose
ClickHouse client raises injected faults while a marker file exists.

The only fake in the fault tests: an outage (`<marker>` exists: every call raises
OperationalError, as a dropped connection does) at the client boundary, inside a real process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.exceptions import OperationalError

from rivulet_cli.main import main

MARKER = Path(os.environ["RIVULET_TEST_CLICKHOUSE_OUTAGE_FILE"])
_real_get_client = clickhouse_connect.get_client


class FaultyClient:
    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name not in ("insert", "raw_insert", "query", "command", "raw_query"):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if MARKER.exists():
                raise OperationalError("injected outage: connection refused")
            return attribute(*args, **kwargs)

        return call


def faulty_get_client(*args: Any, **kwargs: Any) -> Any:
    return FaultyClient(_real_get_client(*args, **kwargs))


clickhouse_connect.get_client = faulty_get_client

if __name__ == "__main__":
    main()
