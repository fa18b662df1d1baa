"""Identifier types and generators: room ids are secrets, so they come from `secrets`."""

from __future__ import annotations

import re
import secrets
from typing import NewType

RoomId = NewType("RoomId", str)
NodeId = NewType("NodeId", str)
ParticipantId = NewType("ParticipantId", str)

# Crockford-style base32 in lower case: 32 symbols without i, l, o, u, so ids read
# aloud unambiguously. 5 groups of 4 symbols = 100 bits of entropy: trying ids at a
# million per second would find one of a million live meetings once in 40 000 years.
ROOM_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
ROOM_ID_GROUPS = (4, 4, 4, 4, 4)
ROOM_ID_BITS = 5 * sum(ROOM_ID_GROUPS)

# What the service accepts as a room or node id: it becomes part of an etcd key,
# so no "/" and a bounded length.
MAX_ID_LENGTH = 64
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def new_room_id() -> RoomId:
    """An unguessable meeting id such as `k3f9-qzmx-2c7a-hv0d-n8pe` (100 random bits)."""
    groups = (
        "".join(secrets.choice(ROOM_ID_ALPHABET) for _ in range(size)) for size in ROOM_ID_GROUPS
    )
    return RoomId("-".join(groups))


def new_participant_id() -> ParticipantId:
    """A fresh participant id, unique per join (96 random bits)."""
    return ParticipantId("p_" + secrets.token_urlsafe(12))


def is_safe_id(value: str) -> bool:
    """Whether `value` may be embedded in an etcd key as one path segment."""
    return _SAFE_ID.fullmatch(value) is not None
