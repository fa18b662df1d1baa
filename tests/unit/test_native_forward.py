"""The C forwarder (relay/native/forward.c) against relay/forwarder.py, packet for
packet: both are driven by the same operations and must give byte-identical
packets, retransmissions and sender reports, the same key-frame requests and the
same counters and state after every step."""

from __future__ import annotations

import gc
import struct
import sys
import weakref
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from client.e2ee.h264 import escape
from relay import _native as nf
from relay.forwarder import MID_URI, SKIP_WINDOW, SubscriberOutput, TrackForwarder
from relay.rtp import (
    RtpHeader,
    h264_keyframe_size,
    is_h264_keyframe_start,
    is_vp8_keyframe_start,
    one_byte_element,
    vp8_keyframe_size,
)

AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
TOFFSET = "urn:ietf:params:rtp-hdrext:toffset"
TWCC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
URIS = [MID_URI, AUDIO_LEVEL, ABS_SEND_TIME, TOFFSET, TWCC]
CODECS = ["video/vp8", "video/h264"]
HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


# --- packets -------------------------------------------------------------------


def rtp(
    sequence: int,
    timestamp: int,
    ssrc: int,
    payload: bytes,
    *,
    payload_type: int = 96,
    marker: int = 0,
    csrcs: tuple[int, ...] = (),
    extension: bytes | None = None,
    padding: int = 0,
) -> bytes:
    """An RTP packet; `extension` is the whole block (profile, length, data)."""
    first = 0x80 | len(csrcs) | (0x10 if extension is not None else 0) | (0x20 if padding else 0)
    header = struct.pack(
        "!BBHII", first, marker << 7 | payload_type, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc
    )
    header += b"".join(struct.pack("!I", c) for c in csrcs)
    pad = bytes(padding - 1) + bytes([padding]) if padding else b""
    return header + (extension or b"") + payload + pad


def one_byte_block(elements: list[tuple[int, bytes]], gaps: list[int] | None = None) -> bytes:
    """A one-byte-profile block, with `gaps` zero bytes before each element."""
    body = b""
    for index, (ext_id, value) in enumerate(elements):
        body += bytes((gaps or [])[index] if gaps and index < len(gaps) else 0)
        body += bytes([ext_id << 4 | (len(value) - 1)]) + value
    body += bytes(-len(body) % 4)
    return struct.pack("!HH", 0xBEDE, len(body) // 4) + body


def two_byte_block(elements: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(bytes([ext_id, len(value)]) + value for ext_id, value in elements)
    body += bytes(-len(body) % 4)
    return struct.pack("!HH", 0x1000, len(body) // 4) + body


def vp8_key(width: int, height: int, descriptor: bytes = b"\x10", tail: bytes = b"") -> bytes:
    return descriptor + b"\x50\x02\x00\x9d\x01\x2a" + struct.pack("<HH", width, height) + tail


def vp8_delta(tail: bytes = b"\x00\x00") -> bytes:
    return b"\x10\x01" + tail


class BitWriter:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, count: int, value: int) -> None:
        self.bits += [(value >> (count - 1 - i)) & 1 for i in range(count)]

    def ue(self, value: int) -> None:
        code = value + 1
        self.u(code.bit_length() - 1, 0)
        self.u(code.bit_length(), code)

    def se(self, value: int) -> None:
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def rbsp(self) -> bytes:
        bits = [*self.bits, 1]
        bits += [0] * (-len(bits) % 8)
        return bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))


@dataclass
class Sps:
    profile: int = 66
    width_mbs: int = 80
    height_units: int = 45
    frame_mbs_only: int = 1
    crop: tuple[int, int, int, int] | None = None
    chroma: int = 1
    scaling: list[list[int] | None] | None = None  # deltas per list, None: absent
    poc_type: int = 0
    poc_cycle: list[int] = field(default_factory=list)

    def nal(self) -> bytes:
        bits = BitWriter()
        bits.u(8, self.profile)
        bits.u(16, 0x001F)
        bits.ue(0)
        if self.profile in HIGH_PROFILES:
            bits.ue(self.chroma)
            if self.chroma == 3:
                bits.u(1, 0)
            bits.ue(0)
            bits.ue(0)
            bits.u(1, 0)
            bits.u(1, 1 if self.scaling is not None else 0)
            if self.scaling is not None:
                for index in range(8 if self.chroma != 3 else 12):
                    deltas = self.scaling[index] if index < len(self.scaling) else None
                    bits.u(1, deltas is not None)
                    if deltas is None:
                        continue
                    last, following = 8, 8
                    for position in range(16 if index < 6 else 64):
                        if following:
                            delta = deltas[position % len(deltas)] if deltas else 0
                            bits.se(delta)
                            following = (last + delta + 256) % 256
                        last = following or last
        bits.ue(0)
        bits.ue(self.poc_type)
        if self.poc_type == 0:
            bits.ue(2)
        elif self.poc_type == 1:
            bits.u(1, 0)
            bits.se(0)
            bits.se(-3)
            bits.ue(len(self.poc_cycle))
            for value in self.poc_cycle:
                bits.se(value)
        bits.ue(1)
        bits.u(1, 0)
        bits.ue(self.width_mbs - 1)
        bits.ue(self.height_units - 1)
        bits.u(1, self.frame_mbs_only)
        if not self.frame_mbs_only:
            bits.u(1, 0)
        bits.u(1, 1)
        bits.u(1, self.crop is not None)
        if self.crop is not None:
            for value in self.crop:
                bits.ue(value)
        bits.u(1, 0)  # no VUI
        return b"\x67" + escape(bits.rbsp())


