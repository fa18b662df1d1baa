"""relay._native on real loopback sockets (docs/native.md, step 3): what is
not media goes up to the protocol as an asyncio transport would deliver it, a keyed
leg's SRTP is unprotected and its packets go up plain, what a leg sends arrives
protected, many datagrams are taken in one readiness call, a connected socket sends
runs of one size as one UDP GSO message (and one by one where the kernel refuses),
and garbage, forged or replayed SRTP is counted and dropped without harm."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pylibsrtp
import pytest

from relay import _native
from relay.native_keys import aiortc_session

PROFILE = _native.SRTP_AEAD_AES_128_GCM
KEY_LENGTH = _native.key_and_salt_length(PROFILE)


@dataclass
class Recorder:
    """Stands in for aioice's StunProtocol and for a leg's handlers."""

    datagrams: list[tuple[bytes, tuple[str, int]]] = field(default_factory=list)
    rtp: list[bytes] = field(default_factory=list)
    rtcp: list[bytes] = field(default_factory=list)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams.append((data, addr))


@dataclass
class Pair:
    engine: _native.Engine
    ours: socket.socket  # registered with the engine
    peer: socket.socket  # a plain socket playing the participant
    recorder: Recorder

    @property
    def ours_address(self) -> tuple[str, int]:
        address: tuple[str, int] = self.ours.getsockname()
        return address

    @property
    def peer_address(self) -> tuple[str, int]:
        address: tuple[str, int] = self.peer.getsockname()
        return address


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    engine = _native.Engine()
    ours, peer = udp_socket(), udp_socket()
    recorder = Recorder()
    engine.add_socket(ours.fileno(), recorder)
    loop = asyncio.get_running_loop()
    loop.add_reader(engine.fileno, engine.poll)  # as relay/native_io.py does
    try:
        yield Pair(engine, ours, peer, recorder)
    finally:
        loop.remove_reader(engine.fileno)
        engine.remove_socket(ours.fileno())
        ours.close()
        peer.close()


async def until(condition: object, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.005)


def rtp(sequence: int, ssrc: int = 0x1234, payload: bytes = b"\x90" * 100) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, sequence, sequence * 960, ssrc) + payload


def rtcp_rr(ssrc: int = 0x4321) -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


def srtp_pair() -> tuple[bytes, bytes, pylibsrtp.Session, pylibsrtp.Session]:
    """Our keys (tx, rx) and the participant's sessions: its sender uses our rx key."""
    ours_tx, ours_rx = os.urandom(KEY_LENGTH), os.urandom(KEY_LENGTH)

    their_tx = aiortc_session(PROFILE, ours_rx, outbound=True)
    their_rx = aiortc_session(PROFILE, ours_tx, outbound=False)
    return ours_tx, ours_rx, their_tx, their_rx


def open_leg(pair: Pair, tx: bytes, rx: bytes) -> _native.Leg:
    return pair.engine.open_leg(
        pair.ours.fileno(), pair.peer_address, PROFILE, tx, rx,
        pair.recorder.rtp.append, pair.recorder.rtcp.append,
    )  # fmt: skip


async def test_datagrams_go_up_to_the_protocol_with_their_address(pair: Pair) -> None:
    stun = b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + os.urandom(12)
    pair.peer.sendto(stun, pair.ours_address)
    pair.peer.sendto(b"\x16\xfe\xfd" + b"dtls", pair.ours_address)
    await until(lambda: len(pair.recorder.datagrams) == 2)
    assert pair.recorder.datagrams == [
        (stun, pair.peer_address),
        (b"\x16\xfe\xfddtls", pair.peer_address),
    ]
    # ...and the engine sends as a transport would: as it is, to the address given.
    assert pair.engine.sendto(pair.ours.fileno(), b"answer", pair.peer_address)
    await until(lambda: _readable(pair.peer))
    assert pair.peer.recvfrom(2048) == (b"answer", pair.ours_address)


