"""The control plane against a real etcd: placement, failover, races, grants, errors.

Relays are faked by node-info keys under leases this test holds (and, where the
roster matters, a tiny in-process RelayService). The etcd server is this module's
own, so nodes registered by other tests cannot sway placement.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import json
import os
import signal
import statistics
import sys
import threading
import time
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from pathlib import Path
from typing import Any

import grpc
import pytest

from conclave.processes import EtcdServer, free_port, wait_for_line
from conclave.store import (
    GRANT_KEYS_PREFIX,
    NODES_PREFIX,
    PLACEMENT_PREFIX,
    ROOMS_PREFIX,
    EtcdStore,
    Lease,
)
from control_plane import passcodes
from control_plane.app import ControlPlane
from control_plane.attempts import Policy
from control_plane.ids import NodeId, RoomId, new_room_id
from control_plane.records import NodeInfo, RoomRecord
from protos import relay_pb2, relay_pb2_grpc, rooms_pb2, rooms_pb2_grpc
from protos.grants import GrantError, decode_public_key, verify

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def etcd_server() -> Iterator[EtcdServer]:
    """Overrides the session server: placement assertions need a cluster of known nodes."""
    server = EtcdServer()
    server.start()
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
async def clean_keyspace(store: EtcdStore) -> AsyncIterator[None]:
    yield
    items, _ = await store.get_prefix("/conclave/")
    for key in items:
        await store.delete(key)


class Relays:
    """Fake relay nodes: node info under a lease of ours, as a relay would write it."""

    def __init__(self, store: EtcdStore) -> None:
        self.store = store
        self.leases: dict[str, Lease] = {}

    async def add(
        self,
        *,
        load: float = 0.0,
        capacity: int = 100,
        draining: bool = False,
        rpc_address: str | None = None,
        advertised_lease: int | None = None,
    ) -> str:
        node_id = f"node-{uuid.uuid4().hex[:8]}"
        lease = await self.store.grant_lease(3)
        info: dict[str, Any] = {
            "node_id": node_id,
            "signal_url": f"ws://127.0.0.1:9/{node_id}/ws",
            # Nothing listens there unless the test says otherwise.
            "rpc_address": rpc_address or f"127.0.0.1:{free_port()}",
            "capacity": capacity,
            "load": load,
            "lease": advertised_lease or lease.id,
        }
        if draining:
            info["draining"] = True
        await self.store.put(NODES_PREFIX + node_id, json.dumps(info).encode(), lease)
        self.leases[node_id] = lease
        return node_id

    async def kill(self, node_id: str) -> None:
        await self.leases.pop(node_id).revoke()

    async def close(self) -> None:
        for lease in self.leases.values():
            await lease.revoke()
        self.leases.clear()


@pytest.fixture
async def relays(store: EtcdStore) -> AsyncIterator[Relays]:
    fake = Relays(store)
    yield fake
    await fake.close()


# Most tests fail joins on purpose now and then, all from 127.0.0.1 and against one
# etcd: without room for that they would lock each other out. The limits have their
# own test below.
GENEROUS = Policy(burst=10_000, per_minute=10_000)


class Replica:
    """One in-process control plane and a client channel to it."""

    def __init__(self, endpoint: str, attempts: Policy = GENEROUS) -> None:
        self.plane = ControlPlane(
            [endpoint], attempts=attempts, trusted_proxies=[ipaddress.ip_network("127.0.0.0/8")]
        )
        self.channel: grpc.aio.Channel | None = None
        self.stub: Any = None

    async def start(self) -> Replica:
        port = await self.plane.start("127.0.0.1", 0)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = rooms_pb2_grpc.RoomServiceStub(channel=self.channel)  # type: ignore[no-untyped-call]
        return self

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        await self.plane.stop(grace=0)


@pytest.fixture
async def replica(etcd_endpoint: str) -> AsyncIterator[Replica]:
    r = await Replica(etcd_endpoint).start()
    yield r
    await r.stop()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition still false after {within} s")
        await asyncio.sleep(0.02)


async def in_view(replica: Replica, nodes: Iterable[str]) -> None:
    """Wait until the replica's watch shows exactly these nodes (it is not instant)."""
    expected = set(nodes)

    async def seen() -> bool:
        return {n.node_id for n in replica.plane.registry.live_nodes()} == expected

    await eventually(seen)


