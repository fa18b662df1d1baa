"""`conclave sim`: a synthetic day of meetings through the real placement code.

How many relays, etcd writes and control-plane requests does a day of N daily
participants need? This replays one, event by event (a heap of meeting starts,
joins, rejoins, leaves and ends, not a per-second loop), through
`PowerOfTwoChoices` and, for the cells run in full, through the real `Placer` and
`NodeRegistry` on `conclave.memory_store.MemoryStore`, which counts every etcd
request as a real store reports it. The model, its assumptions and the figures are
in docs/capacity.md.

Cells: each cell is one etcd cluster with its control planes and relays; a thin
directory maps a meeting to a cell by hashing its id. Hashing splits the day's
arrivals into independent streams of equal rate, so each cell's day is drawn on its
own. When there are more cells than `--sample-cells`, a sample is simulated and the
totals are scaled, with a 95 % confidence margin from the spread between cells.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import heapq
import json
import math
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from conclave.memory_store import MemoryLease, MemoryStore
from control_plane.errors import NoRelayAvailable
from control_plane.ids import NodeId, RoomId
from control_plane.placement import PowerOfTwoChoices, has_headroom
from control_plane.placer import Placer
from control_plane.records import NodeInfo, encode_placement, placement_key, room_key
from control_plane.registry import NodeRegistry

DAY_S = 86_400

# --- relay capacity from docs/benchmarks.md ------------------------------------------
# Marginal relay CPU per forwarded packet after RTCP termination (12.5 µs), and per
# packet received from a publisher (96.6 µs at N = 1 less one forward: ~84 µs).
US_PER_FORWARDED = 12.5
US_PER_RECEIVED = 84.0
# Stated per-participant packet rates (docs/capacity.md): into the relay, Opus audio
# at 50 pkt/s plus, with the camera on half the time, three simulcast layers at
# 163 pkt/s; out of it, three speakers' audio (150), one 720p stream (95) and four
# 320x180 thumbnails (4 x 24).
PACKETS_IN = 130.0
PACKETS_OUT = 340.0
CPU_TARGET = 0.8  # of one core: a relay process is one asyncio loop on one core


def participants_per_core(
    us_out: float = US_PER_FORWARDED,
    us_in: float = US_PER_RECEIVED,
    packets_out: float = PACKETS_OUT,
    packets_in: float = PACKETS_IN,
    cpu_target: float = CPU_TARGET,
) -> int:
    """Participants one relay core carries at `cpu_target`, from per-packet costs."""
    cpu_us_per_second = packets_out * us_out + packets_in * us_in
    return max(1, int(cpu_target * 1_000_000 // cpu_us_per_second))


# --- the synthetic day -------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    """The day's shape; every figure is an assumption stated in docs/capacity.md."""

    size_exponent: float = 2.4  # P(size = k) ~ k^-a for 2 <= k <= max_size
    max_size: int = 10_000
    median_minutes: float = 30.0
    large_from: int = 50  # meetings this large run longer (webinars, all-hands)
    large_median_minutes: float = 60.0
    duration_sigma: float = 0.7  # of the log-normal duration
    min_minutes: float = 5.0
    max_minutes: float = 480.0
    on_time_share: float = 0.8  # join within minutes of the start; the rest drift in
    stay_share: float = 0.85  # stay to the end; the rest leave early
    rejoin_probability: float = 0.05  # a reconnect (network change) during the stay


def diurnal_weight(hour: float) -> float:
    """Meeting starts per minute, relative: one region's working day, two humps
    (late morning, mid afternoon), a small evening bump and a quiet night."""

    def bump(centre: float, width: float) -> float:
        return math.exp(-0.5 * ((hour - centre) / width) ** 2)

    return 0.04 + bump(10.0, 1.4) + 0.9 * bump(14.5, 1.7) + 0.15 * bump(20.0, 1.5)


@dataclass(frozen=True, slots=True)
class Meeting:
    start: float
    size: int
    duration: float


@dataclass(slots=True)
class Stay:
    join: float
    leave: float
    rejoin: float | None


