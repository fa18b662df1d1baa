"""This node's entry in etcd: `/conclave/nodes/{node_id}` under its own lease.

The lease (TTL 3 s) is what tells the control plane the node is alive: when the
process dies the key disappears within the TTL, and so do the placements the
control plane attached to the same lease. The load figure is a coarse bucket and
is written only when the bucket changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass

from conclave.store import NODES_PREFIX, EtcdStore, Lease
from conclave.tasks import spawn

log = logging.getLogger(__name__)

LEASE_TTL_S = 3


@dataclass
class NodeInfo:
    node_id: str
    signal_url: str
    rpc_address: str
    capacity: int


class NodeRegistration:
    def __init__(self, store: EtcdStore, info: NodeInfo) -> None:
        self._store = store
        self._info = info
        self._load = 0.0
        self._lease: Lease | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def lease_id(self) -> int:
        """The lease this node is registered under now (0 before the first one)."""
        return self._lease.id if self._lease is not None else 0

    async def start(self) -> None:
        await self._register()
        self._task = asyncio.create_task(self._renew_when_lost(), name="node-registration")

    async def _register(self) -> None:
        self._lease = await self._store.grant_lease(LEASE_TTL_S)
        await self._write()

    async def _write(self) -> None:
        assert self._lease is not None
        value = {
            "node_id": self._info.node_id,
            "signal_url": self._info.signal_url,
            "rpc_address": self._info.rpc_address,
            "capacity": self._info.capacity,
            "load": self._load,
            "lease": self._lease.id,
        }
        await self._store.put(
            NODES_PREFIX + self._info.node_id, json.dumps(value).encode(), self._lease
        )

    async def _renew_when_lost(self) -> None:
        while True:
            assert self._lease is not None
            await self._lease.lost.wait()
            log.warning("node lease expired; registering again")
            while True:
                try:
                    await self._register()
                    break
                except Exception as exc:
                    log.warning("registration failed: %s", exc)
                    await asyncio.sleep(1)

    def participants_changed(self, count: int) -> None:
        load = round(min(count / max(self._info.capacity, 1), 1.0), 1)
        if load != self._load:
            self._load = load
            spawn(self._write_quietly(), "node-load-update")

    async def _write_quietly(self) -> None:
        try:
            await self._write()
        except Exception as exc:
            log.warning("could not update node load: %s", exc)

    async def stop(self) -> None:
        """Leave the cluster now rather than when the lease runs out."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._lease is not None:
            await self._lease.revoke()
