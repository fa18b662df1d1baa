"""The RTCP the relay reads and writes itself (RFC 3550 §6, RFC 4585 §6.3, RFC 5104 §4.3).

Incoming compound packets are only scanned for keyframe requests; everything else
is dropped at the relay, since each leg has its own SSRCs and reports.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

PT_SR = 200
PT_RR = 201
PT_RTPFB = 205
PT_PSFB = 206
FMT_PLI = 1
FMT_FIR = 4

_common = struct.Struct("!BBH")


def iter_packets(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(packet type, FMT/count, body after the 4-byte header) of each packet in a
    compound RTCP datagram; stops quietly at the first malformed one."""
    offset = 0
    while offset + 4 <= len(data):
        first, packet_type, words = _common.unpack_from(data, offset)
        end = offset + 4 + 4 * words
        if first >> 6 != 2 or end > len(data):
            return
        yield packet_type, first & 0x1F, data[offset + 4 : end]
        offset = end


def keyframe_requests(data: bytes) -> list[int]:
    """Media SSRCs for which the sender of `data` asks a keyframe (PLI or FIR)."""
    wanted: list[int] = []
    for packet_type, fmt, body in iter_packets(data):
        if packet_type != PT_PSFB:
            continue
        if fmt == FMT_PLI and len(body) >= 8:
            wanted.append(struct.unpack_from("!I", body, 4)[0])
        elif fmt == FMT_FIR and len(body) >= 16:
            # FCI entries of 8 bytes start after sender SSRC and the unused media SSRC.
            for offset in range(8, len(body) - 7, 8):
                wanted.append(struct.unpack_from("!I", body, offset)[0])
    return wanted


def pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    """A Picture Loss Indication (RFC 4585 §6.3.1)."""
    return struct.pack("!BBHII", 0x80 | FMT_PLI, PT_PSFB, 2, sender_ssrc, media_ssrc)
