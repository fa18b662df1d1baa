"""One participant's aiortc peer connection, used as a packet pipe.

The relay is always the offerer (docs/signaling.md), so header-extension ids and
payload types are the relay's own on every leg. After a description is applied the
DTLS transport's RTP/RTCP handlers are replaced: decrypted packets go to the room
instead of aiortc's receivers, so nothing on the relay ever decodes media.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpCodecParameters,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpparameters import RTCRtpSendParameters
from aiortc.sdp import candidate_from_sdp

from conclave.meeting import SOURCE_KINDS
from relay import _native, media_path, metrics, rtcp, simulcast
from relay.errors import SignalingError
from relay.forwarder import CLOCK_RATES, MID_URI
from relay.media_path import Forwarder, NativeForwarder, Output, new_output
from relay.native_io import run_now, take_over
from relay.reception import MissingPackets, ReceptionStats
from relay.rtp import RtpHeader, one_byte_element
from relay.speaker import AUDIO_LEVEL_URI

log = logging.getLogger(__name__)

ANSWER_TIMEOUT_S = 20.0
CONNECT_TIMEOUT_S = 20.0
# The codecs the relay offers, preferred first. It cannot transcode: a track goes
# in the codec its publisher chose to every subscriber that negotiated that codec.
# Opus and VP8 are what every WebRTC endpoint supports; H.264 is offered after VP8,
# so it is used when a publisher prefers it (and both ends have it).
CODECS = {"audio": ("audio/opus",), "video": ("video/VP8", "video/H264")}

RTCP_INTERVAL_S = 1.0
CNAME = b"conclave-relay"

Signal = Callable[[dict[str, Any]], Awaitable[None]]

# Fraction of incoming video packets to throw away, for loss-recovery tests only
# (`conclave relay --test-drop-video PERCENT`); 0 in every real deployment.
_test_video_loss = 0.0


# Ask browser publishers for three simulcast layers (on unless `conclave relay
# --no-simulcast`); each subscriber then receives the layer that suits it.
_offer_simulcast = True


def set_simulcast_offer(enabled: bool) -> None:
    global _offer_simulcast
    _offer_simulcast = enabled


def set_test_video_loss(fraction: float) -> None:
    global _test_video_loss
    _test_video_loss = fraction


class PeerEvents(Protocol):
    """What a peer reports to its room; the room owns tracks and forwarding."""

    async def on_media(self, peer: ParticipantPeer, source: str, header: RtpHeader,
                       data: bytes, layer: int, now: float) -> None:  # fmt: skip
        """One packet of this participant's `source` track, of simulcast `layer` (0,
        the lowest, for a single stream), arrived at `now` (event-loop clock)."""

    def on_keyframe_request(self, track_id: str, output: Output) -> None: ...

    def on_codec(self, peer: ParticipantPeer, source: str, mime: str) -> None:
        """This participant now sends its `source` track in `mime` (lower case)."""

    async def on_nack(self, track_id: str, output: Output, lost: list[int]) -> None: ...

    def on_remb(self, track_id: str, output: Output, bitrate: int) -> None: ...

    async def on_sender_report(self, peer: ParticipantPeer, source: str,
                               report: rtcp.SenderReport, layer: int) -> None: ...  # fmt: skip

    def sender_report_sent_at(self, lsr: int) -> float | None:
        """When the room sent subscribers the sender reports whose NTP time has
        middle 32 bits `lsr` (what a receiver report names), if it remembers."""

    def upstream_bitrate(self, peer: ParticipantPeer) -> int | None:
        """What to ask this participant to send at most (REMB), if known."""

    def on_publish_negotiated(
        self, peer: ParticipantPeer, source: str, extensions: dict[int, str]
    ) -> None:
        """The header-extension ids (id -> URI) of this participant's `source` leg."""  # fmt: skip


