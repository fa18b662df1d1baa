"""RTP header access for forwarding: read and rewrite, never decode media.

RFC 3550 §5.1 (fixed header), RFC 8285 (header extensions), RFC 7741 §4 (VP8
payload descriptor). Functions take `bytes` and return offsets or values so the
forwarder can rewrite packets without building Python objects per packet.
"""

from __future__ import annotations

import struct

RTP_VERSION = 2
FIXED_HEADER = 12
ONE_BYTE_PROFILE = 0xBEDE

_header = struct.Struct("!BBHII")


class RtpHeader:
    """The fields of one packet the relay needs; `parse` raises ValueError."""

    __slots__ = (
        "extensions",
        "marker",
        "payload_offset",
        "payload_type",
        "sequence",
        "ssrc",
        "timestamp",
    )

    def __init__(self) -> None:
        self.marker = 0
        self.payload_type = 0
        self.sequence = 0
        self.timestamp = 0
        self.ssrc = 0
        self.payload_offset = FIXED_HEADER
        # One-byte-profile elements as (id, data); other profiles are kept opaque.
        self.extensions: list[tuple[int, bytes]] = []

    @classmethod
    def parse(cls, data: bytes) -> RtpHeader:
        if len(data) < FIXED_HEADER:
            raise ValueError("RTP packet shorter than its fixed header")
        first, second, sequence, timestamp, ssrc = _header.unpack_from(data)
        if first >> 6 != RTP_VERSION:
            raise ValueError("RTP version is not 2")
        header = cls()
        header.marker = second >> 7
        header.payload_type = second & 0x7F
        header.sequence = sequence
        header.timestamp = timestamp
        header.ssrc = ssrc
        offset = FIXED_HEADER + 4 * (first & 0x0F)
        if first & 0x10:
            offset = header._parse_extensions(data, offset)
        end = len(data)
        if first & 0x20:  # padding: the last byte counts the padding bytes
            if data[-1] == 0:
                raise ValueError("RTP padding length is zero")
            end -= data[-1]
        if offset > end:
            raise ValueError("RTP header runs past the end of the packet")
        header.payload_offset = offset
        return header

    def _parse_extensions(self, data: bytes, offset: int) -> int:
        if offset + 4 > len(data):
            raise ValueError("RTP extension header truncated")
        profile, words = struct.unpack_from("!HH", data, offset)
        start = offset + 4
        end = start + 4 * int(words)
        if end > len(data):
            raise ValueError("RTP extension block truncated")
        if profile == ONE_BYTE_PROFILE:
            self.extensions = parse_one_byte_extensions(data[start:end])
        return end


def parse_one_byte_extensions(block: bytes) -> list[tuple[int, bytes]]:
    """RFC 8285 §4.2 elements; stops at id 15, skips padding bytes."""
    elements: list[tuple[int, bytes]] = []
    i = 0
    while i < len(block):
        byte = block[i]
        if byte == 0:
            i += 1
            continue
        ext_id, length = byte >> 4, (byte & 0x0F) + 1
        if ext_id == 15:
            break
        if i + 1 + length > len(block):
            raise ValueError("RTP extension element truncated")
        elements.append((ext_id, block[i + 1 : i + 1 + length]))
        i += 1 + length
    return elements


def one_byte_element(ext_id: int, value: bytes) -> bytes:
    """Encode one RFC 8285 one-byte element (1..16 bytes of data)."""
    if not 1 <= ext_id <= 14 or not 1 <= len(value) <= 16:
        raise ValueError("extension id or length out of range for the one-byte form")
    return bytes([(ext_id << 4) | (len(value) - 1)]) + value


