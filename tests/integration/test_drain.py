"""Draining a relay, on real processes: `conclave relay drain` and SIGTERM move
every client of its meeting to another relay with no more than 2 s without media,
the node takes no new meeting, /readyz says 503, and (SIGTERM) the relay exits."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from client.sdk import RoomsClient, Session, join
from conclave.ice import use_host_addresses
from conclave.processes import EtcdServer
from conclave.store import NODES_PREFIX, PLACEMENT_PREFIX, EtcdStore
from relay.drain import drain_key
from tests.integration.continuity import MediaWatch
from tests.integration.relay_harness import GrantMinter, RelayProcess

pytestmark = pytest.mark.asyncio(loop_scope="module")

NAMES = ("ann", "ben", "cid")
MAX_GAP_S = 2.0  # the acceptance: no client sees longer without media
CONCLAVE = str(Path(sys.executable).parent / "conclave")


@pytest_asyncio.fixture(loop_scope="module")
async def store(etcd: EtcdServer) -> AsyncIterator[EtcdStore]:
    s = EtcdStore([etcd.endpoint])
    await s.connect()
    yield s
    await s.close()


async def _meeting(
    rooms: RoomsClient, relays: dict[str, RelayProcess], name: str
) -> tuple[str, str, RelayProcess, dict[str, Session]]:
    """A meeting of three video publishers, media flowing between all of them."""
    room = await rooms.create_room(name)
    sessions: dict[str, Session] = {}
    for who in NAMES:
        sessions[who] = await join(
            rooms, room.room_id, who, ["video"], passcode=room.passcode, join_timeout=30
        )
    assert {s.node_id for s in sessions.values()} == {room.node_id}
    return room.room_id, room.passcode, relays[room.node_id], sessions


async def _readiness(port: int) -> int | None:
    """The relay's /readyz status, None when it does not answer."""
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(
                f"http://127.0.0.1:{port}/readyz", timeout=aiohttp.ClientTimeout(2)
            ) as r:
                return r.status
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None


async def _node_record(store: EtcdStore, node_id: str) -> dict[str, object] | None:
    raw = await store.get(NODES_PREFIX + node_id)
    return json.loads(raw) if raw is not None else None


async def _placements_on(store: EtcdStore, node_id: str) -> list[str]:
    items, _ = await store.get_prefix(PLACEMENT_PREFIX)
    return [key for key, raw in items.items() if json.loads(raw)["node_id"] == node_id]


