"""A relay on the native media path (`--forwarder native`, docs/native.md): its
participants' ICE, DTLS and SRTP run on the C engine's sockets, media flows both
ways and decodes, and the engine's counters show it carried every leg."""

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


@pytest.fixture
async def native_relay(etcd_endpoint: str) -> AsyncIterator[RelayProcess]:
    process = RelayProcess(
        f"relay-{uuid.uuid4().hex[:8]}", etcd_endpoint, extra_args=["--forwarder", "native"]
    )
    await process.start()
    yield process
    await process.stop()


@pytest.mark.timeout(90)
async def test_a_meeting_on_the_native_path_exchanges_media(
    native_relay: RelayProcess, minter: GrantMinter
) -> None:
    room = await minter.new_room()
    joins = {name: minter.join_response(native_relay, room, f"p_{name}", name) for name in "ab"}
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
    port = native_relay.http_port
    received = scrape_metric(port, 'conclave_native_datagrams_total{direction="received"}')
    sent = scrape_metric(port, 'conclave_native_datagrams_total{direction="sent"}')
    forwarded = scrape_metric(port, "conclave_packets_forwarded_total")
    assert received > 200 and sent > 200
    assert sent >= forwarded  # every forwarded packet left through the engine
    assert scrape_metric(port, 'conclave_native_dropped_total{reason="srtp"}') == 0