def stap_a(*nals: bytes) -> bytes:
    return b"\x78" + b"".join(struct.pack("!H", len(n)) + n for n in nals)


PPS = b"\x68\xce\x3c\x80"
IDR = b"\x65\x88\x84\x00\x33"


# --- the harness ----------------------------------------------------------------


@dataclass
class Config:
    ssrc: int
    payload_type: int
    mid_element: bytes
    rtx: tuple[int, int] | None
    extension_ids: dict[str, int] | None
    codecs: dict[str, tuple[int, int]] | None
    next_sequence: int
    timestamp_base: int
    rtx_sequence: int


def comparable_map(mapping: dict[int, int] | None) -> dict[int, int] | None:
    return None if mapping is None else {k: v for k, v in mapping.items() if 0 <= k <= 15}


class Pair:
    """A Python and a C forwarder of the same track, driven together."""

    def __init__(self, kind: str) -> None:
        self.py_requests: list[int] = []
        self.c_requests: list[int] = []
        self.py = TrackForwarder(kind, self.py_requests.append)
        self.c = nf.Track(kind, self.c_requests.append)
        self.py_subs: list[SubscriberOutput] = []
        self.c_subs: list[nf.Subscriber] = []
        self.py_malformed = 0
        self.sent: list[list[int]] = []  # output sequence numbers per subscriber
        self.check()

    def subscriber(self, config: Config) -> int:
        py = SubscriberOutput(
            config.ssrc,
            config.payload_type,
            config.mid_element,
            rtx=config.rtx,
            extension_ids=config.extension_ids,
            codecs=config.codecs,
        )
        py.next_sequence = config.next_sequence
        py.timestamp_base = config.timestamp_base
        py.rtx_sequence = config.rtx_sequence
        c = nf.Subscriber(
            config.ssrc,
            config.payload_type,
            config.mid_element,
            config.rtx,
            config.extension_ids,
            config.codecs,
            next_sequence=config.next_sequence,
            timestamp_base=config.timestamp_base,
            rtx_sequence=config.rtx_sequence,
        )
        assert py.use_codec(self.py.codec) == c.use_codec(self.c.codec)
        self.py_subs.append(py)
        self.c_subs.append(c)
        self.sent.append([])
        self.check()
        return len(self.py_subs) - 1

    def add(self, index: int, layer: int) -> None:
        self.py.add_subscriber(self.py_subs[index], layer)
        self.c.add_subscriber(self.c_subs[index], layer)
        self.check()

    def remove(self, index: int) -> None:
        self.py.remove_subscriber(self.py_subs[index])
        self.c.remove_subscriber(self.c_subs[index])
        self.check()

    def target(self, index: int, layer: int) -> None:
        self.py.set_target(self.py_subs[index], layer)
        self.c.set_target(self.c_subs[index], layer)
        self.check()

    def codec(self, mime: str) -> None:
        self.py.set_codec(mime)
        self.c.set_codec(mime)
        for py, c in zip(self.py_subs, self.c_subs, strict=True):
            assert py.use_codec(self.py.codec) == c.use_codec(self.c.codec)
        self.check()

    def extensions(self, ids: dict[int, str]) -> None:
        self.py.set_source_extensions(ids)
        self.c.set_source_extensions(ids)
        self.check()

    def forward(self, data: bytes, layer: int, now: float) -> list[tuple[int, bytes]]:
        try:
            header = RtpHeader.parse(data)
        except ValueError:
            py_out = []
            self.py_malformed += 1
        else:
            py_out = self.py.forward(data, header, layer, now)
        # Any buffer will do for the C side: bytearray for odd lengths.
        c_out = self.c.forward(bytearray(data) if len(data) % 2 else data, layer, now)
        py_indexed = [(self.index_of(self.py_subs, sub), out) for sub, out in py_out]
        c_indexed = [(self.index_of(self.c_subs, sub), out) for sub, out in c_out]
        assert c_indexed == py_indexed
        for index, out in py_indexed:
            self.sent[index].append(struct.unpack_from("!H", out, 2)[0])
        self.check()
        return py_indexed

    def retransmit(self, index: int, lost: list[int]) -> list[bytes]:
        py = self.py.retransmit(self.py_subs[index], lost)
        c = self.c.retransmit(self.c_subs[index], lost)
        assert c == py
        self.check()
        return py

    def sender_report(self, index: int, ntp: int, rtp_timestamp: int) -> None:
        py = self.py.sender_report(self.py_subs[index], ntp, rtp_timestamp)
        c = self.c.sender_report(self.c_subs[index], ntp, rtp_timestamp)
        assert c == py

    def sender_reports(self, layer: int, ntp: int, rtp_timestamp: int, cname: bytes) -> None:
        """Every receiver's SR + SDES of a layer (the engine's fan-out), alike."""
        py = self.py.sender_reports(layer, ntp, rtp_timestamp, cname)
        c = self.c.sender_reports(layer, ntp, rtp_timestamp, cname)
        assert [(self.index_of(self.c_subs, s), b) for s, b in c] == [
            (self.index_of(self.py_subs, s), b) for s, b in py
        ]

    @staticmethod
    def index_of(subs: list[SubscriberOutput] | list[nf.Subscriber], sub: object) -> int:
        return next(i for i, s in enumerate(subs) if s is sub)

    def check(self) -> None:
        py, c = self.py, self.c
        assert c.codec == py.codec
        assert c.source_mid_id == py.source_mid_id
        assert c.malformed == self.py_malformed
        assert (c.received, c.forwarded, c.switches) == (py.received, py.forwarded, py.switches)
        assert self.c_requests == self.py_requests
        assert [self.index_of(self.c_subs, s) for s in c.subscribers] == [
            self.index_of(self.py_subs, s) for s in py.subscribers
        ]
        assert c.layer_count == len(py.layers)
        for number, stream in enumerate(py.layers):
            stats = c.layer_stats(number)
            assert tuple(stats) == (
                stream.packets,
                stream.octets,
                stream.last_arrival,
                stream.last_timestamp,
                stream.width,
                stream.height,
                stream.padding,
            )
            for c_list, py_list in (
                (c.receivers(number), stream.receivers),
                (c.joining(number), stream.joining),
            ):
                assert [self.index_of(self.c_subs, s) for s in c_list] == [
                    self.index_of(self.py_subs, s) for s in py_list
                ]
        for p, n in zip(self.py_subs, self.c_subs, strict=True):
            assert (n.layer, n.target, n.started) == (p.layer, p.target, p.started)
            assert (n.packets, n.octets, n.retransmitted) == (p.packets, p.octets, p.retransmitted)
            assert (n.next_sequence, n.seq_offset, n.ts_offset, n.rtx_sequence) == (
                p.next_sequence,
                p.seq_offset,
                p.ts_offset,
                p.rtx_sequence,
            )
            assert (n.payload_type, n.rtx_payload_type, n.rtx_ssrc) == (
                p.payload_type,
                p.rtx_payload_type,
                p.rtx_ssrc,
            )
            assert n.segments == p.segments
            if p in py.subscribers:
                assert n.extension_map == comparable_map(p.extension_map)


