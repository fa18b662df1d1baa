"""A meeting's policy (conclave/meeting.py), the room record that carries it
(control_plane/records.py), its audit log (conclave/audit.py), and the
control plane's checks of host-control arguments and its expiry flags."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from conclave import audit
from conclave.meeting import (
    MAX_REMOVED,
    SOURCES,
    MeetingGone,
    MeetingPolicy,
    Removal,
    policy_of,
    read_policy,
    update_policy,
)
from conclave.store import ROOMS_PREFIX, EtcdStore
from control_plane import main, passcodes, validation
from control_plane.attempts import AttemptLimiter
from control_plane.errors import InvalidArgument
from control_plane.ids import RoomId
from control_plane.records import RoomRecord
from control_plane.service import DEFAULT_AUDIT_RETENTION_S, DEFAULT_MEETING_TTL_S


class MemoryStore:
    """The EtcdStore calls these modules make, with etcd's versions and leases."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[bytes, int, int]] = {}  # key -> (value, version, lease)
        self.conflicts = 0  # writes to make fail (as if another writer came first)

    async def get(self, key: str) -> bytes | None:
        entry = self.data.get(key)
        return entry[0] if entry else None

    async def get_versioned(self, key: str) -> tuple[bytes | None, int]:
        entry = self.data.get(key)
        return (entry[0], entry[1]) if entry else (None, 0)

    async def put(self, key: str, value: bytes, lease: int = 0) -> None:
        version = self.data.get(key, (b"", 0, 0))[1]
        self.data[key] = (value, version + 1, lease)

    async def put_if_version(self, key: str, version: int, value: bytes, lease: int = 0) -> bool:
        if self.conflicts:
            self.conflicts -= 1
            stored, current, kept = self.data[key]
            self.data[key] = (stored, current + 1, kept)
            return False
        if self.data.get(key, (b"", 0, 0))[1] != version:
            return False
        self.data[key] = (value, version + 1, lease)
        return True

    async def get_prefix(self, prefix: str) -> tuple[dict[str, bytes], int]:
        return {k: v[0] for k, v in self.data.items() if k.startswith(prefix)}, 1

    async def create_if_absent(self, key: str, value: bytes) -> tuple[bool, bytes]:
        if key in self.data:
            return False, self.data[key][0]
        self.data[key] = (value, 1, 0)
        return True, value


def as_store(memory: MemoryStore) -> EtcdStore:
    return cast(EtcdStore, cast(Any, memory))


# --- MeetingPolicy ------------------------------------------------------------------


def test_default_policy_is_open_hosts_share_screens() -> None:
    policy = MeetingPolicy()
    assert not policy.closed_to_newcomers
    assert policy.screen_share == "hosts"
    assert policy.to_json() == {
        "waiting_room": False,
        "locked": False,
        "suspended": False,
        "screen_share": "hosts",
    }


def test_locked_or_suspended_closes_the_meeting_to_newcomers() -> None:
    assert MeetingPolicy(locked=True).closed_to_newcomers
    assert MeetingPolicy(suspended=True).closed_to_newcomers
    assert not MeetingPolicy(waiting_room=True).closed_to_newcomers


@pytest.mark.parametrize(
    ("screen_share", "role", "publish", "expected"),
    [
        ("hosts", "participant", False, []),
        ("hosts", "host", False, []),  # default-deny, hosts too
        ("hosts", "participant", True, ["microphone", "camera"]),
        ("hosts", "cohost", True, ["microphone", "camera"]),
        ("hosts", "host", True, list(SOURCES)),
        ("everyone", "participant", True, list(SOURCES)),
        ("everyone", "participant", False, []),
    ],
)
def test_default_sources(screen_share: str, role: str, publish: bool, expected: list[str]) -> None:
    policy = MeetingPolicy(screen_share=screen_share)
    assert policy.default_sources(role, publish) == expected


def test_removal_bars_the_participant_and_its_source() -> None:
    policy = MeetingPolicy().with_removal(Removal("p_a", "tag-a"))
    assert policy.is_removed("p_a", "")
    assert policy.is_removed("", "tag-a")
    assert policy.is_removed("p_other", "tag-a")  # a new join from the same address
    assert not policy.is_removed("p_b", "tag-b")
    assert not policy.is_removed("", "")  # an unknown source matches no removal
    untagged = MeetingPolicy().with_removal(Removal("p_c"))
    assert not untagged.is_removed("", "")
    assert untagged.is_removed("p_c", "")


def test_removals_are_bounded_and_deduplicated() -> None:
    policy = MeetingPolicy()
    for i in range(MAX_REMOVED + 10):
        policy = policy.with_removal(Removal(f"p_{i}", f"t{i}"))
    assert len(policy.removed) == MAX_REMOVED
    assert not policy.is_removed("p_0", "")  # the oldest fell off
    assert policy.is_removed(f"p_{MAX_REMOVED + 9}", "")
    again = policy.with_removal(Removal(f"p_{MAX_REMOVED + 9}", "new"))
    assert len(again.removed) == MAX_REMOVED
    assert again.removed[-1] == Removal(f"p_{MAX_REMOVED + 9}", "new")


