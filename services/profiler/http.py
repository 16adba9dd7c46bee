"""The profiler's HTTP reports (ASGI). Loopback only by default (`RIVULET_PROFILER_HTTP_HOST`).

Input: GET requests; output: the same reports as `rivulet profile ...` (services.profiler.views),
read through `rivulet query`'s route. Read-only: nothing here writes to any store. There is no
authentication — like the query port, it is an operator tool for the machine it runs on; an
omitted `tenant` reads every tenant. Put it behind your own authenticating proxy before exposing
it anywhere.

    GET /healthz
    GET /v1/profiles?service=S[&type=T][&tenant=X][&since=1h][&limit=100]   stored profiles (NDJSON)
    GET /v1/profiles/top?service=S[&type=T][&since=1h | &profile=ID][&sample_index=cpu][&cum=1]
        [&n=20][&granularity=functions|filefunctions][&noinlines=1][&nodefraction=0.005]
        [&edgefraction=0.001][&labels=1][&format=text|json]                 `go tool pprof -top`
    GET /v1/profiles/flamegraph?...&format=folded|svg                      folded stacks or SVG
    GET /v1/profiles/diff?service=S&base=2h..1h&new=1h[&format=text|json]  share changes
    GET /v1/profiles/pprof?profile=ID[&tenant=X]        the original protobuf (gzipped), so that
                                                        `go tool pprof URL` works

Answers: 200; 400 bad parameters; 404 nothing stored matches; 503 the store is unreachable.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final
from urllib.parse import parse_qsl

import msgspec
import structlog

from services.profiler import report, views
from services.profiler.route import RouteUnavailable
from services.profiler.selection import SelectionError, flame_format
from services.profiler.store import NoProfiles, ProfileStore

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

TEXT: Final = b"text/plain; charset=utf-8"
JSON: Final = b"application/json"
NDJSON: Final = b"application/x-ndjson"
_json: Final = msgspec.json.Encoder()
log = structlog.get_logger()


class ReportsApp:
    def __init__(self, store: ProfileStore, clock: Callable[[], int] = time.time_ns) -> None:
        self.store = store
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if scope["method"] not in ("GET", "HEAD"):
            await _reply(send, 405, _error("use GET"), JSON, {"allow": "GET"})
            return
        params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        try:
            status, body, content_type, headers = await self._route(path, params)
        except SelectionError as exc:
            status, body, content_type, headers = 400, _error(str(exc)), JSON, {}
        except NoProfiles as exc:
            status, body, content_type, headers = 404, _error(str(exc)), JSON, {}
        except RouteUnavailable as exc:
            status, body, content_type, headers = 503, _error(str(exc)), JSON, {"retry-after": "5"}
        except ValueError as exc:  # report's own refusals (sample index, units)
            status, body, content_type, headers = 400, _error(str(exc)), JSON, {}
        except RuntimeError as exc:
            log.warning("profiler.report_failed", path=path, error=str(exc)[:500])
            status, body, content_type, headers = 502, _error(str(exc)), JSON, {}
        await _reply(send, status, body, content_type, headers)

    async def _route(
        self, path: str, params: dict[str, str]
    ) -> tuple[int, bytes, bytes, dict[str, str]]:
        now = self.clock()
        if path == "/healthz":
            return 200, b'{"status":"ok"}', JSON, {}
        if path == "/v1/profiles":
            sel = views.selection_from(params, now)
            limit = params.get("limit", "100")
            if not limit.isdigit():
                raise SelectionError("limit must be a non-negative integer")
            metas = await self.store.profiles(sel, int(limit))
            return 200, b"".join(_json.encode(m) + b"\n" for m in metas), NDJSON, {}
        if path == "/v1/profiles/top":
            sel = views.selection_from(params, now)
            opts = views.options_from(params)
            if params.get("format") == "json":
                return 200, await views.top_json(self.store, sel, opts), JSON, {}
            return 200, (await views.top_text(self.store, sel, opts)).encode(), TEXT, {}
        if path == "/v1/profiles/flamegraph":
            sel = views.selection_from(params, now)
            fmt = flame_format(params.get("format"))
            text = await views.flamegraph(self.store, sel, views.options_from(params), fmt)
            return 200, text.encode(), b"image/svg+xml" if fmt == "svg" else TEXT, {}
        if path == "/v1/profiles/diff":
            base, new = views.diff_selections(params, now)
            opts = views.options_from(params)
            rows = await views.diff(self.store, base, new, opts)
            if params.get("format") == "json":
                return 200, views.diff_json(rows, opts.nodecount), JSON, {}
            return 200, report.format_diff(rows, opts.nodecount).encode(), TEXT, {}
        if path == "/v1/profiles/pprof":
            if not params.get("profile"):
                raise SelectionError("give a profile id")
            sel = views.selection_from(params, now)
            data = await self.store.pprof(sel)
            disposition = {"content-disposition": 'attachment; filename="profile.pb.gz"'}
            return 200, data, b"application/octet-stream", disposition
        return 404, _error("not found"), JSON, {}


def _error(message: str) -> bytes:
    return _json.encode({"error": message})


async def _reply(
    send: Send, status: int, body: bytes, content_type: bytes, headers: dict[str, str]
) -> None:
    raw = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    raw.extend((k.encode(), v.encode()) for k, v in headers.items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
