"""The benchmark's native counting subscriber (bench/native_counter.py): a load
participant whose SRTP and counting the engine takes over after the handshake
counts what a relay sends it as client/loadtest's Python counter would, with only
each stream's first packet going up to Python."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from client.loadtest.participants import ConclaveParticipant, CountingPeer
from client.loadtest.receive import Counter
from conclave.ice import use_endpoint
from tests.integration.relay_harness import GrantMinter, RelayProcess

# bench/ scripts import each other as top-level modules (bench/ is their sys.path[0]).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from native_counter import NativeCounter, use_native_counting


@pytest.fixture
def native_counting() -> Iterator[None]:
    use_native_counting()
    yield
    use_endpoint(None)
    CountingPeer.counter_type = Counter


@pytest.mark.timeout(60)
async def test_the_engine_counts_a_subscriber_s_packets_without_python(
    relay: RelayProcess, minter: GrantMinter, native_counting: None
) -> None:
    room = await minter.new_room()
    async with aiohttp.ClientSession() as http:
        participants = []
        for name, publish in (("pub", ["audio"]), ("sub", [])):
            entry = {
                "signal_url": relay.signal_url,
                "grant": minter.token(room, f"p_{name}", relay.node_id, name=name),
                "publish": publish,
            }
            participants.append(ConclaveParticipant(http, entry))
        subscriber = participants[1]
        counter = subscriber.counter
        assert isinstance(counter, NativeCounter)
        try:
            for participant in participants:
                await participant.start(15)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                rows = list(counter.rows().values())
                if rows and rows[0][1] >= 100:
                    break
                await asyncio.sleep(0.2)
        finally:
            await asyncio.gather(*(p.leave() for p in participants), return_exceptions=True)
    (row,) = counter.rows().values()
    kind, received, expected, jitter_ms = row
    assert kind == "audio" and received >= 100 and expected - received <= 2
    assert 0 <= jitter_ms < 50
    # Python saw the stream's first packet only; the engine counted the rest.
    (stream,) = counter.streams.values()
    assert stream.received <= 2 < received
