"""Research pin for docs/simulcast.md (the relay does not do simulcast yet): with the
relay as the offerer, Chromium publishes simulcast as the answerer when the publish
video m-line of the offer asks for rid layers. The page adds the rid and simulcast
lines to the relay's offer before applying it (meeting.js mungeSimulcast)."""

from __future__ import annotations

import asyncio
import uuid

from playwright.async_api import Browser

from tests.e2e.conftest import open_participant
from tests.integration.relay_harness import GrantMinter, RelayProcess


async def test_chromium_answers_a_simulcast_offer_with_three_rid_streams(
    relay: RelayProcess, minter: GrantMinter, browser: Browser, page_url: str
) -> None:
    room = f"room-{uuid.uuid4().hex[:6]}"
    await minter.create_room(room)
    ann = await open_participant(
        browser, page_url, relay, minter, room, "p_ann", ["video"], simulcast="offer"
    )
    # Chromium lists an encoding in getStats only once it has been configured; the
    # top layer waits for the bandwidth estimate (several seconds: docs/simulcast.md).
    sending: set[str] = set()
    outbound: list[dict[str, object]] = []
    try:
        async with asyncio.timeout(10):
            while len(sending) < 2 or len(outbound) < 3:
                await asyncio.sleep(0.2)
                outbound = [o for o in await ann.outbound() if o["kind"] == "video"]
                sending = {str(o["rid"]) for o in outbound if int(str(o["packetsSent"])) > 0}
    except TimeoutError:
        raise AssertionError(f"simulcast layers sending: {outbound}") from None
    answer: str = (await ann.page.evaluate("window.conclaveSdp.answers"))[-1]
    lines = answer.splitlines()
    assert "a=simulcast:send h;m;l" in lines, answer
    assert {"a=rid:h send", "a=rid:m send", "a=rid:l send"} <= set(lines), answer
    assert any(line.endswith(" urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id") for line in lines)
    # One transceiver (the relay's mid), three encodings, three SSRCs.
    assert {o["mid"] for o in outbound} == {"0"}
    assert sorted(str(o["rid"]) for o in outbound) == ["h", "l", "m"]
    assert len({o["ssrc"] for o in outbound}) == 3
    assert await ann.errors() == []  # the relay (aiortc) accepted the simulcast answer
