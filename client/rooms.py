"""The control plane's RoomService, as the client sees it: create, inspect, join
and end meetings. Every failure becomes one `ConclaveError` a person can act on."""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any

import grpc

from client.errors import ConclaveError
from protos import rooms_pb2, rooms_pb2_grpc

DEFAULT_CONTROL_PLANE = "127.0.0.1:50051"
CONTROL_PLANE_ENV = "CONCLAVE_CONTROL_PLANE"


def control_plane_target(explicit: str | None = None) -> str:
    """`explicit`, else $CONCLAVE_CONTROL_PLANE, else 127.0.0.1:50051."""
    return explicit or os.environ.get(CONTROL_PLANE_ENV, "").strip() or DEFAULT_CONTROL_PLANE


class RoomsClient:
    """The control plane's RoomService over one grpc.aio channel.

    Create it inside the running event loop (grpc.aio binds the channel to it).
    Every failure is raised as `ConclaveError` with the gRPC status name as `code`.
    """

    def __init__(self, target: str | None = None, *, timeout: float = 10.0) -> None:
        self.target = control_plane_target(target)
        self.timeout = timeout
        self._channel = grpc.aio.insecure_channel(self.target)
        stub_class: Any = rooms_pb2_grpc.RoomServiceStub  # generated without annotations
        self._stub = stub_class(self._channel)

    async def __aenter__(self) -> RoomsClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def create_room(
        self, name: str = "", max_participants: int = 0, passcode: str = ""
    ) -> rooms_pb2.Room:
        """Create a meeting; `max_participants` 0 means the server's default. Without
        a `passcode` the server draws one: `Room.passcode` of the reply, told once."""
        request = rooms_pb2.CreateRoomRequest(
            name=name, max_participants=max_participants, passcode=passcode
        )
        room: rooms_pb2.Room = await self._call("CreateRoom", self._stub.CreateRoom, request)
        return room

    async def get_room(self, room_id: str, host_key: str) -> rooms_pb2.Room:
        """The meeting, for its host (`host_key` from `create_room`)."""
        request = rooms_pb2.GetRoomRequest(room_id=room_id, host_key=host_key)
        room: rooms_pb2.Room = await self._call("GetRoom", self._stub.GetRoom, request)
        return room

    async def join_room(
        self,
        room_id: str,
        display_name: str,
        publish: bool,
        passcode: str = "",
        host_key: str = "",
    ) -> rooms_pb2.JoinRoomResponse:
        """A signed, short-lived grant and the relay to present it to. An unknown
        meeting and a wrong passcode both fail with NOT_FOUND. With the `host_key`
        instead of the passcode, the grant makes its holder the host."""
        request = rooms_pb2.JoinRoomRequest(
            room_id=room_id,
            display_name=display_name,
            publish=publish,
            passcode=passcode,
            host_key=host_key,
        )
        response: rooms_pb2.JoinRoomResponse = await self._call(
            "JoinRoom", self._stub.JoinRoom, request
        )
        return response

    async def list_participants(self, room_id: str, host_key: str) -> list[rooms_pb2.Participant]:
        request = rooms_pb2.ListParticipantsRequest(room_id=room_id, host_key=host_key)
        response: rooms_pb2.ListParticipantsResponse = await self._call(
            "ListParticipants", self._stub.ListParticipants, request
        )
        return list(response.participants)

    async def end_room(self, room_id: str, host_key: str) -> None:
        request = rooms_pb2.EndRoomRequest(room_id=room_id, host_key=host_key)
        await self._call("EndRoom", self._stub.EndRoom, request)

    async def _call(self, name: str, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise _rpc_error(name, self.target, self.timeout, exc) from None


def _rpc_error(name: str, target: str, timeout: float, exc: Any) -> ConclaveError:
    """Turn a gRPC failure into one line a person can act on."""
    code = exc.code()
    details = exc.details() or ""
    code_name = str(getattr(code, "name", code))
    if code == grpc.StatusCode.UNAVAILABLE:
        message = f"cannot reach the control plane at {target}: {details}"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"the control plane at {target} did not answer {name} within {timeout:g} s"
    else:
        message = f"{name} failed: {details or code_name} ({code_name})"
    return ConclaveError(message, code_name)
