"""SFrame for H.264: one SFrame per NAL unit, framed so packetizers still work.

An H.264 frame is a sequence of NAL units that packetizers (aiortc's, Chromium's)
find by their start codes and send one by one (RFC 6184), reading each NAL header.
So the unit of encryption is the NAL unit, not the frame (docs/e2ee.md):

* the NAL header byte stays in clear (packetizers, the relay's key-frame test);
* parameter sets (SPS, PPS) stay in clear whole: they hold the picture size and
  coding parameters, no picture, and the relay reads the size from the SPS;
* a slice keeps its first `SLICE_CLEAR` bytes in clear, because Chromium's
  depacketizer reads the start of the slice header (slice type, PPS id);
* everything else is SFrame-encrypted with the clear bytes as metadata, then given
  H.264 emulation prevention (a 0x03 after any 00 00 that precedes a byte <= 3) so
  that no start code appears inside, and a final 0x80 so that it never ends in a
  zero byte (which a following start code would swallow).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from client.e2ee.context import DecryptStatus, UnprotectResult

START_CODE = b"\x00\x00\x00\x01"
CLEAR_TYPES = frozenset({7, 8})  # SPS, PPS
SLICE_TYPES = frozenset({1, 5})  # non-IDR and IDR slices
SLICE_CLEAR = 2  # bytes after a slice's NAL header kept in clear
TRAILER = 0x80
IDR = 5
SPS = 7


class Cipher(Protocol):
    def protect(self, plaintext: bytes, metadata: bytes) -> bytes | None: ...

    def unprotect(self, ciphertext: bytes, metadata: bytes) -> UnprotectResult: ...


def escape(data: bytes) -> bytes:
    """Insert emulation-prevention bytes (H.264 §7.4.1.1)."""
    out = bytearray()
    zeros = 0
    for byte in data:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """Remove what `escape` inserted: every 0x03 that follows 00 00."""
    out = bytearray()
    zeros = 0
    for byte in data:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def split_annexb(frame: bytes) -> Iterator[bytes]:
    """The NAL units of an Annex B frame (3- or 4-byte start codes)."""
    start = frame.find(b"\x00\x00\x01")
    while start != -1:
        begin = start + 3
        end = frame.find(b"\x00\x00\x01", begin)
        if end == -1:
            yield frame[begin:]
            return
        yield frame[begin : end - 1] if frame[end - 1] == 0 else frame[begin:end]
        start = end


def _clear_length(nal: bytes) -> int:
    return 1 + (SLICE_CLEAR if nal[0] & 0x1F in SLICE_TYPES else 0)


def seal_nal(cipher: Cipher, nal: bytes) -> bytes | None:
    """One NAL unit as it goes out; None when it cannot be encrypted (no key)."""
    if not nal or nal[0] & 0x1F in CLEAR_TYPES:
        return nal
    clear = min(_clear_length(nal), len(nal))
    sealed = cipher.protect(nal[clear:], nal[:clear])
    if sealed is None:
        return None
    return nal[:1] + escape(nal[1:clear] + sealed) + bytes([TRAILER])


def seal_nals(cipher: Cipher, nals: Iterable[bytes]) -> list[bytes] | None:
    """All NAL units of a frame, or None if any cannot be encrypted (then the frame
    is not sent at all: never part of it in clear)."""
    out = []
    for nal in nals:
        sealed = seal_nal(cipher, nal)
        if sealed is None:
            return None
        out.append(sealed)
    return out


def open_frame(cipher: Cipher, frame: bytes) -> tuple[bytes | None, DecryptStatus, int | None]:
    """An Annex B frame in clear, or None and why not (with the KID it named)."""
    out = []
    status, kid = DecryptStatus.OK, None
    for nal in split_annexb(frame):
        if not nal or nal[0] & 0x1F in CLEAR_TYPES:
            out.append(nal)
            continue
        if len(nal) < 2 or nal[-1] != TRAILER:
            return None, DecryptStatus.MALFORMED, kid
        body = unescape(nal[1:-1])
        clear = min(_clear_length(nal) - 1, len(body))
        result = cipher.unprotect(body[clear:], nal[:1] + body[:clear])
        kid = result.kid if kid is None else kid
        if result.plaintext is None:
            return None, result.status, kid
        status = result.status
        out.append(nal[:1] + body[:clear] + result.plaintext)
    if not out:
        return None, DecryptStatus.MALFORMED, kid
    return b"".join(START_CODE + nal for nal in out), status, kid


def is_keyframe(frame: bytes) -> bool:
    """Whether a decoder can start at this frame (it has an IDR slice or an SPS)."""
    return any(nal and nal[0] & 0x1F in (IDR, SPS) for nal in split_annexb(frame))
