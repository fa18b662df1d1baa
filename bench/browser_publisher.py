"""A Chromium publisher for the forwarding benchmark's simulcast case.

Headless Debian Chromium (never a downloaded build), driven by Playwright, opens
tests/e2e/page/meeting.html (served from 127.0.0.1 by a small aiohttp static server,
as tests/e2e/conftest.py does) with a fake 1280x720 camera and publishes video only,
without end-to-end encryption (`e2ee=0`; pages before E2EE ignore it).
The relay offers three simulcast layers, so three VP8 streams (rids h, m, l) go into
it; how many bits each gets is decided by Chromium's own bandwidth estimator.

`layers()` reads what the page actually sends from getStats (outbound-rtp per rid,
with bytes: meeting.js's conclaveOutbound has no byte counts) and the estimate
(the nominated candidate pair's availableOutgoingBitrate). `cpu()` is the CPU time
of every Chromium process (and Playwright's driver): the publisher's cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import urllib.parse
from typing import Any

from aiohttp import web
from cluster import HOST, REPO
from playwright.async_api import Browser, BrowserContext, Page, Playwright, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeout

from conclave.processes import free_port
from protos.rooms_pb2 import JoinRoomResponse

CHROMIUM = os.environ.get("CONCLAVE_CHROMIUM", "/usr/bin/chromium")
PAGE_DIR = REPO / "tests" / "e2e" / "page"
# The flags tests/e2e/conftest.py launches Chromium with (bench/ cannot import the
# tests; keep the two in step): no sandbox (root), a fake camera that needs no
# permission prompt, real addresses in ICE candidates, nothing reaching out to Google.
CHROMIUM_ARGS = (
    "--no-sandbox --use-fake-ui-for-media-stream --use-fake-device-for-media-stream "
    "--disable-features=WebRtcHideLocalIpsWithMdns --disable-background-networking "
    "--disable-component-update --disable-sync --no-first-run"
).split()
JOIN_TIMEOUT_S = 20.0
CLOSE_TIMEOUT_S = 10.0

OUTBOUND_JS = """async () => {
  const pc = window.conclavePc;
  const result = { layers: [], estimate: null };
  if (!pc) return result;
  (await pc.getStats()).forEach((s) => {
    if (s.type === "outbound-rtp" && s.kind === "video") {
      result.layers.push({
        rid: s.rid ?? "", ssrc: s.ssrc, active: s.active ?? null,
        packetsSent: s.packetsSent ?? 0, bytesSent: s.bytesSent ?? 0,
        headerBytesSent: s.headerBytesSent ?? 0, framesEncoded: s.framesEncoded ?? 0,
        keyFramesEncoded: s.keyFramesEncoded ?? 0, frameWidth: s.frameWidth ?? 0,
        frameHeight: s.frameHeight ?? 0, targetBitrate: s.targetBitrate ?? 0,
        nackCount: s.nackCount ?? 0, pliCount: s.pliCount ?? 0,
        qualityLimitationReason: s.qualityLimitationReason ?? "",
      });
    } else if (s.type === "candidate-pair" && s.nominated && s.availableOutgoingBitrate) {
      result.estimate = s.availableOutgoingBitrate;
    }
  });
  return result;
}"""


def _process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, user + system CPU seconds) of every process now."""
    ticks = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            table[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    return table


def descendants(root: int, table: dict[int, tuple[int, float]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


class BrowserPublisher:
    """One headless Chromium for the whole benchmark; one page (in its own context)
    per run. `start()`, then `close()` in a finally."""

    def __init__(self, camera: str = "1280x720") -> None:
        self.camera = camera
        self.page_url = ""
        self.version = "?"
        self._runner: web.AppRunner | None = None
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._context: BrowserContext | None = None
        self._page: Page | None = None
        self._console: list[str] = []
        self._drivers: set[int] = set()  # Playwright's driver: Chromium runs below it

    async def start(self) -> None:
        if not os.access(CHROMIUM, os.X_OK):
            raise RuntimeError(f"{CHROMIUM} is missing (apt-get install chromium)")
        app = web.Application()
        app.router.add_static("/", PAGE_DIR)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, HOST, port).start()
        self.page_url = f"http://{HOST}:{port}/meeting.html"
        before = descendants(os.getpid(), _process_table())
        self._playwright = await async_playwright().start()
        self._drivers = descendants(os.getpid(), _process_table()) - before
        self._browser = await self._playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        self.version = self._browser.version

    async def join(self, join: JoinRoomResponse) -> None:
        """Open a page that joins with the grant and publishes its camera; bounded."""
        assert self._browser is not None
        self._context = await self._browser.new_context()
        self._page = page = await self._context.new_page()
        self._console = []
        page.on("console", lambda message: self._console.append(message.text))
        page.on("pageerror", lambda error: self._console.append(f"page error: {error}"))
        query = urllib.parse.urlencode(
            {
                "signal_url": join.signal_url,
                "grant": join.grant,
                "publish": "video",
                "camera": self.camera,
                "e2ee": "0",  # the relay's work is the same; SFrame would cost Chromium CPU
            }
        )
        await page.goto(f"{self.page_url}?{query}")
        try:
            await page.wait_for_function(
                "window.conclaveState?.answers > 0", timeout=JOIN_TIMEOUT_S * 1000
            )
        except PlaywrightTimeout:
            diagnostics = await self.diagnostics()
            raise RuntimeError(f"the Chromium publisher did not join: {diagnostics}") from None

    async def diagnostics(self) -> str:
        if self._page is None:
            return "no page"
        with contextlib.suppress(Exception):
            state = await self._page.evaluate(
                "({state: window.conclaveState, errors: window.conclaveErrors,"
                " log: window.conclaveLog, ice: window.conclavePc?.iceConnectionState})"
            )
            return f"{state} console={self._console[-20:]}"
        return f"console={self._console[-20:]}"

    async def layers(self) -> dict[str, Any]:
        """{"layers": [outbound-rtp per rid], "estimate": bit/s or None}."""
        if self._page is None:
            return {"layers": [], "estimate": None}
        async with asyncio.timeout(10.0):
            result: dict[str, Any] = await self._page.evaluate(OUTBOUND_JS)
        return result

    async def errors(self) -> list[str]:
        if self._page is None:
            return []
        result: list[str] = await self._page.evaluate("window.conclaveErrors")
        return result

    async def leave(self) -> None:
        """Close the page's context: its WebSocket and peer connection go with it."""
        context, self._context, self._page = self._context, None, None
        if context is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await context.close()

    def _processes(self, table: dict[int, tuple[int, float]]) -> set[int]:
        """The driver and everything below it (Chromium's browser, GPU, network,
        renderer processes) that is still our descendant."""
        mine = descendants(os.getpid(), table)
        found = self._drivers & mine
        for driver in found.copy():
            found |= descendants(driver, table)
        return found

    def cpu(self) -> dict[int, float]:
        """CPU seconds so far of each Chromium (and driver) process alive now."""
        table = _process_table()
        return {pid: table[pid][1] for pid in self._processes(table)}

    async def close(self) -> None:
        await self.leave()
        browser, self._browser = self._browser, None
        if browser is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await browser.close()
        playwright, self._playwright = self._playwright, None
        if playwright is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await playwright.stop()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def kill_leftovers(self) -> None:
        """Synchronous last resort: SIGKILL whatever of Chromium and the driver is
        still our descendant (a pid that is no longer ours is left alone)."""
        for pid in self._processes(_process_table()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
