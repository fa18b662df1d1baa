"""The per-packet hot path: one publisher track in, rewritten copies out.

This is the narrow interface a native data plane will implement later (add or
remove a subscriber, packet in -> packets out, counters), so nothing here knows
about peer connections, rooms or signalling. Classes use `__slots__` and plain
ints; no object is created per subscriber per packet except the output bytes.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from typing import Any

from relay.rtp import FIXED_HEADER, RtpHeader, extension_block, is_vp8_keyframe_start

_fixed = struct.Struct("!BBHII")

# Header-extension ids the relay itself offers on every peer connection (aiortc's
# fixed assignment); because the relay is always the offerer they are the same on
# the publisher's and on every subscriber's leg, so only the MID value changes.
MID_EXTENSION_ID = 1


class SubscriberOutput:
    """One subscriber's view of one track: its SSRC, payload type, MID, offsets."""

    __slots__ = (
        "mid_element",
        "next_sequence",
        "packets",
        "payload_type",
        "seq_offset",
        "sink",
        "ssrc",
        "started",
        "timestamp_base",
        "ts_offset",
    )

    def __init__(self, ssrc: int, payload_type: int, mid_element: bytes, sink: Any = None) -> None:
        self.sink = sink  # whatever sends this subscriber's packets; opaque here
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.mid_element = mid_element
        self.started = False
        self.seq_offset = 0
        self.ts_offset = 0
        self.next_sequence = random.getrandbits(16)
        self.timestamp_base = random.getrandbits(32)
        self.packets = 0

    def start(self, sequence: int, timestamp: int) -> None:
        """Pin offsets so this subscriber's numbering starts where it left off."""
        self.seq_offset = (self.next_sequence - sequence) & 0xFFFF
        self.ts_offset = (self.timestamp_base - timestamp) & 0xFFFFFFFF
        self.started = True


class TrackForwarder:
    """Fans one published track out to its subscribers.

    Video subscribers receive packets from the first key frame after they were
    added; `request_keyframe` is called when one is needed.
    """

    __slots__ = (
        "forwarded",
        "is_video",
        "received",
        "request_keyframe",
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

    def add_subscriber(self, output: SubscriberOutput) -> None:
        output.started = False
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
        if not self.subscribers:
            return []
        payload = data[header.payload_offset :]
        keyframe = (
            self.is_video and self.waiting_for_keyframe > 0 and is_vp8_keyframe_start(payload)
        )
        shared_extensions = b"".join(
            bytes([(ext_id << 4) | (len(value) - 1)]) + value
            for ext_id, value in header.extensions
            if ext_id != MID_EXTENSION_ID
        )
        padding_bit = data[0] & 0x20
        marker = header.marker << 7
        out: list[tuple[SubscriberOutput, bytes]] = []
        for sub in self.subscribers:
            if not sub.started:
                if self.is_video and not keyframe:
                    continue
                sub.start(header.sequence, header.timestamp)
                if self.is_video:
                    self.waiting_for_keyframe -= 1
            sequence = (header.sequence + sub.seq_offset) & 0xFFFF
            block = extension_block(sub.mid_element + shared_extensions)
            first = 0x80 | padding_bit | (0x10 if block else 0)
            packet = b"".join(
                (
                    _fixed.pack(
                        first,
                        marker | sub.payload_type,
                        sequence,
                        (header.timestamp + sub.ts_offset) & 0xFFFFFFFF,
                        sub.ssrc,
                    ),
                    block,
                    payload,
                )
            )
            sub.next_sequence = (sequence + 1) & 0xFFFF
            sub.packets += 1
            out.append((sub, packet))
        self.forwarded += len(out)
        return out


assert FIXED_HEADER == _fixed.size
