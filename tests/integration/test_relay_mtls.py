"""Mutual TLS on the relays' gRPC port (issue 11): two relays and a control plane
with the cell certificate of `dev_pki`. A meeting spanning both relays works (the
link is dialled over mTLS, the control plane reads the roster over mTLS), and a
caller without a certificate of the cell's CA, or in clear, is refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from client.sdk import RoomsClient, Session, join
from conclave.ice import use_host_addresses
from conclave.processes import EtcdServer, free_port
from conclave.tls import TlsFiles, dev_pki, mutual_channel_credentials
from control_plane.app import ControlPlane
from tests.integration.relay_harness import RelayProcess, relay_call_status, video_frames

pytestmark = pytest.mark.asyncio(loop_scope="module")

REGIONS = ("a", "b")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TlsFiles]:
    return dev_pki(tmp_path_factory.mktemp("pki") / "pki")


def rpc_flags(files: TlsFiles) -> list[str]:
    return ["--rpc-ca", str(files.ca), "--rpc-cert", str(files.cert), "--rpc-key", str(files.key)]


def region_flags(region: str) -> list[str]:
    return ["--region", region, "--link-port", str(free_port())]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def relays(
    etcd: EtcdServer, pki: dict[str, TlsFiles]
) -> AsyncIterator[dict[str, RelayProcess]]:
    use_host_addresses(["127.0.0.1"])
    started = {
        region: RelayProcess(
            f"mtls-{region}",
            etcd.endpoint,
            extra_args=[*region_flags(region), *rpc_flags(pki["cell"])],
        )
        for region in REGIONS
    }
    await asyncio.gather(*(r.start() for r in started.values()))
    try:
        yield started
    finally:
        await asyncio.gather(*(r.stop() for r in started.values()))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def control_plane(etcd: EtcdServer, pki: dict[str, TlsFiles]) -> AsyncIterator[str]:
    plane = ControlPlane([etcd.endpoint], relay_tls=pki["cell"])
    port = await plane.start("127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await plane.stop(grace=0)


async def test_meeting_across_relays_over_mutual_tls(
    relays: dict[str, RelayProcess], control_plane: str
) -> None:
    sessions: list[Session] = []
    async with RoomsClient(control_plane) as rooms:
        room = await rooms.create_room("mtls")
        try:
            publisher = await join(
                rooms, room.room_id, "pub", ["audio", "video"], passcode=room.passcode,
                region="a", join_timeout=30,
            )  # fmt: skip
            sessions.append(publisher)
            subscriber = await join(
                rooms, room.room_id, "sub", [], passcode=room.passcode,
                region="b", join_timeout=30,
            )  # fmt: skip
            sessions.append(subscriber)
            assert publisher.node_id == relays["a"].node_id
            assert subscriber.node_id == relays["b"].node_id
            async with asyncio.timeout(60):  # media crossed the link dialled over mTLS
                while video_frames(subscriber, "pub") < 10:
                    await asyncio.sleep(0.2)
            async with asyncio.timeout(10):  # control plane -> relays over mTLS
                while True:
                    roster = await rooms.list_participants(room.room_id, room.host_key)
                    if {p.display_name for p in roster} == {"pub", "sub"}:
                        break
                    await asyncio.sleep(0.2)
        finally:
            await asyncio.gather(*(s.leave() for s in sessions), return_exceptions=True)


async def test_relay_refuses_callers_without_a_cell_certificate(
    relays: dict[str, RelayProcess], pki: dict[str, TlsFiles], tmp_path: Path
) -> None:
    address = f"127.0.0.1:{relays['a'].rpc_port}"
    cell = pki["cell"]
    # The cell's own certificate gets an answer (an empty roster).
    answered = await relay_call_status(
        grpc.aio.secure_channel(address, mutual_channel_credentials(cell))
    )
    assert answered == grpc.StatusCode.OK
    # No client certificate: the handshake is refused.
    only_ca = grpc.ssl_channel_credentials(root_certificates=cell.ca.read_bytes())
    assert await relay_call_status(grpc.aio.secure_channel(address, only_ca)) == (
        grpc.StatusCode.UNAVAILABLE
    )
    # A client certificate of another CA: refused too.
    other = dev_pki(tmp_path / "other")["cell"]
    foreign = grpc.ssl_channel_credentials(
        root_certificates=cell.ca.read_bytes(),
        private_key=other.key.read_bytes(),
        certificate_chain=other.cert.read_bytes(),
    )
    assert await relay_call_status(grpc.aio.secure_channel(address, foreign)) == (
        grpc.StatusCode.UNAVAILABLE
    )
    # In clear: no TLS, no answer.
    assert await relay_call_status(grpc.aio.insecure_channel(address)) == (
        grpc.StatusCode.UNAVAILABLE
    )
