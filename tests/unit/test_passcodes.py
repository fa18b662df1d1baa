"""Meeting passcodes (control_plane/passcodes.py): stored only as scrypt hashes,
and an unknown meeting costs the same check as a wrong passcode."""

from __future__ import annotations

import json

import pytest

from control_plane import passcodes
from control_plane.ids import RoomId
from control_plane.records import RoomRecord


def test_hash_verifies_and_is_salted() -> None:
    stored = passcodes.hash_passcode("open sesame")
    assert passcodes.matches("open sesame", stored)
    assert not passcodes.matches("open sesamE", stored)
    assert not passcodes.matches("", stored)
    again = passcodes.hash_passcode("open sesame")
    assert again.salt != stored.salt and again.digest != stored.digest


def test_an_absent_meeting_never_matches() -> None:
    assert not passcodes.matches("anything", None)
    assert not passcodes.matches("", None)


def test_generated_passcodes_are_random_and_typable() -> None:
    drawn = {passcodes.generate() for _ in range(500)}
    assert len(drawn) == 500
    assert all(len(p) == 8 and set(p) <= set(passcodes.GENERATED_ALPHABET) for p in drawn)


def test_host_keys_are_192_bits_of_hex_that_a_command_line_takes() -> None:
    keys = {passcodes.new_host_key() for _ in range(2000)}
    assert len(keys) == 2000
    assert all(len(k) == 48 and int(k, 16) >= 0 and not k.startswith("-") for k in keys)
    key = passcodes.new_host_key()
    assert passcodes.is_host_key(key, passcodes.host_key_digest(key))
    assert not passcodes.is_host_key(key.upper(), passcodes.host_key_digest(key))
    assert not passcodes.is_host_key("", passcodes.host_key_digest(""))


def test_the_record_keeps_the_hash_never_the_passcode() -> None:
    record = RoomRecord(RoomId("r"), "n", 1, 10, passcodes.hash_passcode("hunter2"))
    raw = record.to_json()
    assert b"hunter2" not in raw
    assert set(json.loads(raw)["passcode"]) == {"salt", "scrypt"}
    again = RoomRecord.from_json(raw)
    assert again == record and again.passcode is not None
    assert passcodes.matches("hunter2", again.passcode)
    with pytest.raises(ValueError):
        broken = json.loads(raw)
        broken["passcode"]["salt"] = "AAAA"
        RoomRecord.from_json(json.dumps(broken).encode())
