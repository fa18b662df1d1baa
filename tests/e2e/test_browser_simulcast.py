"""Simulcast step A (docs/simulcast.md): the relay's offer asks Chromium for three rid
layers on its publish video m-line, Chromium answers with them and sends three SSRCs,
and the relay forwards exactly one layer to a Python subscriber without decoding."""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser

from client.sdk import Session
from tests.e2e.conftest import open_participant
from tests.integration.relay_harness import GrantMinter, RelayProcess, video_frames

DEBUG = ("conclave_packets_forwarded_total", "conclave_keyframe_requests_total")


def layer_drops(relay: RelayProcess) -> float:
    """Packets of the layers the relay did not forward."""
    url = f"http://127.0.0.1:{relay.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    sample = 'conclave_packets_dropped_total{reason="simulcast_layer"} '
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(sample)
    )


@pytest.fixture
async def relay(etcd_endpoint: str) -> AsyncIterator[RelayProcess]:
    """A relay that offers simulcast (experimental, off by default)."""
    process = RelayProcess(
        f"relay-{uuid.uuid4().hex[:8]}", etcd_endpoint, extra_args=["--simulcast"]
    )
    await process.start()
    yield process
    await process.stop()


async def test_chromium_publishes_three_layers_and_python_decodes_one(
    relay: RelayProcess, minter: GrantMinter, browser: Browser, page_url: str
) -> None:
    room = f"room-{uuid.uuid4().hex[:6]}"
    await minter.create_room(room)
    ann = await open_participant(
        browser, page_url, relay, minter, room, "p_ann", ["video"], camera="1280x720"
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
        raise AssertionError(
            f"simulcast layers sending: {outbound}\n{await ann.diagnostics()}"
        ) from None
    offer: str = (await ann.page.evaluate("window.conclaveSdp.offers"))[-1]
    assert "a=simulcast:recv h;m;l" in offer.splitlines(), offer  # the relay asked
    answer: str = (await ann.page.evaluate("window.conclaveSdp.answers"))[-1]
    lines = answer.splitlines()
    assert "a=simulcast:send h;m;l" in lines, answer
    assert {"a=rid:h send", "a=rid:m send", "a=rid:l send"} <= set(lines), answer
    # One transceiver (the relay's mid), three encodings, three SSRCs.
    assert {o["mid"] for o in outbound} == {"0"}
    assert sorted(str(o["rid"]) for o in outbound) == ["h", "l", "m"]
    assert len({o["ssrc"] for o in outbound}) == 3
    # The page scaled the layers as the offer said: l is a quarter of h's size.
    sizes = {str(o["rid"]): o.get("frameWidth") for o in outbound}
    assert sizes.get("l") == 320, outbound

    cyd = Session(minter.join_response(relay, room, "p_cyd", "cyd"), "cyd", [])
    async with cyd:
        try:
            async with asyncio.timeout(20):
                while video_frames(cyd, "p_ann") < 30:
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(
                f"python decoded {video_frames(cyd, 'p_ann')} frames, {cyd.stats()}, "
                f"{ {m: relay.metric(m) for m in DEBUG} }\n{await ann.outbound()}"
            ) from None
    assert layer_drops(relay) > 0  # two of the three layers were not forwarded
    assert await ann.errors() == []  # the relay (aiortc) accepted the simulcast answer
    assert relay.metric("conclave_relay_decoders_created_total") == 0
