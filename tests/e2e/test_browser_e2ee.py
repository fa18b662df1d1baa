"""End-to-end encryption between browsers and the Python client (docs/e2ee.md):
Chromium pages run the key exchange in JavaScript (web/e2ee/group.js) and SFrame in
an RTCRtpScriptTransform worker (web/e2ee/worker.js); a Python client in the same
meeting holds the same keys, and everyone decodes everyone."""

from __future__ import annotations

import asyncio
from typing import Any

from playwright.async_api import Browser

from client.sdk import Session
from tests.e2e.conftest import BrowserParticipant, open_participant
from tests.integration.relay_harness import GrantMinter, RelayProcess, video_frames


async def e2ee_state(page: BrowserParticipant) -> dict[str, Any]:
    state: dict[str, Any] = await page.page.evaluate("window.conclaveE2ee()")
    return state


async def frames_from(page: BrowserParticipant, publisher: str) -> int:
    return int((await page.stats()).get(publisher, {}).get("framesDecoded", 0))


async def test_browsers_and_python_share_keys_and_decode_each_other(
    relay: RelayProcess, minter: GrantMinter, browser: Browser, page_url: str
) -> None:
    room = await minter.new_room()
    ann = await open_participant(
        browser, page_url, relay, minter, room, "p_ann", ["audio", "video"]
    )
    ben = await open_participant(browser, page_url, relay, minter, room, "p_ben", ["video"])
    cyd = Session(minter.join_response(relay, room, "p_cyd", "cyd"), "cyd", ["audio", "video"])
    async with cyd:
        pages = {"p_ann": ann, "p_ben": ben}
        states: dict[str, dict[str, Any]] = {}
        try:
            async with asyncio.timeout(30):
                while True:
                    states = {pid: await e2ee_state(p) for pid, p in pages.items()}
                    codes = {s["securityCode"] for s in states.values()} | {cyd.security_code}
                    members = [sorted(s["members"]) for s in states.values()]
                    everyone = ["p_ann", "p_ben", "p_cyd"]
                    decoded = (
                        await frames_from(ben, "p_ann") >= 30
                        and await frames_from(ben, "p_cyd") >= 30
                        and await frames_from(ann, "p_ben") >= 30
                        and video_frames(cyd, "p_ann") >= 30
                        and video_frames(cyd, "p_ben") >= 30
                    )
                    if (
                        len(codes) == 1
                        and None not in codes
                        and all(m == everyone for m in members)
                        and decoded
                    ):
                        break
                    await asyncio.sleep(0.3)
        except TimeoutError:
            raise AssertionError(
                f"pages: {states}\nann sees {await ann.stats()}\nben sees {await ben.stats()}\n"
                f"python: {cyd.security_code} {cyd.e2ee_members} {cyd.stats()}\n"
                f"{await ann.diagnostics()}"
            ) from None
        # Nothing failed to decrypt anywhere, and every key message was accepted.
        for pid, state in states.items():
            assert state["decryptFailures"] == {}, (pid, state)
            assert state["refused"] == {}, (pid, state)
            assert state["stats"]["encrypted"] > 0, (pid, state)
        assert all(f["decrypt_failures"] == 0 for f in cyd.stats().values()), cyd.stats()
        assert cyd.e2ee_refused() == {}
        assert await ann.errors() == [] and await ben.errors() == []
    assert relay.metric("conclave_relay_decoders_created_total") == 0


async def test_an_encrypting_page_never_decodes_clear_frames(
    relay: RelayProcess, minter: GrantMinter, browser: Browser, page_url: str
) -> None:
    """No clear fallback: what a page with E2EE off sends reaches an encrypting page
    as packets, fails to decrypt, is counted, and never reaches the decoder, while
    the encrypting publisher next to it is decoded."""
    room = await minter.new_room()
    eve = await open_participant(
        browser, page_url, relay, minter, room, "p_eve", ["video"], e2ee=False
    )
    ann = await open_participant(browser, page_url, relay, minter, room, "p_ann", ["video"])
    ben = await open_participant(browser, page_url, relay, minter, room, "p_ben", [])
    async with asyncio.timeout(20):
        while (
            await frames_from(ben, "p_ann") < 30
            or (await ben.stats()).get("p_eve", {}).get("videoPacketsReceived", 0) < 300
        ):
            await asyncio.sleep(0.2)
    assert await frames_from(ben, "p_eve") == 0
    failures = (await e2ee_state(ben))["decryptFailures"]
    assert failures.get("p_eve", 0) >= 10 and "p_ann" not in failures, failures
    assert await ann.errors() == [] and await eve.errors() == []