async def test_a_keyed_leg_unprotects_what_comes_and_protects_what_goes(pair: Pair) -> None:
    tx, rx, their_tx, their_rx = srtp_pair()
    leg = open_leg(pair, tx, rx)
    packets = [rtp(seq) for seq in range(65530, 65536)] + [rtp(seq) for seq in range(5)]
    for packet in packets:
        pair.peer.sendto(their_tx.protect(packet), pair.ours_address)
    pair.peer.sendto(their_tx.protect_rtcp(rtcp_rr()), pair.ours_address)
    await until(lambda: len(pair.recorder.rtp) == len(packets) and pair.recorder.rtcp)
    assert pair.recorder.rtp == packets  # in order, across the sequence wrap
    assert pair.recorder.rtcp == [rtcp_rr()]
    assert pair.recorder.datagrams == []
    assert (leg.rtp_received, leg.rtcp_received) == (len(packets), 1)

    # The way back: protected here, plain again with the participant's keys.
    assert leg.send(rtp(7, ssrc=0xABCD))
    assert leg.send(rtcp_rr(0xABCD))
    await until(lambda: _readable(pair.peer))
    received: list[bytes] = []
    async with asyncio.timeout(2):
        while len(received) < 2:
            if _readable(pair.peer):
                received.append(pair.peer.recvfrom(2048)[0])
            else:
                await asyncio.sleep(0.005)
    assert their_rx.unprotect(received[0]) == rtp(7, ssrc=0xABCD)
    assert their_rx.unprotect_rtcp(received[1]) == rtcp_rr(0xABCD)
    assert leg.sent == 2


async def test_stun_on_a_keyed_leg_still_goes_up_and_strangers_media_too(pair: Pair) -> None:
    """Consent checks keep coming after DTLS; media from an address that is not the
    selected pair's is not the leg's (aioice decides what it is)."""
    tx, rx, their_tx, _ = srtp_pair()
    open_leg(pair, tx, rx)
    stranger = udp_socket()
    try:
        stun = b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + os.urandom(12)
        pair.peer.sendto(stun, pair.ours_address)
        forged = their_tx.protect(rtp(1))
        stranger.sendto(forged, pair.ours_address)
        await until(lambda: len(pair.recorder.datagrams) == 2)
        senders = {address for _, address in pair.recorder.datagrams}
        assert senders == {pair.peer_address, stranger.getsockname()}
        assert pair.recorder.rtp == []
    finally:
        stranger.close()


async def test_forged_replayed_and_garbage_srtp_is_dropped_and_counted(pair: Pair) -> None:
    tx, rx, their_tx, _ = srtp_pair()
    open_leg(pair, tx, rx)
    good = their_tx.protect(rtp(100))
    tampered = bytearray(their_tx.protect(rtp(101)))
    tampered[20] ^= 0x01
    garbage = [bytes([0x80 + i % 64]) + os.urandom(i) for i in range(0, 1400, 37)]
    for datagram in [good, good, bytes(tampered), *garbage]:
        pair.peer.sendto(datagram, pair.ours_address)
    after = their_tx.protect(rtp(102))
    pair.peer.sendto(after, pair.ours_address)
    await until(lambda: len(pair.recorder.rtp) == 2)
    assert pair.recorder.rtp == [rtp(100), rtp(102)]
    # the replay, the tampered packet and every garbage datagram (a 1-byte one
    # included: too short for SRTP)
    assert pair.engine.dropped["srtp"] == 2 + len(garbage)


async def test_a_burst_is_read_in_batches_within_one_readiness_call(pair: Pair) -> None:
    tx, rx, their_tx, _ = srtp_pair()
    open_leg(pair, tx, rx)
    count = 3 * _native.BATCH + 5
    pair.peer.setblocking(True)
    for seq in range(count):
        pair.peer.sendto(their_tx.protect(rtp(seq)), pair.ours_address)
    # Read it all without the event loop: one call drains the socket in batches.
    pair.engine.readable(pair.ours.fileno())
    assert len(pair.recorder.rtp) == count
    assert pair.engine.datagrams_received == count


