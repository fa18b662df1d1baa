"""SFrame on the encoded-frame path (client/e2ee/media.py): what stays in clear,
what a relay can still read, and bad frames dropped and counted, never raised."""

from __future__ import annotations

import fractions
from types import SimpleNamespace
from typing import Any

import av
import pytest
from aiortc import RTCRtpCodecParameters
from aiortc.codecs.h264 import H264Decoder, h264_depayload
from aiortc.codecs.vpx import Vp8Decoder, vp8_depayload
from aiortc.jitterbuffer import JitterFrame

from client.e2ee import h264
from client.e2ee.context import DecryptStatus, SFrameContext, UnprotectResult
from client.e2ee.media import (
    PENDING_GRACE_S,
    VP8_DELTA_CLEAR,
    VP8_KEY_CLEAR,
    _OpeningJitterBuffer,
    _sealing_encoder,
    open_frame,
    seal_frame,
)
from client.e2ee.suites import CipherSuite
from relay.rtp import (
    h264_keyframe_size,
    is_h264_keyframe_start,
    is_vp8_keyframe_start,
    vp8_keyframe_size,
)

KEY = bytes(range(16))
PACKET = SimpleNamespace(payload_type=96)  # what a jitter buffer is given, as far as read
VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)


class Cipher:
    """One sender's and one receiver's SFrame context under the same key."""

    def __init__(self, kid: int = 7) -> None:
        self.kid = kid
        self.sender = SFrameContext(CipherSuite.AES_128_GCM_SHA256_128)
        self.receiver = SFrameContext(CipherSuite.AES_128_GCM_SHA256_128, pending_limit=0)
        self.sender.add_send_key(kid, KEY)
        self.receiver.add_recv_key(kid, KEY)

    def protect(self, plaintext: bytes, metadata: bytes) -> bytes | None:
        return self.sender.protect(self.kid, plaintext, metadata)

    def unprotect(self, ciphertext: bytes, metadata: bytes) -> UnprotectResult:
        return self.receiver.unprotect(ciphertext, metadata)

    def missed(self, kid: int) -> bool:
        return not self.receiver.has_recv_key(kid)


def video_frames(count: int) -> list[av.VideoFrame]:
    frames = []
    for i in range(count):
        frame = av.VideoFrame(320, 180, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes([(i * 37 + 11) % 256]) * plane.buffer_size)
        frame.pts = i * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        frames.append(frame)
    return frames


def test_vp8_frames_keep_the_bytes_a_relay_reads_and_decode_after_opening() -> None:
    cipher = Cipher()
    encoder = _sealing_encoder(VP8, cipher)
    decoder = Vp8Decoder()
    decoded = 0
    for index, frame in enumerate(video_frames(3)):
        payloads, timestamp = encoder.encode(frame, force_keyframe=index == 0)
        assert payloads
        if index == 0:  # the relay still finds the key frame and its size
            assert is_vp8_keyframe_start(payloads[0])
            assert vp8_keyframe_size(payloads[0]) == (320, 180)
        sealed = b"".join(vp8_depayload(p) for p in payloads)
        clear = VP8_KEY_CLEAR if index == 0 else VP8_DELTA_CLEAR
        plaintext, status, kid = open_frame(cipher, "video/vp8", sealed)
        assert kid == 7
        assert status is DecryptStatus.OK and plaintext is not None
        assert plaintext[:clear] == sealed[:clear]  # the clear part is the frame's own
        assert len(sealed) > len(plaintext)  # header and tag added
        decoded += len(decoder.decode(JitterFrame(data=plaintext, timestamp=timestamp)))
    assert decoded == 3


def test_opus_frames_are_encrypted_whole() -> None:
    cipher = Cipher()
    encoder: Any = _sealing_encoder(OPUS, cipher)
    packet = av.Packet(b"\xf8opus frame")
    packet.pts, packet.time_base = 960, fractions.Fraction(1, 48000)
    (payload,), _ = encoder.pack(packet)
    assert b"opus frame" not in payload
    assert open_frame(cipher, "audio/opus", payload) == (b"\xf8opus frame", DecryptStatus.OK, 7)


