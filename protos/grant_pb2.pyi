from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class JoinGrant(_message.Message):
    __slots__ = ("room_id", "participant_id", "node_id", "display_name", "can_subscribe", "expires_at_ms", "nonce", "key_id", "node_lease", "role", "sources", "source_tag", "rejoin_of", "issued_at_ms")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    CAN_SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_LEASE_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TAG_FIELD_NUMBER: _ClassVar[int]
    REJOIN_OF_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    participant_id: str
    node_id: str
    display_name: str
    can_subscribe: bool
    expires_at_ms: int
    nonce: bytes
    key_id: str
    node_lease: int
    role: str
    sources: _containers.RepeatedScalarFieldContainer[str]
    source_tag: str
    rejoin_of: str
    issued_at_ms: int
    def __init__(self, room_id: _Optional[str] = ..., participant_id: _Optional[str] = ..., node_id: _Optional[str] = ..., display_name: _Optional[str] = ..., can_subscribe: _Optional[bool] = ..., expires_at_ms: _Optional[int] = ..., nonce: _Optional[bytes] = ..., key_id: _Optional[str] = ..., node_lease: _Optional[int] = ..., role: _Optional[str] = ..., sources: _Optional[_Iterable[str]] = ..., source_tag: _Optional[str] = ..., rejoin_of: _Optional[str] = ..., issued_at_ms: _Optional[int] = ...) -> None: ...

class SignedGrant(_message.Message):
    __slots__ = ("grant", "signature")
    GRANT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    grant: bytes
    signature: bytes
    def __init__(self, grant: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...
