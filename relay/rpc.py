"""RelayService: what the control plane may ask a relay (protos/relay.proto)."""

from __future__ import annotations

import grpc

from protos import relay_pb2, relay_pb2_grpc, rooms_pb2
from relay.node import RelayNode
from relay.room import Participant


class RelayServicer(relay_pb2_grpc.RelayServiceServicer):
    def __init__(self, node: RelayNode) -> None:
        self._node = node

    async def ListParticipants(
        self, request: rooms_pb2.ListParticipantsRequest, context: grpc.aio.ServicerContext
    ) -> rooms_pb2.ListParticipantsResponse:
        room = self._node.rooms.get(request.room_id)
        participants = [] if room is None else [_describe(p) for p in room.roster()]
        return rooms_pb2.ListParticipantsResponse(participants=participants)

    async def CloseRoom(
        self, request: relay_pb2.CloseRoomRequest, context: grpc.aio.ServicerContext
    ) -> relay_pb2.CloseRoomResponse:
        room = self._node.rooms.get(request.room_id)
        count = 0 if room is None else await room.close("room_ended")
        return relay_pb2.CloseRoomResponse(disconnected=count)


def _describe(participant: Participant) -> rooms_pb2.Participant:
    return rooms_pb2.Participant(
        participant_id=participant.participant_id,
        display_name=participant.name,
        joined_at_ms=participant.joined_at_ms,
        tracks=[
            rooms_pb2.Track(track_id=t.track_id, kind=t.kind, muted=t.muted)
            for t in participant.tracks.values()
        ],
    )
