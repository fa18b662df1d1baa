"""`conclave relay --udp-ports` and `--public-ip` on a real relay process, joined by
real clients: every candidate the relay offers is inside the range (or carries the
advertised address), media still flows, and an exhausted range fails only the join
that found it exhausted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from client.sdk import Session
from conclave.ice import use_host_addresses
from conclave.store import EtcdStore
from tests.integration.relay_harness import GrantMinter, RelayProcess, video_frames, wait_for_frames
from tests.ports import free_udp_range

CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ host", re.MULTILINE)


@dataclass
class PortRelay(RelayProcess):
    """A relay process with extra arguments, whose log (stderr) is kept."""

    extra_args: list[str] = field(default_factory=list)
    log_lines: list[str] = field(default_factory=list)
    _drain: asyncio.Task[None] | None = None

    def _stderr(self) -> int | None:
        return subprocess.PIPE

    async def _spawn(self) -> asyncio.subprocess.Process:
        process = await super()._spawn()
        assert process.stderr is not None
        self._drain = asyncio.create_task(self._read_log(process.stderr))
        return process

    async def _read_log(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            self.log_lines.append(line.decode(errors="replace").rstrip())

    async def stop(self) -> None:
        await super().stop()
        if self._drain is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._drain, 5)

    async def wait_for_log(self, text: str, timeout: float = 10) -> None:
        """Until a log line contains `text` (the log is read in the background)."""
        try:
            async with asyncio.timeout(timeout):
                while not any(text in line for line in self.log_lines):
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"relay never logged {text!r}: {self.log_lines}") from None


@pytest.fixture
async def minter(store: EtcdStore) -> GrantMinter:
    minter = GrantMinter(store)
    await minter.publish()
    return minter


@pytest.fixture
async def start_relay(etcd_endpoint: str) -> AsyncIterator[Callable[..., Awaitable[PortRelay]]]:
    started: list[PortRelay] = []

    async def start(*extra_args: str) -> PortRelay:
        relay = PortRelay(f"relay-{uuid.uuid4().hex[:8]}", etcd_endpoint)
        relay.extra_args = list(extra_args)
        started.append(relay)
        await relay.start()
        return relay

    yield start
    for relay in started:
        await relay.stop()


async def new_room(minter: GrantMinter) -> str:
    room = await minter.new_room()
    return room


def host_candidates(sdp: str) -> list[tuple[str, int]]:
    found = [(host, int(port)) for host, port in CANDIDATE.findall(sdp)]
    assert found, sdp
    return found


async def first_offer(relay: PortRelay, token: str) -> dict[str, Any]:
    """Join with a raw WebSocket, publishing video, and return the relay's offer."""
    async with aiohttp.ClientSession() as http, http.ws_connect(relay.signal_url) as ws:
        await ws.send_str(json.dumps({"type": "join", "grant": token, "publish": ["video"]}))
        async with asyncio.timeout(15):
            while True:
                message: dict[str, Any] = json.loads((await ws.receive()).data)
                if message["type"] == "offer":
                    await ws.send_str(json.dumps({"type": "leave"}))
                    return message


def remote_ice_port(session: Session) -> int:
    """The relay port of the candidate pair the client's ICE nominated (aiortc and
    aioice internals: there is no public API for the selected pair)."""
    pc = session._pc
    assert pc is not None
    connection = pc.getTransceivers()[0].receiver.transport.transport._connection
    port: int = connection._nominated[1].remote_candidate.port
    return port


async def test_every_candidate_is_in_the_range_and_media_flows(
    start_relay: Callable[..., Awaitable[PortRelay]], minter: GrantMinter
) -> None:
    use_host_addresses(["127.0.0.1"])
    low, high = free_udp_range(20)
    relay = await start_relay("--udp-ports", f"{low}-{high}")
    await relay.wait_for_log(f"ICE UDP ports: {low}-{high} (20 ports)")

    room = await new_room(minter)
    offer = await first_offer(relay, minter.token(room, "p_raw", relay.node_id))
    for host, port in host_candidates(offer["sdp"]):
        assert host == "127.0.0.1"
        assert low <= port <= high, offer["sdp"]

    ann = Session(minter.join_response(relay, room, "p_ann", "ann"), "ann", ["video"])
    ben = Session(minter.join_response(relay, room, "p_ben", "ben"), "ben", [])
    async with ann, ben:
        await wait_for_frames(ben, "ann", 10)
        for session in (ann, ben):
            assert session._pc is not None and session._pc.remoteDescription is not None
            ports = {port for _, port in host_candidates(session._pc.remoteDescription.sdp)}
            assert len(ports) == 1  # max-bundle: one relay socket per participant
            assert all(low <= port <= high for port in ports)
            assert remote_ice_port(session) in ports
        assert not ann.errors and not ben.errors