PASSCODE = "tea for two"  # every meeting of these tests


HOST_KEY = "the host key of put_room's meetings"
HOST_KEYS: dict[str, str] = {}  # room id -> host key, of the meetings made here


def host_key_of(room_id: str) -> str:
    return HOST_KEYS.get(room_id, "")


def as_host(request: Any, room_id: str) -> Any:
    """A host call's request, with the meeting's host key (none if unknown here)."""
    return request(room_id=room_id, host_key=host_key_of(room_id))


async def create_room(stub: Any, name: str = "standup") -> rooms_pb2.Room:
    request = rooms_pb2.CreateRoomRequest(name=name, passcode=PASSCODE)
    room: rooms_pb2.Room = await stub.CreateRoom(request)
    HOST_KEYS[room.room_id] = room.host_key
    return room


async def join(
    stub: Any, room_id: str, name: str = "Ada", publish: bool = True, passcode: str = PASSCODE
) -> Any:
    request = rooms_pb2.JoinRoomRequest(
        room_id=room_id, display_name=name, publish=publish, passcode=passcode
    )
    return await stub.JoinRoom(request, timeout=5)


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def placement_of(store: EtcdStore, room_id: str) -> str | None:
    raw = await store.get(PLACEMENT_PREFIX + room_id)
    return None if raw is None else str(json.loads(raw)["node_id"])


async def put_room(store: EtcdStore) -> str:
    """A meeting that exists but was never placed (as if created with no relay up)."""
    room_id = new_room_id()
    record = RoomRecord(
        room_id, "", 1, 100, passcodes.hash_passcode(PASSCODE), passcodes.host_key_digest(HOST_KEY)
    )
    await store.put(ROOMS_PREFIX + room_id, record.to_json())
    HOST_KEYS[room_id] = HOST_KEY
    return room_id


# --- placement -----------------------------------------------------------------------


async def test_rooms_created_back_to_back_land_on_different_nodes(
    replica: Replica, relays: Relays, store: EtcdStore
) -> None:
    nodes = {await relays.add(), await relays.add()}
    await in_view(replica, nodes)
    first = await create_room(replica.stub, "one")
    second = await create_room(replica.stub, "two")
    assert {first.node_id, second.node_id} == nodes
    assert first.room_id != second.room_id
    for room in (first, second):
        assert await placement_of(store, room.room_id) == room.node_id
        got = await replica.stub.GetRoom(as_host(rooms_pb2.GetRoomRequest, room.room_id))
        assert (got.node_id, got.name, got.max_participants) == (room.node_id, room.name, 100)
        record = json.loads(await store.get(ROOMS_PREFIX + room.room_id) or b"{}")
        assert set(record) == {
            "room_id", "name", "created_at_ms", "max_participants", "passcode", "host_key_sha256"
        }  # fmt: skip
        assert PASSCODE not in json.dumps(record)  # only its scrypt hash is kept
        assert room.host_key and room.host_key not in json.dumps(record)
        assert abs(record["created_at_ms"] - time.time() * 1000) < 10_000


async def test_node_death_removes_its_placements_and_join_moves_the_meeting(
    replica: Replica, relays: Relays, store: EtcdStore
) -> None:
    a, b = await relays.add(), await relays.add()
    await in_view(replica, [a, b])
    rooms = [await create_room(replica.stub, f"r{i}") for i in range(4)]
    assert {room.node_id for room in rooms} == {a, b}
    victim = rooms[0].node_id
    survivor = b if victim == a else a
    on_victim = [room.room_id for room in rooms if room.node_id == victim]

    await relays.kill(victim)
    # Straight away, before the watch may have told the replica: must not answer the dead node.
    moved = await join(replica.stub, on_victim[0])
    assert moved.node_id == survivor
    assert await placement_of(store, on_victim[0]) == survivor

    async def victim_placements_gone() -> bool:
        return all([await placement_of(store, r) != victim for r in on_victim])

    await eventually(victim_placements_gone, within=5)
    for room_id in on_victim[1:]:
        assert await placement_of(store, room_id) is None
        assert (await join(replica.stub, room_id)).node_id == survivor
        got = await replica.stub.GetRoom(as_host(rooms_pb2.GetRoomRequest, room_id))
        assert got.node_id == survivor


