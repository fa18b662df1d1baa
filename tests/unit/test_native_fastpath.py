"""The engine's fast path (docs/native.md, step 3): a bound SSRC's packets are
forwarded in C to the subscriber's leg, byte for byte what relay/forwarder.py would
send, without going up to Python; its books are kept in C (reception report,
NACKs the engine sends, audio levels); anything unusual (another payload type, a
track that is not fast, a subscriber without a leg) goes up as before."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from unittest.mock import ANY

import pylibsrtp
import pytest

from relay import _native, rtcp
from relay.forwarder import SubscriberOutput, TrackForwarder
from relay.native_keys import aiortc_session
from relay.rtp import RtpHeader
from tests.unit.test_native_engine import udp_socket

PROFILE = _native.SRTP_AEAD_AES_128_GCM
KEY_LENGTH = _native.key_and_salt_length(PROFILE)
PUBLISHER_SSRC = 0x1234
LEVEL_ID = 1  # the audio-level extension's id on the publisher's leg


@dataclass
class Sink:
    """A subscriber's peer, as the engine sees it: told of the first packet."""

    flowing: int = 0

    def media_flowing(self) -> None:
        self.flowing += 1


@dataclass
class End:
    """One participant: our registered socket with its leg, and the far side."""

    ours: socket.socket
    far: socket.socket
    leg: _native.Leg
    far_tx: pylibsrtp.Session
    far_rx: pylibsrtp.Session
    rtp_up: list[bytes] = field(default_factory=list)
    rtcp_up: list[bytes] = field(default_factory=list)

    def send(self, packet: bytes) -> None:
        self.far.sendto(self.far_tx.protect(packet), self.ours.getsockname())

    def received(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.far.recv(2048))
            except BlockingIOError:
                return out


class Recorder:
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        raise AssertionError(f"no datagram should go up here: {data[:4].hex()}")


def open_end(engine: _native.Engine) -> End:
    ours, far = udp_socket(), udp_socket()
    tx, rx = os.urandom(KEY_LENGTH), os.urandom(KEY_LENGTH)
    engine.add_socket(ours.fileno(), Recorder())
    rtp_up: list[bytes] = []
    rtcp_up: list[bytes] = []
    leg = engine.open_leg(ours.fileno(), far.getsockname(), PROFILE, tx, rx,
                          rtp_up.append, rtcp_up.append)  # fmt: skip
    leg.rtcp_ssrc = 0xFEED
    far_tx, far_rx = aiortc_session(PROFILE, rx, True), aiortc_session(PROFILE, tx, False)
    return End(ours, far, leg, far_tx, far_rx, rtp_up, rtcp_up)


@dataclass
class Engine:
    """An engine and the participants on it, closed at the end of the test."""

    native: _native.Engine = field(default_factory=_native.Engine)
    ends: list[End] = field(default_factory=list)

    def end(self) -> End:
        made = open_end(self.native)
        self.ends.append(made)
        return made


@pytest.fixture
def engine() -> Iterator[Engine]:
    made = Engine()
    yield made
    for end in made.ends:
        made.native.remove_socket(end.ours.fileno())
        end.ours.close()
        end.far.close()


def audio(sequence: int, level: int = 30, payload_type: int = 111) -> bytes:
    extension = struct.pack("!HH", 0xBEDE, 1) + bytes([LEVEL_ID << 4, level, 0, 0])
    header = struct.pack("!BBHII", 0x90, payload_type, sequence, 960 * sequence, PUBLISHER_SSRC)
    return header + extension + b"\xfc" + bytes(range(40))


def audio_track_to(end: End) -> tuple[_native.Track, _native.Subscriber]:
    """An audio track with one subscriber, on `end`'s leg."""
    track = _native.Track("audio", lambda layer: None)
    output = _native.Subscriber(0x5000, 111, b"", next_sequence=0, timestamp_base=0,
                                rtx_sequence=0)  # fmt: skip
    output.leg = end.leg
    track.add_subscriber(output)
    return track, output


def wire(engine: Engine, end: End, packets: list[bytes]) -> None:
    """The publisher sends `packets`; the engine takes them in one readiness call."""
    for packet in packets:
        end.send(packet)
    engine.native.readable(end.ours.fileno())


