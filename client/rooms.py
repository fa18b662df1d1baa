"""The control plane's RoomService, as the client sees it: create, inspect, join
and end meetings. Every failure becomes one `ConclaveError` a person can act on."""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from client.errors import ConclaveError
from conclave.credentials import (
    KEY_FILE_ENV,
    METADATA_KEY,
    TOKEN_LIFETIME_S,
    ApiKey,
    find_key,
    mint_token,
)
from conclave.tls import CA_FILE_ENV, channel_credentials, find_ca_file
from protos import rooms_pb2, rooms_pb2_grpc

DEFAULT_CONTROL_PLANE = "127.0.0.1:50051"
CONTROL_PLANE_ENV = "CONCLAVE_CONTROL_PLANE"
# A minted token is sent until this long before its expiry, then replaced.
TOKEN_RENEW_MARGIN_S = 60


class _Default(enum.Enum):
    FIND_KEY = enum.auto()


class CaDefault(enum.Enum):
    FIND_CA = enum.auto()


#: `RoomsClient(api_key=FIND_KEY)` (the default): the key `find_key()` finds, if any.
FIND_KEY = _Default.FIND_KEY
#: `RoomsClient(ca=FIND_CA)` (the default): the CA `conclave.tls.find_ca_file()` finds.
FIND_CA = CaDefault.FIND_CA


def control_plane_target(explicit: str | None = None) -> str:
    """`explicit`, else $CONCLAVE_CONTROL_PLANE, else 127.0.0.1:50051."""
    return explicit or os.environ.get(CONTROL_PLANE_ENV, "").strip() or DEFAULT_CONTROL_PLANE


