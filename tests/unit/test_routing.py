"""control_plane/routing.py: which node a joiner of a (cascading) meeting goes to."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from control_plane.errors import NoRelayAvailable
from control_plane.ids import NodeId
from control_plane.placement import SPILL_LOAD
from control_plane.records import NodeInfo
from control_plane.registry import GRANT_WINDOW_S, NodeRegistry
from control_plane.routing import Choice, choose_home, estimated, has_room, route, spare


def node(
    name: str,
    load: float = 0.0,
    *,
    capacity: int = 10,
    region: str = "",
    draining: bool = False,
) -> NodeInfo:
    return NodeInfo(
        node_id=NodeId(name),
        signal_url=f"ws://{name}/ws",
        rpc_address=f"{name}:1",
        capacity=capacity,
        load=load,
        lease=1,
        draining=draining,
        region=region,
    )


class First:
    """A deterministic strategy: the first node with headroom, by node id."""

    def __init__(self) -> None:
        self.offered: list[list[str]] = []

    def choose(self, nodes: Sequence[NodeInfo], rooms_placed: Mapping[NodeId, int]) -> NodeInfo:
        self.offered.append(sorted(n.node_id for n in nodes))
        candidates = sorted(
            (n for n in nodes if not n.draining and n.load < 0.9), key=lambda n: n.node_id
        )
        if not candidates:
            raise NoRelayAvailable()
        return candidates[0]


def grants(**counts: int) -> dict[NodeId, int]:
    return {NodeId(k): v for k, v in counts.items()}


def decide(
    home: NodeInfo | None,
    members: Sequence[NodeInfo] = (),
    others: Sequence[NodeInfo] = (),
    issued: Mapping[NodeId, int] | None = None,
    region: str = "",
) -> Choice:
    return route(home, members, others, issued or {}, region, First(), {})


# --- the estimate ------------------------------------------------------------------


def test_estimate_is_load_times_capacity_plus_grants_since() -> None:
    assert estimated(node("a", 0.5), grants(a=2)) == pytest.approx(7)
    assert estimated(node("a", 0.5), {}) == pytest.approx(5)
    assert spare(node("a", 0.5), grants(a=2)) == pytest.approx(SPILL_LOAD * 10 - 7)


def test_room_ends_at_the_spill_load() -> None:
    assert SPILL_LOAD == 0.9
    assert has_room(node("a"), grants(a=8))
    assert not has_room(node("a"), grants(a=9))  # 9 of 10: at 0.9, spill
    assert not has_room(node("a", 0.9), {})
    assert has_room(node("a", 0.8), {})
    assert not has_room(node("a", 0.8), grants(a=1))
    assert not has_room(node("a", draining=True), {})
    assert not has_room(node("a", capacity=0), {})


# --- route ---------------------------------------------------------------------------


def test_the_home_with_room_takes_the_joiner() -> None:
    home = node("home", 0.5)
    choice = decide(home, [node("roomier", 0.0)], [node("idle")])
    assert choice == Choice(home)


def test_a_single_node_meeting_with_room_adds_nothing() -> None:
    assert decide(node("home", 0.3), [], [node("idle")]) == Choice(node("home", 0.3))


def test_a_full_home_sends_the_joiner_to_the_member_with_most_room() -> None:
    home = node("home", 0.9)
    members = [node("m1", 0.5), node("m2", 0.2), node("m3", 0.7)]
    assert decide(home, members, [node("idle")]) == Choice(members[1])


def test_grants_since_the_last_load_figure_count_towards_full() -> None:
    home = node("home", 0.0)
    assert decide(home, [], [node("other")], grants(home=8)).node.node_id == "home"
    spilled = decide(home, [], [node("other")], grants(home=9))
    assert spilled == Choice(node("other"), add=True)


def test_no_member_with_room_adds_the_strategys_node() -> None:
    home, member = node("home", 0.9), node("m", 0.9)
    others = [node("b"), node("a"), node("full", 0.9), node("draining", draining=True)]
    strategy = First()
    choice = route(home, [member], others, {}, "", strategy, {})
    assert choice == Choice(node("a"), add=True)
    assert strategy.offered == [["a", "b"]]  # only nodes with room are offered


def test_spill_prefers_a_node_in_the_joiners_region() -> None:
    home = node("home", 0.9, region="us")
    others = [node("a", region="us"), node("z", 0.5, region="eu")]
    assert decide(home, [], others, region="eu") == Choice(others[1], add=True)


def test_a_regional_member_with_room_takes_the_joiner() -> None:
    home = node("home", 0.1, region="us")
    eu = node("eu1", 0.6, region="eu")
    assert decide(home, [eu], [node("eu2", region="eu")], region="eu") == Choice(eu)


def test_a_meeting_without_a_node_in_the_region_gains_one() -> None:
    home = node("home", 0.1, region="us")
    others = [node("eu-busy", 0.6, region="eu"), node("eu-idle", 0.1, region="eu")]
    assert decide(home, [], others, region="eu") == Choice(others[1], add=True)


def test_the_home_in_the_region_is_preferred_over_other_regional_members() -> None:
    home = node("home", 0.5, region="eu")
    members = [node("eu2", 0.0, region="eu")]
    assert decide(home, members, region="eu") == Choice(home)


def test_a_region_with_no_node_with_room_falls_back_to_the_meeting() -> None:
    home = node("home", 0.1, region="us")
    others = [node("eu-full", 0.9, region="eu"), node("eu-out", draining=True, region="eu")]
    assert decide(home, [], others, region="eu") == Choice(home)
    assert decide(home, [], [], region="mars") == Choice(home)


def test_a_home_that_refused_the_joiner_is_left_out() -> None:
    # The caller passes home=None when the joiner came back with full_node_id = home.
    member = node("m", 0.5)
    assert decide(None, [member], [node("idle")]) == Choice(member)
    assert decide(None, [], [node("idle")]) == Choice(node("idle"), add=True)


def test_all_full_and_nothing_to_add_takes_the_least_loaded_member_below_full() -> None:
    home, m1, m2 = node("home", 0.9), node("m1", 1.0), node("m2", 0.9)
    choice = decide(home, [m1, m2], [node("full", 0.9)], grants(home=1))
    assert choice == Choice(m2)  # home: 0.9 + a grant = 1.0, full too


def test_no_capacity_anywhere_raises() -> None:
    with pytest.raises(NoRelayAvailable):
        decide(node("home", 1.0), [node("m", 1.0)], [node("o", 0.9)])
    with pytest.raises(NoRelayAvailable):
        decide(None, [], [])
    with pytest.raises(NoRelayAvailable):
        decide(node("home", draining=True), [], [node("o", draining=True)])


def test_ties_do_not_depend_on_input_order() -> None:
    home = node("home", 0.9)
    members = [node("b", 0.2), node("a", 0.2), node("c", 0.2)]
    assert decide(home, members).node.node_id == "a"
    assert decide(home, members[::-1]).node.node_id == "a"


def test_twenty_five_joiners_fill_three_nodes_without_passing_the_spill_load() -> None:
    nodes = {name: node(name) for name in ("a", "b", "c")}
    issued: dict[NodeId, int] = {}
    members: list[str] = []
    home = nodes["a"]
    for _ in range(25):
        others = [n for name, n in nodes.items() if name != "a" and name not in members]
        choice = route(home, [nodes[m] for m in members], others, issued, "", First(), {})
        if choice.add:
            members.append(choice.node.node_id)
        issued[choice.node.node_id] = issued.get(choice.node.node_id, 0) + 1
    assert sorted(issued.values()) == [7, 9, 9]
    assert members == ["b", "c"]  # one added at a time, each filled first


# --- choose_home ---------------------------------------------------------------------


def test_a_new_home_is_a_span_node_with_room() -> None:
    nodes = [node("a"), node("b", 0.5), node("c", 0.2, region="eu")]
    spanned = {NodeId("b"), NodeId("c")}
    assert choose_home(nodes, spanned, {}, "", First(), {}).node_id == "c"  # most room
    assert choose_home(nodes, spanned, {}, "eu", First(), {}).node_id == "c"
    full = [node("a"), node("b", 0.9)]
    assert choose_home(full, {NodeId("b")}, {}, "", First(), {}).node_id == "a"


def test_a_new_home_is_in_the_joiners_region() -> None:
    nodes = [node("a"), node("b", region="eu"), node("c", 0.9, region="eu")]
    assert choose_home(nodes, set(), {}, "eu", First(), {}).node_id == "b"
    assert choose_home(nodes, set(), {}, "", First(), {}).node_id == "a"


def test_a_new_home_skips_nodes_full_by_the_estimate() -> None:
    nodes = [node("a"), node("b")]
    assert choose_home(nodes, set(), grants(a=9), "", First(), {}).node_id == "b"
    with pytest.raises(NoRelayAvailable):
        choose_home([node("a", 0.9)], set(), {}, "", First(), {})


def test_a_node_full_only_by_the_estimate_still_takes_a_joiner_of_its_meeting() -> None:
    # Its own figure says below full: the relay decides (node_full) whether it can.
    home = node("home", 0.5)
    assert decide(home, [], [], grants(home=50)) == Choice(home)
    assert decide(home, [], [node("o", 0.95)], grants(home=50)) == Choice(home)


def test_grants_older_than_the_window_no_longer_count() -> None:
    now = [100.0]
    registry = NodeRegistry(None, clock=lambda: now[0])  # type: ignore[arg-type]
    for _ in range(3):
        registry.granted(NodeId("a"))
    now[0] += GRANT_WINDOW_S / 2
    registry.granted(NodeId("a"))
    assert registry.grants().get(NodeId("a"), 0) == 4
    now[0] += GRANT_WINDOW_S / 2 + 0.1
    assert registry.grants().get(NodeId("a"), 0) == 1
    assert registry.grants().get(NodeId("b"), 0) == 0
