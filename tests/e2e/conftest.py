"""Real-browser tests: Debian's Chromium, driven by Playwright, joins meetings on a
real relay through tests/e2e/page/meeting.html (a minimal participant speaking
docs/signaling.md).

Chromium is never downloaded (`playwright install` is not used): `make test`
installs the Debian `chromium` package, and without it these tests fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, async_playwright

from conclave.processes import free_port
from tests.integration.conftest import minter, relay
from tests.integration.relay_harness import GrantMinter, RelayProcess

__all__ = ["minter", "relay"]  # the relay tier's fixtures, reused here

CHROMIUM = os.environ.get("CONCLAVE_CHROMIUM", "/usr/bin/chromium")
PAGE_DIR = Path(__file__).parent / "page"
WEB_DIR = Path(__file__).resolve().parents[2] / "web"
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    # getDisplayMedia picks the (virtual) screen without asking
    "--auto-select-desktop-capture-source=Entire screen",
    # real host addresses in ICE candidates instead of mDNS names
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    # nothing may try to reach Google from the test machine
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextlib.asynccontextmanager
async def launch_browser() -> AsyncIterator[Browser]:
    """Debian's Chromium under Playwright, with fake devices."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium "
            "(`make test` installs it, or `apt-get install chromium`)",
            pytrace=False,
        )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with launch_browser() as launched:
        yield launched


@pytest.fixture
async def page_url() -> AsyncIterator[str]:
    """Base URL of tests/e2e/page, served on 127.0.0.1."""
    app = web.Application()
    app.router.add_static("/web", WEB_DIR)  # the web client's modules (E2EE)
    app.router.add_static("/", PAGE_DIR)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/meeting.html"
    finally:
        await runner.cleanup()


class BrowserParticipant:
    """One meeting.html page in its own browser context (own fake devices)."""

    def __init__(self, page: Page, participant_id: str) -> None:
        self.page = page
        self.participant_id = participant_id
        self.console: list[str] = []
        page.on("console", lambda message: self.console.append(message.text))
        page.on("pageerror", lambda error: self.console.append(f"page error: {error}"))

    async def stats(self) -> dict[str, dict[str, int]]:
        """inbound-rtp figures per remote participant id (meeting.js conclaveStats)."""
        result: dict[str, dict[str, int]] = await self.page.evaluate("window.conclaveStats()")
        return result

    async def outbound(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.page.evaluate("window.conclaveOutbound()")
        return result

    async def errors(self) -> list[str]:
        result: list[str] = await self.page.evaluate("window.conclaveErrors")
        return result

    async def diagnostics(self) -> str:
        """What to print when a browser assertion fails."""
        state = await self.page.evaluate(
            "({url: location.href, state: window.conclaveState, errors: window.conclaveErrors,"
            " log: window.conclaveLog, ice: window.conclavePc?.iceConnectionState,"
            " connection: window.conclavePc?.connectionState})"
        )
        return json.dumps({**state, "console": self.console}, indent=1)


async def open_participant(
    browser: Browser,
    page_url: str,
    relay: RelayProcess,
    minter: GrantMinter,
    room: str,
    participant_id: str,
    publish: list[str],
    *,
    camera: str = "640x360",
    e2ee: bool = True,
    codec: str = "vp8",
) -> BrowserParticipant:
    context = await browser.new_context()
    page = await context.new_page()
    query = urllib.parse.urlencode(
        {
            "signal_url": relay.signal_url,
            "grant": minter.token(room, participant_id, relay.node_id, name=participant_id),
            "publish": ",".join(publish),
            "camera": camera,
            "e2ee": "1" if e2ee else "0",
            "codec": codec,
        }
    )
    participant = BrowserParticipant(page, participant_id)
    await page.goto(f"{page_url}?{query}")
    try:
        async with asyncio.timeout(10):
            while not await page.evaluate("window.conclaveState?.joined"):
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(
            f"{participant_id} did not join\n{await participant.diagnostics()}"
        ) from None
    return participant
