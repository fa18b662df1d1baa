"""Chromium and the Python SDK in one meeting, through a real relay: media flows
browser -> browser, browser -> Python and Python -> browser, and the relay never
decodes."""

from __future__ import annotations

import asyncio

from playwright.async_api import Browser

from client.sdk import Session
from tests.e2e.conftest import BrowserParticipant, open_participant
from tests.integration.relay_harness import GrantMinter, RelayProcess, video_frames


async def wait_for(
    participant: BrowserParticipant, publisher: str, field: str, minimum: int, timeout: float = 15
) -> int:
    """Poll the page's inbound-rtp figures from `publisher` until `field` >= minimum."""
    value = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = (await participant.stats()).get(publisher, {}).get(field, 0)
                if value >= minimum:
                    return value
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(
            f"{participant.participant_id}: {field} from {publisher} stayed at {value} "
            f"(< {minimum})\n{await participant.diagnostics()}"
        ) from None


async def test_browser_to_browser_and_python(
    relay: RelayProcess, minter: GrantMinter, browser: Browser, page_url: str
) -> None:
    room = await minter.new_room()
    ann = await open_participant(
        browser, page_url, relay, minter, room, "p_ann", ["audio", "video"]
    )
    ben = await open_participant(browser, page_url, relay, minter, room, "p_ben", [])
    cyd = Session(minter.join_response(relay, room, "p_cyd", "cyd"), "cyd", [])
    async with cyd:
        first = await wait_for(ben, "p_ann", "framesDecoded", 1)
        await asyncio.sleep(0.5)
        second = await wait_for(ben, "p_ann", "framesDecoded", first + 1)
        assert second > first
        assert await wait_for(ben, "p_ann", "keyFramesDecoded", 1) >= 1
        assert await wait_for(ben, "p_ann", "audioPacketsReceived", 1) > 0
        async with asyncio.timeout(15):
            while video_frames(cyd, "p_ann") < 10:
                await asyncio.sleep(0.1)
        assert await ann.errors() == []
        assert await ben.errors() == []
        # What ann sent was simulcast (the relay's default), two layers from 360p.
        answer: str = (await ann.page.evaluate("window.conclaveSdp.answers"))[-1]
        assert "a=simulcast:send h;m;l" in answer.splitlines(), answer
        video = [o for o in await ann.outbound() if o["kind"] == "video"]
        assert sum(int(o["packetsSent"] or 0) > 0 for o in video) >= 2, video
    assert relay.metric("conclave_relay_decoders_created_total") == 0


async def test_python_publisher_to_browser(
    relay: RelayProcess, minter: GrantMinter, browser: Browser, page_url: str
) -> None:
    room = await minter.new_room()
    dan = Session(
        minter.join_response(relay, room, "p_dan", "dan"),
        "dan",
        ["audio", "video"],
    )
    async with dan:
        eve = await open_participant(browser, page_url, relay, minter, room, "p_eve", [])
        first = await wait_for(eve, "p_dan", "framesDecoded", 1)
        await asyncio.sleep(0.5)
        assert await wait_for(eve, "p_dan", "framesDecoded", first + 1) > first
        assert await wait_for(eve, "p_dan", "keyFramesDecoded", 1) >= 1
        assert await wait_for(eve, "p_dan", "audioPacketsReceived", 1) > 0
        assert await eve.errors() == []
    assert relay.metric("conclave_relay_decoders_created_total") == 0
