from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Room(_message.Message):
    __slots__ = ("room_id", "name", "created_at_ms", "node_id", "max_participants", "passcode", "host_key")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    PASSCODE_FIELD_NUMBER: _ClassVar[int]
    HOST_KEY_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    name: str
    created_at_ms: int
    node_id: str
    max_participants: int
    passcode: str
    host_key: str
    def __init__(self, room_id: _Optional[str] = ..., name: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., node_id: _Optional[str] = ..., max_participants: _Optional[int] = ..., passcode: _Optional[str] = ..., host_key: _Optional[str] = ...) -> None: ...

class CreateRoomRequest(_message.Message):
    __slots__ = ("name", "max_participants", "passcode")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    PASSCODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    max_participants: int
    passcode: str
    def __init__(self, name: _Optional[str] = ..., max_participants: _Optional[int] = ..., passcode: _Optional[str] = ...) -> None: ...

class GetRoomRequest(_message.Message):
    __slots__ = ("room_id", "host_key")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_KEY_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    host_key: str
    def __init__(self, room_id: _Optional[str] = ..., host_key: _Optional[str] = ...) -> None: ...

class JoinRoomRequest(_message.Message):
    __slots__ = ("room_id", "display_name", "publish", "passcode", "host_key")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_FIELD_NUMBER: _ClassVar[int]
    PASSCODE_FIELD_NUMBER: _ClassVar[int]
    HOST_KEY_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    display_name: str
    publish: bool
    passcode: str
    host_key: str
    def __init__(self, room_id: _Optional[str] = ..., display_name: _Optional[str] = ..., publish: _Optional[bool] = ..., passcode: _Optional[str] = ..., host_key: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("track_id", "kind", "muted")
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MUTED_FIELD_NUMBER: _ClassVar[int]
    track_id: str
    kind: str
    muted: bool
    def __init__(self, track_id: _Optional[str] = ..., kind: _Optional[str] = ..., muted: _Optional[bool] = ...) -> None: ...

class Participant(_message.Message):
    __slots__ = ("participant_id", "display_name", "joined_at_ms", "tracks")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    JOINED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    TRACKS_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    display_name: str
    joined_at_ms: int
    tracks: _containers.RepeatedCompositeFieldContainer[Track]
    def __init__(self, participant_id: _Optional[str] = ..., display_name: _Optional[str] = ..., joined_at_ms: _Optional[int] = ..., tracks: _Optional[_Iterable[_Union[Track, _Mapping]]] = ...) -> None: ...

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