class FewestRooms:
    """A deterministic PlacementStrategy: fewest meetings, then node id."""

    def choose(self, nodes: Sequence[NodeInfo], rooms_placed: Mapping[NodeId, int]) -> NodeInfo:
        return min(nodes, key=lambda n: (rooms_placed.get(n.node_id, 0), n.node_id))


async def test_own_placement_counts_before_the_watch_reports_it(
    etcd_endpoint: str, relays: Relays, store: EtcdStore
) -> None:
    await relays.add()
    await relays.add()
    plane = ControlPlane([etcd_endpoint], strategy=FewestRooms())
    await plane.store.connect()
    await plane.registry.start()
    await plane.registry.stop()  # freeze the view: no watch event will arrive from now on
    try:
        for _ in range(5):
            first = await plane.placer.ensure_placed(RoomId(await put_room(store)))
            second = await plane.placer.ensure_placed(RoomId(await put_room(store)))
            assert first.node_id != second.node_id
    finally:
        await plane.store.close()


async def test_join_waits_for_a_departed_nodes_placement_to_vanish(
    replica: Replica, relays: Relays, store: EtcdStore
) -> None:
    a, b = await relays.add(), await relays.add()
    await in_view(replica, [a, b])
    room = await create_room(replica.stub)
    victim = room.node_id
    survivor = b if victim == a else a
    # The node key goes first (as a watch may report it), the lease-bound placement later.
    await store.delete(NODES_PREFIX + victim)
    await in_view(replica, [survivor])
    joining = asyncio.ensure_future(join(replica.stub, room.room_id))
    await asyncio.sleep(0.3)
    assert not joining.done()  # not answered with the departed node
    await relays.kill(victim)
    assert (await joining).node_id == survivor


async def test_placement_left_behind_by_a_departed_node_is_unavailable(
    replica: Replica, relays: Relays, store: EtcdStore
) -> None:
    node = await relays.add()
    await in_view(replica, [node])
    room = await create_room(replica.stub)
    other = await relays.add()
    await store.delete(NODES_PREFIX + node)  # lease (and placement) still alive
    await in_view(replica, [other])
    started = time.monotonic()
    err = await rpc_error(join(replica.stub, room.room_id))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert 0.8 < time.monotonic() - started < 3
    assert await placement_of(store, room.room_id) == node  # never overwritten blindly


async def test_node_advertising_an_expired_lease_is_skipped(
    replica: Replica, relays: Relays, store: EtcdStore
) -> None:
    stale = await relays.add(advertised_lease=0x7FFF_0000_0000_0001)  # no such lease
    await in_view(replica, [stale])
    err = await rpc_error(join(replica.stub, await put_room(store)))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    good = await relays.add()
    await in_view(replica, [stale, good])
    for _ in range(5):
        assert (await join(replica.stub, await put_room(store))).node_id == good


async def test_full_and_draining_nodes_take_no_new_meeting(
    replica: Replica, relays: Relays
) -> None:
    await relays.add(load=0.9)
    await relays.add(draining=True)
    ok = await relays.add(load=0.5)
    await in_view(replica, relays.leases)
    for _ in range(3):
        assert (await create_room(replica.stub)).node_id == ok


async def test_no_relay_means_unavailable(replica: Replica, relays: Relays) -> None:
    room = await create_room(replica.stub)  # a meeting may be created ahead of any relay
    assert room.node_id == ""
    err = await rpc_error(join(replica.stub, room.room_id))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "no relay" in (err.details() or "")
    await relays.add(load=0.95)
    await in_view(replica, relays.leases)
    err = await rpc_error(join(replica.stub, room.room_id))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    node = await relays.add()
    await in_view(replica, relays.leases)
    assert (await join(replica.stub, room.room_id)).node_id == node


