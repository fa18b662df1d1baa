"""Limits on the control plane's API (docs/security.md, "API credentials"): how fast
one API key may create meetings (control_plane/access.py: CreateLimiter), and how
big a request may be (gRPC's `max_receive_message_length`, the gateway's body cap).

Two in-process replicas on this module's etcd, with small creation limits (burst 3,
6 a minute: one back every 10 s, so none comes back during a test). Every test that
creates meetings uses keys of its own: buckets are per key and per replica.
"""

from __future__ import annotations

import asyncio
import re
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from conclave.credentials import API_KEYS_PREFIX, ApiKey, key_record, mint_token, new_key
from conclave.processes import EtcdServer, free_port
from conclave.store import EtcdStore
from control_plane.access import WEB_BUCKET, CreateLimiter, TooManyCreations
from control_plane.app import MAX_REQUEST_BYTES, ControlPlane
from control_plane.gateway import MAX_BODY_BYTES
from protos import rooms_pb2, rooms_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="module")

BURST, PER_MINUTE = 3, 6.0
LIMITED = "conclave_control_creates_limited_total"


class Cluster:
    """Two replicas with small creation limits; the first serves HTTP and lets the
    web page create meetings without a key."""

    def __init__(self, etcd: str) -> None:
        self.replicas = [
            ControlPlane(
                [etcd],
                create_burst=BURST,
                creates_per_minute=PER_MINUTE,
                web_organisation="web" if i == 0 else "",
            )
            for i in range(2)
        ]
        self.http_port = free_port()
        self.store = EtcdStore([etcd])
        self.channels: list[grpc.aio.Channel] = []
        self.stubs: list[Any] = []

    async def start(self) -> None:
        await self.store.connect()
        for i, replica in enumerate(self.replicas):
            port = await replica.start("127.0.0.1", 0, self.http_port if i == 0 else None)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            self.channels.append(channel)
            self.stubs.append(rooms_pb2_grpc.RoomServiceStub(channel))  # type: ignore[no-untyped-call]

    async def stop(self) -> None:
        for channel in self.channels:
            await channel.close()
        for replica in self.replicas:
            await replica.stop()
        await self.store.close()

    async def new_key(self) -> ApiKey:
        """A key of its own, registered and seen by both replicas."""
        key = new_key("tests")
        await self.store.put(API_KEYS_PREFIX + key.key_id, key_record(key))
        async with asyncio.timeout(5):
            while not all(r.api_keys.record(key.key_id) for r in self.replicas):
                await asyncio.sleep(0.01)
        return key

    def limited(self, replica: int) -> float:
        value = self.replicas[replica].metrics.registry.get_sample_value(LIMITED)
        assert value is not None
        return value

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """POST /api/rooms on the first replica: (status, headers)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/api/rooms", data=body, method="POST",
            headers={"Content-Type": "application/json", **(headers or {})},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status), response.headers
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(etcd: EtcdServer) -> AsyncIterator[Cluster]:
    made = Cluster(etcd.endpoint)
    await made.start()
    try:
        yield made
    finally:
        await made.stop()


def bearer(key: ApiKey) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {mint_token(key)}"),)


async def create(stub: Any, key: ApiKey, name: str = "limits") -> tuple[grpc.StatusCode, str]:
    try:
        await stub.CreateRoom(rooms_pb2.CreateRoomRequest(name=name), metadata=bearer(key))
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


# --- creation limits --------------------------------------------------------------------


async def test_a_key_creates_its_burst_then_is_told_when_to_retry(cluster: Cluster) -> None:
    """The first `burst` creations pass, the next is RESOURCE_EXHAUSTED with a wait;
    another key, and the same key on another replica, are not affected."""
    key, other = await cluster.new_key(), await cluster.new_key()
    before = cluster.limited(0)
    for _ in range(BURST):
        assert (await create(cluster.stubs[0], key))[0] == grpc.StatusCode.OK
    code, details = await create(cluster.stubs[0], key)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    wait = re.search(r"try again in (\d+) s", details)
    assert wait is not None and 1 <= int(wait.group(1)) <= 60 / PER_MINUTE, details
    assert cluster.limited(0) == before + 1
    assert (await create(cluster.stubs[0], other))[0] == grpc.StatusCode.OK
    # Per replica: N replicas let a key create at most N times as fast.
    assert (await create(cluster.stubs[1], key))[0] == grpc.StatusCode.OK


async def test_the_web_page_shares_one_bucket(cluster: Cluster) -> None:
    """Creations without a key (--web-create-organisation) share the "web" bucket;
    over it the gateway answers 429 with Retry-After."""
    statuses = []
    for _ in range(BURST + 1):
        status, headers = await asyncio.to_thread(cluster.post, b'{"name": "web"}')
        statuses.append(status)
    assert statuses == [200] * BURST + [429], statuses
    assert 1 <= int(headers["Retry-After"]) <= 60 / PER_MINUTE
    assert WEB_BUCKET in cluster.replicas[0].creates


async def test_a_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    limiter = CreateLimiter(BURST, PER_MINUTE, clock=lambda: now[0])
    for _ in range(BURST):
        limiter.take("k")
    with pytest.raises(TooManyCreations) as refused:
        limiter.take("k")
    assert refused.value.retry_after == pytest.approx(10.0)
    now[0] = 9.9
    with pytest.raises(TooManyCreations):
        limiter.take("k")
    now[0] = 10.0  # a refusal spends nothing: one is back 10 s after the burst
    limiter.take("k")


async def test_idle_full_buckets_are_dropped() -> None:
    """A bucket idle long enough to be full is forgotten: the map holds only keys
    that created a meeting in the last burst / rate seconds (30 s here)."""
    now = [0.0]
    limiter = CreateLimiter(BURST, PER_MINUTE, clock=lambda: now[0])
    for i in range(1000):
        limiter.take(f"k{i}")
    assert len(limiter) == 1000
    now[0] = 29.0
    limiter.take("late")
    assert len(limiter) == 1001
    now[0] = 30.0
    limiter.take("later")
    assert len(limiter) == 2 and "late" in limiter and "later" in limiter


# --- request sizes ----------------------------------------------------------------------


async def test_an_oversized_request_is_refused_by_grpc_before_any_handler(
    cluster: Cluster,
) -> None:
    key = await cluster.new_key()
    code, details = await create(cluster.stubs[0], key, name="x" * 100 * 1024)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in details, details  # gRPC's words, not a handler's
    assert key.key_id not in cluster.replicas[0].creates  # CreateRoom never ran
    assert (await create(cluster.stubs[0], key))[0] == grpc.StatusCode.OK  # still serving


async def test_the_largest_legitimate_request_fits(cluster: Cluster) -> None:
    """AdmitParticipants naming a full meeting (1000 issued participant ids) reaches
    its handler, which finds no participants (no relay runs here)."""
    key = await cluster.new_key()
    room = await cluster.stubs[0].CreateRoom(
        rooms_pb2.CreateRoomRequest(name="big"), metadata=bearer(key)
    )
    request = rooms_pb2.AdmitParticipantsRequest(
        room_id=room.room_id,
        host_key=room.host_key,
        participant_ids=[f"p_{i:016d}" for i in range(1000)],  # as long as issued ids
    )
    assert 16 * 1024 < request.ByteSize() < MAX_REQUEST_BYTES
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await cluster.stubs[0].AdmitParticipants(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND  # no such participant


async def test_an_oversized_gateway_body_gets_413(cluster: Cluster) -> None:
    body = b'{"name": "' + b"x" * MAX_BODY_BYTES + b'"}'
    status, _ = await asyncio.to_thread(cluster.post, body)
    assert status == 413
    status, _ = await asyncio.to_thread(
        cluster.post, b'{"name": "ok"}', {"Authorization": f"Bearer {mint_token(new_key('x'))}"}
    )
    assert status == 401  # still serving (an unregistered key)
