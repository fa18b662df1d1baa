"""Garbage RTP/RTCP never crashes the relay, and what it emits stays well formed.

A seeded mutation fuzzer (tests/fuzz/packets.py) runs well over 100 000 inputs
through the parsers and forwarders and as many through a real ParticipantPeer's
handlers; hypothesis checks round trips and bounds. `make fuzz` runs longer with a
fresh seed. The regression cases at the end are inputs the fuzzer found.
"""

from __future__ import annotations

import struct

from aiortc.rtp import (
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSrPacket,
    RtpPacket,
    unpack_remb_fci,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay import rtcp
from relay.forwarder import SubscriberOutput, TrackForwarder
from relay.reception import MAX_MISSING, MissingPackets, ReceptionStats
from relay.rtp import RtpHeader
from tests.fuzz.packets import (
    check_rtcp,
    check_rtp,
    extension_block,
    rtp_packet,
    run_peer,
    run_pure,
    run_sequences,
)

SEED = 20240611
MIN_INPUTS = 100_000

properties = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,  # the same examples on every run, like the fuzzer's fixed seeds
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
seq = st.integers(0, 0xFFFF)
u32 = st.integers(0, 2**32 - 1)


def test_parsers_and_forwarders_survive_mutated_packets() -> None:
    counts = run_pure(SEED, MIN_INPUTS)
    assert counts["inputs"] >= MIN_INPUTS
    # The run stays a mix that reaches every layer, not just the parsers' refusals.
    assert counts["mutated"] > 0.8 * MIN_INPUTS and counts["rtcp"] > 0.3 * MIN_INPUTS
    assert counts["rtp_parsed"] > 0.25 * MIN_INPUTS
    assert counts["forwarded"] > 0.5 * MIN_INPUTS and counts["rtcp_records"] > 0.3 * MIN_INPUTS
    assert counts["retransmitted"] > 0.1 * MIN_INPUTS
    assert counts["retransmissions_matched"] > 0.1 * MIN_INPUTS
    assert counts["sender_reports"] > 0.3 * MIN_INPUTS


async def test_peer_handlers_survive_mutated_datagrams() -> None:
    counts = await run_peer(SEED + 1, MIN_INPUTS)
    assert counts["inputs"] >= MIN_INPUTS
    assert counts["mutated"] > 0.8 * MIN_INPUTS and counts["rtcp"] > 0.3 * MIN_INPUTS
    assert counts["on_media"] > 0.2 * MIN_INPUTS and counts["forwarded"] > 0.4 * MIN_INPUTS
    for call in ("on_keyframe_request", "on_nack", "on_remb", "on_sender_report"):
        assert counts[call] > 0.01 * MIN_INPUTS, call
    assert counts["nacks_sent"] > 0.01 * MIN_INPUTS and counts["retransmitted"] > 0


def test_sequence_numbers_with_wraps_and_jumps() -> None:
    counts = run_sequences(SEED + 2, streams=1000, length=200)
    assert counts["streams"] == 1000 and counts["sequence_numbers"] > 200_000
    assert counts["followed_after_chaos"] > 300


# -- properties ------------------------------------------------------------------


@properties
@given(st.binary(max_size=300))
def test_any_bytes_as_rtp_or_rtcp(data: bytes) -> None:
    check_rtp(data)
    check_rtcp(data)


@properties
@given(
    st.integers(0, 127), seq, u32, u32, st.binary(max_size=200), st.integers(0, 1),
    st.lists(u32, max_size=15), st.integers(0, 255),
    st.lists(st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=16)), max_size=4),
)  # fmt: skip
def test_valid_rtp_parses_and_forwards_intact(
    payload_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    payload: bytes,
    marker: int,
    csrcs: list[int],
    padding: int,
    elements: list[tuple[int, bytes]],
) -> None:
    block = b"".join(bytes([i << 4 | (len(v) - 1)]) + v for i, v in elements)
    data = rtp_packet(payload_type, sequence, timestamp, ssrc, payload, marker=marker,
                      csrcs=tuple(csrcs), padding=padding,
                      extension=extension_block(0xBEDE, block) if elements else b"")  # fmt: skip
    header = check_rtp(data)  # agrees with aiortc's parser field by field
    assert header is not None and header.extensions == elements
    assert (header.sequence, header.timestamp, header.ssrc) == (sequence, timestamp, ssrc)
    end = len(data) - padding
    assert data[header.payload_offset : end] == payload
    forwarder = TrackForwarder("audio", lambda _layer: None)
    output = SubscriberOutput(7, 111, bytes([0x10]) + b"m")
    forwarder.add_subscriber(output)
    out = forwarder.forward(data, header)
    if padding and not payload:  # padding only: dropped, nothing to forward
        assert out == [] and forwarder.layers[0].padding == 1
        return
    ((_, packet),) = out
    theirs = RtpPacket.parse(packet)
    assert (theirs.ssrc, theirs.payload_type, theirs.marker) == (7, 111, marker)
    assert theirs.payload == payload and theirs.padding_size == padding


