"""Draining a relay: no new meetings, its meetings moved to other relays, then out.

Two ways in, one flow. SIGTERM (relay/main.py, `--drain-deadline`), or
`conclave relay drain NODE_ID` (relay/drain_cli.py), which writes
`/conclave/drain/{node_id}` under the node's own lease: a restarted node has a new
lease, so an old request never drains it again. The relay watches that key.

Then, until no participant is left:

1. the node record says `"draining": true` (placement skips it) with the
   participant count (relay/registration.py), and joins are refused with
   `node_draining` (relay/node.py);
2. when another relay serves, the placements naming this node are deleted, each
   only while it still names it (conclave/placements.py), and so are its span keys
   (the meetings it was a further relay of, conclave/spans.py); the participants of
   those meetings get `reconnect` (docs/signaling.md): they ask the control plane
   again, which places the meeting on another relay, and come back with their
   rejoin token. Whoever is still here `RECONNECT_GRACE_S` later (a client that
   does not know the message) is disconnected with `room_closed` "node_draining",
   which such clients answer by joining again;
3. a meeting that cannot move (no other relay) stays and finishes naturally, or is
   closed at the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from conclave import placements, spans
from conclave.store import NODES_PREFIX, EtcdStore
from conclave.tasks import spawn

if TYPE_CHECKING:  # `conclave relay drain` imports this module without the media stack
    from relay.node import RelayNode
    from relay.registration import NodeRegistration
    from relay.room import Participant, Room, Waiting

log = logging.getLogger(__name__)

DRAIN_PREFIX = "/conclave/drain/"
DEFAULT_DEADLINE_S = 240.0
# After `reconnect`, how long a participant may stay before it is disconnected.
RECONNECT_GRACE_S = 3.0
STEP_S = 1.0  # how often the placements and the other relays are looked at again
IDLE_STEP_S = 10.0  # ... once nothing is left here (a stray placement, say)
WATCH_RETRY_S = 1.0
RECONNECT = {"type": "reconnect", "reason": "node_draining"}
CLOSE_DRAINING = 4000  # the code of every `room_closed` (relay/room.py)


def drain_key(node_id: str) -> str:
    return DRAIN_PREFIX + node_id


@dataclass(frozen=True)
class DrainRequest:
    """What `conclave relay drain` asks: finish within `deadline_s` of now."""

    deadline_s: float
    requested_at_ms: int = 0

    def to_json(self) -> bytes:
        return json.dumps(
            {"deadline_s": self.deadline_s, "requested_at_ms": self.requested_at_ms}
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> DrainRequest:
        """Raises ValueError for a value that is not a drain request."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a drain request is a JSON object")
        deadline = data.get("deadline_s")
        if isinstance(deadline, bool) or not isinstance(deadline, int | float) or deadline < 0:
            raise ValueError("deadline_s must be a number of seconds")
        at = data.get("requested_at_ms", 0)
        return cls(float(deadline), at if isinstance(at, int) else 0)


def serving_nodes(nodes: dict[str, bytes], except_node: str) -> list[str]:
    """Ids of the registered relays, other than `except_node`, that take meetings."""
    found = []
    for raw in nodes.values():
        try:
            data = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        node_id, capacity, load = data.get("node_id"), data.get("capacity"), data.get("load")
        if (
            isinstance(node_id, str)
            and node_id != except_node
            and data.get("draining") is not True
            and isinstance(capacity, int)
            and capacity > 0
            and isinstance(load, int | float)
            and load < 1.0
        ):
            found.append(node_id)
    return sorted(found)