class DaySampler:
    """Draws meetings and participants' stays from the model with one seeded rng."""

    def __init__(self, model: Model, rng: random.Random) -> None:
        self.model = model
        self._rng = rng
        minutes = [diurnal_weight(m / 60) for m in range(24 * 60)]
        self._minute_cdf = _cumulative(minutes)
        sizes = [k**-model.size_exponent for k in range(2, model.max_size + 1)]
        self._size_cdf = _cumulative(sizes)

    def start(self) -> float:
        minute = bisect.bisect_left(self._minute_cdf, self._rng.random())
        return (min(minute, 24 * 60 - 1) + self._rng.random()) * 60

    def size(self) -> int:
        index = bisect.bisect_left(self._size_cdf, self._rng.random())
        return 2 + min(index, self.model.max_size - 2)

    def duration(self, size: int) -> float:
        m = self.model
        median = m.large_median_minutes if size >= m.large_from else m.median_minutes
        minutes = self._rng.lognormvariate(math.log(median), m.duration_sigma)
        return 60 * min(max(minutes, m.min_minutes), m.max_minutes)

    def meeting(self) -> Meeting:
        size = self.size()
        return Meeting(self.start(), size, self.duration(size))

    def stay(self, meeting: Meeting, first: bool) -> Stay:
        """One participant's join, leave and (maybe) reconnect; the first opens it."""
        rng, m = self._rng, self.model
        start, end = meeting.start, meeting.start + meeting.duration
        if first:
            join = start
        elif rng.random() < m.on_time_share:
            join = min(start + rng.expovariate(1 / 90), end - 60)
        else:
            join = start + rng.random() * 0.7 * meeting.duration
        if rng.random() < m.stay_share:
            leave = end - min(rng.expovariate(1 / 60), 0.5 * (end - join))
        else:
            leave = join + rng.random() * (end - join)
        leave = max(leave, join + 30)
        rejoin = None
        if rng.random() < m.rejoin_probability:
            rejoin = join + rng.random() * (leave - join)
        return Stay(join, leave, rejoin)


def _cumulative(weights: Sequence[float]) -> list[float]:
    total = sum(weights)
    cdf, running = [], 0.0
    for weight in weights:
        running += weight
        cdf.append(running / total)
    return cdf


# --- the cell's etcd traffic and placement ------------------------------------------

# etcd requests that are writes (raft proposals), by the names the store reports.
WRITES = frozenset({"put", "delete", "transaction", "lease_grant", "lease_revoke"})
MEETING_TTL_S = 24 * 3600  # control plane's --meeting-ttl default
AUDIT_RETENTION_S = 30 * 24 * 3600


class Engine:
    """One cell's control plane and relays as etcd sees them.

    Each method does the store requests the real code does for the same step
    (control_plane/service.py, relay/node.py, relay/registration.py), so the
    store's counts are the cell's etcd traffic. Subclasses decide placement.
    """

    def __init__(self, store: MemoryStore, strategy: PowerOfTwoChoices, capacity: int) -> None:
        self.store = store
        self.strategy = strategy
        self.capacity = capacity
        self.nodes: dict[NodeId, NodeInfo] = {}
        self._leases: dict[NodeId, MemoryLease] = {}
        self._room_leases: dict[RoomId, int] = {}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def add_node(self, node_id: NodeId) -> None:
        """A relay registers: a lease (TTL 3 s, kept alive) and its node record."""
        lease = await self.store.grant_lease(3)
        assert isinstance(lease, MemoryLease)
        self._leases[node_id] = lease
        node = NodeInfo(
            node_id, f"wss://{node_id}/ws", f"{node_id}:7001", self.capacity, 0.0, lease.id
        )
        await self._publish(node)

    async def remove_node(self, node_id: NodeId) -> None:
        """An empty relay leaves: revoking its lease takes its record along."""
        del self.nodes[node_id]
        await self._leases.pop(node_id).revoke()
        await self._settled()

    async def participants_changed(self, node_id: NodeId, count: int) -> None:
        """The relay rewrites its record only when the load's tenth changes (as
        relay/registration.py does)."""
        node = self.nodes[node_id]
        load = round(min(count / max(self.capacity, 1), 1.0), 1)
        if load != node.load:
            await self._publish(
                NodeInfo(
                    node.node_id, node.signal_url, node.rpc_address, node.capacity, load, node.lease
                )
            )

    async def _publish(self, node: NodeInfo) -> None:
        self.nodes[node.node_id] = node
        await self.store.put(f"/conclave/nodes/{node.node_id}", node.to_json(), node.lease)
        await self._settled()

    async def _settled(self) -> None:
        """Let watchers see the change before the next step (engines with a cache)."""

    async def create_room(self, room_id: RoomId) -> None:
        """CreateRoom's writes before placement: two expiring leases, then the room
        record, the audit host key and the `create` audit entry in one transaction."""
        lease = await self.store.grant_expiring_lease(MEETING_TTL_S)
        audit_lease = await self.store.grant_expiring_lease(MEETING_TTL_S + AUDIT_RETENTION_S)
        self._room_leases[room_id] = lease
        await self.store.create_all_if_absent(
            [
                (room_key(room_id), b"{}", lease),
                (f"/conclave/audit/{room_id}/host", b"0" * 64, audit_lease),
                (f"/conclave/audit/{room_id}/entries/0-create", b"{}", audit_lease),
            ]
        )

    async def place(self, room_id: RoomId) -> NodeId | None:
        raise NotImplementedError

    async def join_room(self, room_id: RoomId) -> None:
        """JoinRoom reads the room record (the placement comes from the cache)."""
        await self.store.get(room_key(room_id))

    async def rejoin_room(self, room_id: RoomId, participant: str) -> None:
        """JoinRoom with a rejoin token: the record and the token are read."""
        await self.store.get(room_key(room_id))
        await self.store.get(f"/conclave/rejoin/{room_id}/{participant}")

    async def admitted(self, room_id: RoomId, participant: str) -> None:
        """The relay admits: it keeps the rejoin token's digest on the room's lease."""
        key = f"/conclave/rejoin/{room_id}/{participant}"
        await self.store.put(key, b"0" * 64, self._room_leases[room_id])

    async def left(self, room_id: RoomId, participant: str) -> None:
        """Leaving on purpose deletes the rejoin token."""
        await self.store.delete(f"/conclave/rejoin/{room_id}/{participant}")

    async def end_room(self, room_id: RoomId) -> None:
        """EndRoom: the `end` audit entry, the placement, the record, the tokens."""
        await self.store.put(f"/conclave/audit/{room_id}/entries/1-end", b"{}", 0)
        await self.store.delete(placement_key(room_id))
        self._forget(room_id)
        await self.store.delete(room_key(room_id))
        await self.store.delete_prefix(f"/conclave/rejoin/{room_id}/")
        del self._room_leases[room_id]

    def _forget(self, room_id: RoomId) -> None:
        pass


