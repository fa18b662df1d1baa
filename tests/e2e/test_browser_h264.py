"""H.264 between Chromium and the Python client through the relay, when the
publisher prefers it (the relay offers VP8 first, H.264 second). Chromium sends it
as simulcast; subscribers start at a key frame with its parameter sets. Everything
is end-to-end encrypted, per NAL unit (web/e2ee/h264.js, client/e2ee/h264.py)."""

from __future__ import annotations

import asyncio

from playwright.async_api import Browser

from client.sdk import Session
from tests.e2e.conftest import open_participant
from tests.integration.relay_harness import GrantMinter, RelayProcess, wait_for_frames


async def test_chromium_sends_h264_to_a_page_and_to_python(
    relay: RelayProcess, minter: GrantMinter, browser: Browser, page_url: str
) -> None:
    room = await minter.new_room()
    ann = await open_participant(
        browser, page_url, relay, minter, room, "p_ann", ["video"], codec="h264"
    )
    ben = await open_participant(browser, page_url, relay, minter, room, "p_ben", [])
    cyd = Session(minter.join_response(relay, room, "p_cyd", "cyd"), "cyd", [])
    async with cyd:
        await wait_for_frames(cyd, "p_ann", 30, timeout=30)
        async with asyncio.timeout(20):
            while (await ben.stats()).get("p_ann", {}).get("framesDecoded", 0) < 30:
                await asyncio.sleep(0.2)
        video = [o for o in await ann.outbound() if o["kind"] == "video"]
        assert {o["codec"] for o in video} == {"video/H264"}, video
        assert len(video) >= 2, video  # simulcast layers, in H.264
        assert cyd.stats()["p_ann"]["decrypt_failures"] == 0
        state = await ben.page.evaluate("window.conclaveE2ee()")
        assert state["decryptFailures"] == {} and state["securityCode"] == cyd.security_code
    assert await ann.errors() == [] and await ben.errors() == []
    assert relay.metric("conclave_codec_mismatches_total") == 0
    assert relay.metric("conclave_relay_decoders_created_total") == 0


async def test_python_sends_h264_to_a_page(
    relay: RelayProcess, minter: GrantMinter, browser: Browser, page_url: str
) -> None:
    room = await minter.new_room()
    dan = Session(
        minter.join_response(relay, room, "p_dan", "dan"), "dan", ["video"], video_codec="H264"
    )
    async with dan:
        ben = await open_participant(browser, page_url, relay, minter, room, "p_ben", [])
        async with asyncio.timeout(30):
            while (await ben.stats()).get("p_dan", {}).get("framesDecoded", 0) < 30:
                await asyncio.sleep(0.2)
        state = await ben.page.evaluate("window.conclaveE2ee()")
        assert state["decryptFailures"] == {} and state["securityCode"] == dan.security_code
        assert await ben.errors() == []
