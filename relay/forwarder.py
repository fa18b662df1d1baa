"""The per-packet hot path: one publisher track in, rewritten copies out.

This is the narrow interface a native data plane will implement later (add or
remove a subscriber, packet in -> packets out, counters), so nothing here knows
about peer connections, rooms or signalling. Classes use `__slots__` and plain
ints; no object is created per subscriber per packet except the output bytes.
"""

from __future__ import annotations

import bisect
import random
import struct
from collections.abc import Callable, Mapping
from typing import Any

from relay.rtcp import sdes_cname, sender_report
from relay.rtp import (
    FIXED_HEADER,
    RtpHeader,
    extension_block,
    h264_keyframe_size,
    is_h264_keyframe_start,
    is_vp8_keyframe_start,
    vp8_keyframe_size,
)

_fixed = struct.Struct("!BBHII")

# The MID header extension (RFC 8843 §15.2) carries the m-line, which differs per
# leg, so it is never copied: each subscriber gets its own. Its id is 1 in aiortc's
# offers, the default until a leg's negotiated ids are known.
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
MID_EXTENSION_ID = 1


CACHE_SIZE = 1024  # packets kept per video layer for retransmission (~4 s at 2 Mbit/s)
MAX_LAYERS = 3  # simulcast encodings per video track (docs/simulcast.md)
SEGMENTS_KEPT = 4  # layer switches remembered per subscriber, to answer NACKs across them
# Source sequence numbers behind the newest within which dropped padding is
# remembered; a packet arriving later than that is dropped (it is minutes late).
SKIP_WINDOW = 1 << 14
CLOCK_RATES = {"audio": 48000, "video": 90000}

# (sequence, timestamp, marker bit, padding bit, extension elements, payload).
CacheEntry = tuple[int, int, int, int, list[tuple[int, bytes]], bytes]

# Per video codec (lower-case MIME type): where a subscriber may start or switch
# (the first packet of a key frame a decoder can start from), and the picture size
# that packet tells.
KeyframeStart = Callable[[bytes], bool]
KeyframeSize = Callable[[bytes], "tuple[int, int] | None"]
KEYFRAMES: dict[str, tuple[KeyframeStart, KeyframeSize]] = {
    "video/vp8": (is_vp8_keyframe_start, vp8_keyframe_size),
    "video/h264": (is_h264_keyframe_start, h264_keyframe_size),
}
DEFAULT_VIDEO_CODEC = "video/vp8"


