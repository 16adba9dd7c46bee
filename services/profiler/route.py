"""Read-only SQL the way `rivulet query` runs it, for profile reports.

Input: SQL text. Output: JSON lines (one object per row). Route: with `chdb:///` the chdb-owning
writer's loopback query port (`RIVULET_QUERY_PORT`), which enforces `readonly=1`; with a ClickHouse
server, a clickhouse-connect client with `readonly=1`.

`open_engine`: when the query port does not answer, the command-line tools may open the chdb
engine themselves (as `rivulet query` does: nothing else holds it then). A long-running service
must not (it would lock the writer out of its own engine), so it reports the writer as away.
"""

from __future__ import annotations

import httpx

from services.writer.sinks import ClickHouseSink, RetryableSinkError, classify_clickhouse
from shared.config import Settings


class RouteUnavailable(RuntimeError):
    """The store cannot be reached now (the writer is down, the server unreachable)."""


class ClickHouseRoute:
    def __init__(self, settings: Settings, *, open_engine: bool, timeout_s: float = 300) -> None:
        self.settings = settings
        self.open_engine = open_engine
        self._http = httpx.AsyncClient(timeout=timeout_s) if settings.uses_chdb else None
        self._sink: ClickHouseSink | None = None

    def _local(self) -> ClickHouseSink:
        if self._sink is None:
            self._sink = ClickHouseSink(
                self.settings.clickhouse_dsn, self.settings.clickhouse_database, 0
            )
        return self._sink

    async def __call__(self, sql: str) -> bytes:
        if self._http is not None and self._sink is None:
            url = f"http://127.0.0.1:{self.settings.query_port}/query"
            try:
                response = await self._http.post(url, content=sql.encode())
            except httpx.TransportError as exc:
                if not self.open_engine:
                    raise RouteUnavailable(
                        f"the ClickHouse writer does not answer on 127.0.0.1:"
                        f"{self.settings.query_port}: {type(exc).__name__}"
                    ) from exc
            else:
                if response.status_code != 200:
                    raise RuntimeError(response.text.strip()[:2000])
                return response.content
        try:
            return await self._local().query_json_lines(sql)
        except Exception as exc:
            message = " ".join(str(exc).split())[:2000]
            if isinstance(classify_clickhouse(exc), RetryableSinkError) and "Code: " not in message:
                raise RouteUnavailable(message) from exc
            raise RuntimeError(message) from exc

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        if self._sink is not None:
            await self._sink.close()
