"""A seeded mutation fuzzer for the relay's packet handling.

Valid RTP (VP8 and Opus payloads, one-byte and two-byte header extensions, CSRCs,
padding) and valid RTCP compounds (SR, RR, SDES, PLI, FIR, NACK, REMB, BYE, built
with relay/rtcp.py and with aiortc's own classes) are generated from running
streams whose sequence numbers wrap at 65535, lose, repeat, reorder and jump; most
are then mutated (bit flips, truncation, insertion, length and count fields set to
extremes, extension and padding overflows, zero-item and absurd-item feedback).
Every input goes through the real code and the invariants are checked on what
comes out; aiortc's parsers serve as an independent oracle.

`run_pure` drives rtp.py, rtcp.py and forwarder.py directly, `run_peer` drives the
entry points aiortc's DTLS transport calls (`ParticipantPeer._handle_rtp` and
`_handle_rtcp`) and `run_sequences` feeds sequence numbers to reception.py. A
failure raises `FuzzFailure` naming the seed, the input's index and its bytes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import struct
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiortc.rtp import (
    RtcpByePacket,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    RtpPacket,
    pack_remb_fci,
    unpack_header_extensions,
)

from conclave.meeting import SOURCE_KINDS
from relay import rtcp
from relay.forwarder import (
    CACHE_SIZE,
    MID_EXTENSION_ID,
    SKIP_WINDOW,
    SubscriberOutput,
    TrackForwarder,
)
from relay.media_path import Output
from relay.peer import ParticipantPeer
from relay.reception import MAX_DROPOUT, MAX_MISSING, NACK_MAX_TRIES, MissingPackets, ReceptionStats
from relay.rtp import FIXED_HEADER, ONE_BYTE_PROFILE, RtpHeader, is_vp8_keyframe_start

AUDIO_PT = 96  # what the relay offers (aiortc's numbering): Opus, VP8 and its RTX
VIDEO_PT = 97
RTX_PT = 98
TWO_BYTE_PROFILE = 0x1000
CLOCK_STEP = {"audio": 960, "video": 3000}
REMB_MAX = 0x3FFFF << 63  # the largest bitrate a REMB can carry

Counts = Counter[str]


class FuzzFailure(AssertionError):
    """An invariant broke (or something raised) for one input."""


def failure(seed: int, index: int, stage: str, data: bytes, detail: str) -> FuzzFailure:
    return FuzzFailure(
        f"seed={seed} input #{index} ({stage}, {len(data)} bytes): {detail}\n"
        f"input hex: {data.hex()}"
    )


def _describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).strip()


# -- valid packets -------------------------------------------------------------


def rtp_packet(
    payload_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    payload: bytes,
    *,
    marker: int = 0,
    csrcs: tuple[int, ...] = (),
    extension: bytes = b"",
    padding: int = 0,
) -> bytes:
    """An RTP packet; `extension` is a whole block (profile, length, elements)."""
    first = 0x80 | (0x20 if padding else 0) | (0x10 if extension else 0) | len(csrcs)
    parts = [
        struct.pack("!BBHII", first, marker << 7 | payload_type, sequence, timestamp, ssrc),
        *(struct.pack("!I", c) for c in csrcs),
        extension,
        payload,
    ]
    if padding:
        parts.append(bytes(padding - 1) + bytes([padding]))
    return b"".join(parts)


def extension_block(profile: int, elements: bytes) -> bytes:
    padded = elements + bytes(-len(elements) % 4)
    return struct.pack("!HH", profile, len(padded) // 4) + padded


def _one_byte(ext_id: int, value: bytes) -> bytes:
    return bytes([ext_id << 4 | (len(value) - 1)]) + value


def vp8_payload(rng: random.Random, key: bool) -> bytes:
    """RFC 7741 payload descriptor (random optional fields) and a frame start."""
    first = 0x10  # S: start of partition 0
    if not key and rng.random() < 0.3:
        first = rng.choice((0x00, 0x11, 0x13))  # a continuation packet
    descriptor = bytearray()
    if rng.random() < 0.85:
        first |= 0x80
        ext = 0
        fields = bytearray()
        if rng.random() < 0.9:
            ext |= 0x80
            picture_id = rng.getrandbits(15)
            if rng.random() < 0.8:
                fields += struct.pack("!H", 0x8000 | picture_id)
            else:
                fields.append(picture_id & 0x7F)
        if rng.random() < 0.4:
            ext |= 0x40
            fields.append(rng.getrandbits(8))
        if rng.random() < 0.4:
            ext |= rng.choice((0x20, 0x10, 0x30))
            fields.append(rng.getrandbits(8))
        descriptor += bytes([first, ext]) + fields
    else:
        descriptor.append(first)
    if key:
        size = struct.pack("<HH", rng.choice((320, 640, 1280)), rng.choice((180, 360, 720)))
        tag = bytes([rng.getrandbits(8) & 0xFE]) + rng.randbytes(2) + b"\x9d\x01\x2a" + size
    else:
        tag = bytes([rng.getrandbits(8) | 0x01]) + rng.randbytes(2)
    return bytes(descriptor) + tag + rng.randbytes(rng.choice((0, 8, 40, 200, 1000)))


def opus_payload(rng: random.Random) -> bytes:
    return bytes([rng.getrandbits(8)]) + rng.randbytes(rng.choice((2, 20, 60, 120, 300)))


def extensions(rng: random.Random, kind: str) -> bytes:
    """A header-extension block as a browser would send it, or odd but valid ones."""
    roll = rng.random()
    if roll < 0.25:
        return b""
    if roll < 0.3:  # RFC 8285 §4.3 two-byte form, which the relay keeps opaque
        two_byte = b"".join(
            bytes([rng.randrange(1, 256), n]) + rng.randbytes(n)
            for n in rng.choices((0, 1, 3, 17, 40), k=rng.randint(1, 3))
        )
        return extension_block(TWO_BYTE_PROFILE, two_byte)
    if roll < 0.32:
        return extension_block(rng.getrandbits(16), rng.randbytes(4 * rng.randint(0, 3)))
    elements: list[bytes] = []
    if rng.random() < 0.7:
        elements.append(_one_byte(MID_EXTENSION_ID, rng.choice((b"0", b"1", b"12"))))
    if rng.random() < 0.5:
        elements.append(_one_byte(2, rng.randbytes(3)))  # abs-send-time
    if kind == "audio" and rng.random() < 0.6:
        elements.append(_one_byte(3, rng.randbytes(1)))  # audio level
    if rng.random() < 0.4:
        elements.append(_one_byte(5, rng.randbytes(2)))  # transport-wide sequence
    if rng.random() < 0.1:
        elements.append(_one_byte(14, rng.randbytes(16)))
    rng.shuffle(elements)
    if rng.random() < 0.1:  # padding bytes between elements are allowed
        elements.insert(rng.randint(0, len(elements)), bytes(rng.randint(1, 3)))
    if rng.random() < 0.03:  # id 15 stops the parse; what follows is ignored
        elements.append(b"\xf3" + rng.randbytes(rng.randint(0, 6)))
    return extension_block(ONE_BYTE_PROFILE, b"".join(elements))


class RtpSource:
    """One publisher's stream: valid packets whose sequence numbers mostly run on
    and sometimes skip, repeat, come late, jump far, or are steered onto 65535."""

    __slots__ = ("kind", "payload_type", "rng", "sequence", "ssrc", "timestamp")

    def __init__(self, rng: random.Random, kind: str, payload_type: int) -> None:
        self.rng = rng
        self.kind = kind
        self.payload_type = payload_type
        self.ssrc = rng.getrandbits(32)
        self.sequence = 65535 - rng.randrange(40)
        self.timestamp = rng.getrandbits(32)

    def next_sequence(self) -> int:
        rng, roll = self.rng, self.rng.random()
        if roll < 0.8:
            step = 1
        elif roll < 0.87:
            step = rng.randint(2, 30)  # loss
        elif roll < 0.9:
            step = rng.randint(31, 400)  # a burst around the NACK bound
        elif roll < 0.93:
            return (self.sequence - rng.randint(0, 12)) & 0xFFFF  # late or duplicate
        elif roll < 0.95:
            step = rng.randint(3000, 62000)  # huge jump either way
        elif roll < 0.99:
            self.sequence = 65535 - rng.randrange(3)  # about to wrap
            step = 0
        else:
            step = rng.getrandbits(16)
        self.sequence = (self.sequence + step) & 0xFFFF
        return self.sequence

    def next(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.0005:  # a new SSRC, as after a restart
            self.ssrc = rng.getrandbits(32)
        if rng.random() < 0.3:
            self.timestamp = (self.timestamp + CLOCK_STEP[self.kind]) & 0xFFFFFFFF
        if self.kind == "video":
            payload = vp8_payload(rng, key=rng.random() < 0.04)
        else:
            payload = opus_payload(rng)
        sequence = self.next_sequence()
        if rng.random() < 0.05:  # aiortc's serializer, for independence (no padding)
            packet = RtpPacket(self.payload_type, rng.getrandbits(1), sequence,
                               self.timestamp, self.ssrc, payload)  # fmt: skip
            packet.csrc = [rng.getrandbits(32) for _ in range(rng.randint(0, 3))]
            return bytes(packet.serialize())
        padding = rng.choice((1, 4, 255, rng.randint(1, 255))) if rng.random() < 0.08 else 0
        csrcs = tuple(rng.getrandbits(32) for _ in range(rng.choice((0, 0, 0, 1, 2, 15))))
        return rtp_packet(self.payload_type, sequence, self.timestamp, self.ssrc, payload,
                          marker=int(rng.random() < 0.2), csrcs=csrcs,
                          extension=extensions(rng, self.kind), padding=padding)  # fmt: skip


def _lost_near(rng: random.Random, newest: int) -> list[int]:
    """Sequence numbers a subscriber could NACK: recent ones, wraps, random ones."""
    lost = [(newest - rng.randint(1, rng.choice((20, 300, 1500)))) & 0xFFFF
            for _ in range(rng.choice((1, 1, 2, 5, 17, 40)))]  # fmt: skip
    if rng.random() < 0.1:
        lost += [65535, 0, 1]
    if rng.random() < 0.1:
        lost.append(rng.getrandbits(16))
    return lost


def rtcp_compound(
    rng: random.Random,
    sender_ssrcs: list[int],
    media_ssrcs: list[int],
    newest: Callable[[int], int],
) -> bytes:
    """A compound as a browser sends it: SR or RR, SDES, then feedback; or feedback
    alone (RFC 5506). SR come from `sender_ssrcs`, feedback names `media_ssrcs`, and
    NACKs ask for numbers just before `newest(media_ssrc)`."""

    def ssrc(pool: list[int]) -> int:
        return rng.choice(pool) if pool and rng.random() < 0.9 else rng.getrandbits(32)

    me = rng.getrandbits(32)
    parts: list[bytes] = []
    if rng.random() < 0.8:
        if rng.random() < 0.5:
            sender = ssrc(sender_ssrcs)
            ntp, rtp_ts = rng.getrandbits(64), rng.getrandbits(32)
            packets, octets = rng.getrandbits(32), rng.getrandbits(32)
            if rng.random() < 0.5:
                parts.append(rtcp.sender_report(sender, ntp, rtp_ts, packets, octets))
            else:
                info = RtcpSenderInfo(ntp, rtp_ts, packets, octets)
                parts.append(bytes(RtcpSrPacket(sender, info, _aiortc_blocks(rng))))
        elif rng.random() < 0.5:
            blocks = [
                rtcp.report_block(rng.getrandbits(32), rng.getrandbits(8),
                                  rng.randint(-(2**23), 2**23 - 1), rng.getrandbits(32),
                                  rng.getrandbits(32), rng.getrandbits(32), rng.getrandbits(32))
                for _ in range(rng.randint(0, 3))
            ]  # fmt: skip
            parts.append(rtcp.receiver_report(me, blocks))
        else:
            parts.append(bytes(RtcpRrPacket(me, _aiortc_blocks(rng))))
        cname = rng.randbytes(rng.choice((0, 1, 16, 36)))
        if rng.random() < 0.5:
            parts.append(rtcp.sdes_cname(me, cname))
        else:
            parts.append(bytes(RtcpSdesPacket([RtcpSourceInfo(me, [(1, cname)])])))
    for _ in range(rng.choice((0, 1, 1, 1, 2, 3))):
        media = ssrc(media_ssrcs)
        kind = rng.randrange(6)
        if kind == 0:
            parts.append(rtcp.pli(me, media) if rng.random() < 0.5
                         else bytes(RtcpPsfbPacket(1, me, media)))  # fmt: skip
        elif kind == 1:
            fci = b"".join(struct.pack("!IBxxx", ssrc(media_ssrcs), rng.getrandbits(8))
                           for _ in range(rng.choice((0, 1, 1, 2))))  # fmt: skip
            parts.append(bytes(RtcpPsfbPacket(4, me, 0, fci)))
        elif kind == 2:
            lost = _lost_near(rng, newest(media))
            if rng.random() < 0.6:
                parts.append(rtcp.nack(me, media, lost))
            else:  # aiortc packs sorted, distinct numbers; an empty list: zero items
                lost = sorted(set(lost)) if rng.random() < 0.9 else []
                parts.append(bytes(RtcpRtpfbPacket(1, me, media, lost)))
        elif kind == 3:
            bitrate = rng.choice((0, 30_000, 2_500_000, rng.getrandbits(40)))
            targets = [ssrc(media_ssrcs) for _ in range(rng.choice((0, 1, 1, 2)))]
            if rng.random() < 0.5:
                parts.append(rtcp.remb(me, bitrate, targets))
            else:
                parts.append(bytes(RtcpPsfbPacket(15, me, 0, pack_remb_fci(bitrate, targets))))
        elif kind == 4:
            parts.append(bytes(RtcpByePacket([me])))
        else:  # types the relay does not act on: APP, XR, generic RTPFB (TWCC)
            body = struct.pack("!II", me, media) + rng.randbytes(4 * rng.randint(0, 4))
            packet_type, fmt = rng.choice(((204, 0), (207, 0), (205, 15), (206, 2)))
            parts.append(struct.pack("!BBH", 0x80 | fmt, packet_type, len(body) // 4) + body)
    return b"".join(parts)


def _aiortc_blocks(rng: random.Random) -> list[RtcpReceiverInfo]:
    return [
        RtcpReceiverInfo(rng.getrandbits(32), rng.getrandbits(8), rng.randint(-(2**23), 2**23 - 1),
                         rng.getrandbits(32), rng.getrandbits(32), rng.getrandbits(32),
                         rng.getrandbits(32))
        for _ in range(rng.randint(0, 2))
    ]  # fmt: skip


# -- mutations -----------------------------------------------------------------

_BYTES = (0x00, 0x01, 0x0F, 0x10, 0x7F, 0x80, 0x81, 0xBE, 0xDE, 0xF0, 0xFE, 0xFF)
_WORDS = (0, 1, 2, 3, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)


def _pos(rng: random.Random, buf: bytearray, width: int = 1) -> int:
    return rng.randrange(len(buf) - width + 1)


def _flip_bits(rng: random.Random, buf: bytearray) -> None:
    for _ in range(rng.randint(1, 4)):
        if buf:
            buf[_pos(rng, buf)] ^= 1 << rng.randrange(8)


def _interesting_byte(rng: random.Random, buf: bytearray) -> None:
    if buf:
        buf[_pos(rng, buf)] = rng.choice(_BYTES)


def _random_bytes(rng: random.Random, buf: bytearray) -> None:
    for _ in range(rng.randint(1, 8)):
        if buf:
            buf[_pos(rng, buf)] = rng.getrandbits(8)


def _interesting_word(rng: random.Random, buf: bytearray) -> None:
    if len(buf) >= 2:
        struct.pack_into("!H", buf, _pos(rng, buf, 2), rng.choice(_WORDS))


def _truncate(rng: random.Random, buf: bytearray) -> None:
    del buf[rng.randrange(len(buf) + 1) :]


def _chop(rng: random.Random, buf: bytearray) -> None:
    del buf[max(0, len(buf) - rng.randint(1, 4)) :]


def _insert(rng: random.Random, buf: bytearray) -> None:
    at = rng.randrange(len(buf) + 1)
    n = rng.choice((1, 2, 3, 4, 8, 64))
    buf[at:at] = rng.randbytes(n) if rng.random() < 0.5 else bytes([rng.choice(_BYTES)]) * n


def _delete(rng: random.Random, buf: bytearray) -> None:
    at = rng.randrange(len(buf) + 1)
    del buf[at : at + rng.choice((1, 2, 3, 4, 8, 64))]


def _duplicate(rng: random.Random, buf: bytearray) -> None:
    at = rng.randrange(len(buf) + 1)
    chunk = buf[at : at + rng.choice((1, 4, 12, 100))]
    buf[at:at] = chunk


def _append(rng: random.Random, buf: bytearray) -> None:
    buf += rng.randbytes(rng.choice((1, 3, 4, 16, 1000)))


_GENERIC = (
    _flip_bits, _flip_bits, _interesting_byte, _random_bytes, _interesting_word,
    _truncate, _chop, _insert, _delete, _duplicate, _append,
)  # fmt: skip


def _rtp_csrc_count(rng: random.Random, buf: bytearray) -> None:
    if buf:
        buf[0] = (buf[0] & 0xF0) | rng.choice((15, 15, 1, rng.randrange(16)))


def _rtp_flags(rng: random.Random, buf: bytearray) -> None:
    if buf:
        buf[0] ^= rng.choice((0x10, 0x20, 0x30, 0x40, 0x80, 0xC0))


def _rtp_padding(rng: random.Random, buf: bytearray) -> None:
    if len(buf) > 1:
        buf[0] |= 0x20
        n = len(buf)
        buf[-1] = rng.choice((0, 1, 255, n - 12, n - 13, n - 11, n, rng.randrange(256))) & 0xFF


def _rtp_extension_at(buf: bytearray) -> int | None:
    if not buf:
        return None
    at = FIXED_HEADER + 4 * (buf[0] & 0x0F)
    return at if at + 4 <= len(buf) else None


def _rtp_extension_length(rng: random.Random, buf: bytearray) -> None:
    at = _rtp_extension_at(buf)
    if at is None:
        return
    buf[0] |= 0x10
    current = struct.unpack_from("!H", buf, at + 2)[0]
    room = (len(buf) - at - 4) // 4
    choice = rng.choice((0, 0xFFFF, 0x8000, current + 1, current - 1, room, room + 1))
    struct.pack_into("!H", buf, at + 2, choice & 0xFFFF)


def _rtp_extension_element(rng: random.Random, buf: bytearray) -> None:
    at = _rtp_extension_at(buf)
    if at is None:
        return
    words = struct.unpack_from("!H", buf, at + 2)[0]
    end = min(len(buf), at + 4 + 4 * words)
    if end > at + 4:
        i = rng.randrange(at + 4, end)
        high, low = rng.randrange(16), rng.randrange(16)
        buf[i] = rng.choice((0xF0 | low, high << 4 | 0x0F, 0xFF, 0x10, 0x00, high << 4 | low))


def _rtp_extension_profile(rng: random.Random, buf: bytearray) -> None:
    at = _rtp_extension_at(buf)
    if at is not None:
        buf[0] |= 0x10
        profile = rng.choice((ONE_BYTE_PROFILE, TWO_BYTE_PROFILE, 0x100F, 0, 0xFFFF))
        struct.pack_into("!H", buf, at, profile)


def _rtp_payload_type(rng: random.Random, buf: bytearray) -> None:
    if len(buf) > 1:
        pt = rng.choice((AUDIO_PT, VIDEO_PT, RTX_PT, 0, 72, 77, 127, rng.randrange(128)))
        buf[1] = (buf[1] & 0x80) | pt


_RTP = (
    _rtp_csrc_count, _rtp_flags, _rtp_padding, _rtp_padding, _rtp_extension_length,
    _rtp_extension_length, _rtp_extension_element, _rtp_extension_element,
    _rtp_extension_profile, _rtp_payload_type,
)  # fmt: skip


def _rtcp_starts(buf: bytearray) -> list[int]:
    """Offsets of the packets in a compound, as far as the lengths can be followed."""
    starts, at = [], 0
    while at + 4 <= len(buf):
        starts.append(at)
        at += 4 + 4 * struct.unpack_from("!H", buf, at + 2)[0]
    return starts


def _rtcp_length(rng: random.Random, buf: bytearray) -> None:
    if starts := _rtcp_starts(buf):
        at = rng.choice(starts)
        current = struct.unpack_from("!H", buf, at + 2)[0]
        value = rng.choice((0, 1, 2, 0xFFFF, current + 1, current - 1, rng.getrandbits(16)))
        struct.pack_into("!H", buf, at + 2, value & 0xFFFF)


def _rtcp_count(rng: random.Random, buf: bytearray) -> None:
    if starts := _rtcp_starts(buf):
        at = rng.choice(starts)
        buf[at] = (buf[at] & 0xE0) | rng.choice((0, 31, 1, 4, 15, rng.randrange(32)))


def _rtcp_type(rng: random.Random, buf: bytearray) -> None:
    if starts := _rtcp_starts(buf):
        at = rng.choice(starts)
        buf[at + 1] = rng.choice((200, 201, 202, 203, 205, 206, rng.randrange(192, 224)))


def _rtcp_flags(rng: random.Random, buf: bytearray) -> None:
    if starts := _rtcp_starts(buf):
        buf[rng.choice(starts)] ^= rng.choice((0x20, 0x40, 0x80, 0xC0))


def _rtcp_zero_items(rng: random.Random, buf: bytearray) -> None:
    """Cut one packet's body to its two SSRCs: NACK, FIR or REMB with no items."""
    starts = _rtcp_starts(buf)
    for at in rng.sample(starts, len(starts)):
        words = struct.unpack_from("!H", buf, at + 2)[0]
        if words > 2 and at + 4 + 4 * words <= len(buf):
            del buf[at + 12 : at + 4 + 4 * words]
            struct.pack_into("!H", buf, at + 2, 2)
            return


