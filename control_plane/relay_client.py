"""Calls from the control plane to a relay's RelayService (roster, close meeting,
the host controls it passes on).

One channel per node, opened lazily and closed when the node leaves the registry,
so a departed relay's address is not dialled again. Calls are short: a relay that
does not answer within the timeout is reported as unavailable, not waited on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from conclave.tls import TlsFiles, mutual_channel_credentials
from control_plane.errors import NoSuchParticipant, RelayRefused, RelayUnavailable
from control_plane.ids import NodeId, RoomId
from control_plane.records import NodeInfo
from protos import relay_pb2, relay_pb2_grpc, rooms_pb2

log = logging.getLogger(__name__)

RELAY_TIMEOUT_S = 2.0

Stub = relay_pb2_grpc.RelayServiceStub
Reply = TypeVar("Reply")

# A relay's refusals of a host control that the caller should see as they are.
_PASSED_ON = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
)


def relay_channel(address: str, tls: TlsFiles | None) -> grpc.aio.Channel:
    """A channel to a relay's gRPC port: mutual TLS with `tls`, else in clear."""
    if tls is None:
        return grpc.aio.insecure_channel(address)
    return grpc.aio.secure_channel(address, mutual_channel_credentials(tls))


class RelayClient:
    """RelayService calls by node, with a cached channel per node."""

    def __init__(self, timeout: float = RELAY_TIMEOUT_S, tls: TlsFiles | None = None) -> None:
        """`tls`: call relays over mutual TLS with this client certificate."""
        self._timeout = timeout
        self._tls = tls
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

    # --- host controls: the control plane checked the host key; the relay acts -----

    async def admit_participants(
        self, node: NodeInfo, request: rooms_pb2.AdmitParticipantsRequest
    ) -> list[str]:
        """Let waiting participants in; returns the ids the relay admitted."""
        reply: rooms_pb2.AdmitParticipantsResponse = await self._control(
            node, self._stub(node).AdmitParticipants, _without_key(request)
        )
        return list(reply.admitted)

    async def deny_participants(
        self, node: NodeInfo, request: rooms_pb2.DenyParticipantsRequest
    ) -> list[str]:
        """Turn waiting participants away; returns the ids the relay denied."""
        reply: rooms_pb2.DenyParticipantsResponse = await self._control(
            node, self._stub(node).DenyParticipants, _without_key(request)
        )
        return list(reply.denied)

    async def remove_participant(
        self, node: NodeInfo, request: rooms_pb2.ParticipantRequest
    ) -> None:
        await self._control(node, self._stub(node).RemoveParticipant, _without_key(request))

    async def mute_participant(
        self, node: NodeInfo, request: rooms_pb2.MuteParticipantRequest
    ) -> None:
        await self._control(node, self._stub(node).MuteParticipant, _without_key(request))

    async def set_publish_rights(
        self, node: NodeInfo, request: rooms_pb2.SetPublishRightsRequest
    ) -> None:
        await self._control(node, self._stub(node).SetPublishRights, _without_key(request))

    async def set_role(self, node: NodeInfo, request: rooms_pb2.SetRoleRequest) -> None:
        await self._control(node, self._stub(node).SetRole, _without_key(request))

    async def _control(
        self, node: NodeInfo, call: Callable[..., Awaitable[Reply]], request: Any
    ) -> Reply:
        """One host-control call. The relay's NOT_FOUND (no such participant on it)
        becomes `NoSuchParticipant`; its refusals are passed on; anything else means
        the relay is not answering."""
        try:
            return await call(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NoSuchParticipant() from None
            if exc.code() in _PASSED_ON:
                raise RelayRefused(exc.code().name, exc.details() or "refused") from None
            raise self._unavailable(node, exc) from None

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
        channel = relay_channel(node.rpc_address, self._tls)
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


M = TypeVar("M", bound=Message)


def _without_key(request: M) -> M:
    """A copy of the request without the host key: the relay has no use for it."""
    copy: M = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("host_key")
    return copy