def extension_block(elements: bytes) -> bytes:
    """Wrap encoded one-byte elements in the RFC 8285 header, padded to 32 bits."""
    if not elements:
        return b""
    padded = elements + b"\x00" * (-len(elements) % 4)
    return struct.pack("!HH", ONE_BYTE_PROFILE, len(padded) // 4) + padded


def vp8_descriptor_length(payload: bytes | memoryview) -> int:
    """Length of the VP8 payload descriptor (RFC 7741 §4.2); 0 when it is
    truncated, so that no frame byte follows it."""
    if len(payload) < 1:
        return 0
    first = payload[0]
    offset = 1
    if first & 0x80:  # X: extended control bits present
        if len(payload) < 2:
            return 0
        ext = payload[1]
        offset = 2
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if len(payload) <= offset:
                return 0
            offset += 2 if payload[offset] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            offset += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX byte
            offset += 1
    return offset if len(payload) > offset else 0


def is_vp8_keyframe_start(payload: bytes | memoryview) -> bool:
    """True when this VP8 packet starts a key frame (RFC 7741 §4.2, §4.3).

    Only the payload descriptor and the first byte of the frame tag are read; with
    SFrame those bytes stay in clear as authenticated metadata.
    """
    if len(payload) < 1 or payload[0] & 0x17 != 0x10:  # S set, partition index 0
        return False
    offset = vp8_descriptor_length(payload)
    return offset > 0 and not payload[offset] & 0x01  # frame tag P bit: 0 means key frame


def vp8_keyframe_size(payload: bytes | memoryview) -> tuple[int, int] | None:
    """Width and height from the first packet of a VP8 key frame (RFC 6386 §9.1:
    3-byte frame tag, start code 9d 01 2a, then 14-bit width and height, little
    endian), or None when the packet does not carry them."""
    if not is_vp8_keyframe_start(payload):
        return None
    offset = vp8_descriptor_length(payload)
    frame = bytes(payload[offset : offset + 10])
    if len(frame) < 10 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return (width, height) if width and height else None


H264_SPS = 7
H264_STAP_A = 24


def h264_sps(payload: bytes | memoryview) -> bytes | None:
    """The sequence parameter set this H.264 packet carries (RFC 6184: a single NAL
    unit, or one inside a STAP-A aggregate), or None. A decoder can start only at a
    key frame with its parameter sets, which encoders send right before the IDR
    picture, so a packet with an SPS is where a subscriber may join or switch."""
    if len(payload) < 2:
        return None
    nal_type = payload[0] & 0x1F
    if nal_type == H264_SPS:
        return bytes(payload)
    if nal_type != H264_STAP_A:
        return None
    offset = 1
    while offset + 2 < len(payload):
        size = payload[offset] << 8 | payload[offset + 1]
        start = offset + 2
        if size == 0 or start + size > len(payload):
            return None
        if payload[start] & 0x1F == H264_SPS:
            return bytes(payload[start : start + size])
        offset = start + size
    return None


def is_h264_keyframe_start(payload: bytes | memoryview) -> bool:
    return h264_sps(payload) is not None


def h264_keyframe_size(payload: bytes | memoryview) -> tuple[int, int] | None:
    """Width and height from the SPS in this packet (H.264 §7.3.2.1.1), if any."""
    sps = h264_sps(payload)
    if sps is None:
        return None
    try:
        return _sps_size(_unescape(sps[1:]))
    except (IndexError, ValueError):
        return None


def _unescape(data: bytes) -> bytes:
    """Remove emulation-prevention bytes (00 00 03 -> 00 00)."""
    return data.replace(b"\x00\x00\x03", b"\x00\x00")


class _Bits:
    """Reads the exp-Golomb codes of a parameter set; IndexError past the end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def bit(self) -> int:
        byte = self.data[self.position >> 3]
        value = (byte >> (7 - (self.position & 7))) & 1
        self.position += 1
        return value

    def bits(self, count: int) -> int:
        value = 0
        for _ in range(count):
            value = value << 1 | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while not self.bit():
            zeros += 1
            if zeros > 31:
                raise ValueError("exp-Golomb code too long")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        value = self.ue()
        return (value + 1) // 2 if value & 1 else -(value // 2)


_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


def _sps_size(rbsp: bytes) -> tuple[int, int] | None:
    bits = _Bits(rbsp)
    profile_idc = bits.bits(8)
    bits.bits(16)  # constraint flags, level_idc
    bits.ue()  # seq_parameter_set_id
    chroma_format_idc = 1
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = bits.ue()
        if chroma_format_idc == 3:
            bits.bit()  # separate_colour_plane_flag
        bits.ue()  # bit_depth_luma_minus8
        bits.ue()  # bit_depth_chroma_minus8
        bits.bit()  # qpprime_y_zero_transform_bypass_flag
        if bits.bit():  # seq_scaling_matrix_present_flag
            for index in range(8 if chroma_format_idc != 3 else 12):
                if bits.bit():  # a scaling list: skip its deltas
                    last, following = 8, 8
                    for _ in range(16 if index < 6 else 64):
                        if following:
                            following = (last + bits.se() + 256) % 256
                        last = following or last
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()
    elif poc_type == 1:
        bits.bit()
        bits.se()
        bits.se()
        for _ in range(bits.ue()):
            bits.se()
    bits.ue()  # max_num_ref_frames
    bits.bit()  # gaps_in_frame_num_value_allowed_flag
    width_mbs = bits.ue() + 1
    height_map_units = bits.ue() + 1
    frame_mbs_only = bits.bit()
    if not frame_mbs_only:
        bits.bit()  # mb_adaptive_frame_field_flag
    bits.bit()  # direct_8x8_inference_flag
    width = width_mbs * 16
    height = height_map_units * 16 * (2 - frame_mbs_only)
    if bits.bit():  # frame_cropping_flag
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
        crop_x = 2 if chroma_format_idc in (1, 2) else 1
        crop_y = (2 if chroma_format_idc == 1 else 1) * (2 - frame_mbs_only)
        width -= (left + right) * crop_x
        height -= (top + bottom) * crop_y
    return (width, height) if width > 0 and height > 0 else None
