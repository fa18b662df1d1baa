from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Room(_message.Message):
    __slots__ = ("room_id", "name", "created_at_ms", "node_id", "max_participants", "passcode", "host_key", "waiting_room", "locked", "suspended", "screen_share", "expires_at_ms", "has_passcode")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    PASSCODE_FIELD_NUMBER: _ClassVar[int]
    HOST_KEY_FIELD_NUMBER: _ClassVar[int]
    WAITING_ROOM_FIELD_NUMBER: _ClassVar[int]
    LOCKED_FIELD_NUMBER: _ClassVar[int]
    SUSPENDED_FIELD_NUMBER: _ClassVar[int]
    SCREEN_SHARE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    HAS_PASSCODE_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    name: str
    created_at_ms: int
    node_id: str
    max_participants: int
    passcode: str
    host_key: str
    waiting_room: bool
    locked: bool
    suspended: bool
    screen_share: str
    expires_at_ms: int
    has_passcode: bool
    def __init__(self, room_id: _Optional[str] = ..., name: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., node_id: _Optional[str] = ..., max_participants: _Optional[int] = ..., passcode: _Optional[str] = ..., host_key: _Optional[str] = ..., waiting_room: _Optional[bool] = ..., locked: _Optional[bool] = ..., suspended: _Optional[bool] = ..., screen_share: _Optional[str] = ..., expires_at_ms: _Optional[int] = ..., has_passcode: _Optional[bool] = ...) -> None: ...

class CreateRoomRequest(_message.Message):
    __slots__ = ("name", "max_participants", "passcode", "waiting_room", "screen_share")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    PASSCODE_FIELD_NUMBER: _ClassVar[int]
    WAITING_ROOM_FIELD_NUMBER: _ClassVar[int]
    SCREEN_SHARE_FIELD_NUMBER: _ClassVar[int]
    name: str
    max_participants: int
    passcode: str
    waiting_room: bool
    screen_share: str
    def __init__(self, name: _Optional[str] = ..., max_participants: _Optional[int] = ..., passcode: _Optional[str] = ..., waiting_room: _Optional[bool] = ..., screen_share: _Optional[str] = ...) -> None: ...

class GetRoomRequest(_message.Message):
    __slots__ = ("room_id", "host_key")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_KEY_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    host_key: str
    def __init__(self, room_id: _Optional[str] = ..., host_key: _Optional[str] = ...) -> None: ...

class JoinRoomRequest(_message.Message):
    __slots__ = ("room_id", "display_name", "publish", "passcode", "host_key", "rejoin_participant_id", "rejoin_token", "unreachable_node_id", "region", "full_node_id")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_FIELD_NUMBER: _ClassVar[int]
    PASSCODE_FIELD_NUMBER: _ClassVar[int]
    HOST_KEY_FIELD_NUMBER: _ClassVar[int]
    REJOIN_PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    REJOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    UNREACHABLE_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    FULL_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    display_name: str
    publish: bool
    passcode: str
    host_key: str
    rejoin_participant_id: str
    rejoin_token: str
    unreachable_node_id: str
    region: str
    full_node_id: str
    def __init__(self, room_id: _Optional[str] = ..., display_name: _Optional[str] = ..., publish: _Optional[bool] = ..., passcode: _Optional[str] = ..., host_key: _Optional[str] = ..., rejoin_participant_id: _Optional[str] = ..., rejoin_token: _Optional[str] = ..., unreachable_node_id: _Optional[str] = ..., region: _Optional[str] = ..., full_node_id: _Optional[str] = ...) -> None: ...

class JoinRoomResponse(_message.Message):
    __slots__ = ("room_id", "participant_id", "node_id", "signal_url", "grant", "grant_expires_at_ms")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_URL_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    GRANT_EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    participant_id: str
    node_id: str
    signal_url: str
    grant: str
    grant_expires_at_ms: int
    def __init__(self, room_id: _Optional[str] = ..., participant_id: _Optional[str] = ..., node_id: _Optional[str] = ..., signal_url: _Optional[str] = ..., grant: _Optional[str] = ..., grant_expires_at_ms: _Optional[int] = ...) -> None: ...

class Track(_message.Message):
    __slots__ = ("track_id", "kind", "muted", "source")
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MUTED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    track_id: str
    kind: str
    muted: bool
    source: str
    def __init__(self, track_id: _Optional[str] = ..., kind: _Optional[str] = ..., muted: _Optional[bool] = ..., source: _Optional[str] = ...) -> None: ...

class Participant(_message.Message):
    __slots__ = ("participant_id", "display_name", "joined_at_ms", "tracks", "role", "waiting", "publish_rights")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    JOINED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    TRACKS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_RIGHTS_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    display_name: str
    joined_at_ms: int
    tracks: _containers.RepeatedCompositeFieldContainer[Track]
    role: str
    waiting: bool
    publish_rights: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, participant_id: _Optional[str] = ..., display_name: _Optional[str] = ..., joined_at_ms: _Optional[int] = ..., tracks: _Optional[_Iterable[_Union[Track, _Mapping]]] = ..., role: _Optional[str] = ..., waiting: _Optional[bool] = ..., publish_rights: _Optional[_Iterable[str]] = ...) -> None: ...

