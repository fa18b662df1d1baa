"""A relay on each media path (`--forwarder`, docs/native.md). On the native one
(the default) its participants' ICE, DTLS and SRTP run on the C engine's sockets
and the engine's counters show it carried every leg; on the Python reference
path the same meeting works without the engine."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from client.sdk import Session
from tests.integration.relay_harness import (
    GrantMinter,
    RelayProcess,
    scrape_metric,
    video_frames,
    wait_for_frames,
)


@pytest.fixture(params=["native", "python"])
async def relay_on_path(
    etcd_endpoint: str, request: pytest.FixtureRequest
) -> AsyncIterator[RelayProcess]:
    process = RelayProcess(
        f"relay-{uuid.uuid4().hex[:8]}", etcd_endpoint, extra_args=["--forwarder", request.param]
    )
    await process.start()
    yield process
    await process.stop()


@pytest.mark.timeout(90)
async def test_a_meeting_on_either_media_path_exchanges_media(
    relay_on_path: RelayProcess, minter: GrantMinter
) -> None:
    room = await minter.new_room()
    joins = {name: minter.join_response(relay_on_path, room, f"p_{name}", name) for name in "ab"}
    sessions = [Session(join, name, ["audio", "video"]) for name, join in joins.items()]
    try:
        for session in sessions:
            await session.start()
        for session in sessions:
            other = next(s for s in sessions if s is not session).display_name
            await wait_for_frames(session, other, 20)
            assert session.stats()[other]["audio_packets"] > 0
            assert video_frames(session, other) >= 20
    finally:
        await asyncio.gather(*(s.leave() for s in sessions), return_exceptions=True)
    port = relay_on_path.http_port
    if "native" not in relay_on_path.extra_args:
        assert scrape_metric(port, "conclave_native_datagrams_total") == 0  # no engine
        return
    received = scrape_metric(port, 'conclave_native_datagrams_total{direction="received"}')
    sent = scrape_metric(port, 'conclave_native_datagrams_total{direction="sent"}')
    forwarded = scrape_metric(port, "conclave_packets_forwarded_total")
    upcalls = scrape_metric(port, "conclave_native_upcalls_total")
    segmented = scrape_metric(port, "conclave_native_datagrams_segmented_total")
    print(f"native: {received:.0f} datagrams in, {sent:.0f} out, {forwarded:.0f} RTP "
          f"forwarded, {upcalls:.0f} up to Python, {segmented:.0f} sent in GSO runs")  # fmt: skip
    assert received > 200 and sent > 200
    assert sent >= forwarded  # every forwarded packet left through the engine
    assert scrape_metric(port, 'conclave_native_dropped_total{reason="srtp"}') == 0
    # Past each stream's first packets, media stays in C: ICE consent, RTCP and
    # those first packets are what goes up.
    assert upcalls < received / 4
    # A frame of several packets (a key frame at least) read in one batch left for
    # each subscriber as one UDP GSO send, and decoded (the frames counted above).
    assert segmented > 0
