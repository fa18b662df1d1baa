"""The control plane's watch-fed view of live relay nodes and meeting placements.

Reads are answered from memory (two PrefixCaches), so JoinRoom on an already
placed meeting costs no etcd round trip. The cache can lag etcd by a watch event;
callers that need certainty (the placer) re-read etcd on a miss.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable

from conclave.store import NODES_PREFIX, PLACEMENT_PREFIX, EtcdStore, PrefixCache
from control_plane.ids import NodeId, RoomId
from control_plane.records import NodeInfo, decode_placement, encode_placement

log = logging.getLogger(__name__)

NodeListener = Callable[[NodeId], None]


class NodeRegistry:
    """Live nodes (keys under the relays' leases) and placements, kept current by watches."""

    def __init__(self, store: EtcdStore) -> None:
        self._nodes = PrefixCache(store, NODES_PREFIX, self._on_node_change)
        self._placements = PrefixCache(store, PLACEMENT_PREFIX)
        self._removal_listeners: list[NodeListener] = []

    async def start(self) -> None:
        """Read both prefixes and start following them."""
        await self._nodes.start()
        await self._placements.start()

    async def stop(self) -> None:
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

    def _on_node_change(self, node_id: str, value: bytes | None) -> None:
        if value is not None:
            return
        log.debug("node %s left", node_id)
        for listener in self._removal_listeners:
            try:
                listener(NodeId(node_id))
            except Exception:
                log.exception("node-removal listener failed")


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
