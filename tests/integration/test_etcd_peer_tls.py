"""etcd peer TLS (issue 11): members talk to each other over mutual TLS with
certificates of one CA (`EtcdServer(peer_tls=...)`, `dev_pki`'s `etcd-peer`). A
cluster forms and replicates over it; the peer port answers nothing in clear and
refuses a handshake without a certificate of that CA; a member whose peer
certificate comes from another CA never joins while the other two go on. With
`metrics_port` a TLS member serves `/metrics` in clear, and only that."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from conclave.processes import EtcdCluster, EtcdServer, free_port
from conclave.store import EtcdStore
from conclave.tls import DEV_SERVER_HOSTS, TlsFiles, dev_pki, issue, make_ca
from tests.integration.relay_harness import running

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: how long a member with a foreign peer certificate is watched not joining
INTRUDER_WATCH_S = 4.0


def _member_tls(pki: dict[str, TlsFiles]) -> TlsFiles:
    """What a cluster member serves clients with: `etcd-peer`, which has client
    usage too. etcd's JSON gateway (`/v3/...`: `status`, `leader`) dials the
    member's own gRPC port presenting this certificate as a client certificate,
    which `--client-cert-auth` refuses without clientAuth (as `etcd-server` is)."""
    return pki["etcd-peer"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TlsFiles]:
    return dev_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def foreign_peer(pki: dict[str, TlsFiles], tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A peer certificate (server and client, right hosts) from another CA; it
    trusts the cluster's CA, so only its own certificate can be what is refused."""
    directory = tmp_path_factory.mktemp("foreign")
    other_ca, other_key = make_ca("another CA")
    cert, key = issue(
        other_ca, other_key, "intruder", hosts=DEV_SERVER_HOSTS, server=True, client=True
    )
    (directory / "cert.pem").write_bytes(cert)
    (directory / "key.pem").write_bytes(key)
    return TlsFiles(pki["etcd-peer"].ca, directory / "cert.pem", directory / "key.pem")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(pki: dict[str, TlsFiles]) -> AsyncIterator[EtcdCluster]:
    etcd = EtcdCluster(
        3, tls=_member_tls(pki), client=pki["etcd-client"], peer_tls=pki["etcd-peer"]
    )
    async with running(etcd):
        yield etcd


# --- blocking probes (run in a thread) ---------------------------------------


def _plain_http(port: int, path: str = "/version") -> bytes:
    """A clear-text HTTP GET on `port`: whatever comes back within 2 s (etcd's
    peer listener does not always close after `Connection: close`)."""
    reply = b""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
        raw.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        try:
            while chunk := raw.recv(4096):
                reply += chunk
        except (TimeoutError, ConnectionResetError):  # silence or a reset: that is all
            pass
    return reply


def _https(port: int, ca: Path, identity: TlsFiles | None, path: str = "/version") -> bytes:
    """An HTTPS GET on `port` checking the server against `ca` and presenting
    `identity` (none when None): the status line's code and the body. TLS 1.3:
    the server judges the client's certificate after the client's handshake is
    done, so a refusal (an alert) shows on the first read."""
    context = ssl.create_default_context(cafile=ca)
    if identity is not None:
        context.load_cert_chain(identity.cert, identity.key)
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return f"{response.status} ".encode() + response.read()
    finally:
        connection.close()


def _gateway(member: EtcdServer, path: str) -> dict[str, Any]:
    """POST `{}` to the member's JSON gateway, presenting its `client` certificate."""
    assert member.tls is not None and member.client is not None
    context = ssl.create_default_context(cafile=member.tls.ca)
    context.load_cert_chain(member.client.cert, member.client.key)
    request = urllib.request.Request(f"{member.client_url}{path}", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=2, context=context) as response:
        result: dict[str, Any] = json.loads(response.read())
    return result


def _refused_at_handshake(port: int, ca: Path, identity: TlsFiles | None) -> None:
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        reply = _https(port, ca, identity)
        raise AssertionError(f"answered: {reply[:80]!r}")


# --- the tests ---------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_cluster_forms_over_peer_tls_and_replicates(
    cluster: EtcdCluster, pki: dict[str, TlsFiles]
) -> None:
    assert all(m.peer_url.startswith("https://") for m in cluster.members)
    leader = await asyncio.to_thread(cluster.leader)  # every member agrees on one
    assert 0 <= leader < 3
    listed = await asyncio.to_thread(_gateway, cluster.members[1], "/v3/cluster/member/list")
    assert sorted(m["name"] for m in listed["members"]) == [m.name for m in cluster.members]
    assert all(url.startswith("https://") for m in listed["members"] for url in m["peerURLs"])

    writer = EtcdStore([cluster.members[leader].endpoint], tls=pki["etcd-client"])
    reader = EtcdStore([cluster.members[(leader + 1) % 3].endpoint], tls=pki["etcd-client"])
    try:
        await asyncio.gather(writer.connect(timeout=5), reader.connect(timeout=5))
        key = f"/test/{uuid.uuid4()}"
        await writer.put(key, b"over peer tls")
        async with asyncio.timeout(5):  # a follower's linearizable read: at once
            assert await reader.get(key) == b"over peer tls"
    finally:
        await asyncio.gather(writer.close(), reader.close())