# --- hand-written cases -----------------------------------------------------------


def config(index: int, **changes: object) -> Config:
    base = Config(
        ssrc=0x1000 + index,
        payload_type=96,
        mid_element=one_byte_element(1, b"%d" % index),
        rtx=None,
        extension_ids=None,
        codecs=None,
        next_sequence=(65530 + 7 * index) & 0xFFFF,
        timestamp_base=(0xFFFFF000 + 12345 * index) & 0xFFFFFFFF,
        rtx_sequence=65534 - index,
    )
    for name, value in changes.items():
        setattr(base, name, value)
    return base


def test_simulcast_switches_with_nacks_across_them() -> None:
    pair = Pair("video")
    a = pair.subscriber(config(0, rtx=(0x2000, 97)))
    b = pair.subscriber(config(1))
    pair.add(a, 0)
    pair.add(b, 2)
    bases = {0: (100, 1_000), 1: (60_000, 5_000_000), 2: (65_530, 4_294_960_000)}
    sizes = {0: (320, 180), 1: (640, 360), 2: (1280, 720)}
    for index in range(40):
        now = index / 30
        for layer in range(3):
            first_seq, first_ts = bases[layer]
            key = index % 8 == 0
            payload = vp8_key(*sizes[layer]) if key else vp8_delta(bytes([index]))
            data = rtp(first_seq + index, first_ts + index * 3000, 0x10 + layer, payload, marker=1)
            if index % 13 == 5 and layer == 1:
                continue  # lost
            pair.forward(data, layer, now)
        if index == 3:
            pair.target(a, 2)
        if index == 10:
            pair.target(a, 1)
            pair.target(b, 0)
        if index == 20:
            pair.target(a, 0)
            pair.target(a, 2)
    for index in (a, b):
        pair.retransmit(index, pair.sent[index] + [4242, 1, 65535] + pair.sent[index][:3])
        pair.sender_report(index, 0x1122334455667788, 77777)
    for layer in range(3):
        for cname in (b"", b"x", b"conclave-relay", bytes(range(255))):
            pair.sender_reports(layer, 0x1122334455667788, 77777, cname)
    assert pair.c.switches >= 3