def _rtcp_absurd_items(rng: random.Random, buf: bytearray) -> None:
    """Claim many items: a REMB SSRC count of 255, or a NACK or FIR body of
    hundreds of entries naming 65535, 0 and random numbers."""
    starts = _rtcp_starts(buf)
    if not starts:
        return
    at = rng.choice(starts)
    if len(buf) >= at + 17 and buf[at + 12 : at + 16] == rtcp.REMB_ID:
        buf[at + 16] = rng.choice((255, 0, 128))
        return
    count = rng.choice((1, 16, 300))
    items = bytearray(rng.randbytes(4 * count))
    for _ in range(rng.randint(1, 4)):
        struct.pack_into("!HH", items, 4 * rng.randrange(count), rng.choice((65535, 0)),
                         rng.choice((0xFFFF, 0)))  # fmt: skip
    end = min(len(buf), at + 4 + 4 * struct.unpack_from("!H", buf, at + 2)[0])
    buf[end:end] = items
    words = struct.unpack_from("!H", buf, at + 2)[0] + len(items) // 4
    struct.pack_into("!H", buf, at + 2, min(words, 0xFFFF))


def _rtcp_padding(rng: random.Random, buf: bytearray) -> None:
    """Pad one packet (RFC 3550 §6.4.1 allows it on the last): a correct count, or
    zero, or more than the packet holds."""
    if starts := _rtcp_starts(buf):
        at = rng.choice(starts)
        words = struct.unpack_from("!H", buf, at + 2)[0]
        end = min(len(buf), at + 4 + 4 * words)
        n = rng.choice((1, 2, 3, 4, 8))
        count = rng.choice((n, n, n, 0, 255, n + 1, 4 * words + n))
        buf[end:end] = bytes(n - 1) + bytes([count & 0xFF])
        buf[at] |= 0x20
        struct.pack_into("!H", buf, at + 2, min(0xFFFF, words + (n + 3) // 4))


def _rtcp_cut_at_boundary(rng: random.Random, buf: bytearray) -> None:
    if starts := _rtcp_starts(buf):
        del buf[max(0, rng.choice(starts) + rng.randint(-3, 3)) :]


_RTCP = (
    _rtcp_length, _rtcp_length, _rtcp_count, _rtcp_type, _rtcp_flags, _rtcp_zero_items,
    _rtcp_zero_items, _rtcp_absurd_items, _rtcp_absurd_items, _rtcp_cut_at_boundary,
    _rtcp_padding,
)  # fmt: skip


class Mutator:
    """Stacks one to five mutations, half of them aware of the packet format; can
    also splice in part of another packet from `donor`."""

    __slots__ = ("donor", "rng")

    def __init__(self, rng: random.Random, donor: Callable[[], bytes]) -> None:
        self.rng = rng
        self.donor = donor

    def mutate(self, data: bytes, rtcp_format: bool) -> bytes:
        rng = self.rng
        buf = bytearray(data)
        specific = _RTCP if rtcp_format else _RTP
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 5))):
            roll = rng.random()
            if roll < 0.5:
                rng.choice(specific)(rng, buf)
            elif roll < 0.95:
                rng.choice(_GENERIC)(rng, buf)
            else:
                other = self.donor()
                at = rng.randrange(len(buf) + 1)
                start = rng.randrange(len(other) + 1)
                buf[at:] = other[start:] if rng.random() < 0.5 else other
        return bytes(buf)


