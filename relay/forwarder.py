"""The per-packet hot path: one publisher track in, rewritten copies out.

This is the narrow interface a native data plane will implement later (add or
remove a subscriber, packet in -> packets out, counters), so nothing here knows
about peer connections, rooms or signalling. Classes use `__slots__` and plain
ints; no object is created per subscriber per packet except the output bytes.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Mapping
from typing import Any

from relay.rtcp import sender_report
from relay.rtp import FIXED_HEADER, RtpHeader, extension_block, is_vp8_keyframe_start

_fixed = struct.Struct("!BBHII")

# The MID header extension (RFC 8843 §15.2) carries the m-line, which differs per
# leg, so it is never copied: each subscriber gets its own. Its id is 1 in aiortc's
# offers, the default until a leg's negotiated ids are known.
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
MID_EXTENSION_ID = 1


CACHE_SIZE = 1024  # packets kept per video track for retransmission (~4 s at 2 Mbit/s)


class SubscriberOutput:
    """One subscriber's view of one track: its SSRCs, payload types, MID, offsets."""

    __slots__ = (
        "extension_ids",
        "extension_map",
        "mid_element",
        "next_sequence",
        "octets",
        "packets",
        "payload_type",
        "retransmitted",
        "rtx_payload_type",
        "rtx_sequence",
        "rtx_ssrc",
        "seq_offset",
        "sink",
        "ssrc",
        "started",
        "timestamp_base",
        "ts_offset",
    )

    def __init__(
        self,
        ssrc: int,
        payload_type: int,
        mid_element: bytes,
        sink: Any = None,
        rtx: tuple[int, int] | None = None,
        extension_ids: Mapping[str, int] | None = None,
    ) -> None:
        self.sink = sink  # whatever sends this subscriber's packets; opaque here
        # Header-extension ids negotiated on this subscriber's leg, by URI (None:
        # the same as the publisher's), and the source-id -> own-id map derived from
        # them (None: copy the publisher's elements unchanged).
        self.extension_ids = extension_ids
        self.extension_map: dict[int, int] | None = None
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.mid_element = mid_element
        # RFC 4588 retransmission stream (SSRC, payload type), when negotiated.
        self.rtx_ssrc, self.rtx_payload_type = rtx or (0, 0)
        self.rtx_sequence = random.getrandbits(16)
        self.started = False
        self.seq_offset = 0
        self.ts_offset = 0
        self.next_sequence = random.getrandbits(16)
        self.timestamp_base = random.getrandbits(32)
        self.packets = 0
        self.octets = 0
        self.retransmitted = 0

    def start(self, sequence: int, timestamp: int) -> None:
        """Pin offsets so this subscriber's numbering starts where it left off."""
        self.seq_offset = (self.next_sequence - sequence) & 0xFFFF
        self.ts_offset = (self.timestamp_base - timestamp) & 0xFFFFFFFF
        self.started = True


