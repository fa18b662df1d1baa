"""The drain request format, which relays count as somewhere to move to, placement
values, and `conclave relay drain` reaching its own module."""

from __future__ import annotations

import json

import pytest

from conclave import cli as conclave_cli
from conclave.placements import placed_node
from relay.drain import DrainRequest, drain_key, serving_nodes
from relay.drain_cli import parse_args


def test_drain_requests_round_trip_and_refuse_nonsense() -> None:
    request = DrainRequest(60.0, 1234)
    assert DrainRequest.from_json(request.to_json()) == request
    assert DrainRequest.from_json(b'{"deadline_s": 5}') == DrainRequest(5.0, 0)
    for bad in (b"[]", b'{"deadline_s": -1}', b'{"deadline_s": true}', b"{}", b'"x"'):
        with pytest.raises(ValueError):
            DrainRequest.from_json(bad)
    assert drain_key("relay-0") == "/conclave/drain/relay-0"


def test_only_other_serving_relays_with_room_count_as_targets() -> None:
    def node(node_id: str, **extra: object) -> bytes:
        return json.dumps({"node_id": node_id, "capacity": 10, "load": 0.2, **extra}).encode()

    nodes = {
        "me": node("me"),
        "b": node("b"),
        "draining": node("draining", draining=True),
        "full": node("full", load=1.0),
        "closed": node("closed", capacity=0),
        "junk": b"not json",
        "a": node("a"),
    }
    assert serving_nodes(nodes, "me") == ["a", "b"]


def test_placement_values_name_a_node_or_nothing() -> None:
    assert placed_node(b'{"node_id": "relay-1"}') == "relay-1"
    for bad in (b"", b"{}", b'{"node_id": ""}', b'{"node_id": 3}', b"[1]"):
        assert placed_node(bad) is None


def test_drain_arguments() -> None:
    args = parse_args(["relay-1", "--deadline", "30", "--wait", "--etcd", "http://e:2379"])
    assert (args.node_id, args.deadline, args.wait, args.etcd) == (
        "relay-1",
        30.0,
        True,
        "http://e:2379",
    )
    assert parse_args(["relay-1"]).deadline == 240.0


def test_conclave_relay_drain_runs_the_drain_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert conclave_cli.run(["relay", "drain", "--help"]) == 0
    assert "usage: conclave relay drain" in capsys.readouterr().out
    assert conclave_cli.run(["relay", "drain"]) == 2  # NODE_ID is required
