"""Which node a joiner of a meeting goes to, when a meeting may span several
relays (cascading, docs/architecture.md, Join flow): pure functions over node
records, the meeting's nodes and this replica's grant counts, so every rule is
testable without etcd. control_plane/router.py applies the decision.

A node has *room* while its estimated participants stay below `SPILL_LOAD` of its
capacity. The estimate is its published load (tenths, written by the relay) times
its capacity, plus the grants this replica issued for it since its record last
changed, within the last 30 s (NodeRegistry.grants): between two load updates a
burst of joins must not all land on one node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from control_plane.errors import NoRelayAvailable
from control_plane.ids import NodeId
from control_plane.placement import SPILL_LOAD, PlacementStrategy, has_headroom
from control_plane.records import NodeInfo


@dataclass(frozen=True, slots=True)
class Choice:
    """The node for a joiner; `add`: it is not one of the meeting's nodes yet, so
    it joins the meeting first (a fenced transaction, conclave/spans.py)."""

    node: NodeInfo
    add: bool = False


def estimated(node: NodeInfo, grants: Mapping[NodeId, int]) -> float:
    """Participants on the node by its load figure and the grants issued since."""
    return node.load * node.capacity + grants.get(node.node_id, 0)


def spare(node: NodeInfo, grants: Mapping[NodeId, int]) -> float:
    """Joiners the node may still take before it reaches SPILL_LOAD."""
    return SPILL_LOAD * node.capacity - estimated(node, grants)


def has_room(node: NodeInfo, grants: Mapping[NodeId, int]) -> bool:
    return not node.draining and node.capacity > 0 and spare(node, grants) > 0


def _most_room(nodes: Sequence[NodeInfo], grants: Mapping[NodeId, int]) -> NodeInfo:
    # Node id breaks ties, so the answer does not depend on the input order.
    return min(nodes, key=lambda n: (-spare(n, grants), n.node_id))


def route(
    home: NodeInfo | None,
    members: Sequence[NodeInfo],
    others: Sequence[NodeInfo],
    grants: Mapping[NodeId, int],
    region: str,
    strategy: PlacementStrategy,
    rooms_placed: Mapping[NodeId, int],
) -> Choice:
    """The node for a joiner of a placed meeting.

    `home`: the meeting's live home node, None when the joiner may not go there
    (it refused the joiner as full); `members`: its other live nodes the joiner
    may go to; `others`: the live nodes that are not the meeting's and may be
    added. In order: a node of the meeting in the joiner's region with room; a
    node in that region added to the meeting; the home if it has room, else the
    meeting's node with the most room (filling nodes keeps links few); a node
    added to the meeting (the strategy's choice); the meeting's least loaded node
    whose load figure is below full. Raises `NoRelayAvailable` when none of these exists.
    """
    in_meeting = [*([home] if home is not None else []), *members]
    roomy = [n for n in in_meeting if has_room(n, grants)]
    addable = [n for n in others if has_headroom(n) and has_room(n, grants)]
    if region:
        local = [n for n in roomy if n.region == region]
        if local:
            return Choice(home if home in local else _most_room(local, grants))
        new_local = [n for n in addable if n.region == region]
        if new_local:
            return Choice(_most_room(new_local, grants), add=True)
    if roomy:
        return Choice(home if home in roomy else _most_room(roomy, grants))
    if addable:
        try:
            return Choice(strategy.choose(addable, rooms_placed), add=True)
        except NoRelayAvailable:
            pass
    # Below full by the relay's own figure: the estimate is a guess, the relay
    # refuses a joiner it cannot take (node_full) and the joiner comes back.
    below_full = [n for n in in_meeting if not n.draining and n.capacity > 0 and n.load < 1.0]
    if below_full:
        return Choice(min(below_full, key=lambda n: (estimated(n, grants) / n.capacity, n.node_id)))
    raise NoRelayAvailable()


def choose_home(
    nodes: Sequence[NodeInfo],
    spanned: frozenset[NodeId] | set[NodeId],
    grants: Mapping[NodeId, int],
    region: str,
    strategy: PlacementStrategy,
    rooms_placed: Mapping[NodeId, int],
) -> NodeInfo:
    """The new home of a meeting with no live home, from the live `nodes` it may
    go to. First its span nodes with room (they hold its participants already: a
    home elsewhere would not be linked to them), those in the joiner's region
    first; then nodes in the joiner's region; then the strategy, over nodes with
    room if any. Raises `NoRelayAvailable` when no node may take it.
    """
    held = [n for n in nodes if n.node_id in spanned and has_room(n, grants)]
    if held:
        local = [n for n in held if region and n.region == region]
        return _most_room(local or held, grants)
    if region:
        regional = [n for n in nodes if n.region == region and has_room(n, grants)]
        if regional:
            try:
                return strategy.choose(regional, rooms_placed)
            except NoRelayAvailable:
                pass
    roomy = [n for n in nodes if has_room(n, grants)]
    if roomy:
        try:
            return strategy.choose(roomy, rooms_placed)
        except NoRelayAvailable:
            pass
    return strategy.choose(nodes, rooms_placed)
