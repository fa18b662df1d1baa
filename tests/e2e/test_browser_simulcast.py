"""Simulcast (docs/simulcast.md): Chromium publishes three rid layers to a relay that
offers them (the default), and each subscriber receives the one layer that suits
the video size it asks for, switching only at key frames; layers nobody receives
are paused at the publisher (dynacast)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import aiortc.rtcrtpreceiver
import aiortc.rtp
import pytest
from playwright.async_api import Browser

from client.sdk import Session
from tests.e2e.conftest import BrowserParticipant, open_participant
from tests.integration.relay_harness import GrantMinter, RelayProcess, video_frames

DEBUG = (
    "conclave_packets_forwarded_total",
    "conclave_keyframe_requests_total",
    "conclave_layer_switches_total",
    "conclave_dynacast_changes_total",
)


class DecodeFailures(logging.Handler):
    """aiortc logs a warning for every frame its decoder refuses: a layer switch
    anywhere but at a key frame would produce them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "failed to decode" in record.getMessage():
            self.messages.append(record.getMessage())


@pytest.fixture
def decode_failures() -> Iterator[DecodeFailures]:
    handler = DecodeFailures()
    logger = logging.getLogger("aiortc.rtcrtpreceiver")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def three_layers_sending(ann: BrowserParticipant) -> list[dict[str, object]]:
    """Chromium lists an encoding in getStats once it is configured; the top layer
    waits for the bandwidth estimate (several seconds: docs/simulcast.md)."""
    outbound: list[dict[str, object]] = []
    try:
        async with asyncio.timeout(15):
            while True:
                outbound = [o for o in await ann.outbound() if o["kind"] == "video"]
                sending = {str(o["rid"]) for o in outbound if int(str(o["packetsSent"])) > 0}
                if len(sending) >= 2 and len(outbound) == 3:
                    return outbound
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"layers sending: {outbound}\n{await ann.diagnostics()}") from None


async def video_track_of(session: Session, publisher: str) -> str:
    """The track id `publisher` publishes, once `session` has heard of it."""
    async with asyncio.timeout(10):
        while not session.published_tracks.get(publisher):
            await asyncio.sleep(0.05)
    (track_id,) = session.published_tracks[publisher]
    return track_id


async def wait_for_size(
    session: Session, publisher: str, accept: set[tuple[int, int]], timeout: float, what: str
) -> tuple[int, int]:
    """Until `session` decodes frames of a size in `accept` from `publisher`."""
    try:
        async with asyncio.timeout(timeout):
            while (size := session.received_video_size(publisher)) not in accept:
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(
            f"{what}: still {session.received_video_size(publisher)} after {timeout} s"
        ) from None
    assert size is not None
    return size


async def test_a_small_window_gets_the_lowest_layer_and_a_larger_one_moves_up(
    relay: RelayProcess,
    minter: GrantMinter,
    browser: Browser,
    page_url: str,
    decode_failures: DecodeFailures,
) -> None:
    room = await minter.new_room()
    ann = await open_participant(
        browser, page_url, relay, minter, room, "p_ann", ["video"], camera="1280x720"
    )
    outbound = await three_layers_sending(ann)
    offer: str = (await ann.page.evaluate("window.conclaveSdp.offers"))[-1]
    assert "a=simulcast:recv h;m;l" in offer.splitlines(), offer  # the relay asked
    answer: str = (await ann.page.evaluate("window.conclaveSdp.answers"))[-1]
    lines = answer.splitlines()
    assert "a=simulcast:send h;m;l" in lines, answer
    assert {"a=rid:h send", "a=rid:m send", "a=rid:l send"} <= set(lines), answer
    # One transceiver (the relay's mid), three encodings, three SSRCs, scaled as
    # the offer said (l is a quarter of h's size).
    assert {o["mid"] for o in outbound} == {"0"}
    assert sorted(str(o["rid"]) for o in outbound) == ["h", "l", "m"]
    assert len({o["ssrc"] for o in outbound}) == 3
    assert {str(o["rid"]): o.get("frameWidth") for o in outbound}.get("l") == 320, outbound

    cyd = Session(minter.join_response(relay, room, "p_cyd", "cyd"), "cyd", [])
    async with cyd:
        track_id = await video_track_of(cyd, "p_ann")
        await cyd.set_video_size(track_id, 320, 180)  # a thumbnail
        try:
            await wait_for_size(cyd, "p_ann", {(320, 180)}, 20, "thumbnail")
            small_from = video_frames(cyd, "p_ann")
            await asyncio.sleep(3)  # stays there, and the unused layers get paused
            assert cyd.received_video_size("p_ann") == (320, 180)
            assert video_frames(cyd, "p_ann") > small_from + 30
            paused: list[list[str]] = await ann.page.evaluate("window.conclaveLayers")
            assert paused and "h" not in paused[-1] and "l" in paused[-1], paused

            await cyd.set_video_size(track_id, 1280, 720)  # full screen
            await wait_for_size(cyd, "p_ann", {(640, 360), (1280, 720)}, 5, "after lifting")
            larger_from = video_frames(cyd, "p_ann")
            await asyncio.sleep(2)
            assert video_frames(cyd, "p_ann") > larger_from + 20  # still decoding
        except AssertionError as exc:
            metrics = {m: relay.metric(m) for m in DEBUG}
            raise AssertionError(
                f"{exc}\n{cyd.stats()} {metrics}\n{await ann.outbound()}\n"
                f"{await ann.page.evaluate('window.conclaveLayers')}"
            ) from None
    assert relay.metric("conclave_layer_switches_total") >= 1
    assert decode_failures.messages == []  # every switch landed on a key frame
    resumed: list[list[str]] = await ann.page.evaluate("window.conclaveLayers")
    assert "m" in resumed[-1] or "h" in resumed[-1], resumed  # dynacast resumed them
    assert await ann.errors() == []
    assert relay.metric("conclave_relay_decoders_created_total") == 0


