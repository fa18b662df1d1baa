"""conclave/spans.py on the in-memory etcd (conclave/memory_store.py) that
`conclave sim` runs on: the same fenced addition as a real etcd."""

from __future__ import annotations

import grpc
import pytest

from conclave import spans
from conclave.memory_store import MemoryStore
from conclave.placements import encode_placement, placement_key


async def test_fenced_additions_and_leases() -> None:
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    home, b, c = [await store.grant_lease(3) for _ in range(3)]
    await store.put(placement_key("r"), encode_placement("home"), home)
    node, value, revision, lease = await spans.read_home(store, "r")
    assert (node, lease) == ("home", home.id)
    fence = (value, revision, lease)
    assert await spans.add(store, "r", "b", b.id, fence)
    assert not await spans.add(store, "r", "c", c.id, fence)  # the fence moved
    _, value2, revision2, lease2 = await spans.read_home(store, "r")
    assert (value2, lease2) == (value, lease) and revision2 > revision
    assert await spans.add(store, "r", "c", c.id, (value2, revision2, lease2))
    assert await spans.meeting_nodes(store, "r") == {"home", "b", "c"}
    store.stop_keepalive(b.id)
    now[0] += 4
    assert await spans.meeting_nodes(store, "r") == {"home", "c"}
    await c.revoke()
    _, value3, revision3, lease3 = await spans.read_home(store, "r")
    with pytest.raises(grpc.aio.AioRpcError):
        await spans.add(store, "r", "c", c.id, (value3, revision3, lease3))
    assert await spans.read_home(store, "r") == ("home", value3, revision3, lease3)


async def test_leave_all_and_forget_meeting() -> None:
    store = MemoryStore()
    home, b = await store.grant_lease(3), await store.grant_lease(3)
    for room in ("r1", "r2"):
        await store.put(placement_key(room), encode_placement("home"), home)
        _, value, revision, lease = await spans.read_home(store, room)
        assert await spans.add(store, room, "b", b.id, (value, revision, lease))
    assert await spans.is_member(store, "r1", "b")
    assert await spans.leave_all(store, "b") == 2
    assert not await spans.is_member(store, "r1", "b")
    _, value, revision, lease = await spans.read_home(store, "r1")
    assert await spans.add(store, "r1", "b", b.id, (value, revision, lease))
    await spans.forget_meeting(store, "r1")
    assert await spans.meeting_nodes(store, "r1") == {"home"}