def test_padding_compaction_across_the_wrap_and_late_packets() -> None:
    pair = Pair("video")
    a = pair.subscriber(config(0))
    pair.add(a, 0)
    pair.forward(rtp(65533, 0, 5, vp8_key(320, 180)), 0, 0.0)
    for sequence in (65534, 65535, 0, 1, 1, 65535):
        assert pair.forward(rtp(sequence, 0, 5, b"", padding=255), 0, 0.0) == []
    pair.forward(rtp(2, 3000, 5, vp8_delta()), 0, 0.01)
    pair.forward(rtp(3, 6000, 5, vp8_delta(), padding=3), 0, 0.02)
    for sequence in (5, 6):
        pair.forward(rtp(sequence, 6000, 5, b"", padding=1), 0, 0.03)
    pair.forward(rtp(7, 9000, 5, vp8_delta()), 0, 0.04)
    pair.forward(rtp(4, 6000, 5, vp8_delta(b"late")), 0, 0.05)
    pair.retransmit(a, [(pair.sent[a][0] + i) & 0xFFFF for i in range(6)])
    # Far beyond the skip window: padding forgotten, older packets dropped.
    for step in range(1, 6):
        pair.forward(rtp(7 + step * 9000, 9000, 5, b"", padding=4), 0, 0.06)
    pair.forward(rtp(7 + 5 * 9000 + 1, 12000, 5, vp8_delta()), 0, 0.07)
    pair.forward(rtp(8, 6000, 5, vp8_delta()), 0, 0.08)  # minutes late: dropped
    pair.forward(rtp(7 + 5 * 9000 - SKIP_WINDOW + 10, 9000, 5, vp8_delta()), 0, 0.09)
    assert pair.c.layer_stats(0).padding == 11


def test_codec_change_restarts_everyone_with_each_legs_payload_types() -> None:
    pair = Pair("video")
    codecs = {"video/vp8": (96, 97), "video/h264": (102, 0)}
    a = pair.subscriber(config(0, codecs=codecs, rtx=(0x3000, 97)))
    b = pair.subscriber(config(1, codecs={"video/vp8": (100, 101)}))
    pair.add(a, 0)
    pair.add(b, 1)
    pair.forward(rtp(1, 10, 7, vp8_key(640, 360)), 0, 0.0)
    pair.forward(rtp(9, 10, 8, vp8_key(1280, 720)), 1, 0.0)
    pair.codec("video/h264")
    pair.forward(rtp(2, 3010, 7, vp8_key(640, 360)), 0, 0.03)  # not a key frame of H.264
    sps = Sps(profile=100, width_mbs=40, height_units=23, crop=(0, 0, 0, 4)).nal()
    pair.forward(rtp(3, 6010, 7, stap_a(sps, PPS)), 0, 0.06)
    pair.forward(rtp(4, 6010, 7, IDR), 0, 0.06)
    pair.forward(rtp(10, 6010, 8, sps), 1, 0.06)
    assert pair.c.layer_stats(0)[4:6] == (640, 360)
    pair.retransmit(a, pair.sent[a])
    pair.codec("video/h264")  # the same again: nothing happens
    pair.codec("video/av1")  # unknown: nothing happens
    pair.codec("video/vp8")


def test_extensions_are_renumbered_dropped_or_copied() -> None:
    pair = Pair("video")
    same = pair.subscriber(config(0, extension_ids={MID_URI: 1, ABS_SEND_TIME: 3}))
    renumbered = pair.subscriber(config(1, extension_ids={MID_URI: 4, ABS_SEND_TIME: 9}))
    partial = pair.subscriber(config(2, extension_ids={TWCC: 3}, mid_element=b""))
    plain = pair.subscriber(config(3))
    for index in (same, renumbered, partial, plain):
        pair.add(index, 0)
    elements = [(1, b"0"), (3, b"abc"), (5, b"\x01\x02"), (0, b"z"), (14, bytes(16))]
    for step, ids in enumerate(
        ({1: MID_URI, 3: ABS_SEND_TIME}, {3: ABS_SEND_TIME, 5: TWCC}, {2: MID_URI, 3: TWCC}, {})
    ):
        pair.extensions(ids)
        for extension in (
            one_byte_block(elements, [0, 3, 1]),
            two_byte_block(elements),
            one_byte_block([(1, b"m"), (15, b"x"), (3, b"y")]),
            b"\x12\x34\x00\x00",
            one_byte_block([]),
        ):
            payload = vp8_key(320, 180) if step == 0 else vp8_delta()
            pair.forward(
                rtp(
                    step * 10 + len(pair.sent[0]), 0, 1, payload, extension=extension, csrcs=(1, 2)
                ),
                0,
                0.0,
            )
    for index in (same, renumbered, partial, plain):
        pair.retransmit(index, pair.sent[index])


