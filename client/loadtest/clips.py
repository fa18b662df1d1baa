"""Media clips encoded once per process (VP8 and/or Opus), looped and paced in real
time by `ClipTrack`: aiortc's sender only packetizes them, so no encoder runs per
publisher."""

from __future__ import annotations

import asyncio
import fractions
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame

VIDEO_FPS = 30
CLIP_SECONDS = 2  # one key frame per loop of the clip
AUDIO_PTIME = 0.020


@dataclass(frozen=True)
class Clip:
    """Encoded frames to loop: `payloads[i]` lasts `ticks` of `time_base`."""

    kind: str
    payloads: tuple[bytes, ...]
    ticks: int
    time_base: fractions.Fraction
    period: float  # seconds per payload

    @property
    def bitrate(self) -> float:
        return sum(len(p) for p in self.payloads) * 8 / (len(self.payloads) * self.period)


_clips: dict[tuple[Any, ...], Clip] = {}


def video_clip(width: int = 640, height: int = 360, bitrate: int = 2_000_000) -> Clip:
    """VP8, encoded once per process: a drifting stripe pattern with moderate luma
    noise (so every frame costs bits and the packet rate stays steady), one key
    frame at the start of each loop."""
    key = ("video", width, height, bitrate)
    if key in _clips:
        return _clips[key]
    count = VIDEO_FPS * CLIP_SECONDS
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "yuv420p"
    codec.bit_rate = bitrate
    codec.time_base = fractions.Fraction(1, VIDEO_FPS)
    codec.gop_size = count
    codec.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "bufsize": str(bitrate),
        "undershoot-pct": "100",
    }
    stripes = bytes(range(0, 256, 4)) * ((width + 64) // 64 + 1)
    table = bytes(b & 0x07 for b in range(256))
    chroma = bytes([128]) * (width // 2 * height // 2)
    payloads: list[bytes] = []
    for index in range(count):
        frame = VideoFrame(width=width, height=height, format="yuv420p")
        luma, cb, cr = frame.planes
        rows = b"".join(
            stripes[(index * 2 + y) % 64 : (index * 2 + y) % 64 + width]
            + bytes(luma.line_size - width)
            for y in range(height)
        )
        noise = os.urandom(len(rows)).translate(table)
        luma.update(bytes(a ^ b for a, b in zip(rows, noise, strict=True)))
        for plane in (cb, cr):
            row = width // 2
            plane.update(
                b"".join(
                    chroma[y * row : (y + 1) * row] + bytes(plane.line_size - row)
                    for y in range(height // 2)
                )
            )
        frame.pts = index
        frame.time_base = codec.time_base
        payloads += [bytes(p) for p in codec.encode(frame)]
    payloads += [bytes(p) for p in codec.encode(None)]
    clip = Clip(
        "video", tuple(payloads), 90_000 // VIDEO_FPS, fractions.Fraction(1, 90_000), 1 / VIDEO_FPS
    )
    _clips[key] = clip
    return clip


def audio_clip(frequency: int = 440) -> Clip:
    """Opus 48 kHz stereo, 20 ms packets of a one-second tone, encoded once per process."""
    key = ("audio", frequency)
    if key in _clips:
        return _clips[key]
    rate, samples = 48_000, 960
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = rate
    codec.layout = "stereo"
    codec.format = "s16"
    codec.bit_rate = 32_000
    codec.time_base = fractions.Fraction(1, rate)
    payloads: list[bytes] = []
    for index in range(rate // samples):
        frame = AudioFrame(format="s16", layout="stereo", samples=samples)
        values = []
        for n in range(index * samples, (index + 1) * samples):
            v = round(8000 * math.sin(2 * math.pi * frequency * n / rate))
            values += [v, v]
        frame.planes[0].update(b"".join(v.to_bytes(2, "little", signed=True) for v in values))
        frame.pts = index * samples
        frame.sample_rate = rate
        frame.time_base = codec.time_base
        payloads += [bytes(p) for p in codec.encode(frame)]
    clip = Clip("audio", tuple(payloads), samples, fractions.Fraction(1, rate), AUDIO_PTIME)
    _clips[key] = clip
    return clip


class ClipTrack(MediaStreamTrack):
    """Loops a pre-encoded clip in real time; aiortc's sender only packetizes it."""

    def __init__(self, clip: Clip) -> None:
        super().__init__()
        self.kind = clip.kind
        self.clip = clip
        self._index = 0
        self._t0: float | None = None

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        index = self._index
        self._index += 1
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        else:
            wait = self._t0 + index * self.clip.period - now
            if wait > 0:
                await asyncio.sleep(wait)
        packet = av.Packet(self.clip.payloads[index % len(self.clip.payloads)])
        packet.pts = index * self.clip.ticks
        packet.time_base = self.clip.time_base
        return packet
