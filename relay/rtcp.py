"""The RTCP the relay reads and writes itself.

RFC 3550 §6.4 (SR, RR), §6.5 (SDES); RFC 4585 §6.2.1 (generic NACK), §6.3.1 (PLI);
RFC 5104 §4.3.1 (FIR); draft-alvestrand-rmcat-remb (REMB). Each leg of a meeting has
its own SSRCs, so the relay terminates RTCP: incoming compounds are parsed into a
few small records, and outgoing reports are built here. Parsing never raises: a
malformed packet ends the walk through its compound.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import NamedTuple

PT_SR = 200
PT_RR = 201
PT_SDES = 202
PT_RTPFB = 205
PT_PSFB = 206
FMT_NACK = 1
FMT_PLI = 1
FMT_FIR = 4
FMT_REMB = 15
REMB_ID = b"REMB"

_common = struct.Struct("!BBH")
_ssrc_pair = struct.Struct("!II")
_sender_info = struct.Struct("!IQIII")  # SSRC, NTP, RTP timestamp, packets, octets
_report_block = struct.Struct("!IBBHIIII")


class SenderReport(NamedTuple):
    ssrc: int
    ntp: int  # 64-bit NTP timestamp
    rtp_timestamp: int
    packets: int
    octets: int


class KeyframeRequest(NamedTuple):
    media_ssrc: int


class Nack(NamedTuple):
    media_ssrc: int
    lost: list[int]


class Remb(NamedTuple):
    bitrate: int
    ssrcs: list[int]


class ReportBlock(NamedTuple):
    """What a receiver says about one SSRC it receives (in an SR or an RR)."""

    ssrc: int
    fraction_lost: int  # of 256, since the previous report
    lsr: int  # middle 32 bits of the NTP time of the last SR it got, 0 if none
    dlsr: int  # since then, in 1/65536 s


Feedback = SenderReport | KeyframeRequest | Nack | Remb | ReportBlock


def iter_packets(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(packet type, FMT/count, body after the 4-byte header, less any padding) of
    each packet in a compound RTCP datagram; stops quietly at the first malformed one."""
    offset = 0
    while offset + 4 <= len(data):
        first, packet_type, words = _common.unpack_from(data, offset)
        end = offset + 4 + 4 * words
        if first >> 6 != 2 or end > len(data):
            return
        body = data[offset + 4 : end]
        if first & 0x20:  # padding: the last byte counts the padding bytes
            if not body or not 0 < body[-1] <= len(body):
                return
            body = body[: -body[-1]]
        yield packet_type, first & 0x1F, body
        offset = end


def parse(data: bytes) -> list[Feedback]:
    """The records in a compound packet that the relay acts on."""
    found: list[Feedback] = []
    for packet_type, fmt, body in iter_packets(data):
        if packet_type == PT_SR and len(body) >= _sender_info.size:
            found.append(SenderReport(*_sender_info.unpack_from(body)))
            found.extend(_report_blocks(fmt, body, _sender_info.size))
        elif packet_type == PT_RR:
            found.extend(_report_blocks(fmt, body, 4))
        elif packet_type == PT_PSFB:
            found.extend(_payload_specific(fmt, body))
        elif packet_type == PT_RTPFB and fmt == FMT_NACK and len(body) >= 12:
            media_ssrc = _ssrc_pair.unpack_from(body)[1]
            found.append(Nack(media_ssrc, _nack_items(body[8:])))
    return found


def _report_blocks(count: int, body: bytes, offset: int) -> Iterator[ReportBlock]:
    """The `count` report blocks from `offset` on, as many as the body holds."""
    for index in range(count):
        start = offset + index * _report_block.size
        if start + _report_block.size > len(body):
            return
        ssrc, fraction, _, _, _, _, lsr, dlsr = _report_block.unpack_from(body, start)
        yield ReportBlock(ssrc, fraction, lsr, dlsr)


def _payload_specific(fmt: int, body: bytes) -> list[Feedback]:
    if fmt == FMT_PLI and len(body) >= 8:
        return [KeyframeRequest(_ssrc_pair.unpack_from(body)[1])]
    if fmt == FMT_FIR and len(body) >= 16:
        # FCI entries of 8 bytes follow sender SSRC and the unused media SSRC.
        return [
            KeyframeRequest(struct.unpack_from("!I", body, offset)[0])
            for offset in range(8, len(body) - 7, 8)
        ]
    if fmt == FMT_REMB and len(body) >= 16 and body[8:12] == REMB_ID:
        count, exp_mantissa = body[12], struct.unpack_from("!I", body, 12)[0] & 0xFFFFFF
        bitrate = (exp_mantissa & 0x3FFFF) << (exp_mantissa >> 18)
        ssrcs = [struct.unpack_from("!I", body, 16 + 4 * i)[0] for i in range(count)
                 if 20 + 4 * i <= len(body)]  # fmt: skip
        return [Remb(bitrate, ssrcs)]
    return []


