"""Every peer connection on one UDP port (conclave/shared_port.py): real aiortc
connections handshake through one shared socket, on the event loop's transport and
on the native engine; each one's media reaches its own leg; a datagram from an
address no connection owns reaches none of them; closing a connection frees its
addresses and leaves the others connected."""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aioice import stun
from aioice.ice import Connection
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack
from aiortc.rtcdtlstransport import RTCDtlsTransport

from conclave import ice
from conclave.consent import ConsentProtocol
from conclave.shared_port import (
    Address,
    SharedPort,
    SharedTransport,
    local_ufrag,
    stun_class,
)
from relay import _native
from relay.native_io import NativeSockets, take_over


def binding_request(username: str | None) -> bytes:
    message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    if username is not None:
        message.attributes["USERNAME"] = username
    message.attributes["PRIORITY"] = 1234
    return bytes(message)


def test_stun_messages_are_told_from_other_datagrams_and_their_username_read() -> None:
    request = binding_request("ours:theirs")
    assert stun_class(request) == 0
    assert local_ufrag(request) == "ours"
    assert local_ufrag(binding_request(None)) is None
    assert local_ufrag(binding_request("nocolon")) is None
    response = bytes(stun.Message(stun.Method.BINDING, stun.Class.RESPONSE))
    assert stun_class(response) == 2
    assert stun_class(bytes(stun.Message(stun.Method.BINDING, stun.Class.ERROR))) == 3
    assert stun_class(bytes(stun.Message(stun.Method.BINDING, stun.Class.INDICATION))) == 1
    for other in (b"", b"\x16\xfe\xfd" + b"\x00" * 30, b"\x80\x60" + b"\x00" * 30, b"\x00" * 19):
        assert stun_class(other) is None
    # A USERNAME that claims more than the message holds is not read.
    truncated = bytearray(request)
    at = truncated.index(b"ours:theirs") - 2
    truncated[at : at + 2] = struct.pack("!H", 400)
    assert local_ufrag(bytes(truncated)) is None
    for garbage in (request[:24], request[:20] + b"\xff" * 7):
        local_ufrag(garbage)  # no exception, whatever it answers


@dataclass
class Ends:
    """Relay-side connections on the shared port, clients on sockets of their own."""

    relays: list[RTCPeerConnection] = field(default_factory=list)
    clients: list[RTCPeerConnection] = field(default_factory=list)
    legs: list[_native.Leg | None] = field(default_factory=list)
    received: list[list[bytes]] = field(default_factory=list)


def own_sockets(pc: RTCPeerConnection) -> None:
    """This client's ICE binds sockets of its own: only the relay side shares one."""
    connection = pc.getTransceivers()[0].sender.transport.transport.iceGatherer._connection
    connection.get_component_candidates = functools.partial(  # type: ignore[method-assign]
        ice._aioice_get_component_candidates, connection
    )