class PlacerEngine(Engine):
    """Placement through the real Placer and the watch-fed NodeRegistry."""

    def __init__(self, store: MemoryStore, strategy: PowerOfTwoChoices, capacity: int) -> None:
        super().__init__(store, strategy, capacity)
        self.registry = NodeRegistry(store)
        self.placer = Placer(store, self.registry, strategy)

    async def start(self) -> None:
        await self.registry.start()

    async def stop(self) -> None:
        await self.registry.stop()

    async def _settled(self) -> None:
        # The memory store queues watch events at once; one pass of the loop lets
        # the registry's watch tasks apply them.
        await asyncio.sleep(0)

    async def place(self, room_id: RoomId) -> NodeId | None:
        try:
            return (await self.placer.ensure_placed(room_id)).node_id
        except NoRelayAvailable:
            return None

    def _forget(self, room_id: RoomId) -> None:
        self.registry.forget_placement(room_id)


class StrategyEngine(Engine):
    """The same strategy on the same node records, without the registry's caches:
    what the Placer would decide, at a fraction of the cost (checked by the tests)."""

    def __init__(self, store: MemoryStore, strategy: PowerOfTwoChoices, capacity: int) -> None:
        super().__init__(store, strategy, capacity)
        self.rooms_placed: Counter[NodeId] = Counter()
        self._placed: dict[RoomId, NodeId] = {}

    async def place(self, room_id: RoomId) -> NodeId | None:
        try:
            node = self.strategy.choose(list(self.nodes.values()), self.rooms_placed)
        except NoRelayAvailable:
            return None
        await self.store.create_if_absent(
            placement_key(room_id), encode_placement(node.node_id), node.lease
        )
        self.rooms_placed[node.node_id] += 1
        self._placed[room_id] = node.node_id
        return node.node_id

    def _forget(self, room_id: RoomId) -> None:
        node_id = self._placed.pop(room_id, None)
        if node_id is not None:
            self.rooms_placed[node_id] -= 1
            if not self.rooms_placed[node_id]:
                del self.rooms_placed[node_id]


ENGINES: dict[str, type[Engine]] = {"placer": PlacerEngine, "strategy": StrategyEngine}


# --- one cell's day -------------------------------------------------------------------

START, JOIN, REJOIN, LEAVE, END = range(5)


