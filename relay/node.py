"""The meetings hosted on this relay node and the node-wide services they use."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from conclave.store import ROOMS_PREFIX, EtcdStore
from relay import metrics
from relay.admission import GrantChecker
from relay.errors import SignalingError
from relay.room import Room

log = logging.getLogger(__name__)

DEFAULT_MAX_PARTICIPANTS = 100


class RelayNode:
    """Rooms by id: opened on first join (settings read from etcd), dropped when
    the last participant leaves."""

    def __init__(self, node_id: str, store: EtcdStore, grants: GrantChecker, capacity: int) -> None:
        self.node_id = node_id
        self.capacity = capacity
        self.store = store
        self.grants = grants
        self.rooms: dict[str, Room] = {}
        self.on_participants_changed: Callable[[int], None] = lambda count: None

    async def open_room(self, room_id: str) -> Room:
        if self.participant_count() >= self.capacity:
            raise SignalingError("node_full", "this relay is at capacity; join again", 4004)
        room = self.rooms.get(room_id)
        if room is not None:
            return room
        value = await self.store.get(ROOMS_PREFIX + room_id)
        if value is None:
            raise SignalingError("room_not_found", "the meeting does not exist (ended?)", 4004)
        settings = json.loads(value)
        room = self.rooms.get(room_id)  # another join may have opened it meanwhile
        if room is None:
            limit = int(settings.get("max_participants") or DEFAULT_MAX_PARTICIPANTS)
            room = self.rooms[room_id] = Room(room_id, limit)
            metrics.ROOMS.set(len(self.rooms))
        return room

    def participant_count(self) -> int:
        return sum(len(r.participants) for r in self.rooms.values())

    def participants_changed(self, room_id: str) -> None:
        room = self.rooms.get(room_id)
        if room is not None and not room.participants:
            del self.rooms[room_id]
            metrics.ROOMS.set(len(self.rooms))
        self.on_participants_changed(self.participant_count())
