"""Losing a relay: its lease runs out, and the meeting is placed again on the next join."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from client.sdk import RoomsClient, Session
from conclave.ice import use_host_addresses
from conclave.processes import EtcdServer, free_port, wait_for_line
from conclave.store import NODES_PREFIX, PLACEMENT_PREFIX, EtcdStore
from tests.integration.relay_harness import RelayProcess, video_frames

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def etcd() -> AsyncIterator[EtcdServer]:
    """A dedicated etcd: the control plane must see only this module's relays."""
    server = EtcdServer()
    server.start()
    server.wait_ready()
    yield server
    server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def control_plane(etcd: EtcdServer) -> AsyncIterator[str]:
    listen = f"127.0.0.1:{free_port()}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control_plane", "--etcd", etcd.endpoint, "--listen", listen,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    await wait_for_line(process.stdout, "control-plane ready", timeout=30)
    yield listen
    process.terminate()
    await process.wait()


async def test_killed_relay_expires_and_meeting_moves_to_survivor(
    etcd: EtcdServer, control_plane: str
) -> None:
    use_host_addresses(["127.0.0.1"])
    relays = {r.node_id: r for r in (RelayProcess("relay-a", etcd.endpoint),
                                     RelayProcess("relay-b", etcd.endpoint))}  # fmt: skip
    await asyncio.gather(*(r.start() for r in relays.values()))
    store = EtcdStore([etcd.endpoint])
    await store.connect()
    try:
        async with RoomsClient(control_plane) as rooms:
            room = await rooms.create_room("failover")
            doomed = relays[room.node_id]
            survivor = next(r for r in relays.values() if r is not doomed)

            doomed.kill()
            killed_at = time.monotonic()
            while await store.get(NODES_PREFIX + doomed.node_id) is not None:
                assert time.monotonic() - killed_at < 5.0, "lease did not expire within 5 s"
                await asyncio.sleep(0.1)
            assert await store.get(PLACEMENT_PREFIX + room.room_id) is None

            joins = [
                await rooms.join_room(room.room_id, name, True, room.passcode)
                for name in ("ann", "ben")
            ]
            assert {j.node_id for j in joins} == {survivor.node_id}
            assert (await rooms.get_room(room.room_id, room.host_key)).node_id == survivor.node_id

            ann = Session(joins[0], "ann", ["video"])
            ben = Session(joins[1], "ben", [])
            async with ann, ben:
                async with asyncio.timeout(20):
                    while video_frames(ben, "ann") < 10:
                        await asyncio.sleep(0.2)
    finally:
        await store.close()
        await asyncio.gather(*(r.stop() for r in relays.values()))
