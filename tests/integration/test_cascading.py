"""JoinRoom on a meeting that spans several relays, through a real control plane
and etcd: filling nodes, adding them (fenced), regions, a relay that says full.

Relays are faked by node records under leases this test holds: nobody connects,
so the nodes' load figures never change and the control plane's estimate is its
own grant count.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from conclave import spans
from conclave.processes import EtcdServer
from conclave.store import NODES_PREFIX, PLACEMENT_PREFIX, EtcdStore, Lease
from control_plane.app import ControlPlane
from control_plane.attempts import Policy
from control_plane.ids import NodeId
from control_plane.placement import SPILL_LOAD
from protos import rooms_pb2, rooms_pb2_grpc
from tests.api_key import api_metadata

PASSCODE = "tea for two"
CAPACITY = 10


@pytest.fixture(scope="module")
def etcd_server() -> Iterator[EtcdServer]:
    """This module's own etcd: placement must see only its nodes."""
    server = EtcdServer()
    server.start()
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
async def clean_keyspace(store: EtcdStore) -> AsyncIterator[None]:
    yield
    await store.delete_prefix("/conclave/")


class Cell:
    """One in-process control plane, fake relays, and a stub."""

    def __init__(self, endpoint: str, store: EtcdStore) -> None:
        self.store = store
        self.plane = ControlPlane(
            [endpoint],
            attempts=Policy(burst=10_000, per_minute=10_000),
            trusted_proxies=[ipaddress.ip_network("127.0.0.0/8")],
        )
        self.leases: dict[str, Lease] = {}
        self.channel: grpc.aio.Channel | None = None
        self.stub: Any = None

    async def start(self) -> None:
        port = await self.plane.start("127.0.0.1", 0)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = rooms_pb2_grpc.RoomServiceStub(channel=self.channel)  # type: ignore[no-untyped-call]

    async def stop(self) -> None:
        for lease in self.leases.values():
            await lease.revoke()
        if self.channel is not None:
            await self.channel.close()
        await self.plane.stop(grace=0)

    async def add_relay(self, region: str = "") -> str:
        node_id = f"node-{region or 'x'}-{uuid.uuid4().hex[:6]}"
        lease = await self.store.grant_lease(5)
        info: dict[str, Any] = {
            "node_id": node_id,
            "signal_url": f"ws://127.0.0.1:9/{node_id}/ws",
            "rpc_address": "127.0.0.1:9",
            "capacity": CAPACITY,
            "load": 0.0,
            "lease": lease.id,
        }
        if region:
            info["region"] = region
        await self.store.put(NODES_PREFIX + node_id, json.dumps(info).encode(), lease)
        self.leases[node_id] = lease
        deadline = time.monotonic() + 5
        while self.plane.registry.node(NodeId(node_id)) is None:  # the watch is not instant
            assert time.monotonic() < deadline, "the control plane never saw the node"
            await asyncio.sleep(0.02)
        return node_id

    async def create_room(self) -> str:
        room = await self.stub.CreateRoom(
            rooms_pb2.CreateRoomRequest(name="w", passcode=PASSCODE), metadata=api_metadata()
        )
        return str(room.room_id)

    async def join(
        self, room_id: str, region: str = "", full_node_id: str = "", unreachable: str = ""
    ) -> Any:
        request = rooms_pb2.JoinRoomRequest(
            room_id=room_id,
            display_name="Ada",
            passcode=PASSCODE,
            region=region,
            full_node_id=full_node_id,
            unreachable_node_id=unreachable,
        )
        return await self.stub.JoinRoom(request, timeout=5)

    def decisions(self) -> dict[str, float]:
        counter = self.plane.metrics.placements
        return {
            d: counter.labels(decision=d)._value.get()
            for d in ("existing", "placed", "adopted", "spilled", "no_capacity")
        }


@pytest.fixture
async def cell(etcd_endpoint: str, store: EtcdStore) -> AsyncIterator[Cell]:
    c = Cell(etcd_endpoint, store)
    await c.start()
    yield c
    await c.stop()


