"""Checking request fields before they reach etcd keys, grants or a relay's roster."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from conclave.meeting import SCREEN_SHARE, SOURCES
from control_plane.errors import InvalidArgument
from control_plane.ids import MAX_ID_LENGTH, ParticipantId, RoomId, is_safe_id

MAX_DISPLAY_NAME = 64
MAX_ROOM_NAME = 100
MAX_PASSCODE = 64
DEFAULT_MAX_PARTICIPANTS = 100
MAX_PARTICIPANTS_LIMIT = 1000
ASSIGNABLE_ROLES = ("cohost", "participant")  # "host" comes with the host key only


def room_id(value: str) -> RoomId:
    """A room id safe to use as one etcd key segment."""
    if not value:
        raise InvalidArgument("room_id is required")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(f"room_id is longer than {MAX_ID_LENGTH} characters")
    if not is_safe_id(value):
        raise InvalidArgument("room_id may only contain letters, digits, '-' and '_'")
    return RoomId(value)


def participant_id(value: str) -> ParticipantId:
    """A participant id as the control plane issues them (and relays echo them)."""
    if not value:
        raise InvalidArgument("participant_id is required")
    if not is_safe_id(value):
        raise InvalidArgument(
            f"participant_id must be 1..{MAX_ID_LENGTH} letters, digits, '-' or '_'"
        )
    return ParticipantId(value)


def participant_ids(values: Iterable[str]) -> list[ParticipantId]:
    """A list of participant ids, each checked, duplicates dropped, at most one
    meeting's worth."""
    checked: list[ParticipantId] = []
    for value in values:
        pid = participant_id(value)
        if pid not in checked:
            checked.append(pid)
        if len(checked) > MAX_PARTICIPANTS_LIMIT:
            raise InvalidArgument(f"more than {MAX_PARTICIPANTS_LIMIT} participant_ids")
    return checked


def source(value: str) -> str:
    """One media source: "microphone", "camera" or "screen"."""
    if value not in SOURCES:
        raise InvalidArgument(f"source must be one of {', '.join(SOURCES)}")
    return value


def sources(values: Iterable[str]) -> list[str]:
    """A set of media sources, in the canonical order (empty: nothing)."""
    wanted = {source(value) for value in values}
    return [s for s in SOURCES if s in wanted]


def role(value: str) -> str:
    """A role a host may give at run time: "cohost" or "participant"."""
    if value not in ASSIGNABLE_ROLES:
        raise InvalidArgument(f"role must be one of {', '.join(ASSIGNABLE_ROLES)}")
    return value


def screen_share(value: str) -> str:
    """Who may share a screen by default: "hosts" or "everyone" ("" is "hosts")."""
    if not value:
        return "hosts"
    if value not in SCREEN_SHARE:
        raise InvalidArgument(f"screen_share must be one of {', '.join(SCREEN_SHARE)}")
    return value


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