async def test_in_process_replicas_racing_agree_on_one_node(
    etcd_endpoint: str, relays: Relays, store: EtcdStore
) -> None:
    for _ in range(3):
        await relays.add()
    first, second = Replica(etcd_endpoint), Replica(etcd_endpoint)
    await first.start()
    await second.start()
    try:
        for _ in range(10):
            room_id = await put_room(store)
            answers = await asyncio.gather(
                *(join(r.stub, room_id) for r in (first, second) for _ in range(3))
            )
            assert len({a.node_id for a in answers}) == 1
            items, _ = await store.get_prefix(PLACEMENT_PREFIX + room_id)
            assert list(items) == [PLACEMENT_PREFIX + room_id]
            assert json.loads(items[PLACEMENT_PREFIX + room_id]) == {"node_id": answers[0].node_id}
    finally:
        await first.stop()
        await second.stop()


# --- real processes --------------------------------------------------------------------


async def start_process(
    etcd_endpoint: str, log: Path, *extra: str
) -> tuple[asyncio.subprocess.Process, str]:
    with log.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "control_plane",
            "--etcd", f"http://{etcd_endpoint}", "--listen", "127.0.0.1:0", *extra,
            stdout=asyncio.subprocess.PIPE, stderr=err, cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    assert process.stdout is not None
    try:
        line = await wait_for_line(process.stdout, "control-plane ready", timeout=20)
    except BaseException:
        process.kill()
        await process.wait()
        raise AssertionError(await asyncio.to_thread(log.read_text)) from None
    assert line.startswith("control-plane ready listen=127.0.0.1:")
    return process, line.rsplit("=", 1)[1]


def read_logs(directory: Path) -> str:
    return "\n".join(path.read_text() for path in sorted(directory.glob("*.log")))


async def test_two_processes_racing_join_agree_and_stop_cleanly(
    etcd_endpoint: str, relays: Relays, store: EtcdStore, tmp_path: Path
) -> None:
    for _ in range(3):
        await relays.add()
    keys_before, _ = await store.get_prefix(GRANT_KEYS_PREFIX)
    started = await asyncio.gather(
        start_process(etcd_endpoint, tmp_path / "a.log"),
        start_process(etcd_endpoint, tmp_path / "b.log"),
    )
    processes = [p for p, _ in started]
    channels = [grpc.aio.insecure_channel(address) for _, address in started]
    try:
        stubs = [
            rooms_pb2_grpc.RoomServiceStub(channel=c)  # type: ignore[no-untyped-call]
            for c in channels
        ]
        keys, _ = await store.get_prefix(GRANT_KEYS_PREFIX)
        assert len(keys) == len(keys_before) + 2  # one signing key per replica

        for _ in range(10):
            room_id = await put_room(store)
            answers = await asyncio.gather(*(join(s, room_id) for s in stubs for _ in range(2)))
            assert len({a.node_id for a in answers}) == 1
            items, _ = await store.get_prefix(PLACEMENT_PREFIX + room_id)
            assert len(items) == 1

        # Created on one replica, seen placed on the other at once.
        room = await create_room(stubs[0])
        got = await stubs[1].GetRoom(as_host(rooms_pb2.GetRoomRequest, room.room_id))
        assert got.node_id == room.node_id != ""
    finally:
        for channel in channels:
            await channel.close()
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(p.wait(), 10) for p in processes]
    assert codes == [0, 0], await asyncio.to_thread(read_logs, tmp_path)
    keys_after, _ = await store.get_prefix(GRANT_KEYS_PREFIX)
    assert keys_after == keys_before  # each replica revoked its key's lease on SIGTERM


# --- grants ------------------------------------------------------------------------