def test_audio_starts_at_any_packet_and_keeps_no_cache() -> None:
    pair = Pair("audio")
    a = pair.subscriber(config(0, payload_type=111))
    pair.add(a, 2)  # clamped to the only layer
    for index in range(5):
        pair.forward(
            rtp(
                65534 + index,
                960 * index,
                3,
                b"\xfc" * index,
                payload_type=111,
                extension=one_byte_block([(1, b"a"), (10, b"\x80")]),
            ),
            0,
            index * 0.02,
        )
    assert pair.retransmit(a, pair.sent[a]) == []
    pair.sender_report(a, 1, 2)
    pair.target(a, 1)
    pair.remove(a)
    pair.sender_report(a, 1, 2)
    pair.add(a, 0)
    pair.forward(rtp(10, 9600, 3, b"\xfc"), 0, 1.0)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80",
        bytes(11),
        b"\x40" + bytes(11),  # version 1
        b"\x8f" + bytes(11),  # 15 CSRCs, none there
        b"\x82" + bytes(11 + 7),  # 2 CSRCs, 7 bytes of them
        b"\x90" + bytes(11) + b"\xbe\xde",  # extension header truncated
        b"\x90" + bytes(11) + b"\xbe\xde\x00\x02" + bytes(4),  # block truncated
        b"\x90" + bytes(11) + b"\xbe\xde\x00\x01\x13\x00\x00\x00",  # element past the block
        b"\x90" + bytes(11) + b"\xbe\xde\x00\x01\x12\x00\x00\x00",  # element fits exactly
        b"\x90" + bytes(11) + b"\x10\x00\xff\xff",  # two-byte block claims 256 KiB
        b"\xa0" + bytes(11) + b"\x00",  # padding count zero
        b"\xa0" + bytes(11) + b"\x05",  # padding larger than the packet
        b"\xa0" + bytes(11) + b"\x01",  # padding only, one byte
        b"\xa0" + bytes(11) + b"\x10\x02",  # payload byte plus two-byte padding claim
        b"\xb1" + bytes(11) + bytes(4) + b"\xbe\xde\x00\x00" + b"\x09",  # CSRC+empty block+pad
        b"\x80" + bytes(11),  # empty payload
        b"\xff" * 40,
    ],
)
def test_malformed_and_edge_packets_agree(data: bytes) -> None:
    for kind in ("video", "audio"):
        pair = Pair(kind)
        a = pair.subscriber(config(0))
        pair.add(a, 0)
        pair.forward(rtp(1, 1, 1, vp8_key(16, 16)), 0, 0.0)
        pair.forward(data, 0, 0.5)
        pair.forward(data + b"\x00", 0, 0.6)
    assert nf.parse_header(data) == _parse_python(data)


def test_bad_arguments_raise_instead_of_crashing() -> None:
    track = nf.Track("video", lambda _layer: None)
    with pytest.raises(IndexError):
        track.forward(b"\x80" + bytes(11), 3, 0.0)
    with pytest.raises(IndexError):
        track.forward(b"\x80" + bytes(11), -1, 0.0)
    with pytest.raises(ValueError):
        nf.Track("data", lambda _layer: None)
    with pytest.raises(ValueError):
        nf.Subscriber(1, 128, b"", next_sequence=0, timestamp_base=0, rtx_sequence=0)
    with pytest.raises(ValueError):
        nf.Subscriber(1 << 32, 96, b"", next_sequence=0, timestamp_base=0, rtx_sequence=0)
    with pytest.raises(ValueError):
        nf.Subscriber(
            1, 96, b"", None, {"x": 16}, next_sequence=0, timestamp_base=0, rtx_sequence=0
        )
    with pytest.raises(TypeError):
        nf.Subscriber(1, 96, b"")  # type: ignore[call-arg]
    sub = nf.Subscriber(1, 96, b"", next_sequence=0, timestamp_base=0, rtx_sequence=0)
    other = nf.Track("video", lambda _layer: None)
    track.add_subscriber(sub)
    with pytest.raises(ValueError):
        other.add_subscriber(sub)  # one track per subscriber: its state is per track
    assert other.retransmit(sub, [1, 2]) == []
    assert len(track.forward(rtp(1, 1, 1, vp8_key(16, 16)), 0, 0.0)) == 1
    with pytest.raises(TypeError):
        track.retransmit(sub, ["1"])  # type: ignore[list-item]

    # A request_keyframe that raises propagates, after the state changed.
    def fail(_layer: int) -> None:
        raise RuntimeError("no")

    failing = nf.Track("video", fail)
    with pytest.raises(RuntimeError):
        failing.add_subscriber(
            nf.Subscriber(1, 96, b"", next_sequence=0, timestamp_base=0, rtx_sequence=0)
        )
    assert len(failing.subscribers) == 1


def test_references_are_held_and_released() -> None:
    track = nf.Track("video", lambda _layer: None)
    sub = nf.Subscriber(1, 96, b"\x10a", next_sequence=0, timestamp_base=0, rtx_sequence=0)
    before = sys.getrefcount(sub)
    track.add_subscriber(sub, 1)
    track.add_subscriber(sub, 1)
    assert sys.getrefcount(sub) == before + 1
    data = rtp(1, 1, 1, vp8_key(16, 16))
    data_refs = sys.getrefcount(data)
    for _ in range(100):
        track.forward(data, 1, 0.0)
    assert sys.getrefcount(data) == data_refs
    assert sys.getrefcount(sub) == before + 1
    track.remove_subscriber(sub)
    track.remove_subscriber(sub)
    assert sys.getrefcount(sub) == before
    assert not sub.started

    # A cycle through the callback and the sink is collected.
    class Owner:
        track: nf.Track | None = None

        def request(self, layer: int) -> None:
            pass

    owner = Owner()
    owner.track = nf.Track("video", owner.request)
    owner.track.add_subscriber(
        nf.Subscriber(2, 96, b"", next_sequence=0, timestamp_base=0, rtx_sequence=0, sink=owner)
    )
    gone = weakref.ref(owner)
    del owner
    gc.collect()
    assert gone() is None