def test_a_bound_ssrc_is_forwarded_in_c_exactly_as_the_python_forwarder_would(
    engine: Engine,
) -> None:
    publisher, subscriber = engine.end(), engine.end()
    track = _native.Track("audio", lambda layer: None)
    sink = Sink()
    output = _native.Subscriber(0x5000, 111, b"", next_sequence=100, timestamp_base=7,
                                rtx_sequence=0, sink=sink)  # fmt: skip
    output.leg = subscriber.leg
    output.announce = True
    track.add_subscriber(output)
    reference = TrackForwarder("audio", lambda layer: None)
    expected_output = SubscriberOutput(0x5000, 111, b"")
    expected_output.next_sequence, expected_output.timestamp_base = 100, 7
    reference.add_subscriber(expected_output)
    assert publisher.leg.bind(PUBLISHER_SSRC, track, 0, 111, 48000, LEVEL_ID)

    packets = [audio(seq) for seq in range(65533, 65536)] + [audio(seq) for seq in range(3)]
    wire(engine, publisher, packets)

    assert publisher.rtp_up == []  # nothing went up to Python
    got = [subscriber.far_rx.unprotect(data) for data in subscriber.received()]
    expected = [out for p in packets for _, out in reference.forward(p, RtpHeader.parse(p))]
    assert got == expected
    assert sink.flowing == 1  # told once, at the first packet
    assert engine.native.rtp_received == engine.native.rtp_forwarded == len(packets)
    total, count = publisher.leg.take_levels(PUBLISHER_SSRC)
    assert count == len(packets) and total == pytest.approx(len(packets) * 10 ** (-30 / 20))
    assert publisher.leg.take_levels(PUBLISHER_SSRC) == (0.0, 0)  # taken


def test_a_tapped_track_is_forwarded_in_c_and_each_packet_handed_to_the_tap(
    engine: Engine,
) -> None:
    """A track that links take (relay/room.py): this relay's subscribers get it from
    C, and the tap gets each packet once, as the publisher sent it, with its layer."""
    publisher, subscriber = engine.end(), engine.end()
    track, _ = audio_track_to(subscriber)
    tapped: list[tuple[bytes, int]] = []
    track.tap = lambda data, layer: tapped.append((data, layer))
    assert publisher.leg.bind(PUBLISHER_SSRC, track, 0, 111, 48000, LEVEL_ID)

    packets = [audio(1), audio(2)]
    wire(engine, publisher, packets)
    assert tapped == [(p, 0) for p in packets]
    assert publisher.rtp_up == []
    assert len(subscriber.received()) == 2
    assert engine.native.rtp_forwarded == 2

    track.tap = None  # the links are gone
    wire(engine, publisher, [audio(3)])
    assert len(tapped) == 2 and len(subscriber.received()) == 1
    with pytest.raises(TypeError):
        track.tap = 5  # type: ignore[assignment]


def test_a_packet_python_routes_leaves_from_the_engine_for_subscribers_with_a_leg(
    engine: Engine,
) -> None:
    """Engine.forward (a stream's first packets, media from a link): Track.forward's
    copies, the ones for subscribers with a leg sent from C at once, the others
    returned for Python to send."""
    subscriber = engine.end()
    track, with_leg = audio_track_to(subscriber)
    without_leg = _native.Subscriber(0x6000, 111, b"", next_sequence=50, timestamp_base=0,
                                     rtx_sequence=0)  # fmt: skip
    track.add_subscriber(without_leg)
    reference = TrackForwarder("audio", lambda layer: None)
    expected_output = SubscriberOutput(0x5000, 111, b"")
    expected_output.next_sequence, expected_output.timestamp_base = 0, 0
    reference.add_subscriber(expected_output)

    packet = audio(7)
    rest = engine.native.forward(track, packet, 0, 0.0)
    assert [sub for sub, _ in rest] == [without_leg]
    (sent,) = subscriber.received()
    (expected,) = [out for _, out in reference.forward(packet, RtpHeader.parse(packet))]
    assert subscriber.far_rx.unprotect(sent) == expected
    assert engine.native.rtp_forwarded == 1
    with pytest.raises(IndexError):
        engine.native.forward(track, packet, 3, 0.0)
    with pytest.raises(TypeError):
        engine.native.forward(with_leg, packet, 0, 0.0)  # type: ignore[arg-type]


def test_anything_unusual_goes_up_to_python_with_its_books_kept(engine: Engine) -> None:
    publisher, subscriber = engine.end(), engine.end()
    track, output = audio_track_to(subscriber)
    publisher.leg.bind(PUBLISHER_SSRC, track, 0, 111, 48000, LEVEL_ID)

    wire(engine, publisher, [audio(1, payload_type=112)])  # another payload type
    assert len(publisher.rtp_up) == 1
    track.fast = False  # e.g. a host holds it
    wire(engine, publisher, [audio(2)])
    assert len(publisher.rtp_up) == 2
    track.fast = True
    output.leg = None  # a subscriber the engine cannot send to
    wire(engine, publisher, [audio(3)])
    assert len(publisher.rtp_up) == 3
    assert subscriber.received() == []
    # ...their books were kept all the same: three packets, none lost.
    block = publisher.leg.report_block(PUBLISHER_SSRC, 0.0)
    ssrc, lost_word, highest = struct.unpack_from("!III", block)
    assert ssrc == PUBLISHER_SSRC and lost_word == 0 and highest & 0xFFFF == 3
    assert publisher.leg.take_levels(PUBLISHER_SSRC)[1] == 3
    # Unbound, it is Python's entirely again.
    assert publisher.leg.unbind(PUBLISHER_SSRC)
    with pytest.raises(KeyError):
        publisher.leg.report_block(PUBLISHER_SSRC, 0.0)


