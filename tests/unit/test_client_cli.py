"""`conclave room ...` / `conclave join ...`: parsing, the JSON they print, exit
codes, and a clear error when the control plane cannot be reached. The SDK is
replaced by fakes here; the real thing is exercised end to end elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

import client.cli as cli
import client.sdk as sdk
from client.errors import AdmissionRefused, ConclaveError
from client.sdk import RemoteStats
from conclave import cli as conclave_cli
from conclave.processes import free_port
from protos import rooms_pb2

# ------------------------------------------------------------------- fakes


class FakeRooms:
    """Stands in for RoomsClient; records what the CLI asked."""

    calls: list[tuple[str, Any]] = []
    fail: ConclaveError | None = None

    def __init__(self, target: str | None = None) -> None:
        self.calls.append(("target", target))

    async def __aenter__(self) -> FakeRooms:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def create_room(
        self,
        name: str,
        max_participants: int,
        passcode: str = "",
        *,
        waiting_room: bool = False,
        screen_share: str = "",
    ) -> rooms_pb2.Room:
        self.calls.append(("create_room", (name, max_participants, passcode)))
        self.calls.append(("policy", (waiting_room, screen_share)))
        if self.fail:
            raise self.fail
        # as the control plane: no passcode with a waiting room unless one is given
        drawn = passcode or ("" if waiting_room else "drawn123")
        return rooms_pb2.Room(
            room_id="room-1",
            name=name,
            node_id="relay-0",
            created_at_ms=5,
            passcode=drawn,
            has_passcode=bool(drawn),
            host_key="hk-drawn",
            waiting_room=waiting_room,
            screen_share=screen_share or "hosts",
            expires_at_ms=86_400_005,
        )

    async def join_room(
        self,
        room_id: str,
        display_name: str,
        publish: bool,
        passcode: str = "",
        host_key: str = "",
        region: str = "",
        full_node_id: str = "",
    ) -> rooms_pb2.JoinRoomResponse:
        self.calls.append(("join_room", (room_id, display_name, publish)))
        self.calls.append(("passcode", passcode))
        if self.fail:
            raise self.fail
        return rooms_pb2.JoinRoomResponse(
            room_id=room_id,
            participant_id="p-self",
            node_id="relay-0",
            signal_url="ws://127.0.0.1:1/ws",
            grant="g",
        )

    async def list_participants(self, room_id: str, host_key: str) -> list[rooms_pb2.Participant]:
        self.calls.append(("host_key", host_key))
        return [
            rooms_pb2.Participant(
                participant_id="p-1",
                display_name="bob",
                joined_at_ms=7,
                tracks=[
                    rooms_pb2.Track(track_id="t", kind="audio", muted=False, source="microphone")
                ],
                role="cohost",
                publish_rights=["microphone", "camera"],
            ),
            rooms_pb2.Participant(
                participant_id="p-2", display_name="eve", joined_at_ms=9, waiting=True
            ),
        ]

    async def end_room(self, room_id: str, host_key: str) -> None:
        self.calls.append(("end_room", room_id))
        self.calls.append(("host_key", host_key))

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
        self.calls.append(("update_room", (room_id, host_key, locked, suspended)))
        if self.fail:
            raise self.fail
        return rooms_pb2.Room(
            room_id=room_id,
            locked=bool(locked) or bool(suspended),
            suspended=bool(suspended),
            waiting_room=True,
            screen_share="hosts",
        )

    async def admit_participants(
        self, room_id: str, host_key: str, participant_ids: list[str], *, all: bool = False
    ) -> list[str]:
        self.calls.append(("admit", (room_id, host_key, list(participant_ids), all)))
        return ["p-2", "p-3"] if all else list(participant_ids)

    async def deny_participants(
        self, room_id: str, host_key: str, participant_ids: list[str]
    ) -> list[str]:
        self.calls.append(("deny", (room_id, host_key, list(participant_ids))))
        return list(participant_ids)

    async def remove_participant(self, room_id: str, host_key: str, participant_id: str) -> None:
        self.calls.append(("remove", (room_id, host_key, participant_id)))
        if self.fail:
            raise self.fail

    async def mute_participant(
        self, room_id: str, host_key: str, participant_id: str, source: str
    ) -> None:
        self.calls.append(("mute", (room_id, host_key, participant_id, source)))

    async def set_publish_rights(
        self, room_id: str, host_key: str, participant_id: str, sources: list[str]
    ) -> None:
        self.calls.append(("rights", (room_id, host_key, participant_id, list(sources))))

    async def set_role(self, room_id: str, host_key: str, participant_id: str, role: str) -> None:
        self.calls.append(("role", (room_id, host_key, participant_id, role)))

    async def get_audit_log(self, room_id: str, host_key: str) -> list[rooms_pb2.AuditEntry]:
        self.calls.append(("audit", (room_id, host_key)))
        return [
            rooms_pb2.AuditEntry(at_ms=1_700_000_000_000, action="create", actor="host-api"),
            rooms_pb2.AuditEntry(
                at_ms=1_700_000_061_234, action="admit", actor="p-host", target="p-2"
            ),
            rooms_pb2.AuditEntry(
                at_ms=1_700_000_062_000,
                action="screen_share",
                actor="host-api",
                detail="hosts -> everyone",
            ),
        ]


class FakeSession:
    """Stands in for Session: a meeting with bob (publishing) and carol (not)."""

    instances: list[FakeSession] = []
    start_error: ConclaveError | None = None
    close_reason: str | None = None
    drop: bool = False
    waits: bool = False  # the meeting has a waiting room

    def __init__(
        self,
        join: rooms_pb2.JoinRoomResponse,
        display_name: str,
        publish: list[str],
        e2ee: bool = True,
        video_codec: str = "VP8",
        wait_timeout: float | None = None,
        on_waiting: Callable[[], None] | None = None,
        rooms: Any = None,
        passcode: str = "",
        host_key: str = "",
        region: str = "",
    ) -> None:
        self.join, self.display_name, self.publish = join, display_name, publish
        self.region = region
        self.rooms, self.passcode, self.host_key = rooms, passcode, host_key
        self.reconnects = 0
        self.e2ee = e2ee
        self.video_codec = video_codec
        self.wait_timeout = wait_timeout
        self.on_waiting = on_waiting
        self.role: str | None = None
        self.security_code = "12345 67890 12345 67890 12345" if e2ee else None
        self.participant_id = join.participant_id
        self.node_id = join.node_id
        self.room_id = join.room_id
        self.closed_reason: str | None = None
        self.closed = False
        self.left = False
        self.instances.append(self)

    async def start(self) -> None:
        if self.waits and self.on_waiting is not None:
            self.on_waiting()
        if self.start_error:
            raise self.start_error
        self.role = "participant"

    async def wait_closed(self) -> None:
        if self.close_reason is not None or self.drop:
            self.closed_reason = self.close_reason
            self.closed = True
            return
        import asyncio

        await asyncio.Event().wait()

    async def leave(self) -> None:
        self.left = True

    @property
    def seen(self) -> dict[str, str]:
        return {"p-self": self.display_name, "p-bob": "bob", "p-carol": "carol"}

    def stats(self) -> dict[str, RemoteStats]:
        return {
            "carol": {"audio_packets": 0, "video_frames_decoded": 0, "decrypt_failures": 0},
            "bob": {"audio_packets": 250, "video_frames_decoded": 140, "decrypt_failures": 1},
        }


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeRooms.calls = []
    FakeRooms.fail = None
    FakeSession.instances = []
    FakeSession.start_error = None
    FakeSession.close_reason = None
    FakeSession.drop = False
    FakeSession.waits = False
    monkeypatch.setattr(cli, "RoomsClient", FakeRooms)
    monkeypatch.setattr(sdk, "Session", FakeSession)


# ----------------------------------------------------------------- parsing


def test_join_defaults() -> None:
    args = cli.build_parser().parse_args(["join", "room-1"])
    assert args.room_id == "room-1"
    assert args.publish == ["audio", "video"]
    assert args.duration == 10.0
    assert args.name is None
    assert args.control_plane is None
    assert args.json is False


@pytest.mark.parametrize(
    ("value", "kinds"),
    [
        ("audio,video", ["audio", "video"]),
        ("video,audio", ["video", "audio"]),
        ("audio", ["audio"]),
        ("video", ["video"]),
        ("none", []),
        ("NONE", []),
    ],
)
def test_publish_values(value: str, kinds: list[str]) -> None:
    args = cli.build_parser().parse_args(["join", "r", "--publish", value])
    assert args.publish == kinds


@pytest.mark.parametrize(
    "argv",
    [
        ["join", "r", "--publish", "screen"],
        ["join", "r", "--publish", "audio,audio"],
        ["join", "r", "--duration", "-1"],
        ["join", "r", "--duration", "soon"],
        ["join"],
        ["room", "create", "--max-participants", "-3"],
        ["room"],
        ["room", "get"],
        ["room", "admit", "room-1"],
        ["room", "admit", "room-1", "p-1", "--all"],
        ["room", "deny", "room-1"],
        ["room", "remove", "room-1"],
        ["room", "mute", "room-1", "p-1"],
        ["room", "mute", "room-1", "p-1", "audio"],
        ["room", "allow", "room-1", "p-1", "screen", "screen"],
        ["room", "allow", "room-1", "p-1", "speaker"],
        ["room", "create", "--screen-share", "nobody"],
        ["join", "r", "--wait-timeout", "-5"],
        ["leave"],
        [],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["join", "--help"]) == 0
    assert "--publish" in capsys.readouterr().out


def test_room_create_options() -> None:
    args = cli.build_parser().parse_args(
        [
            "room",
            "create",
            "--control-plane",
            "10.0.0.1:9",
            "--name",
            "standup",
            "--max-participants",
            "8",
            "--json",
        ]
    )
    assert (args.control_plane, args.name, args.max_participants, args.json) == (
        "10.0.0.1:9",
        "standup",
        8,
        True,
    )


# -------------------------------------------------------------- JSON output


def test_room_create_prints_compact_json(fakes: None, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        [
            "room",
            "create",
            "--name",
            "standup",
            "--max-participants",
            "4",
            "--control-plane",
            "h:1",
            "--json",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("\n") == 1 and " " not in out.strip()
    assert json.loads(out) == {
        "room_id": "room-1", "name": "standup", "node_id": "relay-0", "passcode": "drawn123",
        "has_passcode": True, "host_key": "hk-drawn", "waiting_room": False,
        "screen_share": "hosts", "expires_at_ms": 86_400_005,
    }  # fmt: skip
    assert ("target", "h:1") in FakeRooms.calls
    assert ("create_room", ("standup", 4, "")) in FakeRooms.calls
    assert ("policy", (False, "")) in FakeRooms.calls


def test_room_create_pretty_by_default_with_generated_name(
    fakes: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["room", "create"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") > 1
    room = json.loads(out)
    assert room["name"].startswith("meeting-")
    assert set(room) == {
        "room_id", "name", "node_id", "passcode", "has_passcode", "host_key", "waiting_room",
        "screen_share", "expires_at_ms",
    }  # fmt: skip


def test_room_create_with_waiting_room_has_no_passcode(
    fakes: None, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["room", "create", "--waiting-room", "--screen-share", "everyone", "--json"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    room = json.loads(captured.out)
    assert room["passcode"] is None and room["has_passcode"] is False
    assert room["waiting_room"] is True and room["screen_share"] == "everyone"
    assert ("policy", (True, "everyone")) in FakeRooms.calls
    assert "no passcode" in captured.err
    # a passcode given with the waiting room is kept
    assert cli.main(["room", "create", "--waiting-room", "--passcode", "pw", "--json"]) == 0
    captured = capsys.readouterr()
    room = json.loads(captured.out)
    assert room["passcode"] == "pw" and room["has_passcode"] is True
    assert captured.err == ""


def test_join_prints_report(fakes: None, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["join", "room-1", "--name", "alice", "--duration", "0.05", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report == {
        "participant_id": "p-self",
        "node_id": "relay-0",
        "room_id": "room-1",
        "role": "participant",
        "e2ee": True,
        "security_code": "12345 67890 12345 67890 12345",
        "roster": ["alice", "bob", "carol"],
        "remote": {
            "bob": {"audio_packets": 250, "video_frames_decoded": 140, "decrypt_failures": 1},
            "carol": {"audio_packets": 0, "video_frames_decoded": 0, "decrypt_failures": 0},
        },
        "reconnects": 0,
    }
    assert ("join_room", ("room-1", "alice", True)) in FakeRooms.calls
    (session,) = FakeSession.instances
    # the session can ask the control plane again, as the join did
    assert isinstance(session.rooms, FakeRooms)
    assert session.publish == ["audio", "video"] and session.left and session.e2ee
    assert session.video_codec == "VP8"
    assert session.wait_timeout is None
    assert captured.err == ""


def test_join_says_it_waits_for_the_host(fakes: None, capsys: pytest.CaptureFixture[str]) -> None:
    FakeSession.waits = True
    argv = ["join", "room-1", "--duration", "0", "--wait-timeout", "30", "--json"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "waiting for the host" in captured.err
    assert json.loads(captured.out)["role"] == "participant"
    assert FakeSession.instances[0].wait_timeout == 30.0


def test_join_turned_away_is_one_line_exit_1(
    fakes: None, capsys: pytest.CaptureFixture[str]
) -> None:
    FakeSession.waits = True
    FakeSession.start_error = AdmissionRefused(
        "the host did not let you into the meeting", "denied"
    )
    assert cli.main(["join", "room-1"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "conclave: in the waiting room: waiting for the host to admit you",
        "conclave: error: the host did not let you into the meeting",
    ]


def test_join_without_e2ee_says_so_loudly(fakes: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["join", "room-1", "--duration", "0", "--no-e2ee", "--json"]) == 0
    captured = capsys.readouterr()
    assert "WARNING: end-to-end encryption is OFF" in captured.err
    report = json.loads(captured.out)
    assert report["e2ee"] is False and report["security_code"] is None
    (session,) = FakeSession.instances
    assert not session.e2ee


def test_join_without_publishing_asks_for_no_publish_grant(
    fakes: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["join", "room-1", "--publish", "none", "--duration", "0"]) == 0
    (_, (_, name, publish)) = next(c for c in FakeRooms.calls if c[0] == "join_room")
    assert publish is False
    assert name.startswith("guest-") and len(name) == len("guest-") + 4
    assert FakeSession.instances[0].publish == []
    json.loads(capsys.readouterr().out)


def test_join_ends_early_when_meeting_is_closed(
    fakes: None, capsys: pytest.CaptureFixture[str]
) -> None:
    FakeSession.close_reason = "ended"
    start = time.monotonic()
    assert cli.main(["join", "room-1", "--duration", "30"]) == 0
    assert time.monotonic() - start < 5
    captured = capsys.readouterr()
    assert "meeting closed: ended" in captured.err
    assert json.loads(captured.out)["room_id"] == "room-1"


def test_join_reports_dropped_connection(fakes: None, capsys: pytest.CaptureFixture[str]) -> None:
    FakeSession.drop = True
    assert cli.main(["join", "room-1", "--duration", "30"]) == 1
    captured = capsys.readouterr()
    assert "error: the relay closed the connection" in captured.err
    json.loads(captured.out)  # the report is still printed


def test_session_error_is_one_line_exit_1(fakes: None, capsys: pytest.CaptureFixture[str]) -> None:
    FakeSession.start_error = ConclaveError("the relay refused the join: room_full: full")
    assert cli.main(["join", "room-1"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "conclave: error: the relay refused the join: room_full: full\n"


def test_control_plane_error_is_one_line_exit_1(
    fakes: None, capsys: pytest.CaptureFixture[str]
) -> None:
    FakeRooms.fail = ConclaveError("JoinRoom failed: no such room (NOT_FOUND)", "NOT_FOUND")
    assert cli.main(["join", "nope"]) == 1
    assert capsys.readouterr().err.strip().endswith("no such room (NOT_FOUND)")


def test_thin_room_subcommands(
    fakes: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.main(["room", "end", "room-1", "--host-key", "hk", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"room_id": "room-1", "ended": True}
    assert ("host_key", "hk") in FakeRooms.calls
    monkeypatch.setenv("CONCLAVE_HOST_KEY", "from-env")
    assert cli.main(["room", "participants", "room-1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "room_id": "room-1",
        "participants": [
            {
                "participant_id": "p-1",
                "display_name": "bob",
                "joined_at_ms": 7,
                "role": "cohost",
                "waiting": False,
                "publish_rights": ["microphone", "camera"],
                "tracks": [
                    {"track_id": "t", "kind": "audio", "source": "microphone", "muted": False}
                ],
            },
            {
                "participant_id": "p-2",
                "display_name": "eve",
                "joined_at_ms": 9,
                "role": "participant",
                "waiting": True,
                "publish_rights": [],
                "tracks": [],
            },
        ],
    }
    assert FakeRooms.calls[-1] == ("host_key", "from-env")


@pytest.mark.parametrize(
    ("argv", "call", "printed"),
    [
        (
            ["admit", "room-1", "p-2", "p-3"],
            ("admit", ("room-1", "hk", ["p-2", "p-3"], False)),
            {"room_id": "room-1", "admitted": ["p-2", "p-3"]},
        ),
        (
            ["admit", "room-1", "--all"],
            ("admit", ("room-1", "hk", [], True)),
            {"room_id": "room-1", "admitted": ["p-2", "p-3"]},
        ),
        (
            ["deny", "room-1", "p-4"],
            ("deny", ("room-1", "hk", ["p-4"])),
            {"room_id": "room-1", "denied": ["p-4"]},
        ),
        (
            ["lock", "room-1"],
            ("update_room", ("room-1", "hk", True, None)),
            {"room_id": "room-1", "waiting_room": True, "locked": True, "suspended": False,
             "screen_share": "hosts"},
        ),
        (
            ["unlock", "room-1"],
            ("update_room", ("room-1", "hk", False, None)),
            {"room_id": "room-1", "waiting_room": True, "locked": False, "suspended": False,
             "screen_share": "hosts"},
        ),
        (
            ["suspend", "room-1"],
            ("update_room", ("room-1", "hk", None, True)),
            {"room_id": "room-1", "waiting_room": True, "locked": True, "suspended": True,
             "screen_share": "hosts"},
        ),
        (
            ["suspend", "room-1", "--lift"],
            ("update_room", ("room-1", "hk", None, False)),
            {"room_id": "room-1", "waiting_room": True, "locked": False, "suspended": False,
             "screen_share": "hosts"},
        ),
        (
            ["remove", "room-1", "p-5"],
            ("remove", ("room-1", "hk", "p-5")),
            {"room_id": "room-1", "participant_id": "p-5", "removed": True},
        ),
        (
            ["mute", "room-1", "p-5", "camera"],
            ("mute", ("room-1", "hk", "p-5", "camera")),
            {"room_id": "room-1", "participant_id": "p-5", "source": "camera", "muted": True},
        ),
        (
            ["allow", "room-1", "p-5", "microphone", "screen"],
            ("rights", ("room-1", "hk", "p-5", ["microphone", "screen"])),
            {"room_id": "room-1", "participant_id": "p-5",
             "publish_rights": ["microphone", "screen"]},
        ),
        (
            ["allow", "room-1", "p-5"],
            ("rights", ("room-1", "hk", "p-5", [])),
            {"room_id": "room-1", "participant_id": "p-5", "publish_rights": []},
        ),
        (
            ["cohost", "room-1", "p-5"],
            ("role", ("room-1", "hk", "p-5", "cohost")),
            {"room_id": "room-1", "participant_id": "p-5", "role": "cohost"},
        ),
        (
            ["cohost", "room-1", "p-5", "--revoke"],
            ("role", ("room-1", "hk", "p-5", "participant")),
            {"room_id": "room-1", "participant_id": "p-5", "role": "participant"},
        ),
    ],
)  # fmt: skip
def test_host_controls(
    argv: list[str],
    call: tuple[str, Any],
    printed: dict[str, Any],
    fakes: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert cli.main(["room", *argv, "--host-key", "hk", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == printed
    assert call in FakeRooms.calls
    # the host key from the environment, as for the other host commands
    FakeRooms.calls = []
    monkeypatch.setenv("CONCLAVE_HOST_KEY", "hk")
    assert cli.main(["room", *argv]) == 0
    assert json.loads(capsys.readouterr().out) == printed  # pretty, same content
    assert call in FakeRooms.calls


def test_host_control_failure_is_one_line_exit_1(
    fakes: None, capsys: pytest.CaptureFixture[str]
) -> None:
    FakeRooms.fail = ConclaveError(
        "RemoveParticipant failed: no such participant (NOT_FOUND)", "NOT_FOUND"
    )
    assert cli.main(["room", "remove", "room-1", "p-9", "--host-key", "hk"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "conclave: error: RemoveParticipant failed: no such participant (NOT_FOUND)\n"
    )


def test_room_audit_prints_one_line_per_entry(
    fakes: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["room", "audit", "room-1", "--host-key", "hk"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "2023-11-14T22:13:20.000Z create host-api - -",
        "2023-11-14T22:14:21.234Z admit p-host p-2 -",
        "2023-11-14T22:14:22.000Z screen_share host-api - hosts -> everyone",
    ]
    assert ("audit", ("room-1", "hk")) in FakeRooms.calls
    assert cli.main(["room", "audit", "room-1", "--host-key", "hk", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    log = json.loads(out)
    assert log["room_id"] == "room-1"
    assert log["entries"][1] == {
        "at_ms": 1_700_000_061_234,
        "time": "2023-11-14T22:14:21.234Z",
        "action": "admit",
        "actor": "p-host",
        "target": "p-2",
        "detail": "",
    }


# ------------------------------------------------ real gRPC, nothing listening


@pytest.mark.parametrize(
    "argv",
    [["room", "create"], ["join", "room-1", "--duration", "1"], ["room", "get", "room-1"]],
)
def test_unreachable_control_plane_fails_fast(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"127.0.0.1:{free_port()}"  # bound once, now closed
    start = time.monotonic()
    assert cli.main([*argv, "--control-plane", target]) == 1
    assert time.monotonic() - start < 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"conclave: error: cannot reach the control plane at {target}")


def test_control_plane_from_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("CONCLAVE_CONTROL_PLANE", target)
    assert cli.main(["room", "create"]) == 1
    assert target in capsys.readouterr().err


def test_conclave_command_end_to_end_process() -> None:
    """The real entry point, as a process: dispatch, exit code and stderr."""
    target = f"127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "conclave.cli", "room", "create", "--control-plane", target],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("conclave: error: cannot reach the control plane")


# ----------------------------------------------------- the conclave dispatcher


def test_conclave_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert conclave_cli.run(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("dev", "control-plane", "relay", "room", "join"):
        assert f"  {command} " in out


@pytest.mark.parametrize("argv", [[], ["bogus"]])
def test_conclave_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert conclave_cli.run(argv) == 2
    assert "usage: conclave" in capsys.readouterr().err


def test_conclave_dispatches_client_commands_with_command_word(
    fakes: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert conclave_cli.run(["room", "create", "--json", "--name", "x"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "x"


def test_join_passes_the_passcode_from_the_flag_or_the_environment(
    fakes: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.main(["join", "room-1", "--duration", "0", "--passcode", "s3cret"]) == 0
    assert ("passcode", "s3cret") in FakeRooms.calls
    monkeypatch.setenv("CONCLAVE_PASSCODE", "from-env")
    assert cli.main(["join", "room-1", "--duration", "0"]) == 0
    assert ("passcode", "from-env") in FakeRooms.calls
