"""A meeting on this node: who is connected, what they publish, who receives what.

The relay is the authority for who is connected: every participant is on the
roster every other participant sees, and media is forwarded only to participants
on that roster.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from conclave.tasks import spawn
from relay import metrics
from relay.errors import RoomFull, SignalingError
from relay.forwarder import SubscriberOutput, TrackForwarder
from relay.peer import CNAME, ParticipantPeer, Signal, Subscription
from relay.rtcp import SenderReport, pli, sdes_cname
from relay.rtp import RtpHeader
from relay.speaker import INTERVAL_S, SpeakerDetector, VoiceLevel

log = logging.getLogger(__name__)

KEYFRAME_INTERVAL_S = 0.5
MIN_UPSTREAM_BITRATE = 100_000  # never throttle a publisher below this (bit/s)
MEDIA_KINDS = ("audio", "video")
# Packets of simulcast layers that are not the one forwarded (docs/simulcast.md).
_LAYER_DROPPED = metrics.PACKETS_DROPPED.labels(reason="simulcast_layer")

# Ends a participant's signalling connection: (reason, WebSocket close code).
Disconnect = Callable[[str, int], Awaitable[None]]


class KeyframeThrottle:
    """At most one keyframe request per publisher track per 500 ms, however many
    subscribers ask; a request inside the window is sent when the window ends."""

    def __init__(self, send: Callable[[], None], interval: float = KEYFRAME_INTERVAL_S) -> None:
        self._send = send
        self._interval = interval
        self._last = -interval
        self._pending: asyncio.TimerHandle | None = None

    def request(self) -> None:
        if self._pending is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._last + self._interval - loop.time()
        if wait <= 0:
            self._fire()
        else:
            self._pending = loop.call_later(wait, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self._last = asyncio.get_running_loop().time()
        self._send()

    def cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None


@dataclass
class PublishedTrack:
    track_id: str
    kind: str
    owner: Participant
    forwarder: TrackForwarder
    throttle: KeyframeThrottle
    # Each subscriber's latest REMB for this track, by its SSRC: the publisher is
    # asked to send no more than the slowest subscriber can take.
    subscriber_bitrates: dict[int, int] = field(default_factory=dict)
    # What the publisher said with `mute`; the relay keeps forwarding regardless.
    muted: bool = False

    def describe(self) -> dict[str, Any]:
        return {"track_id": self.track_id, "kind": self.kind, "muted": self.muted}


@dataclass
class Participant:
    participant_id: str
    name: str
    can_subscribe: bool
    signal: Signal
    peer: ParticipantPeer
    disconnect: Disconnect
    joined_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    tracks: dict[str, PublishedTrack] = field(default_factory=dict)  # by kind: one each
    voice: VoiceLevel | None = None  # audio level, while publishing audio

    def describe(self) -> dict[str, Any]:
        return {
            "participant_id": self.participant_id,
            "name": self.name,
            "tracks": [t.describe() for t in self.tracks.values()],
        }


class Room:
    """Participants of one meeting on this node and the tracks between them."""

    def __init__(self, room_id: str, max_participants: int) -> None:
        self.room_id = room_id
        self.max_participants = max_participants
        self.participants: dict[str, Participant] = {}
        self.tracks: dict[str, PublishedTrack] = {}
        self.speakers = SpeakerDetector()
        # Runs while the room has participants: started by the first, cancelled
        # when the last one leaves.
        self._speaker_task: asyncio.Task[None] | None = None

    async def join(
        self,
        participant_id: str,
        name: str,
        publish: list[str],
        can_subscribe: bool,
        signal: Signal,
        disconnect: Disconnect,
    ) -> Participant:
        """Add a participant, wire subscriptions both ways, and start negotiating."""
        if len(self.participants) >= self.max_participants:
            raise RoomFull(self.max_participants)
        if participant_id in self.participants:
            raise SignalingError("already_joined", "this participant is already connected", 4009)
        peer = ParticipantPeer(participant_id, signal, self)
        participant = Participant(participant_id, name, can_subscribe, signal, peer, disconnect)
        for kind in publish:
            peer.add_publish(kind)
        if can_subscribe:
            for track in self.tracks.values():
                peer.add_subscription(track.track_id, track.owner.participant_id, track.kind)
        await signal(
            {
                "type": "joined",
                "participant_id": participant_id,
                "room_id": self.room_id,
                "roster": [p.describe() for p in self.participants.values()],
            }
        )
        self.participants[participant_id] = participant
        metrics.PARTICIPANTS.inc()
        if self._speaker_task is None:
            self._speaker_task = spawn(self._speakers_forever(), "active-speakers")
        await self._broadcast(
            {"type": "participant_joined", "participant": participant.describe()},
            exclude=participant_id,
        )
        if self.speakers.speakers:
            try:  # the participant is on the roster now: a failure must not undo that
                await signal(self._speakers_message(self.speakers.speakers))
            except Exception as exc:
                log.debug("signal to a participant failed: %s", exc)
        for kind in publish:
            await self._publish(participant, kind)
        peer.start(self._on_subscription_ready)
        return participant

    async def _publish(self, owner: Participant, kind: str) -> None:
        track_id = "TR_" + secrets.token_urlsafe(9)
        throttle = KeyframeThrottle(lambda: self._send_keyframe_request(track_id))
        track = PublishedTrack(
            track_id, kind, owner, TrackForwarder(kind, throttle.request), throttle
        )
        owner.tracks[kind] = track
        self.tracks[track_id] = track
        if kind == "audio":
            owner.voice = self.speakers.add(owner.participant_id)
        await self._broadcast(
            {
                "type": "track_published",
                "participant_id": owner.participant_id,
                "track": track.describe(),
            },
            exclude=owner.participant_id,
        )
        for other in self.participants.values():
            if other is not owner and other.can_subscribe:
                other.peer.add_subscription(track_id, owner.participant_id, kind)

    async def leave(self, participant_id: str) -> None:
        """Remove a participant completely: tracks, subscriptions, peer connection."""
        participant = self.participants.pop(participant_id, None)
        if participant is None:
            return
        metrics.PARTICIPANTS.dec()
        self.speakers.remove(participant_id)
        participant.voice = None
        if not self.participants and self._speaker_task is not None:
            self._speaker_task.cancel()
            self._speaker_task = None
        for track_id in [t.track_id for t in participant.tracks.values()]:
            published = self.tracks.pop(track_id)
            published.throttle.cancel()
            for other in self.participants.values():
                other.peer.remove_subscription(track_id)
            await self._broadcast(
                {
                    "type": "track_unpublished",
                    "participant_id": participant_id,
                    "track_id": track_id,
                }
            )
        for sub in list(participant.peer.subscriptions.values()):
            output = participant.peer.remove_subscription(sub.track_id)
            track = self.tracks.get(sub.track_id)
            if output is not None and track is not None:
                track.forwarder.remove_subscriber(output)
                track.subscriber_bitrates.pop(output.ssrc, None)
        await participant.peer.close()
        await self._broadcast({"type": "participant_left", "participant_id": participant_id})

    def roster(self) -> list[Participant]:
        return list(self.participants.values())

    async def set_muted(self, participant: Participant, kind: str, muted: bool) -> None:
        """Record a publisher's mute state and tell the others; repeating the
        current state changes nothing. Forwarding is not affected."""
        track = participant.tracks.get(kind)
        if track is None:
            raise SignalingError("not_published", f"this participant does not publish {kind}")
        if track.muted == muted:
            return
        track.muted = muted
        metrics.MUTE_CHANGES.inc()
        if kind == "audio":
            self.speakers.set_muted(participant.participant_id, muted)
        await self._broadcast(
            {
                "type": "track_muted",
                "participant_id": participant.participant_id,
                "track_id": track.track_id,
                "muted": muted,
            },
            exclude=participant.participant_id,
        )

    async def close(self, reason: str) -> int:
        """Tell everyone the meeting ended and disconnect them; returns how many."""
        everyone = list(self.participants.values())
        for participant in everyone:
            await participant.disconnect(reason, 4000)
        return len(everyone)

    # -- media ------------------------------------------------------------

    def _on_subscription_ready(self, sub: Subscription) -> None:
        track = self.tracks.get(sub.track_id)
        if track is not None and sub.output is not None:
            track.forwarder.add_subscriber(sub.output)

    async def on_media(
        self, peer: ParticipantPeer, kind: str, header: RtpHeader, data: bytes, rid: str = ""
    ) -> None:
        participant = self.participants.get(peer.participant_id)
        if participant is None:
            return
        track = participant.tracks.get(kind)
        if track is None:
            metrics.PACKETS_DROPPED.labels(reason="not_published").inc()
            return
        metrics.PACKETS_RECEIVED.inc()
        if rid and rid != peer.forwarded_layer(kind):
            _LAYER_DROPPED.inc()
            return
        voice = participant.voice
        if kind == "audio" and voice is not None and peer.audio_level_id is not None:
            voice.observe(header.extensions, peer.audio_level_id)
        outputs = track.forwarder.forward(data, header)
        for output, packet in outputs:
            await output.sink.send_rtp(packet)  # never raises: one subscriber can't stop others
        metrics.PACKETS_FORWARDED.inc(len(outputs))

    # -- active speakers ---------------------------------------------------

    async def _speakers_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(INTERVAL_S)
            try:
                changed = self.speakers.decide(loop.time())
                if changed is not None:
                    metrics.ACTIVE_SPEAKER_UPDATES.inc()
                    await self._broadcast(self._speakers_message(changed))
            except Exception as exc:  # a bug here must not end speaker updates for good
                log.debug("active-speaker update failed: %s", exc, exc_info=True)

    @staticmethod
    def _speakers_message(speakers: list[tuple[str, float]]) -> dict[str, Any]:
        return {
            "type": "active_speakers",
            "speakers": [{"participant_id": pid, "level": level} for pid, level in speakers],
        }

    def on_keyframe_request(self, track_id: str) -> None:
        track = self.tracks.get(track_id)
        if track is not None and track.kind == "video":
            track.throttle.request()

    async def on_nack(self, track_id: str, output: SubscriberOutput, lost: list[int]) -> None:
        track = self.tracks.get(track_id)
        if track is None:
            return
        packets = track.forwarder.retransmit(output, lost)
        for packet in packets:
            await output.sink.send_rtp(packet)
        metrics.RETRANSMISSIONS.inc(len(packets))

    def on_remb(self, track_id: str, output: SubscriberOutput, bitrate: int) -> None:
        track = self.tracks.get(track_id)
        if track is not None:
            track.subscriber_bitrates[output.ssrc] = bitrate

    def on_publish_negotiated(
        self, peer: ParticipantPeer, kind: str, extensions: dict[int, str]
    ) -> None:
        participant = self.participants.get(peer.participant_id)
        track = participant.tracks.get(kind) if participant else None
        if track is not None:
            track.forwarder.set_source_extensions(extensions)

    def upstream_bitrate(self, peer: ParticipantPeer) -> int | None:
        participant = self.participants.get(peer.participant_id)
        video = participant.tracks.get("video") if participant else None
        if video is None or not video.subscriber_bitrates:
            return None
        return max(MIN_UPSTREAM_BITRATE, min(video.subscriber_bitrates.values()))

    async def on_sender_report(
        self, peer: ParticipantPeer, kind: str, report: SenderReport, rid: str = ""
    ) -> None:
        """Pass the publisher's clock mapping on to every subscriber, translated;
        only the forwarded layer's (each simulcast SSRC has its own RTP clock base)."""
        participant = self.participants.get(peer.participant_id)
        track = participant.tracks.get(kind) if participant else None
        if track is None or (rid and rid != peer.forwarded_layer(kind)):
            return
        for output in track.forwarder.subscribers:
            translated = track.forwarder.sender_report(output, report.ntp, report.rtp_timestamp)
            if translated is not None:
                await output.sink.send_rtp(translated + sdes_cname(output.ssrc, CNAME))

    def _send_keyframe_request(self, track_id: str) -> None:
        track = self.tracks.get(track_id)
        if track is None:
            return
        peer = track.owner.peer
        layer = peer.forwarded_layer(track.kind) or ""
        ssrc = peer.publish_ssrc.get(track.kind, {}).get(layer)
        if ssrc is None:
            return  # nothing received yet; the first keyframe comes unasked
        metrics.KEYFRAME_REQUESTS.inc()
        spawn(peer.send_rtp(pli(peer.rtcp_ssrc, ssrc)), "keyframe-request")

    async def _broadcast(self, message: dict[str, Any], exclude: str | None = None) -> None:
        for participant in list(self.participants.values()):
            if participant.participant_id != exclude:
                try:
                    await participant.signal(message)
                except Exception as exc:  # one broken socket must not stop the others
                    log.debug("signal to a participant failed: %s", exc)
