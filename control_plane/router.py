"""The node for each joiner of a meeting that may span several relays (cascading).

The decision is `routing.route` over the registry's caches: a join of a placed
meeting whose nodes have room costs no etcd request and writes nothing. Only when
the meeting must gain a node is etcd asked: its home and span nodes are read
again, the decision is made again on that, and the node is added with one
transaction fenced on the placement key (conclave/spans.py). Of replicas adding
at once exactly one commits; the others re-read and decide again (bounded), and
usually find the node just added.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

import grpc

from conclave import spans
from conclave.store import EtcdStore
from control_plane.errors import NoRelayAvailable
from control_plane.ids import NodeId, RoomId
from control_plane.placer import Placer
from control_plane.records import NodeInfo
from control_plane.registry import NodeRegistry
from control_plane.routing import Choice, has_room, route

log = logging.getLogger(__name__)

ADD_ATTEMPTS = 4  # fenced additions tried before the joiner takes what the meeting has


@dataclass(frozen=True, slots=True)
class Routed:
    """The joiner's node; `wrote`: this join placed the meeting or added a node to
    it (JoinRoom undoes that if the meeting ended meanwhile)."""

    node: NodeInfo
    wrote: bool = False


class JoinRouter:
    """`node_for(room_id, ...)`: the node to grant a joiner, placing the meeting or
    adding a node to it when needed. Counts every grant's node in the registry."""

    def __init__(self, store: EtcdStore, registry: NodeRegistry, placer: Placer) -> None:
        self._store = store
        self._registry = registry
        self._placer = placer

    async def node_for(
        self,
        room_id: RoomId,
        exclude: frozenset[NodeId] = frozenset(),
        full: NodeId | None = None,
        region: str = "",
    ) -> Routed:
        """`exclude`: nodes left out by failover (no placement there either);
        `full`: a node that refused this joiner as full (still the meeting's)."""
        avoid = (exclude | {full}) if full else exclude
        home = self._registry.live_placement(room_id)
        placed = home is None or home.node_id in exclude
        if placed:
            home = await self._placer.ensure_placed(room_id, avoid, region)
        assert home is not None
        choice = self._decide(room_id, home, avoid, region)
        if choice.add:
            return await self._spill(room_id, exclude, avoid, region)
        if not placed:
            self._placer.report("existing")
        return self._grant(choice.node, wrote=placed)

    def _grant(self, node: NodeInfo, *, wrote: bool) -> Routed:
        self._registry.granted(node.node_id)
        return Routed(node, wrote)

    def _decide(
        self, room_id: RoomId, home: NodeInfo, avoid: Collection[NodeId], region: str
    ) -> Choice:
        grants = self._registry.grants()
        if (
            home.node_id not in avoid
            and (not region or home.region == region)
            and has_room(home, grants)
        ):
            return Choice(home)  # what route() says too, without listing every node
        spanned = self._registry.span_nodes(room_id)
        members = self._members(room_id, home, avoid)
        others = [
            n
            for n in self._registry.live_nodes()
            if n.node_id != home.node_id and n.node_id not in spanned and n.node_id not in avoid
        ]
        try:
            return route(
                home if home.node_id not in avoid else None,
                members,
                others,
                grants,
                region,
                self._placer.strategy,
                self._registry.rooms_placed(),
            )
        except NoRelayAvailable:
            self._placer.report("no_capacity")
            raise NoRelayAvailable(room_id) from None

    async def _spill(
        self,
        room_id: RoomId,
        exclude: frozenset[NodeId],
        avoid: frozenset[NodeId],
        region: str,
    ) -> Routed:
        """Decide again on etcd's view and add the chosen node, fenced; retried on
        conflict. After ADD_ATTEMPTS, a node the meeting has (no addition)."""
        excluded = set(avoid)
        home: NodeInfo | None = None
        wrote = False
        for _ in range(ADD_ATTEMPTS):
            home_id, value, revision, lease = await spans.read_home(self._store, room_id)
            if home_id is None:
                self._registry.forget_placement(room_id)
            else:
                self._registry.record_placement(room_id, NodeId(home_id))
            home = self._registry.node(NodeId(home_id)) if home_id is not None else None
            if home is None or home.node_id in exclude:
                # Gone meanwhile (or its node is): place it, then look again.
                await self._placer.ensure_placed(room_id, avoid, region)
                wrote = True
                continue
            self._registry.record_spans(
                room_id, {NodeId(n) for n in await spans.span_nodes(self._store, room_id)}
            )
            choice = self._decide(room_id, home, excluded, region)
            if not choice.add:
                self._placer.report("existing")
                return self._grant(choice.node, wrote=wrote)
            node = choice.node
            try:
                added = await spans.add(
                    self._store, room_id, node.node_id, node.lease, (value, revision, lease)
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:  # "requested lease not found"
                    raise
                log.debug("node %s lease is gone; choosing again", node.node_id)
                excluded.add(node.node_id)
                continue
            if added:
                self._registry.record_span(room_id, node.node_id)
                log.debug("room %s now also on node %s", room_id, node.node_id)
                self._placer.report("spilled")
                return self._grant(node, wrote=True)
            log.debug("adding a node to room %s conflicted; deciding again", room_id)
        # Others kept winning (or nodes kept vanishing): what the meeting has.
        if home is None:
            raise NoRelayAvailable(room_id)
        fallback = self._decide_without_adding(room_id, home, excluded)
        return self._grant(fallback, wrote=wrote)

    def _members(
        self, room_id: RoomId, home: NodeInfo, avoid: Collection[NodeId]
    ) -> list[NodeInfo]:
        """The meeting's live span nodes other than its home, less `avoid`."""
        return [
            node
            for node_id in sorted(self._registry.span_nodes(room_id))
            if node_id != home.node_id
            and node_id not in avoid
            and (node := self._registry.node(node_id)) is not None
        ]

    def _decide_without_adding(
        self, room_id: RoomId, home: NodeInfo, avoid: Collection[NodeId]
    ) -> NodeInfo:
        members = self._members(room_id, home, avoid)
        try:
            choice = route(
                home if home.node_id not in avoid else None,
                members,
                [],
                self._registry.grants(),
                "",
                self._placer.strategy,
                self._registry.rooms_placed(),
            )
        except NoRelayAvailable:
            self._placer.report("no_capacity")
            raise NoRelayAvailable(room_id) from None
        self._placer.report("existing")
        return choice.node