async def until(condition: Callable[[], object], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


@pytest.fixture(params=["loop", "native"])
async def native(request: pytest.FixtureRequest) -> AsyncIterator[NativeSockets | None]:
    ice.use_host_addresses(["127.0.0.1"])
    sockets = NativeSockets() if request.param == "native" else None
    ice.use_endpoint(sockets.endpoint if sockets is not None else None)
    ice.use_shared_port(0)
    try:
        yield sockets
    finally:
        ice.use_shared_port(None)
        ice.use_endpoint(None)


async def connect(ends: Ends, native: NativeSockets | None) -> int:
    """One more client, connected to a relay-side connection; its index."""
    relay = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    ends.relays.append(relay)
    ends.clients.append(client)
    index = len(ends.received)
    ends.received.append([])
    client.addTrack(AudioStreamTrack())
    own_sockets(client)
    await client.setLocalDescription(await client.createOffer())
    await relay.setRemoteDescription(client.localDescription)
    dtls: RTCDtlsTransport = relay.getTransceivers()[0].receiver.transport
    if native is not None:
        setup_srtp = dtls._setup_srtp

        def setup_and_take_over() -> None:
            setup_srtp()
            ends.legs.append(take_over(dtls, ends.received[index].append, lambda _: None))

        dtls._setup_srtp = setup_and_take_over  # type: ignore[method-assign]
    else:

        async def capture(data: bytes, arrival_time_ms: int) -> None:
            if data[1] < 192 or data[1] > 223:  # RTP, not RTCP
                ends.received[index].append(data)

        dtls._handle_rtp_data = capture  # type: ignore[method-assign]
    await relay.setLocalDescription(await relay.createAnswer())
    await client.setRemoteDescription(relay.localDescription)
    await until(lambda: relay.connectionState == client.connectionState == "connected")
    return index


def relay_protocol(relay: RTCPeerConnection) -> SharedTransport:
    transport = relay.getTransceivers()[0].receiver.transport.transport
    protocol = transport._connection._nominated[1].protocol
    assert isinstance(protocol.transport, SharedTransport)
    return protocol.transport


async def test_connections_share_one_port_and_each_gets_its_own_media(
    native: NativeSockets | None,
) -> None:
    ends = Ends()
    try:
        for _ in range(3):
            await connect(ends, native)
        ports = {
            candidate.port
            for relay in ends.relays
            for candidate in relay.getTransceivers()[0].receiver.transport.transport.iceGatherer
            .getLocalCandidates()
        }  # fmt: skip
        assert len(ports) == 1
        (shared,) = ice._settings.shared.values()
        assert isinstance(shared, SharedPort)
        assert len(shared.attached) == 3

        def ssrcs(index: int) -> set[int]:
            return {struct.unpack_from("!I", p, 8)[0] for p in ends.received[index]}

        expected = [client.getSenders()[0]._ssrc for client in ends.clients]
        await until(lambda: all(len(r) >= 5 for r in ends.received))
        assert [ssrcs(i) for i in range(3)] == [{ssrc} for ssrc in expected]
        if native is not None:
            assert all(leg is not None and leg.open for leg in ends.legs)
            assert not any(leg is not None and leg.connected for leg in ends.legs)
            assert native.engine.dropped["srtp"] == 0

        # A datagram from an address that no connection owns reaches none of them.
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            unrouted = shared.unrouted
            port = next(iter(ports))
            stranger.sendto(b"\x16\xfe\xfd" + b"\x00" * 40, ("127.0.0.1", port))
            stranger.sendto(binding_request("nobody:x"), ("127.0.0.1", port))
            await until(lambda: shared.unrouted == unrouted + 2)
        finally:
            stranger.close()

        # Closing one connection frees what it owned; the others keep their media.
        gone = relay_protocol(ends.relays[0])
        owned = set(gone.addresses)
        assert owned
        await ends.relays[0].close()
        await ends.clients[0].close()
        assert len(shared.attached) == 2
        assert not owned & shared.by_address.keys()
        if native is not None:  # its leg went with it; the socket stays for the others
            assert ends.legs[0] is not None and not ends.legs[0].open
            assert all(leg is not None and leg.open for leg in ends.legs[1:])
        counts = [len(r) for r in ends.received]
        await until(lambda: all(len(ends.received[i]) > counts[i] + 5 for i in (1, 2)))
        assert all(relay.connectionState == "connected" for relay in ends.relays[1:])
        assert not shared.closed
    finally:
        for pc in ends.relays + ends.clients:
            await pc.close()


async def test_connections_that_drew_the_same_ufrag_are_told_apart() -> None:
    """Two connections with one ufrag on a port: the second draws again, before
    its ufrag is put into any description, and a check names each alone."""
    port = SharedPort()
    first = Connection(ice_controlling=False, local_username="abcd")
    second = Connection(ice_controlling=False, local_username="abcd")
    one, two = port.attach(first), port.attach(second)
    assert first.local_username == "abcd" and second.local_username != "abcd"
    assert len(second.local_username) == 4
    assert port._receiver(binding_request("abcd:x"), ("127.0.0.1", 1)) is one
    assert port._receiver(binding_request(f"{second.local_username}:x"), ("127.0.0.1", 2)) is two
    one.transport.close()
    assert port.by_ufrag == {second.local_username: two}
    assert ("127.0.0.1", 1) not in port.by_address
    await asyncio.sleep(0)  # connection_lost is called soon, as by asyncio's transports


async def test_a_response_goes_to_the_connection_whose_transaction_it_answers() -> None:
    """Two connections asked one server (a STUN server, say) from the shared port:
    the first to send owns its address, yet the response to the second's request
    reaches the second."""
    port = SharedPort()
    sent: list[tuple[bytes, Address]] = []

    class Socket(asyncio.DatagramTransport):  # stands in for the shared socket
        def sendto(self, data: Any, addr: Any = None) -> None:
            sent.append((bytes(data), addr))

    port.connection_made(Socket())
    first, second = (port.attach(Connection(ice_controlling=True)) for _ in range(2))
    server = ("127.0.0.1", 3478)
    first.transport.sendto(binding_request(None), server)  # claims the address
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    second.transactions[request.transaction_id] = None  # type: ignore[assignment]
    second.transport.sendto(bytes(request), server)
    assert port.by_address[server] is first and len(sent) == 2
    response = stun.Message(
        stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=request.transaction_id
    )
    assert port._receiver(bytes(response), server) is second
    other = bytes(stun.Message(stun.Method.BINDING, stun.Class.RESPONSE))
    assert port._receiver(other, server) is first  # no one's transaction: the owner's
    # The answers to consent checks (conclave/consent.py, no aioice transaction).
    for protocol in (second, first):
        assert isinstance(protocol, ConsentProtocol)
        protocol.consent_sent = os.urandom(12)
        answer = stun.Message(
            stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=protocol.consent_sent
        )
        assert port._receiver(bytes(answer), server) is protocol
