"""Calls from the control plane to a relay's RelayService (roster, close meeting).

One channel per node, opened lazily and closed when the node leaves the registry,
so a departed relay's address is not dialled again. Calls are short: a relay that
does not answer within the timeout is reported as unavailable, not waited on.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from control_plane.errors import RelayUnavailable
from control_plane.ids import NodeId, RoomId
from control_plane.records import NodeInfo
from protos import relay_pb2, relay_pb2_grpc, rooms_pb2

log = logging.getLogger(__name__)

RELAY_TIMEOUT_S = 2.0

Stub = relay_pb2_grpc.RelayServiceStub


class RelayClient:
    """RelayService calls by node, with a cached channel per node."""

    def __init__(self, timeout: float = RELAY_TIMEOUT_S) -> None:
        self._timeout = timeout
        # node id -> (address dialled, channel, stub)
        self._channels: dict[NodeId, tuple[str, grpc.aio.Channel, Stub]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def list_participants(
        self, node: NodeInfo, room_id: RoomId
    ) -> list[rooms_pb2.Participant]:
        """The relay's live roster of the meeting (empty if the relay does not know it)."""
        request = rooms_pb2.ListParticipantsRequest(room_id=room_id)
        try:
            response: rooms_pb2.ListParticipantsResponse = await self._stub(node).ListParticipants(
                request, timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return []
            raise self._unavailable(node, exc) from None
        return list(response.participants)

    async def close_room(self, node: NodeInfo, room_id: RoomId) -> int:
        """Ask the relay to disconnect everyone in the meeting; returns how many it did."""
        request = relay_pb2.CloseRoomRequest(room_id=room_id)
        try:
            response: relay_pb2.CloseRoomResponse = await self._stub(node).CloseRoom(
                request, timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return 0
            raise self._unavailable(node, exc) from None
        return int(response.disconnected)

    def forget(self, node_id: NodeId) -> None:
        """Close the node's channel (the node left); safe to call from a sync callback."""
        entry = self._channels.pop(node_id, None)
        if entry is not None:
            self._close_later(entry[1])

    async def close(self) -> None:
        """Close every channel and wait for pending closes."""
        channels = [channel for _, channel, _ in self._channels.values()]
        self._channels.clear()
        for channel in channels:
            await channel.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _stub(self, node: NodeInfo) -> Stub:
        entry = self._channels.get(node.node_id)
        if entry is not None and entry[0] == node.rpc_address:
            return entry[2]
        if entry is not None:  # the node re-registered at another address
            self._close_later(entry[1])
        channel = grpc.aio.insecure_channel(node.rpc_address)
        stub = relay_pb2_grpc.RelayServiceStub(channel)  # type: ignore[no-untyped-call]
        self._channels[node.node_id] = (node.rpc_address, channel, stub)
        return stub

    def _close_later(self, channel: grpc.aio.Channel) -> None:
        task = asyncio.get_running_loop().create_task(channel.close(), name="close relay channel")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    def _unavailable(node: NodeInfo, exc: grpc.aio.AioRpcError) -> RelayUnavailable:
        log.debug("relay %s at %s failed: %s", node.node_id, node.rpc_address, exc.details())
        return RelayUnavailable(node.node_id, exc.code().name)