def test_nothing_is_sent_without_a_key() -> None:
    class NoKey:
        def protect(self, plaintext: bytes, metadata: bytes) -> bytes | None:
            return None

        def unprotect(self, ciphertext: bytes, metadata: bytes) -> UnprotectResult:
            raise AssertionError("not called")

        def missed(self, kid: int) -> bool:
            return True

    encoder = _sealing_encoder(VP8, NoKey())
    payloads, _ = encoder.encode(video_frames(1)[0], force_keyframe=True)
    assert payloads == []


def test_unsupported_codec_is_refused() -> None:
    with pytest.raises(ValueError, match="AV1"):
        _sealing_encoder(RTCRtpCodecParameters("video/AV1", 90000, payloadType=45), Cipher())


class Buffer:
    """A jitter buffer that hands out given frames."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        data = self.frames.pop(0)
        return False, JitterFrame(data=data, timestamp=0) if data else None


def test_bad_frames_are_dropped_and_counted_never_raised() -> None:
    cipher = Cipher()
    good = [seal_frame(cipher, "audio/opus", b"\x01\x02\x03audio frame") for _ in range(3)]
    assert all(g is not None for g in good)
    first, second, third = (g or b"" for g in good)
    flipped_header = bytes([first[0] ^ 0x02]) + first[1:]  # the KID
    flipped_tag = second[:-1] + bytes([second[-1] ^ 0x01])
    failures: list[int] = []
    frames = [flipped_header, flipped_tag, third, third, third[:5], b"\x01\x02\x03", b""]
    buffer = _OpeningJitterBuffer(Buffer(frames), "audio", cipher, lambda: failures.append(1))
    out = [buffer.add(PACKET)[1] for _ in range(len(frames))]
    assert [f.data if f is not None else None for f in out] == [
        None, None, b"\x01\x02\x03audio frame", None, None, None, None,
    ]  # fmt: skip
    # header/ciphertext/tag tampering, a replay, truncation, no SFrame at all
    assert len(failures) == 5
    counted = cipher.receiver.stats.decrypt_failures
    assert counted[DecryptStatus.AUTH_FAILED] == 2 and counted[DecryptStatus.REPLAY] >= 1


def test_frames_for_keys_still_on_their_way_are_not_failures() -> None:
    sender = Cipher()
    receiver = Cipher()
    receiver.receiver = SFrameContext(CipherSuite.AES_128_GCM_SHA256_128)  # buffers unknown KIDs
    sealed = seal_frame(sender, "audio/opus", b"hello")
    assert sealed is not None
    failures: list[int] = []
    stranger = Cipher(kid=9)  # a KID the receiver will never learn
    unknown = seal_frame(stranger, "audio/opus", b"from nobody")
    assert unknown is not None
    later = seal_frame(sender, "audio/opus", b"hello again")
    assert later is not None
    frames = [sealed, unknown, later]
    buffer = _OpeningJitterBuffer(Buffer(frames), "audio", receiver, lambda: failures.append(1))
    assert buffer.add(PACKET) == (False, None)
    assert buffer.add(PACKET) == (False, None)
    assert failures == []  # both KIDs unknown, within the grace period
    receiver.receiver.add_recv_key(7, KEY)  # KID 7's key message arrives
    grace = PENDING_GRACE_S + 0.5  # as if the grace period had passed
    buffer._pending = type(buffer._pending)((at - grace, kid) for at, kid in buffer._pending)
    assert buffer.add(PACKET)[1] is not None  # a later frame of KID 7 decrypts
    assert failures == [1]  # only KID 9's frame, whose key never came, failed


def test_video_after_a_lost_frame_waits_for_a_key_frame_and_asks_for_one() -> None:
    cipher = Cipher()
    key = bytes([0x50, 0x01, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xB4, 0x00]) + b"key"
    delta = b"\x31\x02\x00delta"
    sealed = [seal_frame(cipher, "video/vp8", f) or b"" for f in (delta, key, delta, delta, key)]
    broken = sealed[2][:-1] + bytes([sealed[2][-1] ^ 1])
    frames = [sealed[0], sealed[1], broken, sealed[3], sealed[4]]
    failures: list[int] = []
    buffer = _OpeningJitterBuffer(Buffer(frames), "video", cipher, lambda: failures.append(1))
    results = [buffer.add(PACKET) for _ in range(len(frames))]
    assert [f.data if f else None for _, f in results] == [None, key, None, None, key]
    # A PLI for the first delta (no key frame seen yet); the broken frame comes
    # less than 0.5 s later, so it asks again only after that.
    assert [pli for pli, _ in results] == [True, False, False, False, False]
    buffer._asked_at -= 1.0
    buffer._need_keyframe = True
    buffer._inner = Buffer([seal_frame(cipher, "video/vp8", delta) or b""])
    assert buffer.add(PACKET) == (True, None)
    assert failures == [1]


H264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102)


def test_h264_is_sealed_per_nal_unit_and_decodes_after_opening() -> None:
    cipher = Cipher()
    encoder = _sealing_encoder(H264, cipher)
    decoder = H264Decoder()
    decoded = 0
    for index, frame in enumerate(video_frames(3)):
        payloads, timestamp = encoder.encode(frame, force_keyframe=index == 0)
        assert payloads
        if index == 0:  # the relay still finds the key frame and reads its size
            assert is_h264_keyframe_start(payloads[0])
            assert h264_keyframe_size(payloads[0]) == (320, 180)
        annexb = b"".join(h264_depayload(p) for p in payloads)
        nals = list(h264.split_annexb(annexb))
        assert all(n[0] & 0x1F in h264.CLEAR_TYPES or n[-1] == h264.TRAILER for n in nals)
        assert all(b"\x00\x00\x01" not in n and b"\x00\x00\x00" not in n for n in nals)
        plaintext, status, kid = open_frame(cipher, "video/h264", annexb)
        assert status is DecryptStatus.OK and kid == 7 and plaintext is not None
        assert h264.is_keyframe(plaintext) == (index == 0)
        decoded += len(decoder.decode(JitterFrame(data=plaintext, timestamp=timestamp)))
    assert decoded == 3


def test_h264_escaping_round_trips_every_awkward_byte_run() -> None:
    for data in (b"", b"\x00", b"\x00\x00", b"\x00\x00\x00\x00\x01\x02\x03\x04",
                 b"\x00\x00\x03\x00\x00\x03\x03", bytes(range(256)) * 3):  # fmt: skip
        escaped = h264.escape(data)
        assert h264.unescape(escaped) == data
        runs = {escaped[i : i + 3] for i in range(len(escaped))}
        assert not runs & {b"\x00\x00\x00", b"\x00\x00\x01", b"\x00\x00\x02"}


def test_h264_frames_that_do_not_open_are_refused() -> None:
    cipher = Cipher()
    slice_nal = bytes([0x41, 0x9A, 0x00]) + b"slice data" * 10
    sealed = h264.seal_nals(cipher, [slice_nal])
    assert sealed is not None
    frame = h264.START_CODE + sealed[0]
    tampered = frame[:6] + bytes([frame[6] ^ 1]) + frame[7:]  # a clear slice byte
    assert open_frame(cipher, "video/h264", tampered)[1] is DecryptStatus.AUTH_FAILED
    assert open_frame(cipher, "video/h264", frame[:-1])[1] is DecryptStatus.MALFORMED
    assert open_frame(cipher, "video/h264", b"")[1] is DecryptStatus.MALFORMED
    assert open_frame(cipher, "video/h264", frame) == (
        h264.START_CODE + slice_nal, DecryptStatus.OK, 7
    )  # fmt: skip