def test_policy_json_round_trip() -> None:
    policy = MeetingPolicy(
        waiting_room=True, locked=True, suspended=False, screen_share="everyone"
    ).with_removal(Removal("p_x", "abc"))
    data = json.loads(json.dumps(policy.to_json()))
    assert data["removed"] == [{"participant_id": "p_x", "source": "abc"}]
    assert MeetingPolicy.from_json(data) == policy
    assert MeetingPolicy.from_json(None) == MeetingPolicy()
    assert MeetingPolicy.from_json({}) == MeetingPolicy()


@pytest.mark.parametrize(
    "data",
    [
        [],
        "locked",
        {"locked": "yes"},
        {"waiting_room": 1},
        {"screen_share": "all"},
        {"removed": ["p_x"]},
        {"removed": [{"source": "x"}]},
    ],
)
def test_malformed_policy_is_refused(data: Any) -> None:
    with pytest.raises(ValueError):
        MeetingPolicy.from_json(data)


def test_policy_of_a_record() -> None:
    record = {"room_id": "r", "policy": {"locked": True}}
    assert policy_of(json.dumps(record).encode()).locked
    assert policy_of(b'{"room_id": "r"}') == MeetingPolicy()
    with pytest.raises(ValueError):
        policy_of(b"[1]")


# --- update_policy ------------------------------------------------------------------


async def put_record(store: MemoryStore, room_id: str = "r1", lease: int = 42) -> dict[str, Any]:
    record = {"room_id": room_id, "name": "n", "lease": lease, "policy": MeetingPolicy().to_json()}
    await store.put(ROOMS_PREFIX + room_id, json.dumps(record).encode(), lease)
    return record


async def test_update_policy_keeps_the_record_and_its_lease() -> None:
    store = MemoryStore()
    record = await put_record(store)
    before, after = await update_policy(
        as_store(store), "r1", lambda p: MeetingPolicy(locked=True, screen_share=p.screen_share)
    )
    assert not before.locked and after.locked
    value, version, lease = store.data[ROOMS_PREFIX + "r1"]
    assert lease == 42 and version == 2
    stored = json.loads(value)
    assert {k: v for k, v in stored.items() if k != "policy"} == {
        k: v for k, v in record.items() if k != "policy"
    }
    assert (await read_policy(as_store(store), "r1")).locked


async def test_update_policy_without_change_writes_nothing() -> None:
    store = MemoryStore()
    await put_record(store)
    before, after = await update_policy(as_store(store), "r1", lambda p: p)
    assert before == after
    assert store.data[ROOMS_PREFIX + "r1"][1] == 1


async def test_update_policy_retries_when_someone_else_wrote_first() -> None:
    store = MemoryStore()
    await put_record(store)
    store.conflicts = 3
    calls = 0

    def lock(policy: MeetingPolicy) -> MeetingPolicy:
        nonlocal calls
        calls += 1
        return MeetingPolicy(locked=True)

    _, after = await update_policy(as_store(store), "r1", lock)
    assert after.locked and calls == 4
    store.conflicts = 100
    with pytest.raises(TimeoutError):
        await update_policy(as_store(store), "r1", lambda p: MeetingPolicy(suspended=True))


async def test_update_policy_of_a_gone_meeting() -> None:
    store = MemoryStore()
    with pytest.raises(MeetingGone):
        await update_policy(as_store(store), "nope", lambda p: p)
    with pytest.raises(MeetingGone):
        await read_policy(as_store(store), "nope")


# --- the room record ------------------------------------------------------------------


def test_room_record_carries_policy_expiry_and_leases() -> None:
    record = RoomRecord(
        RoomId("r"),
        "n",
        1,
        10,
        None,
        "ab" * 32,
        policy=MeetingPolicy(waiting_room=True, screen_share="everyone"),
        expires_at_ms=86_400_001,
        lease=7,
        audit_lease=8,
    )
    data = json.loads(record.to_json())
    assert set(data) == {
        "room_id", "name", "created_at_ms", "max_participants", "host_key_sha256",
        "policy", "expires_at_ms", "lease", "audit_lease",
    }  # fmt: skip
    assert "passcode" not in data  # a waiting room and no passcode
    assert data["policy"]["waiting_room"] is True
    assert RoomRecord.from_json(record.to_json()) == record


def test_room_record_written_before_policies_still_reads() -> None:
    raw = json.dumps(
        {"room_id": "r", "name": "", "created_at_ms": 1, "max_participants": 5}
    ).encode()
    record = RoomRecord.from_json(raw)
    assert record.policy == MeetingPolicy()
    assert (record.expires_at_ms, record.lease, record.audit_lease) == (0, 0, 0)


