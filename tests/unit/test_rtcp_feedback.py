"""RTCP records, reception statistics, NACK bookkeeping and retransmission."""

from __future__ import annotations

import struct

from aiortc.rtp import RtcpPacket, RtcpPsfbPacket, RtcpRrPacket, RtcpRtpfbPacket, RtcpSrPacket

from relay import rtcp
from relay.forwarder import SubscriberOutput, TrackForwarder
from relay.reception import NACK_MAX_TRIES, MissingPackets, ReceptionStats
from relay.rtp import RtpHeader
from tests.unit.test_relay_packets import VP8_DELTA, VP8_KEY, rtp


def test_nack_round_trips_through_aiortc_and_our_parser() -> None:
    lost = [65534, 65535, 0, 5, 40]
    data = rtcp.nack(1, 0xABC, lost)
    (parsed,) = RtcpPacket.parse(data)  # an independent parser agrees
    assert isinstance(parsed, RtcpRtpfbPacket) and sorted(parsed.lost) == sorted(lost)
    (item,) = rtcp.parse(data)
    assert isinstance(item, rtcp.Nack) and item.media_ssrc == 0xABC
    assert sorted(item.lost) == sorted(lost)


def test_remb_round_trip() -> None:
    data = rtcp.remb(7, 1_500_000, [11, 22])
    (parsed,) = RtcpPacket.parse(data)
    assert isinstance(parsed, RtcpPsfbPacket) and parsed.fmt == 15
    (item,) = rtcp.parse(data)
    assert isinstance(item, rtcp.Remb)
    assert item.ssrcs == [11, 22]
    assert abs(item.bitrate - 1_500_000) < 1_500_000 / 2**17


def test_sender_and_receiver_reports_parse_with_aiortc() -> None:
    sr = rtcp.sender_report(5, 0x1122334455667788, 90000, 10, 1000)
    (parsed_sr,) = RtcpPacket.parse(sr)
    assert isinstance(parsed_sr, RtcpSrPacket)
    assert parsed_sr.sender_info.rtp_timestamp == 90000
    assert rtcp.parse(sr) == [rtcp.SenderReport(5, 0x1122334455667788, 90000, 10, 1000)]
    block = rtcp.report_block(9, 25, 3, 70000, 12, 0xAABB, 65536)
    rr = rtcp.receiver_report(1, [block]) + rtcp.sdes_cname(1, b"relay")
    parsed_rr, _sdes = RtcpPacket.parse(rr)
    assert isinstance(parsed_rr, RtcpRrPacket)
    report = parsed_rr.reports[0]
    assert (report.ssrc, report.fraction_lost, report.packets_lost) == (9, 25, 3)
    assert (report.highest_sequence, report.jitter, report.lsr, report.dlsr) == (
        70000, 12, 0xAABB, 65536)  # fmt: skip


def test_parse_survives_garbage_and_zero_item_nacks() -> None:
    zero_items = struct.pack("!BBHII", 0x81, 205, 2, 1, 2)
    assert rtcp.parse(zero_items) == []
    assert rtcp.parse(b"\x80\xc8\x00\x50" + b"\x00" * 8) == []  # length past the end
    assert rtcp.parse(b"") == []


def test_reception_stats_count_loss_and_wraparound() -> None:
    stats = ReceptionStats(42, 90000)
    for i, seq in enumerate([65533, 65534, 0, 1, 3]):  # 65535 and 2 lost, seq wraps
        stats.update(seq, 3000 * i, i / 30)
    block = stats.report(1.0)
    ssrc, fraction, lost_hi, lost_lo, highest, _jitter, _lsr, _dlsr = struct.unpack(
        "!IBBHIIII", block
    )
    assert ssrc == 42
    assert (lost_hi << 16) | lost_lo == 2
    assert highest == (1 << 16) + 3
    assert fraction == (2 << 8) // 7


def test_missing_packets_nacked_at_most_three_times() -> None:
    missing = MissingPackets()
    assert not missing.update(100)
    assert missing.update(103)  # 101 and 102 missing
    assert missing.due(0.0) == [101, 102]
    assert missing.due(0.05) == []  # too soon to ask again
    assert not missing.update(101)  # arrived late: no longer missing
    asked = [missing.due(0.2 * n) for n in range(1, 2 * NACK_MAX_TRIES)]
    assert sum(1 for batch in asked if batch == [102]) == NACK_MAX_TRIES - 1
    assert missing.missing == {}


def test_forwarder_answers_nacks_with_rtx_from_cache() -> None:
    forwarder = TrackForwarder("video", lambda _layer: None)
    sub = SubscriberOutput(111, 97, b"", rtx=(222, 98))
    forwarder.add_subscriber(sub)
    sent = []
    for seq, payload in ((10, VP8_KEY), (11, VP8_DELTA), (12, VP8_DELTA)):
        data = rtp(97, seq, 1000, 5, payload)
        sent += [p for _, p in forwarder.forward(data, RtpHeader.parse(data))]
    second = RtpHeader.parse(sent[1])
    (retransmission,) = forwarder.retransmit(sub, [second.sequence, 4242])
    header = RtpHeader.parse(retransmission)
    assert (header.ssrc, header.payload_type) == (222, 98)
    payload = retransmission[header.payload_offset :]
    assert struct.unpack("!H", payload[:2])[0] == second.sequence
    assert payload[2:] == VP8_DELTA
    assert sub.retransmitted == 1


def test_sender_report_is_translated_to_the_subscriber_clock() -> None:
    forwarder = TrackForwarder("audio", lambda _layer: None)
    sub = SubscriberOutput(111, 96, b"")
    forwarder.add_subscriber(sub)
    assert forwarder.sender_report(sub, 1, 2) is None  # nothing sent yet: no report
    data = rtp(96, 1, 48000, 5, b"opus")
    ((_, packet),) = forwarder.forward(data, RtpHeader.parse(data))
    report = forwarder.sender_report(sub, 0xABCDEF, 48000 + 960)
    assert report is not None
    (parsed,) = rtcp.parse(report)
    assert isinstance(parsed, rtcp.SenderReport)
    assert parsed.ssrc == 111 and parsed.ntp == 0xABCDEF
    assert parsed.rtp_timestamp == (RtpHeader.parse(packet).timestamp + 960) & 0xFFFFFFFF
    assert (parsed.packets, parsed.octets) == (1, 4)
