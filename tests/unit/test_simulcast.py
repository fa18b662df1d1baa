"""Simulcast step A (docs/simulcast.md): the offer's layer lines, reading the answer
(relay/simulcast.py), and binding incoming SSRCs to layers in relay/peer.py."""

from __future__ import annotations

import asyncio
import struct
from types import SimpleNamespace
from typing import Any

from aiortc.rtp import RtcpPacket, RtcpRrPacket

from relay import rtcp
from relay.peer import ParticipantPeer
from relay.rtp import RtpHeader, extension_block, one_byte_element
from relay.simulcast import RID_URI, SimulcastAnswer, offer_with_layers, parse_answer

OFFER = "\r\n".join(
    [
        "v=0",
        "a=group:BUNDLE 0 1",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:0",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=recvonly",
        "m=video 9 UDP/TLS/RTP/SAVPF 97",
        "a=mid:1",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=recvonly",
        "",
    ]
)

# Chromium 156's answer for the publish video m-line (docs/simulcast.md).
CHROMIUM_ANSWER = "\r\n".join(
    [
        "v=0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:0",
        "a=sendonly",
        "m=video 9 UDP/TLS/RTP/SAVPF 97",
        "a=mid:1",
        "a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
        "a=sendonly",
        "a=rtpmap:97 VP8/90000",
        "a=rid:h send",
        "a=rid:m send",
        "a=rid:l send",
        "a=simulcast:send h;m;l",
        "",
    ]
)

VIDEO_PT = 97
RID_ID = 10


def test_offer_asks_for_three_layers_on_the_named_mid_only() -> None:
    sdp = offer_with_layers(OFFER, ["1"])
    audio, video = sdp.split("m=video")
    assert "a=rid" not in audio and "simulcast" not in audio
    lines = video.split("\r\n")
    assert f"a=extmap:10 {RID_URI}" in lines
    assert "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id" in lines
    assert {"a=rid:h recv", "a=rid:m recv", "a=rid:l recv"} <= set(lines)
    assert "a=simulcast:recv h;m;l" in lines
    assert sdp.endswith("\r\n") and "\r\n\r\n" not in sdp
    assert offer_with_layers(OFFER, []) == OFFER


def test_offer_avoids_extension_ids_already_used() -> None:
    taken = OFFER.replace("a=extmap:3 ", "a=extmap:10 ")
    lines = offer_with_layers(taken, ["1"]).split("\r\n")
    assert f"a=extmap:11 {RID_URI}" in lines
    assert "a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id" in lines


def test_answer_with_three_layers() -> None:
    assert parse_answer(CHROMIUM_ANSWER, "1") == SimulcastAnswer(("h", "m", "l"), 10)
    assert parse_answer(CHROMIUM_ANSWER.replace("a=extmap:10 ", "a=extmap:4 "), "1") == (
        SimulcastAnswer(("h", "m", "l"), 4)
    )
    assert parse_answer(CHROMIUM_ANSWER, "0") is None  # the audio m-line
    assert parse_answer(CHROMIUM_ANSWER, "7") is None


def test_answer_without_simulcast_is_one_stream() -> None:
    plain = "\r\n".join(line for line in CHROMIUM_ANSWER.split("\r\n") if "rid" not in line)
    assert parse_answer(plain.replace("a=simulcast:send h;m;l\r\n", ""), "1") is None
    # Layers without the rtp-stream-id extension cannot be told apart.
    no_extension = CHROMIUM_ANSWER.replace(f"a=extmap:10 {RID_URI}\r\n", "")
    assert parse_answer(no_extension, "1") is None


def test_answer_with_fewer_or_paused_layers() -> None:
    two = CHROMIUM_ANSWER.replace("a=simulcast:send h;m;l", "a=simulcast:send ~h;l,m")
    assert parse_answer(two, "1") == SimulcastAnswer(("h", "l"), 10)
    undeclared = CHROMIUM_ANSWER.replace("a=rid:m send\r\n", "")
    assert parse_answer(undeclared, "1") == SimulcastAnswer(("h", "l"), 10)
    recv_too = CHROMIUM_ANSWER.replace("a=simulcast:send h;m;l", "a=simulcast:recv x send m")
    assert parse_answer(recv_too, "1") == SimulcastAnswer(("m",), 10)


# -- ingress ---------------------------------------------------------------------


class Events:
    """Records what the peer reports to its room."""

    def __init__(self) -> None:
        self.media: list[tuple[str, int, int]] = []

    async def on_media(
        self, peer: ParticipantPeer, kind: str, header: RtpHeader, data: bytes, layer: int,
        now: float,
    ) -> None:  # fmt: skip
        self.media.append((kind, header.ssrc, layer))

    def upstream_bitrate(self, peer: ParticipantPeer) -> int | None:
        return 500_000

    def on_codec(self, peer: ParticipantPeer, kind: str, mime: str) -> None:
        pass


class Sent:
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    async def _send_rtp(self, packet: bytes) -> None:
        self.packets.append(packet)


def video_packet(ssrc: int, sequence: int, rid: str | None) -> bytes:
    elements = one_byte_element(1, b"1")
    if rid is not None:
        elements += one_byte_element(RID_ID, rid.encode())
    fixed = struct.pack("!BBHII", 0x90, VIDEO_PT, sequence, sequence * 3000, ssrc)
    return fixed + extension_block(elements) + b"\x10\x00" * 10