def test_memory_stays_flat_over_many_packets() -> None:
    def rss_pages() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1])

    track = nf.Track("video", lambda _layer: None)
    subs = [
        nf.Subscriber(
            i,
            96,
            b"\x10a",
            (100 + i, 97),
            {MID_URI: 1, TWCC: 5},
            next_sequence=i,
            timestamp_base=i,
            rtx_sequence=i,
        )
        for i in range(4)
    ]
    track.set_source_extensions({1: MID_URI, 3: TWCC})
    for sub in subs:
        track.add_subscriber(sub, 0)
    packets = [
        rtp(
            i,
            i * 3000,
            1,
            vp8_key(640, 360) if i % 50 == 0 else vp8_delta(bytes(900)),
            extension=one_byte_block([(1, b"0"), (3, b"ab")]),
            padding=(i % 3) * 4,
        )
        for i in range(2048)
    ]

    def run(rounds: int) -> None:
        for round_ in range(rounds):
            for index, data in enumerate(packets):
                track.forward(data, 0, round_ + index / 1000)
                if index % 64 == 0:
                    track.retransmit(subs[index % 4], list(range(index, index + 30)))
                    track.sender_report(subs[0], index, index)
            track.forward(b"\x80\x00", 0, 0.0)

    run(3)
    gc.collect()
    before = rss_pages()
    run(10)
    gc.collect()
    assert rss_pages() - before < 256  # 1 MiB in 4 KiB pages


# --- the parsers alone ------------------------------------------------------------


def _parse_python(
    data: bytes,
) -> tuple[int, int, int, int, int, int, list[tuple[int, bytes]]] | None:
    try:
        h = RtpHeader.parse(data)
    except ValueError:
        return None
    return (
        h.marker,
        h.payload_type,
        h.sequence,
        h.timestamp,
        h.ssrc,
        h.payload_offset,
        h.extensions,
    )


def _keyframe_python(codec: str, payload: bytes) -> tuple[bool, tuple[int, int] | None]:
    if codec == "video/vp8":
        return is_vp8_keyframe_start(payload), vp8_keyframe_size(payload)
    return is_h264_keyframe_start(payload), h264_keyframe_size(payload)


@st.composite
def sps_nals(draw: st.DrawFn) -> bytes:
    profile = draw(st.sampled_from([66, 77, 100, 110, 122, 244, 44]))
    scaling = None
    if draw(st.booleans()):
        scaling = draw(
            st.lists(
                st.one_of(st.none(), st.lists(st.integers(-128, 127), max_size=5)), max_size=12
            )
        )
    sps = Sps(
        profile=profile,
        width_mbs=draw(st.integers(1, 300)),
        height_units=draw(st.integers(1, 200)),
        frame_mbs_only=draw(st.integers(0, 1)),
        crop=draw(st.none() | st.tuples(*[st.integers(0, 40)] * 4)),
        chroma=draw(st.integers(0, 3)),
        scaling=scaling,
        poc_type=draw(st.integers(0, 3)),
        poc_cycle=draw(st.lists(st.integers(-5, 5), max_size=4)),
    )
    nal = sps.nal()
    cut = draw(st.none() | st.integers(1, len(nal)))
    return nal if cut is None else nal[:cut]


payloads = st.one_of(
    st.binary(max_size=40),
    st.builds(
        lambda d, w, h, t: vp8_key(w, h, d, t),
        st.sampled_from(
            [
                b"\x10",
                b"\x90\x80\x12",
                b"\x90\x80\x92\x34",
                b"\x90\xf0\x01\x02\x03",
                b"\x90\x40\x05",
                b"\x90\x10",
                b"\x90",
                b"\x80\x80",
                b"\x11",
            ]
        ),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
        st.binary(max_size=4),
    ),
    st.builds(
        lambda key, cut: key[:cut],
        st.builds(vp8_key, st.integers(1, 99), st.integers(1, 99)),
        st.integers(0, 20),
    ),
    sps_nals(),
    st.builds(
        lambda nals: stap_a(*nals),
        st.lists(st.one_of(sps_nals(), st.just(PPS), st.binary(max_size=6)), max_size=3),
    ),
    st.builds(lambda body: b"\x67" + body, st.binary(max_size=30)),
    st.builds(lambda body: b"\x78" + body, st.binary(max_size=30)),
)


@given(codec=st.sampled_from(CODECS), payload=payloads)
@settings(max_examples=1500, deadline=None)
def test_keyframe_detection_agrees(codec: str, payload: bytes) -> None:
    assert nf.keyframe(codec, payload) == _keyframe_python(codec, payload)