@properties
@given(u32, u32, st.lists(seq, min_size=1, max_size=80))
def test_nack_round_trips(sender: int, media: int, lost: list[int]) -> None:
    data = rtcp.nack(sender, media, lost)
    (item,) = rtcp.parse(data)
    assert isinstance(item, rtcp.Nack) and item.media_ssrc == media
    assert sorted(item.lost) == sorted(set(lost))
    (theirs,) = RtcpPacket.parse(data)
    assert isinstance(theirs, RtcpRtpfbPacket)
    assert sorted(s & 0xFFFF for s in theirs.lost) == sorted(set(lost))


@properties
@given(u32, st.integers(0, 2**60), st.lists(u32, max_size=255))
def test_remb_round_trips(sender: int, bitrate: int, ssrcs: list[int]) -> None:
    data = rtcp.remb(sender, bitrate, ssrcs)
    (item,) = rtcp.parse(data)
    assert isinstance(item, rtcp.Remb) and item.ssrcs == ssrcs
    exponent = max(0, bitrate.bit_length() - 18)
    assert item.bitrate == bitrate >> exponent << exponent  # 18-bit mantissa, rounded down
    (theirs,) = RtcpPacket.parse(data)
    assert isinstance(theirs, RtcpPsfbPacket) and theirs.fmt == 15
    assert unpack_remb_fci(theirs.fci) == (item.bitrate, ssrcs)


@properties
@given(
    u32, st.integers(0, 2**64 - 1), u32, u32, u32, st.binary(max_size=255), u32,
    st.lists(st.tuples(u32, st.integers(0, 255), st.integers(-(2**23), 2**23 - 1), u32, u32,
                       u32, u32), max_size=31),
)  # fmt: skip
def test_reports_round_trip(
    ssrc: int,
    ntp: int,
    rtp_timestamp: int,
    packets: int,
    octets: int,
    cname: bytes,
    media: int,
    blocks: list[tuple[int, int, int, int, int, int, int]],
) -> None:
    compound = (
        rtcp.sender_report(ssrc, ntp, rtp_timestamp, packets, octets)
        + rtcp.receiver_report(ssrc, [rtcp.report_block(*b) for b in blocks])
        + rtcp.sdes_cname(ssrc, cname)
        + rtcp.pli(ssrc, media)
    )
    assert check_rtcp(compound) == [
        rtcp.SenderReport(ssrc, ntp, rtp_timestamp, packets, octets),
        *(rtcp.ReportBlock(b[0], b[1], b[5], b[6]) for b in blocks),
        rtcp.KeyframeRequest(media),
    ]
    sr, rr, sdes, pli = RtcpPacket.parse(compound)
    assert isinstance(sr, RtcpSrPacket)
    assert isinstance(rr, RtcpRrPacket)
    got = [(r.ssrc, r.fraction_lost, r.packets_lost, r.highest_sequence, r.jitter, r.lsr, r.dlsr)
           for r in rr.reports]  # fmt: skip
    assert got == blocks
    assert isinstance(sdes, RtcpSdesPacket) and sdes.chunks[0].items == [(1, cname)]
    assert isinstance(pli, RtcpPsfbPacket) and (pli.fmt, pli.media_ssrc) == (1, media)


@properties
@given(st.lists(seq, max_size=400), st.floats(0, 10))
def test_missing_packets_stay_bounded(sequences: list[int], step: float) -> None:
    missing = MissingPackets()
    now = 0.0
    for sequence in sequences:
        missing.update(sequence)
        assert len(missing.missing) <= MAX_MISSING and sequence not in missing.missing
        due = missing.due(now)
        assert len(set(due)) == len(due)
        now += step


