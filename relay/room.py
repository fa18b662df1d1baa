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
from relay.layers import SubscriberLayers, TrackLayers
from relay.peer import CNAME, ParticipantPeer, Signal, Subscription
from relay.rtcp import SenderReport, pli, sdes_cname
from relay.rtp import RtpHeader
from relay.speaker import INTERVAL_S, SpeakerDetector, VoiceLevel

log = logging.getLogger(__name__)

KEYFRAME_INTERVAL_S = 0.5
MIN_UPSTREAM_BITRATE = 100_000  # never throttle a publisher below this (bit/s)
# What a simulcast publisher is told it may send (REMB): subscribers' estimates
# cover one layer each, never the sum of all, so the relay does not cap it; loss in
# the relay's receiver reports still slows it down.
SIMULCAST_UPSTREAM_BITRATE = 4_000_000
LAYERS_INTERVAL_S = 0.5  # how often layer choices and dynacast are revisited
MEDIA_KINDS = ("audio", "video")
# Padding-only packets carry no media; the forwarder drops them (relay/forwarder.py).
_PADDING_DROPPED = metrics.PACKETS_DROPPED.labels(reason="padding")

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
    # One keyframe throttle per layer (index from the lowest), made when needed.
    throttles: dict[int, KeyframeThrottle] = field(default_factory=dict)
    # Each subscriber's constraints (REMB, requested size): a single-stream
    # publisher is asked to send no more than the slowest subscriber can take; a
    # simulcast one is not capped, each subscriber gets a layer that suits it.
    subscribers: dict[SubscriberOutput, SubscriberLayers] = field(default_factory=dict)
    # Measurements and dynacast state when the publisher sends simulcast.
    layers: TrackLayers | None = None
    switches_counted: int = 0  # forwarder.switches already added to the metric
    padding_counted: int = 0  # padding-only packets already added to the metric
    # What the publisher said with `mute`; the relay keeps forwarding regardless.
    muted: bool = False

    def describe(self) -> dict[str, Any]:
        return {"track_id": self.track_id, "kind": self.kind, "muted": self.muted}

    def cancel_keyframe_requests(self) -> None:
        for throttle in self.throttles.values():
            throttle.cancel()


