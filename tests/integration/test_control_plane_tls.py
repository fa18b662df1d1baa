"""The control plane's public API over TLS (issue 11): `RoomsClient` with the CA
gets in, without it or with another CA it does not; on the wire neither the
meeting nor the API token shows, while the same calls in clear do; the HTTP
gateway serves HTTPS and nothing in clear."""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client.errors import ConclaveError
from client.rooms import RoomsClient
from conclave.credentials import TOKEN_PREFIX, find_key
from conclave.processes import free_port
from conclave.tls import TlsFiles, dev_pki
from control_plane.app import ControlPlane
from tests.integration.capture import LoopbackCapture

HOST = "127.0.0.1"


class Replica:
    """An in-process ControlPlane on free ports: gRPC `port`, HTTP `http_port`."""

    def __init__(self, etcd_endpoint: str, tls: TlsFiles | None) -> None:
        self.plane = ControlPlane([etcd_endpoint], tls=tls)
        self.http_port = free_port()
        self.port = 0

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    async def start(self) -> Replica:
        self.port = await self.plane.start(HOST, 0, self.http_port)
        return self

    async def stop(self) -> None:
        await self.plane.stop(grace=None)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, TlsFiles]:
    return dev_pki(tmp_path / "pki")


@pytest.fixture
async def secure(etcd_endpoint: str, pki: dict[str, TlsFiles]) -> AsyncIterator[Replica]:
    replica = await Replica(etcd_endpoint, pki["control-plane"]).start()
    yield replica
    await replica.stop()


async def test_client_with_the_ca_creates_and_joins(
    secure: Replica, pki: dict[str, TlsFiles]
) -> None:
    async with RoomsClient(secure.target, ca=pki["control-plane"].ca) as rooms:
        room = await rooms.create_room("tls meeting")
        assert (await rooms.get_room(room.room_id, room.host_key)).name == "tls meeting"
        try:
            await rooms.join_room(room.room_id, "Ada", publish=False, passcode=room.passcode)
        except ConclaveError as exc:  # no relay runs here: the control plane said so
            assert exc.code == "UNAVAILABLE" and "relay" in str(exc), exc
            assert "TLS" not in str(exc)


async def test_the_ca_comes_from_the_environment(
    secure: Replica, pki: dict[str, TlsFiles], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONCLAVE_CA_FILE", str(pki["control-plane"].ca))
    async with RoomsClient(secure.target) as rooms:
        assert rooms.ca == pki["control-plane"].ca
        await rooms.create_room("from the environment")


async def test_clients_without_the_ca_are_refused(secure: Replica, tmp_path: Path) -> None:
    async with RoomsClient(secure.target, ca=None, timeout=5) as rooms:
        with pytest.raises(ConclaveError) as in_clear:
            await rooms.create_room("in clear")
    assert in_clear.value.code == "UNAVAILABLE", in_clear.value
    assert "CONCLAVE_CA_FILE" in str(in_clear.value)  # the hint: it may serve TLS
    other = dev_pki(tmp_path / "other")["control-plane"].ca
    async with RoomsClient(secure.target, ca=other, timeout=5) as rooms:
        with pytest.raises(ConclaveError) as wrong_ca:
            await rooms.create_room("another CA")
    assert wrong_ca.value.code == "UNAVAILABLE", wrong_ca.value
    assert "TLS handshake failed" in str(wrong_ca.value)


async def _create_and_get(replica: Replica, ca: Path | None, name: str) -> list[bytes]:
    """CreateRoom and GetRoom captured on the wire: the TCP payloads to and from
    the replica's port; and the secrets that must not show on it."""
    with LoopbackCapture() as capture:
        async with RoomsClient(replica.target, ca=ca) as rooms:
            room = await rooms.create_room(name)
            await rooms.get_room(room.room_id, room.host_key)
        await asyncio.sleep(0.3)  # the capture thread reads the last packets
    port = replica.port
    payloads = [p for proto, sp, dp, p in capture.packets
                if proto == "tcp" and port in (sp, dp) and p]  # fmt: skip
    assert sum(map(len, payloads)) > 500, "the calls were captured"
    return [b"".join(payloads), room.room_id.encode()]


async def test_nothing_shows_in_clear_on_the_wire(
    secure: Replica, pki: dict[str, TlsFiles], etcd_endpoint: str
) -> None:
    key = find_key()
    assert key is not None, "tests/conftest.py provides an API key"
    name = "Wire-Meeting-5be1"
    wire, room_id = await _create_and_get(secure, pki["control-plane"].ca, name)
    token = f"{TOKEN_PREFIX}.eyJraWQi".encode()  # a token's start: cv1.base64('{"kid"')
    for secret in (name.encode(), room_id, key.key_id.encode(), token):
        assert secret not in wire, secret
    # The control: the same calls to a replica without TLS show the meeting.
    plain = await Replica(etcd_endpoint, None).start()
    try:
        wire, room_id = await _create_and_get(plain, None, name)
    finally:
        await plain.stop()
    assert name.encode() in wire and room_id in wire


def _get(url: str, context: ssl.SSLContext | None = None) -> int:
    with urllib.request.urlopen(url, timeout=5, context=context) as response:
        status: int = response.status
        return status


async def test_http_gateway_serves_https_only(secure: Replica, pki: dict[str, TlsFiles]) -> None:
    context = ssl.create_default_context(cafile=pki["control-plane"].ca)
    for host in (HOST, "localhost"):
        url = f"https://{host}:{secure.http_port}/healthz"
        assert await asyncio.to_thread(_get, url, context) == 200
    with pytest.raises(OSError):  # URLError, a reset or a closed connection
        await asyncio.to_thread(_get, f"http://{HOST}:{secure.http_port}/healthz")
