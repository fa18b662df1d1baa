"""The synthetic tracks: right sizes and formats, monotonic timestamps, real-time
pacing, content that is neither silent nor static, and a clean end when stopped."""

from __future__ import annotations

import array
import fractions
import time

import pytest
from aiortc.mediastreams import MediaStreamError

from client.media import PatternVideoTrack, SineAudioTrack


async def test_audio_frames_are_20ms_of_48khz_mono_s16() -> None:
    track = SineAudioTrack()
    frames = [await track.recv() for _ in range(3)]
    for index, frame in enumerate(frames):
        assert frame.format.name == "s16"
        assert frame.layout.name == "mono"
        assert frame.samples == 960
        assert frame.sample_rate == 48_000
        assert frame.time_base == fractions.Fraction(1, 48_000)
        assert frame.pts == index * 960
    samples = array.array("h", bytes(frames[0].planes[0])[: 960 * 2])
    assert max(samples) > 5000 and min(samples) < -5000  # a tone, not silence
    track.stop()


async def test_audio_is_paced_in_real_time() -> None:
    track = SineAudioTrack()
    await track.recv()
    start = time.monotonic()
    for _ in range(5):
        await track.recv()
    elapsed = time.monotonic() - start
    assert 0.08 <= elapsed < 0.5  # five more 20 ms frames
    track.stop()


async def test_audio_tone_is_continuous_across_frames() -> None:
    track = SineAudioTrack(frequency=440)
    first, second = await track.recv(), await track.recv()
    joined = array.array("h", bytes(first.planes[0])[:1920] + bytes(second.planes[0])[:1920])
    # a 440 Hz sine at 48 kHz moves at most ~1900 per sample at this amplitude
    assert max(abs(joined[i + 1] - joined[i]) for i in range(len(joined) - 1)) < 2500
    track.stop()


async def test_video_frames_are_320x240_at_30fps() -> None:
    track = PatternVideoTrack()
    start = time.monotonic()
    frames = [await track.recv() for _ in range(4)]
    elapsed = time.monotonic() - start
    for index, frame in enumerate(frames):
        assert (frame.width, frame.height) == (320, 240)
        assert frame.format.name == "yuv420p"
        assert frame.time_base == fractions.Fraction(1, 90_000)
        assert frame.pts == index * 3000  # 90 kHz / 30 fps
    assert 0.08 <= elapsed < 0.6  # three frame intervals of 33 ms after the first
    track.stop()


async def test_video_pattern_moves() -> None:
    track = PatternVideoTrack()
    first, second = await track.recv(), await track.recv()
    luma_first, luma_second = bytes(first.planes[0]), bytes(second.planes[0])
    assert luma_first != luma_second
    assert len(set(luma_first)) > 16  # a pattern, not a flat picture
    # it converts, which is what the VP8 encoder does with it
    assert first.reformat(format="rgb24").width == 320
    track.stop()


@pytest.mark.parametrize("track_class", [SineAudioTrack, PatternVideoTrack])
async def test_stopped_track_raises_media_stream_error(
    track_class: type[SineAudioTrack] | type[PatternVideoTrack],
) -> None:
    track = track_class()
    await track.recv()
    track.stop()
    assert track.readyState == "ended"
    with pytest.raises(MediaStreamError):
        await track.recv()


def test_odd_video_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        PatternVideoTrack(width=321, height=240)
