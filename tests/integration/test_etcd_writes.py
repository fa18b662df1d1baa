"""How many etcd writes a meeting costs: CreateRoom and JoinRoom against a real etcd.

The issue's target is one write for a new meeting and none for joining an existing
one. Two counts are taken around each call, both from this module's own etcd (no
other test writes to it meanwhile): the store's revision, which every committed
key change (a put, a delete, a transaction with any number of puts) raises by one,
and `etcd_server_proposals_committed_total` from etcd's /metrics, which also counts
lease grants (raft proposals that change no key). docs/benchmarks.md reports both.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from conclave.processes import EtcdServer
from conclave.store import NODES_PREFIX, PLACEMENT_PREFIX, EtcdStore, Lease
from control_plane.app import ControlPlane
from control_plane.attempts import Policy
from protos import rooms_pb2, rooms_pb2_grpc
from tests.api_key import api_metadata

pytestmark = pytest.mark.integration

PASSCODE = "tea for two"
_PROPOSALS = re.compile(r"^etcd_server_proposals_committed_total\s+(\S+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def etcd_server() -> Iterator[EtcdServer]:
    """Overrides the session server: the counts must see this module's calls only."""
    server = EtcdServer()
    server.start()
    server.wait_ready()
    yield server
    server.stop()


class Counts:
    """The store's revision and etcd's committed proposals, read together."""

    def __init__(self, store: EtcdStore, server: EtcdServer) -> None:
        self._store = store
        self._metrics_url = f"http://{server.endpoint}/metrics"

    async def read(self) -> tuple[int, int]:
        _, revision = await self._store.get_prefix("/conclave/nothing-here/")
        text = await asyncio.to_thread(self._scrape)
        match = _PROPOSALS.search(text)
        assert match is not None, "etcd exports no etcd_server_proposals_committed_total"
        return revision, int(float(match.group(1)))

    def _scrape(self) -> str:
        with urllib.request.urlopen(self._metrics_url, timeout=5) as response:  # loopback
            return str(response.read().decode())

    async def delta(self, before: tuple[int, int]) -> tuple[int, int]:
        """(revisions, proposals) since `before`."""
        revision, proposals = await self.read()
        return revision - before[0], proposals - before[1]


@pytest.fixture
async def counts(store: EtcdStore, etcd_server: EtcdServer) -> Counts:
    return Counts(store, etcd_server)


class Replica:
    """An in-process control plane (production wiring) and a client stub for it."""

    def __init__(self, plane: ControlPlane, stub: Any) -> None:
        self.plane = plane
        self.stub = stub

    async def add_relay(self, store: EtcdStore) -> tuple[str, Lease]:
        """A fake relay: node info under a lease of ours, as a relay writes it,
        once the replica's node watch shows it."""
        node_id = f"node-{uuid.uuid4().hex[:8]}"
        lease = await store.grant_lease(10)
        info = {
            "node_id": node_id,
            "signal_url": f"ws://127.0.0.1:9/{node_id}/ws",
            "rpc_address": "127.0.0.1:9",
            "capacity": 1000,
            "load": 0.0,
            "lease": lease.id,
        }
        await store.put(NODES_PREFIX + node_id, json.dumps(info).encode(), lease)
        deadline = time.monotonic() + 5
        while node_id not in {n.node_id for n in self.plane.registry.live_nodes()}:
            assert time.monotonic() < deadline, "the replica never saw the relay"
            await asyncio.sleep(0.02)
        return node_id, lease


@pytest.fixture
async def replica(etcd_endpoint: str) -> AsyncIterator[Replica]:
    plane = ControlPlane(
        [etcd_endpoint],
        attempts=Policy(burst=10_000, per_minute=10_000),
        trusted_proxies=[ipaddress.ip_network("127.0.0.0/8")],
    )
    port = await plane.start("127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Replica(plane, rooms_pb2_grpc.RoomServiceStub(channel=channel))  # type: ignore[no-untyped-call]
    finally:
        await channel.close()
        await plane.stop(grace=0)


@pytest.fixture
def stub(replica: Replica) -> Any:
    return replica.stub


@pytest.fixture
async def relay(replica: Replica, store: EtcdStore) -> AsyncIterator[str]:
    """A relay the replica knows of, registered before any count is taken."""
    node_id, lease = await replica.add_relay(store)
    yield node_id
    await lease.revoke()


async def create(stub: Any) -> rooms_pb2.Room:
    room: rooms_pb2.Room = await stub.CreateRoom(
        rooms_pb2.CreateRoomRequest(name="standup", passcode=PASSCODE),
        timeout=10,
        metadata=api_metadata(),
    )
    return room


async def join(stub: Any, room_id: str) -> rooms_pb2.JoinRoomResponse:
    response: rooms_pb2.JoinRoomResponse = await stub.JoinRoom(
        rooms_pb2.JoinRoomRequest(
            room_id=room_id, display_name="Ada", publish=True, passcode=PASSCODE
        ),
        timeout=10,
    )
    return response


async def test_create_room_writes_and_places_the_meeting_in_one_revision(
    stub: Any, relay: str, store: EtcdStore, counts: Counts
) -> None:
    """The record, the host-key digest, the "create" audit entry and the placement
    on the relay: one revision; the two expiring leases: two proposals that change
    no key."""
    await create(stub)  # warm-up: the attempt limiter and the signer wrote theirs at start
    before = await counts.read()
    room = await create(stub)
    assert room.node_id == relay
    assert await counts.delta(before) == (1, 3)
    assert await store.get(PLACEMENT_PREFIX + room.room_id) is not None


async def test_create_room_without_a_relay_is_one_revision(stub: Any, counts: Counts) -> None:
    before = await counts.read()
    room = await create(stub)
    assert room.node_id == ""
    assert await counts.delta(before) == (1, 3)


async def test_joining_a_placed_meeting_writes_nothing(
    stub: Any, relay: str, counts: Counts
) -> None:
    room = await create(stub)
    before = await counts.read()
    for _ in range(5):
        response = await join(stub, room.room_id)
        assert response.node_id == relay
    assert await counts.delta(before) == (0, 0)


async def test_first_join_of_an_unplaced_meeting_writes_its_placement(
    replica: Replica, store: EtcdStore, counts: Counts
) -> None:
    room = await create(replica.stub)  # no relay yet: unplaced
    node_id, lease = await replica.add_relay(store)
    try:
        before = await counts.read()
        assert (await join(replica.stub, room.room_id)).node_id == node_id
        assert await counts.delta(before) == (1, 1)
        before = await counts.read()
        await join(replica.stub, room.room_id)
        assert await counts.delta(before) == (0, 0)
    finally:
        await lease.revoke()


async def test_the_one_write_holds_the_whole_meeting(stub: Any, store: EtcdStore) -> None:
    """What the single transaction wrote: the record, the digest, the entry."""
    room = await create(stub)
    assert await store.get(f"/conclave/rooms/{room.room_id}") is not None
    assert await store.get(f"/conclave/audit/{room.room_id}/host") is not None
    entries, _ = await store.get_prefix(f"/conclave/audit/{room.room_id}/entries/")
    assert [json.loads(v)["action"] for v in entries.values()] == ["create"]