@given(st.binary(max_size=80))
@settings(max_examples=500, deadline=None)
def test_garbage_never_crashes(data: bytes) -> None:
    assert nf.parse_header(data) == _parse_python(data)
    pair = Pair("video")
    a = pair.subscriber(config(0))
    pair.add(a, 0)
    pair.forward(rtp(1, 1, 1, vp8_key(16, 16)), 0, 0.0)
    out = pair.forward(data, 0, 0.1)
    if nf.parse_header(data) is None:
        assert out == [] and pair.c.malformed == 1


# --- generated sequences ---------------------------------------------------------


@st.composite
def subscriber_configs(draw: st.DrawFn) -> Config:
    ids = draw(st.none() | st.dictionaries(st.sampled_from(URIS), st.integers(1, 14), max_size=4))
    codecs = draw(
        st.none()
        | st.dictionaries(
            st.sampled_from(CODECS),
            st.tuples(st.integers(96, 127), st.sampled_from([0, 97, 120])),
            max_size=2,
        )
    )
    return Config(
        ssrc=draw(st.integers(0, 0xFFFFFFFF)),
        payload_type=draw(st.integers(0, 127)),
        mid_element=draw(
            st.sampled_from(
                [
                    b"",
                    one_byte_element(1, b"0"),
                    one_byte_element(4, b"video1"),
                    one_byte_element(14, bytes(16)),
                ]
            )
        ),
        rtx=draw(st.none() | st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(0, 127))),
        extension_ids=ids,
        codecs=codecs,
        next_sequence=draw(st.integers(0, 0xFFFF)),
        timestamp_base=draw(st.integers(0, 0xFFFFFFFF)),
        rtx_sequence=draw(st.integers(0, 0xFFFF)),
    )


def draw_extension(data: st.DataObject, mid_id: int) -> bytes | None:
    kind = data.draw(st.sampled_from(["none", "one", "one", "two", "other", "broken"]))
    if kind == "none":
        return None
    element_ids = st.one_of(st.integers(1, 14), st.just(mid_id), st.sampled_from([0, 15]))
    elements = data.draw(
        st.lists(st.tuples(element_ids, st.binary(min_size=1, max_size=16)), max_size=4)
    )
    if kind == "one":
        gaps = data.draw(st.lists(st.integers(0, 3), max_size=4))
        return one_byte_block([(i & 15, v) for i, v in elements], gaps)
    if kind == "two":
        return two_byte_block(elements)
    if kind == "other":
        body = data.draw(st.binary(max_size=8))
        body += bytes(-len(body) % 4)
        return struct.pack("!HH", data.draw(st.integers(0, 0xFFFF)), len(body) // 4) + body
    block = one_byte_block([(i & 15, v) for i, v in elements])
    return block[:2] + struct.pack("!H", data.draw(st.integers(0, 0xFFFF))) + block[4:]


@dataclass
class LayerSource:
    sequence: int
    timestamp: int
    ssrc: int
    history: list[bytes] = field(default_factory=list)


def draw_packet(data: st.DataObject, pair: Pair, source: LayerSource, audio: bool) -> bytes:
    step = data.draw(
        st.sampled_from(["next"] * 12 + ["loss", "loss", "old", "resend", "jump", "ancient"])
    )
    if step == "resend" and source.history:
        return data.draw(st.sampled_from(source.history))
    if step == "loss":
        source.sequence += data.draw(st.integers(2, 40))
    elif step == "old":
        sequence = source.sequence - data.draw(st.integers(1, 1100))
    elif step == "ancient":  # behind the skip window: dropped
        sequence = source.sequence - SKIP_WINDOW - data.draw(st.integers(1, 5))
    elif step == "jump":
        source.sequence += data.draw(st.sampled_from([SKIP_WINDOW + 5, 3 * SKIP_WINDOW, 40000]))
    else:
        source.sequence += 1
    if step not in ("old", "ancient"):
        sequence = source.sequence
        if data.draw(st.booleans()):
            source.timestamp += 960 if audio else 3000
    kinds = ["delta"] * 4 + ["empty", "padding", "padding", "garbage"]
    if not audio:
        kinds += ["vp8key", "vp8key", "vp8key", "h264key", "h264stap", "h264idr"]
    kind = data.draw(st.sampled_from(kinds))
    padding = 0
    payload: bytes
    if kind == "vp8key":
        descriptor = data.draw(st.sampled_from([b"\x10", b"\x90\x80\x12", b"\x90\xe0\x80\x01\x02"]))
        payload = vp8_key(
            data.draw(st.sampled_from([320, 640, 1280, 0])), 180 + source.ssrc % 7, descriptor
        )
    elif kind == "h264key":
        payload = Sps(
            width_mbs=data.draw(st.integers(1, 120)), height_units=data.draw(st.integers(1, 68))
        ).nal()
    elif kind == "h264stap":
        payload = stap_a(
            Sps(profile=100, width_mbs=20, height_units=15, crop=(0, 0, 0, 2)).nal(), PPS
        )
    elif kind == "h264idr":
        payload = IDR
    elif kind == "delta":
        payload = vp8_delta(data.draw(st.binary(max_size=20)))
    elif kind == "empty":
        payload = b""
    elif kind == "padding":
        payload = b""
        padding = data.draw(st.integers(1, 255))
    else:
        payload = data.draw(st.binary(max_size=30))
    if kind != "padding" and data.draw(st.integers(0, 5)) == 0:
        padding = data.draw(st.integers(1, 20))
    csrcs = tuple(data.draw(st.lists(st.integers(0, 0xFFFFFFFF), max_size=3)))
    packet = rtp(
        sequence,
        source.timestamp,
        source.ssrc,
        payload,
        payload_type=data.draw(st.integers(0, 127)),
        marker=data.draw(st.integers(0, 1)),
        csrcs=csrcs,
        extension=draw_extension(data, pair.py.source_mid_id),
        padding=padding,
    )
    if kind == "garbage" and data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(packet)))
        packet = packet[:cut] + data.draw(st.binary(max_size=4))
    source.history = ([*source.history, packet])[-20:]
    return packet