class RoomsClient:
    """The control plane's RoomService over one grpc.aio channel.

    Create it inside the running event loop (grpc.aio binds the channel to it).
    Every failure is raised as `ConclaveError` with the gRPC status name as `code`.

    Every call carries a short-lived token signed with `api_key`
    (conclave/credentials.py). By default that is the key file `find_key()` finds
    ($CONCLAVE_API_KEY_FILE or the user's config directory), so the CLI and the SDK
    pick up a dev cluster's key by themselves; `api_key=None` sends no credentials
    (joining a meeting one was invited to needs none).

    With a `ca` (by default $CONCLAVE_CA_FILE's, else the CA of `conclave dev` if
    it made one: `conclave.tls.find_ca_file()`) the channel is TLS and the control
    plane's certificate must be signed by that CA; `ca=None` talks in clear, as to
    a control plane started without --tls-cert.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        timeout: float = 10.0,
        api_key: ApiKey | _Default | None = FIND_KEY,
        ca: Path | CaDefault | None = FIND_CA,
    ) -> None:
        self.target = control_plane_target(target)
        self.timeout = timeout
        self.api_key = _find_key() if api_key is FIND_KEY else api_key
        self.ca = find_ca_file() if ca is FIND_CA else ca
        self._token = ""
        self._token_renew_at = 0.0
        if self.ca is None:
            self._channel = grpc.aio.insecure_channel(self.target)
        else:
            try:
                credentials = channel_credentials(self.ca)
            except OSError as exc:
                raise ConclaveError(f"cannot read the CA file: {exc}", "CA_FILE") from None
            self._channel = grpc.aio.secure_channel(self.target, credentials)
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
        self,
        name: str = "",
        max_participants: int = 0,
        passcode: str = "",
        *,
        waiting_room: bool = False,
        screen_share: str = "",
    ) -> rooms_pb2.Room:
        """Create a meeting; `max_participants` 0 means the server's default. Without
        a `passcode` the server draws one (`Room.passcode` of the reply, told once),
        unless `waiting_room` is on: then the meeting has no passcode and the host
        admits whoever knocks (`Room.has_passcode` says which). `screen_share` is
        "hosts" (the server's default, also for "") or "everyone"."""
        request = rooms_pb2.CreateRoomRequest(
            name=name,
            max_participants=max_participants,
            passcode=passcode,
            waiting_room=waiting_room,
            screen_share=screen_share,
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
        *,
        rejoin_participant_id: str = "",
        rejoin_token: str = "",
        unreachable_node_id: str = "",
        region: str = "",
        full_node_id: str = "",
    ) -> rooms_pb2.JoinRoomResponse:
        """A signed, short-lived grant and the relay to present it to. An unknown
        meeting and a wrong passcode both fail with NOT_FOUND. With the `host_key`
        instead of the passcode, the grant makes its holder the host.

        Coming back after a lost connection (what `Session` does by itself when
        given this client): the participant id and `rejoin_token` of the `joined`
        message let it past the waiting room and a lock it was inside of, and
        `unreachable_node_id` names the relay it lost without a word, which the
        control plane then checks and, if dead, moves the meeting off. `region`
        asks for a relay in that region (a meeting spans relays, docs/cascading.md);
        `full_node_id` names a relay that refused the caller as full."""
        request = rooms_pb2.JoinRoomRequest(
            room_id=room_id,
            display_name=display_name,
            publish=publish,
            passcode=passcode,
            host_key=host_key,
            rejoin_participant_id=rejoin_participant_id,
            rejoin_token=rejoin_token,
            unreachable_node_id=unreachable_node_id,
            region=region,
            full_node_id=full_node_id,
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

    # ------------------------------------------------------------ host controls
    # Each takes the meeting's host key; an unknown meeting, a wrong key and an
    # unknown participant fail with NOT_FOUND. The control plane writes each call
    # to the meeting's audit log (actor "host-api").

    async def update_room(
        self,
        room_id: str,
        host_key: str,
        *,
        locked: bool | None = None,
        suspended: bool | None = None,
        waiting_room: bool | None = None,
        screen_share: str | None = None,
    ) -> rooms_pb2.Room:
        """Change the meeting's policy; arguments left at None stay as they are.
        Returns the meeting as it is afterwards."""
        request = rooms_pb2.UpdateRoomRequest(room_id=room_id, host_key=host_key)
        if locked is not None:
            request.locked = locked
        if suspended is not None:
            request.suspended = suspended
        if waiting_room is not None:
            request.waiting_room = waiting_room
        if screen_share is not None:
            request.screen_share = screen_share
        room: rooms_pb2.Room = await self._call("UpdateRoom", self._stub.UpdateRoom, request)
        return room

    async def admit_participants(
        self,
        room_id: str,
        host_key: str,
        participant_ids: Sequence[str] = (),
        *,
        all: bool = False,
    ) -> list[str]:
        """Let these waiting participants in (or, with `all`, everyone waiting now);
        returns the ids admitted."""
        request = rooms_pb2.AdmitParticipantsRequest(
            room_id=room_id, host_key=host_key, participant_ids=list(participant_ids), all=all
        )
        response: rooms_pb2.AdmitParticipantsResponse = await self._call(
            "AdmitParticipants", self._stub.AdmitParticipants, request
        )
        return list(response.admitted)

    async def deny_participants(
        self, room_id: str, host_key: str, participant_ids: Sequence[str]
    ) -> list[str]:
        """Turn these waiting participants away; returns the ids denied."""
        request = rooms_pb2.DenyParticipantsRequest(
            room_id=room_id, host_key=host_key, participant_ids=list(participant_ids)
        )
        response: rooms_pb2.DenyParticipantsResponse = await self._call(
            "DenyParticipants", self._stub.DenyParticipants, request
        )
        return list(response.denied)

    async def remove_participant(self, room_id: str, host_key: str, participant_id: str) -> None:
        """Disconnect a participant (connected or waiting); it cannot come back."""
        request = rooms_pb2.ParticipantRequest(
            room_id=room_id, host_key=host_key, participant_id=participant_id
        )
        await self._call("RemoveParticipant", self._stub.RemoveParticipant, request)

    async def mute_participant(
        self, room_id: str, host_key: str, participant_id: str, source: str
    ) -> None:
        """Stop forwarding one source ("microphone", "camera", "screen") of a
        participant until it unmutes itself."""
        request = rooms_pb2.MuteParticipantRequest(
            room_id=room_id, host_key=host_key, participant_id=participant_id, source=source
        )
        await self._call("MuteParticipant", self._stub.MuteParticipant, request)

    async def set_publish_rights(
        self, room_id: str, host_key: str, participant_id: str, sources: Sequence[str]
    ) -> None:
        """What the participant may publish from now on (empty: nothing); the relay
        stops any track it publishes outside these."""
        request = rooms_pb2.SetPublishRightsRequest(
            room_id=room_id, host_key=host_key, participant_id=participant_id, sources=list(sources)
        )
        await self._call("SetPublishRights", self._stub.SetPublishRights, request)

    async def set_role(self, room_id: str, host_key: str, participant_id: str, role: str) -> None:
        """Make a participant a co-host ("cohost") or a participant again."""
        request = rooms_pb2.SetRoleRequest(
            room_id=room_id, host_key=host_key, participant_id=participant_id, role=role
        )
        await self._call("SetRole", self._stub.SetRole, request)

    async def get_audit_log(self, room_id: str, host_key: str) -> list[rooms_pb2.AuditEntry]:
        """The meeting's audit log, oldest first; readable for the retention period
        after the meeting ended, with the same host key."""
        request = rooms_pb2.GetAuditLogRequest(room_id=room_id, host_key=host_key)
        log: rooms_pb2.AuditLog = await self._call("GetAuditLog", self._stub.GetAuditLog, request)
        return list(log.entries)

    async def _call(self, name: str, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self.timeout, metadata=self._metadata())
        except grpc.aio.AioRpcError as exc:
            raise _rpc_error(
                name, self.target, self.timeout, exc, self.api_key, tls=self.ca is not None
            ) from None

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The authorization metadata, minting a new token when the last one is
        about to expire; None without a key."""
        if self.api_key is None:
            return None
        now = time.time()
        if now >= self._token_renew_at:
            self._token = mint_token(self.api_key, now)
            iat = int(now)  # what mint_token writes as iat
            self._token_renew_at = iat + TOKEN_LIFETIME_S - TOKEN_RENEW_MARGIN_S
        return ((METADATA_KEY, "Bearer " + self._token),)


def _find_key() -> ApiKey | None:
    try:
        return find_key()
    except (ValueError, OSError) as exc:
        raise ConclaveError(f"cannot read the API key: {exc}", "API_KEY") from None


def _rpc_error(
    name: str,
    target: str,
    timeout: float,
    exc: Any,
    api_key: ApiKey | None = None,
    *,
    tls: bool = False,
) -> ConclaveError:
    """Turn a gRPC failure into one line a person can act on."""
    code = exc.code()
    details = exc.details() or ""
    code_name = str(getattr(code, "name", code))
    if code == grpc.StatusCode.UNAVAILABLE:
        message = f"cannot reach the control plane at {target}: {details}{_tls_hint(details, tls)}"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"the control plane at {target} did not answer {name} within {timeout:g} s"
    elif code == grpc.StatusCode.UNAUTHENTICATED:
        message = _unauthenticated(target, details or code_name, api_key)
    elif code == grpc.StatusCode.PERMISSION_DENIED:
        message = f"{name} not permitted: {details or code_name}"
    else:
        message = f"{name} failed: {details or code_name} ({code_name})"
    return ConclaveError(message, code_name)


def _tls_hint(details: str, tls: bool) -> str:
    """A hint when a connection failed the way a TLS mismatch fails: gRPC reports
    a failed handshake (ours) or a closed socket (a TLS server hearing clear text)."""
    lowered = details.lower()
    if tls and ("handshake" in lowered or "ssl" in lowered):
        return (
            " (TLS handshake failed: does it serve TLS, with a certificate for this "
            f"address signed by our CA file (ca=, ${CA_FILE_ENV})?)"
        )
    if not tls and ("socket closed" in lowered or "connection reset" in lowered):
        return f" (if it serves TLS, set ${CA_FILE_ENV} to the CA that signed its certificate)"
    return ""


def _unauthenticated(target: str, details: str, api_key: ApiKey | None) -> str:
    if api_key is None:
        return (
            f"the control plane at {target} wants an API key: create one with "
            f"`conclave keys create --org ORG` or set {KEY_FILE_ENV}"
        )
    return f"the control plane at {target} refused API key {api_key.key_id}: {details}"
