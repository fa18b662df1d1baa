"""A real aiortc connection on the native engine's sockets (relay/native_io.py): ICE
and DTLS go up to aioice and aiortc through the engine, and after the handshake the
engine takes the leg's SRTP over in both directions."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack
from aiortc.rtcdtlstransport import RTCDtlsTransport

from conclave.ice import use_endpoint, use_host_addresses
from relay import _native
from relay.native_io import NativeSockets, NativeTransport, run_now, take_over


@pytest.fixture
async def sockets() -> AsyncIterator[NativeSockets]:
    use_host_addresses(["127.0.0.1"])
    native = NativeSockets()
    use_endpoint(native.endpoint)
    try:
        yield native
    finally:
        use_endpoint(None)


async def until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def rtp(sequence: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0x60, sequence, 960 * sequence, ssrc) + b"\xaa" * 40


async def test_a_leg_handshakes_through_the_engine_and_then_the_engine_does_srtp(
    sockets: NativeSockets,
) -> None:
    relay = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    rtp_in: list[bytes] = []
    rtcp_in: list[bytes] = []
    legs: list[_native.Leg | None] = []
    at_client: list[bytes] = []
    try:
        client.addTrack(AudioStreamTrack())
        await client.setLocalDescription(await client.createOffer())
        await relay.setRemoteDescription(client.localDescription)
        dtls: RTCDtlsTransport = relay.getTransceivers()[0].receiver.transport
        setup_srtp = dtls._setup_srtp

        def setup_and_take_over() -> None:  # the moment aiortc has the keys
            setup_srtp()
            legs.append(take_over(dtls, rtp_in.append, rtcp_in.append))

        dtls._setup_srtp = setup_and_take_over  # type: ignore[method-assign]
        await relay.setLocalDescription(await relay.createAnswer())
        await client.setRemoteDescription(relay.localDescription)
        await until(lambda: relay.connectionState == client.connectionState == "connected")

        # Both sides' ICE sockets are the engine's; only the relay's leg was taken over.
        transport = dtls.transport._connection._nominated[1].protocol.transport
        assert isinstance(transport, NativeTransport)
        (leg,) = legs
        assert leg is not None and leg.open
        # The socket is the participant's alone: connected to the selected address.
        assert leg.connected and transport.sock.getpeername() == leg.remote
        assert sockets.engine.upcalls > 0  # ICE and DTLS went up to Python

        # What the client's aiortc sends arrives unprotected by the engine.
        client_ssrc = client.getSenders()[0]._ssrc
        await until(lambda: len(rtp_in) >= 10)
        assert {struct.unpack_from("!I", packet, 8)[0] for packet in rtp_in} == {client_ssrc}
        assert all(packet[1] & 0x7F == rtp_in[0][1] & 0x7F for packet in rtp_in)

        # What the relay sends is protected by the engine and read by the client's aiortc.
        client_dtls = client.getTransceivers()[0].sender.transport

        async def capture(data: bytes, arrival_time_ms: int) -> None:
            at_client.append(data)

        client_dtls._handle_rtp_data = capture  # type: ignore[method-assign]
        sent = [rtp(seq, 0xC0FFEE) for seq in range(5)]
        for packet in sent:
            await dtls._send_rtp(packet)
        await until(lambda: len(at_client) >= len(sent))
        assert at_client[: len(sent)] == sent
        assert leg.sent >= len(sent)
        assert sockets.engine.dropped["srtp"] == 0
    finally:
        await relay.close()
        await client.close()


async def test_run_now_finishes_a_handler_at_once_or_when_what_it_waits_for_is_done() -> None:
    steps: list[str] = []

    async def quick() -> None:
        steps.append("quick")

    run_now(quick())
    assert steps == ["quick"]  # no task, no loop iteration

    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def waits() -> None:
        steps.append("before")
        steps.append(await gate)

    run_now(waits())
    assert steps == ["quick", "before"]
    gate.set_result("after")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert steps == ["quick", "before", "after"]
