"""A meeting's security policy, shared by the control plane and the relays.

The policy lives in the meeting's record (/conclave/rooms/{room_id}, key "policy")
so that every control-plane replica and the relay hosting the meeting agree on it:
the control plane checks it before issuing a grant, the relay again when the grant
is used and whenever the record changes (it watches the rooms prefix). Changes are
compare-and-swap writes that keep the record's other fields and its expiry lease.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from conclave.store import ROOMS_PREFIX, EtcdStore

SOURCES = ("microphone", "camera", "screen")
SOURCE_KINDS = {"microphone": "audio", "camera": "video", "screen": "video"}
SCREEN_SHARE = ("hosts", "everyone")
ROLES = ("host", "cohost", "participant")
MAX_REMOVED = 1000  # removals remembered per meeting (a bound on the record's size)
CAS_TRIES = 8


class MeetingGone(Exception):
    """The meeting's record is not in etcd (ended or expired)."""


@dataclass(frozen=True, slots=True)
class Removal:
    """A removed participant: its id, and the HMAC of the address its grant was
    asked from (empty when unknown), which later JoinRoom calls are checked against."""

    participant_id: str
    source_tag: str = ""


@dataclass(frozen=True, slots=True)
class MeetingPolicy:
    waiting_room: bool = False
    locked: bool = False
    suspended: bool = False
    screen_share: str = "hosts"
    removed: tuple[Removal, ...] = field(default=())

    @property
    def closed_to_newcomers(self) -> bool:
        """Locked, or suspended (which locks too until it is lifted)."""
        return self.locked or self.suspended

    def is_removed(self, participant_id: str, source_tag: str) -> bool:
        return any(
            r.participant_id == participant_id or (source_tag and r.source_tag == source_tag)
            for r in self.removed
        )

    def with_removal(self, removal: Removal) -> MeetingPolicy:
        kept = [r for r in self.removed if r.participant_id != removal.participant_id]
        return replace(self, removed=(*kept, removal)[-MAX_REMOVED:])

    def default_sources(self, role: str, publish: bool) -> list[str]:
        """What a new participant may publish (default-deny): nothing unless it asks
        to publish; then microphone and camera, and the screen for hosts, or for
        everyone when the meeting allows it."""
        if not publish:
            return []
        if role == "host" or self.screen_share == "everyone":
            return list(SOURCES)
        return ["microphone", "camera"]

    @classmethod
    def from_json(cls, data: Any) -> MeetingPolicy:
        """Strict about types: a record nobody could have written raises ValueError."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ValueError("meeting policy is not an object")
        flags = {}
        for name in ("waiting_room", "locked", "suspended"):
            value = data.get(name, False)
            if not isinstance(value, bool):
                raise ValueError(f"meeting policy field {name!r} is not a boolean")
            flags[name] = value
        screen = data.get("screen_share", "hosts")
        if screen not in SCREEN_SHARE:
            raise ValueError("meeting policy field 'screen_share' is not hosts/everyone")
        removed = []
        for entry in data.get("removed", []):
            if not isinstance(entry, dict) or not isinstance(entry.get("participant_id"), str):
                raise ValueError("meeting policy has a malformed removal")
            removed.append(Removal(entry["participant_id"], str(entry.get("source", ""))))
        return cls(screen_share=screen, removed=tuple(removed), **flags)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "waiting_room": self.waiting_room,
            "locked": self.locked,
            "suspended": self.suspended,
            "screen_share": self.screen_share,
        }
        if self.removed:
            data["removed"] = [
                {"participant_id": r.participant_id, "source": r.source_tag} for r in self.removed
            ]
        return data


def policy_of(record: bytes) -> MeetingPolicy:
    data = json.loads(record)
    if not isinstance(data, dict):
        raise ValueError("room record is not a JSON object")
    return MeetingPolicy.from_json(data.get("policy"))


async def read_policy(store: EtcdStore, room_id: str) -> MeetingPolicy:
    raw = await store.get(ROOMS_PREFIX + room_id)
    if raw is None:
        raise MeetingGone(room_id)
    return policy_of(raw)


async def update_policy(
    store: EtcdStore, room_id: str, change: Callable[[MeetingPolicy], MeetingPolicy]
) -> tuple[MeetingPolicy, MeetingPolicy]:
    """Apply `change` to the stored policy by compare-and-swap: (before, after).
    The record keeps its other fields and its expiry lease (field "lease")."""
    key = ROOMS_PREFIX + room_id
    for _ in range(CAS_TRIES):
        raw, version = await store.get_versioned(key)
        if raw is None:
            raise MeetingGone(room_id)
        data = json.loads(raw)
        before = MeetingPolicy.from_json(data.get("policy"))
        after = change(before)
        if after == before:
            return before, after
        data["policy"] = after.to_json()
        lease = data.get("lease", 0)
        if await store.put_if_version(
            key, version, json.dumps(data).encode(), lease=lease if isinstance(lease, int) else 0
        ):
            return before, after
    raise TimeoutError("the meeting's policy kept changing under us")


def policy_actions(before: MeetingPolicy, after: MeetingPolicy) -> list[tuple[str, str]]:
    """The audit-log actions (action, detail) that turn `before` into `after`."""
    changes = []
    if before.locked != after.locked:
        changes.append(("lock" if after.locked else "unlock", ""))
    if before.suspended != after.suspended:
        changes.append(("suspend" if after.suspended else "lift_suspension", ""))
    if before.waiting_room != after.waiting_room:
        changes.append(("waiting_room", "on" if after.waiting_room else "off"))
    if before.screen_share != after.screen_share:
        changes.append(("screen_share", after.screen_share))
    return changes