class ListParticipantsRequest(_message.Message):
    __slots__ = ("room_id", "host_key")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_KEY_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    host_key: str
    def __init__(self, room_id: _Optional[str] = ..., host_key: _Optional[str] = ...) -> None: ...

class ListParticipantsResponse(_message.Message):
    __slots__ = ("participants",)
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    participants: _containers.RepeatedCompositeFieldContainer[Participant]
    def __init__(self, participants: _Optional[_Iterable[_Union[Participant, _Mapping]]] = ...) -> None: ...

class EndRoomRequest(_message.Message):
    __slots__ = ("room_id", "host_key")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_KEY_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    host_key: str
    def __init__(self, room_id: _Optional[str] = ..., host_key: _Optional[str] = ...) -> None: ...

class EndRoomResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpdateRoomRequest(_message.Message):
    __slots__ = ("room_id", "host_key", "locked", "suspended", "waiting_room", "screen_share")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_KEY_FIELD_NUMBER: _ClassVar[int]
    LOCKED_FIELD_NUMBER: _ClassVar[int]
    SUSPENDED_FIELD_NUMBER: _ClassVar[int]
    WAITING_ROOM_FIELD_NUMBER: _ClassVar[int]
    SCREEN_SHARE_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    host_key: str
    locked: bool
    suspended: bool
    waiting_room: bool
    screen_share: str
    def __init__(self, room_id: _Optional[str] = ..., host_key: _Optional[str] = ..., locked: _Optional[bool] = ..., suspended: _Optional[bool] = ..., waiting_room: _Optional[bool] = ..., screen_share: _Optional[str] = ...) -> None: ...

class AdmitParticipantsRequest(_message.Message):
    __slots__ = ("room_id", "host_key", "participant_ids", "all")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_KEY_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_IDS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    host_key: str
    participant_ids: _containers.RepeatedScalarFieldContainer[str]
    all: bool
    def __init__(self, room_id: _Optional[str] = ..., host_key: _Optional[str] = ..., participant_ids: _Optional[_Iterable[str]] = ..., all: _Optional[bool] = ...) -> None: ...

class AdmitParticipantsResponse(_message.Message):
    __slots__ = ("admitted",)
    ADMITTED_FIELD_NUMBER: _ClassVar[int]
    admitted: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, admitted: _Optional[_Iterable[str]] = ...) -> None: ...

class DenyParticipantsRequest(_message.Message):
    __slots__ = ("room_id", "host_key", "participant_ids")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_KEY_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_IDS_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    host_key: str
    participant_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, room_id: _Optional[str] = ..., host_key: _Optional[str] = ..., participant_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DenyParticipantsResponse(_message.Message):
    __slots__ = ("denied",)
    DENIED_FIELD_NUMBER: _ClassVar[int]
    denied: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, denied: _Optional[_Iterable[str]] = ...) -> None: ...

class ParticipantRequest(_message.Message):
    __slots__ = ("room_id", "host_key", "participant_id")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_KEY_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    host_key: str
    participant_id: str
    def __init__(self, room_id: _Optional[str] = ..., host_key: _Optional[str] = ..., participant_id: _Optional[str] = ...) -> None: ...

class ParticipantActionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MuteParticipantRequest(_message.Message):
    __slots__ = ("room_id", "host_key", "participant_id", "source")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_KEY_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    host_key: str
    participant_id: str
    source: str
    def __init__(self, room_id: _Optional[str] = ..., host_key: _Optional[str] = ..., participant_id: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class SetPublishRightsRequest(_message.Message):
    __slots__ = ("room_id", "host_key", "participant_id", "sources")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_KEY_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    host_key: str
    participant_id: str
    sources: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, room_id: _Optional[str] = ..., host_key: _Optional[str] = ..., participant_id: _Optional[str] = ..., sources: _Optional[_Iterable[str]] = ...) -> None: ...

class SetRoleRequest(_message.Message):
    __slots__ = ("room_id", "host_key", "participant_id", "role")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_KEY_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    host_key: str
    participant_id: str
    role: str
    def __init__(self, room_id: _Optional[str] = ..., host_key: _Optional[str] = ..., participant_id: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class GetAuditLogRequest(_message.Message):
    __slots__ = ("room_id", "host_key")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_KEY_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    host_key: str
    def __init__(self, room_id: _Optional[str] = ..., host_key: _Optional[str] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("at_ms", "action", "actor", "target", "detail")
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    at_ms: int
    action: str
    actor: str
    target: str
    detail: str
    def __init__(self, at_ms: _Optional[int] = ..., action: _Optional[str] = ..., actor: _Optional[str] = ..., target: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class AuditLog(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...
