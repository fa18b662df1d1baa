"""Every hop of `conclave dev` is TLS (issue 11), seen on the wire.

A `conclave dev` cluster (etcd, control plane, two relays, all with the dev CA's
certificates) holds a meeting between Chromium, which loads the web client over
HTTPS and signals over WSS, and a Python participant (`conclave join`), which finds
the dev CA by itself. A loopback capture taken from the cluster's start to the
meeting's end shows, on every TCP port of the cluster (etcd's client port, the
control plane's gRPC and HTTPS ports, the relays' HTTPS/WSS and gRPC ports):

- each connection begins with a TLS handshake, none with a clear-text protocol;
- no meeting name, display name, room id, passcode, etcd key or HTTP/2 preface.

Then etcd and a relay's gRPC port refuse callers with no certificate or another
CA's, and answer the cluster's own (so the refusals are not a broken listener).
etcd's clear-text metrics listener is left out on purpose: it serves /metrics and
/health only (docs/security.md).
"""

from __future__ import annotations

import contextlib
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
from playwright.async_api import Browser, async_playwright

from client.rooms import RoomsClient
from conclave.processes import free_port, free_port_run
from conclave.store import NODES_PREFIX, EtcdStore
from conclave.tls import client_ssl_context, dev_pki, mutual_channel_credentials, spki_sha256
from tests.dev_cluster import DevCluster, start_dev
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.e2e.test_web_client import (
    create_meeting,
    host_joins,
    new_page,
    python_joins,
    security_code,
)
from tests.integration.capture import LoopbackCapture
from tests.integration.relay_harness import relay_call_status

MEETING = "Quarterly Tlsreview"
HOST_NAME = "Hedda Cleartextova"
PYTHON_NAME = "Pyotr Wiresharkov"
#: what a clear-text protocol on these ports would start a connection with
CLEAR_STARTS = (b"GET ", b"POST ", b"PUT ", b"PRI * HTTP/2.0", b"{", b"\x00\x00")
TLS_HANDSHAKE = b"\x16\x03"  # a TLS record: handshake, version 3.x (ClientHello)


@contextlib.asynccontextmanager
async def chromium_trusting(dev: DevCluster) -> AsyncIterator[Browser]:
    """Chromium told to accept the dev cluster's HTTPS certificates by their public
    keys, as `conclave dev` tells a person to start it (it knows no dev CA)."""
    pins = ",".join(spki_sha256(dev.pki(name).cert) for name in ("control-plane", "relay"))
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={pins}"],
        )
        try:
            yield browser
        finally:
            await browser.close()


async def relay_rpc_ports(dev: DevCluster) -> list[int]:
    """The relays' gRPC ports, from their node records (conclave dev picks them)."""
    store = EtcdStore([dev.etcd_url], tls=dev.pki("etcd-client"))
    await store.connect()
    try:
        nodes, _ = await store.get_prefix(NODES_PREFIX)
    finally:
        await store.close()
    return [int(json.loads(value)["rpc_address"].rsplit(":", 1)[1]) for value in nodes.values()]


