"""PowerOfTwoChoices: headroom filter, (load, meetings placed) order, determinism."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from control_plane.errors import NoRelayAvailable
from control_plane.ids import NodeId
from control_plane.placement import PowerOfTwoChoices, has_headroom
from control_plane.records import NodeInfo


def node(name: str, load: float = 0.0, *, capacity: int = 100, draining: bool = False) -> NodeInfo:
    return NodeInfo(
        node_id=NodeId(name),
        signal_url=f"ws://{name}/ws",
        rpc_address=f"{name}:1",
        capacity=capacity,
        load=load,
        lease=1,
        draining=draining,
    )


def choices(
    nodes: list[NodeInfo], rooms: dict[str, int], n: int = 300, seed: int = 7
) -> Counter[str]:
    strategy = PowerOfTwoChoices(random.Random(seed))
    placed = {NodeId(k): v for k, v in rooms.items()}
    return Counter(strategy.choose(nodes, placed).node_id for _ in range(n))


def test_only_nodes_with_headroom_are_chosen() -> None:
    nodes = [
        node("full", 0.9),
        node("fuller", 1.0),
        node("draining", 0.0, draining=True),
        node("no-capacity", 0.0, capacity=0),
        node("a", 0.5),
        node("b", 0.5),
    ]
    seen = choices(nodes, {})
    assert set(seen) == {"a", "b"}


def test_lower_load_wins() -> None:
    assert choices([node("busy", 0.6), node("idle", 0.1)], {"idle": 50}) == {"idle": 300}


def test_fewer_rooms_breaks_a_load_tie() -> None:
    assert choices([node("a", 0.2), node("b", 0.2)], {"a": 3, "b": 1}) == {"b": 300}


def test_worst_of_three_is_never_chosen_and_the_others_are() -> None:
    # Power of two choices: the worst node always loses the pair it is sampled in.
    seen = choices([node("a", 0.1), node("b", 0.2), node("c", 0.3)], {})
    assert set(seen) == {"a", "b"}
    assert seen["a"] > seen["b"]  # a wins both pairs it is in, b only one


def test_single_candidate_is_taken_whatever_its_rooms() -> None:
    nodes = [node("only", 0.8), node("full", 0.95), node("leaving", draining=True)]
    assert choices(nodes, {"only": 1000}, n=20) == {"only": 20}


@pytest.mark.parametrize(
    "nodes",
    [[], [node("full", 0.9)], [node("leaving", draining=True), node("zero", capacity=0)]],
)
def test_no_headroom_raises(nodes: list[NodeInfo]) -> None:
    with pytest.raises(NoRelayAvailable):
        PowerOfTwoChoices(random.Random(1)).choose(nodes, {})


def test_deterministic_for_a_seed_whatever_the_input_order() -> None:
    nodes = [node(f"n{i}", 0.0) for i in range(6)]
    first = PowerOfTwoChoices(random.Random(42))
    second = PowerOfTwoChoices(random.Random(42))
    a = [first.choose(nodes, {}).node_id for _ in range(50)]
    b = [second.choose(list(reversed(nodes)), {}).node_id for _ in range(50)]
    assert a == b
    assert len(set(a)) > 1


def test_headroom_threshold() -> None:
    assert has_headroom(node("x", 0.8))
    assert not has_headroom(node("x", 0.9))
    assert not has_headroom(node("x", 0.1, draining=True))
