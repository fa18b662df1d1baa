"""The etcd store interface against a real etcd server."""

from __future__ import annotations

import asyncio
import uuid

from conclave.store import EtcdStore, PrefixCache


async def test_create_if_absent_has_exactly_one_winner(store: EtcdStore) -> None:
    key = f"/test/{uuid.uuid4()}"
    results = await asyncio.gather(
        *(store.create_if_absent(key, f"v{i}".encode()) for i in range(8))
    )
    winners = [value for created, value in results if created]
    assert len(winners) == 1
    assert {value for _, value in results} == {winners[0]}


async def test_lease_keys_vanish_when_lease_revoked(store: EtcdStore) -> None:
    key = f"/test/{uuid.uuid4()}"
    lease = await store.grant_lease(3)
    await store.put(key, b"x", lease)
    assert await store.get(key) == b"x"
    await asyncio.sleep(2.5)  # longer than one keepalive interval: still alive
    assert await store.get(key) == b"x"
    await lease.revoke()
    assert await store.get(key) is None


async def test_prefix_cache_follows_changes(store: EtcdStore) -> None:
    prefix = f"/test/{uuid.uuid4()}/"
    await store.put(prefix + "a", b"1")
    seen: list[tuple[str, bytes | None]] = []
    two_changes = asyncio.Event()

    def record(key: str, value: bytes | None) -> None:
        seen.append((key, value))
        if len(seen) == 2:
            two_changes.set()

    cache = PrefixCache(store, prefix, record)
    await cache.start()
    assert cache.items == {"a": b"1"}
    await store.put(prefix + "b", b"2")
    await store.delete(prefix + "a")
    async with asyncio.timeout(5):
        await two_changes.wait()
    assert cache.items == {"b": b"2"}
    assert seen == [("b", b"2"), ("a", None)]
    await cache.stop()
