"""What arrives: per-SSRC receive statistics (loss from sequence gaps, RFC 3550
interarrival jitter) read from the RTP header of every packet SRTP delivered, by a
handler put in place of the bundled DTLS transport's (`Counter`, `hook_rtp`);
nothing is parsed further or decoded."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiortc import RTCPeerConnection


class StreamStats:
    """One received SSRC: packets, the extended highest sequence number (for loss:
    expected minus received) and RFC 3550 interarrival jitter (in clock units)."""

    __slots__ = ("_at", "_ts", "base", "clock", "cycles", "jitter", "kind", "max_seq", "received")

    def __init__(self, kind: str, clock: int, seq: int, ts: int, now: float) -> None:
        self.kind = kind
        self.clock = clock
        self.base = seq
        self.max_seq = seq
        self.cycles = 0
        self.received = 1
        self.jitter = 0.0
        self._at = now
        self._ts = ts

    def add(self, seq: int, ts: int, now: float) -> None:
        self.received += 1
        delta = (seq - self.max_seq) & 0xFFFF
        if 0 < delta < 0x8000:
            if seq < self.max_seq:
                self.cycles += 0x10000
            self.max_seq = seq
        dts = (ts - self._ts) & 0xFFFFFFFF
        if dts >= 0x80000000:
            dts -= 0x100000000
        d = abs((now - self._at) * self.clock - dts)
        self.jitter += (d - self.jitter) / 16
        self._at = now
        self._ts = ts

    @property
    def expected(self) -> int:
        return self.cycles + self.max_seq - self.base + 1

    def row(self) -> list[Any]:
        """[kind, received, expected, jitter ms], for the worker's reply."""
        return [self.kind, self.received, self.expected, round(self.jitter * 1000 / self.clock, 3)]


_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([\w.-]+)/(\d+)", re.MULTILINE)


def payload_clocks(sdp: str) -> dict[int, tuple[str, int]]:
    """Payload type -> (kind, clock rate) of the media codecs in `sdp` (RTX, FEC and
    comfort noise left out: they are not the stream whose gaps mean loss)."""
    clocks: dict[int, tuple[str, int]] = {}
    for section in sdp.split("\nm=")[1:]:
        kind = section.split(" ", 1)[0]
        for pt, name, clock in _RTPMAP.findall(section):
            if name.lower() not in ("rtx", "red", "ulpfec", "cn", "telephone-event"):
                clocks[int(pt)] = (kind, int(clock))
    return clocks


RtpHandler = Callable[[bytes, int], Coroutine[Any, Any, None]]


def hook_rtp(pc: RTCPeerConnection, handler: RtpHandler, hooked: set[int]) -> list[Any]:
    """Put `handler` in place of the RTP handler of each DTLS transport of `pc` whose
    id is not in `hooked` yet (SRTP still decrypts before it); returns those
    transports, now in `hooked`."""
    transports = []
    for transceiver in pc.getTransceivers():
        transport = transceiver.receiver.transport
        if transport is None or id(transport) in hooked:
            continue
        hooked.add(id(transport))
        transport._handle_rtp_data = handler  # type: ignore[method-assign,assignment]
        transports.append(transport)
    return transports


class Counter:
    """Per-SSRC statistics of one peer connection; `hook` puts it in place of the
    bundled transport's RTP handler (SRTP still decrypts, nothing is decoded)."""

    def __init__(self) -> None:
        self.streams: dict[int, StreamStats] = {}
        self.clocks: dict[int, tuple[str, int]] = {}
        self.other = 0  # packets of payload types that are not media (RTX, unknown)
        self._hooked: set[int] = set()

    def hook(self, pc: RTCPeerConnection, sdp: str) -> None:
        self.clocks.update(payload_clocks(sdp))
        hook_rtp(pc, self.on_rtp, self._hooked)

    async def on_rtp(self, data: bytes, arrival_time_ms: int) -> None:
        self.add(data)

    def add(self, data: bytes) -> None:
        """Count one RTP packet that arrived now."""
        now = time.monotonic()
        if len(data) < 12:
            return
        ssrc = int.from_bytes(data[8:12], "big")
        seq = int.from_bytes(data[2:4], "big")
        ts = int.from_bytes(data[4:8], "big")
        stream = self.streams.get(ssrc)
        if stream is not None:
            stream.add(seq, ts, now)
            return
        codec = self.clocks.get(data[1] & 0x7F)
        if codec is None:
            self.other += 1
            return
        self.streams[ssrc] = StreamStats(codec[0], codec[1], seq, ts, now)

    def rows(self) -> dict[str, list[Any]]:
        return {str(ssrc): stream.row() for ssrc, stream in self.streams.items()}