async def test_public_ip_is_the_advertised_candidate_address(
    start_relay: Callable[..., Awaitable[PortRelay]], minter: GrantMinter
) -> None:
    low, high = free_udp_range(20)
    relay = await start_relay("--udp-ports", f"{low}-{high}", "--public-ip", "127.0.0.2")
    await relay.wait_for_log("ICE host candidates advertise the --public-ip address")
    assert not any("127.0.0.2" in line for line in relay.log_lines)  # docs/privacy.md
    room = await new_room(minter)
    offer = await first_offer(relay, minter.token(room, "p_raw", relay.node_id))
    candidates = host_candidates(offer["sdp"])
    assert {host for host, _ in candidates} == {"127.0.0.2"}
    assert all(low <= port <= high for _, port in candidates)
    assert "c=IN IP4 127.0.0.2" in offer["sdp"]
    assert "127.0.0.1" not in offer["sdp"]  # the bound address is not revealed


async def test_an_exhausted_range_fails_only_the_join_that_found_it(
    start_relay: Callable[..., Awaitable[PortRelay]], minter: GrantMinter
) -> None:
    use_host_addresses(["127.0.0.1"])
    low, high = free_udp_range(2)
    relay = await start_relay("--udp-ports", f"{low}-{high}")
    room = await new_room(minter)
    ann = Session(minter.join_response(relay, room, "p_ann", "ann"), "ann", ["video"])
    ben = Session(minter.join_response(relay, room, "p_ben", "ben"), "ben", [])
    async with ann, ben:
        await wait_for_frames(ben, "ann", 10)  # both ports in use now

        carl = Session(minter.join_response(relay, room, "p_carl", "carl"), "carl", ["video"])
        async with carl:  # `joined` comes before the relay gathers candidates
            async with asyncio.timeout(15):
                await carl.wait_closed()
        assert carl.closed_reason == "negotiation_failed"
        await relay.wait_for_log("negotiation failed: PortRangeExhausted")

        before = video_frames(ben, "ann")
        await wait_for_frames(ben, "ann", before + 20)
        assert not ann.closed and not ben.closed
        assert not ann.errors and not ben.errors

    # Both left: their ports are free again for the next participants.
    offer = await first_offer(relay, minter.token(room, "p_dan", relay.node_id))
    assert all(low <= port <= high for _, port in host_candidates(offer["sdp"]))


@pytest.mark.parametrize("forwarder", ["native", "python"])
async def test_one_shared_port_carries_every_participant(
    start_relay: Callable[..., Awaitable[PortRelay]], minter: GrantMinter, forwarder: str
) -> None:
    """`--udp-port`: every participant's candidates name the one port, the media of
    three participants flows through it, and on the native path the engine forwards
    it there (docs/operations.md, "One UDP port")."""
    use_host_addresses(["127.0.0.1"])
    port, _ = free_udp_range(1)
    relay = await start_relay("--udp-port", str(port), "--forwarder", forwarder)
    await relay.wait_for_log(f"ICE UDP port (shared by every participant): {port}")

    room = await new_room(minter)
    names = ("ann", "ben", "cat")
    sessions = [
        Session(minter.join_response(relay, room, f"p_{name}", name), name, ["video"])
        for name in names
    ]
    async with contextlib.AsyncExitStack() as stack:
        for session in sessions:
            await stack.enter_async_context(session)
        for session in sessions:
            for other in names:
                if other != session.display_name:
                    await wait_for_frames(session, other, 10)
        for session in sessions:
            assert session._pc is not None and session._pc.remoteDescription is not None
            assert set(host_candidates(session._pc.remoteDescription.sdp)) == {("127.0.0.1", port)}
            assert remote_ice_port(session) == port
            assert not session.errors
    if forwarder == "native":
        forwarded = relay.metric("conclave_native_forwarded_total")
        assert forwarded > 6 * 10  # each of the six directions' frames, in C
        assert relay.metric('conclave_native_dropped_total{reason="srtp"}') == 0
        assert relay.metric("conclave_native_legs_replaced_total") == 0

    # A datagram from an address no participant owns is dropped and counted.
    unrouted = relay.metric("conclave_shared_port_unrouted_total")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.sendto(b"\x16\xfe\xfd" + bytes(40), ("127.0.0.1", port))
        async with asyncio.timeout(10):
            while relay.metric("conclave_shared_port_unrouted_total") < unrouted + 1:
                await asyncio.sleep(0.1)
