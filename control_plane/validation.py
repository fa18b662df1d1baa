"""Checking request fields before they reach etcd keys, grants or a relay's roster."""

from __future__ import annotations

import unicodedata

from control_plane.errors import InvalidArgument
from control_plane.ids import MAX_ID_LENGTH, RoomId, is_safe_id

MAX_DISPLAY_NAME = 64
MAX_ROOM_NAME = 100
MAX_PASSCODE = 64
DEFAULT_MAX_PARTICIPANTS = 100
MAX_PARTICIPANTS_LIMIT = 1000


def room_id(value: str) -> RoomId:
    """A room id safe to use as one etcd key segment."""
    if not value:
        raise InvalidArgument("room_id is required")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(f"room_id is longer than {MAX_ID_LENGTH} characters")
    if not is_safe_id(value):
        raise InvalidArgument("room_id may only contain letters, digits, '-' and '_'")
    return RoomId(value)


def display_name(value: str) -> str:
    """A participant's display name: 1..64 characters, not blank, no control characters."""
    if not value.strip():
        raise InvalidArgument("display_name is required")
    if len(value) > MAX_DISPLAY_NAME:
        raise InvalidArgument(f"display_name is longer than {MAX_DISPLAY_NAME} characters")
    if _has_control_characters(value):
        raise InvalidArgument("display_name contains control characters")
    return value


def room_name(value: str) -> str:
    """A meeting's name: optional, at most 100 characters, no control characters."""
    if len(value) > MAX_ROOM_NAME:
        raise InvalidArgument(f"name is longer than {MAX_ROOM_NAME} characters")
    if _has_control_characters(value):
        raise InvalidArgument("name contains control characters")
    return value


def passcode(value: str) -> str:
    """A meeting passcode: at most 64 characters, no control characters (empty when
    creating a meeting: the server draws one)."""
    if len(value) > MAX_PASSCODE:
        raise InvalidArgument(f"passcode is longer than {MAX_PASSCODE} characters")
    if _has_control_characters(value):
        raise InvalidArgument("passcode contains control characters")
    return value


def max_participants(value: int) -> int:
    """The participant limit: 0 means the default."""
    if value == 0:
        return DEFAULT_MAX_PARTICIPANTS
    if value > MAX_PARTICIPANTS_LIMIT:
        raise InvalidArgument(f"max_participants is above {MAX_PARTICIPANTS_LIMIT}")
    return value


def _has_control_characters(value: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value)
