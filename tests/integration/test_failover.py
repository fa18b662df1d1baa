"""Losing a relay: its lease runs out, and the meeting is placed again on the next join;
clients connected to it come back on another relay within seconds, before the lease
has run out (a rejoining client's hint, checked by the control plane)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from client.sdk import RoomsClient, Session, join
from conclave import placements
from conclave.ice import use_host_addresses
from conclave.processes import EtcdServer
from conclave.store import NODES_PREFIX, PLACEMENT_PREFIX, EtcdStore
from control_plane.failover import Failover
from control_plane.ids import NodeId, RoomId
from control_plane.records import NodeInfo
from tests.integration.continuity import MediaWatch
from tests.integration.relay_harness import RelayProcess, video_frames

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_killed_relay_expires_and_meeting_moves_to_survivor(
    etcd: EtcdServer, control_plane: str
) -> None:
    use_host_addresses(["127.0.0.1"])
    relays = {r.node_id: r for r in (RelayProcess("relay-a", etcd.endpoint),
                                     RelayProcess("relay-b", etcd.endpoint))}  # fmt: skip
    await asyncio.gather(*(r.start() for r in relays.values()))
    store = EtcdStore([etcd.endpoint])
    await store.connect()
    try:
        async with RoomsClient(control_plane) as rooms:
            room = await rooms.create_room("failover")
            doomed = relays[room.node_id]
            survivor = next(r for r in relays.values() if r is not doomed)

            doomed.kill()
            killed_at = time.monotonic()
            while await store.get(NODES_PREFIX + doomed.node_id) is not None:
                assert time.monotonic() - killed_at < 5.0, "lease did not expire within 5 s"
                await asyncio.sleep(0.1)
            assert await store.get(PLACEMENT_PREFIX + room.room_id) is None

            joins = [
                await rooms.join_room(room.room_id, name, True, room.passcode)
                for name in ("ann", "ben")
            ]
            assert {j.node_id for j in joins} == {survivor.node_id}
            assert (await rooms.get_room(room.room_id, room.host_key)).node_id == survivor.node_id

            ann = Session(joins[0], "ann", ["video"])
            ben = Session(joins[1], "ben", [])
            async with ann, ben:
                async with asyncio.timeout(20):
                    while video_frames(ben, "ann") < 10:
                        await asyncio.sleep(0.2)
    finally:
        await store.close()
        await asyncio.gather(*(r.stop() for r in relays.values()))


async def test_clients_of_a_killed_relay_get_media_again_within_5_s(
    etcd: EtcdServer, control_plane: str
) -> None:
    use_host_addresses(["127.0.0.1"])
    relays = {r.node_id: r for r in (RelayProcess("kill-a", etcd.endpoint),
                                     RelayProcess("kill-b", etcd.endpoint))}  # fmt: skip
    await asyncio.gather(*(r.start() for r in relays.values()))
    store = EtcdStore([etcd.endpoint])
    await store.connect()
    sessions: dict[str, Session] = {}
    try:
        async with RoomsClient(control_plane) as rooms:
            room = await rooms.create_room("killed")
            for name in ("ann", "ben", "cid"):
                sessions[name] = await join(
                    rooms, room.room_id, name, ["video"], passcode=room.passcode, join_timeout=30
                )
            doomed = relays[room.node_id]
            survivor = next(r for r in relays.values() if r is not doomed)
            async with MediaWatch(sessions) as watch:
                await watch.flowing(time.monotonic(), 10, timeout=60)
                doomed.kill()
                killed_at = time.monotonic()
                async with asyncio.timeout(30):
                    while any(s.node_id != survivor.node_id or s.reconnecting
                              for s in sessions.values()):  # fmt: skip
                        await asyncio.sleep(0.05)
                await watch.flowing(time.monotonic(), 10, timeout=30)
            resumed = watch.resumed_after(killed_at)
            print("media again after (s):", {f"{v}<-{p}": round(t or -1, 2)
                                             for (v, p), t in resumed.items()})  # fmt: skip
            late = {pair: t for pair, t in resumed.items() if t is None or t > 5.0}
            assert not late, f"no media within 5 s of the kill: {late}"
            assert {s.node_id for s in sessions.values()} == {survivor.node_id}
            assert all(s.reconnects == 1 and not s.closed for s in sessions.values())
            # The meeting was moved before the dead node's lease ran out; once it has,
            # nothing in etcd names the dead node.
            while await store.get(NODES_PREFIX + doomed.node_id) is not None:
                assert time.monotonic() - killed_at < 5.0, "lease did not expire within 5 s"
                await asyncio.sleep(0.1)
            placements, _ = await store.get_prefix(PLACEMENT_PREFIX)
            named = {json.loads(raw)["node_id"] for raw in placements.values()}
            assert doomed.node_id not in named
            assert json.loads(placements[PLACEMENT_PREFIX + room.room_id]) == {
                "node_id": survivor.node_id
            }
    finally:
        await asyncio.gather(*(s.leave() for s in sessions.values()))
        await store.close()
        await asyncio.gather(*(r.stop() for r in relays.values()))


class _Registry:
    """The two things Failover reads of the control plane's registry."""

    def __init__(self, nodes: dict[str, NodeInfo]) -> None:
        self.nodes = nodes
        self.forgotten: list[str] = []

    def placement(self, room_id: str) -> None:
        return None  # not cached: Failover reads etcd

    def node(self, node_id: str) -> NodeInfo | None:
        return self.nodes.get(node_id)

    def forget_placement(self, room_id: str) -> None:
        self.forgotten.append(room_id)


async def test_a_hint_moves_a_meeting_only_off_a_relay_that_does_not_answer(
    etcd: EtcdServer,
) -> None:
    store = EtcdStore([etcd.endpoint])
    await store.connect()
    answering: dict[str, bool] = {"up": True, "down": False}
    asked: list[str] = []

    async def probe(node: NodeInfo, room_id: str, timeout: float) -> bool:
        asked.append(node.node_id)
        return answering[node.node_id]

    nodes = {
        name: NodeInfo(NodeId(name), f"ws://{name}", f"{name}:1", 10, 0.0, lease=1)
        for name in answering
    }
    registry = _Registry(nodes)
    failover = Failover(store, registry, probe)  # type: ignore[arg-type]
    try:
        for room, node in (("r-up", "up"), ("r-down", "down"), ("r-else", "up")):
            await store.put(PLACEMENT_PREFIX + room, json.dumps({"node_id": node}).encode())
        # A healthy relay keeps its meeting, whatever a client says.
        assert await failover.excluded(RoomId("r-up"), NodeId("up")) == frozenset()
        assert await store.get(PLACEMENT_PREFIX + "r-up") is not None
        # A relay that does not answer loses it, and is left out of the next placement.
        assert await failover.excluded(RoomId("r-down"), NodeId("down")) == {"down"}
        assert await store.get(PLACEMENT_PREFIX + "r-down") is None
        assert registry.forgotten == ["r-down"]
        # A hint naming a node the meeting is not on changes nothing, asks nobody.
        asked.clear()
        assert await failover.excluded(RoomId("r-else"), NodeId("down")) == frozenset()
        assert await store.get(PLACEMENT_PREFIX + "r-else") is not None and asked == []
        # The fenced delete: a placement that names another node stays.
        assert not await placements.release(store, "r-else", "down")
        assert await placements.release(store, "r-else", "up")
    finally:
        await store.delete_prefix(PLACEMENT_PREFIX)
        await store.close()
