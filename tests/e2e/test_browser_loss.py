"""Chromium video survives ingress loss: the relay drops 5 % of the browser
publisher's video datagrams before SRTP, NACKs the publisher, and the subscribing
browser's own NACKs are answered with RTX from the relay's cache."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser

from tests.e2e.conftest import open_participant
from tests.integration.relay_harness import GrantMinter, RelayProcess


@pytest.fixture
async def lossy_relay(etcd_endpoint: str) -> AsyncIterator[RelayProcess]:
    process = RelayProcess(
        f"relay-{uuid.uuid4().hex[:8]}", etcd_endpoint, extra_args=["--test-drop-video", "5"]
    )
    await process.start()
    yield process
    await process.stop()


async def test_browser_video_keeps_decoding_with_five_percent_ingress_loss(
    lossy_relay: RelayProcess, minter: GrantMinter, browser: Browser, page_url: str
) -> None:
    relay = lossy_relay
    room = await minter.new_room()
    ann = await open_participant(browser, page_url, relay, minter, room, "p_ann", ["video"])
    ben = await open_participant(browser, page_url, relay, minter, room, "p_ben", [])

    async def figures() -> dict[str, int]:
        return (await ben.stats()).get("p_ann", {})

    try:
        async with asyncio.timeout(15):
            while (await figures()).get("framesDecoded", 0) == 0:
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"no frame decoded\n{await ben.diagnostics()}") from None
    loop = asyncio.get_running_loop()
    first = last_count = (await figures())["framesDecoded"]
    last_change = loop.time()
    longest_freeze = 0.0
    deadline = loop.time() + 6
    while loop.time() < deadline:
        await asyncio.sleep(0.1)
        count = (await figures())["framesDecoded"]
        if count > last_count:
            longest_freeze = max(longest_freeze, loop.time() - last_change)
            last_count, last_change = count, loop.time()
    longest_freeze = max(longest_freeze, loop.time() - last_change)
    final = await figures()
    assert last_count - first >= 60, f"video stopped decoding under loss: {final}"
    assert longest_freeze < 1.0, f"video froze for {longest_freeze:.2f} s: {final}"
    assert final["nackCount"] > 0, f"the subscriber never NACKed: {final}"
    assert relay.metric("conclave_packets_dropped_total") > 0  # the injector did drop
    assert relay.metric("conclave_nacks_sent_total") > 0  # relay asked the publisher
    assert relay.metric("conclave_retransmissions_total") > 0  # and served the subscriber
    assert await ann.errors() == []
    assert await ben.errors() == []
    assert relay.metric("conclave_relay_decoders_created_total") == 0
