"""etcd over TLS with client certificates (issue 11): the right certificate gets
in, no certificate or one from another CA does not, nothing answers in clear; a
control plane and a relay run against it with the `--etcd-ca/-cert/-key` flags."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from etcd3aio import Etcd3Client
from etcd3aio.errors import EtcdError

from conclave.processes import EtcdServer, free_port, wait_for_line
from conclave.store import NODES_PREFIX, EtcdStore, StoreError
from conclave.tls import TlsFiles, dev_pki, issue, make_ca
from tests.integration.relay_harness import ControlPlaneProcess, running

REFUSED_WITHIN_S = 1.5


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TlsFiles]:
    return dev_pki(tmp_path_factory.mktemp("pki"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def etcd(pki: dict[str, TlsFiles]) -> AsyncIterator[EtcdServer]:
    async with running(EtcdServer(tls=pki["etcd-server"], client=pki["etcd-client"])) as server:
        yield server


def _flags(files: TlsFiles) -> list[str]:
    return [
        "--etcd-ca",
        str(files.ca),
        "--etcd-cert",
        str(files.cert),
        "--etcd-key",
        str(files.key),
    ]


async def _refused(etcd: EtcdServer, tls: TlsFiles | None) -> None:
    store = EtcdStore([etcd.endpoint], tls=tls)
    try:
        with pytest.raises(StoreError):
            await store.connect(timeout=REFUSED_WITHIN_S)
    finally:
        await store.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_client_certificate_of_the_ca_gets_in(
    etcd: EtcdServer, pki: dict[str, TlsFiles]
) -> None:
    assert etcd.endpoint.startswith("https://")
    store = EtcdStore([etcd.endpoint], tls=pki["etcd-client"])
    await store.connect(timeout=5)
    try:
        key = f"/test/{uuid.uuid4()}"
        await store.put(key, b"over tls")
        assert await store.get(key) == b"over tls"
    finally:
        await store.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_client_without_certificate_is_refused(
    etcd: EtcdServer, pki: dict[str, TlsFiles]
) -> None:
    await _refused(etcd, None)  # in clear
    # TLS with the right CA but no client certificate (EtcdStore always has one).
    ca = pki["etcd-client"].ca.read_bytes()
    client = Etcd3Client([etcd.endpoint.removeprefix("https://")], ca_cert=ca)
    await client.connect()
    try:
        assert client.kv is not None
        with pytest.raises((EtcdError, grpc.aio.AioRpcError)):
            await client.kv.get("/conclave/ping", timeout=REFUSED_WITHIN_S, max_attempts=1)
    finally:
        await client.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_client_certificate_of_another_ca_is_refused(
    etcd: EtcdServer, pki: dict[str, TlsFiles], tmp_path: Path
) -> None:
    other_ca, other_key = make_ca("another CA")
    cert, key = issue(
        other_ca, other_key, "intruder", hosts=["intruder"], server=False, client=True
    )
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    # It trusts etcd's CA, so only its own certificate can be what etcd refuses.
    intruder = TlsFiles(pki["etcd-client"].ca, tmp_path / "cert.pem", tmp_path / "key.pem")
    await _refused(etcd, intruder)


def test_plain_tcp_gets_no_cleartext_protocol(etcd: EtcdServer, pki: dict[str, TlsFiles]) -> None:
    with socket.create_connection(("127.0.0.1", etcd.client_port), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        try:
            while chunk := raw.recv(4096):
                reply += chunk
        except OSError:  # reset: refused all the same
            pass
    assert not reply.startswith(b"HTTP/"), reply[:80]
    context = ssl.create_default_context(cafile=pki["etcd-server"].ca)
    with (
        pytest.raises(OSError),  # ssl.SSLError, or a reset: a bad-certificate alert
        socket.create_connection(("127.0.0.1", etcd.client_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        # TLS 1.3: the server judges the (absent) client certificate after the
        # client's handshake is done, so its alert arrives on the first read.
        tls.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert not tls.recv(100)
        raise AssertionError("etcd answered a client without a certificate")


@pytest.mark.asyncio(loop_scope="module")
async def test_control_plane_and_relay_run_with_the_flags(
    etcd: EtcdServer, pki: dict[str, TlsFiles]
) -> None:
    flags = _flags(pki["etcd-client"])
    control_plane = ControlPlaneProcess(etcd.endpoint, extra_args=flags)
    await control_plane.start()  # "control-plane ready": it reached etcd
    node_id = f"relay-{uuid.uuid4().hex[:8]}"
    relay = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "--etcd", etcd.endpoint, *flags, "--node-id", node_id,
        "--http-port", str(free_port()), "--rpc-port", str(free_port()),
        "--ice-address", "127.0.0.1", stdout=subprocess.PIPE,
    )  # fmt: skip
    store = EtcdStore([etcd.endpoint], tls=pki["etcd-client"])
    try:
        assert relay.stdout is not None
        await wait_for_line(relay.stdout, "relay ready", timeout=30)
        await store.connect(timeout=5)
        record = await store.get(NODES_PREFIX + node_id)
        assert record is not None and json.loads(record)["lease"]
    finally:
        await store.close()
        if relay.returncode is None:
            relay.send_signal(signal.SIGINT)
            await asyncio.wait_for(relay.wait(), 10)
        await control_plane.stop()