class SubscriberOutput:
    """One subscriber's view of one track: its SSRCs, payload types, MID, offsets,
    and which layer it receives (`layer`) and wants (`target`)."""

    __slots__ = (
        "codecs",
        "extension_ids",
        "extension_map",
        "layer",
        "mid_element",
        "next_sequence",
        "octets",
        "packets",
        "payload_type",
        "retransmitted",
        "rtx_payload_type",
        "rtx_sequence",
        "rtx_ssrc",
        "segments",
        "seq_offset",
        "sink",
        "ssrc",
        "target",
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
        codecs: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        self.sink = sink  # whatever sends this subscriber's packets; opaque here
        # Payload types negotiated on this leg, by lower-case MIME type: (media,
        # RTX or 0). The track's codec picks the pair in use (`use_codec`).
        self.codecs = dict(codecs or {})
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
        self.layer = -1  # the layer being forwarded; -1 before the first packet
        self.target = 0  # the layer to switch to at its next key frame
        # (first output sequence, layer, sequence offset, timestamp offset) since
        # each switch, newest last: which layer's cache answers a NACK.
        self.segments: list[tuple[int, int, int, int]] = []
        self.seq_offset = 0
        self.ts_offset = 0
        self.next_sequence = random.getrandbits(16)
        self.timestamp_base = random.getrandbits(32)
        self.packets = 0
        self.octets = 0
        self.retransmitted = 0

    @property
    def started(self) -> bool:
        return self.layer >= 0

    def use_codec(self, mime: str) -> bool:
        """Send with the payload types this leg negotiated for `mime`; False when it
        did not negotiate that codec (then it cannot receive the track)."""
        if not self.codecs:
            return True  # a leg that names no codecs takes what it was given
        pair = self.codecs.get(mime)
        if pair is None:
            return False
        self.payload_type, self.rtx_payload_type = pair
        if not self.rtx_payload_type:
            self.rtx_ssrc = 0
        return True


class LayerStream:
    """One incoming stream of a track (a simulcast layer, or the only stream): its
    retransmission cache, who receives it, who waits for its next key frame, and
    what the layer choice needs to know (traffic, last arrival, frame size).

    Padding-only packets (a sender keeping its bandwidth estimate up: Chromium pads
    a low layer to megabits) carry nothing to forward. They are dropped, and the
    stream's sequence numbers are compacted over the gaps they leave, so that
    subscribers see no loss: the compact number of a packet is its source number
    minus the padding dropped before it. The cache is indexed by compact numbers."""

    __slots__ = (
        "cache",
        "height",
        "highest",
        "joining",
        "last_arrival",
        "last_timestamp",
        "octets",
        "packets",
        "padding",
        "receivers",
        "skipped",
        "skipped_before",
        "width",
    )

    def __init__(self, is_video: bool) -> None:
        self.cache: list[CacheEntry | None] = [None] * CACHE_SIZE if is_video else []
        self.receivers: list[SubscriberOutput] = []
        self.joining: list[SubscriberOutput] = []
        self.packets = 0
        self.octets = 0
        self.last_arrival = 0.0
        self.last_timestamp = 0
        self.width = 0  # from the latest key frame; 0 until one arrived
        self.height = 0
        self.highest = -1  # newest source sequence number, unwrapped; -1: none yet
        self.skipped: list[int] = []  # unwrapped numbers of dropped padding, ascending
        self.skipped_before = 0  # dropped padding older than `skipped` remembers
        self.padding = 0  # padding-only packets dropped

    def unwrap(self, sequence: int) -> int:
        """`sequence` as a number that does not wrap, relative to the newest one."""
        if self.highest < 0:
            self.highest = sequence + 0x10000  # older packets stay positive
            return self.highest
        extended = self.highest + ((sequence - self.highest + 0x8000) & 0xFFFF) - 0x8000
        if extended > self.highest:
            self.highest = extended
        return extended

    def compact(self, extended: int) -> int:
        """The 16-bit number of a forwarded packet, with dropped padding left out."""
        dropped = self.skipped_before + bisect.bisect_right(self.skipped, extended)
        return (extended - dropped) & 0xFFFF

    def skip(self, extended: int) -> None:
        """Leave out the padding-only packet `extended` (once, however often it comes)."""
        skipped = self.skipped
        if not skipped or extended > skipped[-1]:
            skipped.append(extended)
        else:
            at = bisect.bisect_left(skipped, extended)
            if at < len(skipped) and skipped[at] == extended:
                return
            skipped.insert(at, extended)
        self.padding += 1
        if skipped[0] < self.highest - 2 * SKIP_WINDOW:
            cut = bisect.bisect_left(skipped, self.highest - SKIP_WINDOW)
            self.skipped_before += cut
            del skipped[:cut]


class TrackForwarder:
    """Fans one published track out to its subscribers.

    A video track has up to three layers (simulcast), indexed from the lowest
    quality; a subscriber receives exactly one and moves to another only at a key
    frame of that layer, with its output sequence numbers and timestamps kept
    continuous. `request_keyframe(layer)` is called when a subscriber waits for
    one. Video packets are kept per layer (parsed once) to answer NACKs.
    """

    __slots__ = (
        "clock_rate",
        "codec",
        "forwarded",
        "is_video",
        "keyframe_size",
        "keyframe_start",
        "layers",
        "received",
        "request_keyframe",
        "source_extensions",
        "source_mid_id",
        "subscribers",
        "switches",
    )

    def __init__(self, kind: str, request_keyframe: Callable[[int], None]) -> None:
        self.is_video = kind == "video"
        self.clock_rate = CLOCK_RATES[kind]
        self.codec = DEFAULT_VIDEO_CODEC if self.is_video else "audio/opus"
        self.keyframe_start, self.keyframe_size = KEYFRAMES[DEFAULT_VIDEO_CODEC]
        self.request_keyframe = request_keyframe
        self.subscribers: list[SubscriberOutput] = []
        count = MAX_LAYERS if self.is_video else 1
        self.layers = [LayerStream(self.is_video) for _ in range(count)]
        self.received = 0
        self.forwarded = 0
        self.switches = 0  # layer changes of started subscribers
        self.source_extensions: dict[int, str] = {}
        self.source_mid_id = MID_EXTENSION_ID

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

    def set_codec(self, mime: str) -> None:
        """The publisher sends `mime` now (a new answer may change it): everyone
        starts again at that codec's next key frame."""
        if mime == self.codec or mime not in KEYFRAMES:
            return
        self.codec = mime
        self.keyframe_start, self.keyframe_size = KEYFRAMES[mime]
        for index, stream in enumerate(self.layers):
            for sub in stream.receivers:
                sub.layer = -1
                if sub.target == index:  # else it waits at its target already
                    stream.joining.append(sub)
            stream.receivers.clear()
        for index, stream in enumerate(self.layers):
            if stream.joining:
                self.request_keyframe(index)

    def add_subscriber(self, output: SubscriberOutput, layer: int = 0) -> None:
        """Start forwarding to `output`: audio from the next packet, video from the
        next key frame of `layer`."""
        if output in self.subscribers:
            return
        output.layer = -1
        output.target = min(max(layer, 0), len(self.layers) - 1)
        output.segments = []
        output.extension_map = self._extension_map(output)
        self.subscribers.append(output)
        self.layers[output.target].joining.append(output)
        if self.is_video:
            self.request_keyframe(output.target)

    def set_target(self, output: SubscriberOutput, layer: int) -> None:
        """Move `output` to `layer` at that layer's next key frame (asked for now)."""
        layer = min(max(layer, 0), len(self.layers) - 1)
        if output not in self.subscribers or layer == output.target:
            return
        if output.target != output.layer:
            self.layers[output.target].joining.remove(output)
        output.target = layer
        if layer != output.layer:
            self.layers[layer].joining.append(output)
            self.request_keyframe(layer)

    def remove_subscriber(self, output: SubscriberOutput) -> None:
        if output not in self.subscribers:
            return
        self.subscribers.remove(output)
        if output.layer >= 0:
            self.layers[output.layer].receivers.remove(output)
        if output.target != output.layer:
            self.layers[output.target].joining.remove(output)
        output.layer = -1

    def receivers(self, layer: int) -> list[SubscriberOutput]:
        """The subscribers currently receiving `layer`."""
        return self.layers[layer].receivers

    def forward(
        self, data: bytes, header: RtpHeader, layer: int = 0, now: float = 0.0
    ) -> list[tuple[SubscriberOutput, bytes]]:
        """Rewrite a packet of `layer` once per subscriber receiving that layer;
        returns what to send to whom. `now` is the arrival time (event-loop clock)."""
        stream = self.layers[layer]
        self.received += 1
        payload = data[header.payload_offset :]
        padding_bit = data[0] & 0x20
        extended = stream.unwrap(header.sequence)
        if extended < stream.highest - SKIP_WINDOW:
            return []  # later than any padding we remember: its number is unknown
        if padding_bit and data[-1] >= len(payload):  # padding only: nothing to forward
            stream.skip(extended)
            return []
        sequence = stream.compact(extended)
        marker = header.marker << 7
        stream.packets += 1
        stream.octets += len(data) - (data[-1] if padding_bit else 0)
        stream.last_arrival = now
        stream.last_timestamp = header.timestamp
        if self.is_video:
            stream.cache[sequence % CACHE_SIZE] = (
                sequence, header.timestamp, marker, padding_bit, header.extensions, payload
            )  # fmt: skip
            if self.keyframe_start(payload):
                size = self.keyframe_size(payload)
                if size is not None:
                    stream.width, stream.height = size
                if stream.joining:
                    self._switch(stream, layer, sequence, header.timestamp, now)
        elif stream.joining:
            self._switch(stream, layer, sequence, header.timestamp, now)
        receivers = stream.receivers
        if not receivers:
            return []
        shared_extensions = _without(header.extensions, self.source_mid_id)
        out: list[tuple[SubscriberOutput, bytes]] = []
        for sub in receivers:
            out_sequence = (sequence + sub.seq_offset) & 0xFFFF
            extensions = (
                shared_extensions
                if sub.extension_map is None
                else _renumbered(header.extensions, sub.extension_map)
            )
            out.append((sub, _rewrite(sub, marker | sub.payload_type, out_sequence,
                                      header.timestamp, sub.ssrc, padding_bit,
                                      extensions, payload)))  # fmt: skip
            sub.next_sequence = (out_sequence + 1) & 0xFFFF
            sub.packets += 1
            sub.octets += len(payload)
        self.forwarded += len(out)
        return out

    def _switch(
        self, stream: LayerStream, layer: int, sequence: int, timestamp: int, now: float
    ) -> None:
        """Move everyone waiting for this packet (a key frame, or any audio packet)
        onto `layer`. Output sequence numbers continue where they were; output time
        advances by the wall time since the previous layer's last packet, so the
        subscriber's jitter buffer and lip sync see one continuous stream."""
        for sub in stream.joining:
            old = sub.layer
            seq_offset = (sub.next_sequence - sequence) & 0xFFFF
            if old < 0:
                ts_offset = (sub.timestamp_base - timestamp) & 0xFFFFFFFF
            else:
                previous = self.layers[old]
                previous.receivers.remove(sub)
                ticks = max(1, int((now - previous.last_arrival) * self.clock_rate))
                last_out = previous.last_timestamp + sub.ts_offset
                ts_offset = (last_out + ticks - timestamp) & 0xFFFFFFFF
                self.switches += 1
            sub.layer = layer
            sub.seq_offset, sub.ts_offset = seq_offset, ts_offset
            sub.segments.append((sub.next_sequence, layer, seq_offset, ts_offset))
            del sub.segments[:-SEGMENTS_KEPT]
            stream.receivers.append(sub)
        stream.joining.clear()

    def retransmit(self, sub: SubscriberOutput, lost: list[int]) -> list[bytes]:
        """Answer a subscriber's NACK from the cache of the layer each number was
        sent from: RTX when negotiated (RFC 4588 §4, original sequence number first
        in the payload), else the packet again. A number named twice (a NACK can
        repeat itself) is answered once."""
        if sub.layer < 0 or not self.is_video:
            return []
        packets: list[bytes] = []
        for out_sequence in dict.fromkeys(lost):
            segment = _segment_of(sub, out_sequence)
            if segment is None:
                continue  # sent before the oldest switch remembered
            _, layer, seq_offset, ts_offset = segment
            source = (out_sequence - seq_offset) & 0xFFFF
            entry = self.layers[layer].cache[source % CACHE_SIZE]
            if entry is None or entry[0] != source:
                continue  # too old, or never received
            _, timestamp, marker, padding_bit, elements, payload = entry
            timestamp = (timestamp + ts_offset - sub.ts_offset) & 0xFFFFFFFF
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
        """The publisher's NTP/RTP pair (of the layer `sub` receives) in this
        subscriber's timestamp space, so the subscriber can keep audio and video in
        sync (RFC 3550 §6.4.1)."""
        if sub.layer < 0:
            return None
        return sender_report(sub.ssrc, ntp, (rtp_timestamp + sub.ts_offset) & 0xFFFFFFFF,
                             sub.packets, sub.octets)  # fmt: skip

    def sender_reports(
        self, layer: int, ntp: int, rtp_timestamp: int, cname: bytes
    ) -> list[tuple[SubscriberOutput, bytes]]:
        """Each receiver of `layer` that has been sent anything: its sender report
        followed by an SDES CNAME (RFC 3550 §6.5), one compound packet."""
        reports = []
        for sub in self.receivers(layer):
            report = self.sender_report(sub, ntp, rtp_timestamp)
            if report is not None:
                reports.append((sub, report + sdes_cname(sub.ssrc, cname)))
        return reports


def _segment_of(sub: SubscriberOutput, out_sequence: int) -> tuple[int, int, int, int] | None:
    """The switch after which `sub` was sent `out_sequence`: counted backwards from
    the newest number sent, so that wrap-around needs no special case."""
    newest = (sub.next_sequence - 1) & 0xFFFF
    age = (newest - out_sequence) & 0xFFFF
    for segment in reversed(sub.segments):
        if age <= (newest - segment[0]) & 0xFFFF:
            return segment
    return None


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