def _nack_items(fci: bytes) -> list[int]:
    """Sequence numbers named by generic NACK FCI entries (PID + bitmask)."""
    lost: list[int] = []
    for offset in range(0, len(fci) - 3, 4):
        pid, bitmask = struct.unpack_from("!HH", fci, offset)
        lost.append(pid)
        lost.extend((pid + bit + 1) & 0xFFFF for bit in range(16) if bitmask >> bit & 1)
    return lost


def keyframe_requests(data: bytes) -> list[int]:
    """Media SSRCs for which the sender of `data` asks a keyframe (PLI or FIR)."""
    return [item.media_ssrc for item in parse(data) if isinstance(item, KeyframeRequest)]


# -- building ---------------------------------------------------------------


def _header(count_or_fmt: int, packet_type: int, body_len: int) -> bytes:
    return _common.pack(0x80 | count_or_fmt, packet_type, body_len // 4)


def pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    """A Picture Loss Indication (RFC 4585 §6.3.1)."""
    return _header(FMT_PLI, PT_PSFB, 8) + _ssrc_pair.pack(sender_ssrc, media_ssrc)


def nack(sender_ssrc: int, media_ssrc: int, lost: Iterable[int]) -> bytes:
    """A generic NACK naming `lost` sequence numbers, packed into PID+BLP entries."""
    fci = b""
    pending = sorted(set(lost), key=lambda s: s)
    while pending:
        pid = pending.pop(0)
        bitmask = 0
        for seq in list(pending):
            distance = (seq - pid) & 0xFFFF
            if 1 <= distance <= 16:
                bitmask |= 1 << (distance - 1)
                pending.remove(seq)
        fci += struct.pack("!HH", pid, bitmask)
    body = _ssrc_pair.pack(sender_ssrc, media_ssrc) + fci
    return _header(FMT_NACK, PT_RTPFB, len(body)) + body


def remb(sender_ssrc: int, bitrate: int, ssrcs: list[int]) -> bytes:
    """Receiver Estimated Maximum Bitrate: 6-bit exponent, 18-bit mantissa."""
    exponent = 0
    while bitrate >> exponent > 0x3FFFF:
        exponent += 1
    mantissa = bitrate >> exponent
    body = (
        _ssrc_pair.pack(sender_ssrc, 0)
        + REMB_ID
        + struct.pack("!I", (len(ssrcs) << 24) | (exponent << 18) | mantissa)
        + b"".join(struct.pack("!I", s) for s in ssrcs)
    )
    return _header(FMT_REMB, PT_PSFB, len(body)) + body


def receiver_report(sender_ssrc: int, blocks: list[bytes]) -> bytes:
    body = struct.pack("!I", sender_ssrc) + b"".join(blocks[:31])
    return _header(min(len(blocks), 31), PT_RR, len(body)) + body


def report_block(
    ssrc: int,
    fraction_lost: int,
    cumulative_lost: int,
    highest_sequence: int,
    jitter: int,
    last_sr: int,
    delay_since_last_sr: int,
) -> bytes:
    """One RFC 3550 §6.4.1 reception report block (24 bytes)."""
    lost = max(min(cumulative_lost, 0x7FFFFF), -0x800000) & 0xFFFFFF
    return _report_block.pack(
        ssrc, fraction_lost, lost >> 16, lost & 0xFFFF, highest_sequence & 0xFFFFFFFF,
        jitter & 0xFFFFFFFF, last_sr & 0xFFFFFFFF, delay_since_last_sr & 0xFFFFFFFF,
    )  # fmt: skip


def sender_report(ssrc: int, ntp: int, rtp_timestamp: int, packets: int, octets: int) -> bytes:
    body = _sender_info.pack(
        ssrc, ntp & 0xFFFFFFFFFFFFFFFF, rtp_timestamp & 0xFFFFFFFF,
        packets & 0xFFFFFFFF, octets & 0xFFFFFFFF,
    )  # fmt: skip
    return _header(0, PT_SR, len(body)) + body


def sdes_cname(ssrc: int, cname: bytes) -> bytes:
    """An SDES packet with one CNAME item (RFC 3550 §6.5.1), padded to 32 bits."""
    chunk = struct.pack("!IBB", ssrc, 1, len(cname)) + cname + b"\x00"
    chunk += b"\x00" * (-len(chunk) % 4)
    return _header(1, PT_SDES, len(chunk)) + chunk