async def make_peer(layers: SimulcastAnswer | None) -> tuple[ParticipantPeer, Events, Sent]:
    events = Events()

    async def signal(message: dict[str, Any]) -> None:
        pass

    peer = ParticipantPeer("p", signal, events)  # type: ignore[arg-type]
    peer._publish_pt = {VIDEO_PT: "video", 111: "audio"}
    peer._publish_mime = {VIDEO_PT: "video/vp8", 111: "audio/opus"}
    peer.publish["camera"] = SimpleNamespace(mid="1")  # type: ignore[assignment]
    if layers is not None:
        peer.simulcast["camera"] = layers
    sent = Sent()
    peer._transport = sent  # type: ignore[assignment]  # only _send_rtp is used
    return peer, events, sent


async def test_ssrcs_are_bound_to_rids_and_fed_back_separately() -> None:
    peer, events, sent = await make_peer(SimulcastAnswer(("h", "m", "l"), RID_ID))
    try:
        for ssrc, rid in ((0x11, "l"), (0x22, "m"), (0x33, "h")):
            await peer._handle_rtp(video_packet(ssrc, 100, rid), 0)
        await peer._handle_rtp(video_packet(0x22, 101, None), 0)  # rid no longer sent
        await peer._handle_rtp(video_packet(0x44, 1, None), 0)  # unknown, no rid: dropped
        await peer._handle_rtp(video_packet(0x55, 1, "x"), 0)  # not a negotiated rid
        assert events.media == [
            ("camera", 0x11, 0), ("camera", 0x22, 1), ("camera", 0x33, 2), ("camera", 0x22, 1),
        ]  # fmt: skip
        assert peer.publish_ssrc["camera"] == {"l": 0x11, "m": 0x22, "h": 0x33}
        assert peer.layer_rids("camera") == ["l", "m", "h"]
        assert not sent.packets
        # A gap on one layer is NACKed on that layer's SSRC only.
        await peer._handle_rtp(video_packet(0x22, 104, None), 0)
        (nack,) = rtcp.parse(sent.packets.pop())
        assert nack == rtcp.Nack(0x22, [102, 103])
        await peer._handle_rtp(video_packet(0x33, 101, None), 0)
        assert not sent.packets
        # One report block per layer; REMB names every video SSRC.
        compound = peer.receiver_reports(1.0)
        rr = RtcpPacket.parse(compound)[0]
        assert isinstance(rr, RtcpRrPacket)
        assert sorted(r.ssrc for r in rr.reports) == [0x11, 0x22, 0x33]
        remb = [r for r in rtcp.parse(compound) if isinstance(r, rtcp.Remb)]
        assert remb == [rtcp.Remb(500_000, [0x11, 0x22, 0x33])]
        # A layer that comes back on a new SSRC replaces its old one.
        await peer._handle_rtp(video_packet(0x66, 7, "h"), 0)
        assert peer.publish_ssrc["camera"] == {"l": 0x11, "m": 0x22, "h": 0x66}
        assert sorted(peer.incoming) == [0x11, 0x22, 0x66]
    finally:
        peer._transport = None
        await peer.close()


async def test_without_simulcast_one_stream_follows_the_ssrc() -> None:
    peer, events, _ = await make_peer(None)
    try:
        await peer._handle_rtp(video_packet(0x11, 100, "h"), 0)  # rid ignored
        await peer._handle_rtp(video_packet(0x22, 5, None), 0)  # the sender restarted
        assert events.media == [("camera", 0x11, 0), ("camera", 0x22, 0)]
        assert peer.publish_ssrc["camera"] == {"": 0x22}
        assert list(peer.incoming) == [0x22] and peer.layer_rids("camera") == [""]
    finally:
        await peer.close()


async def test_receiver_reports_only_while_the_participant_publishes(monkeypatch: Any) -> None:
    """The report loop of a participant that publishes nothing waits without a timer
    (in a meeting of hundreds of viewers, one wake-up per viewer per second adds up);
    it reports once a stream arrives and goes back to waiting when none is left."""
    monkeypatch.setattr("relay.peer.RTCP_INTERVAL_S", 0.01)
    peer, _, sent = await make_peer(None)
    rounds: list[int] = []  # each round of the loop draws its jitter once

    def jitter() -> float:
        rounds.append(1)
        return 0.5

    monkeypatch.setattr("relay.peer.random", SimpleNamespace(random=jitter))
    try:
        peer._rtcp_task = asyncio.create_task(peer._report_forever())
        await asyncio.sleep(0.05)
        assert not rounds and not sent.packets
        await peer._handle_rtp(video_packet(0x11, 100, None), 0)
        await asyncio.sleep(0.05)
        reports = [p for p in sent.packets if isinstance(RtcpPacket.parse(p)[0], RtcpRrPacket)]
        assert reports, "no receiver report while publishing"
        peer.incoming.clear()  # the stream went away
        await asyncio.sleep(0.03)
        waiting = len(rounds)
        await asyncio.sleep(0.05)
        assert len(rounds) == waiting and not peer._publishing.is_set()
    finally:
        peer._transport = None
        await peer.close()
