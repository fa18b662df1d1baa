"""API credentials on real control-plane replicas and etcd (control_plane/access.py).

Every RoomService method is found from the service descriptor, so a method added
without an entry in `access.POLICY` fails here. Each protected one is called with
no credentials, a revoked key, an expired token, a tampered token and another
organisation's key, and must be refused with the right status; the right
credentials must get past the check. Revocation reaches every replica in well under
a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import pytest_asyncio

from conclave.credentials import (
    API_KEYS_PREFIX,
    ApiKey,
    find_key,
    key_record,
    mint_token,
    new_key,
)
from conclave.processes import EtcdServer, free_port
from conclave.store import EtcdStore
from control_plane import access
from control_plane.app import ControlPlane
from protos import rooms_pb2, rooms_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="module")

SERVICE = rooms_pb2.DESCRIPTOR.services_by_name["RoomService"]
REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


class Cluster:
    """Two replicas on one etcd, their stubs, and keys of two organisations."""

    def __init__(self, etcd: str) -> None:
        self.replicas = [ControlPlane([etcd]), ControlPlane([etcd])]
        self.http_port = free_port()
        self.stubs: list[Any] = []
        self.channels: list[grpc.aio.Channel] = []
        own = find_key()  # the run's key (tests/conftest.py), registered by each replica
        assert own is not None
        self.key: ApiKey = own
        self.other_org = new_key("beta")
        self.revoked = new_key(own.organisation)
        self.store = EtcdStore([etcd])

    async def start(self) -> None:
        await self.store.connect()
        for key in (self.other_org, self.revoked):
            await self.store.put(API_KEYS_PREFIX + key.key_id, key_record(key))
        for i, replica in enumerate(self.replicas):
            port = await replica.start("127.0.0.1", 0, self.http_port if i == 0 else None)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            self.channels.append(channel)
            self.stubs.append(rooms_pb2_grpc.RoomServiceStub(channel))  # type: ignore[no-untyped-call]
        await self.store.delete(API_KEYS_PREFIX + self.revoked.key_id)
        async with asyncio.timeout(5):  # until both replicas' watches have seen it
            while any(r.api_keys.record(self.revoked.key_id) for r in self.replicas):
                await asyncio.sleep(0.01)

    async def stop(self) -> None:
        for channel in self.channels:
            await channel.close()
        for replica in self.replicas:
            await replica.stop()
        await self.store.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(etcd: EtcdServer) -> AsyncIterator[Cluster]:
    made = Cluster(etcd.endpoint)
    await made.start()
    try:
        yield made
    finally:
        await made.stop()


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def tampered(token: str) -> str:
    head, claims, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    return ".".join((head, claims, flipped))


def requests(room_id: str, passcode: str) -> dict[str, Any]:
    """A request for every method that passes validation, so the answer is about
    credentials (or, with them, about the meeting)."""
    target = {"room_id": room_id, "participant_id": "p_nobody"}
    return {
        "CreateRoom": rooms_pb2.CreateRoomRequest(name="x"),
        "JoinRoom": rooms_pb2.JoinRoomRequest(
            room_id=room_id, display_name="ann", passcode=passcode
        ),
        "GetRoom": rooms_pb2.GetRoomRequest(room_id=room_id),
        "ListParticipants": rooms_pb2.ListParticipantsRequest(room_id=room_id),
        "EndRoom": rooms_pb2.EndRoomRequest(room_id=room_id),
        "UpdateRoom": rooms_pb2.UpdateRoomRequest(room_id=room_id, locked=True),
        "AdmitParticipants": rooms_pb2.AdmitParticipantsRequest(room_id=room_id, all=True),
        "DenyParticipants": rooms_pb2.DenyParticipantsRequest(
            room_id=room_id, participant_ids=["p_nobody"]
        ),
        "RemoveParticipant": rooms_pb2.ParticipantRequest(**target),
        "MuteParticipant": rooms_pb2.MuteParticipantRequest(**target, source="microphone"),
        "SetPublishRights": rooms_pb2.SetPublishRightsRequest(**target, sources=["microphone"]),
        "SetRole": rooms_pb2.SetRoleRequest(**target, role="cohost"),
        "GetAuditLog": rooms_pb2.GetAuditLogRequest(room_id=room_id),
    }


async def call(stub: Any, method: str, request: Any, metadata: Any = ()) -> grpc.StatusCode:
    try:
        await getattr(stub, method)(request, metadata=metadata or None, timeout=10)
    except grpc.aio.AioRpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


async def new_meeting(cluster: Cluster) -> rooms_pb2.Room:
    room: rooms_pb2.Room = await cluster.stubs[0].CreateRoom(
        rooms_pb2.CreateRoomRequest(name="credentials"),
        metadata=bearer(mint_token(cluster.key)),
    )
    return room


async def test_every_method_has_an_access_rule() -> None:
    """A new RPC cannot go out unprotected: it needs an entry, and the service's
    decorator looks it up when the module is imported."""
    assert {m.name for m in SERVICE.methods} == set(access.POLICY)
    assert set(access.POLICY.values()) <= {access.INVITED, access.API_KEY, access.MEETING}


@pytest.mark.parametrize("method", [m.name for m in SERVICE.methods])
async def test_each_method_refuses_bad_credentials_and_takes_good_ones(
    cluster: Cluster, method: str
) -> None:
    room = await new_meeting(cluster)
    request = requests(room.room_id, room.passcode)[method]
    stub = cluster.stubs[1]  # not the replica that created it
    policy = access.POLICY[method]
    now = time.time()
    bad: dict[str, tuple[Any, grpc.StatusCode]] = {
        "revoked key": (bearer(mint_token(cluster.revoked)), grpc.StatusCode.UNAUTHENTICATED),
        "expired token": (
            bearer(mint_token(cluster.key, now=now - 2000)),
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        "tampered token": (
            bearer(tampered(mint_token(cluster.key))),
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        "not a token": ((("authorization", "Bearer nonsense"),), grpc.StatusCode.UNAUTHENTICATED),
    }
    if policy != access.INVITED:
        bad["no credentials"] = ((), grpc.StatusCode.UNAUTHENTICATED)
    if policy == access.MEETING:
        bad["another organisation's key"] = (
            bearer(mint_token(cluster.other_org)),
            grpc.StatusCode.PERMISSION_DENIED,
        )
    for what, (metadata, expected) in bad.items():
        code = await call(stub, method, request, metadata)
        assert code == expected, f"{method} with {what}: {code}"
    # The right credentials get past the check (the call may still fail on its own
    # terms: no such participant, no relay to ask).
    good: dict[str, Any] = {"own organisation's key": bearer(mint_token(cluster.key))}
    if policy == access.INVITED:
        good["no credentials"] = ()
    if policy == access.MEETING:
        request.host_key = room.host_key
        good["the host key alone"] = ()
    for what, metadata in good.items():
        code = await call(stub, method, request, metadata)
        assert code not in REFUSED, f"{method} with {what}: {code}"
        if method == "EndRoom":
            break  # it ended: the next one would be about a missing meeting


async def test_revoking_a_key_reaches_every_replica_within_a_second(cluster: Cluster) -> None:
    key = new_key(cluster.key.organisation)
    await cluster.store.put(API_KEYS_PREFIX + key.key_id, key_record(key))
    request = rooms_pb2.CreateRoomRequest(name="revocation")

    async def accepted(stub: Any) -> bool:
        code = await call(stub, "CreateRoom", request, bearer(mint_token(key)))
        return bool(code == grpc.StatusCode.OK)

    async def until(condition: Callable[[], Any], timeout: float) -> float:
        started = time.monotonic()
        async with asyncio.timeout(timeout):
            while not await condition():
                await asyncio.sleep(0.02)
        return time.monotonic() - started

    await until(lambda: _all(accepted, cluster.stubs), 5)  # both watched it arrive
    await cluster.store.delete(API_KEYS_PREFIX + key.key_id)
    took = await until(lambda: _none(accepted, cluster.stubs), 5)
    print(f"revocation refused by both replicas after {took:.3f} s")
    assert took < 1.0


async def _all(check: Callable[[Any], Any], stubs: list[Any]) -> bool:
    return all([await check(s) for s in stubs])


async def _none(check: Callable[[Any], Any], stubs: list[Any]) -> bool:
    return not any([await check(s) for s in stubs])


async def test_meetings_belong_to_the_organisation_that_created_them(cluster: Cluster) -> None:
    """Another organisation's key cannot act on a meeting, and its own meetings are
    out of reach of the first organisation's key."""
    theirs: rooms_pb2.Room = await cluster.stubs[0].CreateRoom(
        rooms_pb2.CreateRoomRequest(name="beta's"), metadata=bearer(mint_token(cluster.other_org))
    )
    ours = await new_meeting(cluster)
    for room, key, expected in (
        (theirs, cluster.other_org, grpc.StatusCode.OK),
        (theirs, cluster.key, grpc.StatusCode.PERMISSION_DENIED),
        (ours, cluster.other_org, grpc.StatusCode.PERMISSION_DENIED),
    ):
        code = await call(
            cluster.stubs[1],
            "GetRoom",
            rooms_pb2.GetRoomRequest(room_id=room.room_id),
            bearer(mint_token(key)),
        )
        assert code == expected


