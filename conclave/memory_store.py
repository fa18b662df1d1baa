"""An in-memory `EtcdStore` for simulations (control_plane/sim.py) and tests.

The capacity simulation drives the real Placer and NodeRegistry through a whole
synthetic day; a real etcd would make that slow and non-deterministic. This store
keeps what that code relies on from etcd: one revision counter bumped by every
change, `create_revision == 0` guards, keys attached to leases that expire on the
store's clock (which a simulation moves), watches that replay from a revision, and
the same `observe` reports a real store makes (so write rates are counted alike).
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import grpc

from conclave.store import EtcdStore, Lease, RequestObserver, StoreError, WatchEvent

HISTORY = 10_000  # changes kept for watches that start at an earlier revision


def _ignore(operation: str, seconds: float, failed: bool) -> None:
    pass


@dataclass(slots=True)
class _Entry:
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(slots=True)
class _LeaseState:
    ttl: int
    expires_at: float | None  # None: kept alive by its holder
    keys: set[str] = field(default_factory=set)


class MemoryLease(Lease):
    """A lease its holder keeps alive until `revoke()` or `stop_keepalive()`."""

    def __init__(self, store: MemoryStore, lease_id: int, ttl: int) -> None:
        # Not Lease.__init__: there is no etcd client and no keepalive task to run.
        self.id = lease_id
        self.ttl = ttl
        self.lost = asyncio.Event()
        self.refreshed_at = store.clock()
        self._store = store

    def stop_keepalive(self) -> None:
        """The holder died: the lease now runs out `ttl` seconds from the store's now."""
        self._store.stop_keepalive(self.id)

    async def revoke(self) -> None:
        self._store.revoke(self.id)