async def test_join_grant_verifies_with_the_published_key(
    replica: Replica, relays: Relays, store: EtcdStore
) -> None:
    await relays.add()
    await in_view(replica, relays.leases)
    room = await create_room(replica.stub)
    before = int(time.time() * 1000)
    response = await join(replica.stub, room.room_id, name="Grace Hopper", publish=False)
    assert response.room_id == room.room_id
    assert response.node_id == room.node_id
    assert response.signal_url == f"ws://127.0.0.1:9/{room.node_id}/ws"
    assert response.participant_id.startswith("p_")

    items, _ = await store.get_prefix(GRANT_KEYS_PREFIX)
    keys = {key[len(GRANT_KEYS_PREFIX) :]: decode_public_key(value) for key, value in items.items()}
    grant = verify(response.grant, keys, response.node_id)
    assert grant.room_id == room.room_id
    assert grant.participant_id == response.participant_id
    assert grant.display_name == "Grace Hopper"
    assert grant.node_lease == relays.leases[response.node_id].id  # this run of the node
    assert grant.can_subscribe and not grant.can_publish
    assert grant.expires_at_ms == response.grant_expires_at_ms
    assert before + 29_000 <= grant.expires_at_ms <= int(time.time() * 1000) + 31_000
    with pytest.raises(GrantError) as info:
        verify(response.grant, keys, "some-other-node")
    assert info.value.code == "wrong_node"

    publisher = await join(replica.stub, room.room_id, publish=True)
    assert verify(publisher.grant, keys, publisher.node_id).can_publish
    assert publisher.participant_id != response.participant_id


# --- errors ----------------------------------------------------------------------------


