"""conclave/spans.py against a real etcd: the nodes a meeting spans, the fenced
addition, lease-bound span keys, leaving and forgetting."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from conclave import spans
from conclave.placements import encode_placement, placement_key
from conclave.store import EtcdStore


def ids() -> tuple[str, str, str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"room-{tag}", f"home-{tag}", f"b-{tag}", f"c-{tag}"


async def test_two_concurrent_additions_exactly_one_commits(store: EtcdStore) -> None:
    room, home, b, c = ids()
    home_lease, b_lease, c_lease = [await store.grant_lease(10) for _ in range(3)]
    try:
        await store.put(placement_key(room), encode_placement(home), home_lease)
        node, value, revision, lease = await spans.read_home(store, room)
        assert (node, value, lease) == (home, encode_placement(home), home_lease.id)
        fence = (value, revision, lease)
        results = await asyncio.gather(
            spans.add(store, room, b, b_lease.id, fence),
            spans.add(store, room, c, c_lease.id, fence),
        )
        assert sorted(results) == [False, True]
        winner, loser = (b, c) if results[0] else (c, b)
        # The loser re-reads: it sees the winner, and may add itself on the new fence.
        assert await spans.meeting_nodes(store, room) == {home, winner}
        assert await spans.is_member(store, room, winner)
        assert await spans.is_member(store, room, home)
        assert not await spans.is_member(store, room, loser)
        _, value2, revision2, lease2 = await spans.read_home(store, room)
        assert (value2, lease2) == (value, lease) and revision2 > revision
        assert not await spans.add(store, room, loser, c_lease.id, fence)  # stale fence
        loser_lease = c_lease if loser == c else b_lease
        assert await spans.add(store, room, loser, loser_lease.id, (value2, revision2, lease2))
        assert await spans.meeting_nodes(store, room) == {home, b, c}
        # The placement kept its lease: it still goes with the home node.
        await home_lease.revoke()
        assert await store.get(placement_key(room)) is None
        assert await spans.meeting_nodes(store, room) == {b, c}
    finally:
        for held in (home_lease, b_lease, c_lease):
            await held.revoke()


async def test_adding_an_existing_member_fails(store: EtcdStore) -> None:
    room, home, b, _ = ids()
    home_lease, b_lease = await store.grant_lease(10), await store.grant_lease(10)
    try:
        await store.put(placement_key(room), encode_placement(home), home_lease)
        _, value, revision, lease = await spans.read_home(store, room)
        assert await spans.add(store, room, b, b_lease.id, (value, revision, lease))
        _, value, revision, lease = await spans.read_home(store, room)
        assert not await spans.add(store, room, b, b_lease.id, (value, revision, lease))
        assert await spans.read_home(store, room) == (home, value, revision, lease)
    finally:
        await home_lease.revoke()
        await b_lease.revoke()


async def test_span_keys_vanish_with_their_nodes_lease(store: EtcdStore) -> None:
    room, home, b, c = ids()
    leases = {n: await store.grant_lease(10) for n in (home, b, c)}
    try:
        await store.put(placement_key(room), encode_placement(home), leases[home])
        for n in (b, c):
            _, value, revision, lease = await spans.read_home(store, room)
            assert await spans.add(store, room, n, leases[n].id, (value, revision, lease))
        assert await spans.span_nodes(store, room) == {b, c}
        await leases.pop(b).revoke()
        assert await spans.meeting_nodes(store, room) == {home, c}
    finally:
        for held in leases.values():
            await held.revoke()


async def test_leave_all_and_forget_meeting(store: EtcdStore) -> None:
    room1, home, b, c = ids()
    room2 = room1 + "-2"
    leases = {n: await store.grant_lease(10) for n in (home, b, c)}
    try:
        for room in (room1, room2):
            await store.put(placement_key(room), encode_placement(home), leases[home])
            for n in (b, c):
                _, value, revision, lease = await spans.read_home(store, room)
                assert await spans.add(store, room, n, leases[n].id, (value, revision, lease))
        assert await spans.leave_all(store, b) == 2
        assert await spans.leave_all(store, b) == 0
        assert await spans.meeting_nodes(store, room1) == {home, c}
        assert await spans.meeting_nodes(store, room2) == {home, c}
        await spans.forget_meeting(store, room1)
        assert await spans.meeting_nodes(store, room1) == {home}  # the placement is not a span
        assert await spans.meeting_nodes(store, room2) == {home, c}
    finally:
        for held in leases.values():
            await held.revoke()


async def test_a_gone_lease_is_refused(store: EtcdStore) -> None:
    room, home, b, _ = ids()
    home_lease, b_lease = await store.grant_lease(10), await store.grant_lease(10)
    try:
        await store.put(placement_key(room), encode_placement(home), home_lease)
        _, value, revision, lease = await spans.read_home(store, room)
        await b_lease.revoke()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await spans.add(store, room, b, b_lease.id, (value, revision, lease))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert await spans.span_nodes(store, room) == set()
    finally:
        await home_lease.revoke()
