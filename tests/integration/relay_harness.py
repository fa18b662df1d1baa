"""Real server processes for tests: a relay and a control plane on a test etcd
(and that etcd itself, started off the event loop), and grants signed by a test key.

The relay and the grants are for tests that exercise the relay's signalling
directly, without a control plane in between, so that they can forge, expire and
replay grants at will; the control plane for tests that kill or stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.sdk import Session
from conclave.processes import EtcdCluster, EtcdServer, free_port, wait_for_line
from conclave.store import GRANT_KEYS_PREFIX, NODES_PREFIX, ROOMS_PREFIX, EtcdStore
from protos import grants, relay_pb2_grpc, rooms_pb2
from protos.grant_pb2 import JoinGrant

Etcd = TypeVar("Etcd", EtcdServer, EtcdCluster)

# node id -> the lease its relay process registered under (what a control plane
# reads from the node key and puts into grants).
NODE_LEASES: dict[str, int] = {}


@dataclass
class RelayProcess:
    node_id: str
    etcd_endpoint: str
    http_port: int = field(default_factory=free_port)
    rpc_port: int = field(default_factory=free_port)
    extra_args: list[str] = field(default_factory=list)
    process: asyncio.subprocess.Process | None = None

    @property
    def signal_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/ws"

    async def start(self) -> None:
        self.process = await self._spawn()
        assert self.process.stdout is not None
        await wait_for_line(self.process.stdout, "relay ready", timeout=30)
        await self._record_lease()

    async def _spawn(self) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "--etcd", self.etcd_endpoint,
            "--node-id", self.node_id, "--http-port", str(self.http_port),
            "--rpc-port", str(self.rpc_port), "--ice-address", "127.0.0.1", *self.extra_args,
            stdout=subprocess.PIPE, stderr=self._stderr(),
        )  # fmt: skip

    def _stderr(self) -> int | None:
        return None  # inherited: the relay's log goes to the test's stderr

    async def _record_lease(self) -> None:
        """Note the lease the relay registered under, for the grants minted for it."""
        store = EtcdStore([self.etcd_endpoint])
        await store.connect()
        try:
            value = await store.get(NODES_PREFIX + self.node_id)
        finally:
            await store.close()
        assert value is not None, "a ready relay has registered"
        NODE_LEASES[self.node_id] = int(json.loads(value)["lease"])

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGINT)  # at once; SIGTERM would drain first
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()

    def metric(self, name: str) -> float:
        return scrape_metric(self.http_port, name)


def scrape_metric(http_port: int, name: str, context: ssl.SSLContext | None = None) -> float:
    """Sum of every sample of one metric on a relay's /metrics page (https with a
    `context`)."""
    url = f"{'http' if context is None else 'https'}://127.0.0.1:{http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5, context=context) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + " ", name + "{"))
    )


@dataclass
class ControlPlaneProcess:
    """`python -m control_plane` as a child process, to be stopped or SIGKILLed."""

    etcd: str
    listen: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    extra_args: list[str] = field(default_factory=list)
    process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "control_plane", "--etcd", self.etcd, "--listen", self.listen,
            *self.extra_args, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert self.process.stdout is not None
        await wait_for_line(self.process.stdout, "control-plane ready", timeout=30)

    def kill(self) -> None:
        """SIGKILL: no lease revoked, no call finished, as in a crash."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):  # killed, not reaped yet
            self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


@contextlib.asynccontextmanager
async def running(etcd: Etcd) -> AsyncIterator[Etcd]:
    """`async with running(EtcdServer())`: started and ready, stopped at the end;
    its blocking calls run in a thread, not on the event loop."""
    await asyncio.to_thread(etcd.start)
    try:
        await asyncio.to_thread(etcd.wait_ready)
        yield etcd
    finally:
        await asyncio.to_thread(etcd.stop)


class GrantMinter:
    """Publishes a grant-signing key in etcd, as a control plane would, and signs."""

    def __init__(self, store: EtcdStore) -> None:
        self.store = store
        self.key = Ed25519PrivateKey.generate()

    async def publish(self) -> None:
        public = self.key.public_key()
        await self.store.put(
            GRANT_KEYS_PREFIX + grants.key_id_for(public), grants.encode_public_key(public)
        )

    async def new_room(self, max_participants: int = 100) -> str:
        """A meeting with a fresh random id, as CreateRoom would have made it."""
        room_id = f"room-{uuid.uuid4().hex[:6]}"
        await self.create_room(room_id, max_participants)
        return room_id

    async def create_room(self, room_id: str, max_participants: int = 100) -> None:
        value = {"room_id": room_id, "name": "", "max_participants": max_participants}
        await self.store.put(ROOMS_PREFIX + room_id, json.dumps(value).encode())

    def token(
        self,
        room_id: str,
        participant_id: str,
        node_id: str,
        *,
        name: str = "",
        can_publish: bool = True,
        sources: Sequence[str] | None = None,
        role: str = "participant",
        source_tag: str = "",
        lifetime_s: float = 30.0,
        key: Ed25519PrivateKey | None = None,
        node_lease: int | None = None,
    ) -> str:
        """`sources` is what the grant lets it publish; without it, microphone and
        camera if `can_publish` (as JoinRoom grants a publishing participant)."""
        if sources is None:
            sources = ["microphone", "camera"] if can_publish else []
        grant = JoinGrant(
            room_id=room_id,
            participant_id=participant_id,
            node_id=node_id,
            display_name=name or participant_id,
            sources=list(sources),
            can_subscribe=True,
            expires_at_ms=int((time.time() + lifetime_s) * 1000),
            node_lease=NODE_LEASES.get(node_id, 0) if node_lease is None else node_lease,
            role=role,
            source_tag=source_tag,
        )
        return grants.sign(grant, key or self.key)

    def join_response(
        self, relay: RelayProcess, room_id: str, participant_id: str, name: str
    ) -> rooms_pb2.JoinRoomResponse:
        """What JoinRoom would have returned, for `client.sdk.Session`."""
        return rooms_pb2.JoinRoomResponse(
            room_id=room_id,
            participant_id=participant_id,
            node_id=relay.node_id,
            signal_url=relay.signal_url,
            grant=self.token(room_id, participant_id, relay.node_id, name=name),
        )


def video_frames(session: Session, publisher: str) -> int:
    """Video frames `session` decoded from `publisher` (a display name) so far."""
    figures = session.stats().get(publisher)
    return figures["video_frames_decoded"] if figures else 0


async def wait_for_frames(
    session: Session, publisher: str, count: int, timeout: float = 30
) -> None:
    async with asyncio.timeout(timeout):
        while video_frames(session, publisher) < count:
            await asyncio.sleep(0.1)


async def relay_call_status(channel: grpc.aio.Channel) -> grpc.StatusCode:
    """The status of a harmless RelayService call on `channel` (OK if answered);
    closes the channel. For the tests of who a relay's gRPC port lets in."""
    stub = relay_pb2_grpc.RelayServiceStub(channel)  # type: ignore[no-untyped-call]
    try:
        await stub.ListParticipants(rooms_pb2.ListParticipantsRequest(room_id="x"), timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    finally:
        await channel.close()
    return grpc.StatusCode.OK