# -- oracles -------------------------------------------------------------------


def _stops_at_id_15(block: bytes) -> bool:
    i = 0
    while i < len(block):
        if block[i] == 0:
            i += 1
        elif block[i] >> 4 == 15:
            return True
        else:
            i += 2 + (block[i] & 0x0F)
    return False


def check_rtp(data: bytes) -> RtpHeader | None:
    """RtpHeader.parse raises nothing but ValueError; it accepts exactly what
    aiortc's parser accepts (less what aiortc misreads: RFC 8285 two-byte elements
    and the id-15 stop, which the relay need not read) and agrees on every field."""
    try:
        header: RtpHeader | None = RtpHeader.parse(data)
    except ValueError:
        header = None
    try:
        theirs: RtpPacket | None = RtpPacket.parse(data)
        refusal = ""
    except ValueError as exc:
        theirs, refusal = None, str(exc)
    if header is None:
        assert theirs is None, "RtpHeader.parse refused a packet aiortc accepts"
        return None
    end = len(data) - (data[-1] if data[0] & 0x20 else 0)
    assert FIXED_HEADER + 4 * (data[0] & 0x0F) <= header.payload_offset <= end <= len(data)
    assert header.marker in (0, 1) and 0 <= header.payload_type < 128
    for ext_id, value in header.extensions:
        assert 0 <= ext_id <= 14 and 1 <= len(value) <= 16, header.extensions
    payload = data[header.payload_offset :]
    assert is_vp8_keyframe_start(payload) in (True, False)
    assert is_vp8_keyframe_start(memoryview(payload)) == is_vp8_keyframe_start(payload)
    block = b""
    profile = None
    if data[0] & 0x10:
        at = FIXED_HEADER + 4 * (data[0] & 0x0F)
        profile, words = struct.unpack_from("!HH", data, at)
        block = data[at + 4 : at + 4 + 4 * words]
    if profile != ONE_BYTE_PROFILE:
        assert header.extensions == [], "extensions read from a block of another profile"
    if theirs is None:
        assert "header extension" in refusal, f"aiortc refused it: {refusal}"
        assert profile != ONE_BYTE_PROFILE or _stops_at_id_15(block), refusal
        return header
    assert (header.marker, header.payload_type, header.sequence, header.timestamp,
            header.ssrc) == (theirs.marker, theirs.payload_type, theirs.sequence_number,
                             theirs.timestamp, theirs.ssrc)  # fmt: skip
    assert data[header.payload_offset : end] == theirs.payload
    if profile == ONE_BYTE_PROFILE:
        elements = unpack_header_extensions(ONE_BYTE_PROFILE, block)
        stop = next((i for i, (ext_id, _) in enumerate(elements) if ext_id == 15), None)
        assert header.extensions == elements[:stop], (header.extensions, elements)
    return header


