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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

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
from aiortc.sdp import candidate_from_sdp

from relay import metrics
from relay.errors import SignalingError
from relay.forwarder import MID_EXTENSION_ID, SubscriberOutput
from relay.rtcp import keyframe_requests
from relay.rtp import RtpHeader, one_byte_element

log = logging.getLogger(__name__)

ANSWER_TIMEOUT_S = 20.0
# The only codecs the relay offers: it cannot transcode, so every leg of a meeting
# must agree. Opus and VP8 are what every WebRTC endpoint supports.
CODECS = {"audio": "audio/opus", "video": "video/VP8"}

Signal = Callable[[dict[str, Any]], Awaitable[None]]
MediaHandler = Callable[["ParticipantPeer", str, RtpHeader, bytes], Awaitable[None]]
KeyframeHandler = Callable[[str], None]


class IdleTrack(MediaStreamTrack):
    """A track that never yields a frame: it keeps aiortc's sender task parked
    instead of polling every 20 ms, while the relay sends the RTP itself."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    async def recv(self) -> Any:
        await asyncio.Future()


@dataclass
class Subscription:
    """A sendonly m-line carrying another participant's track to this one."""

    track_id: str
    publisher_id: str
    kind: str
    transceiver: RTCRtpTransceiver
    output: SubscriberOutput | None = None
    removed: bool = False


class ParticipantPeer:
    """Owns the peer connection; serialises offers; exposes packets in and out."""

    def __init__(
        self,
        participant_id: str,
        signal: Signal,
        on_media: MediaHandler,
        on_keyframe_request: KeyframeHandler,
    ) -> None:
        self.participant_id = participant_id
        # max-bundle: one ICE/DTLS transport per participant from the first m-line on,
        # also for m-lines added by later offers.
        self.pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        self.publish: dict[str, RTCRtpTransceiver] = {}
        self.publish_ssrc: dict[str, int] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.rtcp_ssrc = random.getrandbits(32)
        self._signal = signal
        self._on_media = on_media
        self._on_keyframe_request = on_keyframe_request
        self._publish_pt: dict[int, str] = {}
        self._by_output_ssrc: dict[int, Subscription] = {}
        self._transport: RTCDtlsTransport | None = None
        self._needed = asyncio.Event()
        self._answer: asyncio.Future[str] | None = None
        self._task: asyncio.Task[None] | None = None
        self.failed = asyncio.Event()

    # -- session changes -------------------------------------------------

    def add_publish(self, kind: str) -> None:
        """A recvonly m-line where this participant sends its `kind` track."""
        transceiver = self.pc.addTransceiver(kind, direction="recvonly")
        _prefer_codec(transceiver, kind)
        self.publish[kind] = transceiver
        self._needed.set()

    def add_subscription(self, track_id: str, publisher_id: str, kind: str) -> None:
        transceiver = self.pc.addTransceiver(IdleTrack(kind), direction="sendonly")
        _prefer_codec(transceiver, kind)
        self.subscriptions[track_id] = Subscription(track_id, publisher_id, kind, transceiver)
        self._needed.set()

    def remove_subscription(self, track_id: str) -> SubscriberOutput | None:
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
                break
            except Exception as exc:
                self._answer = loop.create_future()
                await self._signal(
                    {"type": "error", "code": "bad_sdp", "message": f"answer refused: {exc}"}
                )
        self._answer = None
        self._after_answer()
        for sub in pending:
            if not sub.removed and sub.track_id in self.subscriptions:
                sub.output = self._make_output(sub)
                self._by_output_ssrc[sub.output.ssrc] = sub
                self._on_ready(sub)

    def _offer_message(self, offered: list[Subscription]) -> dict[str, Any]:
        sdp = self.pc.localDescription.sdp
        return {
            "type": "offer",
            "sdp": sdp,
            "publish": {kind: t.mid for kind, t in self.publish.items()},
            "streams": [
                {
                    "mid": s.transceiver.mid,
                    "participant_id": s.publisher_id,
                    "track_id": s.track_id,
                    "kind": s.kind,
                }
                for s in offered
            ],
        }

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
        for kind, transceiver in self.publish.items():
            for codec in transceiver._codecs:
                self._publish_pt[_payload_type(codec)] = kind
        transport = self.pc.getTransceivers()[0].sender.transport
        if self._transport is not transport:
            self._transport = transport
            transport._handle_rtp_data = self._handle_rtp  # type: ignore[method-assign]
            transport._handle_rtcp_data = self._handle_rtcp  # type: ignore[method-assign]

    def _make_output(self, sub: Subscription) -> SubscriberOutput:
        transceiver = sub.transceiver
        sender: RTCRtpSender = transceiver.sender
        mid_element = b""
        if any(e.id == MID_EXTENSION_ID for e in transceiver._headerExtensions):
            mid_element = one_byte_element(MID_EXTENSION_ID, str(transceiver.mid).encode())
        return SubscriberOutput(
            sender._ssrc, _payload_type(transceiver._codecs[0]), mid_element, sink=self
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
        if self.publish_ssrc.get(kind) != header.ssrc:
            self.publish_ssrc[kind] = header.ssrc  # learnt from the first packet
        await self._on_media(self, kind, header, data)

    async def _handle_rtcp(self, data: bytes) -> None:
        try:
            self._route_rtcp(data)
        except Exception as exc:
            metrics.PACKETS_DROPPED.labels(reason="internal_error").inc()
            log.debug("RTCP handling failed: %s", exc, exc_info=True)

    def _route_rtcp(self, data: bytes) -> None:
        for media_ssrc in keyframe_requests(data):
            sub = self._by_output_ssrc.get(media_ssrc)
            if sub is not None:
                self._on_keyframe_request(sub.track_id)

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
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.pc.close()


def _prefer_codec(transceiver: RTCRtpTransceiver, kind: str) -> None:
    codecs = RTCRtpSender.getCapabilities(kind).codecs
    transceiver.setCodecPreferences([c for c in codecs if c.mimeType == CODECS[kind]])


def _payload_type(codec: RTCRtpCodecParameters) -> int:
    assert codec.payloadType is not None, "negotiated codecs always have a payload type"
    return codec.payloadType
