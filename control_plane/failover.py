"""A rejoining client's report that its relay is gone: checked here, never trusted.

When a relay dies, its participants' connections drop at once, but its lease (TTL
3 s) and the placements under it live on until etcd expires them, so JoinRoom
would keep sending them to the dead relay for up to 3 s. A rejoining client
therefore says which node it lost (`JoinRoomRequest.unreachable_node_id`). The
control plane asks that relay itself (RelayService, `PROBE_TIMEOUT_S`); only if it
does not answer is the meeting's placement deleted (only while it still names that
node: conclave/placements.py) and the meeting placed again without it. A relay that
answers keeps its meeting, whatever the client said: a client's own network
trouble moves nobody.

A meeting on several relays (cascading, conclave/spans.py) is checked the same way
when the reported node is one of its further relays: silent, its span key is
deleted and the node left out, so the rejoiner is not sent back to it while its
lease runs out.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

import grpc

from conclave import placements, spans
from conclave.store import EtcdStore
from conclave.tls import TlsFiles
from control_plane.ids import NodeId, RoomId
from control_plane.records import NodeInfo
from control_plane.registry import NodeRegistry
from control_plane.relay_client import relay_channel
from protos import relay_pb2_grpc, rooms_pb2

log = logging.getLogger(__name__)

# Long enough for a loaded but healthy relay's event loop to answer a trivial call,
# short enough to leave the rejoin well within its budget.
PROBE_TIMEOUT_S = 0.3
# What a call to a relay that is not there fails with; anything else is an answer.
_SILENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

Probe = Callable[[NodeInfo, RoomId, float], Awaitable[bool]]


async def relay_answers(
    node: NodeInfo, room_id: RoomId, timeout: float, tls: TlsFiles | None = None
) -> bool:
    """Whether the relay answers a roster call within `timeout` (its own channel:
    a dead relay's cached channel may be in reconnect back-off); over mutual TLS
    with `tls`."""
    channel = relay_channel(node.rpc_address, tls)
    try:
        stub = relay_pb2_grpc.RelayServiceStub(channel)  # type: ignore[no-untyped-call]
        await stub.ListParticipants(
            rooms_pb2.ListParticipantsRequest(room_id=room_id), timeout=timeout
        )
        return True
    except grpc.aio.AioRpcError as exc:
        return exc.code() not in _SILENT
    finally:
        await channel.close()


class Failover:
    """`excluded(room_id, reported)`: the nodes to leave out when placing now."""

    def __init__(
        self,
        store: EtcdStore,
        registry: NodeRegistry,
        probe: Probe | None = None,
        timeout: float = PROBE_TIMEOUT_S,
        tls: TlsFiles | None = None,
    ) -> None:
        """`probe`: how a relay is asked (default: `relay_answers`, over mutual TLS
        with `tls`)."""
        self._store = store
        self._registry = registry
        self._probe: Probe = probe or functools.partial(relay_answers, tls=tls)
        self._timeout = timeout

    async def excluded(self, room_id: RoomId, reported: NodeId) -> frozenset[NodeId]:
        """Empty unless the meeting is placed on `reported` and that relay does not
        answer; then its placement is released and the node is to be left out."""
        placed = self._registry.placement(room_id)
        if placed is None:
            raw = await self._store.get(placements.placement_key(room_id))
            placed = NodeId(placements.placed_node(raw) or "") if raw is not None else None
        if placed != reported:
            # etcd, not the cache: a span just added may not be in the cache yet,
            # and a hint naming another node than the placement's is rare.
            if await self._store.get(spans.span_key(room_id, reported)) is not None:
                return await self._check_span(room_id, reported)
            return frozenset()  # the meeting has moved on already (or was never there)
        node = self._registry.node(reported)
        if node is not None and await self._probe(node, room_id, self._timeout):
            log.debug("node %s answers: its meeting %s stays", reported, room_id)
            return frozenset()
        if await placements.release(self._store, room_id, reported):
            log.info("a relay that does not answer lost a meeting to failover")
            log.debug("released room %s from node %s", room_id, reported)
        self._registry.forget_placement(room_id)
        return frozenset({reported})

    async def _check_span(self, room_id: RoomId, reported: NodeId) -> frozenset[NodeId]:
        """`reported` is a further relay of the meeting: left out if it is silent,
        its span key deleted (it is on that relay's lease, which ends soon anyway)."""
        node = self._registry.node(reported)
        if node is not None and await self._probe(node, room_id, self._timeout):
            return frozenset()
        await self._store.delete(spans.span_key(room_id, reported))
        self._registry.record_spans(room_id, self._registry.span_nodes(room_id) - {reported})
        log.debug("room %s: further relay %s does not answer", room_id, reported)
        return frozenset({reported})