def check_rtcp(data: bytes) -> list[rtcp.Feedback]:
    """rtcp.parse never raises, returns well-typed records in range, and agrees with
    what aiortc's parser reads from the same datagram when aiortc accepts it."""
    records = rtcp.parse(data)
    assert isinstance(records, list)
    for item in records:
        if isinstance(item, rtcp.SenderReport):
            assert 0 <= item.ntp < 2**64
            for value in (item.ssrc, item.rtp_timestamp, item.packets, item.octets):
                assert 0 <= value < 2**32
        elif isinstance(item, rtcp.KeyframeRequest):
            assert 0 <= item.media_ssrc < 2**32
        elif isinstance(item, rtcp.Nack):
            assert 0 <= item.media_ssrc < 2**32 and item.lost, item
            assert all(0 <= s <= 0xFFFF for s in item.lost), item
            assert len(item.lost) <= 17 * len(data) // 4
        elif isinstance(item, rtcp.Remb):
            assert 0 <= item.bitrate <= REMB_MAX and len(item.ssrcs) <= 255, item
            assert all(0 <= s < 2**32 for s in item.ssrcs), item
            assert rtcp.parse(rtcp.remb(1, item.bitrate, item.ssrcs)) == [item]
        elif isinstance(item, rtcp.ReportBlock):
            assert 0 <= item.fraction_lost <= 255, item
            assert all(0 <= v < 2**32 for v in (item.ssrc, item.lsr, item.dlsr)), item
        else:
            raise AssertionError(f"unexpected record {item!r}")
    assert rtcp.keyframe_requests(data) == [
        r.media_ssrc for r in records if isinstance(r, rtcp.KeyframeRequest)
    ]
    try:
        theirs = RtcpPacket.parse(data)
    except Exception:
        return records  # aiortc refuses it; the relay reads what it can
    assert records == _expected_records(theirs), (records, theirs)
    return records