async def _all_moved(sessions: dict[str, Session], away_from: str, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while any(s.node_id == away_from or s.reconnecting for s in sessions.values()):
            await asyncio.sleep(0.05)


async def _refusal(store: EtcdStore, relay: RelayProcess, room_id: str) -> tuple[str, int]:
    """Join `relay` with a valid grant for it: the error code and the close code."""
    minter = GrantMinter(store)
    await minter.publish()
    token = minter.token(room_id, "p_late", relay.node_id)
    async with aiohttp.ClientSession() as http, http.ws_connect(relay.signal_url) as ws:
        await ws.send_json({"type": "join", "grant": token, "publish": []})
        error = await ws.receive_json(timeout=10)
        await ws.receive(timeout=10)
        assert error["type"] == "error" and ws.close_code is not None
        return error["code"], ws.close_code


def _assert_gaps(watch: MediaWatch, since: float, until: float) -> None:
    gaps = watch.longest_gaps(since, until)
    print("longest media gaps (s):", {f"{v}<-{p}": round(g, 2) for (v, p), g in gaps.items()})
    slow = {pair: gap for pair, gap in gaps.items() if gap > MAX_GAP_S}
    assert not slow, f"media stopped for more than {MAX_GAP_S} s: {slow}"


async def test_drain_command_moves_the_meeting_without_a_gap(
    control_plane: str, etcd: EtcdServer, store: EtcdStore
) -> None:
    use_host_addresses(["127.0.0.1"])
    relays = {r.node_id: r for r in (RelayProcess("drain-a", etcd.endpoint),
                                     RelayProcess("drain-b", etcd.endpoint))}  # fmt: skip
    await asyncio.gather(*(r.start() for r in relays.values()))
    sessions: dict[str, Session] = {}
    try:
        async with RoomsClient(control_plane) as rooms:
            room_id, passcode, doomed, sessions = await _meeting(rooms, relays, "drain-cli")
            survivor = next(r for r in relays.values() if r is not doomed)
            async with MediaWatch(sessions) as watch:
                await watch.flowing(time.monotonic(), 10, timeout=60)
                assert await _readiness(doomed.http_port) == 200
                started = time.monotonic()
                drain = await asyncio.create_subprocess_exec(
                    CONCLAVE, "relay", "drain", doomed.node_id, "--etcd", etcd.endpoint,
                    "--deadline", "60", "--wait", stdout=subprocess.PIPE,
                )  # fmt: skip
                # Draining shows at once: /readyz, and the record placement reads.
                async with asyncio.timeout(10):
                    while await _readiness(doomed.http_port) != 503:
                        await asyncio.sleep(0.05)
                record = await _node_record(store, doomed.node_id)
                assert record is not None and record["draining"] is True
                assert await store.get(drain_key(doomed.node_id)) is not None
                out, _ = await asyncio.wait_for(drain.communicate(), 60)
                assert drain.returncode == 0, out
                result = json.loads(out)
                assert result["state"] == "drained" and result["node_id"] == doomed.node_id
                await _all_moved(sessions, doomed.node_id, timeout=30)
                moved = time.monotonic()
                await watch.flowing(moved, 20, timeout=30)
                _assert_gaps(watch, started, time.monotonic())
            assert {s.node_id for s in sessions.values()} == {survivor.node_id}
            assert all(s.reconnects == 1 and not s.closed for s in sessions.values())
            # The drained node stays up, draining, and gets no new meeting.
            assert await _readiness(doomed.http_port) == 503
            record = await _node_record(store, doomed.node_id)
            assert record is not None and record["draining"] is True
            assert record["participants"] == 0
            assert await _placements_on(store, doomed.node_id) == []
            for name in ("after-1", "after-2", "after-3"):
                assert (await rooms.create_room(name)).node_id == survivor.node_id
            late = await rooms.join_room(room_id, "dan", False, passcode)
            assert late.node_id == survivor.node_id
            # A grant for the drained node (a control plane's stale view) is refused.
            assert await _refusal(store, doomed, room_id) == ("node_draining", 4004)
            assert doomed.metric('conclave_node_state{state="draining"}') == 1
            assert doomed.metric('conclave_node_state{state="serving"}') == 0
    finally:
        await asyncio.gather(*(s.leave() for s in sessions.values()))
        await asyncio.gather(*(r.stop() for r in relays.values()))


async def test_sigterm_drains_then_the_relay_exits(
    control_plane: str, etcd: EtcdServer, store: EtcdStore
) -> None:
    use_host_addresses(["127.0.0.1"])
    relays = {
        r.node_id: r
        for r in (
            RelayProcess("term-a", etcd.endpoint, extra_args=["--drain-deadline", "60"]),
            RelayProcess("term-b", etcd.endpoint, extra_args=["--drain-deadline", "60"]),
        )
    }
    await asyncio.gather(*(r.start() for r in relays.values()))
    sessions: dict[str, Session] = {}
    try:
        async with RoomsClient(control_plane) as rooms:
            _, _, doomed, sessions = await _meeting(rooms, relays, "drain-sigterm")
            survivor = next(r for r in relays.values() if r is not doomed)
            assert doomed.process is not None
            async with MediaWatch(sessions) as watch:
                await watch.flowing(time.monotonic(), 10, timeout=60)
                started = time.monotonic()
                doomed.process.send_signal(signal.SIGTERM)
                # While it drains: not ready, and its record says so.
                saw_503 = saw_draining = False
                async with asyncio.timeout(10):
                    while not (saw_503 and saw_draining):
                        saw_503 = saw_503 or await _readiness(doomed.http_port) == 503
                        record = await _node_record(store, doomed.node_id)
                        saw_draining = saw_draining or bool(record and record.get("draining"))
                        await asyncio.sleep(0.02)
                # It leaves once its meeting moved.
                assert await asyncio.wait_for(doomed.process.wait(), 30) == 0
                assert await _node_record(store, doomed.node_id) is None
                await _all_moved(sessions, doomed.node_id, timeout=30)
                moved = time.monotonic()
                await watch.flowing(moved, 20, timeout=30)
                _assert_gaps(watch, started, time.monotonic())
            assert {s.node_id for s in sessions.values()} == {survivor.node_id}
            assert all(s.reconnects == 1 and not s.closed for s in sessions.values())
            assert await _placements_on(store, doomed.node_id) == []
            assert (await rooms.create_room("after")).node_id == survivor.node_id
    finally:
        await asyncio.gather(*(s.leave() for s in sessions.values()))
        await asyncio.gather(*(r.stop() for r in relays.values()))