@dataclass(frozen=True)
class CellConfig:
    capacity: int
    cell_nodes: int  # the most relays the cell may run (its etcd's budget)
    # The autoscaler adds relays while participants exceed this share of the cell's
    # capacity (or fewer than 2 nodes have headroom), like a utilisation target.
    target_fill: float = 0.7
    model: Model = field(default_factory=Model)


@dataclass
class CellResult:
    cell: int
    engine: str
    meetings: int = 0
    participants: int = 0  # joins attempted (first joins)
    admitted: int = 0
    refused_oversize: int = 0  # the meeting alone needs more than one node
    refused_node_full: int = 0  # it would fit a node, but its node was full
    refused_no_capacity: int = 0  # no node with headroom when it was placed
    oversize_meetings: int = 0  # meetings that needed more than one node
    peak_nodes: int = 0
    peak_concurrent: int = 0  # participants on relays at the moment of most
    peak_lower_bound: int = 0  # ceil(peak concurrent / capacity)
    packing_efficiency: float = 0.0  # lower bound / nodes, at the peak
    peak_with_cascade: int = 0  # nodes + what the refused would need, were they cascaded
    creates: int = 0
    joins: int = 0  # JoinRoom requests: first joins, including refused ones
    rejoins: int = 0
    writes: int = 0
    peak_writes_1s: int = 0
    peak_writes_60s: float = 0.0  # per second, over the busiest minute
    peak_requests_1s: int = 0
    peak_requests_60s: float = 0.0
    peak_room_changes_60s: float = 0.0  # room-record puts/deletes: what every relay watches
    live_keys_end: int = 0
    live_leases_end: int = 0
    seconds: float = 0.0
    requests_per_minute: dict[int, int] = field(default_factory=dict, repr=False)
    max_node_participants: int = 0


# A participant's state in `_Room.state`.
AWAY, ON_RELAY, OVERFLOW, REFUSED = range(4)


class _Room:
    __slots__ = ("id", "meeting", "node", "overflow", "oversize", "present", "state", "stays")

    def __init__(self, room_id: RoomId, meeting: Meeting) -> None:
        self.id = room_id
        self.meeting = meeting
        self.node: NodeId | None = None
        self.present = 0  # on the relay now
        self.overflow = 0  # refused by a full node, still there (what a cascade carries)
        self.oversize = False  # needed more than one node at some moment
        self.stays: list[Stay] = []
        self.state = bytearray()  # AWAY, ON_RELAY, OVERFLOW or REFUSED per participant