def _expected_records(packets: list[Any]) -> list[rtcp.Feedback]:
    """What the relay should read from packets aiortc parsed (RFC 4585, 5104, REMB)."""
    found: list[rtcp.Feedback] = []
    for packet in packets:
        if isinstance(packet, RtcpSrPacket):
            info = packet.sender_info
            found.append(rtcp.SenderReport(packet.ssrc, info.ntp_timestamp, info.rtp_timestamp,
                                           info.packet_count, info.octet_count))  # fmt: skip
            found += [_report_block(r) for r in packet.reports]
        elif isinstance(packet, RtcpRrPacket):
            found += [_report_block(r) for r in packet.reports]
        elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == 1 and packet.lost:
            found.append(rtcp.Nack(packet.media_ssrc, [s & 0xFFFF for s in packet.lost]))
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == 1:
            found.append(rtcp.KeyframeRequest(packet.media_ssrc))
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == 4:
            fci = packet.fci
            found += [rtcp.KeyframeRequest(struct.unpack_from("!I", fci, at)[0])
                      for at in range(0, len(fci) - 7, 8)]  # fmt: skip
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == 15:
            fci = packet.fci
            if len(fci) >= 8 and fci[:4] == b"REMB":
                exponent, mantissa = fci[5] >> 2, (fci[5] & 3) << 16 | fci[6] << 8 | fci[7]
                count = min(fci[4], (len(fci) - 8) // 4)
                ssrcs = list(struct.unpack_from(f"!{count}I", fci, 8))
                found.append(rtcp.Remb(mantissa << exponent, ssrcs))
    return found


def _report_block(info: Any) -> rtcp.ReportBlock:
    return rtcp.ReportBlock(info.ssrc, info.fraction_lost, info.lsr, info.dlsr)


# -- forwarding ----------------------------------------------------------------


def _output(rng: random.Random, payload_type: int, mid: bytes,
            rtx: tuple[int, int] | None) -> SubscriberOutput:  # fmt: skip
    """A subscriber output whose random starting points come from `rng` (so a run is
    reproducible) and lie close to a wrap half of the time."""
    mid_element = _one_byte(MID_EXTENSION_ID, mid) if mid else b""
    output = SubscriberOutput(rng.getrandbits(32), payload_type, mid_element, rtx=rtx)
    near_wrap = rng.random() < 0.5
    output.next_sequence = 65530 + rng.randrange(6) if near_wrap else rng.getrandbits(16)
    output.rtx_sequence = 65535 if near_wrap else rng.getrandbits(16)
    output.timestamp_base = 2**32 - 1000 if near_wrap else rng.getrandbits(32)
    return output


class Numbering:
    """The sequence numbers a forwarder should give, from their definition: padding-
    only packets are dropped, and a forwarded packet's number is its source number
    (unwrapped) minus the padding-only packets dropped before it; a packet more than
    SKIP_WINDOW behind the newest is dropped."""

    def __init__(self) -> None:
        self.highest: int | None = None
        self.dropped: set[int] = set()

    def place(self, data: bytes, header: RtpHeader) -> int | None:
        sequence = header.sequence
        if self.highest is None:
            self.highest = sequence + 0x10000
            extended = self.highest
        else:
            delta = (sequence - self.highest) % 0x10000
            extended = self.highest + (delta - 0x10000 if delta >= 0x8000 else delta)
            self.highest = max(self.highest, extended)
        if extended < self.highest - SKIP_WINDOW:
            return None
        if data[0] & 0x20 and data[-1] >= len(data) - header.payload_offset:
            self.dropped.add(extended)
            return None
        return (extended - sum(1 for d in self.dropped if d <= extended)) % 0x10000


class ForwardingHarness:
    """A video and an audio TrackForwarder with steady and coming-and-going
    subscribers; checks every packet they emit against the packet that went in."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.keyframe_requests = 0
        self.forwarders = {
            "video": TrackForwarder("video", self._request_keyframe),
            "audio": TrackForwarder("audio", self._request_keyframe),
        }
        self.video_rtx = _output(rng, VIDEO_PT, b"1", (rng.getrandbits(32), RTX_PT))
        self.video_plain = _output(rng, 100, b"", None)
        self.audio = _output(rng, AUDIO_PT, b"12", None)
        self.steady = (self.video_rtx, self.video_plain, self.audio)
        self.forwarders["video"].add_subscriber(self.video_rtx)
        self.forwarders["video"].add_subscriber(self.video_plain)
        self.forwarders["audio"].add_subscriber(self.audio)
        self.coming_and_going: dict[str, SubscriberOutput | None] = {"video": None, "audio": None}
        # What each steady video output was sent, by its sequence number: (input, packet).
        self.sent: dict[int, dict[int, tuple[int, bytes]]] = {
            self.video_rtx.ssrc: {}, self.video_plain.ssrc: {}
        }  # fmt: skip
        self.cache_writer = [-1] * CACHE_SIZE  # which input each cache slot holds
        self.numbering = {"video": Numbering(), "audio": Numbering()}
        self.counts: Counts = Counter()

    def _request_keyframe(self, layer: int) -> None:
        assert layer == 0, "a single-stream track asked for a key frame of another layer"
        self.keyframe_requests += 1

    def kind_of(self, output: SubscriberOutput) -> str:
        return "video" if output in self.forwarders["video"].subscribers else "audio"

    def outputs(self) -> list[SubscriberOutput]:
        return [o for f in self.forwarders.values() for o in f.subscribers]

    def forward(self, kind: str, data: bytes, header: RtpHeader, tag: int) -> None:
        forwarder = self.forwarders[kind]
        requests = self.keyframe_requests
        out = forwarder.forward(data, header)
        assert self.keyframe_requests == requests, "forwarding asked for a keyframe"
        compact = self.numbering[kind].place(data, header)
        if compact is None:  # padding only, or later than remembered: nothing goes out
            assert out == [], "a padding-only or too-late packet was forwarded"
            self.counts["not_forwarded"] += 1
            return
        if kind == "video":
            self.cache_writer[compact % CACHE_SIZE] = tag
            waiting = [o for o in forwarder.subscribers if not o.started]
            assert forwarder.layers[0].joining == waiting, (forwarder.layers[0].joining, waiting)
        assert len({id(o) for o, _ in out}) == len(out) <= len(forwarder.subscribers)
        for output, packet in out:
            assert output.started
            self._check_rewrite(output, packet, data, header, compact)
            if output.ssrc in self.sent:
                self.sent[output.ssrc][RtpHeader.parse(packet).sequence] = (tag, packet)
        self.counts["forwarded"] += len(out)

    def _check_rewrite(
        self, output: SubscriberOutput, packet: bytes, data: bytes, header: RtpHeader,
        compact: int,
    ) -> None:  # fmt: skip
        """The copy keeps the payload (with its padding), marker and extensions, and
        carries the subscriber's SSRC, payload type, MID and continuous numbering."""
        rewritten = RtpHeader.parse(packet)
        assert rewritten.ssrc == output.ssrc and rewritten.payload_type == output.payload_type
        assert rewritten.marker == header.marker
        assert rewritten.sequence == (compact + output.seq_offset) & 0xFFFF
        assert rewritten.timestamp == (header.timestamp + output.ts_offset) & 0xFFFFFFFF
        assert packet[rewritten.payload_offset :] == data[header.payload_offset :]
        assert packet[0] & 0xEF == 0x80 | data[0] & 0x20, "version 2, padding bit kept, no CSRC"
        expected = [(i, v) for i, v in header.extensions if i != MID_EXTENSION_ID]
        if output.mid_element:
            expected.insert(0, (MID_EXTENSION_ID, output.mid_element[1:]))
        assert rewritten.extensions == expected, (rewritten.extensions, expected)
        if not packet[0] & 0x10:
            assert not expected
        theirs = RtpPacket.parse(packet)  # a real endpoint's parser accepts it
        assert theirs.ssrc == output.ssrc and theirs.csrc == []

    def retransmit(self, output: SubscriberOutput, lost: list[int]) -> list[bytes]:
        """Answers from the cache are the packets once sent (or their RTX form)."""
        forwarder = self.forwarders[self.kind_of(output)]
        rtx_sequence, retransmitted = output.rtx_sequence, output.retransmitted
        packets = forwarder.retransmit(output, lost)
        assert len(packets) <= len(lost)
        if not output.started or not forwarder.is_video:
            assert packets == []
        assert output.retransmitted == retransmitted + len(packets)
        wanted, answered = set(lost), set()
        for packet in packets:
            header = RtpHeader.parse(packet)
            payload = packet[header.payload_offset :]
            if output.rtx_ssrc:
                assert (header.ssrc, header.payload_type) == (
                    output.rtx_ssrc,
                    output.rtx_payload_type,
                )
                assert header.sequence == rtx_sequence
                rtx_sequence = (rtx_sequence + 1) & 0xFFFF
                (sequence,) = struct.unpack_from("!H", payload)
                payload = payload[2:]
            else:
                assert (header.ssrc, header.payload_type) == (output.ssrc, output.payload_type)
                sequence = header.sequence
            assert sequence in wanted, (sequence, lost)
            assert sequence not in answered, f"{sequence} sent twice for one NACK"
            answered.add(sequence)
            original = (sequence - output.seq_offset) & 0xFFFF
            entry = forwarder.layers[0].cache[original % CACHE_SIZE]
            assert entry is not None and entry[0] == original and entry[5] == payload
            assert header.marker << 7 == entry[2] and packet[0] & 0x20 == entry[3]
            assert header.timestamp == (entry[1] + output.ts_offset) & 0xFFFFFFFF
            sent = self.sent.get(output.ssrc, {}).get(sequence)
            if sent is not None and sent[0] == self.cache_writer[original % CACHE_SIZE]:
                once, at = sent[1], header.payload_offset
                if output.rtx_ssrc:  # RFC 4588 §4: the original with its OSN first
                    once = b"".join((
                        once[:1], bytes([once[1] & 0x80 | output.rtx_payload_type]),
                        struct.pack("!H", header.sequence), once[4:8],
                        struct.pack("!I", output.rtx_ssrc), once[FIXED_HEADER:at],
                        struct.pack("!H", sequence), once[at:],
                    ))  # fmt: skip
                assert packet == once, "a retransmission differs from what was sent"
                self.counts["retransmissions_matched"] += 1
        assert output.rtx_sequence == rtx_sequence
        self.counts["retransmitted"] += len(packets)
        return packets

    def sender_report(self, output: SubscriberOutput, ntp: int, rtp_timestamp: int) -> None:
        report = TrackForwarder.sender_report(output, ntp, rtp_timestamp)
        if not output.started:
            assert report is None
            return
        assert report is not None
        assert rtcp.parse(report) == [rtcp.SenderReport(
            output.ssrc, ntp & (2**64 - 1), (rtp_timestamp + output.ts_offset) & 0xFFFFFFFF,
            output.packets & 0xFFFFFFFF, output.octets & 0xFFFFFFFF)]  # fmt: skip
        (theirs,) = RtcpPacket.parse(report)
        assert isinstance(theirs, RtcpSrPacket) and theirs.ssrc == output.ssrc
        self.counts["sender_reports"] += 1

    def churn(self) -> None:
        """Add or remove the coming-and-going subscriber of one track."""
        kind = self.rng.choice(("video", "audio"))
        forwarder = self.forwarders[kind]
        current = self.coming_and_going[kind]
        requests = self.keyframe_requests
        if current is None:
            output = _output(self.rng, self.rng.randrange(96, 128), b"7", None)
            forwarder.add_subscriber(output)
            self.coming_and_going[kind] = output
            assert self.keyframe_requests == requests + (kind == "video")
        else:
            forwarder.remove_subscriber(current)
            forwarder.remove_subscriber(current)  # twice: the second is a no-op
            self.coming_and_going[kind] = None
        if kind == "video":
            waiting = [o for o in forwarder.subscribers if not o.started]
            assert forwarder.layers[0].joining == waiting

    def act_on(self, records: list[rtcp.Feedback]) -> None:
        """What the room does with feedback naming these outputs."""
        by_ssrc = {o.ssrc: o for o in self.outputs()}
        for item in records:
            if isinstance(item, rtcp.Nack) and item.media_ssrc in by_ssrc:
                self.retransmit(by_ssrc[item.media_ssrc], item.lost)
            elif isinstance(item, rtcp.SenderReport):
                for output in self.outputs():
                    self.sender_report(output, item.ntp, item.rtp_timestamp)

    def newest(self, media_ssrc: int) -> int:
        output = next((o for o in self.outputs() if o.ssrc == media_ssrc), None)
        return output.next_sequence if output is not None else self.rng.getrandbits(16)


# -- the runs ------------------------------------------------------------------


def run_pure(seed: int, inputs: int) -> Counts:
    """`inputs` datagrams (about 60 % RTP, 40 % RTCP; 85 % of them mutated) through
    the parsers and two forwarders, with NACKs, sender reports and subscriber churn."""
    rng = random.Random(seed)
    sources = {
        "video": RtpSource(rng, "video", VIDEO_PT),
        "audio": RtpSource(rng, "audio", AUDIO_PT),
    }
    harness = ForwardingHarness(rng)
    counts = harness.counts
    outputs = [o.ssrc for o in harness.steady]

    def compound() -> bytes:
        senders = [s.ssrc for s in sources.values()]
        return rtcp_compound(rng, senders, outputs, harness.newest)

    def donor() -> bytes:
        return sources["video"].next() if rng.random() < 0.5 else compound()

    mutator = Mutator(rng, donor)
    for index in range(inputs):
        is_rtp = rng.random() < 0.6
        kind = "video" if rng.random() < 0.7 else "audio"
        data = sources[kind].next() if is_rtp else compound()
        mutated = rng.random() < 0.85
        if mutated:
            data = mutator.mutate(data, rtcp_format=not is_rtp)
        stage = "rtp" if is_rtp else "rtcp"
        try:
            if is_rtp:
                header = check_rtp(data)
                if header is not None:
                    counts["rtp_parsed"] += 1
                    if header.payload_type == AUDIO_PT:
                        kind = "audio"
                    harness.forward(kind, data, header, index)
            else:
                records = check_rtcp(data)
                counts["rtcp_records"] += len(records)
                harness.act_on(records)
            stage = "nack, sender report or churn"
            if index % 7 == 0:
                output = rng.choice(harness.outputs())
                harness.retransmit(output, _lost_near(rng, output.next_sequence))
            if index % 50 == 0:
                for output in harness.outputs():
                    harness.sender_report(output, rng.getrandbits(64), rng.getrandbits(32))
            if index % 997 == 0:
                harness.churn()
        except Exception as exc:
            raise failure(seed, index, stage, data, _describe(exc)) from exc
        counts["inputs"] += 1
        counts["rtp" if is_rtp else "rtcp"] += 1
        counts["mutated"] += mutated
    return counts


class FuzzRoom:
    """Stands in for the room: checks each call the peer makes, and forwards and
    retransmits with a ForwardingHarness whose outputs are the peer's subscriptions.
    A failed check raises inside the peer's handler, which logs it; `run_peer`
    watches that log."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.harness = ForwardingHarness(rng)
        self.index = -1
        self.tracks: dict[str, SubscriberOutput] = {
            "track-video-rtx": self.harness.video_rtx,
            "track-video": self.harness.video_plain,
            "track-audio": self.harness.audio,
        }
        self.counts = self.harness.counts

    async def on_media(self, peer: ParticipantPeer, source: str, header: RtpHeader,
                       data: bytes, layer: int, now: float) -> None:  # fmt: skip
        assert isinstance(data, bytes) and source in ("microphone", "camera")
        kind = SOURCE_KINDS[source]
        assert peer._publish_pt[header.payload_type] == kind
        again = RtpHeader.parse(data)
        assert (again.sequence, again.timestamp, again.ssrc, again.payload_offset) == (
            header.sequence, header.timestamp, header.ssrc, header.payload_offset)  # fmt: skip
        # Without simulcast each kind is one stream, bound to the latest SSRC.
        stream = peer.incoming[header.ssrc]
        assert (layer, stream.rid) == (0, "") and stream.kind == kind, (layer, stream.kind, kind)
        assert peer.publish_ssrc[source] == {"": header.ssrc}
        assert stream.stats.ssrc == header.ssrc and stream.source == source
        assert len(peer.incoming) <= 2 and (stream.missing is None) == (kind == "audio")
        self.harness.forward(kind, data, header, self.index)
        self.counts["on_media"] += 1

    def on_codec(self, peer: ParticipantPeer, source: str, mime: str) -> None:
        assert mime == {"microphone": "audio/opus", "camera": "video/vp8"}[source], (source, mime)
        self.counts["on_codec"] += 1

    def on_keyframe_request(self, track_id: str, output: Output) -> None:
        assert self.tracks[track_id] is output, track_id
        self.counts["on_keyframe_request"] += 1

    async def on_nack(self, track_id: str, output: Output, lost: list[int]) -> None:
        track = self.tracks[track_id]
        assert track is output, track_id
        assert lost and all(isinstance(s, int) and 0 <= s <= 0xFFFF for s in lost), lost
        self.harness.retransmit(track, lost)
        self.counts["on_nack"] += 1

    def on_remb(self, track_id: str, output: Output, bitrate: int) -> None:
        assert self.tracks[track_id] is output, track_id
        assert isinstance(bitrate, int) and 0 <= bitrate <= REMB_MAX, bitrate
        (echo,) = rtcp.parse(rtcp.remb(1, bitrate, [output.ssrc]))  # what goes upstream
        assert echo == rtcp.Remb(bitrate, [output.ssrc]), (echo, bitrate)
        self.counts["on_remb"] += 1

    async def on_sender_report(self, peer: ParticipantPeer, source: str,
                               report: rtcp.SenderReport, layer: int) -> None:  # fmt: skip
        stream = peer.incoming[report.ssrc]
        assert stream.source == source and (stream.rid, stream.layer, layer) == ("", 0, 0)
        stats = stream.stats
        assert stats.ssrc == report.ssrc
        assert stats.last_sr == (report.ntp >> 16) & 0xFFFFFFFF
        for output in self.harness.outputs():
            self.harness.sender_report(output, report.ntp, report.rtp_timestamp)
        self.counts["on_sender_report"] += 1

    def sender_report_sent_at(self, lsr: int) -> float | None:
        assert 0 < lsr <= 0xFFFFFFFF, lsr  # a receiver report's LSR, never 0 (none sent)
        self.counts["sender_report_sent_at"] += 1
        return None

    def upstream_bitrate(self, peer: ParticipantPeer) -> int | None:
        return None

    def on_publish_negotiated(
        self, peer: ParticipantPeer, source: str, extensions: dict[int, str]
    ) -> None:
        raise AssertionError("the fuzzer applies no descriptions")


class SentPackets:
    """Stands in for the DTLS transport: keeps what the peer sends (NACKs)."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []

    async def _send_rtp(self, packet: bytes) -> None:
        self.packets.append(packet)


class _Swallowed(logging.Handler):
    """Collects log records carrying an exception: the peer's handlers catch
    everything and log it, so this is how an escaped exception is seen."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


def check_report_blocks(blocks: list[bytes], ssrcs: set[int]) -> None:
    """Reception report blocks are 24 bytes with in-range fields; the RR carrying
    them parses with aiortc's parser."""
    for block in blocks:
        assert len(block) == 24, block.hex()
        ssrc, fraction, *_ = struct.unpack("!IBBHIIII", block)
        assert ssrc in ssrcs and 0 <= fraction <= 255
    compound = rtcp.receiver_report(1, blocks) + rtcp.sdes_cname(1, b"conclave-relay")
    rr, _sdes = RtcpPacket.parse(compound)
    assert isinstance(rr, RtcpRrPacket) and len(rr.reports) == len(blocks)


async def run_peer(seed: int, inputs: int) -> Counts:
    """`inputs` datagrams into a real ParticipantPeer's RTP and RTCP handlers, as
    aiortc's DTLS transport hands them over after SRTP: RTP of its published audio
    and video, RTCP about them and about its three subscriptions, mostly mutated,
    sometimes each given to the other handler."""
    rng = random.Random(seed)
    room = FuzzRoom(rng)
    signalled: list[dict[str, Any]] = []

    async def signal(message: dict[str, Any]) -> None:
        signalled.append(message)

    peer = ParticipantPeer("fuzz-participant", signal, room)
    sent = SentPackets()
    swallowed = _Swallowed()
    logger = logging.getLogger("relay.peer")
    level = logger.level
    logger.addHandler(swallowed)
    logger.setLevel(logging.DEBUG)
    try:
        peer.add_publish("microphone")
        peer.add_publish("camera")
        for track_id, output in room.tracks.items():
            source = {"audio": "microphone", "video": "camera"}[room.harness.kind_of(output)]
            peer.add_subscription(track_id, "publisher", source)
            subscription = peer.subscriptions[track_id]
            subscription.output = output
            peer._by_output_ssrc[output.ssrc] = subscription
        peer._publish_pt = {AUDIO_PT: "audio", VIDEO_PT: "video"}
        peer._publish_mime = {AUDIO_PT: "audio/opus", VIDEO_PT: "video/vp8"}
        peer._transport = sent  # type: ignore[assignment]  # only _send_rtp is used
        counts = await _drive_peer(seed, inputs, rng, peer, room, sent, swallowed)
    finally:
        peer._transport = None
        logger.removeHandler(swallowed)
        logger.setLevel(level)
        await peer.close()
    assert not signalled, signalled
    return counts


async def _drive_peer(
    seed: int,
    inputs: int,
    rng: random.Random,
    peer: ParticipantPeer,
    room: FuzzRoom,
    sent: SentPackets,
    swallowed: _Swallowed,
) -> Counts:
    sources = {
        "video": RtpSource(rng, "video", VIDEO_PT),
        "audio": RtpSource(rng, "audio", AUDIO_PT),
    }
    counts = room.counts
    outputs = [o.ssrc for o in room.tracks.values()]
    harness = room.harness

    def compound() -> bytes:
        senders = list(peer.incoming) + [s.ssrc for s in sources.values()]
        return rtcp_compound(rng, senders, outputs, harness.newest)

    def donor() -> bytes:
        return sources["video"].next() if rng.random() < 0.5 else compound()

    mutator = Mutator(rng, donor)
    for index in range(inputs):
        is_rtp = rng.random() < 0.6
        data = sources["video" if rng.random() < 0.7 else "audio"].next() if is_rtp else compound()
        mutated = rng.random() < 0.85
        if mutated:
            data = mutator.mutate(data, rtcp_format=not is_rtp)
        to_rtp = is_rtp if rng.random() < 0.97 else not is_rtp  # the wrong handler
        room.index = index
        try:
            if to_rtp:
                await peer._handle_rtp(data, index)
            else:
                await peer._handle_rtcp(data)
        except BaseException as exc:
            raise failure(seed, index, "peer handler raised", data, _describe(exc)) from exc
        if swallowed.records:
            record = swallowed.records[0]
            detail = (
                "".join(traceback.format_exception(*record.exc_info)) if record.exc_info else ""
            )
            handler = "_handle_rtp" if to_rtp else "_handle_rtcp"
            raise failure(seed, index, f"{handler} caught: {record.getMessage()}", data, detail)
        try:
            _check_peer_sent(peer, sent.packets, counts)
            sent.packets.clear()
            for stream in peer.incoming.values():
                if stream.missing is not None and len(stream.missing.missing) > MAX_MISSING:
                    raise AssertionError(f"{len(stream.missing.missing)} sequence numbers missing")
            if index % 200 == 0 and peer.incoming:
                now = asyncio.get_running_loop().time()
                blocks = [s.stats.report(now) for s in peer.incoming.values()]
                check_report_blocks(blocks, set(peer.incoming))
            if index % 997 == 0:
                harness.churn()
        except Exception as exc:
            raise failure(seed, index, "after the peer's handler", data, _describe(exc)) from exc
        counts["inputs"] += 1
        counts["rtp" if to_rtp else "rtcp"] += 1
        counts["mutated"] += mutated
    return counts


def _check_peer_sent(peer: ParticipantPeer, packets: list[bytes], counts: Counts) -> None:
    """Only NACKs go upstream while packets arrive: one per packet, naming the video
    publisher's SSRC and numbers it still misses, each at most NACK_MAX_TRIES times."""
    assert len(packets) <= 1, packets
    for packet in packets:
        counts["nacks_sent"] += 1
        (nack,) = rtcp.parse(packet)
        assert isinstance(nack, rtcp.Nack), nack
        stream = peer.incoming[nack.media_ssrc]
        assert stream.kind == "video" and peer.publish_ssrc["camera"] == {"": nack.media_ssrc}
        assert len(set(nack.lost)) == len(nack.lost) <= MAX_MISSING, nack
        (theirs,) = RtcpPacket.parse(packet)
        assert isinstance(theirs, RtcpRtpfbPacket)
        assert sorted(s & 0xFFFF for s in theirs.lost) == sorted(nack.lost)
        for sequence in nack.lost:
            assert stream.missing is not None
            entry = stream.missing.missing.get(sequence)
            assert entry is not None and 1 <= entry[1] <= NACK_MAX_TRIES, (sequence, entry)


# -- sequence numbers ----------------------------------------------------------


def sequence_run(rng: random.Random, length: int) -> tuple[str, list[int]]:
    """Sequence numbers of one stream: `clean` (consecutive through wraps), `lossy`
    (forward gaps only) or `chaos` (duplicates, reordering, jumps, random values),
    the last ending in a consecutive run after a jump."""
    style = rng.choice(("clean", "lossy", "chaos", "chaos"))
    sequence = rng.choice((65535 - rng.randrange(length), rng.getrandbits(16), 0))
    out = [sequence]
    while len(out) < length:
        if style == "clean":
            step = 1
        elif style == "lossy":
            step = 1 if rng.random() < 0.7 else rng.choice((2, 3, 17, 255, 256, 257, 2999))
        else:
            roll = rng.random()
            if roll < 0.5:
                step = 1
            elif roll < 0.6:
                step = rng.randint(2, 300)
            elif roll < 0.7:
                out.append((sequence - rng.randint(0, 200)) & 0xFFFF)
                continue
            elif roll < 0.8:
                step = rng.choice((3000, 0x8000, 0xFFFF - 100, rng.getrandbits(16)))
            elif roll < 0.9:
                sequence = 65535
                step = 0
            else:
                out.append(rng.getrandbits(16))
                continue
        sequence = (sequence + step) & 0xFFFF
        out.append(sequence)
    if style == "chaos":
        sequence = rng.getrandbits(16)
        out += [(sequence + i) & 0xFFFF for i in range(rng.randint(2, 5))]
    return style, out


def run_sequences(seed: int, streams: int, length: int) -> Counts:
    """Feeds ReceptionStats and MissingPackets; checks the bound on missing numbers,
    that NACKs name only missing numbers, that report blocks are 24 bytes with
    in-range fields, and, for clean and lossy streams, exact loss and highest
    extended sequence number; after a jump, reports follow the new numbering."""
    rng = random.Random(seed)
    counts: Counts = Counter()
    for stream in range(streams):
        style, sequences = sequence_run(rng, length)
        ssrc = rng.getrandbits(32)
        stats = ReceptionStats(ssrc, rng.choice((48000, 90000)))
        missing = MissingPackets()
        timestamp, now = rng.getrandbits(32), 0.0
        try:
            for step, sequence in enumerate(sequences):
                now += rng.choice((0.0, 0.001, 0.02, 0.2))
                timestamp = (timestamp + rng.choice((0, 960, 3000, 2**31))) & 0xFFFFFFFF
                stats.update(sequence, timestamp, now)
                missing.update(sequence)
                assert len(missing.missing) <= MAX_MISSING
                assert sequence not in missing.missing, "a received number is still missing"
                if step % 5 == 0:
                    before = dict(missing.missing)
                    due = missing.due(now)
                    assert len(set(due)) == len(due) and all(s in before for s in due)
                    assert all(0 <= s <= 0xFFFF for s in due)
                if step % 50 == 0:
                    if rng.random() < 0.3:
                        stats.sender_report(rng.getrandbits(64), now)
                    _check_block(stats.report(now + rng.random()), ssrc)
                counts["sequence_numbers"] += 1
            final = _check_block(stats.report(now + 1), ssrc)
            if style != "chaos":
                first = sequences[0]
                extended = first + sum((b - a) & 0xFFFF for a, b in itertools.pairwise(sequences))
                assert final["highest"] == extended, (final, extended)
                assert final["lost"] == extended - first + 1 - len(sequences), final
            else:  # the closing run is followed unless it starts just behind the highest
                behind = (final["highest"] - sequences[-1]) & 0xFFFF
                assert behind < MAX_DROPOUT, (final, sequences[-6:])
                counts["followed_after_chaos"] += behind == 0
        except Exception as exc:
            raise FuzzFailure(
                f"seed={seed} stream #{stream} ({style}): {_describe(exc)}\n"
                f"sequence numbers: {sequences}"
            ) from exc
        counts["streams"] += 1
    return counts


def _check_block(block: bytes, ssrc: int) -> dict[str, int]:
    assert len(block) == 24, block.hex()
    got, fraction, lost_high, lost_low, highest, jitter, _lsr, _dlsr = struct.unpack(
        "!IBBHIIII", block
    )
    assert got == ssrc and 0 <= fraction <= 255
    lost = lost_high << 16 | lost_low
    lost -= (lost & 0x800000) << 1  # 24-bit two's complement
    return {"fraction": fraction, "lost": lost, "highest": highest, "jitter": jitter}
