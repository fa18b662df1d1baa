"""The meetings hosted on this relay node and the node-wide services they use."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable

from conclave import audit, rejoin
from conclave.meeting import MeetingPolicy, Removal, policy_actions, policy_of, update_policy
from conclave.store import ROOMS_PREFIX, EtcdStore
from conclave.tasks import spawn
from relay import metrics
from relay.admission import GrantChecker
from relay.errors import SignalingError
from relay.room import NotFound, Participant, Room

log = logging.getLogger(__name__)

DEFAULT_MAX_PARTICIPANTS = 100
WATCH_RETRY_S = 1.0
SERVING, DRAINING = "serving", "draining"  # the node's states (conclave_node_state)
CLOSE_NODE_REFUSED = 4004  # node_full, node_draining: ask the control plane again


async def _no_links(room: Room) -> None:
    """A relay without links (tests of one relay) has nobody to wait for."""


class RelayNode:
    """Rooms by id: opened on first join (settings read from etcd), dropped when
    the last participant leaves. Each room follows its record in etcd: a policy
    change (lock, suspension, waiting room, removal) applies at once, and a deleted
    record (the meeting ended or expired) closes the room.

    A draining node (relay/drain.py) keeps its rooms until their participants have
    moved, and refuses every new join."""

    def __init__(self, node_id: str, store: EtcdStore, grants: GrantChecker, capacity: int) -> None:
        self.node_id = node_id
        self.capacity = capacity
        self.store = store
        self.grants = grants
        self.rooms: dict[str, Room] = {}
        self.on_participants_changed: Callable[[int], None] = lambda count: None
        # Before a room's first participant here joins: link it to the meeting's
        # other relays and wait for them to tell who is there (relay/links.py).
        self.links_ready: Callable[[Room], Awaitable[None]] = _no_links
        self._watch: asyncio.Task[None] | None = None
        self.state = SERVING
        self._show_state()

    @property
    def draining(self) -> bool:
        return self.state == DRAINING

    def start_draining(self) -> None:
        """From now on no join is accepted; one-way for the life of the process."""
        self.state = DRAINING
        self._show_state()

    def _show_state(self) -> None:
        for state in (SERVING, DRAINING):
            metrics.NODE_STATE.labels(state=state).set(1 if state == self.state else 0)

    async def start(self) -> None:
        self._watch = spawn(self._follow_records(), "room-records")

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None

    async def open_room(self, room_id: str) -> Room:
        """The meeting's room, its policy freshly read from etcd: a join is checked
        against the record as it is now, not as the watch last saw it."""
        if self.draining:
            raise SignalingError(
                "node_draining", "this relay is draining; join again", CLOSE_NODE_REFUSED
            )
        if self.participant_count() >= self.capacity:
            raise SignalingError(
                "node_full", "this relay is at capacity; join again", CLOSE_NODE_REFUSED
            )
        room = await self.open_linked_room(room_id)
        if not room.local_count and not room.waiting:
            await self.links_ready(room)
        return room

    async def open_linked_room(self, room_id: str) -> Room:
        """The meeting's room, opened for a join or for a link from another relay of
        the meeting (which a draining or full relay still serves)."""
        value = await self.store.get(ROOMS_PREFIX + room_id)
        if value is None:
            raise SignalingError("room_not_found", "the meeting does not exist (ended?)", 4004)
        try:
            settings = json.loads(value)
            policy = policy_of(value)
        except ValueError:
            raise SignalingError(
                "room_not_found", "the meeting's record is unreadable", 4004
            ) from None
        room = self.rooms.get(room_id)  # another join may have opened it meanwhile
        if room is None:
            limit = int(settings.get("max_participants") or DEFAULT_MAX_PARTICIPANTS)
            room = self.rooms[room_id] = Room(room_id, limit, policy)
            lease = settings.get("audit_lease", 0)
            room.audit_lease = lease if isinstance(lease, int) else 0
            lease = settings.get("lease", 0)
            room.record_lease = lease if isinstance(lease, int) else 0
            room.has_passcode = "passcode" in settings  # fixed at creation
            metrics.ROOMS.set(len(self.rooms))
        else:
            await room.apply_policy(policy)
        return room

    def participant_count(self) -> int:
        """Participants connected to (or waiting on) this relay; those of linked
        relays are theirs."""
        return sum(r.local_count + len(r.waiting) for r in self.rooms.values())

    def participants_changed(self, room_id: str) -> None:
        room = self.rooms.get(room_id)
        if room is not None and not room.local_count and not room.waiting:
            room.close_dialed_links()
        if room is not None and room.empty:
            del self.rooms[room_id]
            metrics.ROOMS.set(len(self.rooms))
        self.on_participants_changed(self.participant_count())

    # -- host controls that change the meeting's record ---------------------

    async def remove(self, room: Room, participant_id: str, actor: str | None) -> None:
        """Disconnect a participant and record the removal, so that neither this
        relay nor the control plane lets it back in (by id, or by the address its
        grants come from)."""
        found = room.find(participant_id)
        if found.role == "host":
            raise SignalingError("not_allowed", "a host cannot be removed")
        # Recorded first: once told it was removed, it must find the door shut at
        # the control plane too (and if etcd cannot take it, nobody is half removed).
        removal = Removal(participant_id, found.source_tag)
        _, policy = await update_policy(self.store, room.room_id, lambda p: p.with_removal(removal))
        room.policy = policy
        with contextlib.suppress(NotFound):  # the policy watch may have been quicker
            await room.remove(participant_id)
        self.participants_changed(room.room_id)
        await self.audit(room, "remove", actor, participant_id)

    async def update_room(
        self, room: Room, change: Callable[[MeetingPolicy], MeetingPolicy], actor: str
    ) -> None:
        if not room.has_passcode and not change(room.policy).waiting_room:
            # Without a passcode the waiting room is the meeting's only gate.
            raise SignalingError(
                "not_allowed", "a meeting without a passcode keeps its waiting room"
            )
        before, after = await update_policy(self.store, room.room_id, change)
        await room.apply_policy(after)
        for action, detail in policy_actions(before, after):
            await self.audit(room, action, actor, detail=detail)

    async def record_rejoin(self, room: Room, participant: Participant) -> None:
        """Keep the digest of the participant's rejoin token, so that it can come
        back through any relay if this one dies (conclave/rejoin.py)."""
        if room.record_lease <= 0 or not participant.rejoin_digest:
            return
        try:
            await rejoin.record(
                self.store,
                room.room_id,
                participant.participant_id,
                participant.rejoin_digest,
                room.record_lease,
            )
        except Exception as exc:  # it can still rejoin, through the front door
            log.warning("recording a rejoin token failed: %s", type(exc).__name__)

    async def forget_rejoin(self, room: Room, participant_id: str) -> None:
        """Who left on purpose comes back through the front door."""
        try:
            await self.store.delete(rejoin.rejoin_key(room.room_id, participant_id))
        except Exception as exc:
            log.warning("deleting a rejoin token failed: %s", type(exc).__name__)

    async def audit(
        self, room: Room, action: str, actor: str | None, target: str = "", detail: str = ""
    ) -> None:
        """Log a moderator's action taken on this relay; a None actor is a call from
        the control plane, which writes its own entry."""
        if actor is None:
            return
        if room.audit_lease <= 0:
            log.warning("a meeting has no audit lease; an action went unlogged")
            return
        await audit.append(
            self.store, room.room_id, room.audit_lease, action, actor, target, detail
        )

    # -- following the records in etcd -------------------------------------------

    async def _follow_records(self) -> None:
        while True:
            try:
                async for event in self.store.watch_prefix(ROOMS_PREFIX, 0):
                    room = self.rooms.get(event.key[len(ROOMS_PREFIX) :])
                    if room is None:
                        continue
                    if event.kind == "delete":
                        await room.close("room_ended")
                    else:
                        await room.apply_policy(policy_of(event.value))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("following meeting records failed: %s", type(exc).__name__)
                log.debug("watch failure detail", exc_info=True)
            await asyncio.sleep(WATCH_RETRY_S)
            await self._reread_records()

    async def _reread_records(self) -> None:
        """After a broken watch: the changes it missed, read directly."""
        for room_id, room in list(self.rooms.items()):
            with contextlib.suppress(Exception):
                value = await self.store.get(ROOMS_PREFIX + room_id)
                if value is None:
                    await room.close("room_ended")
                else:
                    await room.apply_policy(policy_of(value))
