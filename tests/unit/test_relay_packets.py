"""RTP/RTCP parsing and the forwarder's per-subscriber rewrite."""

from __future__ import annotations

import asyncio
import struct

import pytest
from aiortc.rtp import RtpPacket

from relay.forwarder import MID_URI, SubscriberOutput, TrackForwarder
from relay.room import KeyframeThrottle
from relay.rtcp import keyframe_requests, pli
from relay.rtp import RtpHeader, is_vp8_keyframe_start, one_byte_element

LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
VP8_KEY = bytes([0x90, 0x80, 0x05]) + bytes([0x50, 0x01, 0x00, 0x9D, 0x01, 0x2A])  # X,S + I
VP8_DELTA = bytes([0x90, 0x80, 0x06]) + bytes([0x31, 0x02, 0x00])


def rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, ext: bytes = b"") -> bytes:
    first = 0x80 | (0x10 if ext else 0)
    header = struct.pack("!BBHII", first, 0x80 | pt, seq, ts, ssrc)
    if ext:
        padded = ext + b"\0" * (-len(ext) % 4)
        header += struct.pack("!HH", 0xBEDE, len(padded) // 4) + padded
    return header + payload


def send(forwarder: TrackForwarder, data: bytes) -> list[tuple[SubscriberOutput, bytes]]:
    return forwarder.forward(data, RtpHeader.parse(data))


def test_parse_reads_fields_and_one_byte_extensions() -> None:
    data = rtp(
        97,
        65535,
        90000,
        0xDEADBEEF,
        b"xyz",
        one_byte_element(1, b"0") + one_byte_element(3, b"\1\2\3"),
    )
    header = RtpHeader.parse(data)
    assert (header.payload_type, header.sequence, header.timestamp, header.ssrc) == (
        97,
        65535,
        90000,
        0xDEADBEEF,
    )
    assert header.marker == 1
    assert header.extensions == [(1, b"0"), (3, b"\1\2\3")]
    assert data[header.payload_offset :] == b"xyz"


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x80" * 5,
        b"\x00" * 20,
        b"\x90\x60\0\0\0\0\0\0\0\0\0\0\xbe\xde\0\x09",
        b"\xa0\x60" + b"\0" * 10,
    ],
)
def test_parse_refuses_garbage(garbage: bytes) -> None:
    with pytest.raises(ValueError):
        RtpHeader.parse(garbage)


def test_vp8_keyframe_detection() -> None:
    assert is_vp8_keyframe_start(VP8_KEY)
    assert not is_vp8_keyframe_start(VP8_DELTA)
    assert not is_vp8_keyframe_start(bytes([0x80, 0x80, 0x05, 0x50]))  # S bit clear
    assert not is_vp8_keyframe_start(b"")
    assert is_vp8_keyframe_start(bytes([0x10, 0x00]))  # minimal descriptor


def test_rtcp_keyframe_requests_and_pli_round_trip() -> None:
    fir = struct.pack("!BBHIIIBxxx", 0x84, 206, 4, 1, 0, 0xABCD, 7)
    receiver_report = struct.pack("!BBHI", 0x80, 201, 1, 5)
    assert keyframe_requests(receiver_report + pli(1, 0x1234) + fir) == [0x1234, 0xABCD]
    assert keyframe_requests(b"\xff\x00garbage") == []


async def test_forwarder_rewrites_per_subscriber_and_waits_for_keyframe() -> None:
    requests: list[int] = []
    forwarder = TrackForwarder("video", lambda _layer: requests.append(1))
    a = SubscriberOutput(111, 100, one_byte_element(1, b"3"))
    b = SubscriberOutput(222, 101, one_byte_element(1, b"7"))
    forwarder.add_subscriber(a)
    forwarder.add_subscriber(b)
    assert len(requests) == 2
    ext = one_byte_element(1, b"0") + one_byte_element(3, b"\1\2\3")
    assert send(forwarder, rtp(97, 10, 1000, 5, VP8_DELTA, ext)) == []
    out = send(forwarder, rtp(97, 11, 4000, 5, VP8_KEY, ext))
    assert [o for o, _ in out] == [a, b]
    out += send(forwarder, rtp(97, 12, 7000, 5, VP8_DELTA, ext))
    for sub, packet in out:
        parsed = RtpPacket.parse(packet)
        assert parsed.ssrc == sub.ssrc and parsed.payload_type == sub.payload_type
        header = RtpHeader.parse(packet)
        assert header.extensions[0] == (1, sub.mid_element[1:])
        assert (3, b"\1\2\3") in header.extensions
    a_packets = [RtpHeader.parse(p) for s, p in out if s is a]
    assert a_packets[1].sequence == (a_packets[0].sequence + 1) & 0xFFFF
    assert (a_packets[1].timestamp - a_packets[0].timestamp) & 0xFFFFFFFF == 3000
    assert forwarder.forwarded == 4 and forwarder.received == 3
    forwarder.remove_subscriber(a)
    out = send(forwarder, rtp(97, 13, 9000, 5, VP8_DELTA))
    assert [o for o, _ in out] == [b]


async def test_audio_subscriber_starts_at_once() -> None:
    forwarder = TrackForwarder("audio", lambda _layer: pytest.fail("audio needs no keyframe"))
    sub = SubscriberOutput(1, 96, b"")
    forwarder.add_subscriber(sub)
    out = send(forwarder, rtp(96, 1, 960, 9, b"\x78opus"))
    assert len(out) == 1 and out[0][1].endswith(b"\x78opus")


async def test_keyframe_throttle_coalesces_within_window() -> None:
    sent: list[float] = []
    loop = asyncio.get_running_loop()
    throttle = KeyframeThrottle(lambda: sent.append(loop.time()), interval=0.2)
    for _ in range(10):
        throttle.request()
    assert len(sent) == 1
    await asyncio.sleep(0.3)
    assert len(sent) == 2  # the coalesced request went out when the window ended
    assert sent[1] - sent[0] >= 0.19


async def test_extensions_are_renumbered_for_a_leg_with_other_ids() -> None:
    forwarder = TrackForwarder("audio", lambda _layer: None)
    forwarder.set_source_extensions({1: MID_URI, 2: LEVEL_URI, 3: SEND_TIME_URI})
    same = SubscriberOutput(1, 96, one_byte_element(1, b"4"),
                            extension_ids={MID_URI: 1, LEVEL_URI: 2, SEND_TIME_URI: 3})  # fmt: skip
    other = SubscriberOutput(2, 96, one_byte_element(5, b"9"),
                             extension_ids={MID_URI: 5, LEVEL_URI: 7})  # fmt: skip
    forwarder.add_subscriber(same)
    forwarder.add_subscriber(other)
    assert same.extension_map is None
    ext = one_byte_element(1, b"0") + one_byte_element(2, b"\x85") + one_byte_element(3, b"abc")
    out = dict(send(forwarder, rtp(96, 1, 960, 9, b"opus", ext)))
    assert RtpHeader.parse(out[same]).extensions == [(1, b"4"), (2, b"\x85"), (3, b"abc")]
    # other leg: its own MID id, audio level renumbered 2 -> 7, abs-send-time dropped
    assert RtpHeader.parse(out[other]).extensions == [(5, b"9"), (7, b"\x85")]
