"""Choosing a relay node for a new meeting.

Power of two choices: sampling two nodes and taking the better one spreads load
almost as well as scanning all nodes, yet replicas placing at the same moment from
slightly stale views rarely pile onto the same "least loaded" node.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Protocol

from control_plane.errors import NoRelayAvailable
from control_plane.ids import NodeId
from control_plane.records import NodeInfo

# A node at or above this load takes no new meetings (existing ones still grow).
MAX_LOAD = 0.9
# A meeting's node at or above this share of its capacity (by the estimate of
# control_plane/routing.py) takes no more of its joiners: they go to another of
# the meeting's nodes, or a node is added to the meeting (cascading).
SPILL_LOAD = 0.9


class PlacementStrategy(Protocol):
    """Picks the node for a new meeting from the live nodes."""

    def choose(self, nodes: Sequence[NodeInfo], rooms_placed: Mapping[NodeId, int]) -> NodeInfo:
        """Return the chosen node; raise `NoRelayAvailable` if none may take a meeting."""
        ...


def has_headroom(node: NodeInfo, max_load: float = MAX_LOAD) -> bool:
    """Whether the node may take a new meeting."""
    return not node.draining and node.capacity > 0 and node.load < max_load


class PowerOfTwoChoices:
    """Sample two distinct nodes with headroom; lower (load, meetings placed) wins."""

    def __init__(self, rng: random.Random | None = None, max_load: float = MAX_LOAD) -> None:
        self._rng = rng if rng is not None else random.Random()
        self._max_load = max_load

    def choose(self, nodes: Sequence[NodeInfo], rooms_placed: Mapping[NodeId, int]) -> NodeInfo:
        # Sorted so that a seeded rng gives the same answer whatever the input order.
        candidates = sorted(
            (n for n in nodes if has_headroom(n, self._max_load)), key=lambda n: n.node_id
        )
        if not candidates:
            raise NoRelayAvailable()
        if len(candidates) == 1:
            return candidates[0]
        first, second = self._rng.sample(candidates, 2)
        # min() keeps the first on a tie, and the sample order is random.
        return min((first, second), key=lambda n: (n.load, rooms_placed.get(n.node_id, 0)))