class IdleTrack(MediaStreamTrack):
    """The placeholder track of a relay-driven m-line: it gives the m-line its
    stream and track ids in the SDP; nothing ever reads it (the sender never starts)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    async def recv(self) -> Any:
        await asyncio.Future()


class IncomingStream:
    """One SSRC a participant sends: which source and layer it is (the rid, and its
    index from the lowest quality), its reception statistics (RFC 3550 §6.4) and,
    for video, the gaps to NACK (RFC 4585)."""

    __slots__ = ("kind", "layer", "missing", "rid", "source", "stats")

    def __init__(self, ssrc: int, source: str, rid: str, layer: int) -> None:
        kind = SOURCE_KINDS[source]
        self.source = source
        self.kind = kind
        self.rid = rid
        self.layer = layer
        self.stats = ReceptionStats(ssrc, CLOCK_RATES[kind])
        self.missing = MissingPackets() if kind == "video" else None


@dataclass
class Subscription:
    """A sendonly m-line carrying another participant's track to this one."""

    track_id: str
    publisher_id: str
    kind: str
    source: str
    transceiver: RTCRtpTransceiver
    output: Output | None = None
    removed: bool = False
    # The largest video size the subscriber shows this track at (`video_size`).
    video_size: tuple[int, int] | None = None


