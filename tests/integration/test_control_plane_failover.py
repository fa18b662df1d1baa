"""Losing one control-plane replica: meetings on the relays are untouched, joins go
through the other replica, and a client that knows both addresses carries on.

Two `python -m control_plane` replicas on one etcd, one relay, Python clients with
real media. Replica A is SIGKILLed, so nothing is cleaned up: its grant-signing key
stays in etcd until its lease (control_plane/signing.py, 10 s) runs out, and
grants A signed before it died verify exactly as long as that key is there.
The test prints what it measured (run with `-s`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest
import pytest_asyncio

from client.sdk import ConclaveError, RoomsClient, Session
from conclave.ice import use_host_addresses
from conclave.processes import EtcdServer
from conclave.store import GRANT_KEYS_PREFIX, EtcdStore
from control_plane.signing import KEY_LEASE_TTL_S
from protos import grants
from tests.integration.continuity import MediaWatch, timed
from tests.integration.relay_harness import (
    ControlPlaneProcess,
    RelayProcess,
    running,
    video_frames,
    wait_for_frames,
)

T = TypeVar("T")

MEDIA_GAP_LIMIT_S = 1.0
RETRIES = 3  # a call in flight to the dead replica fails once; the next goes elsewhere


@pytest_asyncio.fixture
async def etcd() -> AsyncIterator[EtcdServer]:
    """A dedicated etcd: the replicas must see only this test's relay."""
    async with running(EtcdServer()) as server:
        yield server


async def with_retries(call: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """The result and how many attempts it took; UNAVAILABLE is tried again."""
    for attempt in range(1, RETRIES + 1):
        try:
            return await call(), attempt
        except ConclaveError as exc:
            if exc.code != "UNAVAILABLE" or attempt == RETRIES:
                raise
            await asyncio.sleep(0.2)
    raise AssertionError("unreachable")


@pytest.mark.timeout(90)
async def test_killed_replica_leaves_media_alone_and_joins_move_to_the_other(
    etcd: EtcdServer,
) -> None:
    use_host_addresses(["127.0.0.1"])
    replica_a = ControlPlaneProcess(etcd.endpoint)
    replica_b = ControlPlaneProcess(etcd.endpoint)
    relay = RelayProcess("relay-cp", etcd.endpoint)
    store = EtcdStore([etcd.endpoint])
    try:
        await asyncio.gather(replica_a.start(), replica_b.start(), relay.start(), store.connect())
        # Both addresses in one gRPC target: pick_first takes A while it lives.
        both = f"ipv4:{replica_a.listen},{replica_b.listen}"
        async with (
            RoomsClient(replica_a.listen) as via_a,
            RoomsClient(replica_b.listen) as via_b,
            RoomsClient(both) as via_both,
        ):
            room = await via_a.create_room("replicas")
            join_ann = await via_a.join_room(room.room_id, "ann", True, room.passcode)
            join_ben = await via_a.join_room(room.room_id, "ben", False, room.passcode)
            # Grants from A that nobody has used yet: one for while A's key is in
            # etcd, one for after its lease ran out.
            early = await via_a.join_room(room.room_id, "cleo", False, room.passcode)
            late = await via_a.join_room(room.room_id, "dora", False, room.passcode)
            key_of_a = grants.peek_key_id(early.grant)
            assert await store.get(GRANT_KEYS_PREFIX + key_of_a) is not None
            probe = await via_both.join_room(room.room_id, "probe", False, room.passcode)
            assert grants.peek_key_id(probe.grant) == key_of_a, "pick_first starts with A"

            ann = Session(join_ann, "ann", ["video"])
            ben = Session(join_ben, "ben")
            async with (
                ann,
                ben,
                MediaWatch({"ann": ann, "ben": ben}, publishers=["ann"]) as watch,
            ):
                await wait_for_frames(ben, "ann", 10)

                replica_a.kill()
                killed_at = time.monotonic()

                # At once: the client with both addresses, its channel still on A.
                (fay, attempts), seconds_both = await timed(
                    with_retries(
                        lambda: via_both.join_room(room.room_id, "fay", False, room.passcode)
                    )
                )
                assert grants.peek_key_id(fay.grant) != key_of_a
                # A new client with both addresses, A first: pick_first skips it.
                async with RoomsClient(both) as fresh:
                    (other, create_attempts), seconds_create = await timed(
                        with_retries(lambda: fresh.create_room("after"))
                    )
                # And B by itself.
                (eve, seconds_b) = await timed(
                    via_b.join_room(room.room_id, "eve", False, room.passcode)
                )

                # A grant A issued before it died still admits: its key is in etcd.
                async with Session(early, "cleo") as cleo:
                    await wait_for_frames(cleo, "ann", 5)
                early_admitted = time.monotonic() - killed_at

                async with Session(eve, "eve") as eve_session, Session(fay, "fay") as fay_session:
                    await wait_for_frames(eve_session, "ann", 5)
                    await wait_for_frames(fay_session, "ann", 5)
                assert other.room_id

                # A's key leaves etcd with its lease; B's stays.
                while await store.get(GRANT_KEYS_PREFIX + key_of_a) is not None:
                    assert time.monotonic() - killed_at < KEY_LEASE_TTL_S + 5, "A's key stayed"
                    await asyncio.sleep(0.2)
                key_gone = time.monotonic() - killed_at
                keys, _ = await store.get_prefix(GRANT_KEYS_PREFIX)
                assert len(keys) == 1, "B's key is there"

                # Now A's unused grant (still within its lifetime) verifies no more.
                with pytest.raises(ConclaveError) as refused:
                    async with Session(late, "dora"):
                        pass
                assert refused.value.code == "grant_unknown_key", refused.value

                # The meeting that was running when A died never noticed.
                frames = video_frames(ben, "ann")
                await asyncio.sleep(1)
                assert video_frames(ben, "ann") > frames
                longest_gap = watch.longest_gaps(killed_at, time.monotonic())[("ben", "ann")]

        print(
            f"\n[control-plane replica killed] ongoing video's longest gap "
            f"{longest_gap:.2f} s over {time.monotonic() - killed_at:.1f} s; "
            f"A's grant admitted {early_admitted:.2f} s after the kill; JoinRoom via B "
            f"{seconds_b:.2f} s; via both addresses {seconds_both:.2f} s in {attempts} "
            f"attempt(s), CreateRoom {seconds_create:.2f} s in {create_attempts}; "
            f"A's key left etcd {key_gone:.1f} s after the kill "
            f"(lease TTL {KEY_LEASE_TTL_S} s)"
        )
        assert longest_gap < MEDIA_GAP_LIMIT_S
    finally:
        await store.close()
        await asyncio.gather(relay.stop(), replica_a.stop(), replica_b.stop())
