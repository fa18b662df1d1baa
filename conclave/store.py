"""The small etcd interface the relay and the control plane share.

Everything above this module talks in keys, JSON-free bytes values, leases and
prefix watches; only this module knows the etcd client library (etcd3aio, see
docs/decisions.md), so swapping it touches one file.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeVar

import grpc
from etcd3aio import Etcd3Client, prefix_range_end
from etcd3aio._protobuf import Compare, LeaseKeepAliveRequest, LeaseKeepAliveResponse
from etcd3aio.errors import EtcdConnectionError, EtcdTransientError
from etcd3aio.kv import KVService

from conclave.tls import TlsFiles

log = logging.getLogger(__name__)

# One cell's key space (docs/architecture.md).
NODES_PREFIX = "/conclave/nodes/"
ROOMS_PREFIX = "/conclave/rooms/"
PLACEMENT_PREFIX = "/conclave/placement/"
GRANT_KEYS_PREFIX = "/conclave/keys/grant-signing/"


#: the name checked in etcd's certificate when the client round-robins over members
TLS_SERVER_NAME = "localhost"  # in the dev server certificate (conclave/tls.py)


class StoreError(Exception):
    """etcd could not be reached or refused a request."""


# --- Failing over between etcd members ---------------------------------------
# etcd3aio opens one gRPC channel over all endpoints (round_robin): a request that
# meets a dead member fails at once with UNAVAILABLE and etcd3aio retries it on
# another. What it cannot see is a write (or lease grant) that a follower forwarded
# to a leader killed a moment before: that request is lost without an answer and
# would hang until its deadline. So each request gets a short deadline per attempt,
# and attempts go on, round-robin to the next member, until the request's whole
# budget is spent; an election (about 1 to 2 s) then costs a join a second or two,
# not a failure. A retried write may have been applied once already: `put`
# rewrites the same value, a transaction's guard fails the second time (callers
# re-read), a repeated `grant_lease` leaves a lease nobody keeps, which expires.

REQUEST_TIMEOUT_S = 5.0  # a request's whole budget, all attempts together
ATTEMPT_TIMEOUT_S = 1.5  # one attempt; a healthy member answers in milliseconds
RETRY_PAUSE_S = 0.2
_RETRIED = (TimeoutError, EtcdConnectionError, EtcdTransientError)

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _fails_over(request: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
    """Retry an `EtcdStore` request whose attempt (bounded by ATTEMPT_TIMEOUT_S)
    timed out or found no member, while one more attempt fits in REQUEST_TIMEOUT_S."""

    @functools.wraps(request)
    async def with_failover(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REQUEST_TIMEOUT_S
        while True:
            try:
                return await request(*args, **kwargs)
            except _RETRIED as exc:
                if loop.time() + RETRY_PAUSE_S + ATTEMPT_TIMEOUT_S > deadline:
                    raise
                log.info("etcd request failed (%s); trying again", type(exc).__name__)
            await asyncio.sleep(RETRY_PAUSE_S)

    return with_failover


# --- end of failing over -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    key: str
    value: bytes


def _keepalive_stream(client: Etcd3Client) -> grpc.aio.StreamStreamCall:
    """An open LeaseKeepAlive stream to write requests on; etcd3aio's `keep_alive`
    sends only one request per stream, so this goes to its stub."""
    lease = client.lease
    assert lease is not None, "EtcdStore.connect() was not called"
    return lease._stub.LeaseKeepAlive(metadata=lease._metadata or None)


class Lease:
    """An etcd lease kept alive in the background until revoked or lost.

    `lost` is set when etcd reports the lease expired (for example after a long
    partition); the owner must register again under a new lease.
    """

    def __init__(
        self,
        client: Etcd3Client,
        lease_id: int,
        ttl: int,
        timed: Callable[[str], _Timed] | None = None,
    ) -> None:
        self.id = lease_id
        self.ttl = ttl
        self.lost = asyncio.Event()
        #: Unix time etcd last confirmed the lease (granted or refreshed)
        self.refreshed_at = time.time()
        self._client = client
        self._timed = timed or (lambda operation: _Timed(_ignore, operation))
        self._task = asyncio.create_task(self._keepalive(), name=f"lease-{lease_id:x}")

    async def _keepalive(self) -> None:
        """A request every ttl/3 on one LeaseKeepAlive stream, as etcd's own client
        does: a stream per refresh costs more, and a relay whose loop ran late (at
        its core's limit) did not get one through within the TTL. A stream that
        fails or leaves a request unanswered is replaced (round-robin: perhaps on
        another member) and the request sent again shortly after; while etcd stays
        away, once an interval."""
        interval = max(self.ttl / 3, 0.5)
        answer_within = min(interval, ATTEMPT_TIMEOUT_S)
        loop = asyncio.get_running_loop()
        due = loop.time() + interval
        failing = False
        while not self.lost.is_set():
            stream = _keepalive_stream(self._client)
            try:
                while not self.lost.is_set():
                    await asyncio.sleep(max(0.0, due - loop.time()))
                    with self._timed("lease_keepalive"):
                        response = await asyncio.wait_for(self._ask(stream), answer_within)
                    if response is grpc.aio.EOF:
                        raise StoreError("etcd closed the keepalive stream")
                    if response.TTL <= 0:
                        self.lost.set()
                    else:
                        self.refreshed_at = time.time()
                    due = loop.time() + interval
                    failing = False
            except Exception as exc:  # etcd briefly unreachable: retry until the TTL runs out
                log.warning("lease keepalive failed: %s", exc or type(exc).__name__)
                due = loop.time() + (interval if failing else RETRY_PAUSE_S)
                failing = True
            finally:
                stream.cancel()

    async def _ask(
        self, stream: grpc.aio.StreamStreamCall
    ) -> LeaseKeepAliveResponse | grpc.aio.EOFType:
        """One keepalive request and its answer (grpc.aio.EOF if etcd ended the
        stream); the caller bounds both, since a write can wait on a member that
        accepted the connection and then stopped answering."""
        await stream.write(LeaseKeepAliveRequest(ID=self.id))
        return await stream.read()

    async def revoke(self) -> None:
        """Stop the keepalive and delete every key attached to the lease now."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        with contextlib.suppress(Exception), self._timed("lease_revoke"):
            await self._client.lease.revoke(self.id, timeout=2)  # type: ignore[union-attr]


# Told (operation, seconds, failed) after every request: the servers' etcd metrics.
RequestObserver = Callable[[str, float, bool], None]


def _ignore(operation: str, seconds: float, failed: bool) -> None:
    pass


class _Timed:
    """`with self._timed("get"):` around one request, reported to the observer."""

    __slots__ = ("_observe", "_operation", "_started")

    def __init__(self, observe: RequestObserver, operation: str) -> None:
        self._observe = observe
        self._operation = operation
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        failed = kind is not None and not issubclass(kind, asyncio.CancelledError)
        self._observe(self._operation, time.perf_counter() - self._started, failed)


class EtcdStore:
    """Keys, leases and prefix watches on one etcd cluster.

    With `tls`, the channel is TLS: etcd's certificate is checked against `tls.ca`
    and `tls.cert` is presented as the client certificate (etcd's
    `--client-cert-auth`). Over several endpoints gRPC checks the server name
    "localhost" (round-robin `ipv4:` targets have no host name of their own), so
    such a cluster's certificates must carry it; over one endpoint, its address.
    """

    def __init__(
        self,
        endpoints: list[str],
        observe: RequestObserver | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        addresses = [_strip_scheme(e) for e in endpoints]
        if tls is None:
            self._client = Etcd3Client(addresses)
        else:
            ca, chain, key = tls.read()
            self._client = Etcd3Client(
                addresses,
                tls_server_name=TLS_SERVER_NAME if len(addresses) > 1 else None,
                ca_cert=ca,
                cert_chain=chain,
                cert_key=key,
            )
        #: told about every request (conclave.server_metrics); settable after creation
        self.observe: RequestObserver = observe or _ignore

    def _timed(self, operation: str) -> _Timed:
        return _Timed(self.observe, operation)

    async def connect(self, timeout: float = 10.0) -> None:
        """Open the channel and wait until etcd answers."""
        await self._client.connect()
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                await self._kv.get("/conclave/ping", timeout=2, max_attempts=1)
                return
            except Exception as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise StoreError(f"etcd not reachable: {exc}") from exc
                await asyncio.sleep(0.2)

    async def close(self) -> None:
        await self._client.close()

    @property
    def _kv(self) -> KVService:
        assert self._client.kv is not None, "EtcdStore.connect() was not called"
        return self._client.kv

    @_fails_over
    async def get(self, key: str) -> bytes | None:
        with self._timed("get"):
            response = await self._kv.get(key, timeout=ATTEMPT_TIMEOUT_S)
        return bytes(response.kvs[0].value) if response.kvs else None

    @_fails_over
    async def get_prefix(self, prefix: str) -> tuple[dict[str, bytes], int]:
        """All keys under `prefix` and the revision they were read at."""
        with self._timed("get_prefix"):
            response = await self._kv.get(
                prefix, prefix_range_end(prefix.encode()), timeout=ATTEMPT_TIMEOUT_S
            )
        items = {kv.key.decode(): bytes(kv.value) for kv in response.kvs}
        return items, int(response.header.revision)

    @_fails_over
    async def put(self, key: str, value: bytes, lease: Lease | int = 0) -> None:
        with self._timed("put"):
            await self._kv.put(key, value, lease=_lease_id(lease), timeout=ATTEMPT_TIMEOUT_S)

    @_fails_over
    async def delete(self, key: str) -> bool:
        with self._timed("delete"):
            response = await self._kv.delete(key, timeout=ATTEMPT_TIMEOUT_S)
        return int(response.deleted) > 0

    @_fails_over
    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under `prefix`; returns how many there were."""
        with self._timed("delete"):
            response = await self._kv.delete(
                prefix, prefix_range_end(prefix.encode()), timeout=ATTEMPT_TIMEOUT_S
            )
        return int(response.deleted)

    @_fails_over
    async def create_if_absent(
        self, key: str, value: bytes, lease: Lease | int = 0
    ) -> tuple[bool, bytes]:
        """Write `key` only if it does not exist, in one transaction.

        Returns (created, value now stored). The guard is `create_revision == 0`,
        so of any number of concurrent writers exactly one wins.
        """
        with self._timed("transaction"):
            response = await self._kv.txn(
                compare=[KVService.txn_compare_create_revision(key, 0)],
                success=[KVService.txn_op_put(key, value, lease=_lease_id(lease))],
                failure=[KVService.txn_op_get(key)],
                timeout=ATTEMPT_TIMEOUT_S,
            )
        if response.succeeded:
            return True, value
        kvs = response.responses[0].response_range.kvs
        return False, bytes(kvs[0].value) if kvs else b""

    @_fails_over
    async def create_all_if_absent(self, items: Sequence[tuple[str, bytes, int]]) -> bool:
        """Write every (key, value, lease id) in one transaction, only if none of the
        keys exists yet: records that belong together (a new meeting and the start of
        its audit log) cost one revision and one raft proposal, and exist all or none.

        False when any key existed (nothing is written). A retried attempt that had
        been applied already also says False: the caller starts over with new keys.
        """
        with self._timed("transaction"):
            response = await self._kv.txn(
                compare=[KVService.txn_compare_create_revision(key, 0) for key, _, _ in items],
                success=[
                    KVService.txn_op_put(key, value, lease=lease) for key, value, lease in items
                ],
                failure=[],
                timeout=ATTEMPT_TIMEOUT_S,
            )
        return bool(response.succeeded)

    @_fails_over
    async def get_versioned(self, key: str) -> tuple[bytes | None, int]:
        """The value and its version (0: absent), for `put_if_version`."""
        with self._timed("get"):
            response = await self._kv.get(key, timeout=ATTEMPT_TIMEOUT_S)
        if not response.kvs:
            return None, 0
        return bytes(response.kvs[0].value), int(response.kvs[0].version)

    @_fails_over
    async def put_if_version(self, key: str, version: int, value: bytes, lease: int = 0) -> bool:
        """Write `key` only if nobody wrote it since it was read at `version`
        (compare-and-swap); False when somebody did."""
        with self._timed("transaction"):
            response = await self._kv.txn(
                compare=[KVService.txn_compare_version(key, version)],
                success=[KVService.txn_op_put(key, value, lease=lease)],
                failure=[],
                timeout=ATTEMPT_TIMEOUT_S,
            )
        return bool(response.succeeded)

    @_fails_over
    async def get_with_meta(self, key: str) -> tuple[bytes | None, int, int]:
        """The value, its mod_revision and the lease it is attached to (None, 0, 0:
        absent), for `put_fenced`."""
        with self._timed("get"):
            response = await self._kv.get(key, timeout=ATTEMPT_TIMEOUT_S)
        if not response.kvs:
            return None, 0, 0
        kv = response.kvs[0]
        return bytes(kv.value), int(kv.mod_revision), int(kv.lease)

    @_fails_over
    async def put_fenced(
        self,
        fence: tuple[str, bytes, int, int],
        key: str,
        value: bytes,
        lease: int = 0,
    ) -> bool:
        """Create `key` under a fence, in one transaction: `fence` is (key, value,
        mod_revision, lease) as `get_with_meta` read it. Only if the fence key is
        unchanged since (same mod_revision) and `key` does not exist, the fence key
        is written again with the same value and lease (raising its mod_revision, so
        a concurrent writer fenced on the same read fails) and `key` is created.

        False when either guard failed (nothing is written): re-read and decide
        again. A retried attempt that had been applied also says False.
        """
        fence_key, fence_value, fence_revision, fence_lease = fence
        with self._timed("transaction"):
            response = await self._kv.txn(
                compare=[
                    Compare(
                        result=Compare.EQUAL,
                        target=Compare.MOD,
                        key=fence_key.encode(),
                        mod_revision=fence_revision,
                    ),
                    KVService.txn_compare_create_revision(key, 0),
                ],
                success=[
                    KVService.txn_op_put(fence_key, fence_value, lease=fence_lease),
                    KVService.txn_op_put(key, value, lease=lease),
                ],
                failure=[],
                timeout=ATTEMPT_TIMEOUT_S,
            )
        return bool(response.succeeded)

    @_fails_over
    async def delete_if_value(self, key: str, value: bytes) -> bool:
        """Delete `key` only if it still holds exactly `value` (one transaction):
        False when it is gone or holds something else by now."""
        with self._timed("transaction"):
            response = await self._kv.txn(
                compare=[KVService.txn_compare_value(key, value)],
                success=[KVService.txn_op_delete(key)],
                failure=[],
                timeout=ATTEMPT_TIMEOUT_S,
            )
        return bool(response.succeeded)

    @_fails_over
    async def grant_expiring_lease(self, ttl: int) -> int:
        """A lease nobody keeps alive: its keys vanish `ttl` seconds from now."""
        with self._timed("lease_grant"):
            response = await self._client.lease.grant(ttl, timeout=ATTEMPT_TIMEOUT_S)  # type: ignore[union-attr]
        return int(response.ID)

    @_fails_over
    async def grant_lease(self, ttl: int) -> Lease:
        with self._timed("lease_grant"):
            response = await self._client.lease.grant(ttl, timeout=ATTEMPT_TIMEOUT_S)  # type: ignore[union-attr]
        return Lease(self._client, int(response.ID), ttl, self._timed)

    async def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Changes under `prefix` from `start_revision` on; reconnects by itself."""
        watch = self._client.watch
        assert watch is not None, "EtcdStore.connect() was not called"
        stream = watch.watch(prefix, prefix_range_end(prefix.encode()), start_revision)
        async for response in stream:
            for event in response.events:
                kind: Literal["put", "delete"] = "delete" if event.type == 1 else "put"
                yield WatchEvent(kind, event.kv.key.decode(), bytes(event.kv.value))


class PrefixCache:
    """A live in-memory copy of one key prefix: an initial read, then a watch.

    `on_change(key, value_or_None)` runs for every change after the initial read.
    """

    def __init__(
        self,
        store: EtcdStore,
        prefix: str,
        on_change: Callable[[str, bytes | None], Any] | None = None,
    ) -> None:
        self.items: dict[str, bytes] = {}
        self._store = store
        self._prefix = prefix
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.refresh()

    async def refresh(self) -> None:
        """Re-read the prefix now and (re)start the watch after that read."""
        items, revision = await self._store.get_prefix(self._prefix)
        self.items = {k[len(self._prefix) :]: v for k, v in items.items()}
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.create_task(self._follow(revision + 1), name=f"watch {self._prefix}")

    async def _follow(self, revision: int) -> None:
        while True:
            try:
                async for event in self._store.watch_prefix(self._prefix, revision):
                    self._apply(event)
                return
            except asyncio.CancelledError:
                raise
            except (grpc.aio.AioRpcError, Exception) as exc:
                log.warning("watch on %s failed, re-reading: %s", self._prefix, exc)
                await asyncio.sleep(0.5)
                with contextlib.suppress(Exception):
                    items, rev = await self._store.get_prefix(self._prefix)
                    self.items = {k[len(self._prefix) :]: v for k, v in items.items()}
                    revision = rev + 1

    def _apply(self, event: WatchEvent) -> None:
        name = event.key[len(self._prefix) :]
        if event.kind == "put":
            self.items[name] = event.value
        else:
            self.items.pop(name, None)
        if self._on_change is not None:
            self._on_change(name, event.value if event.kind == "put" else None)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _lease_id(lease: Lease | int) -> int:
    return lease.id if isinstance(lease, Lease) else lease


def _strip_scheme(endpoint: str) -> str:
    for scheme in ("http://", "https://"):
        if endpoint.startswith(scheme):
            return endpoint[len(scheme) :]
    return endpoint