async def test_a_360p_camera_sends_two_layers_and_subscribers_decode(
    relay: RelayProcess, minter: GrantMinter, browser: Browser, page_url: str
) -> None:
    """A 640x360 camera, from which Chromium makes no quarter-size layer: the
    relay must not wait for the layer that never comes."""
    room = await minter.new_room()
    await open_participant(browser, page_url, relay, minter, room, "p_ann", ["video"])
    cyd = Session(minter.join_response(relay, room, "p_cyd", "cyd"), "cyd", [])
    async with cyd:
        track_id = await video_track_of(cyd, "p_ann")
        await cyd.set_video_size(track_id, 160, 90)
        # The smallest layer that is sent (no 160x90 comes); until the request has
        # reached the relay, the first frames may come from a larger layer.
        await wait_for_size(cyd, "p_ann", {(320, 180)}, 20, "360p camera")


async def test_a_subscriber_short_of_bandwidth_gets_the_lowest_layer_until_that_lifts(
    relay: RelayProcess,
    minter: GrantMinter,
    browser: Browser,
    page_url: str,
    decode_failures: DecodeFailures,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The subscriber's own REMB says 100 kbit/s (its aiortc estimate, capped on
    the way out); then the cap goes and its estimate rises again."""
    cap = [100_000]
    rembs: list[int] = []
    pack = aiortc.rtp.pack_remb_fci  # what aiortc's receiver packs its REMBs with

    def capped(bitrate: int, ssrcs: list[int]) -> bytes:
        rembs.append(bitrate)
        return pack(min(bitrate, cap[0]), ssrcs)

    monkeypatch.setattr(aiortc.rtcrtpreceiver, "pack_remb_fci", capped)
    room = await minter.new_room()
    ann = await open_participant(
        browser, page_url, relay, minter, room, "p_ann", ["video"], camera="1280x720"
    )
    await three_layers_sending(ann)
    cyd = Session(minter.join_response(relay, room, "p_cyd", "cyd"), "cyd", [])
    async with cyd:
        try:
            # Without an estimate the relay goes by size (none asked: the largest);
            # aiortc's first REMBs come after some seconds.
            async with asyncio.timeout(20):
                while len(rembs) < 3:
                    await asyncio.sleep(0.1)
            await wait_for_size(cyd, "p_ann", {(320, 180)}, 10, "at 100 kbit/s")
            for _ in range(30):  # and it stays there, while REMBs keep coming
                await asyncio.sleep(0.1)
                assert cyd.received_video_size("p_ann") == (320, 180)
            assert len(rembs) >= 4, rembs
            cap[0] = 1 << 40
            await wait_for_size(cyd, "p_ann", {(640, 360), (1280, 720)}, 5, "after lifting")
        except AssertionError as exc:
            metrics = {m: relay.metric(m) for m in DEBUG}
            raise AssertionError(f"{exc}\n{cyd.stats()} {metrics}") from None
    assert decode_failures.messages == []
    assert relay.metric("conclave_relay_decoders_created_total") == 0