class ParticipantPeer:
    """Owns the peer connection; serialises offers; exposes packets in and out."""

    def __init__(self, participant_id: str, signal: Signal, events: PeerEvents) -> None:
        self.participant_id = participant_id
        # max-bundle: one ICE/DTLS transport per participant from the first m-line on,
        # also for m-lines added by later offers.
        self.pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        # The recvonly m-line of each source this participant publishes.
        self.publish: dict[str, RTCRtpTransceiver] = {}
        # Per source, the SSRC currently carrying each layer (rid; "" without
        # simulcast): learnt from packets, since browsers announce no SSRCs with simulcast.
        self.publish_ssrc: dict[str, dict[str, int]] = {}
        # Per source, the layers the answer accepted (RFC 8853), best first; a source
        # absent here is sent as one stream.
        self.simulcast: dict[str, simulcast.SimulcastAnswer] = {}
        # Negotiated id of the RFC 6464 audio-level extension on the publish audio
        # m-line (None until an answer accepted it); ids are per connection.
        self.audio_level_id: int | None = None
        self._simulcast_offered: list[str] = []  # mids ever offered with layers
        self.subscriptions: dict[str, Subscription] = {}
        self.rtcp_ssrc = random.getrandbits(32)
        # Unix ms the join began (its grant's issue) until the first media packet
        # to or from this participant; then None (conclave_join_duration_seconds).
        self.join_started_ms: int | None = None
        self.incoming: dict[int, IncomingStream] = {}  # by SSRC
        self._signal = signal
        self._events = events
        self._publish_pt: dict[int, str] = {}  # payload type -> media kind
        self._publish_mime: dict[int, str] = {}  # payload type -> lower-case MIME type
        # Negotiated ids of the MID header extension on publish m-lines: with two
        # video sources (camera and screen) the MID tells an SSRC's source.
        self._mid_extension_ids: set[int] = set()
        self.publish_codec: dict[str, str] = {}  # source -> MIME type of the latest packet
        self._by_output_ssrc: dict[int, Subscription] = {}
        self._transport: RTCDtlsTransport | None = None
        # The native engine's leg (docs/native.md), once DTLS is done, and the
        # incoming SSRCs whose books it keeps (bind_native).
        self._leg: _native.Leg | None = None
        self._bound: set[int] = set()
        self._needed = asyncio.Event()
        self._answer: asyncio.Future[str] | None = None
        self._task: asyncio.Task[None] | None = None
        self._rtcp_task: asyncio.Task[None] | None = None
        self._publishing = asyncio.Event()  # set by a first stream, cleared when none is left
        self.failed = asyncio.Event()

    # -- session changes -------------------------------------------------

    def add_publish(self, source: str, codec: str | None = None) -> None:
        """A recvonly m-line where this participant sends its `source` track,
        offering `codec` (a MIME type it asked for) first: a sender uses the first
        codec of the offer that it supports, so the relay's order is its choice."""
        kind = SOURCE_KINDS[source]
        transceiver = self.pc.addTransceiver(kind, direction="recvonly")
        _prefer_codec(transceiver, kind, first=codec)
        self.publish[source] = transceiver
        self._needed.set()

    def remove_publish(self, source: str) -> None:
        """Stop receiving `source`: its m-line goes inactive in the next offer and
        its packets are dropped from now on."""
        transceiver = self.publish.pop(source, None)
        if transceiver is None:
            return
        transceiver.direction = "inactive"
        self.simulcast.pop(source, None)
        self.publish_codec.pop(source, None)
        self._forget(source)
        self._needed.set()

    def add_subscription(self, track_id: str, publisher_id: str, source: str) -> None:
        kind = SOURCE_KINDS[source]
        transceiver = self.pc.addTransceiver(IdleTrack(kind), direction="sendonly")
        _prefer_codec(transceiver, kind, rtx=True)
        # The relay sends this m-line's RTP and RTCP itself; aiortc's sender must not
        # start (it would send sender reports with zero timestamps, and BYE at stop).
        transceiver.sender.send = _sender_stays_idle  # type: ignore[method-assign]
        self.subscriptions[track_id] = Subscription(
            track_id, publisher_id, kind, source, transceiver
        )
        self._needed.set()

    def remove_subscription(self, track_id: str) -> Output | None:
        """Mark the m-line inactive; returns the output to detach from its track."""
        sub = self.subscriptions.pop(track_id, None)
        if sub is None:
            return None
        sub.removed = True
        sub.transceiver.direction = "inactive"
        if sub.output is not None:
            self._by_output_ssrc.pop(sub.output.ssrc, None)
        self._needed.set()
        return sub.output

    def start(self, on_subscription_ready: Callable[[Subscription], None]) -> None:
        self._on_ready = on_subscription_ready
        self._needed.set()
        self._task = asyncio.create_task(self._negotiate_forever(), name="negotiation")
        self._rtcp_task = asyncio.create_task(self._report_forever(), name="rtcp-reports")

    # -- offer/answer ------------------------------------------------------

    async def _negotiate_forever(self) -> None:
        try:
            while True:
                await self._needed.wait()
                self._needed.clear()
                if self.pc.getTransceivers():  # nothing to offer until there is media
                    await self._negotiate_once()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info("negotiation failed: %s", type(exc).__name__)
            log.debug("negotiation failure detail", exc_info=True)
            self.failed.set()

    async def _negotiate_once(self) -> None:
        # aiortc applies its own offer; the client gets it with the simulcast lines.
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offered = [s for s in self.subscriptions.values() if s.transceiver.mid is not None]
        pending = [s for s in offered if s.output is None]
        loop = asyncio.get_running_loop()
        self._answer = loop.create_future()
        await self._signal(self._offer_message(offered))
        while True:
            sdp = await asyncio.wait_for(self._answer, ANSWER_TIMEOUT_S)
            try:
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
                self._read_simulcast(sdp)
                break
            except Exception as exc:
                self._answer = loop.create_future()
                await self._signal(
                    {"type": "error", "code": "bad_sdp", "message": f"answer refused: {exc}"}
                )
        self._answer = None
        self._after_answer()
        if pending:
            await self._connected()
        for sub in pending:
            if not sub.removed and sub.track_id in self.subscriptions:
                sub.output = self._make_output(sub)
                if isinstance(sub.output, _native.Subscriber):
                    sub.output.leg = self._leg  # None until DTLS is done: set then
                    sub.output.announce = self.join_started_ms is not None
                self._by_output_ssrc[sub.output.ssrc] = sub
                self._on_ready(sub)

    async def _connected(self) -> None:
        """Wait until DTLS is up before attaching new subscriptions: packets sent
        earlier are dropped, and a video subscriber whose first keyframe is lost
        decodes nothing until the next one."""
        transport = self._transport
        if transport is None or transport.state == "connected":
            return
        changed = asyncio.Event()
        transport.on("statechange", changed.set)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                while transport.state not in ("connected", "closed", "failed"):
                    await changed.wait()
                    changed.clear()
        finally:
            transport.remove_listener("statechange", changed.set)
        if transport.state != "connected":
            raise ConnectionError("the participant's DTLS transport did not connect")

    def _simulcast_mids(self) -> list[str]:
        """The camera's m-line, asking for layers. Every m-line once offered with
        layers keeps its simulcast lines after it goes inactive (the camera was
        stopped): a browser refuses an offer that drops them from an m-line that
        negotiated them."""
        camera = self.publish.get("camera")
        if _offer_simulcast and camera is not None and camera.mid is not None:
            if camera.mid not in self._simulcast_offered:
                self._simulcast_offered.append(camera.mid)
            return [camera.mid]
        return []

    def _offer_message(self, offered: list[Subscription]) -> dict[str, Any]:
        mids = self._simulcast_mids()
        sdp = simulcast.offer_with_layers(self.pc.localDescription.sdp, self._simulcast_offered)
        return {
            "type": "offer",
            "sdp": sdp,
            "publish": {source: t.mid for source, t in self.publish.items()},
            "simulcast": {mid: simulcast.offer_layers() for mid in mids},
            "streams": [
                {
                    "mid": s.transceiver.mid,
                    "participant_id": s.publisher_id,
                    "track_id": s.track_id,
                    "kind": s.kind,
                    "source": s.source,
                }
                for s in offered
            ],
        }

    def _read_simulcast(self, sdp: str) -> None:
        """Which layers the answer sends (aiortc does not read rid lines). A client
        without simulcast (aiortc) answers without them: one stream, as before."""
        camera = self.publish.get("camera")
        answer = (
            simulcast.parse_answer(sdp, camera.mid)
            if camera is not None and camera.mid is not None
            else None
        )
        if answer is None:
            self.simulcast.pop("camera", None)
        elif self.simulcast.get("camera") != answer:
            self.simulcast["camera"] = answer
            # Layers and their ids may differ from the previous answer: relearn.
            self._forget("camera")

    def publish_codecs(self, kind: str) -> dict[int, str]:
        """Payload type -> lower-case MIME type this participant may send `kind` in."""
        return {pt: mime for pt, mime in self._publish_mime.items() if mime.startswith(kind + "/")}

    def layer_rids(self, source: str) -> list[str]:
        """The rids of the `source` track's layers by index, lowest quality first
        (`[""]` for a single stream)."""
        layers = self.simulcast.get(source)
        return list(reversed(layers.rids)) if layers is not None else [""]

    def _forget(self, source: str) -> None:
        for ssrc in self.publish_ssrc.pop(source, {}).values():
            self.incoming.pop(ssrc, None)
            self._unbind_native(ssrc)

    def apply_answer(self, sdp: str) -> None:
        """Hand the client's answer to the negotiation in progress."""
        if self._answer is None or self._answer.done():
            raise SignalingError("bad_sdp", "no offer is outstanding")
        self._answer.set_result(sdp)

    async def add_ice_candidate(self, candidate: dict[str, Any] | None) -> None:
        if candidate is None or not candidate.get("candidate"):
            return
        try:
            parsed = candidate_from_sdp(str(candidate["candidate"]).removeprefix("candidate:"))
            parsed.sdpMid = candidate.get("sdpMid")
            parsed.sdpMLineIndex = candidate.get("sdpMLineIndex")
            await self.pc.addIceCandidate(parsed)
        except Exception as exc:
            raise SignalingError("bad_candidate", f"ICE candidate refused: {exc}") from None

    # -- packets -------------------------------------------------------------

    def _after_answer(self) -> None:
        for source, transceiver in self.publish.items():
            for codec in transceiver._codecs:
                self._publish_pt[_payload_type(codec)] = SOURCE_KINDS[source]
                self._publish_mime[_payload_type(codec)] = codec.mimeType.lower()
            extensions = {e.id: e.uri for e in transceiver._headerExtensions}
            self._mid_extension_ids.update(i for i, uri in extensions.items() if uri == MID_URI)
            layers = self.simulcast.get(source)
            if layers is not None:  # negotiated outside aiortc: not to be forwarded
                extensions[layers.rid_extension_id] = simulcast.RID_URI
            self._events.on_publish_negotiated(self, source, extensions)
        microphone = self.publish.get("microphone")
        self.audio_level_id = (
            next((e.id for e in microphone._headerExtensions if e.uri == AUDIO_LEVEL_URI), None)
            if microphone is not None
            else None
        )
        transport = self.pc.getTransceivers()[0].sender.transport
        if self._transport is not transport:
            self._transport = transport
            transport._handle_rtp_data = self._handle_rtp  # type: ignore[method-assign]
            transport._handle_rtcp_data = self._handle_rtcp  # type: ignore[method-assign]
            if _test_video_loss:  # the loss is made before SRTP, on the Python path
                self._lose_video_before_srtp(transport)
            elif media_path.native():
                self._hand_to_engine(transport)

    def _hand_to_engine(self, transport: RTCDtlsTransport) -> None:
        """Give the leg's SRTP to the native engine the moment aiortc has the keys
        (before anything is protected with aiortc's sessions, so that no SRTCP
        index is used twice); its packets then come up unprotected."""
        setup_srtp = transport._setup_srtp

        def setup_and_hand_over() -> None:
            setup_srtp()
            leg = take_over(
                transport,
                lambda data: run_now(self._handle_rtp(data, 0)),
                lambda data: run_now(self._handle_rtcp(data)),
            )
            if leg is not None:
                leg.rtcp_ssrc = self.rtcp_ssrc
                self._leg = leg
                for sub in self.subscriptions.values():
                    if isinstance(sub.output, _native.Subscriber):
                        sub.output.leg = leg

        transport._setup_srtp = setup_and_hand_over  # type: ignore[method-assign]

    def bind_native(self, ssrc: int, forwarder: Forwarder, layer: int, payload_type: int) -> None:
        """Let the engine take this incoming SSRC's packets from now on: it keeps
        their books (reception statistics, NACKs, audio level) and, while the
        track is fast, forwards them without Python. Called by the room after a
        packet of it went the Python way; nothing on the Python path."""
        leg = self._leg
        stream = self.incoming.get(ssrc)
        if leg is None or stream is None or ssrc in self._bound:
            return
        if not isinstance(forwarder, NativeForwarder):
            return
        level_id = self.audio_level_id if stream.source == "microphone" else None
        video = stream.kind == "video"
        if leg.bind(ssrc, forwarder.track, layer, payload_type, CLOCK_RATES[stream.kind],
                    level_id or 0, video):  # fmt: skip
            self._bound.add(ssrc)

    def bound_natively(self, ssrc: int) -> bool:
        return ssrc in self._bound

    def native_levels(self) -> tuple[float, int] | None:
        """The audio levels the engine summed for the microphone since the last
        call (sum of linear amplitudes, packets); None when it keeps none."""
        leg = self._leg
        ssrc = self.publish_ssrc.get("microphone", {}).get("")
        if leg is None or ssrc is None or ssrc not in self._bound:
            return None
        return leg.take_levels(ssrc)

    def _unbind_native(self, ssrc: int) -> None:
        if ssrc in self._bound:
            self._bound.discard(ssrc)
            if self._leg is not None:
                self._leg.unbind(ssrc)

    def _lose_video_before_srtp(self, transport: RTCDtlsTransport) -> None:
        """Testing only: drop a share of incoming video datagrams where the network
        would, before SRTP (whose replay check would refuse the retransmission of a
        packet dropped after decryption)."""
        ice = transport.transport
        receive = ice._recv

        async def lossy_receive() -> bytes:
            while True:
                data: bytes = await receive()
                video = len(data) > 1 and self._publish_pt.get(data[1] & 0x7F) == "video"
                if video and not 192 <= data[1] <= 223 and random.random() < _test_video_loss:
                    metrics.PACKETS_DROPPED.labels(reason="test_loss").inc()
                    continue
                return data

        ice._recv = lossy_receive

    def _make_output(self, sub: Subscription) -> Output:
        transceiver = sub.transceiver
        sender: RTCRtpSender = transceiver.sender
        extension_ids = {e.uri: e.id for e in transceiver._headerExtensions}
        mid_id = extension_ids.get(MID_URI)
        mid_element = one_byte_element(mid_id, str(transceiver.mid).encode()) if mid_id else b""
        codecs: dict[str, tuple[int, int]] = {}
        for codec in transceiver._codecs:
            mime = codec.mimeType.lower()
            if mime != "video/rtx" and mime not in codecs:
                pt = _payload_type(codec)
                rtx_pt = next(
                    (
                        _payload_type(c)
                        for c in transceiver._codecs
                        if c.mimeType.lower() == "video/rtx" and c.parameters.get("apt") == pt
                    ),
                    0,
                )
                codecs[mime] = (pt, rtx_pt)
        primary, rtx_pt = next(iter(codecs.values()))
        return new_output(
            sender._ssrc,
            primary,
            mid_element,
            sink=self,
            rtx=(sender._rtx_ssrc, rtx_pt) if rtx_pt else None,
            extension_ids=extension_ids,
            codecs=codecs,
        )

    async def _handle_rtp(self, data: bytes, arrival_time_ms: int) -> None:
        """Replaces aiortc's handler, so it runs inside the transport's receive loop:
        nothing may escape, or the participant's whole connection would end."""
        try:
            await self._route_rtp(data)
        except Exception as exc:
            metrics.PACKETS_DROPPED.labels(reason="internal_error").inc()
            log.debug("RTP handling failed: %s", exc, exc_info=True)

    async def _route_rtp(self, data: bytes) -> None:
        try:
            header = RtpHeader.parse(data)
        except ValueError:
            metrics.PACKETS_DROPPED.labels(reason="malformed_rtp").inc()
            return
        kind = self._publish_pt.get(header.payload_type)
        if kind is None:
            metrics.PACKETS_DROPPED.labels(reason="unknown_payload_type").inc()
            return
        stream = self.incoming.get(header.ssrc)
        if stream is None or stream.kind != kind:
            source = self._source_of(kind, header)
            stream = self._bind(source, header) if source is not None else None
            if stream is None:
                metrics.PACKETS_DROPPED.labels(reason="unknown_layer").inc()
                return
        source = stream.source
        mime = self._publish_mime[header.payload_type]
        if self.publish_codec.get(source) != mime:
            self.publish_codec[source] = mime
            self._events.on_codec(self, source, mime)
        now = asyncio.get_running_loop().time()
        if header.ssrc in self._bound:  # the engine keeps its books (bind_native)
            await self._events.on_media(self, source, header, data, stream.layer, now)
            return
        stream.stats.update(header.sequence, header.timestamp, now)
        missing = stream.missing
        if missing is not None and (missing.update(header.sequence) or missing.missing):
            lost = missing.due(now)
            if lost:
                metrics.NACKS_SENT.inc()
                await self.send_rtp(rtcp.nack(self.rtcp_ssrc, header.ssrc, lost))
        await self._events.on_media(self, source, header, data, stream.layer, now)

    def _source_of(self, kind: str, header: RtpHeader) -> str | None:
        """The source a new SSRC belongs to: the one whose m-line its MID header
        extension names, or else the only published source of its kind. None when
        neither tells (a packet for an m-line the relay stopped, or a forged one)."""
        mids = [v for i, v in header.extensions if i in self._mid_extension_ids]
        if mids:
            mid = mids[0].decode("ascii", "replace")
            source = next((s for s, t in self.publish.items() if t.mid == mid), None)
            return source if source is not None and SOURCE_KINDS[source] == kind else None
        candidates = [s for s in self.publish if SOURCE_KINDS[s] == kind]
        return candidates[0] if len(candidates) == 1 else None

    def _bind(self, source: str, header: RtpHeader) -> IncomingStream | None:
        """Bind a new SSRC to its layer: with simulcast, the rid its packets carry
        (RFC 8852 rtp-stream-id, under the negotiated id); without, the single stream
        of the source. A layer's previous SSRC is forgotten (the sender restarted it).
        None for a simulcast packet naming no negotiated rid: it cannot be placed."""
        rid = ""
        layer = 0
        layers = self.simulcast.get(source)
        if layers is not None:
            value = next((v for i, v in header.extensions if i == layers.rid_extension_id), b"")
            rid = value.decode("ascii", "replace")
            if rid not in layers.rids:
                return None
            layer = len(layers.rids) - 1 - layers.rids.index(rid)
        ssrcs = self.publish_ssrc.setdefault(source, {})
        previous = ssrcs.get(rid)
        if previous is not None:
            self.incoming.pop(previous, None)
            self._unbind_native(previous)
        stale = self.incoming.pop(header.ssrc, None)  # it moved to another source
        self._unbind_native(header.ssrc)
        if stale is not None:
            self.publish_ssrc.get(stale.source, {}).pop(stale.rid, None)
        ssrcs[rid] = header.ssrc
        stream = self.incoming[header.ssrc] = IncomingStream(header.ssrc, source, rid, layer)
        self._publishing.set()
        return stream

    async def _handle_rtcp(self, data: bytes) -> None:
        try:
            await self._route_rtcp(data)
        except Exception as exc:
            metrics.PACKETS_DROPPED.labels(reason="internal_error").inc()
            log.debug("RTCP handling failed: %s", exc, exc_info=True)

    async def _route_rtcp(self, data: bytes) -> None:
        for item in rtcp.parse(data):
            if isinstance(item, rtcp.SenderReport):
                await self._sender_report(item)
            elif isinstance(item, rtcp.KeyframeRequest):
                metrics.PLIS_RECEIVED.inc()
                sub = self._by_output_ssrc.get(item.media_ssrc)
                if sub is not None and sub.output is not None:
                    self._events.on_keyframe_request(sub.track_id, sub.output)
            elif isinstance(item, rtcp.Nack):
                metrics.NACKS_RECEIVED.inc()
                sub = self._by_output_ssrc.get(item.media_ssrc)
                if sub is not None and sub.output is not None and item.lost:
                    await self._events.on_nack(sub.track_id, sub.output, item.lost)
            elif isinstance(item, rtcp.ReportBlock):
                self._report_block(item)
            else:
                self._remb(item)

    def media_flowing(self) -> None:
        """The first media packet to or from this participant: the join is done."""
        started, self.join_started_ms = self.join_started_ms, None
        if started is not None:
            metrics.JOIN_DURATION.observe(max(time.time() * 1000 - started, 0) / 1000)

    def _report_block(self, block: rtcp.ReportBlock) -> None:
        """Loss and round-trip time this subscriber reports about what we send it."""
        if block.ssrc not in self._by_output_ssrc:
            return  # about an SSRC of someone else's, or forged
        metrics.SUBSCRIBER_LOSS.observe(block.fraction_lost / 256)
        sent = self._events.sender_report_sent_at(block.lsr) if block.lsr else None
        if sent is not None:
            rtt = asyncio.get_running_loop().time() - sent - block.dlsr / 65536
            if rtt >= 0:
                metrics.SUBSCRIBER_RTT.observe(rtt)

    async def _sender_report(self, report: rtcp.SenderReport) -> None:
        stream = self.incoming.get(report.ssrc)
        if stream is not None:
            now = asyncio.get_running_loop().time()
            if report.ssrc in self._bound and self._leg is not None:
                self._leg.sender_report(report.ssrc, report.ntp, now)
            else:
                stream.stats.sender_report(report.ntp, now)
            await self._events.on_sender_report(self, stream.source, report, stream.layer)

    def _remb(self, item: rtcp.Remb) -> None:
        """A REMB estimates the whole connection (Chromium lists every video SSRC in
        one; aiortc sends one per track): each track named gets an equal share."""
        subs = [self._by_output_ssrc.get(ssrc) for ssrc in dict.fromkeys(item.ssrcs)]
        named = [s for s in subs if s is not None and s.output is not None]
        for sub in named:
            assert sub.output is not None
            self._events.on_remb(sub.track_id, sub.output, item.bitrate // len(named))

    async def _report_forever(self) -> None:
        """Receiver reports (and REMB) to this participant about what it publishes:
        aiortc's receivers would have sent them, but the relay bypasses those."""
        while True:
            await self._publishing.wait()  # a subscriber-only participant costs no timer
            await asyncio.sleep(RTCP_INTERVAL_S * (0.5 + random.random()))
            if self.incoming:
                await self.send_rtp(self.receiver_reports(asyncio.get_running_loop().time()))
            else:
                self._publishing.clear()

    def receiver_reports(self, now: float) -> bytes:
        """RR with one block per incoming SSRC, every simulcast layer included (at
        most 5 of the 31 an RR holds), SDES, and REMB naming every video SSRC."""
        leg = self._leg
        blocks = [
            leg.report_block(ssrc, now)
            if leg is not None and ssrc in self._bound
            else stream.stats.report(now)
            for ssrc, stream in self.incoming.items()
        ]
        compound = rtcp.receiver_report(self.rtcp_ssrc, blocks)
        compound += rtcp.sdes_cname(self.rtcp_ssrc, CNAME)
        bitrate = self._events.upstream_bitrate(self)
        video = [ssrc for ssrc, s in self.incoming.items() if s.kind == "video"]
        if bitrate is not None and video:
            compound += rtcp.remb(self.rtcp_ssrc, bitrate, video)
        return compound

    async def send_rtp(self, packet: bytes) -> None:
        """Send one already-rewritten RTP or RTCP packet, SRTP-protected."""
        transport = self._transport
        if transport is None:
            return
        try:
            await transport._send_rtp(packet)
        except ConnectionError:
            metrics.PACKETS_DROPPED.labels(reason="not_connected").inc()
        except Exception as exc:  # SRTP or socket failure on this leg only
            metrics.PACKETS_DROPPED.labels(reason="send_failed").inc()
            log.debug("send to a participant failed: %s", exc)

    async def close(self) -> None:
        for task in (self._task, self._rtcp_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._leg is not None:  # on a shared port the socket outlives the leg
            self._leg.close()
        await self.pc.close()


def _prefer_codec(
    transceiver: RTCRtpTransceiver, kind: str, rtx: bool = False, first: str | None = None
) -> None:
    """Offer the relay's codecs (`first`, when given, before the others); on
    subscriber legs also RTX (RFC 4588), which the relay answers from its packet
    cache. Publishers retransmit in-band."""
    codecs = RTCRtpSender.getCapabilities(kind).codecs
    wanted = {*CODECS[kind], "video/rtx"} if rtx else set(CODECS[kind])
    order = sorted(CODECS[kind], key=lambda mime: mime.lower() != (first or "").lower())
    preferred = [c for mime in order for c in codecs if c.mimeType == mime]
    if rtx:
        preferred += [c for c in codecs if c.mimeType == "video/rtx"]
    transceiver.setCodecPreferences([c for c in preferred if c.mimeType in wanted])


async def _sender_stays_idle(parameters: RTCRtpSendParameters) -> None:
    """Stands in for `RTCRtpSender.send` on relay-driven m-lines."""


def _payload_type(codec: RTCRtpCodecParameters) -> int:
    assert codec.payloadType is not None, "negotiated codecs always have a payload type"
    return codec.payloadType