async def test_a_large_meeting_fills_its_nodes_one_after_the_other(
    cell: Cell, store: EtcdStore
) -> None:
    nodes = {await cell.add_relay() for _ in range(3)}
    room_id = await cell.create_room()
    home = json.loads(await store.get(PLACEMENT_PREFIX + room_id) or b"{}")["node_id"]
    landed: collections.Counter[str] = collections.Counter()
    for _ in range(25):
        landed[(await cell.join(room_id)).node_id] += 1
    assert set(landed) == nodes  # nobody refused, every node used
    assert max(landed.values()) <= SPILL_LOAD * CAPACITY  # never past the spill load
    assert landed[home] == SPILL_LOAD * CAPACITY  # the home was filled first
    assert await spans.meeting_nodes(store, room_id) == nodes
    assert await spans.span_nodes(store, room_id) == nodes - {home}
    decisions = cell.decisions()
    assert decisions["spilled"] == 2  # one addition per extra node, no more
    assert decisions["no_capacity"] == 0
    # The whole cell is at its spill load: the next joiners still get in, below full.
    extra = [(await cell.join(room_id)).node_id for _ in range(3)]
    assert set(extra) <= nodes


async def test_a_joiner_from_a_region_gets_a_node_there(cell: Cell, store: EtcdStore) -> None:
    us = await cell.add_relay("us")
    room_id = await cell.create_room()
    assert (await cell.join(room_id, region="us")).node_id == us
    eu = await cell.add_relay("eu")
    first = await cell.join(room_id, region="eu")
    assert first.node_id == eu
    assert await spans.meeting_nodes(store, room_id) == {us, eu}
    assert (await cell.join(room_id, region="eu")).node_id == eu  # no second addition
    assert (await cell.join(room_id)).node_id == us  # no region: the home
    assert cell.decisions()["spilled"] == 1


async def test_a_relay_that_says_full_sends_the_joiner_elsewhere(
    cell: Cell, store: EtcdStore
) -> None:
    a = await cell.add_relay()
    room_id = await cell.create_room()
    assert (await cell.join(room_id)).node_id == a
    b = await cell.add_relay()
    moved = await cell.join(room_id, full_node_id=a)
    assert moved.node_id == b
    assert await spans.meeting_nodes(store, room_id) == {a, b}
    # Only the node that refused is avoided; a name that is no node changes nothing.
    assert (await cell.join(room_id, full_node_id="x" * 300)).node_id == a
    assert (await cell.join(room_id, full_node_id=b)).node_id == a


async def test_a_meeting_whose_home_died_continues_on_its_other_node(
    cell: Cell, store: EtcdStore
) -> None:
    a = await cell.add_relay()
    room_id = await cell.create_room()
    for _ in range(9):
        assert (await cell.join(room_id)).node_id == a
    b = await cell.add_relay()
    c = await cell.add_relay()
    spilled_to = (await cell.join(room_id)).node_id
    assert spilled_to in {b, c}
    await cell.leases.pop(a).revoke()  # the home dies: placement and its spans go
    rejoin = await cell.join(room_id)
    assert rejoin.node_id == spilled_to  # the new home is the node that has people
    assert json.loads(await store.get(PLACEMENT_PREFIX + room_id) or b"{}") == {
        "node_id": spilled_to
    }


async def test_end_room_deletes_the_meetings_spans(cell: Cell, store: EtcdStore) -> None:
    a = await cell.add_relay()
    room = await cell.stub.CreateRoom(
        rooms_pb2.CreateRoomRequest(name="w", passcode=PASSCODE), metadata=api_metadata()
    )
    await cell.join(room.room_id)
    b = await cell.add_relay()
    assert (await cell.join(room.room_id, full_node_id=a)).node_id == b
    assert await spans.span_nodes(store, room.room_id) == {b}
    await cell.stub.EndRoom(rooms_pb2.EndRoomRequest(room_id=room.room_id, host_key=room.host_key))
    assert await spans.meeting_nodes(store, room.room_id) == set()


async def test_a_rejoiner_is_not_sent_back_to_a_silent_further_relay(
    cell: Cell, store: EtcdStore
) -> None:
    home = await cell.add_relay("us")
    room_id = await cell.create_room()
    eu = await cell.add_relay("eu")
    assert (await cell.join(room_id, region="eu")).node_id == eu
    # Nothing answers at the fake relays' rpc address: eu is as good as dead.
    back = await cell.join(room_id, region="eu", unreachable=eu)
    assert back.node_id == home
    assert await spans.span_nodes(store, room_id) == set()
    # A silent relay that is not the meeting's is no reason to move anybody.
    assert (await cell.join(room_id, unreachable="node-elsewhere")).node_id == home
