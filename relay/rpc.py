"""RelayService: what the control plane may ask a relay (protos/relay.proto).

Host controls arrive here after the control plane checked the host key and wrote
the audit entry; the relay carries them out like the same actions over signalling.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from conclave.meeting import SOURCES
from protos import relay_pb2, relay_pb2_grpc, rooms_pb2
from relay.errors import SignalingError
from relay.node import RelayNode
from relay.room import NotFound, Participant, Room, Waiting

Resp = TypeVar("Resp")


class RelayServicer(relay_pb2_grpc.RelayServiceServicer):
    def __init__(self, node: RelayNode) -> None:
        self._node = node

    async def ListParticipants(
        self, request: rooms_pb2.ListParticipantsRequest, context: grpc.aio.ServicerContext
    ) -> rooms_pb2.ListParticipantsResponse:
        room = self._node.rooms.get(request.room_id)
        participants = [] if room is None else [_describe(p) for p in room.roster()]
        if room is not None:
            participants += [_describe_waiting(w) for w in room.waiting.values()]
        return rooms_pb2.ListParticipantsResponse(participants=participants)

    async def CloseRoom(
        self, request: relay_pb2.CloseRoomRequest, context: grpc.aio.ServicerContext
    ) -> relay_pb2.CloseRoomResponse:
        room = self._node.rooms.get(request.room_id)
        count = 0 if room is None else await room.close("room_ended")
        return relay_pb2.CloseRoomResponse(disconnected=count)

    async def AdmitParticipants(
        self, request: rooms_pb2.AdmitParticipantsRequest, context: grpc.aio.ServicerContext
    ) -> rooms_pb2.AdmitParticipantsResponse:
        async def admit(room: Room) -> rooms_pb2.AdmitParticipantsResponse:
            ids = None if request.all else list(request.participant_ids)
            admitted = await room.admit(ids)
            self._node.participants_changed(room.room_id)
            return rooms_pb2.AdmitParticipantsResponse(admitted=admitted)

        return await self._in_room(request.room_id, context, admit)

    async def DenyParticipants(
        self, request: rooms_pb2.DenyParticipantsRequest, context: grpc.aio.ServicerContext
    ) -> rooms_pb2.DenyParticipantsResponse:
        async def deny(room: Room) -> rooms_pb2.DenyParticipantsResponse:
            denied = await room.deny(list(request.participant_ids))
            self._node.participants_changed(room.room_id)
            return rooms_pb2.DenyParticipantsResponse(denied=denied)

        return await self._in_room(request.room_id, context, deny)

    async def RemoveParticipant(
        self, request: rooms_pb2.ParticipantRequest, context: grpc.aio.ServicerContext
    ) -> rooms_pb2.ParticipantActionResponse:
        async def remove(room: Room) -> rooms_pb2.ParticipantActionResponse:
            await self._node.remove(room, request.participant_id, None)
            return rooms_pb2.ParticipantActionResponse()

        return await self._in_room(request.room_id, context, remove)

    async def MuteParticipant(
        self, request: rooms_pb2.MuteParticipantRequest, context: grpc.aio.ServicerContext
    ) -> rooms_pb2.ParticipantActionResponse:
        async def mute(room: Room) -> rooms_pb2.ParticipantActionResponse:
            await room.mute_participant(request.participant_id, request.source)
            return rooms_pb2.ParticipantActionResponse()

        return await self._in_room(request.room_id, context, mute)

    async def SetPublishRights(
        self, request: rooms_pb2.SetPublishRightsRequest, context: grpc.aio.ServicerContext
    ) -> rooms_pb2.ParticipantActionResponse:
        async def allow(room: Room) -> rooms_pb2.ParticipantActionResponse:
            if any(s not in SOURCES for s in request.sources):
                raise SignalingError("malformed", f"a source is one of {list(SOURCES)}")
            await room.set_rights(request.participant_id, set(request.sources))
            return rooms_pb2.ParticipantActionResponse()

        return await self._in_room(request.room_id, context, allow)

    async def SetRole(
        self, request: rooms_pb2.SetRoleRequest, context: grpc.aio.ServicerContext
    ) -> rooms_pb2.ParticipantActionResponse:
        async def set_role(room: Room) -> rooms_pb2.ParticipantActionResponse:
            if request.role not in ("cohost", "participant"):
                raise SignalingError("malformed", "a role is 'cohost' or 'participant'")
            await room.set_role(request.participant_id, request.role)
            return rooms_pb2.ParticipantActionResponse()

        return await self._in_room(request.room_id, context, set_role)

    async def _in_room(
        self,
        room_id: str,
        context: grpc.aio.ServicerContext,
        action: Callable[[Room], Awaitable[Resp]],
    ) -> Resp:
        """Run a host control on the meeting's room here, mapping refusals to
        statuses: NOT_FOUND for a participant (or meeting) not on this node."""
        room = self._node.rooms.get(room_id)
        try:
            if room is None:
                raise NotFound()
            return await action(room)
        except NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, exc.message)
        except SignalingError as exc:
            code = (
                grpc.StatusCode.INVALID_ARGUMENT
                if exc.code == "malformed"
                else grpc.StatusCode.FAILED_PRECONDITION
            )
            await context.abort(code, exc.message)
        raise AssertionError("context.abort returned")  # pragma: no cover


def _describe(participant: Participant) -> rooms_pb2.Participant:
    return rooms_pb2.Participant(
        participant_id=participant.participant_id,
        display_name=participant.name,
        joined_at_ms=participant.joined_at_ms,
        tracks=[
            rooms_pb2.Track(track_id=t.track_id, kind=t.kind, muted=t.muted, source=t.source)
            for t in participant.tracks.values()
        ],
        role=participant.role,
        publish_rights=sorted(participant.rights),
    )


def _describe_waiting(entry: Waiting) -> rooms_pb2.Participant:
    return rooms_pb2.Participant(
        participant_id=entry.participant_id,
        display_name=entry.name,
        role=entry.role,
        waiting=True,
        publish_rights=sorted(entry.rights),
    )