def test_the_engine_nacks_a_gap_itself(engine: Engine) -> None:
    publisher, subscriber = engine.end(), engine.end()
    track = _native.Track("video", lambda layer: None)
    publisher.leg.bind(PUBLISHER_SSRC, track, 0, 96, 90000, nack=True)

    def video(sequence: int) -> bytes:
        return struct.pack("!BBHII", 0x80, 96, sequence, 3000, PUBLISHER_SSRC) + b"\x10" * 30

    wire(engine, publisher, [video(10), video(11), video(14)])
    feedback = [publisher.far_rx.unprotect_rtcp(data) for data in publisher.received()]
    assert len(feedback) == 1
    (nack,) = rtcp.parse(feedback[0])
    assert isinstance(nack, rtcp.Nack)
    assert nack.media_ssrc == PUBLISHER_SSRC and sorted(nack.lost) == [12, 13]
    assert feedback[0] == rtcp.nack(0xFEED, PUBLISHER_SSRC, [12, 13])
    assert engine.native.nacks_sent == 1
    assert subscriber.received() == []
    # The counts since binding, read without starting a report interval.
    received, expected, jitter = publisher.leg.reception(PUBLISHER_SSRC)
    assert (received, expected) == (3, 5) and jitter >= 0
    assert publisher.leg.reception(PUBLISHER_SSRC)[:2] == (3, 5)
    with pytest.raises(KeyError):
        publisher.leg.reception(PUBLISHER_SSRC + 1)


def test_sender_reports_go_out_from_the_engine_to_subscribers_with_a_leg(
    engine: Engine,
) -> None:
    """A publisher's SR reaches every subscriber of its layer as SR + SDES CNAME in
    the subscriber's own SSRC and timestamp space: over SRTCP from C for those with
    a leg, returned to Python for the one without; the bytes are Track.sender_reports'
    (which the differential test holds to relay/forwarder.py's)."""
    publisher = engine.end()
    ends = [engine.end(), engine.end()]
    track = _native.Track("audio", lambda layer: None)
    outputs = []
    for index in range(3):
        output = _native.Subscriber(0x5000 + index, 111, b"", next_sequence=index,
                                    timestamp_base=1000 * index, rtx_sequence=0)  # fmt: skip
        if index < len(ends):
            output.leg = ends[index].leg
        track.add_subscriber(output)
        outputs.append(output)
    assert publisher.leg.bind(PUBLISHER_SSRC, track, 0, 111, 48000, LEVEL_ID)
    wire(engine, publisher, [audio(1)])  # goes up: a subscriber without a leg
    for output, packet in engine.native.forward(track, audio(1), 0, 0.0):
        assert output is outputs[2] and packet
    for end in ends:
        end.received()
    expected = dict(track.sender_reports(0, 0x1122334455667788, 4242, b"conclave-relay"))
    assert len(expected) == 3

    rest = engine.native.sender_reports(track, 0, 0x1122334455667788, 4242, b"conclave-relay")

    assert rest == [(outputs[2], expected[outputs[2]])]
    for end, output in zip(ends, outputs, strict=False):
        (datagram,) = end.received()
        compound = end.far_rx.unprotect_rtcp(datagram)
        assert compound == expected[output]
        sr, sdes = rtcp.parse(compound)[0], compound[28:]
        assert isinstance(sr, rtcp.SenderReport) and sr.ssrc == output.ssrc
        assert sdes == rtcp.sdes_cname(output.ssrc, b"conclave-relay")
    ends[0].leg.close()  # its participant left: the report is dropped and counted
    dropped = engine.native.dropped["no_leg"]
    assert engine.native.sender_reports(track, 0, 1, 2, b"x") == [(outputs[2], ANY)]
    assert engine.native.dropped["no_leg"] == dropped + 1
    assert len(ends[1].received()) == 1 and not ends[0].received()
    with pytest.raises(ValueError):
        engine.native.sender_reports(track, 0, 1, 2, bytes(256))
    with pytest.raises(IndexError):
        engine.native.sender_reports(track, 1, 1, 2, b"x")
    with pytest.raises(TypeError):
        engine.native.sender_reports(object(), 0, 1, 2, b"x")  # type: ignore[arg-type]
