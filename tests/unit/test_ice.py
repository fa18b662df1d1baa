"""`conclave.ice`: UDP port range and advertised address, in-process with real
aiortc peer connections and real sockets (the relay's configuration, max-bundle)."""

from __future__ import annotations

import argparse
import re
import socket
from collections.abc import Iterator

import aioice.ice
import pytest
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection

from conclave import ice
from conclave.ice import PortRange, PortRangeExhausted
from relay.main import parse_args
from tests.ports import free_udp_range

CANDIDATE = re.compile(r"^a=candidate:\S+ 1 udp \d+ (\S+) (\d+) typ host", re.MULTILINE)


@pytest.fixture(autouse=True)
def restore_aioice() -> Iterator[None]:
    """Whatever a test configures, aioice is as before afterwards."""
    host_addresses = aioice.ice.get_host_addresses
    get_component_candidates = aioice.ice.Connection.get_component_candidates
    yield
    ice.use_port_range(None)
    ice.advertise_address(None)
    ice.use_shared_port(None)
    aioice.ice.get_host_addresses = host_addresses
    aioice.ice.Connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]


def relay_pc() -> RTCPeerConnection:
    """Like relay/peer.py: no ICE servers, max-bundle, audio and video m-lines."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    return pc


async def offer_candidates(pc: RTCPeerConnection) -> list[tuple[str, int]]:
    await pc.setLocalDescription(await pc.createOffer())
    found = [(host, int(port)) for host, port in CANDIDATE.findall(pc.localDescription.sdp)]
    assert found, pc.localDescription.sdp
    return found


def bound_addresses(pc: RTCPeerConnection) -> list[tuple[str, int]]:
    """Where the pc's ICE sockets are really bound (aioice internals)."""
    transport = pc.getTransceivers()[0].receiver.transport.transport
    protocols = transport.iceGatherer._connection._protocols
    return [tuple(p.transport.get_extra_info("sockname")[:2]) for p in protocols]


async def test_port_range_is_exhausted_cleanly_and_ports_are_reused() -> None:
    ice.use_host_addresses(["127.0.0.1"])
    ports = PortRange(*free_udp_range(2))
    ice.use_port_range(ports)
    pcs = [relay_pc() for _ in range(4)]
    try:
        first = await offer_candidates(pcs[0])
        second = await offer_candidates(pcs[1])
        # max-bundle: one socket (one port) per peer connection, on both m-lines
        assert len(set(first)) == 1 and len(set(second)) == 1
        used = {first[0][1], second[0][1]}
        assert used == {ports.low, ports.high}

        with pytest.raises(PortRangeExhausted) as raised:
            await pcs[2].setLocalDescription(await pcs[2].createOffer())
        assert f"no free UDP port in {ports} on 127.0.0.1" in str(raised.value)
        assert bound_addresses(pcs[2]) == []  # nothing half-gathered is left open

        # The others are unaffected, and a closed connection's port is free again.
        assert bound_addresses(pcs[0]) == [("127.0.0.1", first[0][1])]
        await pcs[0].close()
        assert await offer_candidates(pcs[3]) == [("127.0.0.1", first[0][1])] * 2
    finally:
        for pc in pcs:
            await pc.close()


