"""The control plane's watch-fed view of live relay nodes, meeting placements and
the further nodes meetings span (conclave/spans.py).

Reads are answered from memory (three PrefixCaches), so JoinRoom on an already
placed meeting costs no etcd round trip. The cache can lag etcd by a watch event;
callers that need certainty (the placer) re-read etcd on a miss.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping

from conclave import spans
from conclave.store import NODES_PREFIX, PLACEMENT_PREFIX, EtcdStore, PrefixCache
from control_plane.ids import NodeId, RoomId
from control_plane.records import NodeInfo, decode_placement, encode_placement

log = logging.getLogger(__name__)

NodeListener = Callable[[NodeId], None]

# A grant older than this is no longer counted in its node's estimate: its joiner
# has connected (and the relay's load figure shows it) or it never will (grants
# expire after 30 s). Without it, joins and leaves that keep a node's load figure
# in one bucket would pile grants up until the node looked full.
GRANT_WINDOW_S = 30.0


class NodeRegistry:
    """Live nodes (keys under the relays' leases) and placements, kept current by watches."""

    def __init__(self, store: EtcdStore, clock: Callable[[], float] = time.monotonic) -> None:
        self._nodes = PrefixCache(store, NODES_PREFIX, self._on_node_change)
        self._placements = PrefixCache(store, PLACEMENT_PREFIX)
        self._spans = PrefixCache(store, spans.SPANS_PREFIX, self._on_span_change)
        # room id -> its span nodes, rebuilt whenever the cache re-read its prefix
        self._span_index: dict[RoomId, set[NodeId]] = {}
        self._indexed: dict[str, bytes] | None = None
        # Grants this replica issued per node since its record last changed.
        self._grants = _Grants(clock)
        self._removal_listeners: list[NodeListener] = []

    async def start(self) -> None:
        """Read the prefixes and start following them."""
        await self._nodes.start()
        await self._placements.start()
        await self._spans.start()

    async def stop(self) -> None:
        await self._spans.stop()
        await self._placements.stop()
        await self._nodes.stop()

    def on_node_removed(self, listener: NodeListener) -> None:
        """Call `listener(node_id)` when a node's key disappears (lease expired or deleted)."""
        self._removal_listeners.append(listener)

    # --- nodes -----------------------------------------------------------------

    def live_nodes(self) -> list[NodeInfo]:
        """Every node whose key currently exists and parses, in node-id order."""
        nodes = []
        for name, raw in sorted(self._nodes.items.items()):
            node = _parse_node(raw)
            if node is not None and node.node_id == name:
                nodes.append(node)
        return nodes

    def node(self, node_id: NodeId) -> NodeInfo | None:
        """The live node with this id, or None if it is not (or no longer) registered."""
        raw = self._nodes.items.get(node_id)
        node = _parse_node(raw) if raw is not None else None
        return node if node is not None and node.node_id == node_id else None

    # --- placements --------------------------------------------------------------

    def placement(self, room_id: RoomId) -> NodeId | None:
        """The node the cache says hosts the meeting; it may have died since."""
        raw = self._placements.items.get(room_id)
        return _parse_placement(raw) if raw is not None else None

    def live_placement(self, room_id: RoomId) -> NodeInfo | None:
        """The hosting node if the meeting is placed on a node that is alive."""
        node_id = self.placement(room_id)
        return self.node(node_id) if node_id is not None else None

    def rooms_placed(self) -> dict[NodeId, int]:
        """How many meetings each node hosts, per the cache."""
        # Every placement on one node has identical bytes, so count values first.
        counts: Counter[NodeId] = Counter()
        for raw, count in Counter(self._placements.items.values()).items():
            node_id = _parse_placement(raw)
            if node_id is not None:
                counts[node_id] += count
        return dict(counts)

    def record_placement(self, room_id: RoomId, node_id: NodeId) -> None:
        """Apply a placement this replica wrote or read from etcd, ahead of the watch."""
        self._placements.items[room_id] = encode_placement(node_id)

    def forget_placement(self, room_id: RoomId) -> None:
        """Drop a placement this replica knows is gone, ahead of the watch."""
        self._placements.items.pop(room_id, None)

    # --- the further nodes of meetings (cascading) ------------------------------------

    def span_nodes(self, room_id: RoomId) -> frozenset[NodeId]:
        """The meeting's nodes other than its home, per the cache (alive or not)."""
        return frozenset(self._index().get(room_id, ()))

    def record_spans(self, room_id: RoomId, node_ids: set[NodeId] | frozenset[NodeId]) -> None:
        """Apply the meeting's span nodes as read from etcd, ahead of the watch."""
        index = self._index()
        for node_id in index.pop(room_id, set()) - set(node_ids):
            self._spans.items.pop(f"{room_id}/{node_id}", None)
        for node_id in node_ids:
            self._spans.items[f"{room_id}/{node_id}"] = encode_placement(node_id)
        if node_ids:
            index[room_id] = set(node_ids)

    def record_span(self, room_id: RoomId, node_id: NodeId) -> None:
        """Apply a span this replica wrote, ahead of the watch."""
        self.record_spans(room_id, self.span_nodes(room_id) | {node_id})

    def forget_spans(self, room_id: RoomId) -> None:
        """Drop the meeting's spans this replica deleted, ahead of the watch."""
        self.record_spans(room_id, frozenset())

    def _index(self) -> dict[RoomId, set[NodeId]]:
        if self._indexed is not self._spans.items:  # the cache re-read its prefix
            self._span_index = {}
            for name in self._spans.items:
                self._index_span(name, True)
            self._indexed = self._spans.items
        return self._span_index

    def _index_span(self, name: str, present: bool) -> None:
        parsed = spans.parse_span_name(name)
        if parsed is None:
            return
        room_id, node_id = RoomId(parsed[0]), NodeId(parsed[1])
        if present:
            self._span_index.setdefault(room_id, set()).add(node_id)
            return
        members = self._span_index.get(room_id)
        if members is not None:
            members.discard(node_id)
            if not members:
                del self._span_index[room_id]

    def _on_span_change(self, name: str, value: bytes | None) -> None:
        if self._indexed is self._spans.items:  # else the next read rebuilds it
            self._index_span(name, value is not None)

    # --- grants (the load estimate of control_plane/routing.py) ------------------------

    def granted(self, node_id: NodeId) -> None:
        """This replica sent a joiner to the node."""
        self._grants.add(node_id)

    def grants(self) -> Mapping[NodeId, int]:
        """Grants per node since its record last changed (its load figure since),
        within the last GRANT_WINDOW_S."""
        return self._grants

    def _on_node_change(self, node_id: str, value: bytes | None) -> None:
        self._grants.reset(NodeId(node_id))  # its load figure is news again
        if value is not None:
            return
        log.debug("node %s left", node_id)
        for listener in self._removal_listeners:
            try:
                listener(NodeId(node_id))
            except Exception:
                log.exception("node-removal listener failed")


class _Grants(Mapping[NodeId, int]):
    """node id -> grants issued within GRANT_WINDOW_S; pruned as it is read."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._times: dict[NodeId, deque[float]] = {}

    def add(self, node_id: NodeId) -> None:
        self._times.setdefault(node_id, deque()).append(self._clock())

    def reset(self, node_id: NodeId) -> None:
        self._times.pop(node_id, None)

    def __getitem__(self, node_id: NodeId) -> int:
        times = self._times[node_id]
        horizon = self._clock() - GRANT_WINDOW_S
        while times and times[0] <= horizon:
            times.popleft()
        return len(times)

    def __iter__(self) -> Iterator[NodeId]:
        return iter(self._times)

    def __len__(self) -> int:
        return len(self._times)


@functools.lru_cache(maxsize=1024)
def _parse_node(raw: bytes) -> NodeInfo | None:
    try:
        return NodeInfo.from_json(raw)
    except ValueError as exc:
        log.debug("ignoring malformed node info: %s", exc)
        return None


@functools.lru_cache(maxsize=4096)
def _parse_placement(raw: bytes) -> NodeId | None:
    try:
        return decode_placement(raw)
    except ValueError as exc:
        log.debug("ignoring malformed placement: %s", exc)
        return None
