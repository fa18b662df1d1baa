"""Synthetic media tracks, so a client can publish without a camera or microphone.

The content is deterministic and cheap to make (pure Python, no numpy: aiortc does
not depend on it), yet not constant: a sine tone survives Opus, and a moving pattern
keeps the VP8 encoder producing real inter frames, so the media path is exercised
the way a real meeting would exercise it.
"""

from __future__ import annotations

import array
import asyncio
import fractions
import math
import time

from aiortc.mediastreams import (
    AudioStreamTrack,
    MediaStreamError,
    VideoStreamTrack,
)
from av import AudioFrame, VideoFrame

AUDIO_SAMPLE_RATE = 48_000
AUDIO_PTIME = 0.020  # 20 ms, what Opus packetises and aiortc expects
VIDEO_WIDTH = 320
VIDEO_HEIGHT = 240

_STRIPE_PERIOD = 64  # luma stripe period in pixels (one full 0..252 ramp)
_BOX = 40  # side of the bright square that sweeps across the picture


class SineAudioTrack(AudioStreamTrack):
    """A mono 48 kHz sine tone in 20 ms frames, paced in real time.

    One second of samples is computed once (an integer frequency makes one second
    hold a whole number of periods), and every frame is a slice of it.
    """

    kind = "audio"

    def __init__(
        self,
        frequency: int = 440,
        amplitude: float = 0.25,
        sample_rate: int = AUDIO_SAMPLE_RATE,
        ptime: float = AUDIO_PTIME,
    ) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.samples_per_frame = round(sample_rate * ptime)
        self.time_base = fractions.Fraction(1, sample_rate)
        peak = max(0.0, min(1.0, amplitude)) * 32767
        # One second plus one frame, so a frame's slice never wraps.
        samples = array.array(
            "h",
            (
                round(peak * math.sin(2 * math.pi * frequency * n / sample_rate))
                for n in range(sample_rate + self.samples_per_frame)
            ),
        )
        self._table = samples.tobytes()
        self._next_pts = 0
        self._t0: float | None = None

    async def recv(self) -> AudioFrame:
        """The next frame, released no earlier than its presentation time."""
        if self.readyState != "live":
            raise MediaStreamError
        pts = self._next_pts
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        else:
            wait = self._t0 + pts / self.sample_rate - now
            if wait > 0:
                await asyncio.sleep(wait)
        self._next_pts += self.samples_per_frame

        offset = (pts % self.sample_rate) * 2  # s16: two bytes per sample
        frame = AudioFrame(format="s16", layout="mono", samples=self.samples_per_frame)
        frame.planes[0].update(self._table[offset : offset + self.samples_per_frame * 2])
        frame.pts = pts
        frame.sample_rate = self.sample_rate
        frame.time_base = self.time_base
        return frame


class PatternVideoTrack(VideoStreamTrack):
    """320x240 yuv420p frames at 30 fps: diagonal luma stripes that drift, a white
    square sweeping left to right, and a slowly cycling tint.

    Pacing and timestamps (90 kHz clock) come from aiortc's `next_timestamp`.
    """

    kind = "video"

    def __init__(self, width: int = VIDEO_WIDTH, height: int = VIDEO_HEIGHT) -> None:
        super().__init__()
        if width % 2 or height % 2 or width < _BOX or height < _BOX:
            raise ValueError(f"unsupported frame size {width}x{height}")
        self.width = width
        self.height = height
        ramp = bytes(range(0, 256, 256 // _STRIPE_PERIOD))
        repeats = (width + _STRIPE_PERIOD) // _STRIPE_PERIOD + 1
        self._stripes = ramp * repeats
        self._frames = 0

    async def recv(self) -> VideoFrame:
        """The next frame; raises MediaStreamError once the track is stopped."""
        pts, time_base = await self.next_timestamp()
        index = self._frames
        self._frames += 1

        frame = VideoFrame(width=self.width, height=self.height, format="yuv420p")
        luma, cb, cr = frame.planes
        luma.update(self._luma(index, luma.line_size))
        tint = int(128 + 60 * math.sin(index / 15))
        chroma_w, chroma_h = self.width // 2, self.height // 2
        cb.update(_plane(bytes([tint]) * chroma_w, chroma_h, cb.line_size))
        cr.update(_plane(bytes([255 - tint]) * chroma_w, chroma_h, cr.line_size))
        frame.pts = pts
        frame.time_base = time_base
        return frame

    def _luma(self, index: int, line_size: int) -> bytes:
        width, height = self.width, self.height
        shift = (index * 2) % _STRIPE_PERIOD
        box_x = (index * 4) % (width - _BOX)
        box_y = (height - _BOX) // 2
        pad = bytes(line_size - width)
        white = b"\xeb" * _BOX  # video-range white
        rows = []
        for y in range(height):
            start = (shift + y) % _STRIPE_PERIOD
            row = self._stripes[start : start + width]
            if box_y <= y < box_y + _BOX:
                row = row[:box_x] + white + row[box_x + _BOX :]
            rows.append(row + pad)
        return b"".join(rows)


def _plane(row: bytes, height: int, line_size: int) -> bytes:
    """A uniform plane of `height` copies of `row`, padded to the plane's stride."""
    return (row + bytes(line_size - len(row))) * height
