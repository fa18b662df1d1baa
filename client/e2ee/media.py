"""SFrame on aiortc's encoded-frame path: encrypt after the encoder, before
packetization; decrypt after depacketization, before the decoder.

Codec-aware (docs/e2ee.md): a VP8 frame keeps its first bytes in clear, as SFrame
metadata (authenticated, not encrypted): the 3-byte frame tag, and for a key frame
also the start code, width and height (10 bytes). The relay reads exactly those to
find key frames and layer sizes (relay/rtp.py); the VP8 payload descriptor is per
packet and never part of the frame. Opus frames are encrypted whole. H.264 is
encrypted per NAL unit (client/e2ee/h264.py). Codecs are named by lower-case MIME
type ("video/vp8", "video/h264", "audio/opus").

aiortc has no public hook for encoded frames, so these wrap one sender's encoder
and one receiver's jitter buffer (the object that hands complete frames to the
decoder). A frame that cannot be encrypted (no key yet) is not sent; one that does
not decrypt is dropped and counted, never decoded. There is no clear fallback.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any, Protocol

from aiortc import RTCRtpCodecParameters, RTCRtpReceiver, RTCRtpSender
from aiortc.codecs import get_encoder

from client.e2ee import h264
from client.e2ee.context import DecryptStatus, UnprotectResult

VP8_KEY_CLEAR = 10  # frame tag (3), start code (3), width (2), height (2)
VP8_DELTA_CLEAR = 3  # frame tag
KEYFRAME_INTERVAL_S = 0.5  # between PLIs while waiting for a key frame
# How long a frame's unknown KID may wait for its key message before it counts as a
# failure: a joiner's first key comes after the leader's rekey window (1 s,
# client/e2ee/group.py), and on a busy machine some time after that.
PENDING_GRACE_S = 3.0


class FrameCipher(Protocol):
    def protect(self, plaintext: bytes, metadata: bytes) -> bytes | None: ...

    def unprotect(self, ciphertext: bytes, metadata: bytes) -> UnprotectResult: ...

    def missed(self, kid: int) -> bool: ...


def clear_length(codec: str, frame: bytes) -> int:
    """How many leading bytes of a (VP8 or Opus) frame stay in clear."""
    if codec != "video/vp8" or not frame:
        return 0
    return VP8_DELTA_CLEAR if frame[0] & 0x01 else VP8_KEY_CLEAR


def seal_frame(cipher: FrameCipher, codec: str, frame: bytes) -> bytes | None:
    """A VP8 or Opus frame as it goes out; None when there is no key yet."""
    clear = min(clear_length(codec, frame), len(frame))
    sealed = cipher.protect(frame[clear:], frame[:clear])
    return None if sealed is None else frame[:clear] + sealed


def open_frame(
    cipher: FrameCipher, codec: str, data: bytes
) -> tuple[bytes | None, DecryptStatus, int | None]:
    """The frame in clear, or None and why not; and the KID it named, if any."""
    if codec == "video/h264":
        return h264.open_frame(cipher, data)
    clear = min(clear_length(codec, data), len(data))
    result = cipher.unprotect(data[clear:], data[:clear])
    if result.plaintext is None:
        return None, result.status, result.kid
    return data[:clear] + result.plaintext, result.status, result.kid


def is_keyframe(codec: str, frame: bytes) -> bool:
    if codec == "video/h264":
        return h264.is_keyframe(frame)
    return bool(frame) and not frame[0] & 0x01


def encrypt_sender(sender: RTCRtpSender, cipher: FrameCipher) -> None:
    """Make `sender` encrypt every frame it sends, whichever encoder it creates."""
    if getattr(sender, "_conclave_sealed", False):
        return
    next_frame = sender._next_encoded_frame

    async def sealed_next_frame(codec: RTCRtpCodecParameters) -> Any:
        if sender._RTCRtpSender__encoder is None:  # type: ignore[attr-defined]
            sender._RTCRtpSender__encoder = _sealing_encoder(codec, cipher)  # type: ignore[attr-defined]
        return await next_frame(codec)

    sender._next_encoded_frame = sealed_next_frame  # type: ignore[method-assign]
    sender._conclave_sealed = True  # type: ignore[attr-defined]


def _sealing_encoder(codec: RTCRtpCodecParameters, cipher: FrameCipher) -> Any:
    """aiortc's encoder for `codec`, encrypting each frame before it is split into
    packets (VP8: at `_packetize`, which gets the whole frame; H.264: at
    `_packetize`, which gets the NAL units; Opus: each frame)."""
    mime = codec.mimeType.lower()
    if mime not in ("video/vp8", "video/h264", "audio/opus"):
        raise ValueError(f"no end-to-end encryption for {codec.mimeType}")
    encoder: Any = get_encoder(codec)
    if mime == "video/vp8":
        packetize = encoder._packetize

        def sealed_packetize(buffer: bytes, picture_id: int) -> list[bytes]:
            sealed = seal_frame(cipher, mime, buffer)
            return [] if sealed is None else packetize(sealed, picture_id)

        encoder._packetize = sealed_packetize
        return encoder
    if mime == "video/h264":
        packetize_nals = encoder._packetize

        def sealed_nals(packages: Any) -> list[bytes]:
            sealed = h264.seal_nals(cipher, packages)
            return [] if sealed is None else packetize_nals(sealed)

        encoder._packetize = sealed_nals
        return encoder
    encode, pack = encoder.encode, encoder.pack

    def seal_all(result: tuple[list[bytes], Any]) -> tuple[list[bytes], Any]:
        payloads, timestamp = result
        sealed = [seal_frame(cipher, mime, p) for p in payloads]
        return [s for s in sealed if s is not None], timestamp

    encoder.encode = lambda frame, force_keyframe=False: seal_all(encode(frame, force_keyframe))
    encoder.pack = lambda packet: seal_all(pack(packet))
    return encoder


class _OpeningJitterBuffer:
    """Stands in for a receiver's jitter buffer: frames come out decrypted, or not
    at all. A frame under keys not installed yet counts as a failure only if, after
    `PENDING_GRACE_S`, it still should have decrypted (`missed`): its key message
    is usually on the way (a join races the first frames), a joiner is never keyed
    for the epochs before it, but frames from a sender without keys (or without
    encryption) never decrypt.

    Video after a frame that did not open (and at the start) waits for a key frame,
    asked for with a PLI at most every `KEYFRAME_INTERVAL_S`: the frames in between
    refer to one the decoder never saw and would only fail to decode."""

    def __init__(
        self,
        inner: Any,
        kind: str,
        cipher: FrameCipher,
        on_failure: Callable[[], None],
        codec_of: Callable[[int], str] | None = None,
    ) -> None:
        self._inner = inner
        self._kind = kind
        # The codec of a packet's payload type (several may be negotiated).
        default = "video/vp8" if kind == "video" else "audio/opus"
        self._codec_of = codec_of or (lambda _payload_type: default)
        self._cipher = cipher
        self._on_failure = on_failure
        self._need_keyframe = kind == "video"
        self._asked_at = -KEYFRAME_INTERVAL_S
        self._pending: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, packet: Any) -> tuple[bool, Any]:
        pli, frame = self._inner.add(packet)
        if frame is None:
            return pli, None
        now = time.monotonic()
        self._settle_pending(now)
        codec = self._codec_of(packet.payload_type)
        plaintext, status, kid = open_frame(self._cipher, codec, frame.data)
        if plaintext is None:
            if status is DecryptStatus.PENDING and kid is not None:
                self._pending.append((now, kid))
            else:
                self._on_failure()
            if self._kind == "video":
                self._need_keyframe = True
                return self._ask_keyframe(pli), None
            return pli, None
        if self._need_keyframe:
            if not is_keyframe(codec, plaintext):  # its reference is missing
                return self._ask_keyframe(pli), None
            self._need_keyframe = False
        frame.data = plaintext
        return pli, frame

    def _settle_pending(self, now: float) -> None:
        while self._pending and now - self._pending[0][0] >= PENDING_GRACE_S:
            _, kid = self._pending.popleft()
            if self._cipher.missed(kid):
                self._on_failure()

    def _ask_keyframe(self, pli: bool) -> bool:
        now = time.monotonic()
        if now - self._asked_at < KEYFRAME_INTERVAL_S:
            return pli
        self._asked_at = now
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def decrypt_receiver(
    receiver: RTCRtpReceiver, kind: str, cipher: FrameCipher, on_failure: Callable[[], None]
) -> None:
    """Make `receiver` decrypt every frame before its decoder sees it."""
    inner = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
    if isinstance(inner, _OpeningJitterBuffer):
        return
    default = "video/vp8" if kind == "video" else "audio/opus"

    def codec_of(payload_type: int) -> str:
        codecs = receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
        codec = codecs.get(payload_type)
        return codec.mimeType.lower() if codec is not None else default

    receiver._RTCRtpReceiver__jitter_buffer = _OpeningJitterBuffer(  # type: ignore[attr-defined]
        inner, kind, cipher, on_failure, codec_of
    )
