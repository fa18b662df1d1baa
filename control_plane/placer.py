"""Putting a meeting on a node exactly once, however many replicas try at once.

The placement key is written in one `create_revision == 0` transaction attached to
the chosen node's lease: one writer wins, the others adopt its answer, and when the
node dies etcd deletes the placement so the next join places the meeting afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import grpc

from conclave.store import EtcdStore
from control_plane.errors import NoRelayAvailable, PlacementUnsettled
from control_plane.ids import NodeId, RoomId
from control_plane.placement import PlacementStrategy
from control_plane.records import (
    NodeInfo,
    decode_placement,
    encode_placement,
    node_key,
    placement_key,
)
from control_plane.registry import NodeRegistry
from control_plane.routing import choose_home

log = logging.getLogger(__name__)


class Placer:
    """`ensure_placed` for meetings, backed by the registry's cache and etcd."""

    def __init__(
        self,
        store: EtcdStore,
        registry: NodeRegistry,
        strategy: PlacementStrategy,
        *,
        settle_timeout: float = 1.0,
        poll_interval: float = 0.05,
        on_decision: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        # Told how each join found its node: existing, placed, adopted, no_capacity
        # (and spilled, by control_plane/router.py).
        self._on_decision = on_decision or (lambda decision: None)
        self._registry = registry
        self._strategy = strategy
        self._settle_timeout = settle_timeout
        self._poll_interval = poll_interval
        # One placement attempt per meeting at a time on this replica; joiners share it.
        self._inflight: dict[RoomId, asyncio.Task[NodeInfo]] = {}

    @property
    def strategy(self) -> PlacementStrategy:
        return self._strategy

    def report(self, decision: str) -> None:
        """Count a join's placement decision (metrics)."""
        self._on_decision(decision)

    async def ensure_placed(
        self, room_id: RoomId, exclude: frozenset[NodeId] = frozenset(), region: str = ""
    ) -> NodeInfo:
        """The live node hosting the meeting, placing it first if it has none.

        `exclude`: nodes not to place it on even though registered (one that failed
        a failover check, control_plane/failover.py, until its lease runs out).
        A new home is chosen by `routing.choose_home`: the meeting's live span
        nodes first, then nodes in the joiner's `region`, then the strategy.
        Raises `NoRelayAvailable` when no node has headroom, and `PlacementUnsettled`
        when the placement still names a departed node after `settle_timeout`.
        """
        node = self._registry.live_placement(room_id)
        if node is not None and node.node_id not in exclude:
            self._on_decision("existing")
            return node
        task = self._inflight.get(room_id)
        if task is None:
            task = asyncio.create_task(self._settle(room_id, exclude, region), name="place room")
            self._inflight[room_id] = task
            task.add_done_callback(lambda done: self._finished(room_id, done))
        # shield: a cancelled JoinRoom must not cancel the attempt other joiners await.
        return await asyncio.shield(task)

    def choose_new(self, exclude: frozenset[NodeId] = frozenset()) -> NodeInfo | None:
        """A node for a meeting nobody else knows of yet, or None when no node has
        headroom: CreateRoom writes the placement together with the meeting, in the
        same transaction, then tells `placed_new`."""
        try:
            return self._strategy.choose(
                [n for n in self._registry.live_nodes() if n.node_id not in exclude],
                self._registry.rooms_placed(),
            )
        except NoRelayAvailable:
            self._on_decision("no_capacity")
            return None

    def placed_new(self, room_id: RoomId, node: NodeInfo) -> None:
        self._registry.record_placement(room_id, node.node_id)
        self._on_decision("placed")

    def _finished(self, room_id: RoomId, task: asyncio.Task[NodeInfo]) -> None:
        if self._inflight.get(room_id) is task:
            del self._inflight[room_id]
        if not task.cancelled():
            task.exception()  # retrieved here so an unawaited failure is not reported as lost

    async def _settle(
        self, room_id: RoomId, exclude: frozenset[NodeId], region: str = ""
    ) -> NodeInfo:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settle_timeout
        excluded = set(exclude)  # and nodes whose lease etcd no longer knows
        while True:
            node_id = self._registry.placement(room_id)
            if node_id is not None:
                node = await self._resolve(room_id, node_id)
                if node is not None:
                    self._on_decision("adopted")
                    return node
                if self._registry.placement(room_id) is not None:
                    # Lease-bound, so etcd deletes it soon after the node's lease ends.
                    if loop.time() >= deadline:
                        raise PlacementUnsettled(room_id, node_id)
                    await asyncio.sleep(self._poll_interval)
                    continue
            node = self._choose(room_id, excluded, region)
            key = placement_key(room_id)
            try:
                created, stored = await self._store.create_if_absent(
                    key, encode_placement(node.node_id), lease=node.lease
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:  # "requested lease not found"
                    raise
                log.debug("node %s lease is gone; choosing another", node.node_id)
                excluded.add(node.node_id)
                continue
            winner = node.node_id if created else decode_placement(stored)
            self._registry.record_placement(room_id, winner)
            if created:
                log.debug("placed room %s on node %s", room_id, node.node_id)
                self._on_decision("placed")
                return node
            # Another replica won: the next pass resolves its node.

    async def _resolve(self, room_id: RoomId, node_id: NodeId) -> NodeInfo | None:
        """The live node of a cached placement, checking etcd when the cache says dead.

        Returns None with the placement forgotten if etcd no longer has it, or with it
        kept (refreshed from etcd) if it still names a node that is gone.
        """
        node = self._registry.node(node_id)
        if node is not None:
            return node
        raw = await self._store.get(placement_key(room_id))
        if raw is None:
            self._registry.forget_placement(room_id)
            return None
        current = decode_placement(raw)
        self._registry.record_placement(room_id, current)
        node = self._registry.node(current)
        if node is not None:
            return node
        # The node cache may lag a node that just registered: ask etcd.
        raw_node = await self._store.get(node_key(current))
        if raw_node is not None:
            with contextlib.suppress(ValueError):
                return NodeInfo.from_json(raw_node)
        return None

    def _choose(self, room_id: RoomId, excluded: set[NodeId], region: str) -> NodeInfo:
        nodes = [n for n in self._registry.live_nodes() if n.node_id not in excluded]
        try:
            return choose_home(
                nodes,
                self._registry.span_nodes(room_id),
                self._registry.grants(),
                region,
                self._strategy,
                self._registry.rooms_placed(),
            )
        except NoRelayAvailable:
            self._on_decision("no_capacity")
            raise NoRelayAvailable(room_id) from None