@pytest.mark.timeout(60)
async def test_peer_port_refuses_clear_text_and_strangers(
    cluster: EtcdCluster, pki: dict[str, TlsFiles], foreign_peer: TlsFiles
) -> None:
    member = cluster.members[0]
    ca = pki["etcd-peer"].ca
    # The probes can tell: a peer port in clear answers the same GET...
    async with running(EtcdServer()) as clear:
        reply = await asyncio.to_thread(_plain_http, clear.peer_port)
        assert reply.startswith(b"HTTP/1.1 200") and b"etcdserver" in reply, reply[:80]
    # ...and so does the TLS one to a peer with a certificate of its CA.
    reply = await asyncio.to_thread(_https, member.peer_port, ca, pki["etcd-peer"])
    assert reply.startswith(b"200 ") and b"etcdserver" in reply, reply[:80]

    reply = await asyncio.to_thread(_plain_http, member.peer_port)
    assert not reply.startswith(b"HTTP/") and b"etcdserver" not in reply, reply[:80]
    await asyncio.to_thread(_refused_at_handshake, member.peer_port, ca, None)
    await asyncio.to_thread(_refused_at_handshake, member.peer_port, ca, foreign_peer)


@pytest.mark.timeout(90)
async def test_member_with_a_foreign_peer_certificate_cannot_join(
    pki: dict[str, TlsFiles], foreign_peer: TlsFiles, tmp_path: Path
) -> None:
    server, client = _member_tls(pki), pki["etcd-client"]
    good = [
        EtcdServer(name=f"good-{i}", tls=server, client=client, peer_tls=pki["etcd-peer"])
        for i in range(2)
    ]
    intruder = EtcdServer(name="intruder", tls=server, client=client, peer_tls=foreign_peer)
    cluster = EtcdCluster(members=[*good, intruder])
    await asyncio.to_thread(cluster.start, tmp_path)
    try:
        for member in good:  # wait_ready with a client: until /health is true
            await asyncio.to_thread(member.wait_ready, 20.0)
        watch_until = time.monotonic() + INTRUDER_WATCH_S
        while time.monotonic() < watch_until:
            assert intruder.alive(), "the intruder exited: it should sit there, alone"
            # Not even a TLS handshake: etcd serves clients once it has joined.
            assert not await asyncio.to_thread(intruder.healthy, 0.5), "the intruder joined"
            await asyncio.sleep(0.2)
        for member in good:
            assert await asyncio.to_thread(member.healthy)

        statuses = [await asyncio.to_thread(m.status) for m in good]
        good_ids = {s["header"]["member_id"] for s in statuses}
        assert len({s["leader"] for s in statuses}) == 1 and statuses[0]["leader"] in good_ids
        listed = await asyncio.to_thread(_gateway, good[0], "/v3/cluster/member/list")
        (stranger,) = [m for m in listed["members"] if m["ID"] not in good_ids]
        # In the initial configuration, but it never joined: no client URLs published.
        assert stranger["peerURLs"] == [intruder.peer_url]
        assert stranger["name"] == "intruder" and not stranger.get("clientURLs"), stranger
    finally:
        await asyncio.to_thread(cluster.stop)


@pytest.mark.timeout(60)
async def test_metrics_port_serves_metrics_in_clear_and_only_them(
    pki: dict[str, TlsFiles],
) -> None:
    server = EtcdServer(
        tls=pki["etcd-server"],
        client=pki["etcd-client"],
        peer_tls=pki["etcd-peer"],
        metrics_port=free_port(),
    )
    async with running(server):
        assert server.metrics_url == f"http://127.0.0.1:{server.metrics_port}/metrics"

        def scrape() -> str:
            with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
                return str(response.read().decode())

        lines = (await asyncio.to_thread(scrape)).splitlines()
        assert "etcd_server_has_leader 1" in lines

        def kv_range() -> int:
            url = f"http://127.0.0.1:{server.metrics_port}/v3/kv/range"
            try:
                with urllib.request.urlopen(url, data=b"{}", timeout=5) as response:
                    return int(response.status)
            except urllib.error.HTTPError as error:
                return error.code

        assert await asyncio.to_thread(kv_range) == 404  # no KV API in clear
        # The client port still demands a certificate of its CA.
        await asyncio.to_thread(
            _refused_at_handshake, server.client_port, pki["etcd-server"].ca, None
        )
        assert await asyncio.to_thread(server.healthy)
