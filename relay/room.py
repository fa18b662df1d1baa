"""A meeting on this node: who is connected, what they publish, who receives what.

The relay is the authority for who is connected: every participant is on the
roster every other participant sees, and media is forwarded only to participants
on that roster.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from conclave import rejoin
from conclave.meeting import SOURCE_KINDS, SOURCES, MeetingPolicy
from conclave.tasks import spawn
from relay import metrics
from relay.errors import RoomFull, SignalingError
from relay.layers import SubscriberLayers, TrackLayers
from relay.link import KIND_SENDER_REPORT, MeetingLink
from relay.media_path import Forwarder, NativeForwarder, Output, new_forwarder
from relay.peer import CNAME, ParticipantPeer, Signal, Subscription
from relay.remote import RemotePeer
from relay.rtcp import SenderReport, pli
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
# Sender reports whose send time the room keeps for round-trip times: receiver
# reports answer within a few seconds, and each published stream sends about one a second.
REPORTS_REMEMBERED = 1024
MEDIA_KINDS = ("audio", "video")
MODERATORS = ("host", "cohost")  # the roles that may admit, mute, remove, lock
ROLES = (*MODERATORS, "participant")
# WebSocket close codes of the meeting's security decisions (docs/signaling.md).
CLOSE_LOCKED = 4005
CLOSE_REMOVED = 4006
CLOSE_DENIED = 4007
# Padding-only packets carry no media; the forwarder drops them (relay/forwarder.py).
_PADDING_DROPPED = metrics.PACKETS_DROPPED.labels(reason="padding")
# Bound once: these count every packet.
_RECEIVED = metrics.PACKETS_RECEIVED
_BYTES_RECEIVED = metrics.BYTES_RECEIVED
_FORWARDED = metrics.PACKETS_FORWARDED
_BYTES_FORWARDED = metrics.BYTES_FORWARDED

# Ends a participant's signalling connection: (reason, WebSocket close code).
Disconnect = Callable[[str, int], Awaitable[None]]
# Either peer a participant has: its own connection here, or its relay's link.
Peer = ParticipantPeer | RemotePeer
LINK_CACHE = 512  # raw packets kept per layer of a track crossing links (link NACKs)
_clock_pair = struct.Struct("!QI")  # a sender report's NTP and RTP times, over a link
_LINK_TRACKS_SENT = metrics.LINK_TRACKS.labels(direction="sent")
_LINK_TRACKS_RECEIVED = metrics.LINK_TRACKS.labels(direction="received")
_LINK_STARTS_SENT = metrics.LINK_TRACK_STARTS.labels(direction="sent")
_LINK_STARTS_RECEIVED = metrics.LINK_TRACK_STARTS.labels(direction="received")


async def _nobody(message: dict[str, Any]) -> None:
    """The signal of a remote participant: its own relay talks to it."""


async def _not_here(reason: str, code: int) -> None:
    """The disconnect of a remote participant: its own relay disconnects it."""


class NotFound(SignalingError):
    """No such participant (connected or waiting) in this meeting on this node."""

    def __init__(self) -> None:
        super().__init__("unknown_participant", "no such participant in this meeting")


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
    source: str
    owner: Participant
    forwarder: Forwarder
    # One keyframe throttle per layer (index from the lowest), made when needed.
    throttles: dict[int, KeyframeThrottle] = field(default_factory=dict)
    # Each subscriber's constraints (REMB, requested size): a single-stream
    # publisher is asked to send no more than the slowest subscriber can take; a
    # simulcast one is not capped, each subscriber gets a layer that suits it.
    subscribers: dict[Output, SubscriberLayers] = field(default_factory=dict)
    # Measurements and dynacast state when the publisher sends simulcast.
    layers: TrackLayers | None = None
    switches_counted: int = 0  # forwarder.switches already added to the metric
    padding_counted: int = 0  # padding-only packets already added to the metric
    # What the publisher said with `mute`; the relay keeps forwarding regardless,
    # unless a host muted it (`held`): then nothing is forwarded until the
    # publisher itself unmutes (its consent, as in every meeting service).
    muted: bool = False
    held: bool = False
    # Links (docs/cascading.md). `index` numbers the track on links, in its own
    # relay's numbering. A local track keeps the layers each link asked for and its
    # latest raw packets per layer (to answer a link's NACK); a remote track, the
    # layers last asked of its relay.
    index: int = 0
    links: dict[MeetingLink, set[int]] = field(default_factory=dict)
    recent: list[list[bytes | None]] | None = None
    wanted: frozenset[int] = frozenset()

    @property
    def remote(self) -> bool:
        return bool(self.owner.origin)

    @property
    def kind(self) -> str:
        return SOURCE_KINDS[self.source]

    def describe(self) -> dict[str, Any]:
        return {
            "track_id": self.track_id,
            "kind": self.kind,
            "source": self.source,
            "muted": self.muted,
        }

    def cancel_keyframe_requests(self) -> None:
        for throttle in self.throttles.values():
            throttle.cancel()


@dataclass
class Participant:
    participant_id: str
    name: str
    can_subscribe: bool
    signal: Signal
    peer: Peer
    disconnect: Disconnect
    role: str = "participant"  # "host" (from the grant), "cohost" or "participant"
    # What it may publish now: from the grant, changed by hosts at run time.
    rights: set[str] = field(default_factory=set)
    # HMAC of the address its grant was asked from: what a removal bans.
    source_tag: str = ""
    joined_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    tracks: dict[str, PublishedTrack] = field(default_factory=dict)  # by source
    voice: VoiceLevel | None = None  # audio level, while publishing audio
    # The participant's E2EE key binding (docs/e2ee.md), opaque here: the relay
    # only hands it to everyone in the meeting.
    e2ee_binding: str | None = None
    # SHA-256 of the rejoin token it was given in `joined` (conclave/rejoin.py).
    rejoin_digest: str = ""
    # The relay it is connected to when that is another relay of the meeting; ""
    # for a participant connected here.
    origin: str = ""
    # When its E2EE binding arrived at its relay (µs, wall clock): the order of the
    # key exchange's members, the same on every relay.
    e2ee_at: int = 0

    @property
    def moderates(self) -> bool:
        return self.role in MODERATORS

    @property
    def connection(self) -> ParticipantPeer:
        """The peer connection of a participant connected to this relay."""
        if not isinstance(self.peer, ParticipantPeer):
            raise TypeError("a participant of another relay has no connection here")
        return self.peer

    def describe(self) -> dict[str, Any]:
        return {
            "participant_id": self.participant_id,
            "name": self.name,
            "role": self.role,
            "tracks": [t.describe() for t in self.tracks.values()],
        }


@dataclass
class Waiting:
    """A joiner in the waiting room: no peer connection, no roster, no keys; only
    its signalling session, and what it needs to join when admitted."""

    participant_id: str
    name: str
    role: str
    rights: set[str]
    source_tag: str
    publish: list[str]
    can_subscribe: bool
    signal: Signal
    disconnect: Disconnect
    video_codec: str | None
    # Called with the Participant once admitted, so the session can go on as joined.
    admitted: Callable[[Participant], None]

    def describe(self) -> dict[str, Any]:
        return {"participant_id": self.participant_id, "name": self.name}


class Room:
    """Participants of one meeting on this node and the tracks between them."""

    def __init__(
        self, room_id: str, max_participants: int, policy: MeetingPolicy | None = None
    ) -> None:
        self.room_id = room_id
        self.max_participants = max_participants
        self.policy = policy or MeetingPolicy()
        self.audit_lease = 0  # the meeting's audit lease (conclave/audit.py), from its record
        self.record_lease = 0  # the lease of the meeting's record (rejoin tokens go on it)
        self.has_passcode = True  # False: the waiting room is its only gate
        self.participants: dict[str, Participant] = {}
        self.waiting: dict[str, Waiting] = {}
        self.tracks: dict[str, PublishedTrack] = {}
        self.speakers = SpeakerDetector()
        # Run while the room has participants: started by the first, cancelled
        # when the last one leaves.
        self._speaker_task: asyncio.Task[None] | None = None
        self._layers_task: asyncio.Task[None] | None = None
        self.local_count = 0  # participants connected to this relay
        # Links to the meeting's other relays, by node id (relay/links.py), and the
        # tracks that come over them, by (node id, index).
        self.links: dict[str, MeetingLink] = {}
        self._remote_tracks: dict[tuple[str, int], PublishedTrack] = {}
        self._local_tracks: dict[int, PublishedTrack] = {}  # by index
        self._next_index = 0
        self._last_binding_at = 0
        # middle 32 bits of a sender report's NTP time -> when subscribers were sent it
        self._reports_sent: dict[int, float] = {}

    @property
    def empty(self) -> bool:
        """Nobody connected here, nobody waiting here, and no relay linked here."""
        return not self.local_count and not self.waiting and not self.links

    def local_participants(self) -> list[Participant]:
        return [p for p in self.participants.values() if not p.origin]

    def room_state(self) -> dict[str, Any]:
        policy = self.policy
        return {
            "locked": policy.locked,
            "suspended": policy.suspended,
            "waiting_room": policy.waiting_room,
            "screen_share": policy.screen_share,
        }

    def may_publish(self, role: str, rights: set[str], source: str) -> bool:
        """Default-deny: the source is in the participant's rights, and the meeting
        is not suspended (which stops everyone but hosts and co-hosts)."""
        return source in rights and (not self.policy.suspended or role in MODERATORS)

    async def wait(self, entry: Waiting) -> None:
        """Put a joiner in the waiting room and tell the moderators."""
        if entry.participant_id in self.participants or entry.participant_id in self.waiting:
            raise SignalingError("already_joined", "this participant is already connected", 4009)
        if len(self.waiting) >= self.max_participants:
            raise RoomFull(self.max_participants)
        self.waiting[entry.participant_id] = entry
        await entry.signal({"type": "waiting", "room_id": self.room_id})
        await self._waiting_changed()

    async def _waiting_changed(self) -> None:
        message = {
            "type": "waiting_list",
            "participants": [w.describe() for w in self.waiting.values()],
        }
        for participant in list(self.participants.values()):
            if participant.moderates:
                await self._signal_quietly(participant, message)

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
        rights: set[str] | None = None,
        source_tag: str = "",
    ) -> Participant:
        """Add a participant, wire subscriptions both ways, and start negotiating.
        `publish` are sources within `rights`; `video_codec` (a MIME type) is
        offered first for the camera."""
        if len(self.participants) >= self.max_participants:
            raise RoomFull(self.max_participants)
        if participant_id in self.participants or participant_id in self.waiting:
            raise SignalingError("already_joined", "this participant is already connected", 4009)
        rights = set(publish) if rights is None else rights
        publish = [s for s in publish if self.may_publish(role, rights, s)]
        peer = ParticipantPeer(participant_id, signal, self)
        token, digest = rejoin.new_token()
        participant = Participant(
            participant_id,
            name,
            can_subscribe,
            signal,
            peer,
            disconnect,
            role=role,
            rights=rights,
            source_tag=source_tag,
            rejoin_digest=digest,
        )
        for source in publish:
            peer.add_publish(source, video_codec if source == "camera" else None)
        if can_subscribe:
            for track in self.tracks.values():
                peer.add_subscription(track.track_id, track.owner.participant_id, track.source)
        await signal(
            {
                "type": "joined",
                "participant_id": participant_id,
                "room_id": self.room_id,
                "role": role,
                "publish_rights": sorted(rights),
                "room": self.room_state(),
                "roster": [p.describe() for p in self.participants.values()],
                # Kept by the client, for JoinRoom after a lost connection.
                "rejoin_token": token,
            }
        )
        self.participants[participant_id] = participant
        self.local_count += 1
        metrics.PARTICIPANTS.inc()
        self._tell_links(self._member_message(participant))
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
        if participant.moderates and self.waiting:
            await self._waiting_changed()
        for source in publish:
            await self._publish(participant, source)
        peer.start(self._on_subscription_ready)
        return participant

    async def start_publishing(self, participant: Participant, source: str) -> None:
        """A participant starts publishing a source during the meeting (screen
        sharing): refused unless its rights allow it; the relay offers the m-line."""
        if not self.may_publish(participant.role, participant.rights, source):
            raise SignalingError("not_allowed", f"you may not publish {source} in this meeting")
        if source in participant.tracks:
            return
        participant.connection.add_publish(source)
        await self._publish(participant, source)

    async def stop_publishing(self, participant: Participant, source: str, reason: str) -> None:
        """Stop a participant's source: its m-line goes inactive, everyone's
        subscription to it ends, and the publisher is told why unless it asked."""
        track = participant.tracks.pop(source, None)
        if track is None:
            return
        participant.connection.remove_publish(source)
        await self._unpublish(participant, track)
        if reason != "unpublished":
            await self._signal_quietly(
                participant, {"type": "unpublished", "source": source, "reason": reason}
            )

    async def _unpublish(self, owner: Participant, track: PublishedTrack) -> None:
        self.tracks.pop(track.track_id, None)
        track.cancel_keyframe_requests()
        if track.remote:
            self._remote_tracks.pop((owner.origin, track.index), None)
            if track.wanted:
                _LINK_TRACKS_RECEIVED.dec()
            track.wanted = frozenset()
        else:
            self._local_tracks.pop(track.index, None)
            for wants in track.links.values():
                if wants:
                    _LINK_TRACKS_SENT.dec()
            track.links.clear()
            self._tell_links({"type": "untrack", "index": track.index})
        if track.kind == "audio":
            self.speakers.remove(owner.participant_id)
            owner.voice = None
        for other in self.local_participants():
            output = other.peer.remove_subscription(track.track_id)
            if output is not None:
                track.forwarder.remove_subscriber(output)
        track.subscribers.clear()
        await self._broadcast(
            {
                "type": "track_unpublished",
                "participant_id": owner.participant_id,
                "track_id": track.track_id,
            }
        )

    async def _publish(self, owner: Participant, source: str) -> None:
        track_id = "TR_" + secrets.token_urlsafe(9)
        kind = SOURCE_KINDS[source]
        track = PublishedTrack(
            track_id,
            source,
            owner,
            new_forwarder(kind, lambda layer: self._request_keyframe(track_id, layer)),
        )
        owner.tracks[source] = track
        self.tracks[track_id] = track
        track.index = self._next_index
        self._next_index = (self._next_index + 1) & 0xFFFF
        self._local_tracks[track.index] = track
        if kind == "audio":
            owner.voice = self.speakers.add(owner.participant_id)
        self._tell_links(self._track_message(track))
        await self._broadcast(
            {
                "type": "track_published",
                "participant_id": owner.participant_id,
                "track": track.describe(),
            },
            exclude=owner.participant_id,
        )
        self._subscribe_everyone(track)

    def _subscribe_everyone(self, track: PublishedTrack) -> None:
        for other in self.local_participants():
            if other is not track.owner and other.can_subscribe:
                assert isinstance(other.peer, ParticipantPeer)
                other.peer.add_subscription(
                    track.track_id, track.owner.participant_id, track.source
                )

    async def leave(self, participant_id: str) -> None:
        """Remove a participant completely: tracks, subscriptions, peer connection
        (or its place in the waiting room)."""
        if self.waiting.pop(participant_id, None) is not None:
            await self._waiting_changed()
            return
        participant = self.participants.pop(participant_id, None)
        if participant is None:
            return
        if not participant.origin:
            self.local_count -= 1
            metrics.PARTICIPANTS.dec()
            self._tell_links({"type": "left", "participant_id": participant_id})
        self.speakers.remove(participant_id)
        participant.voice = None
        if not self.local_count and self._speaker_task is not None:
            self._speaker_task.cancel()
            self._speaker_task = None
            if self._layers_task is not None:
                self._layers_task.cancel()
                self._layers_task = None
        for published in list(participant.tracks.values()):
            await self._unpublish(participant, published)
        participant.tracks.clear()
        for sub in list(participant.peer.subscriptions.values()):
            output = participant.peer.remove_subscription(sub.track_id)
            track = self.tracks.get(sub.track_id)
            if output is not None and track is not None:
                track.forwarder.remove_subscriber(output)
                track.subscribers.pop(output, None)
                if track.remote:
                    self._ask_link(track)  # perhaps nobody here needs it any more
        await participant.peer.close()
        await self._broadcast({"type": "participant_left", "participant_id": participant_id})
        if participant.e2ee_binding is not None:
            await self._broadcast(self._e2ee_members())
        if not participant.origin and not self.local_count:
            self.close_dialed_links()

    def roster(self) -> list[Participant]:
        return list(self.participants.values())

    async def set_muted(self, participant: Participant, source: str, muted: bool) -> None:
        """Record a publisher's mute state and tell the others; repeating the
        current state changes nothing. Unmuting also ends a host's mute."""
        track = participant.tracks.get(source)
        if track is None:
            raise SignalingError("not_published", f"this participant does not publish {source}")
        if not muted:
            track.held = False
            _update_fast(track)
        if track.muted == muted:
            return
        track.muted = muted
        metrics.MUTE_CHANGES.inc()
        if not participant.origin:
            self._tell_links(self._track_message(track))
        if track.kind == "audio":
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
        everyone: list[Participant | Waiting] = [
            *self.local_participants(),
            *self.waiting.values(),
        ]
        for participant in everyone:
            await participant.disconnect(reason, 4000)
        return len(everyone)

    # -- host controls -----------------------------------------------------------
    # The callers check who may act (relay/signaling.py for moderators on the
    # relay, the control plane for the host key); these only carry it out.

    async def admit(self, participant_ids: list[str] | None) -> list[str]:
        """Let waiting participants in (all of them for None): each gets `joined`
        and the roster, and everyone else sees it arrive."""
        ids = list(self.waiting) if participant_ids is None else participant_ids
        entries = [self.waiting[pid] for pid in ids if pid in self.waiting]
        if participant_ids is not None and len(entries) != len(set(participant_ids)):
            raise NotFound()
        admitted = []
        for entry in entries:
            if self.waiting.pop(entry.participant_id, None) is None:
                continue  # it left meanwhile
            try:
                participant = await self.join(
                    entry.participant_id,
                    entry.name,
                    entry.publish,
                    entry.can_subscribe,
                    entry.signal,
                    entry.disconnect,
                    entry.video_codec,
                    entry.role,
                    entry.rights,
                    entry.source_tag,
                )
            except RoomFull:
                self.waiting[entry.participant_id] = entry  # still waiting: no room yet
                break
            entry.admitted(participant)
            admitted.append(entry.participant_id)
        await self._waiting_changed()
        return admitted

    async def deny(self, participant_ids: list[str]) -> list[str]:
        """Turn waiting participants away; they saw nothing of the meeting."""
        entries = [self.waiting.get(pid) for pid in participant_ids]
        if any(e is None for e in entries):
            raise NotFound()
        denied = []
        for entry in entries:
            assert entry is not None
            if self.waiting.pop(entry.participant_id, None) is not None:
                await entry.disconnect("denied", CLOSE_DENIED)
                denied.append(entry.participant_id)
        await self._waiting_changed()
        return denied

    def find(self, participant_id: str) -> Participant | Waiting:
        found = self.participants.get(participant_id) or self.waiting.get(participant_id)
        if found is None:
            raise NotFound()
        return found

    async def remove(self, participant_id: str) -> None:
        """Disconnect a participant (or waiting joiner), told it was removed; the
        caller has recorded the removal already (relay/node.py)."""
        found = self.find(participant_id)
        if isinstance(found, Participant) and found.origin:
            return  # its relay follows the meeting record, where the removal is
        await found.disconnect("removed", CLOSE_REMOVED)
        await self.leave(participant_id)  # now, not when its socket notices

    async def mute_participant(self, participant_id: str, source: str) -> None:
        """Stop forwarding a participant's source until it unmutes itself."""
        participant = self.participants.get(participant_id)
        if participant is None:
            raise NotFound()
        track = participant.tracks.get(source)
        if track is None:
            raise SignalingError("not_published", f"this participant does not publish {source}")
        if self._act_remotely(participant, {"action": "mute", "source": source}):
            return
        track.held = True
        _update_fast(track)
        await self._signal_quietly(participant, {"type": "muted_by_host", "source": source})
        await self.set_muted(participant, source, True)

    async def set_rights(self, participant_id: str, sources: set[str]) -> None:
        """What a participant may publish from now on; a source it loses stops."""
        participant = self.participants.get(participant_id)
        if participant is None:
            raise NotFound()
        if self._act_remotely(participant, {"action": "rights", "sources": sorted(sources)}):
            return
        participant.rights = set(sources)
        await self._signal_quietly(
            participant, {"type": "publish_rights", "sources": sorted(participant.rights)}
        )
        await self._enforce_rights(participant, "rights")

    async def set_role(self, participant_id: str, role: str) -> None:
        """Make a participant a co-host (it may publish every source and moderate)
        or a participant again (back to the meeting's default rights)."""
        participant = self.participants.get(participant_id)
        if participant is None:
            raise NotFound()
        if participant.role == "host":
            raise SignalingError("not_allowed", "a host's role cannot be changed")
        if participant.role == role:
            return
        if self._act_remotely(participant, {"action": "role", "role": role}):
            return
        participant.role = role
        publishes = bool(participant.rights)
        participant.rights = set(
            SOURCES if role == "cohost" else self.policy.default_sources(role, publishes)
        )
        await self._broadcast(
            {"type": "participant_updated", "participant": participant.describe()}
        )
        self._tell_links(self._member_message(participant))
        await self._signal_quietly(
            participant, {"type": "publish_rights", "sources": sorted(participant.rights)}
        )
        await self._enforce_rights(participant, "rights")
        if participant.moderates and self.waiting:
            await self._waiting_changed()

    async def _apply_screen_share(self, everyone: bool) -> None:
        """The meeting's screen-sharing rule changed: publishing participants get
        the screen, or lose it (a screen given to one of them is taken back too)."""
        for participant in self.local_participants():
            if participant.role != "participant" or not participant.rights:
                continue
            rights = (
                participant.rights | {"screen"} if everyone else participant.rights - {"screen"}
            )
            if rights != participant.rights:
                await self.set_rights(participant.participant_id, rights)

    async def _enforce_rights(self, participant: Participant, reason: str) -> None:
        for source in list(participant.tracks):
            if not self.may_publish(participant.role, participant.rights, source):
                await self.stop_publishing(participant, source, reason)

    async def apply_policy(self, policy: MeetingPolicy) -> None:
        """A new policy from etcd (a host's change through any replica or relay):
        suspension stops participants' media, turning the waiting room off admits
        everyone waiting, and anyone removed is disconnected."""
        before, self.policy = self.policy, policy
        if before == policy:
            return
        await self._broadcast({"type": "room_updated", "room": self.room_state()})
        if before.screen_share != policy.screen_share:
            await self._apply_screen_share(policy.screen_share == "everyone")
        if policy.suspended:
            for participant in self.local_participants():
                await self._enforce_rights(participant, "suspended")
        if before.waiting_room and not policy.waiting_room and self.waiting:
            await self.admit(None)
        present: list[Participant | Waiting] = [*self.local_participants(), *self.waiting.values()]
        for member in present:
            if member.role != "host" and policy.is_removed(
                member.participant_id, member.source_tag
            ):
                await member.disconnect("removed", CLOSE_REMOVED)
                await self.leave(member.participant_id)

    # -- end-to-end encryption (opaque key material) ----------------------

    async def set_e2ee_binding(self, participant: Participant, binding: str) -> None:
        """Record a participant's key binding and give everyone the new member list:
        its first member leads the key exchange and keys exactly these members, so
        nobody can decrypt without being on the roster. The list is in the order the
        bindings arrived, so the leader stays the leader while it is present: a
        participant that joined earlier but posted later must not take over a
        meeting that has keys it was never part of."""
        if participant.e2ee_binding is None:
            # Strictly increasing on this relay; across relays, wall clocks order it.
            at = max(time.time_ns() // 1000, self._last_binding_at + 1)
            self._last_binding_at = participant.e2ee_at = at
        participant.e2ee_binding = binding
        self._tell_links(self._binding_message(participant))
        await self._broadcast(self._e2ee_members())

    def _e2ee_members(self) -> dict[str, Any]:
        members = sorted(
            (p for p in self.participants.values() if p.e2ee_binding is not None),
            key=lambda p: (p.e2ee_at, p.participant_id),
        )
        return {
            "type": "e2ee_members",
            "members": [
                {"participant_id": p.participant_id, "binding": p.e2ee_binding} for p in members
            ],
        }

    async def send_e2ee_key(self, sender: Participant, to: str, message: str) -> None:
        """Pass a key message from one participant to another, unread."""
        recipient = self.participants.get(to)
        if recipient is None or recipient is sender:
            raise SignalingError("unknown_participant", "no such participant in this meeting")
        metrics.E2EE_KEY_MESSAGES.inc()
        if recipient.origin:
            link = self.links.get(recipient.origin)
            if link is not None:
                link.send(
                    {
                        "type": "e2ee_key",
                        "from": sender.participant_id,
                        "to": to,
                        "message": message,
                    }
                )
            return
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
            live_only = not track.remote or any(track.layers.live)
            views = track.layers.views(self._layer_sizes(track), now, live_only=live_only)
            layer = choice.choose(views, 0, now)
        track.forwarder.add_subscriber(output, layer)
        if track.remote:
            if track.layers is not None:
                track.layers.dynacast({layer}, asyncio.get_running_loop().time())
            self._ask_link(track)

    async def on_media(
        self,
        peer: Peer,
        source: str,
        header: RtpHeader,
        data: bytes,
        layer: int,
        now: float,
    ) -> None:
        participant = self.participants.get(peer.participant_id)
        if participant is None:
            return
        track = participant.tracks.get(source)
        if track is None:
            metrics.PACKETS_DROPPED.labels(reason="not_published").inc()
            return
        if track.held:
            metrics.PACKETS_DROPPED.labels(reason="muted_by_host").inc()
            return
        _RECEIVED.inc()
        _BYTES_RECEIVED.inc(len(data))
        if peer.join_started_ms is not None:
            peer.media_flowing()
        voice = participant.voice
        native = isinstance(peer, ParticipantPeer) and peer.bound_natively(header.ssrc)
        if source == "microphone" and voice is not None and peer.audio_level_id is not None:
            if not native:  # else the engine sums the levels (native_levels)
                voice.observe(header.extensions, peer.audio_level_id)
        outputs = track.forwarder.forward(data, header, layer, now)
        sent_bytes = 0
        for output, packet in outputs:
            sink = output.sink
            if sink.join_started_ms is not None:
                sink.media_flowing()
            await sink.send_rtp(packet)  # never raises: one subscriber can't stop others
            sent_bytes += len(packet)
        _FORWARDED.inc(len(outputs))
        _BYTES_FORWARDED.inc(sent_bytes)
        if track.links and not participant.origin:
            _send_on_links(track, header.sequence, data, layer)
        if not native and isinstance(peer, ParticipantPeer):
            peer.bind_native(header.ssrc, track.forwarder, layer, header.payload_type)

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
                if track.layers is None and track.forwarder.layers[0].joining:
                    # Ask again while somebody waits: the first request may have
                    # gone nowhere (no packet, so no SSRC, yet), or its key frame
                    # been lost, as the very first packets of a source added to a
                    # running connection can be, before the relay applied the answer.
                    self._request_keyframe(track.track_id, 0)

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
        for wants in track.links.values():
            needed |= wants
        active = layers.dynacast(needed, now)
        if track.remote:
            self._ask_link(track)  # its relay, not its publisher, is asked for layers
        elif active is not None:
            metrics.DYNACAST_CHANGES.inc()
            assert isinstance(track.owner.peer, ParticipantPeer)
            rids = track.owner.peer.layer_rids(track.source)
            await self._signal_quietly(
                track.owner,
                {
                    "type": "layers",
                    "track_id": track.track_id,
                    "kind": track.kind,
                    "source": track.source,
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
                self._take_native_levels()
                changed = self.speakers.decide(loop.time())
                if changed is not None:
                    metrics.ACTIVE_SPEAKER_UPDATES.inc()
                    await self._broadcast(self._speakers_message(changed))
            except Exception as exc:  # a bug here must not end speaker updates for good
                log.debug("active-speaker update failed: %s", exc, exc_info=True)

    def _take_native_levels(self) -> None:
        """Audio levels the native engine summed since the last decision."""
        for participant in self.participants.values():
            voice, peer = participant.voice, participant.peer
            if voice is None or not isinstance(peer, ParticipantPeer):
                continue
            levels = peer.native_levels()
            if levels is not None:
                voice.add_sum(*levels)

    @staticmethod
    def _speakers_message(speakers: list[tuple[str, float]]) -> dict[str, Any]:
        return {
            "type": "active_speakers",
            "speakers": [{"participant_id": pid, "level": level} for pid, level in speakers],
        }

    def on_codec(self, peer: Peer, source: str, mime: str) -> None:
        """The publisher switched codec (or sent its first packet): subscribers that
        negotiated it start again at its next key frame; the others cannot get it."""
        participant = self.participants.get(peer.participant_id)
        track = participant.tracks.get(source) if participant else None
        if track is None or track.kind != "video":
            return
        forwarder = track.forwarder
        forwarder.set_codec(mime)
        for output in list(forwarder.subscribers):
            if not output.use_codec(forwarder.codec):
                metrics.CODEC_MISMATCHES.inc()
                forwarder.remove_subscriber(output)
                track.subscribers.pop(output, None)
        if track.remote:
            self._ask_link(track)

    def on_keyframe_request(self, track_id: str, output: Output) -> None:
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

    async def on_nack(self, track_id: str, output: Output, lost: list[int]) -> None:
        track = self.tracks.get(track_id)
        if track is None:
            return
        packets = track.forwarder.retransmit(output, lost)
        for packet in packets:
            await output.sink.send_rtp(packet)
        metrics.RETRANSMISSIONS.inc(len(packets))

    def on_remb(self, track_id: str, output: Output, bitrate: int) -> None:
        track = self.tracks.get(track_id)
        choice = track.subscribers.get(output) if track is not None else None
        if choice is not None:
            choice.set_estimate(bitrate, asyncio.get_running_loop().time())

    def on_publish_negotiated(
        self, peer: ParticipantPeer, source: str, extensions: dict[int, str]
    ) -> None:
        participant = self.participants.get(peer.participant_id)
        track = participant.tracks.get(source) if participant else None
        if track is None:
            return
        track.forwarder.set_source_extensions(extensions)
        count = len(peer.layer_rids(source)) if source in peer.simulcast else 0
        if count != (track.layers.count if track.layers is not None else 0):
            track.layers = TrackLayers(count) if count else None
        self._tell_links(self._track_message(track))

    def upstream_bitrate(self, peer: ParticipantPeer) -> int | None:
        """The REMB names every video SSRC of the participant (camera and screen):
        the sum of what each video track may send."""
        participant = self.participants.get(peer.participant_id)
        if participant is None:
            return None
        total = None
        for video in participant.tracks.values():
            if video.kind != "video":
                continue
            if video.layers is not None:
                allowed = SIMULCAST_UPSTREAM_BITRATE
            else:
                estimates = [
                    c.estimate for c in video.subscribers.values() if c.estimate is not None
                ]
                if not estimates:
                    continue
                allowed = max(MIN_UPSTREAM_BITRATE, min(estimates))
            total = (total or 0) + allowed
        return total

    async def on_sender_report(
        self, peer: Peer, source: str, report: SenderReport, layer: int
    ) -> None:
        """Pass the publisher's clock mapping on to the subscribers receiving this
        layer, translated (each simulcast SSRC has its own RTP clock base), and to
        the links that carry the layer."""
        participant = self.participants.get(peer.participant_id)
        track = participant.tracks.get(source) if participant else None
        if track is None or layer >= len(track.forwarder.layers):
            return
        if not track.remote:
            pair = _clock_pair.pack(report.ntp, report.rtp_timestamp)
            for link, wants in track.links.items():
                if layer in wants:
                    link.send_media(track.index, layer, pair, KIND_SENDER_REPORT)
        # On the native path the engine sends the reports of subscribers with a leg.
        pending = track.forwarder.sender_reports(layer, report.ntp, report.rtp_timestamp, CNAME)
        for output, compound in pending:
            await output.sink.send_rtp(compound)
        # One entry for every subscriber (their receiver reports name the same LSR),
        # timed after the sends: the engine sends what it queued at the end of its batch.
        self._reports_sent[(report.ntp >> 16) & 0xFFFFFFFF] = asyncio.get_running_loop().time()
        if len(self._reports_sent) > REPORTS_REMEMBERED:
            del self._reports_sent[next(iter(self._reports_sent))]

    def sender_report_sent_at(self, lsr: int) -> float | None:
        return self._reports_sent.get(lsr)

    def _send_keyframe_request(self, track_id: str, layer: int) -> None:
        track = self.tracks.get(track_id)
        if track is None:
            return
        peer = track.owner.peer
        if isinstance(peer, RemotePeer):
            link = self.links.get(peer.origin)
            if link is not None:
                metrics.KEYFRAME_REQUESTS.inc()
                link.send({"type": "keyframe", "index": track.index, "layer": layer})
            return
        rids = peer.layer_rids(track.source)
        ssrc = (
            peer.publish_ssrc.get(track.source, {}).get(rids[layer]) if layer < len(rids) else None
        )
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

    # -- links to the meeting's other relays (docs/cascading.md) -------------------
    # What happens to local participants goes to every link; what a link says about
    # its relay's participants is applied here as if they were local, minus their
    # connection. The mesh is full, so nothing received on a link is passed on.

    def _tell_links(self, message: dict[str, Any]) -> None:
        for link in self.links.values():
            link.send(message)

    @staticmethod
    def _member_message(participant: Participant) -> dict[str, Any]:
        return {
            "type": "member",
            "participant_id": participant.participant_id,
            "name": participant.name,
            "role": participant.role,
        }

    @staticmethod
    def _binding_message(participant: Participant) -> dict[str, Any]:
        return {
            "type": "e2ee",
            "participant_id": participant.participant_id,
            "binding": participant.e2ee_binding,
            "at": participant.e2ee_at,
        }

    @staticmethod
    def _track_message(track: PublishedTrack) -> dict[str, Any]:
        peer = track.owner.peer
        codecs = peer.publish_codecs(track.kind) if isinstance(peer, ParticipantPeer) else {}
        return {
            "type": "track",
            "participant_id": track.owner.participant_id,
            "index": track.index,
            "track_id": track.track_id,
            "source": track.source,
            "muted": track.muted,
            "layers": track.layers.count if track.layers is not None else 0,
            "extensions": {str(i): uri for i, uri in track.forwarder.source_extensions.items()},
            "codecs": {str(pt): mime for pt, mime in codecs.items()},
        }

    @staticmethod
    def _want_message(track: PublishedTrack) -> dict[str, Any]:
        return {"type": "want", "index": track.index, "layers": sorted(track.wanted)}

    def _act_remotely(self, participant: Participant, action: dict[str, Any]) -> bool:
        """A host's action on a participant of another relay goes to that relay."""
        if not participant.origin:
            return False
        link = self.links.get(participant.origin)
        if link is None:
            raise NotFound()
        link.send({"type": "act", "participant_id": participant.participant_id, **action})
        return True

    def close_dialed_links(self) -> None:
        """Nobody is here any more: the links this relay opened are not needed."""
        for link in list(self.links.values()):
            if link.dialer:
                spawn(link.close(), "link-close")

    def _ask_link(self, track: PublishedTrack) -> None:
        """Tell a remote track's relay which of its layers this relay needs now: none
        without subscribers here, the one stream of a single-stream track, else the
        layers dynacast keeps (what subscribers here receive or are moving to)."""
        if not track.forwarder.subscribers:
            wanted: frozenset[int] = frozenset()
        elif track.layers is None:
            wanted = frozenset({0})
        else:
            wanted = frozenset(i for i in range(track.layers.count) if i not in track.layers.paused)
        if wanted == track.wanted:
            return
        if not track.wanted:
            _LINK_TRACKS_RECEIVED.inc()
            _LINK_STARTS_RECEIVED.inc()
        elif not wanted:
            _LINK_TRACKS_RECEIVED.dec()
        track.wanted = wanted
        link = self.links.get(track.owner.origin)
        if link is not None:
            link.send(self._want_message(track))

    async def attach_link(self, link: MeetingLink) -> None:
        """A link to another relay of the meeting is up: it learns who is here."""
        old = self.links.get(link.peer_node)
        self.links[link.peer_node] = link
        if old is not None:  # the same relay again: its participants stay, on the new link
            old.events = None
            self._forget_link(old)
            spawn(old.close(say_bye=False), "link-replaced")
            for track in self._remote_tracks.values():
                if track.owner.origin == link.peer_node and track.wanted:
                    link.send(self._want_message(track))
        for participant in self.local_participants():
            link.send(self._member_message(participant))
            for track in participant.tracks.values():
                link.send(self._track_message(track))
            if participant.e2ee_binding is not None:
                link.send(self._binding_message(participant))
        link.send({"type": "synced"})
        metrics.LINKS.inc()

    async def detach_link(self, link: MeetingLink) -> None:
        """A link ended: its relay's participants leave this relay's roster (they
        come back through whichever relay they reconnect to)."""
        if self.links.get(link.peer_node) is not link:
            if link.events is None:  # replaced by a newer link to the same relay
                metrics.LINKS.dec()
            return
        metrics.LINKS.dec()
        del self.links[link.peer_node]
        self._forget_link(link)
        for participant in list(self.participants.values()):
            if participant.origin == link.peer_node:
                await self.leave(participant.participant_id)

    def _forget_link(self, link: MeetingLink) -> None:
        """Local tracks stop going to a link that ended or was replaced."""
        for track in self._local_tracks.values():
            if link in track.links and track.links.pop(link):
                _LINK_TRACKS_SENT.dec()
            _update_fast(track)

    async def on_link_message(self, link: MeetingLink, message: dict[str, Any]) -> None:
        if self.links.get(link.peer_node) is not link:
            return  # a replaced link's last words
        handler = _LINK_HANDLERS.get(message["type"])
        if handler is None:
            log.debug("ignoring link message %s", message["type"])
            return
        await handler(self, link, message)

    async def _on_member(self, link: MeetingLink, message: dict[str, Any]) -> None:
        pid, name, role = message["participant_id"], message["name"], message["role"]
        if (
            not isinstance(pid, str)
            or not isinstance(name, str)
            or role not in ("host", *MODERATORS, "participant")
        ):
            raise ValueError("malformed member")
        known = self.participants.get(pid)
        if known is None:
            participant = Participant(
                pid, name, False, _nobody, RemotePeer(pid, link.peer_node), _not_here,
                role=role, origin=link.peer_node,
            )  # fmt: skip
            self.participants[pid] = participant
            await self._broadcast(
                {"type": "participant_joined", "participant": participant.describe()}
            )
            return
        if known.origin != link.peer_node:
            return  # an id already connected elsewhere: the first one stays
        if (known.name, known.role) != (name, role):
            known.name, known.role = name, role
            await self._broadcast({"type": "participant_updated", "participant": known.describe()})

    async def _on_left(self, link: MeetingLink, message: dict[str, Any]) -> None:
        participant = self.participants.get(message["participant_id"])
        if participant is not None and participant.origin == link.peer_node:
            await self.leave(participant.participant_id)

    async def _on_track(self, link: MeetingLink, message: dict[str, Any]) -> None:
        owner = self.participants.get(message["participant_id"])
        if owner is None or owner.origin != link.peer_node:
            return
        index, source = message["index"], message["source"]
        if not isinstance(index, int) or source not in SOURCES:
            raise ValueError("malformed track")
        extensions = {int(i): str(uri) for i, uri in dict(message.get("extensions") or {}).items()}
        codecs = {int(pt): str(mime) for pt, mime in dict(message.get("codecs") or {}).items()}
        count = message.get("layers", 0)
        count = count if isinstance(count, int) and 0 <= count <= 3 else 0
        peer = owner.peer
        assert isinstance(peer, RemotePeer)
        peer.learn(codecs, extensions)
        track = self._remote_tracks.get((link.peer_node, index))
        if track is None:
            track_id = message["track_id"]
            if not isinstance(track_id, str) or track_id in self.tracks or source in owner.tracks:
                raise ValueError("duplicate track")
            kind = SOURCE_KINDS[source]
            track = PublishedTrack(
                track_id,
                source,
                owner,
                new_forwarder(kind, lambda layer: self._request_keyframe(track_id, layer)),
                index=index,
            )
            owner.tracks[source] = track
            self.tracks[track_id] = track
            self._remote_tracks[(link.peer_node, index)] = track
            if kind == "audio":
                owner.voice = self.speakers.add(owner.participant_id)
            track.muted = bool(message.get("muted"))
            if track.muted and kind == "audio":
                self.speakers.set_muted(owner.participant_id, True)
            self._shape(track, extensions, count)
            await self._broadcast(
                {"type": "track_published", "participant_id": owner.participant_id,
                 "track": track.describe()}
            )  # fmt: skip
            self._subscribe_everyone(track)
            return
        self._shape(track, extensions, count)
        await self.set_muted(owner, source, bool(message.get("muted")))

    @staticmethod
    def _shape(track: PublishedTrack, extensions: dict[int, str], count: int) -> None:
        """What a remote track's relay said about its header extensions and layers."""
        if extensions:
            track.forwarder.set_source_extensions(extensions)
        if count != (track.layers.count if track.layers is not None else 0):
            track.layers = TrackLayers(count) if count else None
            if track.layers is not None:
                # Only what a subscriber here needs crosses the link: all paused but
                # the lowest until someone asks for more.
                track.layers.paused = set(range(1, count))

    async def _on_untrack(self, link: MeetingLink, message: dict[str, Any]) -> None:
        track = self._remote_tracks.get((link.peer_node, message["index"]))
        if track is None:
            return
        track.owner.tracks.pop(track.source, None)
        assert isinstance(track.owner.peer, RemotePeer)
        track.owner.peer.forget(track.index)
        await self._unpublish(track.owner, track)

    async def _on_binding(self, link: MeetingLink, message: dict[str, Any]) -> None:
        participant = self.participants.get(message["participant_id"])
        binding, at = message["binding"], message["at"]
        if participant is None or participant.origin != link.peer_node:
            return
        if not isinstance(binding, str) or not isinstance(at, int):
            raise ValueError("malformed binding")
        participant.e2ee_binding, participant.e2ee_at = binding, at
        await self._broadcast(self._e2ee_members())

    async def _on_e2ee_key(self, link: MeetingLink, message: dict[str, Any]) -> None:
        sender = self.participants.get(message["from"])
        recipient = self.participants.get(message["to"])
        if sender is None or sender.origin != link.peer_node or recipient is None:
            return
        if recipient.origin or not isinstance(message["message"], str):
            return
        metrics.E2EE_KEY_MESSAGES.inc()
        await self._signal_quietly(
            recipient,
            {"type": "e2ee_key", "from": sender.participant_id, "message": message["message"]},
        )

    async def _on_want(self, link: MeetingLink, message: dict[str, Any]) -> None:
        track = self._local_tracks.get(message["index"])
        if track is None:
            return
        count = len(track.forwarder.layers)
        wants = {i for i in message["layers"] if isinstance(i, int) and 0 <= i < count}
        before = track.links.get(link, set())
        track.links[link] = wants
        _update_fast(track)
        if wants and not before:
            _LINK_TRACKS_SENT.inc()
            _LINK_STARTS_SENT.inc()
        elif before and not wants:
            _LINK_TRACKS_SENT.dec()
        for layer in wants - before:
            self._request_keyframe(track.track_id, layer)
        if track.layers is not None and wants - before:
            await self._choose_layers(track, asyncio.get_running_loop().time())

    async def _on_keyframe(self, link: MeetingLink, message: dict[str, Any]) -> None:
        track = self._local_tracks.get(message["index"])
        layer = message["layer"]
        if (
            track is not None
            and isinstance(layer, int)
            and 0 <= layer < len(track.forwarder.layers)
        ):
            self._request_keyframe(track.track_id, layer)

    async def _on_nack(self, link: MeetingLink, message: dict[str, Any]) -> None:
        track = self._local_tracks.get(message["index"])
        layer = message["layer"]
        if track is None or track.recent is None or not isinstance(layer, int):
            return
        if not 0 <= layer < len(track.recent):
            return
        recent = track.recent[layer]
        for sequence in message["sequences"][:64]:
            if not isinstance(sequence, int):
                continue
            packet = recent[sequence % LINK_CACHE]
            if packet is not None and int.from_bytes(packet[2:4], "big") == sequence:
                link.send_media(track.index, layer, packet)
                metrics.RETRANSMISSIONS.inc()

    async def _on_act(self, link: MeetingLink, message: dict[str, Any]) -> None:
        """A host on another relay acts on a participant of this one."""
        target = self.participants.get(message["participant_id"])
        if target is None or target.origin:
            return
        action = message["action"]
        if action == "mute" and message["source"] in SOURCES:
            await self.mute_participant(target.participant_id, message["source"])
        elif action == "rights" and isinstance(message["sources"], list):
            await self.set_rights(target.participant_id, set(message["sources"]) & set(SOURCES))
        elif action == "role" and message["role"] in ("cohost", "participant"):
            await self.set_role(target.participant_id, message["role"])

    async def on_link_media(self, link: MeetingLink, index: int, layer: int, data: bytes) -> None:
        track = self._remote_tracks.get((link.peer_node, index))
        if track is None or layer >= len(track.forwarder.layers):
            metrics.PACKETS_DROPPED.labels(reason="not_published").inc()
            return
        try:
            header = RtpHeader.parse(data)
        except ValueError:
            metrics.PACKETS_DROPPED.labels(reason="malformed_rtp").inc()
            return
        peer = track.owner.peer
        assert isinstance(peer, RemotePeer)
        mime = peer.codecs.get(header.payload_type)
        if mime is None or not mime.startswith(track.kind + "/"):
            metrics.PACKETS_DROPPED.labels(reason="unknown_payload_type").inc()
            return
        if peer.publish_codec.get(track.source) != mime:
            peer.publish_codec[track.source] = mime
            self.on_codec(peer, track.source, mime)
        now = asyncio.get_running_loop().time()
        if track.kind == "video":
            missing = peer.missing(index, layer)
            if missing.update(header.sequence) or missing.missing:
                lost = missing.due(now)
                if lost:
                    metrics.NACKS_SENT.inc()
                    link.send({"type": "nack", "index": index, "layer": layer, "sequences": lost})
        await self.on_media(peer, track.source, header, data, layer, now)

    async def on_link_sender_report(
        self, link: MeetingLink, index: int, layer: int, data: bytes
    ) -> None:
        track = self._remote_tracks.get((link.peer_node, index))
        if track is None or len(data) != _clock_pair.size:
            return
        ntp, rtp_timestamp = _clock_pair.unpack(data)
        report = SenderReport(0, ntp, rtp_timestamp, 0, 0)
        await self.on_sender_report(track.owner.peer, track.source, report, layer)


LinkHandler = Callable[[Room, MeetingLink, dict[str, Any]], Awaitable[None]]
_LINK_HANDLERS: dict[str, LinkHandler] = {
    "member": Room._on_member,
    "left": Room._on_left,
    "track": Room._on_track,
    "untrack": Room._on_untrack,
    "e2ee": Room._on_binding,
    "e2ee_key": Room._on_e2ee_key,
    "want": Room._on_want,
    "keyframe": Room._on_keyframe,
    "nack": Room._on_nack,
    "act": Room._on_act,
}


def _send_on_links(track: PublishedTrack, sequence: int, data: bytes, layer: int) -> None:
    """The packet as the publisher sent it, once to each link that wants its layer."""
    if track.kind == "video":
        recent = track.recent
        if recent is None:
            recent = track.recent = [[None] * LINK_CACHE for _ in track.forwarder.layers]
        recent[layer][sequence % LINK_CACHE] = data
    for link, wants in track.links.items():
        if layer in wants:
            link.send_media(track.index, layer, data)


def _update_fast(track: PublishedTrack) -> None:
    """Whether the native engine may forward the track's packets without Python:
    not while a host holds it (done in Python). While links take it the engine
    still forwards it to this relay's subscribers, then hands each packet up for
    the links (`Track.tap`): one Python call per packet, not one per subscriber."""
    if isinstance(track.forwarder, NativeForwarder):
        native = track.forwarder.track
        native.fast = not track.held
        native.tap = functools.partial(_tap_for_links, track) if track.links else None


def _tap_for_links(track: PublishedTrack, data: bytes, layer: int) -> None:
    """A packet of a linked track the engine forwarded here: to the links too."""
    _send_on_links(track, (data[2] << 8) | data[3], data, layer)