@properties
@given(st.lists(seq, min_size=1, max_size=300), st.sampled_from([48000, 90000]))
def test_reception_reports_stay_in_range(sequences: list[int], clock_rate: int) -> None:
    stats = ReceptionStats(5, clock_rate)
    for i, sequence in enumerate(sequences):
        stats.update(sequence, i * 960, i * 0.02)
        if i % 20 == 0:
            stats.sender_report(i << 20, i * 0.02)
        block = stats.report(i * 0.02)
        assert len(block) == 24 and block[:4] == struct.pack("!I", 5)
        (rr,) = RtcpPacket.parse(rtcp.receiver_report(1, [block]))
        assert isinstance(rr, RtcpRrPacket) and 0 <= rr.reports[0].fraction_lost <= 255


# -- inputs the fuzzer found --------------------------------------------------------


def test_reception_stats_follow_a_sequence_jump() -> None:
    """A jump of 3000 or more left the highest sequence number stuck where it was,
    so receiver reports never advanced again (until a wrap); RFC 3550 A.1 follows
    the jump once the next packet confirms it."""
    for jump in (20000, 40000):  # ahead, and far behind (a restart)
        stats = ReceptionStats(9, 90000)
        for i, sequence in enumerate((65534, 65535, 0, 1, jump, jump + 1, jump + 2, jump + 3)):
            stats.update(sequence, 3000 * i, i / 30)
        _, _, lost_high, lost_low, highest, *_ = struct.unpack("!IBBHIIII", stats.report(1.0))
        assert highest == jump + 3 and (lost_high, lost_low) == (0, 0)
    stats = ReceptionStats(9, 90000)
    for i, sequence in enumerate((100, 101, 30000, 102)):  # one stray packet: ignored
        stats.update(sequence, 3000 * i, i / 30)
    assert struct.unpack("!IBBHIIII", stats.report(1.0))[4] == 102


def test_a_nack_naming_a_packet_twice_gets_it_once() -> None:
    """Two FCI entries for the same packet (or PID and bitmask overlapping) made the
    relay send the packet once per mention: a subscriber could multiply its
    retransmissions with one small RTCP packet."""
    forwarder = TrackForwarder("video", lambda _layer: None)
    output = SubscriberOutput(111, 97, b"")
    forwarder.add_subscriber(output)
    key = bytes([0x10, 0x00, 0x9D, 0x01, 0x2A])
    data = rtp_packet(97, 7, 1000, 5, key)
    ((_, sent),) = forwarder.forward(data, RtpHeader.parse(data))
    sequence = RtpHeader.parse(sent).sequence
    fci = struct.pack("!HH", sequence, 0) * 40 + struct.pack("!HH", (sequence - 1) & 0xFFFF, 1)
    nack = struct.pack("!BBHII", 0x81, 205, 2 + len(fci) // 4, 1, 111) + fci
    (item,) = rtcp.parse(nack)
    assert isinstance(item, rtcp.Nack) and len(item.lost) == 42
    assert forwarder.retransmit(output, item.lost) == [sent]


def test_rtcp_padding_is_not_read_as_items() -> None:
    """RFC 3550 §6.4.1: with the P bit set the last byte counts padding bytes. The
    relay read them as FCI entries, here a NACK for packets 0 and 3."""
    padded = bytes.fromhex("a1cd0005 00000001 00000002 000a0000 00280000 00000004")
    assert rtcp.parse(padded) == [rtcp.Nack(2, [10, 40])]
    (theirs,) = RtcpPacket.parse(padded)
    assert isinstance(theirs, RtcpRtpfbPacket) and theirs.lost == [10, 40]
    for count in (0, 21):  # no padding byte counted, or more than the packet holds
        bad = padded[:-1] + bytes([count])
        assert rtcp.parse(bad) == []
    pli_after_padded_sr = rtcp.pli(1, 77)
    sr = bytearray(rtcp.sender_report(5, 1, 2, 3, 4) + b"\x00\x00\x00\x04")
    sr[0] |= 0x20
    sr[3] += 1
    assert rtcp.parse(bytes(sr) + pli_after_padded_sr) == [
        rtcp.SenderReport(5, 1, 2, 3, 4),
        rtcp.KeyframeRequest(77),
    ]