@pytest.mark.parametrize(
    "change",
    [
        {"lease": "7"},
        {"lease": True},
        {"audit_lease": 1.5},
        {"expires_at_ms": None},
        {"policy": {"locked": "no"}},
    ],
)
def test_room_record_with_a_malformed_field_is_refused(change: dict[str, Any]) -> None:
    data = {"room_id": "r", "name": "", "created_at_ms": 1, "max_participants": 5, **change}
    with pytest.raises(ValueError):
        RoomRecord.from_json(json.dumps(data).encode())


def test_room_record_keeps_only_the_passcode_hash() -> None:
    record = RoomRecord(RoomId("r"), "n", 1, 10, passcodes.hash_passcode("s3cret"))
    assert b"s3cret" not in record.to_json()
    assert RoomRecord.from_json(record.to_json()) == record


# --- the audit log --------------------------------------------------------------------


async def test_audit_entries_read_back_oldest_first() -> None:
    store = MemoryStore()
    for action in ("create", "lock", "admit"):
        await audit.append(as_store(store), "r1", 9, action, "host-api", target="p_1")
    await audit.append(as_store(store), "r2", 9, "end", "host-api")
    entries = await audit.read(as_store(store), "r1")
    assert [e.action for e in entries] == ["create", "lock", "admit"]
    assert all(e.actor == "host-api" and e.target == "p_1" for e in entries)
    assert [e.at_ms for e in entries] == sorted(e.at_ms for e in entries)
    assert all(lease == 9 for _, _, lease in store.data.values())  # none outlives the log


async def test_audit_entries_need_the_audit_lease_and_are_bounded() -> None:
    store = MemoryStore()
    with pytest.raises(ValueError):
        await audit.append(as_store(store), "r1", 0, "lock", "host-api")
    entry = await audit.append(as_store(store), "r1", 3, "mute", "host-api", detail="x" * 500)
    assert len(entry.detail) == audit.MAX_DETAIL_CHARS


async def test_malformed_audit_entries_are_skipped() -> None:
    store = MemoryStore()
    await audit.append(as_store(store), "r1", 3, "lock", "host-api")
    await store.put(audit.entries_prefix("r1") + "0000000000000-bad", b"not json", 3)
    await store.put(audit.entries_prefix("r1") + "0000000000001-bad", b'{"action": "x"}', 3)
    assert [e.action for e in await audit.read(as_store(store), "r1")] == ["lock"]
    assert audit.host_key("r1") == "/conclave/audit/r1/host"
    assert not audit.host_key("r1").startswith(audit.entries_prefix("r1"))


# --- host-control arguments -------------------------------------------------------------


def test_participant_ids_are_checked_and_deduplicated() -> None:
    assert validation.participant_ids(["p_a", "p_b", "p_a"]) == ["p_a", "p_b"]
    assert validation.participant_id("p_AbC-12_x") == "p_AbC-12_x"
    for bad in ("", "a/b", "x" * 65, "p a", "p\n"):
        with pytest.raises(InvalidArgument):
            validation.participant_id(bad)
    with pytest.raises(InvalidArgument):
        validation.participant_ids([f"p_{i}" for i in range(validation.MAX_PARTICIPANTS_LIMIT + 1)])


def test_sources_roles_and_screen_share() -> None:
    assert validation.sources(["screen", "microphone", "screen"]) == ["microphone", "screen"]
    assert validation.sources([]) == []
    for bad in ("audio", "video", "", "Screen"):
        with pytest.raises(InvalidArgument):
            validation.source(bad)
    assert validation.role("cohost") == "cohost"
    for bad in ("host", "", "admin"):
        with pytest.raises(InvalidArgument):
            validation.role(bad)
    assert validation.screen_share("") == "hosts"
    assert validation.screen_share("everyone") == "everyone"
    with pytest.raises(InvalidArgument):
        validation.screen_share("nobody")


async def test_source_tag_is_the_attempt_limiters_hmac() -> None:
    limiter = AttemptLimiter(as_store(MemoryStore()))
    await limiter.start()
    tag = limiter.tag("198.51.100.7")
    assert len(tag) == 32 and "198" not in tag
    assert limiter.keys("r", "198.51.100.7")[1].endswith("/" + tag)
    assert limiter.tag("198.51.100.8") != tag


# --- flags ------------------------------------------------------------------------------


def test_meeting_ttl_and_audit_retention_flags() -> None:
    options = main.parse_args([])
    assert options.meeting_ttl == DEFAULT_MEETING_TTL_S == 86_400
    assert options.audit_retention == DEFAULT_AUDIT_RETENTION_S == 30 * 86_400
    options = main.parse_args(["--meeting-ttl", "3600", "--audit-retention", "0"])
    assert (options.meeting_ttl, options.audit_retention) == (3600, 0)
    for bad in (["--meeting-ttl", "0"], ["--meeting-ttl", "x"], ["--audit-retention", "-1"]):
        with pytest.raises(SystemExit):
            main.parse_args(bad)