class MemoryStore(EtcdStore):
    """Keys, leases and prefix watches in one process, on an injectable clock."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, observe: RequestObserver | None = None
    ) -> None:
        # Not EtcdStore.__init__: no etcd client.
        self.observe = observe or _ignore
        self.clock = clock
        self.revision = 0
        self._data: dict[str, _Entry] = {}
        # directory ("/a/b/") -> its keys and subdirectories: prefix reads and deletes
        # of a directory cost its size, not the store's (a day leaves many keys).
        self._tree: dict[str, set[str]] = {}
        self._leases: dict[int, _LeaseState] = {}
        self._expiries: list[tuple[float, int]] = []
        self._next_lease = 0x7E57_0000
        self._watchers: list[tuple[str, asyncio.Queue[WatchEvent]]] = []
        self._history: deque[tuple[int, WatchEvent]] = deque(maxlen=HISTORY)

    # --- plumbing ----------------------------------------------------------------

    def _report(self, operation: str) -> None:
        self.observe(operation, 0.0, False)

    def _expire(self) -> None:
        """Revoke every lease whose time ran out, as etcd's lessor does."""
        now = self.clock()
        while self._expiries and self._expiries[0][0] <= now:
            expires_at, lease_id = heapq.heappop(self._expiries)
            state = self._leases.get(lease_id)
            if state is not None and state.expires_at == expires_at:
                self._drop_lease(lease_id)

    def _drop_lease(self, lease_id: int) -> None:
        state = self._leases.pop(lease_id, None)
        if state is None:
            return
        if state.keys:
            self.revision += 1  # one revision for all of the lease's keys, like etcd
            for key in sorted(state.keys):
                self._remove(key)

    def _index(self, key: str) -> None:
        child, parent = key, _directory(key)
        while parent:
            members = self._tree.setdefault(parent, set())
            if child in members:
                return
            members.add(child)
            child, parent = parent, _directory(parent[:-1])

    def _unindex(self, key: str) -> None:
        child, parent = key, _directory(key)
        while parent:
            members = self._tree[parent]
            members.discard(child)
            if members:
                return
            del self._tree[parent]
            child, parent = parent, _directory(parent[:-1])

    def _keys_under(self, prefix: str) -> list[str]:
        if not prefix.endswith("/"):
            return sorted(k for k in self._data if k.startswith(prefix))
        keys: list[str] = []
        pending = [prefix]
        while pending:
            for member in self._tree.get(pending.pop(), ()):
                (pending if member.endswith("/") else keys).append(member)
        return sorted(keys)

    def _remove(self, key: str) -> None:
        entry = self._data.pop(key)
        self._unindex(key)
        if entry.lease:
            lease = self._leases.get(entry.lease)
            if lease is not None:
                lease.keys.discard(key)
        self._emit(WatchEvent("delete", key, b""))

    def _write(
        self, key: str, value: bytes, lease: Lease | int, *, new_revision: bool = True
    ) -> None:
        """One key's put; `new_revision=False` for the second and later puts of one
        transaction, which etcd applies at a single revision."""
        lease_id = lease.id if isinstance(lease, Lease) else lease
        self._check_lease(lease_id)
        if new_revision:
            self.revision += 1
        old = self._data.get(key)
        if old is not None and old.lease and old.lease != lease_id:
            state = self._leases.get(old.lease)
            if state is not None:
                state.keys.discard(key)
        if old is None:
            self._data[key] = _Entry(value, self.revision, self.revision, 1, lease_id)
            self._index(key)
        else:
            self._data[key] = _Entry(
                value, old.create_revision, self.revision, old.version + 1, lease_id
            )
        if lease_id:
            self._leases[lease_id].keys.add(key)
        self._emit(WatchEvent("put", key, value))

    def _check_lease(self, lease_id: int) -> None:
        if lease_id and lease_id not in self._leases:
            # What etcd answers; the placer catches exactly this.
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.NOT_FOUND,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details="etcdserver: requested lease not found",
            )

    def _emit(self, event: WatchEvent) -> None:
        self._history.append((self.revision, event))
        for prefix, queue in self._watchers:
            if event.key.startswith(prefix):
                queue.put_nowait(event)

    # --- the EtcdStore interface ----------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> None:
        pass

    async def close(self) -> None:
        pass

    async def get(self, key: str) -> bytes | None:
        self._expire()
        self._report("get")
        entry = self._data.get(key)
        return entry.value if entry is not None else None

    async def get_prefix(self, prefix: str) -> tuple[dict[str, bytes], int]:
        self._expire()
        self._report("get_prefix")
        return {k: self._data[k].value for k in self._keys_under(prefix)}, self.revision

    async def put(self, key: str, value: bytes, lease: Lease | int = 0) -> None:
        self._expire()
        self._report("put")
        self._write(key, value, lease)

    async def delete(self, key: str) -> bool:
        self._expire()
        self._report("delete")
        if key not in self._data:
            return False
        self.revision += 1
        self._remove(key)
        return True

    async def delete_prefix(self, prefix: str) -> int:
        self._expire()
        self._report("delete")
        keys = self._keys_under(prefix)
        if keys:
            self.revision += 1
            for key in keys:
                self._remove(key)
        return len(keys)

    async def create_if_absent(
        self, key: str, value: bytes, lease: Lease | int = 0
    ) -> tuple[bool, bytes]:
        self._expire()
        self._report("transaction")
        entry = self._data.get(key)
        if entry is not None:
            return False, entry.value
        self._write(key, value, lease)
        return True, value

    async def create_all_if_absent(self, items: Sequence[tuple[str, bytes, int]]) -> bool:
        self._expire()
        self._report("transaction")
        if any(key in self._data for key, _, _ in items):
            return False
        for index, (key, value, lease) in enumerate(items):
            self._write(key, value, lease, new_revision=index == 0)
        return True

    async def get_versioned(self, key: str) -> tuple[bytes | None, int]:
        self._expire()
        self._report("get")
        entry = self._data.get(key)
        return (entry.value, entry.version) if entry is not None else (None, 0)

    async def put_if_version(self, key: str, version: int, value: bytes, lease: int = 0) -> bool:
        self._expire()
        self._report("transaction")
        entry = self._data.get(key)
        if (entry.version if entry is not None else 0) != version:
            return False
        self._write(key, value, lease)
        return True

    async def get_with_meta(self, key: str) -> tuple[bytes | None, int, int]:
        self._expire()
        self._report("get")
        entry = self._data.get(key)
        if entry is None:
            return None, 0, 0
        return entry.value, entry.mod_revision, entry.lease

    async def put_fenced(
        self,
        fence: tuple[str, bytes, int, int],
        key: str,
        value: bytes,
        lease: int = 0,
    ) -> bool:
        self._expire()
        self._report("transaction")
        fence_key, fence_value, fence_revision, fence_lease = fence
        entry = self._data.get(fence_key)
        if (entry.mod_revision if entry is not None else 0) != fence_revision:
            return False
        if key in self._data:
            return False
        self._check_lease(fence_lease)
        self._check_lease(lease)
        self._write(fence_key, fence_value, fence_lease)
        self._write(key, value, lease, new_revision=False)
        return True

    async def delete_if_value(self, key: str, value: bytes) -> bool:
        self._expire()
        self._report("transaction")
        entry = self._data.get(key)
        if entry is None or entry.value != value:
            return False
        self.revision += 1
        self._remove(key)
        return True

    async def grant_expiring_lease(self, ttl: int) -> int:
        self._expire()
        self._report("lease_grant")
        return self._grant(ttl, self.clock() + ttl)

    async def grant_lease(self, ttl: int) -> Lease:
        self._expire()
        self._report("lease_grant")
        return MemoryLease(self, self._grant(ttl, None), ttl)

    def _grant(self, ttl: int, expires_at: float | None) -> int:
        self._next_lease += 1
        self._leases[self._next_lease] = _LeaseState(ttl, expires_at)
        if expires_at is not None:
            heapq.heappush(self._expiries, (expires_at, self._next_lease))
        return self._next_lease

    def stop_keepalive(self, lease_id: int) -> None:
        """Let a kept lease run out `ttl` seconds from now (its holder died)."""
        state = self._leases.get(lease_id)
        if state is not None and state.expires_at is None:
            state.expires_at = self.clock() + state.ttl
            heapq.heappush(self._expiries, (state.expires_at, lease_id))

    def revoke(self, lease_id: int) -> None:
        """Delete the lease and every key attached to it now."""
        self._expire()
        self._report("lease_revoke")
        self._drop_lease(lease_id)

    def lease_count(self) -> int:
        self._expire()
        return len(self._leases)

    def key_count(self) -> int:
        self._expire()
        return len(self._data)

    async def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Changes under `prefix` from `start_revision` on (0: from now)."""
        queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
        backlog: list[WatchEvent] = []
        if 0 < start_revision <= self.revision:
            # Only a full history may have dropped changes the watch asks for.
            if len(self._history) == HISTORY and start_revision < self._history[0][0]:
                raise StoreError("etcdserver: mvcc: required revision has been compacted")
            backlog = [
                e for rev, e in self._history if rev >= start_revision and e.key.startswith(prefix)
            ]
        watcher = (prefix, queue)
        self._watchers.append(watcher)
        try:
            for event in backlog:
                yield event
            while True:
                yield await queue.get()
        finally:
            self._watchers.remove(watcher)


def _directory(key: str) -> str:
    """The directory a key is in: "/a/b/c" -> "/a/b/", "/a" -> "/", "" -> "" (none)."""
    return key[: key.rfind("/") + 1]