async def test_the_web_page_creates_meetings_only_where_the_operator_allows_it(
    cluster: Cluster,
) -> None:
    """Without an API key the gateway's create is refused (401) unless the replica
    runs with --web-create-organisation; with a key in the Authorization header it
    works either way."""
    url = f"http://127.0.0.1:{cluster.http_port}/api/rooms"

    def post(headers: dict[str, str]) -> int:
        request = urllib.request.Request(
            url, data=json.dumps({"name": "web"}).encode(), method="POST",
            headers={"Content-Type": "application/json", **headers},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    assert await asyncio.to_thread(post, {}) == 401
    token = mint_token(cluster.key)
    assert await asyncio.to_thread(post, {"Authorization": f"Bearer {token}"}) == 200


async def test_rotating_an_api_key_refuses_nothing_signed_with_the_new_one(
    cluster: Cluster,
) -> None:
    """docs/security.md, "Key rotation": add the new key, move clients to it, revoke
    the old one. A meeting made under the old key stays the organisation's, and no
    request signed with the new key is refused at any step, on either replica."""
    old, new = new_key(cluster.key.organisation), new_key(cluster.key.organisation)
    await cluster.store.put(API_KEYS_PREFIX + old.key_id, key_record(old))
    room: rooms_pb2.Room | None = None
    async with asyncio.timeout(5):
        while room is None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                room = await cluster.stubs[0].CreateRoom(
                    rooms_pb2.CreateRoomRequest(name="before rotation"),
                    metadata=bearer(mint_token(old)),
                )
            await asyncio.sleep(0.02)
    get = rooms_pb2.GetRoomRequest(room_id=room.room_id)

    async def codes(key: ApiKey) -> set[grpc.StatusCode]:
        return {await call(stub, "GetRoom", get, bearer(mint_token(key))) for stub in cluster.stubs}

    await cluster.store.put(API_KEYS_PREFIX + new.key_id, key_record(new))
    async with asyncio.timeout(5):  # both replicas know the new key: clients move
        while await codes(new) != {grpc.StatusCode.OK}:
            await asyncio.sleep(0.02)
    await cluster.store.delete(API_KEYS_PREFIX + old.key_id)
    seen_new: set[grpc.StatusCode] = set()
    async with asyncio.timeout(5):
        while await codes(old) != {grpc.StatusCode.UNAUTHENTICATED}:
            seen_new |= await codes(new)
    seen_new |= await codes(new)
    assert seen_new == {grpc.StatusCode.OK}
