"""The capacity simulation (control_plane/sim.py) on small days, and the in-memory
store it runs the real placement code on (conclave/memory_store.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import grpc
import pytest

from conclave.cli import run
from conclave.memory_store import MemoryLease, MemoryStore
from conclave.store import WatchEvent
from control_plane import sim
from control_plane.ids import NodeId
from control_plane.placement import PowerOfTwoChoices
from control_plane.records import NodeInfo

# Small nodes and a size tail that reaches past them, so every refusal path runs.
CONFIG = sim.CellConfig(capacity=20, cell_nodes=60, model=sim.Model(size_exponent=1.9, max_size=80))


def figures(result: sim.CellResult) -> dict[str, Any]:
    data = asdict(result)
    del data["seconds"], data["engine"]
    return data


async def day(seed: int = 3, engine: str = "placer", participants: int = 3000) -> sim.CellResult:
    return await sim.CellSim(0, participants, CONFIG, seed, engine).run()


async def test_every_participant_is_placed_or_refused_and_no_node_overfills() -> None:
    result = await day()
    refused = result.refused_oversize + result.refused_node_full + result.refused_no_capacity
    assert result.participants >= 3000
    assert result.joins == result.participants == result.admitted + refused
    assert result.max_node_participants <= CONFIG.capacity
    assert result.peak_concurrent <= result.peak_nodes * CONFIG.capacity
    assert 0 < result.packing_efficiency <= 1
    assert result.peak_lower_bound <= result.peak_nodes <= result.peak_with_cascade
    # The tail goes past a node's 20: those meetings are counted and their overflow
    # is refused, as the relay does today.
    assert result.oversize_meetings > 0 and result.refused_oversize > 0
    assert result.refused_no_capacity == 0  # the cell never ran out of nodes
    assert result.creates == result.meetings
    assert result.peak_writes_60s > 0 and result.peak_requests_60s > 0


async def test_a_seed_reproduces_the_day_and_another_seed_does_not() -> None:
    first, again, other = await day(3), await day(3), await day(4)
    assert figures(first) == figures(again)
    assert figures(first) != figures(other)


async def test_the_strategy_engine_decides_what_the_placer_decides() -> None:
    # The fast path used for most sampled cells must not change the answer.
    assert figures(await day(5, "placer")) == figures(await day(5, "strategy"))


@pytest.mark.parametrize("engine", ["placer", "strategy"])
async def test_the_real_strategy_is_what_places(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = PowerOfTwoChoices.choose

    def spy(
        self: PowerOfTwoChoices, nodes: Sequence[NodeInfo], rooms_placed: Mapping[NodeId, int]
    ) -> NodeInfo:
        calls.append(len(nodes))
        return real(self, nodes, rooms_placed)

    monkeypatch.setattr(PowerOfTwoChoices, "choose", spy)
    result = await day(engine=engine, participants=500)
    assert len(calls) == result.creates > 0
    assert max(calls) > 2  # a real choice among several nodes


def test_capacity_follows_the_benchmark_figures() -> None:
    # 340 forwarded x 12.5 us + 130 received x 84 us = 15.17 ms of CPU per second.
    assert sim.participants_per_core() == 52
    assert sim.participants_per_core(packets_out=170, packets_in=65) == 105
    assert sim.participants_per_core(cpu_target=0.4) == 26


def test_the_margin_shrinks_to_nothing_when_every_cell_is_simulated() -> None:
    assert sim.estimate([10.0, 12.0], population=2) == sim.Estimate(11.0, 0.0)
    sampled = sim.estimate([10.0, 12.0, 11.0], population=100)
    assert sampled.mean == 11.0 and 0 < sampled.margin < 5


def test_the_command_prints_the_figures(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sim", "--daily-participants", "2000", "--seed", "2", "--json"]
    assert run(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["plan"]["cells"] == 1
    assert out["totals"]["peak_nodes"]["mean"] >= 1
    assert run(["sim", "--daily-participants", "2000", "--seed", "2"]) == 0
    text = capsys.readouterr().out
    assert "nodes needed at peak" in text and "etcd writes/s per cell" in text


# --- the in-memory store ------------------------------------------------------------


async def test_memory_store_guards_revisions_and_leases() -> None:
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    assert await store.create_if_absent("/a", b"1") == (True, b"1")
    assert await store.create_if_absent("/a", b"2") == (False, b"1")
    lease = await store.grant_expiring_lease(10)
    await store.put("/b/x", b"x", lease)
    _, revision = await store.get_prefix("/")
    assert revision == 2
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await store.put("/c", b"c", lease + 1)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    now[0] = 9.9
    assert await store.get("/b/x") == b"x"
    now[0] = 10.0
    assert await store.get("/b/x") is None  # its lease ran out
    kept = await store.grant_lease(3)
    await store.put("/k", b"k", kept)
    now[0] = 1000.0
    assert await store.get("/k") == b"k"  # kept alive until its holder stops
    await kept.revoke()
    assert await store.get("/k") is None
    dying = await store.grant_lease(3)
    await store.put("/d", b"d", dying)
    assert isinstance(dying, MemoryLease)
    dying.stop_keepalive()  # its holder died: etcd expires it one TTL later
    now[0] = 1002.9
    assert await store.get("/d") == b"d"
    now[0] = 1003.0
    assert await store.get("/d") is None


async def test_memory_store_watch_replays_from_a_revision_then_follows() -> None:
    store = MemoryStore()
    await store.put("/w/a", b"1")
    _, revision = await store.get_prefix("/w/")
    await store.put("/w/b", b"2")
    await store.put("/other", b"x")
    seen: list[WatchEvent] = []

    async def follow() -> None:
        async for event in store.watch_prefix("/w/", revision + 1):
            seen.append(event)

    task = asyncio.create_task(follow())
    await asyncio.sleep(0)
    await store.delete("/w/a")
    await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert seen == [WatchEvent("put", "/w/b", b"2"), WatchEvent("delete", "/w/a", b"")]