@dataclass
class Participant:
    participant_id: str
    name: str
    can_subscribe: bool
    signal: Signal
    peer: ParticipantPeer
    disconnect: Disconnect
    role: str = "participant"  # from the grant: "host" or "participant"
    joined_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    tracks: dict[str, PublishedTrack] = field(default_factory=dict)  # by kind: one each
    voice: VoiceLevel | None = None  # audio level, while publishing audio
    # The participant's E2EE key binding (docs/e2ee.md), opaque here: the relay
    # only hands it to everyone in the meeting.
    e2ee_binding: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "participant_id": self.participant_id,
            "name": self.name,
            "role": self.role,
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
        # Run while the room has participants: started by the first, cancelled
        # when the last one leaves.
        self._speaker_task: asyncio.Task[None] | None = None
        self._layers_task: asyncio.Task[None] | None = None
        self._e2ee_order: list[str] = []  # participants by when their binding arrived

    async def join(
        self,
        participant_id: str,
        name: str,
        publish: list[str],
        can_subscribe: bool,
        signal: Signal,
        disconnect: Disconnect,
        video_codec: str | None = None,
        role: str = "participant",
    ) -> Participant:
        """Add a participant, wire subscriptions both ways, and start negotiating.
        `video_codec` (a MIME type) is offered first for the video it publishes."""
        if len(self.participants) >= self.max_participants:
            raise RoomFull(self.max_participants)
        if participant_id in self.participants:
            raise SignalingError("already_joined", "this participant is already connected", 4009)
        peer = ParticipantPeer(participant_id, signal, self)
        participant = Participant(
            participant_id, name, can_subscribe, signal, peer, disconnect, role=role
        )
        for kind in publish:
            peer.add_publish(kind, video_codec if kind == "video" else None)
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
            self._layers_task = spawn(self._layers_forever(), "simulcast-layers")
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
        track = PublishedTrack(
            track_id,
            kind,
            owner,
            TrackForwarder(kind, lambda layer: self._request_keyframe(track_id, layer)),
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
            if self._layers_task is not None:
                self._layers_task.cancel()
                self._layers_task = None
        for track_id in [t.track_id for t in participant.tracks.values()]:
            published = self.tracks.pop(track_id)
            published.cancel_keyframe_requests()
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
                track.subscribers.pop(output, None)
        await participant.peer.close()
        await self._broadcast({"type": "participant_left", "participant_id": participant_id})
        if participant.e2ee_binding is not None:
            self._e2ee_order.remove(participant_id)
            await self._broadcast(self._e2ee_members())

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

    # -- end-to-end encryption (opaque key material) ----------------------

    async def set_e2ee_binding(self, participant: Participant, binding: str) -> None:
        """Record a participant's key binding and give everyone the new member list:
        its first member leads the key exchange and keys exactly these members, so
        nobody can decrypt without being on the roster. The list is in the order the
        bindings arrived, so the leader stays the leader while it is present: a
        participant that joined earlier but posted later must not take over a
        meeting that has keys it was never part of."""
        participant.e2ee_binding = binding
        if participant.participant_id not in self._e2ee_order:
            self._e2ee_order.append(participant.participant_id)
        await self._broadcast(self._e2ee_members())

    def _e2ee_members(self) -> dict[str, Any]:
        members = [self.participants.get(pid) for pid in self._e2ee_order]
        return {
            "type": "e2ee_members",
            "members": [
                {"participant_id": p.participant_id, "binding": p.e2ee_binding}
                for p in members
                if p is not None and p.e2ee_binding is not None
            ],
        }

    async def send_e2ee_key(self, sender: Participant, to: str, message: str) -> None:
        """Pass a key message from one participant to another, unread."""
        recipient = self.participants.get(to)
        if recipient is None or recipient is sender:
            raise SignalingError("unknown_participant", "no such participant in this meeting")
        metrics.E2EE_KEY_MESSAGES.inc()
        await self._signal_quietly(
            recipient, {"type": "e2ee_key", "from": sender.participant_id, "message": message}
        )

    # -- media ------------------------------------------------------------

    def _on_subscription_ready(self, sub: Subscription) -> None:
        track = self.tracks.get(sub.track_id)
        output = sub.output
        if track is None or output is None:
            return
        if not output.use_codec(track.forwarder.codec):
            metrics.CODEC_MISMATCHES.inc()
            log.info("a subscriber cannot receive a %s track", track.forwarder.codec)
            return
        choice = track.subscribers[output] = SubscriberLayers(sub.video_size)
        layer = 0
        if track.layers is not None:  # start on a layer being sent: no wait for a resume
            now = asyncio.get_running_loop().time()
            views = track.layers.views(self._layer_sizes(track), now, live_only=True)
            layer = choice.choose(views, 0, now)
        track.forwarder.add_subscriber(output, layer)

    async def on_media(
        self,
        peer: ParticipantPeer,
        kind: str,
        header: RtpHeader,
        data: bytes,
        layer: int,
        now: float,
    ) -> None:
        participant = self.participants.get(peer.participant_id)
        if participant is None:
            return
        track = participant.tracks.get(kind)
        if track is None:
            metrics.PACKETS_DROPPED.labels(reason="not_published").inc()
            return
        metrics.PACKETS_RECEIVED.inc()
        voice = participant.voice
        if kind == "audio" and voice is not None and peer.audio_level_id is not None:
            voice.observe(header.extensions, peer.audio_level_id)
        outputs = track.forwarder.forward(data, header, layer, now)
        for output, packet in outputs:
            await output.sink.send_rtp(packet)  # never raises: one subscriber can't stop others
        metrics.PACKETS_FORWARDED.inc(len(outputs))

    # -- simulcast layers ----------------------------------------------------

    async def set_video_size(
        self, subscriber: Participant, track_id: str, width: int, height: int
    ) -> None:
        """The size `subscriber` shows `track_id` at: no larger layer is sent to it."""
        sub = subscriber.peer.subscriptions.get(track_id)
        track = self.tracks.get(track_id)
        if sub is None or track is None:
            raise SignalingError("unknown_track", "no such track is sent to this participant")
        sub.video_size = (width, height)
        choice = track.subscribers.get(sub.output) if sub.output is not None else None
        if choice is not None:
            choice.max_size = sub.video_size
            await self._choose_layers(track, asyncio.get_running_loop().time())

    @staticmethod
    def _layer_sizes(track: PublishedTrack) -> list[tuple[int, int]]:
        return [(layer.width, layer.height) for layer in track.forwarder.layers]

    async def _layers_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(LAYERS_INTERVAL_S)
            for track in list(self.tracks.values()):
                padding = sum(layer.padding for layer in track.forwarder.layers)
                _PADDING_DROPPED.inc(padding - track.padding_counted)
                track.padding_counted = padding
                try:
                    await self._choose_layers(track, loop.time(), measure=True)
                except Exception as exc:  # a bug here must not end layer choices for good
                    log.debug("layer choice failed: %s", exc, exc_info=True)

    async def _choose_layers(
        self, track: PublishedTrack, now: float, measure: bool = False
    ) -> None:
        """Give every subscriber of a simulcast track its layer, pause the layers
        nobody receives (dynacast), and ask again for key frames still awaited."""
        layers = track.layers
        if layers is None:
            return
        forwarder = track.forwarder
        streams = forwarder.layers[: layers.count]
        if measure:
            layers.measure([s.octets for s in streams], [s.last_arrival for s in streams], now)
        views = layers.views(self._layer_sizes(track), now)
        for output, choice in track.subscribers.items():
            target = choice.choose(views, output.target, now)
            if target != output.target:
                log.debug("layer %d -> %d: estimate %s, size %s, layers %s", output.target,
                          target, choice.estimate, choice.max_size, views)  # fmt: skip
            forwarder.set_target(output, target)
        needed = {o.target for o in forwarder.subscribers}
        needed |= {o.layer for o in forwarder.subscribers if o.layer >= 0}
        active = layers.dynacast(needed, now)
        if active is not None:
            metrics.DYNACAST_CHANGES.inc()
            rids = track.owner.peer.layer_rids(track.kind)
            await self._signal_quietly(
                track.owner,
                {
                    "type": "layers",
                    "track_id": track.track_id,
                    "kind": track.kind,
                    "active": [rids[i] for i in sorted(active, reverse=True) if i < len(rids)],
                },
            )
        if measure:
            metrics.LAYER_SWITCHES.inc(forwarder.switches - track.switches_counted)
            track.switches_counted = forwarder.switches
            for index, stream in enumerate(streams):
                if stream.joining:
                    self._request_keyframe(track.track_id, index)

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

    def on_codec(self, peer: ParticipantPeer, kind: str, mime: str) -> None:
        """The publisher switched codec (or sent its first packet): subscribers that
        negotiated it start again at its next key frame; the others cannot get it."""
        participant = self.participants.get(peer.participant_id)
        track = participant.tracks.get(kind) if participant else None
        if track is None or kind != "video":
            return
        forwarder = track.forwarder
        forwarder.set_codec(mime)
        for output in list(forwarder.subscribers):
            if not output.use_codec(forwarder.codec):
                metrics.CODEC_MISMATCHES.inc()
                forwarder.remove_subscriber(output)
                track.subscribers.pop(output, None)

    def on_keyframe_request(self, track_id: str, output: SubscriberOutput) -> None:
        """A subscriber lost its picture: a key frame of the layer it is (or is about
        to be) receiving."""
        self._request_keyframe(track_id, output.target)

    def _request_keyframe(self, track_id: str, layer: int) -> None:
        track = self.tracks.get(track_id)
        if track is None or track.kind != "video":
            return
        throttle = track.throttles.get(layer)
        if throttle is None:
            throttle = track.throttles[layer] = KeyframeThrottle(
                lambda: self._send_keyframe_request(track_id, layer)
            )
        throttle.request()

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
        choice = track.subscribers.get(output) if track is not None else None
        if choice is not None:
            choice.set_estimate(bitrate, asyncio.get_running_loop().time())

    def on_publish_negotiated(
        self, peer: ParticipantPeer, kind: str, extensions: dict[int, str]
    ) -> None:
        participant = self.participants.get(peer.participant_id)
        track = participant.tracks.get(kind) if participant else None
        if track is None:
            return
        track.forwarder.set_source_extensions(extensions)
        count = len(peer.layer_rids(kind)) if kind in peer.simulcast else 0
        if count != (track.layers.count if track.layers is not None else 0):
            track.layers = TrackLayers(count) if count else None

    def upstream_bitrate(self, peer: ParticipantPeer) -> int | None:
        participant = self.participants.get(peer.participant_id)
        video = participant.tracks.get("video") if participant else None
        if video is None:
            return None
        if video.layers is not None:
            return SIMULCAST_UPSTREAM_BITRATE
        estimates = [c.estimate for c in video.subscribers.values() if c.estimate is not None]
        if not estimates:
            return None
        return max(MIN_UPSTREAM_BITRATE, min(estimates))

    async def on_sender_report(
        self, peer: ParticipantPeer, kind: str, report: SenderReport, layer: int
    ) -> None:
        """Pass the publisher's clock mapping on to the subscribers receiving this
        layer, translated (each simulcast SSRC has its own RTP clock base)."""
        participant = self.participants.get(peer.participant_id)
        track = participant.tracks.get(kind) if participant else None
        if track is None or layer >= len(track.forwarder.layers):
            return
        for output in list(track.forwarder.receivers(layer)):
            translated = track.forwarder.sender_report(output, report.ntp, report.rtp_timestamp)
            if translated is not None:
                await output.sink.send_rtp(translated + sdes_cname(output.ssrc, CNAME))

    def _send_keyframe_request(self, track_id: str, layer: int) -> None:
        track = self.tracks.get(track_id)
        if track is None:
            return
        peer = track.owner.peer
        rids = peer.layer_rids(track.kind)
        ssrc = peer.publish_ssrc.get(track.kind, {}).get(rids[layer]) if layer < len(rids) else None
        if ssrc is None:
            return  # nothing received yet; the first keyframe comes unasked
        metrics.KEYFRAME_REQUESTS.inc()
        spawn(peer.send_rtp(pli(peer.rtcp_ssrc, ssrc)), "keyframe-request")

    @staticmethod
    async def _signal_quietly(participant: Participant, message: dict[str, Any]) -> None:
        try:
            await participant.signal(message)
        except Exception as exc:  # a broken socket is noticed by its own session
            log.debug("signal to a participant failed: %s", exc)

    async def _broadcast(self, message: dict[str, Any], exclude: str | None = None) -> None:
        for participant in list(self.participants.values()):
            if participant.participant_id != exclude:
                try:
                    await participant.signal(message)
                except Exception as exc:  # one broken socket must not stop the others
                    log.debug("signal to a participant failed: %s", exc)
