"""The public RoomService: meetings, joining them, rosters, ending them.

Every handler turns the named errors of errors.py into one gRPC status with a
message meant for the caller. Room ids and names appear in logs at DEBUG only.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from etcd3aio.errors import EtcdError

from conclave.store import EtcdStore, StoreError
from control_plane import passcodes, validation
from control_plane.attempts import AttemptLimiter
from control_plane.errors import (
    ControlPlaneError,
    InvalidArgument,
    NoRelayAvailable,
    NoSuchMeeting,
    NotHost,
    PlacementUnsettled,
    RelayUnavailable,
    RoomNotFound,
    StoreUnavailable,
    TooManyAttempts,
)
from control_plane.ids import RoomId, new_participant_id, new_room_id
from control_plane.placer import Placer
from control_plane.records import (
    NodeInfo,
    RoomRecord,
    decode_placement,
    placement_key,
    room_key,
)
from control_plane.registry import NodeRegistry
from control_plane.relay_client import RelayClient
from control_plane.signing import GrantSigner
from protos import rooms_pb2, rooms_pb2_grpc

log = logging.getLogger(__name__)

_STATUS: dict[type[ControlPlaneError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    RoomNotFound: grpc.StatusCode.NOT_FOUND,
    NoSuchMeeting: grpc.StatusCode.NOT_FOUND,
    NotHost: grpc.StatusCode.NOT_FOUND,
    TooManyAttempts: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NoRelayAvailable: grpc.StatusCode.UNAVAILABLE,
    PlacementUnsettled: grpc.StatusCode.UNAVAILABLE,
    RelayUnavailable: grpc.StatusCode.UNAVAILABLE,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
}

# Failures of the etcd client: the store is down or slow, not the request wrong.
_STORE_FAILURES = (StoreError, EtcdError, grpc.aio.AioRpcError, TimeoutError)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[["RoomService", Req, Any], Awaitable[Resp]]


def _rpc(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Map control-plane and store errors to gRPC statuses; keep details out of logs."""

    @functools.wraps(handler)
    async def wrapper(self: RoomService, request: Req, context: Any) -> Resp:
        try:
            return await handler(self, request, context)
        except ControlPlaneError as exc:
            code = _STATUS.get(type(exc), grpc.StatusCode.INTERNAL)
            log.debug("%s -> %s: %s", handler.__name__, code.name, exc)
            await context.abort(code, str(exc))
        except _STORE_FAILURES as exc:
            log.warning("%s: etcd request failed (%s)", handler.__name__, type(exc).__name__)
            log.debug("etcd failure detail: %s", exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the cluster store is unavailable")
        except Exception as exc:
            # The message may carry request data: its type at ERROR, the rest at DEBUG.
            log.error("%s failed unexpectedly: %s", handler.__name__, type(exc).__name__)
            log.debug("unexpected failure", exc_info=True)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("context.abort returned")  # pragma: no cover

    return wrapper


class RoomService(rooms_pb2_grpc.RoomServiceServicer):
    """grpc.aio implementation of conclave.v1.RoomService."""

    def __init__(
        self,
        store: EtcdStore,
        registry: NodeRegistry,
        placer: Placer,
        signer: GrantSigner,
        relays: RelayClient,
        attempts: AttemptLimiter,
        *,
        trusted_proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._registry = registry
        self._placer = placer
        self._signer = signer
        self._relays = relays
        self._attempts = attempts
        self._trusted_proxies = tuple(trusted_proxies)
        self._clock = clock

    @_rpc
    async def CreateRoom(
        self, request: rooms_pb2.CreateRoomRequest, context: Any
    ) -> rooms_pb2.Room:
        name = validation.room_name(request.name)
        limit = validation.max_participants(request.max_participants)
        passcode = validation.passcode(request.passcode) or passcodes.generate()
        host_key = passcodes.new_host_key()
        room = await self._create_record(
            name, limit, await passcodes.protect(passcode), passcodes.host_key_digest(host_key)
        )
        # Place now so GetRoom names the node; with no relay up the meeting still
        # exists and the first JoinRoom places it.
        node_id = ""
        try:
            node_id = (await self._placer.ensure_placed(room.room_id)).node_id
        except (NoRelayAvailable, PlacementUnsettled) as exc:
            log.debug("room %s created unplaced: %s", room.room_id, exc)
        log.debug("created room %s on node %r", room.room_id, node_id)
        reply = _room_message(room, node_id)
        reply.passcode = passcode  # the only time either is told
        reply.host_key = host_key
        return reply

    @_rpc
    async def GetRoom(self, request: rooms_pb2.GetRoomRequest, context: Any) -> rooms_pb2.Room:
        room = await self._host_room(validation.room_id(request.room_id), request.host_key)
        node = await self._current_node(room.room_id)
        return _room_message(room, node.node_id if node is not None else "")

    @_rpc
    async def JoinRoom(
        self, request: rooms_pb2.JoinRoomRequest, context: Any
    ) -> rooms_pb2.JoinRoomResponse:
        room_id = validation.room_id(request.room_id)
        display_name = validation.display_name(request.display_name)
        passcode = validation.passcode(request.passcode)
        limited = self._attempts.keys(room_id, self._source(context))
        wait, spent = await self._attempts.admit(limited)
        if wait > 0:
            raise TooManyAttempts(wait)
        raw = await self._store.get(room_key(room_id))
        room = RoomRecord.from_json(raw) if raw is not None else None
        # The same work and the same reply whether the meeting is missing or the
        # passcode wrong: the answer must not tell which ids exist. A host comes
        # with the host key instead.
        if request.host_key:
            admitted = passcodes.is_host_key(request.host_key, room.host_key_sha256 if room else "")
        else:
            admitted = await passcodes.check(passcode, room.passcode if room else None)
        if room is None or not admitted:
            await self._attempts.failed(limited, spent)
            raise NoSuchMeeting()
        was_placed = self._registry.live_placement(room_id) is not None
        node = await self._placer.ensure_placed(room_id)
        if not was_placed and await self._store.get(room_key(room_id)) is None:
            # EndRoom ran while we placed: undo, or the placement outlives the room.
            await self._store.delete(placement_key(room_id))
            self._registry.forget_placement(room_id)
            raise RoomNotFound(room_id)
        participant_id = new_participant_id()
        grant, expires_at_ms = self._signer.issue(
            room_id,
            participant_id,
            node.node_id,
            display_name,
            can_publish=request.publish,
            can_subscribe=True,
            node_lease=node.lease,
            role="host" if request.host_key else "participant",
        )
        log.debug("grant for room %s on node %s", room_id, node.node_id)
        return rooms_pb2.JoinRoomResponse(
            room_id=room_id,
            participant_id=participant_id,
            node_id=node.node_id,
            signal_url=node.signal_url,
            grant=grant,
            grant_expires_at_ms=expires_at_ms,
        )

    @_rpc
    async def ListParticipants(
        self, request: rooms_pb2.ListParticipantsRequest, context: Any
    ) -> rooms_pb2.ListParticipantsResponse:
        room = await self._host_room(validation.room_id(request.room_id), request.host_key)
        node = await self._current_node(room.room_id)
        if node is None:
            return rooms_pb2.ListParticipantsResponse()
        participants = await self._relays.list_participants(node, room.room_id)
        return rooms_pb2.ListParticipantsResponse(participants=participants)

    @_rpc
    async def EndRoom(
        self, request: rooms_pb2.EndRoomRequest, context: Any
    ) -> rooms_pb2.EndRoomResponse:
        room_id = (
            await self._host_room(validation.room_id(request.room_id), request.host_key)
        ).room_id
        node = await self._current_node(room_id)
        existed = await self._store.delete(room_key(room_id))
        await self._store.delete(placement_key(room_id))
        self._registry.forget_placement(room_id)
        if node is not None:
            try:
                await self._relays.close_room(node, room_id)
            except RelayUnavailable as exc:
                # Its participants' grants name a room that no longer exists; the
                # relay drops them when it next checks, or when it dies.
                log.debug("ending room %s: %s", room_id, exc)
        if not existed:
            raise RoomNotFound(room_id)
        return rooms_pb2.EndRoomResponse()

    def _source(self, context: Any) -> str:
        """The caller's address: the peer's, or behind a trusted proxy (an ingress)
        the first address of its x-forwarded-for."""
        peer = str(context.peer() or "")
        address = peer.split(":", 1)[1].rsplit(":", 1)[0].strip("[]") if ":" in peer else peer
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address
        if any(ip in network for network in self._trusted_proxies):
            for key, value in context.invocation_metadata() or ():
                if key == "x-forwarded-for" and value:
                    return str(value).split(",")[0].strip()
        return address

    async def _create_record(
        self, name: str, limit: int, passcode: passcodes.PasscodeHash, host_key_sha256: str
    ) -> RoomRecord:
        now_ms = int(self._clock() * 1000)
        for _ in range(3):  # a collision of 100-bit ids is next to impossible
            room = RoomRecord(new_room_id(), name, now_ms, limit, passcode, host_key_sha256)
            created, _ = await self._store.create_if_absent(room_key(room.room_id), room.to_json())
            if created:
                return room
        raise StoreUnavailable("could not allocate a unique room id")

    async def _host_room(self, room_id: RoomId, host_key: str) -> RoomRecord:
        """The meeting, for its host only; the same refusal for a missing meeting."""
        raw = await self._store.get(room_key(room_id))
        room = RoomRecord.from_json(raw) if raw is not None else None
        if room is None or not passcodes.is_host_key(host_key, room.host_key_sha256):
            raise NotHost()
        return room

    async def _current_node(self, room_id: RoomId) -> NodeInfo | None:
        """The live node hosting the meeting, without placing it (cache, then etcd)."""
        node = self._registry.live_placement(room_id)
        if node is not None:
            return node
        raw = await self._store.get(placement_key(room_id))
        if raw is None:
            return None
        return self._registry.node(decode_placement(raw))


def _room_message(room: RoomRecord, node_id: str) -> rooms_pb2.Room:
    return rooms_pb2.Room(
        room_id=room.room_id,
        name=room.name,
        created_at_ms=room.created_at_ms,
        node_id=node_id,
        max_participants=room.max_participants,
    )
