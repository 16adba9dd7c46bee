"""Read-only SQL over HTTP, served by the process that owns the chdb engine.

chdb allows one process per data path, so `rivulet query` cannot open the engine while
`rivulet up` runs: it POSTs the SQL here instead. Loopback only; the engine itself enforces
`readonly=1`, so writes and DDL are refused whatever the text says.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from services.writer.sinks import ClickHouseSink

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]

MAX_SQL_BYTES = 1024 * 1024


class QueryApp:
    def __init__(self, sink: ClickHouseSink) -> None:
        self.sink = sink

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/healthz":
            await _reply(send, 200, b'{"status":"ok"}\n')
            return
        if scope["path"] != "/query" or scope["method"] != "POST":
            await _reply(send, 404, b'{"error":"POST /query with the SQL as body"}\n')
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_SQL_BYTES:
                await _reply(send, 413, b'{"error":"query too large"}\n')
                return
            if not message.get("more_body", False):
                break
        try:
            rows = await self.sink.query_json_lines(body.decode().strip().rstrip(";"))
        except Exception as exc:
            await _reply(send, 400, (str(exc).strip().replace("\n", " ") + "\n").encode())
            return
        await _reply(send, 200, rows)


async def _reply(send: Callable[[Message], Awaitable[None]], status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/x-ndjson")],
        }
    )
    await send({"type": "http.response.body", "body": body})