async def test_unknown_room_is_not_found(replica: Replica, relays: Relays) -> None:
    await relays.add()
    await in_view(replica, relays.leases)
    room_id = new_room_id()
    err = await rpc_error(join(replica.stub, room_id))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert room_id not in (err.details() or "")  # nothing to compare replies by
    for call in (
        replica.stub.GetRoom(as_host(rooms_pb2.GetRoomRequest, room_id)),
        replica.stub.ListParticipants(as_host(rooms_pb2.ListParticipantsRequest, room_id)),
        replica.stub.EndRoom(as_host(rooms_pb2.EndRoomRequest, room_id)),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND


async def test_unknown_meeting_and_wrong_passcode_look_alike(
    replica: Replica, relays: Relays
) -> None:
    """Same status, same message, same time: the reply is no existence oracle."""
    await relays.add()
    await in_view(replica, relays.leases)
    room = await create_room(replica.stub)

    async def attempt(room_id: str, passcode: str) -> tuple[str, str, float]:
        start = time.perf_counter()
        err = await rpc_error(join(replica.stub, room_id, passcode=passcode))
        return err.code().name, err.details() or "", time.perf_counter() - start

    wrong, unknown = [], []
    for i in range(12):  # interleaved, so load on the machine hits both alike
        wrong.append(await attempt(room.room_id, f"guess {i}"))
        unknown.append(await attempt(new_room_id(), PASSCODE))
    assert (
        {(code, text) for code, text, _ in wrong}
        == {(code, text) for code, text, _ in unknown}
        == {("NOT_FOUND", "no meeting with this id and passcode")}
    )
    wrong_s = statistics.median(t for _, _, t in wrong)
    unknown_s = statistics.median(t for _, _, t in unknown)
    # Both run the scrypt check (~36 ms); skipping it for unknown ids would make
    # them an order of magnitude faster.
    assert 0.6 < unknown_s / wrong_s < 1.6, (unknown_s, wrong_s)
    assert (await join(replica.stub, room.room_id)).node_id == room.node_id


@pytest.mark.parametrize(
    ("room_id", "name"),
    [
        ("", "Ada"),
        ("a/b", "Ada"),
        ("x" * 65, "Ada"),
        (None, ""),
        (None, "   "),
        (None, "x" * 65),
        (None, "bell\x07"),
    ],
)
async def test_bad_arguments_are_invalid(
    replica: Replica, relays: Relays, room_id: str | None, name: str
) -> None:
    await relays.add()
    await in_view(replica, relays.leases)
    room = await create_room(replica.stub)
    err = await rpc_error(join(replica.stub, room.room_id if room_id is None else room_id, name))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_longest_display_name_is_accepted(replica: Replica, relays: Relays) -> None:
    await relays.add()
    await in_view(replica, relays.leases)
    room = await create_room(replica.stub)
    assert (await join(replica.stub, room.room_id, "é" * 64)).node_id == room.node_id


async def test_create_room_refuses_oversized_fields(replica: Replica) -> None:
    for request in (
        rooms_pb2.CreateRoomRequest(name="x" * 101),
        rooms_pb2.CreateRoomRequest(max_participants=100_000),
    ):
        err = await rpc_error(replica.stub.CreateRoom(request))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- roster and ending, through a RelayService ---------------------------------------------


class FakeRelayService(relay_pb2_grpc.RelayServiceServicer):
    def __init__(self) -> None:
        self.closed: list[str] = []

    async def ListParticipants(
        self, request: rooms_pb2.ListParticipantsRequest, context: Any
    ) -> rooms_pb2.ListParticipantsResponse:
        track = rooms_pb2.Track(track_id="t1", kind="audio")
        someone = rooms_pb2.Participant(
            participant_id="p_x", display_name="Ada", joined_at_ms=5, tracks=[track]
        )
        return rooms_pb2.ListParticipantsResponse(participants=[someone])

    async def CloseRoom(
        self, request: relay_pb2.CloseRoomRequest, context: Any
    ) -> relay_pb2.CloseRoomResponse:
        self.closed.append(request.room_id)
        return relay_pb2.CloseRoomResponse(disconnected=1)


@pytest.fixture
async def relay_service() -> AsyncIterator[tuple[FakeRelayService, str]]:
    service = FakeRelayService()
    server = grpc.aio.server()
    relay_pb2_grpc.add_RelayServiceServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield service, f"127.0.0.1:{port}"
    await server.stop(None)


async def test_roster_comes_from_the_relay_and_end_room_closes_it(
    replica: Replica,
    relays: Relays,
    store: EtcdStore,
    relay_service: tuple[FakeRelayService, str],
) -> None:
    service, address = relay_service
    await relays.add(rpc_address=address)
    await in_view(replica, relays.leases)
    room = await create_room(replica.stub)
    roster = await replica.stub.ListParticipants(
        as_host(rooms_pb2.ListParticipantsRequest, room.room_id)
    )
    assert [(p.participant_id, p.display_name) for p in roster.participants] == [("p_x", "Ada")]
    assert roster.participants[0].tracks[0].kind == "audio"

    await replica.stub.EndRoom(as_host(rooms_pb2.EndRoomRequest, room.room_id))
    assert service.closed == [room.room_id]
    assert await store.get(ROOMS_PREFIX + room.room_id) is None
    assert await placement_of(store, room.room_id) is None
    err = await rpc_error(join(replica.stub, room.room_id))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_unreachable_relay(replica: Replica, relays: Relays, store: EtcdStore) -> None:
    node = await relays.add()  # its rpc_address has no listener
    await in_view(replica, relays.leases)
    room = await create_room(replica.stub)
    err = await rpc_error(
        replica.stub.ListParticipants(as_host(rooms_pb2.ListParticipantsRequest, room.room_id))
    )
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert node in (err.details() or "")
    # Ending the meeting still works: the store is the authority for its existence.
    await replica.stub.EndRoom(as_host(rooms_pb2.EndRoomRequest, room.room_id))
    assert await store.get(ROOMS_PREFIX + room.room_id) is None


async def test_unplaced_room_has_an_empty_roster(replica: Replica, store: EtcdStore) -> None:
    room_id = await put_room(store)
    roster = await replica.stub.ListParticipants(
        as_host(rooms_pb2.ListParticipantsRequest, room_id)
    )
    assert list(roster.participants) == []
    got = await replica.stub.GetRoom(as_host(rooms_pb2.GetRoomRequest, room_id))
    assert got.node_id == ""


# --- attempt limits ------------------------------------------------------------------


# Attempts in flight at once, and the pace: attacker, two replicas, etcd and the
# timed joins share this machine's two cores, so a faster attack would measure the
# test's own CPU (at 2 000/s unpaced, the attacker alone took a core).
ATTACK_BATCH = 10
ATTACK_RATE = 500  # attempts per second


async def test_passcode_guessing_is_locked_out_across_sources_and_replicas(
    etcd_endpoint: str, relays: Relays, tmp_path: Path
) -> None:
    """10 000 wrong passcodes against one meeting from five addresses, through two
    replica processes that share their limits in etcd: none gets in, the lockout
    holds them off, unrelated joins stay fast, and the real participant gets in
    once it lifts."""
    limits = ["--attempt-burst", "5", "--attempts-per-minute", "5", "--lockout", "1",
              "--max-lockout", "2", "--trusted-proxy", "127.0.0.0/8"]  # fmt: skip
    await relays.add()
    started = await asyncio.gather(
        *(start_process(etcd_endpoint, tmp_path / f"{i}.log", *limits) for i in range(2))
    )
    channels = [grpc.aio.insecure_channel(address) for _, address in started]
    stubs = [rooms_pb2_grpc.RoomServiceStub(channel=c) for c in channels]  # type: ignore[no-untyped-call]
    try:
        room = await create_room(stubs[0], "target")
        other = await create_room(stubs[0], "unrelated")
        tag = uuid.uuid4().hex[:6]  # fresh addresses: limits live in etcd across tests
        sources = [f"203.0.113.{i}-{tag}" for i in range(5)]

        async def guess(i: int) -> str:
            request = rooms_pb2.JoinRoomRequest(
                room_id=room.room_id, display_name="x", passcode=f"guess {i}"
            )
            metadata = (("x-forwarded-for", sources[i % len(sources)]),)
            try:
                await stubs[i % 2].JoinRoom(request, metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError as err:
                return str(err.code().name)
            return "OK"

        def unrelated(address: str, stop: threading.Event) -> list[float]:
            """Joins of another meeting while the attack runs, timed on a thread of
            their own (the attack's client work stays off their clock)."""

            async def run() -> list[float]:
                latencies: list[float] = []
                async with grpc.aio.insecure_channel(address) as channel:
                    stub = rooms_pb2_grpc.RoomServiceStub(channel=channel)  # type: ignore[no-untyped-call]
                    request = rooms_pb2.JoinRoomRequest(
                        room_id=other.room_id, display_name="y", passcode=PASSCODE
                    )
                    metadata = (("x-forwarded-for", f"192.0.2.1-{tag}"),)
                    # This thread's first call sets up its channel: not part of a join.
                    await stub.JoinRoom(request, metadata=metadata, timeout=10)
                    while not stop.is_set() and len(latencies) < 1000:
                        start = time.perf_counter()
                        await stub.JoinRoom(request, metadata=metadata, timeout=10)
                        latencies.append(time.perf_counter() - start)
                        await asyncio.sleep(0.01)
                return latencies

            return asyncio.run(run())

        results: collections.Counter[str] = collections.Counter()
        stop = threading.Event()
        calm: asyncio.Task[list[float]] | None = None
        try:
            began = time.perf_counter()
            async with asyncio.timeout(120):
                for batch in range(0, 10_000, ATTACK_BATCH):
                    if batch == 500:
                        # Timed from here: the first tries of each source and of
                        # the meeting (5 each) were scrypt-checked; the rest is
                        # refused before hashing.
                        calm = asyncio.create_task(
                            asyncio.to_thread(unrelated, started[1][1], stop)
                        )
                    results.update(
                        await asyncio.gather(
                            *(guess(i) for i in range(batch, batch + ATTACK_BATCH))
                        )
                    )
                    due = began + (batch + ATTACK_BATCH) / ATTACK_RATE
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
            rate = 10_000 / (time.perf_counter() - began)
        finally:
            stop.set()
        assert calm is not None
        timeline = await calm
        latencies = sorted(timeline)
        assert results["OK"] == 0, results
        assert sum(results.values()) == 10_000
        assert results["RESOURCE_EXHAUSTED"] >= 9_900, results  # refused before scrypt
        assert set(results) <= {"NOT_FOUND", "RESOURCE_EXHAUSTED"}, results
        assert len(latencies) >= 100
        p99 = latencies[int(0.99 * len(latencies))]
        assert p99 < 0.1, (p99, timeline[:3], len(latencies), f"{rate:.0f} attempts/s")

        # The lockout lifts; the participant with the passcode gets in.
        async with asyncio.timeout(10):
            while True:
                try:
                    joined = await join(stubs[0], room.room_id)
                    break
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
                    await asyncio.sleep(0.2)
        assert joined.room_id == room.room_id
    finally:
        for channel in channels:
            await channel.close()
        for process, _ in started:
            process.terminate()
            await process.wait()
