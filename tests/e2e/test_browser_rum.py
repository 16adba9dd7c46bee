"""Browser RUM end to end: a real headless Chromium loads a page served on localhost (a tiny
http.server) that includes `rum.js` from the gateway (a process of tests/harness.Pipeline, behind
a small forwarding proxy that plays the load balancer and adds X-Forwarded-For), follows a link to
a second page, clicks a button whose handler is slow and throws, then the page is closed. The
beacons the snippet sends on pagehide/visibilitychange (page views, Web Vitals, the error,
resource timings) must arrive as rows with the page's origin, UA enrichment, GeoIP from the full
client address and only its /24 stored.

What ua-parser makes of the headless UA: Chromium's `--headless` (the "new" headless mode, the only
one left in recent versions) announces itself as
`Mozilla/5.0 (X11; Linux x86_64) ... HeadlessChrome/<version> Safari/537.36`, and ua-parser's
regexes have a family for that token, so rows say browser `HeadlessChrome` (not `Chrome`) and
os `Linux`; a headed Chrome on the same machine would give `Chrome`.

Chromium is driven over the DevTools protocol (its `--remote-debugging-port` websocket), with the
`websockets` package uvicorn[standard] already brings; no browser download. Without a Chromium
binary the test is skipped locally and fails in CI (`CI=true`), like the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect

from tests.harness import Pipeline
from tests.servers import unavailable

CHROMIUM_NAMES: Final = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)
CLIENT_IP: Final = "81.2.69.142"  # London in the GeoIP test database
HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade"}
)
PIXEL: Final = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


def chromium_binary() -> str:
    configured = os.environ.get("RIVULET_TEST_CHROMIUM", "")
    for name in (configured, *CHROMIUM_NAMES):
        found = shutil.which(name) if name else None
        if found:
            return found
    unavailable("no Chromium binary (apt-get install chromium, or set RIVULET_TEST_CHROMIUM)")
    raise AssertionError("unreachable")


# --- the test site ------------------------------------------------------------------------------


def page(title: str, gateway: str, key: str, body: str) -> bytes:
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<script async src="{gateway}/rum.js" data-key="{key}"></script>
</head><body>
<h1>{title}</h1>
<p>A paragraph large enough to be the largest contentful paint of this little page.</p>
<img src="/pixel.png" width="40" height="40" alt="">
{body}
</body></html>""".encode()


@contextlib.contextmanager
def site(gateway: str, key: dict[str, str]) -> Iterator[str]:
    """Serves the two pages on localhost; yields the origin. The pages read `key["key"]` when
    served: the browser key can only be created once the origin (its port) is known."""
    bodies = {
        "/": ("Home", '<a id="next" href="/cart?item=7">cart</a>'),
        "/cart": (
            "Cart",
            '<button id="buy" style="width:200px;height:60px" onclick="buy()">Buy</button>'
            "<script>function buy() {"
            " var t = performance.now(); while (performance.now() - t < 80) {}"
            ' throw new Error("checkout exploded"); }</script>',
        ),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/pixel.png":
                self._send(200, "image/png", PIXEL)
            elif path in bodies:
                title, body = bodies[path]
                html = page(title, gateway, key["key"], body)
                self._send(200, "text/html; charset=utf-8", html)
            else:
                self._send(404, "text/plain", b"not found")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def forwarding_proxy(upstream: str) -> Iterator[str]:
    """A reverse proxy in front of the gateway, as a load balancer would be: it adds
    `X-Forwarded-For: CLIENT_IP`, which the gateway believes because the harness trusts
    127.0.0.1/32 (RIVULET_TRUSTED_PROXIES), so the rows show what a public client's would."""
    target = urlsplit(upstream)

    class Proxy(BaseHTTPRequestHandler):
        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["X-Forwarded-For"] = CLIENT_IP
            conn = http.client.HTTPConnection(target.hostname or "", target.port, timeout=30)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                content = answer.read()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)
            finally:
                conn.close()

        do_GET = do_POST = do_OPTIONS = _forward

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# --- a minimal DevTools protocol client -----------------------------------------------------------