class TrackForwarder:
    """Fans one published track out to its subscribers.

    Video subscribers receive packets from the first key frame after they were
    added; `request_keyframe` is called when one is needed. Video packets are kept
    in a ring (parsed once) so that subscribers' NACKs can be answered.
    """

    __slots__ = (
        "cache",
        "forwarded",
        "is_video",
        "received",
        "request_keyframe",
        "source_extensions",
        "source_mid_id",
        "subscribers",
        "waiting_for_keyframe",
    )

    def __init__(self, kind: str, request_keyframe: Callable[[], None]) -> None:
        self.is_video = kind == "video"
        self.request_keyframe = request_keyframe
        self.subscribers: list[SubscriberOutput] = []
        self.waiting_for_keyframe = 0
        self.received = 0
        self.forwarded = 0
        self.source_extensions: dict[int, str] = {}
        self.source_mid_id = MID_EXTENSION_ID
        # (sequence, timestamp, marker bit, padding bit, extension elements, payload).
        self.cache: list[tuple[int, int, int, int, list[tuple[int, bytes]], bytes] | None] = (
            [None] * CACHE_SIZE if self.is_video else []
        )

    def set_source_extensions(self, ids: Mapping[int, str]) -> None:
        """The header-extension ids negotiated on the publisher's leg (id -> URI)."""
        self.source_extensions = dict(ids)
        self.source_mid_id = next((i for i, uri in ids.items() if uri == MID_URI), 0)
        for sub in self.subscribers:
            sub.extension_map = self._extension_map(sub)

    def _extension_map(self, sub: SubscriberOutput) -> dict[int, int] | None:
        """How to renumber the publisher's extensions for `sub`; None when the ids
        agree (always so when the relay offered both legs)."""
        if sub.extension_ids is None or not self.source_extensions:
            return None
        mapping = {
            source_id: sub.extension_ids[uri]
            for source_id, uri in self.source_extensions.items()
            if uri != MID_URI and uri in sub.extension_ids
        }
        wanted = {i for i, uri in self.source_extensions.items() if uri != MID_URI}
        if set(mapping) == wanted and all(k == v for k, v in mapping.items()):
            return None
        return mapping

    def add_subscriber(self, output: SubscriberOutput) -> None:
        output.started = False
        output.extension_map = self._extension_map(output)
        self.subscribers.append(output)
        if self.is_video:
            self.waiting_for_keyframe += 1
            self.request_keyframe()

    def remove_subscriber(self, output: SubscriberOutput) -> None:
        if output in self.subscribers:
            self.subscribers.remove(output)
            if self.is_video and not output.started:
                self.waiting_for_keyframe -= 1

    def forward(self, data: bytes, header: RtpHeader) -> list[tuple[SubscriberOutput, bytes]]:
        """Rewrite `data` once per subscriber; returns what to send to whom."""
        self.received += 1
        payload = data[header.payload_offset :]
        shared_extensions = _without(header.extensions, self.source_mid_id)
        padding_bit = data[0] & 0x20
        marker = header.marker << 7
        if self.is_video:
            self.cache[header.sequence % CACHE_SIZE] = (
                header.sequence, header.timestamp, marker, padding_bit, header.extensions, payload
            )  # fmt: skip
        if not self.subscribers:
            return []
        keyframe = (
            self.is_video and self.waiting_for_keyframe > 0 and is_vp8_keyframe_start(payload)
        )
        out: list[tuple[SubscriberOutput, bytes]] = []
        for sub in self.subscribers:
            if not sub.started:
                if self.is_video and not keyframe:
                    continue
                sub.start(header.sequence, header.timestamp)
                if self.is_video:
                    self.waiting_for_keyframe -= 1
            sequence = (header.sequence + sub.seq_offset) & 0xFFFF
            extensions = (
                shared_extensions
                if sub.extension_map is None
                else _renumbered(header.extensions, sub.extension_map)
            )
            out.append((sub, _rewrite(sub, marker | sub.payload_type, sequence,
                                      header.timestamp, sub.ssrc, padding_bit,
                                      extensions, payload)))  # fmt: skip
            sub.next_sequence = (sequence + 1) & 0xFFFF
            sub.packets += 1
            sub.octets += len(payload)
        self.forwarded += len(out)
        return out

    def retransmit(self, sub: SubscriberOutput, lost: list[int]) -> list[bytes]:
        """Answer a subscriber's NACK from the cache: RTX when negotiated (RFC 4588
        §4, original sequence number first in the payload), else the packet again.
        A number named twice (a NACK can repeat itself) is answered once."""
        if not sub.started or not self.cache:
            return []
        packets: list[bytes] = []
        for out_sequence in dict.fromkeys(lost):
            entry = self.cache[((out_sequence - sub.seq_offset) & 0xFFFF) % CACHE_SIZE]
            if entry is None or entry[0] != (out_sequence - sub.seq_offset) & 0xFFFF:
                continue  # too old, or never received
            _, timestamp, marker, padding_bit, elements, payload = entry
            extensions = (
                _without(elements, self.source_mid_id)
                if sub.extension_map is None
                else _renumbered(elements, sub.extension_map)
            )
            if sub.rtx_ssrc:
                packet = _rewrite(sub, marker | sub.rtx_payload_type, sub.rtx_sequence,
                                  timestamp, sub.rtx_ssrc, padding_bit, extensions,
                                  struct.pack("!H", out_sequence) + payload)  # fmt: skip
                sub.rtx_sequence = (sub.rtx_sequence + 1) & 0xFFFF
            else:
                packet = _rewrite(sub, marker | sub.payload_type, out_sequence, timestamp,
                                  sub.ssrc, padding_bit, extensions, payload)  # fmt: skip
            packets.append(packet)
        sub.retransmitted += len(packets)
        return packets

    @staticmethod
    def sender_report(sub: SubscriberOutput, ntp: int, rtp_timestamp: int) -> bytes | None:
        """The publisher's NTP/RTP pair in this subscriber's timestamp space, so the
        subscriber can keep audio and video in sync (RFC 3550 §6.4.1)."""
        if not sub.started:
            return None
        return sender_report(sub.ssrc, ntp, (rtp_timestamp + sub.ts_offset) & 0xFFFFFFFF,
                             sub.packets, sub.octets)  # fmt: skip


def _without(elements: list[tuple[int, bytes]], skip_id: int) -> bytes:
    """One-byte elements as they came, except `skip_id` (the publisher's MID)."""
    return b"".join(
        bytes([(ext_id << 4) | (len(value) - 1)]) + value
        for ext_id, value in elements
        if ext_id != skip_id
    )


def _renumbered(elements: list[tuple[int, bytes]], mapping: dict[int, int]) -> bytes:
    """One-byte elements with the subscriber's ids; ones it did not negotiate dropped."""
    return b"".join(
        bytes([(mapping[ext_id] << 4) | (len(value) - 1)]) + value
        for ext_id, value in elements
        if ext_id in mapping
    )


def _rewrite(
    sub: SubscriberOutput,
    marker_and_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    padding_bit: int,
    shared_extensions: bytes,
    payload: bytes,
) -> bytes:
    block = extension_block(sub.mid_element + shared_extensions)
    first = 0x80 | padding_bit | (0x10 if block else 0)
    fixed = _fixed.pack(first, marker_and_type, sequence,
                        (timestamp + sub.ts_offset) & 0xFFFFFFFF, ssrc)  # fmt: skip
    return b"".join((fixed, block, payload))


assert FIXED_HEADER == _fixed.size
