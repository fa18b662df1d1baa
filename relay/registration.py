"""This node's entry in etcd: `/conclave/nodes/{node_id}` under its own lease.

The lease (TTL 3 s) is what tells the control plane the node is alive: when the
process dies the key disappears within the TTL, and so do the placements the
control plane attached to the same lease. The load figure is a coarse bucket and
is written only when the bucket changes. A draining node (relay/drain.py) adds
`"draining": true` and its exact participant count, rewritten as people leave, so
that `conclave relay drain --wait` can tell when it is empty; that is a handful of
writes once in the node's life, not a figure kept in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass

from conclave.store import NODES_PREFIX, EtcdStore, Lease
from conclave.tasks import spawn
from relay import metrics

log = logging.getLogger(__name__)

LEASE_TTL_S = 3


@dataclass
class NodeInfo:
    node_id: str
    signal_url: str
    rpc_address: str
    capacity: int
    region: str = ""  # where the node is (--region), for placement near joiners
    # Base64 of the node's link public key (relay/link_crypto.py): other relays of
    # the cell check its link hellos with it.
    link_key: str = ""


class NodeRegistration:
    def __init__(self, store: EtcdStore, info: NodeInfo) -> None:
        self._store = store
        self._info = info
        self._load = 0.0
        self._draining = False
        self._participants = 0  # written while draining only
        self._lease: Lease | None = None
        self._task: asyncio.Task[None] | None = None
        # One write at a time, each with the state as it is when it starts, so an
        # older figure never lands after a newer one.
        self._write_lock = asyncio.Lock()

    @property
    def lease_id(self) -> int:
        """The lease this node is registered under now (0 before the first one)."""
        return self._lease.id if self._lease is not None else 0

    async def start(self) -> None:
        await self._register()
        self._task = asyncio.create_task(self._renew_when_lost(), name="node-registration")
        # The last time etcd confirmed our lease (the node key lives exactly as long).
        metrics.HEARTBEAT_TIMESTAMP.set_function(
            lambda: self._lease.refreshed_at if self._lease is not None else 0.0
        )

    async def _register(self) -> None:
        self._lease = await self._store.grant_lease(LEASE_TTL_S)
        await self._write()

    async def _write(self) -> None:
        async with self._write_lock:
            lease = self._lease
            assert lease is not None
            value: dict[str, object] = {
                "node_id": self._info.node_id,
                "signal_url": self._info.signal_url,
                "rpc_address": self._info.rpc_address,
                "capacity": self._info.capacity,
                "load": self._load,
                "lease": lease.id,
            }
            if self._info.region:
                value["region"] = self._info.region
            if self._info.link_key:
                value["link_key"] = self._info.link_key
            if self._draining:
                value["draining"] = True
                value["participants"] = self._participants
            await self._store.put(
                NODES_PREFIX + self._info.node_id, json.dumps(value).encode(), lease
            )

    async def set_draining(self, participants: int) -> None:
        """Say in the node record that this node takes no new meetings (placement
        skips it) and how many participants it still has. Raises if etcd refuses:
        the caller retries."""
        self._draining = True
        self._participants = participants
        await self._write()

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
        changed = load != self._load
        self._load = load
        if self._draining and count != self._participants:
            self._participants = count
            changed = True
        if changed:
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