class Browser:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            future = self.pending.pop(message.get("id", -1), None)
            if future is not None:
                future.set_result(message)
            else:
                self.events.append(message)

    async def call(self, method: str, session: str | None = None, **params: Any) -> Any:
        ident = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[ident] = future
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        await self.ws.send(json.dumps(message))
        answer = await asyncio.wait_for(future, 30)
        assert "error" not in answer, (method, answer["error"])
        return answer.get("result", {})

    async def evaluate(self, session: str, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", session, expression=expression, returnByValue=True
        )
        return result["result"].get("value")

    async def wait_event(self, method: str, session: str, within_s: float = 30) -> None:
        deadline = time.monotonic() + within_s
        while True:
            for index, event in enumerate(self.events):
                if event.get("method") == method and event.get("sessionId") == session:
                    del self.events[index]
                    return
            assert time.monotonic() < deadline, f"no {method}"
            await asyncio.sleep(0.05)

    async def click(self, session: str, element_id: str) -> None:
        """A real mouse click in the middle of the element."""
        x, y = await self.evaluate(
            session,
            f"(() => {{ const r = document.getElementById('{element_id}')"
            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()",
        )
        for kind in ("mousePressed", "mouseReleased"):
            await self.call(
                "Input.dispatchMouseEvent",
                session,
                type=kind,
                x=x,
                y=y,
                button="left",
                clickCount=1,
            )

    async def wait_true(self, session: str, expression: str, within_s: float = 30) -> None:
        deadline = time.monotonic() + within_s
        while not await self.evaluate(session, expression):
            assert time.monotonic() < deadline, f"never true: {expression}"
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def chromium(binary: str, profile: Path) -> AsyncIterator[Browser]:
    process = await asyncio.create_subprocess_exec(
        binary,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: we stop exactly what we started
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or len(port_file.read_text().split()) < 2:
            assert process.returncode is None, "chromium exited"
            assert time.monotonic() < deadline, "chromium never opened its DevTools port"
            await asyncio.sleep(0.1)
        port, path = port_file.read_text().split()[:2]
        async with connect(f"ws://127.0.0.1:{port}{path}", max_size=None) as ws:
            browser = Browser(ws)
            try:
                yield browser
            finally:
                browser.reader.cancel()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def browse(binary: str, profile: Path, home: str) -> dict[str, Any]:
    """Home -> cart (a link click), a slow throwing click, close the tab; what the page saw."""
    async with chromium(binary, profile) as browser:
        target = await browser.call("Target.createTarget", url="about:blank")
        session = (
            await browser.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        )["sessionId"]
        for domain in ("Page.enable", "Runtime.enable", "Network.enable"):
            await browser.call(domain, session)
        await browser.call("Page.navigate", session, url=home + "/")
        await browser.wait_event("Page.loadEventFired", session)
        await browser.wait_true(session, "!!window.rivuletRum")
        await asyncio.sleep(0.5)  # paints, LCP
        await browser.click(session, "next")  # a real navigation: pagehide flushes page one
        await browser.wait_event("Page.loadEventFired", session)
        await browser.wait_true(session, "!!window.rivuletRum")
        await asyncio.sleep(0.3)
        await browser.click(session, "buy")  # slow handler (INP), then it throws
        await asyncio.sleep(0.5)  # the event-timing entry of the click
        seen = await browser.evaluate(
            session,
            "({cookies: document.cookie, session: sessionStorage.getItem('rivulet.session'),"
            " ua: navigator.userAgent})",
        )
        await browser.call("Page.close", session)  # visibilitychange + pagehide -> beacons
        await asyncio.sleep(1.0)
        assert isinstance(seen, dict)
        return seen


def wait_rows(pipeline: Pipeline, want: int, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = pipeline.query(
            "SELECT type, url, referrer, session_id, metrics, error, attrs, browser, os, "
            "geo_country FROM rivulet.rum_events ORDER BY ts"
        )
        if len(rows) >= want or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def test_headless_chromium_sends_rum_beacons(pipeline: Pipeline, tmp_path: Path) -> None:
    binary = chromium_binary()
    started = time.monotonic()
    key: dict[str, str] = {}
    with forwarding_proxy(pipeline.url) as gateway, site(gateway, key) as origin:
        created = json.loads(
            pipeline.cli(
                "keys", "create", "--tenant", "acme", "--type", "browser", "--origin", origin
            ).stdout
        )
        assert created["type"] == "browser" and created["origins"] == [origin]
        key["key"] = created["key_id"]
        seen = asyncio.run(browse(binary, tmp_path / "profile", origin))

    assert seen["cookies"] == ""  # the snippet sets none
    assert "HeadlessChrome/" in seen["ua"] and "Linux" in seen["ua"]
    rows = wait_rows(pipeline, want=12)
    pipeline.wait_drained(60)
    rows = wait_rows(pipeline, want=12, timeout=1)
    elapsed = time.monotonic() - started
    by_type: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_type.setdefault(row["type"], []).append(row)

    views = by_type.get("page_view", [])
    assert [v["url"] for v in views] == [origin + "/", origin + "/cart?item=7"], rows
    assert views[1]["referrer"] == origin + "/"
    assert {row["session_id"] for row in rows} == {seen["session"]}
    vitals = {(row["url"], row["attrs"]["name"]) for row in by_type.get("web_vital", [])}
    for url in (origin + "/", origin + "/cart?item=7"):
        for name in ("TTFB", "FCP", "LCP", "CLS"):
            assert (url, name) in vitals, (url, name, vitals)
    inp = {
        r["url"]: r["metrics"]["inp"] for r in by_type["web_vital"] if r["attrs"]["name"] == "INP"
    }
    assert inp[origin + "/cart?item=7"] >= 80  # the handler spins 80 ms
    lcp = next(r for r in by_type["web_vital"] if r["attrs"]["name"] == "LCP")
    assert lcp["metrics"]["lcp"] > 0 and lcp["attrs"]["rating"] == "good"
    [error] = by_type["error"]
    assert error["error"]["kind"] == "js"
    assert "checkout exploded" in error["error"]["message"]
    assert "buy" in error["error"]["stack"]
    resources = [r["attrs"]["resource_url"] for r in by_type.get("resource", [])]
    assert origin + "/pixel.png" in resources
    assert not any("/v1/ingest/" in url for url in resources)  # its own beacons are not resources

    for row in rows:
        assert (row["browser"], row["os"]) == ("HeadlessChrome", "Linux"), row
        assert row["attrs"]["origin"] == origin
        assert row["attrs"]["client.address"] == "81.2.69.0"  # /24: used for GeoIP, then cut
        assert "rivulet.ip_policy" not in row["attrs"]
    if "RIVULET_GEOIP_CITY_DB" in pipeline.env:
        assert {row["geo_country"] for row in rows} == {"GB"}
    print(f"\nbrowser RUM: {len(rows)} rows from headless Chromium in {elapsed:.1f}s")