class CellSim:
    """Runs one cell's day: autoscaled relays, placement, joins, refusals, counts."""

    def __init__(
        self,
        cell: int,
        participants: int,
        config: CellConfig,
        seed: int,
        engine: str = "placer",
        strategy_factory: Callable[[random.Random], PowerOfTwoChoices] = PowerOfTwoChoices,
    ) -> None:
        self.cell = cell
        self.config = config
        self.target = participants
        self.now = 0.0
        self._rng = random.Random(f"{seed}:{cell}:day")
        self.sampler = DaySampler(config.model, self._rng)
        self.store = MemoryStore(clock=lambda: self.now, observe=self._observed)
        strategy = strategy_factory(random.Random(f"{seed}:{cell}:placement"))
        self.engine = ENGINES[engine](self.store, strategy, config.capacity)
        self.result = CellResult(cell, engine)
        self.counts: dict[NodeId, int] = {}  # participants per node
        self.rooms_on: Counter[NodeId] = Counter()
        self.headroom: set[NodeId] = set()
        self._writes: Counter[int] = Counter()
        self._requests: Counter[int] = Counter()
        self._room_changes: Counter[int] = Counter()
        self._node_serial = 0
        self._concurrent = 0
        self._overflowing = 0  # refused participants still in their meetings
        self._events: list[tuple[float, int, int, _Room, int]] = []
        self._seq = 0

    def _observed(self, operation: str, seconds: float, failed: bool) -> None:
        if operation in WRITES:
            self._writes[int(self.now)] += 1

    def _push(self, at: float, kind: int, room: _Room, index: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, kind, room, index))

    def _request(self) -> None:
        self._requests[int(self.now)] += 1

    async def run(self) -> CellResult:
        started = time.perf_counter()
        drawn = 0
        while drawn < self.target:
            meeting = self.sampler.meeting()
            drawn += meeting.size
            room_id = RoomId(f"c{self.cell}-m{self.result.meetings:08d}")
            self.result.meetings += 1
            self._push(meeting.start, START, _Room(room_id, meeting))
        await self.engine.start()
        handlers = {
            START: self._start,
            JOIN: self._join,
            REJOIN: self._rejoin,
            LEAVE: self._leave,
            END: self._end,
        }
        while self._events:
            at, _, kind, room, index = heapq.heappop(self._events)
            self.now = at
            await handlers[kind](room, index)
        await self.engine.stop()
        self._finish(time.perf_counter() - started)
        return self.result

    # --- relays -----------------------------------------------------------------------

    def _fill(self, nodes: int) -> float:
        return self._concurrent / max(nodes * self.config.capacity, 1)

    async def _scale_up(self) -> None:
        """Add relays until the fill is at its target and two have headroom: an
        autoscaler whose new nodes are ready at once (lead time is what the target's
        margin is for)."""
        while len(self.counts) < self.config.cell_nodes and (
            len(self.headroom) < 2 or self._fill(len(self.counts)) > self.config.target_fill
        ):
            await self._add_node()

    async def _add_node(self) -> None:
        self._node_serial += 1
        node_id = NodeId(f"c{self.cell}-n{self._node_serial:06d}")
        await self.engine.add_node(node_id)
        self.counts[node_id] = 0
        self.headroom.add(node_id)
        self.result.peak_nodes = max(self.result.peak_nodes, len(self.counts))

    async def _maybe_scale_down(self, node_id: NodeId) -> None:
        """An empty node leaves when the rest stay well below the target fill."""
        if self.counts[node_id] or self.rooms_on[node_id] or len(self.headroom) < 4:
            return
        if self._fill(len(self.counts) - 1) < self.config.target_fill - 0.1:
            await self.engine.remove_node(node_id)
            del self.counts[node_id]
            self.headroom.discard(node_id)

    async def _count(self, node_id: NodeId, delta: int) -> None:
        count = self.counts[node_id] + delta
        self.counts[node_id] = count
        self.result.max_node_participants = max(self.result.max_node_participants, count)
        await self.engine.participants_changed(node_id, count)
        if has_headroom(self.engine.nodes[node_id]):
            self.headroom.add(node_id)
        else:
            self.headroom.discard(node_id)

    def _track(self, delta: int) -> None:
        self._concurrent += delta
        if self._concurrent > self.result.peak_concurrent:
            self.result.peak_concurrent = self._concurrent
            self.result.peak_lower_bound = math.ceil(self._concurrent / self.config.capacity)
        nodes = len(self.counts)
        if nodes > self.result.peak_nodes:
            self.result.peak_nodes = nodes
        # A cascade (issue 9) would carry the refused onto other nodes, filled like
        # the rest to the target: an estimate, pooled over meetings.
        extra = math.ceil(self._overflowing / (self.config.capacity * self.config.target_fill))
        self.result.peak_with_cascade = max(self.result.peak_with_cascade, nodes + extra)

    def _overflow(self, room: _Room, delta: int) -> None:
        room.overflow += delta
        self._overflowing += delta

    # --- events ---------------------------------------------------------------------------

    async def _start(self, room: _Room, _: int) -> None:
        """CreateRoom at the meeting's start (it places the meeting), then its joins."""
        self._request()
        self.result.creates += 1
        self._room_changes[int(self.now)] += 1
        await self._scale_up()
        await self.engine.create_room(room.id)
        node = await self.engine.place(room.id)
        if node is None and len(self.counts) < self.config.cell_nodes:
            await self._add_node()  # the strategy found no headroom after all
            node = await self.engine.place(room.id)
        room.node = node
        if node is not None:
            self.rooms_on[node] += 1
        meeting = room.meeting
        room.stays = [self.sampler.stay(meeting, i == 0) for i in range(meeting.size)]
        room.state = bytearray(meeting.size)
        for index, stay in enumerate(room.stays):
            self._push(stay.join, JOIN, room, index)
        self._push(meeting.start + meeting.duration + 1, END, room)

    async def _join(self, room: _Room, index: int) -> None:
        self._request()
        self.result.joins += 1
        self.result.participants += 1
        await self.engine.join_room(room.id)
        stay = room.stays[index]
        self._push(stay.leave, LEAVE, room, index)
        wanted = room.present + room.overflow + 1  # in the meeting, were all admitted
        if wanted > self.config.capacity and not room.oversize:
            room.oversize = True
            self.result.oversize_meetings += 1
        if room.node is None:
            room.state[index] = REFUSED
            self.result.refused_no_capacity += 1
            return
        if self.counts[room.node] >= self.config.capacity:
            # node_full: today the joiner is refused; issue 9 would cascade it to
            # another node, which `peak_with_cascade` counts.
            if wanted > self.config.capacity:
                self.result.refused_oversize += 1
            else:
                self.result.refused_node_full += 1
            room.state[index] = OVERFLOW
            self._overflow(room, 1)
            self._track(0)
            return
        room.state[index] = ON_RELAY
        room.present += 1
        self.result.admitted += 1
        await self.engine.admitted(room.id, f"p{index}")
        await self._count(room.node, 1)
        self._track(1)
        if stay.rejoin is not None:
            self._push(stay.rejoin, REJOIN, room, index)

    async def _rejoin(self, room: _Room, index: int) -> None:
        """A reconnect: JoinRoom with the token; the relay swaps the connection."""
        if room.state[index] != ON_RELAY:
            return
        self._request()
        self.result.rejoins += 1
        await self.engine.rejoin_room(room.id, f"p{index}")
        await self.engine.admitted(room.id, f"p{index}r")

    async def _leave(self, room: _Room, index: int) -> None:
        state, room.state[index] = room.state[index], AWAY
        if state == ON_RELAY:
            room.present -= 1
            assert room.node is not None
            await self.engine.left(room.id, f"p{index}")
            await self._count(room.node, -1)
            self._track(-1)
            await self._maybe_scale_down(room.node)
        elif state == OVERFLOW:
            self._overflow(room, -1)

    async def _end(self, room: _Room, _: int) -> None:
        self._room_changes[int(self.now)] += 1
        await self.engine.end_room(room.id)
        assert room.present == room.overflow == 0, "everyone leaves before the end"
        if room.node is not None:
            self.rooms_on[room.node] -= 1
            await self._maybe_scale_down(room.node)

    def _finish(self, seconds: float) -> None:
        r = self.result
        r.packing_efficiency = r.peak_lower_bound / r.peak_nodes if r.peak_nodes else 0.0
        r.writes = sum(self._writes.values())
        r.peak_writes_1s = max(self._writes.values(), default=0)
        r.peak_writes_60s = _peak_minute(self._writes)
        r.peak_requests_1s = max(self._requests.values(), default=0)
        r.peak_requests_60s = _peak_minute(self._requests)
        r.peak_room_changes_60s = _peak_minute(self._room_changes)
        r.requests_per_minute = dict(_per_minute(self._requests))
        r.live_keys_end = self.store.key_count()
        r.live_leases_end = self.store.lease_count()
        r.seconds = seconds