async def test_a_handler_that_raises_or_removes_the_socket_harms_nothing(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    reported: list[object] = []  # an exception in a handler is reported, then forgotten
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    tx, rx, their_tx, _ = srtp_pair()
    calls: list[bytes] = []

    def failing(packet: bytes) -> None:
        calls.append(packet)
        raise RuntimeError("a bug in a handler")

    pair.engine.open_leg(pair.ours.fileno(), pair.peer_address, PROFILE, tx, rx, failing,
                         pair.recorder.rtcp.append)  # fmt: skip
    pair.peer.setblocking(True)
    for seq in range(3):
        pair.peer.sendto(their_tx.protect(rtp(seq)), pair.ours_address)
    pair.engine.readable(pair.ours.fileno())
    assert len(calls) == 3 and len(reported) == 3  # each failed alone; the batch went on

    fd = pair.ours.fileno()

    def remove_me(packet: bytes) -> None:
        calls.append(packet)
        pair.engine.remove_socket(fd)

    other = Pair(pair.engine, udp_socket(), pair.peer, Recorder())
    try:
        pair.engine.add_socket(other.ours.fileno(), other.recorder)
        pair.engine.open_leg(other.ours.fileno(), pair.peer_address, PROFILE, tx, rx,
                             lambda packet: pair.engine.remove_socket(other.ours.fileno()),
                             other.recorder.rtcp.append)  # fmt: skip
        for seq in range(3, 6):
            pair.peer.sendto(their_tx.protect(rtp(seq)), other.ours_address)
        pair.engine.readable(other.ours.fileno())  # removed by its first packet
        pair.engine.readable(other.ours.fileno())  # no longer registered: nothing
        assert other.recorder.datagrams == []
    finally:
        other.ours.close()


async def test_bad_arguments_are_refused_clearly(pair: Pair) -> None:
    engine = pair.engine
    with pytest.raises(ValueError, match="registered already"):
        engine.add_socket(pair.ours.fileno(), pair.recorder)
    with pytest.raises(ValueError, match="not registered"):
        engine.sendto(9999, b"x", pair.peer_address)
    with pytest.raises(ValueError, match="numeric IP"):
        engine.sendto(pair.ours.fileno(), b"x", ("localhost", 1))
    with pytest.raises(ValueError, match="cannot open SRTP"):
        engine.open_leg(pair.ours.fileno(), pair.peer_address, PROFILE, b"short", b"short",
                        print, print)  # fmt: skip
    tx, rx, _, _ = srtp_pair()
    leg = open_leg(pair, tx, rx)
    assert not leg.send(b"\x80" * 1501)
    assert engine.dropped["too_large"] == 1
    leg.close()
    assert not leg.send(rtp(1))
    assert not leg.open


def _readable(sock: socket.socket) -> bool:
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    return True


async def test_one_socket_carries_many_legs_told_apart_by_address(pair: Pair) -> None:
    """A shared port (conclave/shared_port.py): every participant's leg on one socket.
    Each peer's SRTP reaches its own leg, what a leg sends goes to its own peer, and
    closing legs (in an order that exercises the table's removal) frees exactly their
    addresses, while the others keep working."""
    engine = pair.engine
    peers = [udp_socket() for _ in range(40)]
    got: list[list[bytes]] = [[] for _ in peers]
    legs, their_tx, their_rx = [], [], []
    try:
        for index, peer in enumerate(peers):
            tx, rx, sender, receiver = srtp_pair()
            legs.append(engine.open_leg(
                pair.ours.fileno(), peer.getsockname(), PROFILE, tx, rx,
                got[index].append, print,
            ))  # fmt: skip
            their_tx.append(sender)
            their_rx.append(receiver)
        for index, peer in enumerate(peers):
            peer.sendto(their_tx[index].protect(rtp(1, ssrc=index + 1)), pair.ours_address)
        await until(lambda: all(len(g) == 1 for g in got))
        assert [g[0] for g in got] == [rtp(1, ssrc=i + 1) for i in range(len(peers))]

        for index in range(0, len(peers), 3):
            legs[index].close()
        kept = [i for i in range(len(peers)) if i % 3]
        for index in kept:
            assert legs[index].send(rtp(7, ssrc=100 + index))
        for index in kept:
            await until(lambda: _readable(peers[index]))  # noqa: B023
            data = peers[index].recv(2048)
            assert their_rx[index].unprotect(data) == rtp(7, ssrc=100 + index)
        # A closed leg's address is free: its SRTP goes up to the protocol as it is,
        # and a new leg may take the address.
        closed = peers[0]
        protected = their_tx[0].protect(rtp(2, ssrc=1))
        closed.sendto(protected, pair.ours_address)
        await until(lambda: len(pair.recorder.datagrams) == 1)
        assert pair.recorder.datagrams == [(protected, closed.getsockname())]
        tx, rx, sender, _ = srtp_pair()
        again: list[bytes] = []
        engine.open_leg(pair.ours.fileno(), closed.getsockname(), PROFILE, tx, rx,
                        again.append, print)  # fmt: skip
        closed.sendto(sender.protect(rtp(3, ssrc=1)), pair.ours_address)
        await until(lambda: len(again) == 1)
        for index in kept:  # the others still reach their legs
            peers[index].sendto(their_tx[index].protect(rtp(2, ssrc=index + 1)),
                                pair.ours_address)  # fmt: skip
        await until(lambda: all(len(got[i]) == 2 for i in kept))
        assert engine.dropped["srtp"] == 0
    finally:
        for peer in peers:
            peer.close()


async def test_a_new_leg_on_an_address_closes_the_one_before(pair: Pair) -> None:
    """The newest handshake from an address wins: on a shared port, a participant
    that went without its leg being closed must not keep a new one from that
    address (the kernel reuses ports) from being keyed."""
    engine = pair.engine
    old_tx, old_rx, old_sender, _ = srtp_pair()
    old = open_leg(pair, old_tx, old_rx)
    tx, rx, sender, _ = srtp_pair()
    new = open_leg(pair, tx, rx)
    assert not old.open and new.open
    assert engine.legs_replaced == 1
    pair.peer.sendto(sender.protect(rtp(1)), pair.ours_address)
    await until(lambda: len(pair.recorder.rtp) == 1)
    assert pair.recorder.rtp == [rtp(1)]
    pair.peer.sendto(old_sender.protect(rtp(2)), pair.ours_address)  # the old keys: refused
    await until(lambda: engine.dropped["srtp"] == 1)
    assert pair.recorder.rtp == [rtp(1)]


async def test_a_leg_on_a_socket_of_its_own_connects_it(pair: Pair) -> None:
    """open_leg(connect=True): the socket is connected to the participant (the
    kernel routes once, not per datagram), so its media still flows both ways,
    aioice's sends that name an address still leave, and a stranger's datagrams
    are no longer delivered. The socket keeps its port and stays connected (undoing
    it would unbind a port-0 socket), so a leg from elsewhere is refused on it while
    the first is open and takes it over after."""
    tx, rx, their_tx, their_rx = srtp_pair()
    port = pair.ours_address
    leg = pair.engine.open_leg(
        pair.ours.fileno(), pair.peer_address, PROFILE, tx, rx,
        pair.recorder.rtp.append, pair.recorder.rtcp.append, connect=True,
    )  # fmt: skip
    assert leg.connected
    assert pair.ours.getpeername() == pair.peer_address
    assert leg.send(rtp(7, ssrc=0xABCD))
    assert pair.engine.sendto(pair.ours.fileno(), b"consent", pair.peer_address)
    await until(lambda: _readable(pair.peer))
    assert their_rx.unprotect(pair.peer.recv(2048)) == rtp(7, ssrc=0xABCD)
    await until(lambda: _readable(pair.peer))
    assert pair.peer.recv(2048) == b"consent"

    stranger = udp_socket()
    try:
        assert pair.engine.sendto(pair.ours.fileno(), b"to elsewhere", stranger.getsockname())
        await until(lambda: _readable(stranger))
        assert stranger.recvfrom(2048) == (b"to elsewhere", port)
        stranger.sendto(b"\x00\x01\x00\x00stranger", port)
        pair.peer.sendto(their_tx.protect(rtp(1)), port)
        await until(lambda: len(pair.recorder.rtp) == 1)
        await asyncio.sleep(0.05)
        assert pair.recorder.datagrams == []  # filtered by the kernel

        with pytest.raises(ValueError, match="connected to another address"):
            pair.engine.open_leg(pair.ours.fileno(), stranger.getsockname(), PROFILE, tx, rx,
                                 print, print, connect=True)  # fmt: skip
        assert leg.open and leg.connected
        leg.close()
        again = pair.engine.open_leg(pair.ours.fileno(), stranger.getsockname(), PROFILE, tx,
                                     rx, print, print, connect=True)  # fmt: skip
        assert again.connected and pair.ours.getpeername() == stranger.getsockname()
        assert pair.ours_address == port
        with pytest.raises(ValueError, match="connected to another address"):
            pair.engine.open_leg(pair.ours.fileno(), pair.peer_address, PROFILE, tx, rx,
                                 print, print)  # fmt: skip
        again.close()
    finally:
        stranger.close()


async def test_a_connected_leg_whose_participant_vanished_harms_nothing(pair: Pair) -> None:
    """On a connected socket the kernel reports the ICMP port-unreachable that a
    send to a closed port brings back, to the next read (nothing to read) or the
    next send (that datagram counted send_error). Neither raises nor keeps the loop
    busy, and a participant that comes back on that address is heard again."""
    tx, rx, their_tx, _ = srtp_pair()
    leg = pair.engine.open_leg(
        pair.ours.fileno(), pair.peer_address, PROFILE, tx, rx,
        pair.recorder.rtp.append, pair.recorder.rtcp.append, connect=True,
    )  # fmt: skip
    address = pair.peer_address
    pair.peer.close()
    for sequence in range(20):
        leg.send(rtp(sequence, ssrc=0xABCD))  # each send flushes: nothing is being read
        await asyncio.sleep(0.005)
    assert leg.open and leg.sent == 20
    assert pair.engine.dropped["send_error"] < 20  # most errors went to reads
    cpu = time.process_time()
    await asyncio.sleep(0.3)
    assert time.process_time() - cpu < 0.15  # no readiness left spinning

    back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pair.peer = back  # the fixture closes it
    try:
        back.bind(address)
    except OSError as exc:
        pytest.skip(f"the vanished participant's port was taken in between: {exc}")
    back.sendto(their_tx.protect(rtp(1)), pair.ours_address)
    await until(lambda: len(pair.recorder.rtp) == 1)
    assert pair.recorder.rtp == [rtp(1)]


# What a leg sends within one batch: a video frame's packets (one size, the last
# shorter), another frame, a larger packet, and a report. On a connected socket
# the runs [0..4], [5, 6] and [7, the report] (shorter, so it may end the run)
# leave as one UDP GSO send each.
FRAME_SIZES = [1000, 1000, 1000, 1000, 600, 1000, 1000, 1200]
SEGMENTED_PER_BATCH = 9
SO_NO_CHECK = 11  # linux/socket.h; not in Python's socket module


async def send_batches(batches: int, *, segment: bool, no_check: bool = False) -> _native.Engine:
    """A connected leg sends `FRAME_SIZES` and a report from inside each receive
    batch (from a handler of its own RTP, as a forwarded packet is sent); the
    participant must receive every datagram alone, in order, intact. Returns the
    engine, for its counters."""
    engine = _native.Engine(segment=segment)
    ours, peer = udp_socket(), udp_socket()
    if no_check:
        ours.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
    tx, rx, their_tx, their_rx = srtp_pair()
    engine.add_socket(ours.fileno(), Recorder())
    batch: list[bytes] = []

    def echo(packet: bytes) -> None:
        for each in batch:
            assert leg.send(each)
        assert leg.send(rtcp_rr(0xABCD))

    leg = engine.open_leg(ours.fileno(), peer.getsockname(), PROFILE, tx, rx, echo, print,
                          connect=True)  # fmt: skip
    try:
        for number in range(batches):
            batch[:] = [rtp(100 * number + seq, ssrc=0xABCD, payload=bytes([seq]) * size)
                        for seq, size in enumerate(FRAME_SIZES)]  # fmt: skip
            peer.sendto(their_tx.protect(rtp(number)), ours.getsockname())
            await until(lambda: _readable(ours))
            engine.readable(ours.fileno())
            received: list[bytes] = []
            async with asyncio.timeout(2):
                while len(received) < len(batch) + 1:
                    if _readable(peer):
                        received.append(peer.recv(2048))
                    else:
                        await asyncio.sleep(0.005)
            assert [their_rx.unprotect(each) for each in received[:-1]] == batch
            assert their_rx.unprotect_rtcp(received[-1]) == rtcp_rr(0xABCD)
        assert engine.datagrams_sent == batches * (len(FRAME_SIZES) + 1)
        return engine
    finally:
        leg.close()
        engine.remove_socket(ours.fileno())
        ours.close()
        peer.close()


@pytest.mark.parametrize("segment", [True, False])
async def test_a_frame_to_a_connected_participant_leaves_in_one_segmented_send(
    segment: bool,
) -> None:
    """UDP GSO (UDP_SEGMENT): a run of one size, its last possibly shorter, is one
    message to the kernel; the participant still receives every datagram alone,
    in order. Engine(segment=False) sends them one by one."""
    engine = await send_batches(2, segment=segment)
    assert engine.datagrams_segmented == (2 * SEGMENTED_PER_BATCH if segment else 0)
    assert engine.segment_refused == 0


async def test_a_socket_whose_route_refuses_segments_sends_them_one_by_one() -> None:
    """A route without checksum offload (here: SO_NO_CHECK on the socket, which
    the kernel's UDP GSO refuses) gets every datagram all the same, and the socket
    stops trying: one refusal, counted, however many batches follow."""
    engine = await send_batches(3, segment=True, no_check=True)
    assert (engine.datagrams_segmented, engine.segment_refused) == (0, 1)