def etcd_answers(url: str, context: ssl.SSLContext) -> bool:
    """etcd's /health over TLS with `context`; False when the handshake is refused."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5, context=context) as response:
            return bool(json.loads(response.read())["health"] == "true")
    except (urllib.error.URLError, ssl.SSLError, ConnectionError):
        return False


@pytest.mark.timeout(180)
async def test_every_hop_of_a_dev_cluster_is_tls(tmp_path: Path) -> None:
    grpc_port, http_port = free_port(), free_port_run(2)
    with LoopbackCapture() as capture:
        dev = await start_dev(
            "--relays", "2", "--grpc-port", str(grpc_port), "--http-port", str(http_port)
        )  # fmt: skip
        try:
            base = dev.ready["http"]
            assert base == f"https://127.0.0.1:{http_port}"
            async with chromium_trusting(dev) as browser:
                page = await new_page(browser)
                link, passcode = await create_meeting(page, base, name=MEETING)
                room_id = link.rsplit("/", 1)[1]
                await host_joins(page, HOST_NAME)
                report = await python_joins(
                    page, dev.control_plane, room_id, passcode, PYTHON_NAME, env=dev.env
                )
                assert report["remote"][HOST_NAME]["video_frames_decoded"] >= 30, report
                assert report["security_code"] == await security_code(page)
                # The control plane asks a meeting's relay (RelayService, mutual TLS).
                async with RoomsClient(dev.control_plane, ca=dev.ca) as rooms:
                    other_room = await rooms.create_room("empty")
                    assert other_room.node_id
                    assert await rooms.list_participants(other_room.room_id, "") == []
                    await rooms.end_room(other_room.room_id, other_room.host_key)
                await page.context.close()
            rpc_ports = await relay_rpc_ports(dev)
            etcd_port = urlsplit(dev.etcd_url).port
            assert etcd_port is not None

            # Refusals, on this cluster: etcd and a relay's gRPC port.
            etcd_client = dev.pki("etcd-client")
            own = client_ssl_context(dev.ca)
            own.load_cert_chain(etcd_client.cert, etcd_client.key)
            assert etcd_answers(dev.etcd_url, own)
            assert not etcd_answers(dev.etcd_url, client_ssl_context(dev.ca))
            other = dev_pki(tmp_path / "other-ca")
            foreign = client_ssl_context(dev.ca)
            foreign.load_cert_chain(other["etcd-client"].cert, other["etcd-client"].key)
            assert not etcd_answers(dev.etcd_url, foreign)
            address = f"127.0.0.1:{rpc_ports[0]}"
            cell = dev.pki("cell")
            ca = cell.ca.read_bytes()
            assert await relay_call_status(
                grpc.aio.secure_channel(address, mutual_channel_credentials(cell))
            ) == (grpc.StatusCode.OK)
            no_certificate = grpc.ssl_channel_credentials(root_certificates=ca)
            assert (
                await relay_call_status(grpc.aio.secure_channel(address, no_certificate))
                == grpc.StatusCode.UNAVAILABLE
            )
            another_ca = grpc.ssl_channel_credentials(
                root_certificates=ca,
                private_key=other["cell"].key.read_bytes(),
                certificate_chain=other["cell"].cert.read_bytes(),
            )
            assert (
                await relay_call_status(grpc.aio.secure_channel(address, another_ca))
                == grpc.StatusCode.UNAVAILABLE
            )
        finally:
            await dev.stop()

    relay_http = [http_port + 1, http_port + 2]
    ports = {etcd_port, grpc_port, http_port, *relay_http, *rpc_ports}

    # Connections: (client port, server port) -> the client's first bytes.
    first: dict[tuple[int, int], bytes] = {}
    secrets = [s.encode() for s in (MEETING, HOST_NAME, PYTHON_NAME, room_id, passcode)] + [
        b"/conclave/",
        b"Bearer ",
        b"PRI * HTTP/2.0",
        b'"type"',
    ]
    for proto, sport, dport, payload in capture.packets:
        if proto != "tcp" or not payload or not {sport, dport} & ports:
            continue
        for secret in secrets:
            assert secret not in payload, (secret, sport, dport)
        if dport in ports and sport not in ports:
            first.setdefault((sport, dport), payload)
    served = {dport for _, dport in first}
    # Every hop: etcd, the control plane's two ports, the relays' HTTPS/WSS (the meeting
    # is on one of them; `conclave dev` places meetings spread, so the next on the
    # other), and a relay's gRPC port (the control plane's call, the refusals).
    hops = {etcd_port, grpc_port, http_port}
    assert hops <= served and served & set(relay_http) and served & set(rpc_ports), served
    clear = {key: data[:16] for key, data in first.items() if data.startswith(CLEAR_STARTS)}
    assert not clear, f"clear-text connections: {clear}"
    handshakes = {dport for (_, dport), data in first.items() if data.startswith(TLS_HANDSHAKE)}
    assert handshakes == served, f"no TLS handshake seen on {sorted(served - handshakes)}"