async def test_ports_held_by_others_are_skipped() -> None:
    ice.use_host_addresses(["127.0.0.1"])
    ports = PortRange(*free_udp_range(3))
    ice.use_port_range(ports)
    pcs = [relay_pc() for _ in range(3)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind(("127.0.0.1", ports.low + 1))
        try:
            got = {(await offer_candidates(pc))[0][1] for pc in pcs[:2]}
            assert got == {ports.low, ports.high}
            with pytest.raises(PortRangeExhausted):
                await offer_candidates(pcs[2])
        finally:
            for pc in pcs:
                await pc.close()


async def test_advertised_address_replaces_the_bound_one_in_candidates_only() -> None:
    ice.use_host_addresses(["127.0.0.1", "::1"])
    ports = PortRange(*free_udp_range(10))
    ice.use_port_range(ports)
    ice.advertise_address("127.0.0.2")
    pc = relay_pc()
    try:
        found = set(await offer_candidates(pc))
        bound = bound_addresses(pc)
        v4_port = next(port for host, port in bound if host == "127.0.0.1")
        v6_port = next(port for host, port in bound if host == "::1")
        # IPv4 socket on 127.0.0.1, advertised as 127.0.0.2; IPv6 left alone
        assert found == {("127.0.0.2", v4_port), ("::1", v6_port)}
        assert "c=IN IP4 127.0.0.2" in pc.localDescription.sdp
        assert all(ports.low <= port <= ports.high for _, port in found)
    finally:
        await pc.close()


async def test_advertised_address_without_port_range_binds_any_port() -> None:
    ice.use_host_addresses(["127.0.0.1"])
    ice.advertise_address("127.0.0.2")
    pc = relay_pc()
    try:
        [(host, port)] = set(await offer_candidates(pc))
        assert host == "127.0.0.2"
        assert bound_addresses(pc) == [("127.0.0.1", port)]
    finally:
        await pc.close()


@pytest.mark.parametrize("shared", [False, True], ids=["own-port", "shared-port"])
async def test_ice_sockets_never_fragment(shared: bool) -> None:
    """Every ICE socket the relay binds sends with DF and a zero IP id
    (IP_PMTUDISC_PROBE), with no port setting at all as with them."""
    ice.use_host_addresses(["127.0.0.1"])
    ice.use_port_range(None)  # what relay/main.py's configure_ice does by default
    ice.use_shared_port(0 if shared else None)
    pc = relay_pc()
    try:
        await offer_candidates(pc)
        transport = pc.getTransceivers()[0].receiver.transport.transport
        for protocol in transport.iceGatherer._connection._protocols:
            inner = getattr(protocol.transport, "port", None)  # a shared port's socket
            sock = (inner.transport if inner else protocol.transport).get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_IP, 10) == 3  # IP_MTU_DISCOVER: PROBE
    finally:
        await pc.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("50000-50100", PortRange(50000, 50100)), (" 1024 - 1024 ", PortRange(1024, 1024))],
)
def test_port_range_parses(text: str, expected: PortRange) -> None:
    assert PortRange.parse(text) == expected
    assert len(expected) == expected.high - expected.low + 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("50000", "is not a port range: expected LOW-HIGH"),
        ("a-b", "is not a port range"),
        ("50000-", "is not a port range"),
        ("-5-10", "is not a port range"),
        ("²-³", "is not a port range"),
        ("80-90", "must satisfy 1024 <= LOW <= HIGH <= 65535"),
        ("1023-2000", "must satisfy 1024 <= LOW"),
        ("50100-50000", "must satisfy 1024 <= LOW <= HIGH"),
        ("60000-65536", "HIGH <= 65535"),
    ],
)
def test_bad_port_ranges_are_refused_by_argparse(
    value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--node-id", "n", f"--udp-ports={value}"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument --udp-ports:" in err and message in err


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("203.0.113", "is not an IPv4 or IPv6 address"),
        ("relay.example.com", "is not an IPv4 or IPv6 address"),
        ("0.0.0.0", "not a unicast address"),
        ("ff02::1", "not a unicast address"),
    ],
)
def test_bad_public_ips_are_refused_by_argparse(
    value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--node-id", "n", "--public-ip", value])
    assert message in capsys.readouterr().err


def test_relay_flags_parse() -> None:
    args = parse_args(
        ["--node-id", "n", "--udp-ports", "50000-50100", "--public-ip", "2001:db8::1"]
    )
    assert args.udp_ports == PortRange(50000, 50100)
    assert args.public_ip == "2001:db8::1"
    defaults = parse_args(["--node-id", "n"])
    assert defaults.udp_ports is None and defaults.public_ip is None
    assert isinstance(defaults, argparse.Namespace)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--udp-port", "80"], "argument --udp-port: 80 must be 0 or 1024-65535"),
        (["--udp-port", "x"], "argument --udp-port: 'x' is not a port number"),
        (["--udp-port", "50000", "--udp-ports", "50000-50100"], "give one, or --udp-port 0"),
    ],
)
def test_bad_shared_ports_are_refused_by_argparse(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--node-id", "n", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    args = parse_args(["--node-id", "n", "--udp-port", "0", "--udp-ports", "50000-50100"])
    assert args.udp_port == 0 and args.udp_ports == PortRange(50000, 50100)
    assert parse_args(["--node-id", "n"]).udp_port is None


async def test_a_shared_port_in_use_stops_start_up_and_port_zero_takes_one_from_the_range() -> None:
    ice.use_host_addresses(["127.0.0.1"])
    port, _ = free_udp_range(1)
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", port))
    try:
        ice.use_shared_port(port)
        with pytest.raises(OSError, match=f"cannot bind UDP port {port} on 127.0.0.1"):
            await ice.open_shared_ports()
    finally:
        holder.close()
    assert await ice.open_shared_ports() == [("127.0.0.1", port)]

    low, high = free_udp_range(5)
    ice.use_port_range(PortRange(low, high))
    ice.use_shared_port(0)
    ((_, bound),) = await ice.open_shared_ports()
    assert low <= bound <= high
    pcs = [relay_pc() for _ in range(3)]
    try:
        for pc in pcs:
            await pc.setLocalDescription(await pc.createOffer())
        ports = {int(port) for pc in pcs for _, port in CANDIDATE.findall(pc.localDescription.sdp)}
        assert ports == {bound}  # every connection on the one port
    finally:
        for pc in pcs:
            await pc.close()
