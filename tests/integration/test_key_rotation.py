"""Rotating the grant-signing key during a running meeting drops nobody
(control_plane/signing.py; docs/security.md, "Key rotation").

A control plane (in-process) rotates its key every half second while people keep
joining a meeting on a real relay: every join succeeds, including one whose grant
was signed just before a rotation and used after it, nobody already in the meeting
reconnects, and video keeps flowing. Retired keys leave etcd once no grant they
signed can still be valid.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from client.sdk import RoomsClient, Session, join
from conclave.ice import use_host_addresses
from conclave.processes import EtcdServer
from conclave.store import GRANT_KEYS_PREFIX, EtcdStore
from control_plane.app import ControlPlane
from tests.integration.continuity import MediaWatch
from tests.integration.relay_harness import RelayProcess

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROTATION_S = 0.5
RETIRE_AFTER_S = 3.0  # the test's grants live 30 s, but are used within a second


async def test_rotating_the_signing_key_during_a_meeting_drops_nobody(etcd: EtcdServer) -> None:
    use_host_addresses(["127.0.0.1"])
    relay = RelayProcess("rotation-relay", etcd.endpoint)
    await relay.start()
    replica = ControlPlane(
        [etcd.endpoint], signing_rotation_s=ROTATION_S, signing_retire_after_s=RETIRE_AFTER_S
    )
    port = await replica.start("127.0.0.1", 0)
    store = EtcdStore([etcd.endpoint])
    await store.connect()
    sessions: dict[str, Session] = {}
    try:
        async with RoomsClient(f"127.0.0.1:{port}") as rooms:
            room = await rooms.create_room("rotation")
            for name in ("ann", "ben"):
                sessions[name] = await join(
                    rooms, room.room_id, name, ["video"], passcode=room.passcode, join_timeout=30
                )
            async with MediaWatch(sessions) as watch:
                await watch.flowing(time.monotonic(), 10, timeout=60)
                started, first_rotation = time.monotonic(), replica.signer.rotations
                # A grant signed now, used after the key that signed it was replaced.
                early = await rooms.join_room(room.room_id, "early", False, room.passcode)
                while replica.signer.rotations == first_rotation:
                    await asyncio.sleep(0.05)
                async with Session(early, "early", []) as late_user:
                    assert late_user.participant_id == early.participant_id
                # Joins throughout several rotations.
                for i in range(6):
                    guest = await join(
                        rooms, room.room_id, f"guest-{i}", [], passcode=room.passcode,
                        join_timeout=30,
                    )  # fmt: skip
                    await guest.leave()
                    await asyncio.sleep(ROTATION_S / 2)
                await watch.flowing(time.monotonic(), 10, timeout=30)
                gaps = watch.longest_gaps(started, time.monotonic())
            rotations = replica.signer.rotations - first_rotation
            print(f"{rotations} rotations; longest video gaps (s):",
                  {f"{v}<-{p}": round(g, 2) for (v, p), g in gaps.items()})  # fmt: skip
            assert rotations >= 4
            assert all(gap < 1.0 for gap in gaps.values()), gaps
            assert all(s.reconnects == 0 and not s.closed for s in sessions.values())
            # Published: the current key and those still retiring, not every key ever.
            keys, _ = await store.get_prefix(GRANT_KEYS_PREFIX)
            assert replica.signer.etcd_key in keys
            assert len(keys) <= RETIRE_AFTER_S / ROTATION_S + 3
    finally:
        await asyncio.gather(*(s.leave() for s in sessions.values()), return_exceptions=True)
        await store.close()
        await replica.stop()
        await relay.stop()