@given(st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_generated_sequences_agree(data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["video", "video", "audio"]), label="kind")
    audio = kind == "audio"
    pair = Pair(kind)
    layers = 1 if audio else data.draw(st.integers(1, 3), label="layers")
    sources = [
        LayerSource(
            data.draw(st.sampled_from([0, 100, 65500, 65535])) + 0x10000 * 0,
            data.draw(st.integers(0, 0xFFFFFFFF)),
            0x100 + layer,
        )
        for layer in range(layers)
    ]
    now = 0.0
    pair.add(pair.subscriber(data.draw(subscriber_configs())), data.draw(st.integers(0, 2)))
    operations = data.draw(st.integers(20, 160), label="operations")
    for _ in range(operations):
        action = data.draw(
            st.sampled_from(
                ["packet"] * 24
                + [
                    "subscribe",
                    "add",
                    "remove",
                    "target",
                    "target",
                    "nack",
                    "nack",
                    "report",
                    "codec",
                    "extensions",
                ]
            ),
            label="action",
        )
        count = len(pair.py_subs)
        if action == "packet":
            layer = data.draw(st.integers(0, layers - 1))
            now += data.draw(st.sampled_from([0.0, 0.001, 0.02, 0.033, 0.5, 3.0, -0.01]))
            pair.forward(draw_packet(data, pair, sources[layer], audio), layer, now)
        elif action == "subscribe" or (count == 0 and action != "extensions"):
            index = pair.subscriber(data.draw(subscriber_configs()))
            pair.add(index, data.draw(st.integers(-1, 3)))
        elif action == "add":
            pair.add(data.draw(st.integers(0, count - 1)), data.draw(st.integers(-1, 3)))
        elif action == "remove":
            pair.remove(data.draw(st.integers(0, count - 1)))
        elif action == "target":
            pair.target(data.draw(st.integers(0, count - 1)), data.draw(st.integers(-1, 3)))
        elif action == "nack":
            index = data.draw(st.integers(0, count - 1))
            sent = pair.sent[index]
            known = st.sampled_from(sent) if sent else st.integers(0, 0xFFFF)
            lost = data.draw(st.lists(known | st.integers(0, 0xFFFF), max_size=20))
            pair.retransmit(index, lost)
        elif action == "report":
            pair.sender_report(
                data.draw(st.integers(0, count - 1)),
                data.draw(st.integers(0, (1 << 64) - 1)),
                data.draw(st.integers(0, 0xFFFFFFFF)),
            )
            pair.sender_reports(
                data.draw(st.integers(0, pair.c.layer_count - 1)),
                data.draw(st.integers(0, (1 << 64) - 1)),
                data.draw(st.integers(0, 0xFFFFFFFF)),
                data.draw(st.binary(max_size=255)),
            )
        elif action == "codec":
            pair.codec(data.draw(st.sampled_from([*CODECS, "audio/opus", "video/av1"])))
        else:
            ids = data.draw(st.dictionaries(st.integers(0, 15), st.sampled_from(URIS), max_size=4))
            pair.extensions(ids)
    retransmitted = 0
    for index in range(len(pair.py_subs)):
        retransmitted += len(pair.retransmit(index, pair.sent[index][-CACHE_TAIL:]))
        pair.sender_report(index, 1 << 63, 123456)
    for layer in range(pair.c.layer_count):
        pair.sender_reports(layer, 1 << 63, 123456, b"conclave-relay")
    # What the run reached (pytest --hypothesis-show-statistics).
    stats = [pair.c.layer_stats(i) for i in range(pair.c.layer_count)]
    event(f"switches: {min(pair.c.switches, 2)}")
    event(f"retransmitted: {min(retransmitted, 1)}")
    event(f"padding dropped: {min(sum(s.padding for s in stats), 1)}")
    event(f"forwarded: {min(pair.c.forwarded, 10) // 10 * 10}")
    event(f"malformed: {min(pair.c.malformed, 1)}")
    event(f"codec: {pair.c.codec}, sized: {any(s.width for s in stats)}")


CACHE_TAIL = 200