def _per_minute(per_second: Counter[int]) -> Counter[int]:
    minutes: Counter[int] = Counter()
    for second, count in per_second.items():
        minutes[second // 60] += count
    return minutes


def _peak_minute(per_second: Counter[int]) -> float:
    return max(_per_minute(per_second).values(), default=0) / 60


# --- the whole day: cells, sampling, scaling ----------------------------------------------


@dataclass(frozen=True)
class Plan:
    cells: int
    participants_per_cell: int
    sampled: int
    expected_peak_concurrent: float


def plan(daily: int, config: CellConfig, sample_cells: int, fill: float, seed: int) -> Plan:
    """How many cells: the expected peak concurrency (from the model, by drawing a
    few thousand meetings) over what `fill` of a cell's node budget holds at the
    autoscaler's target fill."""
    sampler = DaySampler(config.model, random.Random(f"{seed}:plan"))
    seconds = people = 0.0
    for _ in range(20_000):
        meeting = sampler.meeting()
        for i in range(meeting.size):
            stay = sampler.stay(meeting, i == 0)
            seconds += stay.leave - stay.join
        people += meeting.size
    minutes = [diurnal_weight(m / 60) for m in range(24 * 60)]
    peak_factor = max(minutes) / statistics.fmean(minutes)
    peak = daily * (seconds / people) / DAY_S * peak_factor
    per_cell = config.capacity * config.target_fill * config.cell_nodes * fill
    cells = max(1, math.ceil(peak / per_cell))
    return Plan(cells, math.ceil(daily / cells), min(cells, sample_cells), peak)


async def simulate_cells(
    plan_: Plan, config: CellConfig, seed: int, full_cells: int, progress: bool = False
) -> list[CellResult]:
    results = []
    for cell in range(plan_.sampled):
        engine = "placer" if cell < full_cells else "strategy"
        sim = CellSim(cell, plan_.participants_per_cell, config, seed, engine)
        results.append(await sim.run())
        if progress:
            r = results[-1]
            print(
                f"  cell {cell} ({engine}): {r.meetings} meetings, peak {r.peak_nodes} nodes, "
                f"{r.seconds:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    return results


# Student's t at 97.5 % for 1..30 degrees of freedom (two-sided 95 %), then normal.
_T975 = [12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23, 2.20, 2.18, 2.16, 2.14,
         2.13, 2.12, 2.11, 2.10, 2.09, 2.09, 2.08, 2.07, 2.07, 2.06, 2.06, 2.06, 2.05, 2.05,
         2.05, 2.04]  # fmt: skip


@dataclass(frozen=True)
class Estimate:
    """A per-cell figure's mean over the sample and the 95 % margin of that mean."""

    mean: float
    margin: float

    def scaled(self, factor: float) -> Estimate:
        return Estimate(self.mean * factor, self.margin * factor)


def estimate(values: Sequence[float], population: int) -> Estimate:
    """Mean and 95 % margin (t, with the finite-population correction: a sample of
    all cells has none)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2 or n >= population:
        return Estimate(mean, 0.0 if n >= population else math.nan)
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    correction = math.sqrt((population - n) / (population - 1))
    return Estimate(mean, t * statistics.stdev(values) / math.sqrt(n) * correction)


TOTALS = (
    "peak_nodes",
    "peak_with_cascade",
    "peak_lower_bound",
    "peak_concurrent",
    "meetings",
    "participants",
    "oversize_meetings",
    "refused_oversize",
    "refused_node_full",
    "refused_no_capacity",
)
PER_CELL = (
    "peak_nodes",
    "packing_efficiency",
    "peak_writes_1s",
    "peak_writes_60s",
    "peak_requests_60s",
    "peak_room_changes_60s",
    "live_leases_end",
    "live_keys_end",
)


@dataclass
class Summary:
    """The day's figures: totals over every cell (scaled from the sample) and per cell."""

    daily_participants: int
    plan: Plan
    capacity: int
    cell_nodes: int
    totals: dict[str, Estimate]
    per_cell: dict[str, Estimate]
    requests_per_second_peak: float  # all cells, busiest minute
    results: list[CellResult]
    wall_seconds: float = 0.0


def summarise(daily: int, plan_: Plan, config: CellConfig, results: list[CellResult]) -> Summary:
    """Scale the sampled cells to all of them. Requests are summed minute by minute
    across the sample before the peak is taken, since cells peak at about the same
    time but not in the same minute."""
    cells, k = plan_.cells, len(results)

    def per_cell(name: str) -> Estimate:
        return estimate([float(getattr(r, name)) for r in results], cells)

    aggregate: Counter[int] = Counter()
    for r in results:
        aggregate.update(r.requests_per_minute)
    return Summary(
        daily_participants=daily,
        plan=plan_,
        capacity=config.capacity,
        cell_nodes=config.cell_nodes,
        totals={name: per_cell(name).scaled(cells) for name in TOTALS},
        per_cell={name: per_cell(name) for name in PER_CELL},
        requests_per_second_peak=max(aggregate.values(), default=0) / 60 * cells / k,
        results=results,
    )


def to_json(summary: Summary) -> str:
    data = asdict(summary)
    for result in data["results"]:
        del result["requests_per_minute"]
    return json.dumps(data, indent=2, default=str).replace("NaN", "null")


def _fmt(e: Estimate, digits: int = 0) -> str:
    if math.isnan(e.margin):
        return f"{e.mean:,.{digits}f} (one cell sampled: no margin)"
    if e.margin == 0:
        return f"{e.mean:,.{digits}f}"
    return f"{e.mean:,.{digits}f} ± {e.margin:,.{digits}f}"


def report(summary: Summary) -> str:
    """The figures as text, in the order docs/capacity.md quotes them."""
    t, c, p = summary.totals, summary.per_cell, summary.plan
    how = (
        "every cell simulated"
        if p.sampled == p.cells
        else f"{p.sampled} of {p.cells} cells simulated, totals scaled by {p.cells}/{p.sampled}"
        " (± is the 95 % margin from the spread between cells)"
    )
    rows = [
        ("nodes needed at peak (a meeting on one node)", _fmt(t["peak_nodes"])),
        ("  lower bound: peak concurrent / capacity", _fmt(t["peak_lower_bound"])),
        ("  peak concurrent participants on relays", _fmt(t["peak_concurrent"])),
        ("  packing efficiency, per cell (bound / nodes)", _fmt(c["packing_efficiency"], 3)),
        ("  nodes with oversize meetings cascaded (issue 9)", _fmt(t["peak_with_cascade"])),
        ("meetings in the day", _fmt(t["meetings"])),
        ("meetings that needed more than one node", _fmt(t["oversize_meetings"])),
        ("joins refused: meeting larger than a node", _fmt(t["refused_oversize"])),
        ("joins refused: its node full, meeting fits one", _fmt(t["refused_node_full"])),
        ("joins refused: no node with headroom", _fmt(t["refused_no_capacity"])),
        ("etcd writes/s per cell, busiest minute", _fmt(c["peak_writes_60s"], 1)),
        ("  busiest second", _fmt(c["peak_writes_1s"])),
        ("  room-record changes/s (every relay watches)", _fmt(c["peak_room_changes_60s"], 1)),
        ("  etcd leases alive per cell at the day's end", _fmt(c["live_leases_end"])),
        ("control-plane requests/s, all cells, peak", f"{summary.requests_per_second_peak:,.0f}"),
        ("  per cell, busiest minute", _fmt(c["peak_requests_60s"], 1)),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [
        f"conclave sim: {summary.daily_participants:,} daily participants",
        f"relay capacity {summary.capacity} participants per node (one core); cells of at most"
        f" {summary.cell_nodes} nodes: {p.cells} cell(s) of {p.participants_per_cell:,} daily"
        " participants",
        f"sampling: {how}",
        "",
        *(f"{label:<{width}}  {value}" for label, value in rows),
        "",
        "cell  engine     meetings  peak nodes  lower bound  efficiency  refused  writes/s  secs",
    ]
    for r in summary.results:
        refused = r.refused_oversize + r.refused_node_full + r.refused_no_capacity
        lines.append(
            f"{r.cell:>4}  {r.engine:<8} {r.meetings:>10,}  {r.peak_nodes:>10,}  "
            f"{r.peak_lower_bound:>11,}  {r.packing_efficiency:>10.3f}  {refused:>7,}  "
            f"{r.peak_writes_60s:>8.1f}  {r.seconds:>4.0f}"
        )
    lines.append(f"\nwall time {summary.wall_seconds:.1f} s")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="conclave sim",
        description="Replay a synthetic day through the real placement code (docs/capacity.md).",
    )
    parser.add_argument("--daily-participants", type=int, default=10_000)
    parser.add_argument(
        "--relay-capacity",
        type=int,
        default=0,
        help=f"participants per relay node (one core); default derived from docs/benchmarks.md: "
        f"{participants_per_core()}",
    )
    parser.add_argument("--cell-nodes", type=int, default=500, help="most relays per cell")
    parser.add_argument(
        "--cell-fill",
        type=float,
        default=0.8,
        help="share of a cell's node budget planned to be in use at peak",
    )
    parser.add_argument(
        "--target-fill",
        type=float,
        default=CellConfig.target_fill,
        help="autoscaler: add relays above this share of the cell's capacity in use",
    )
    parser.add_argument("--sample-cells", type=int, default=8, help="cells simulated at most")
    parser.add_argument(
        "--full-cells",
        type=int,
        default=1,
        help="of those, how many run through the Placer and NodeRegistry (the rest call "
        "the strategy directly)",
    )
    parser.add_argument("--size-exponent", type=float, default=Model.size_exponent)
    parser.add_argument("--max-size", type=int, default=Model.max_size)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.daily_participants < 2 or args.sample_cells < 1 or args.cell_nodes < 2:
        parser.error("needs at least 2 participants, 1 sampled cell, 2 nodes per cell")
    capacity = args.relay_capacity or participants_per_core()
    model = Model(size_exponent=args.size_exponent, max_size=args.max_size)
    config = CellConfig(
        capacity=capacity, cell_nodes=args.cell_nodes, target_fill=args.target_fill, model=model
    )
    started = time.perf_counter()
    plan_ = plan(args.daily_participants, config, args.sample_cells, args.cell_fill, args.seed)
    results = asyncio.run(simulate_cells(plan_, config, args.seed, args.full_cells, progress=True))
    summary = summarise(args.daily_participants, plan_, config, results)
    summary.wall_seconds = time.perf_counter() - started
    print(to_json(summary) if args.json else report(summary))
    return 0