class Drainer:
    """The drain of one relay node: `start()` follows drain requests in etcd,
    `begin()` drains now, `drained` is set once nobody is left."""

    def __init__(self, node: RelayNode, store: EtcdStore, registration: NodeRegistration) -> None:
        self._node = node
        self._store = store
        self._registration = registration
        self._deadline: float | None = None  # loop time
        self._told: dict[str, float] = {}  # participant id -> when it got `reconnect`
        self._closed = False  # the deadline passed and what was left was closed
        self._placed_here = True  # meetings placed here at the last look
        self._watch: asyncio.Task[None] | None = None
        self._run: asyncio.Task[None] | None = None
        #: set once the node has no participant left after draining began
        self.drained = asyncio.Event()

    async def start(self) -> None:
        self._watch = spawn(self._follow_requests(), "drain-requests")

    async def stop(self) -> None:
        for task in (self._watch, self._run):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def begin(self, deadline_s: float) -> None:
        """Drain now, finishing within `deadline_s`; a later call may only bring the
        deadline forward."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        if self._deadline is not None and self._deadline <= deadline:
            return
        self._deadline = deadline
        if self._run is None:
            log.info("draining: moving meetings, closing what is left in %.0f s", deadline_s)
            self._node.start_draining()
            self._run = spawn(self._drain(), "drain")

    # -- requests from `conclave relay drain` -------------------------------------

    async def _follow_requests(self) -> None:
        key = drain_key(self._node.node_id)
        while True:
            try:
                items, revision = await self._store.get_prefix(key)
                if key in items:
                    self._requested(items[key])
                async for event in self._store.watch_prefix(key, revision + 1):
                    if event.key == key and event.kind == "put":
                        self._requested(event.value)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("following drain requests failed: %s", type(exc).__name__)
            await asyncio.sleep(WATCH_RETRY_S)

    def _requested(self, raw: bytes) -> None:
        try:
            request = DrainRequest.from_json(raw)
        except ValueError:
            log.warning("ignoring a malformed drain request")
            return
        log.info("drain requested")
        self.begin(request.deadline_s)

    # -- the drain itself -----------------------------------------------------------

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        node = self._node
        await self._say_draining()
        next_step = 0.0
        while True:
            now = loop.time()
            try:
                next_step = await self._step(now, next_step)
            except Exception as exc:  # a bug must not keep the node from finishing
                log.warning("drain step failed: %s", type(exc).__name__)
                log.debug("drain step failure detail", exc_info=True)
            if node.participant_count() == 0:
                if not self.drained.is_set():
                    log.info("drained: no participants left")
                self.drained.set()
            await asyncio.sleep(0.1 if node.participant_count() else STEP_S)

    async def _step(self, now: float, next_step: float) -> float:
        """One look at the drain; returns when the next look at etcd is due."""
        assert self._deadline is not None
        if now >= self._deadline:
            if not self._closed:
                self._closed = True
                await self._close_the_rest()
        elif now >= next_step:
            await self._move_meetings()
            busy = self._placed_here or self._node.participant_count() > 0
            next_step = now + (STEP_S if busy else IDLE_STEP_S)
        self._disconnect_stragglers(now)
        return next_step

    async def _say_draining(self) -> None:
        """The node record first: no control plane places a meeting here after it.
        Retried until the deadline (etcd down: the node drains all the same)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._registration.set_draining(self._node.participant_count())
                return
            except Exception as exc:
                log.warning("could not mark the node draining: %s", type(exc).__name__)
                if self._deadline is None or loop.time() >= self._deadline:
                    return
                await asyncio.sleep(0.5)

    async def _move_meetings(self) -> None:
        """Release this node's placements where another relay can take the meeting,
        and send the participants of every meeting no longer placed here on."""
        node = self._node
        try:
            nodes, _ = await self._store.get_prefix(NODES_PREFIX)
            targets = serving_nodes(nodes, node.node_id)
            mine = await placements.placements_of(self._store, node.node_id)
            self._placed_here = bool(mine)
            for room_id in mine:
                room = node.rooms.get(room_id)
                # With nobody here there is nothing to keep; with people here, only
                # when they have somewhere to go (else it finishes here).
                if (room is None or room.empty or targets) and await placements.release(
                    self._store, room_id, node.node_id
                ):
                    log.debug("released the placement of room %s", room_id)
            if not targets:
                return
            if await spans.leave_all(self._store, node.node_id):
                log.debug("left the meetings this node was a further relay of")
            still_mine = set(await placements.placements_of(self._store, node.node_id))
        except Exception as exc:  # etcd unreachable: try again at the next step
            log.warning("moving meetings failed: %s", type(exc).__name__)
            return
        for room in list(node.rooms.values()):
            if room.room_id not in still_mine:
                for member in _members(room):
                    await self._tell(member)

    async def _tell(self, member: Participant | Waiting) -> None:
        if member.participant_id in self._told:
            return
        self._told[member.participant_id] = asyncio.get_running_loop().time()
        with contextlib.suppress(Exception):  # its connection is going anyway
            await member.signal(dict(RECONNECT))

    def _disconnect_stragglers(self, now: float) -> None:
        """Who ignored `reconnect` is sent away (clients join again after that)."""
        for room in list(self._node.rooms.values()):
            for member in _members(room):
                told = self._told.get(member.participant_id)
                if told is not None and now - told >= RECONNECT_GRACE_S:
                    self._told[member.participant_id] = float("inf")  # once
                    spawn(_disconnect(member), "drain-close")

    async def _close_the_rest(self) -> None:
        """The deadline: meetings that could not move end here (once)."""
        node = self._node
        if not node.rooms:
            return
        log.info("drain deadline: closing %d meeting(s) that could not move", len(node.rooms))
        with contextlib.suppress(Exception):
            await spans.leave_all(self._store, node.node_id)
        for room_id, room in list(node.rooms.items()):
            with contextlib.suppress(Exception):
                await placements.release(self._store, room_id, node.node_id)
            await room.close("node_draining")


def _members(room: Room) -> list[Participant | Waiting]:
    return [*room.participants.values(), *room.waiting.values()]


async def _disconnect(member: Participant | Waiting) -> None:
    await member.disconnect("node_draining", CLOSE_DRAINING)


def now_ms() -> int:
    return int(time.time() * 1000)
