"""The room's host controls (relay/room.py): waiting room, publish rights, host mute,
removal and policy changes, with participants whose signalling is recorded."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import REGISTRY

from conclave.meeting import MeetingPolicy, Removal
from relay.errors import SignalingError
from relay.room import CLOSE_DENIED, CLOSE_REMOVED, NotFound, Participant, Room, Waiting
from relay.rtp import RtpHeader


class Inbox:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.closed: tuple[str, int] | None = None
        self.admitted: Participant | None = None

    async def signal(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    async def disconnect(self, reason: str, code: int) -> None:
        self.closed = (reason, code)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    def types(self) -> set[str]:
        return {m["type"] for m in self.messages}


@pytest.fixture
async def room() -> AsyncIterator[Room]:
    room = Room("room-1", 10)
    yield room
    for pid in list(room.participants) + list(room.waiting):
        await room.leave(pid)


async def join(
    room: Room,
    pid: str,
    publish: list[str],
    role: str = "participant",
    rights: set[str] | None = None,
) -> tuple[Participant, Inbox]:
    inbox = Inbox()
    participant = await room.join(
        pid, pid, publish, True, inbox.signal, inbox.disconnect, role=role,
        rights=set(publish) if rights is None else rights, source_tag=f"tag-{pid}",
    )  # fmt: skip
    return participant, inbox


async def wait(room: Room, pid: str, publish: list[str]) -> Inbox:
    inbox = Inbox()

    def admitted(participant: Participant) -> None:
        inbox.admitted = participant

    entry = Waiting(
        pid, pid, "participant", {"microphone", "camera"}, f"tag-{pid}", publish, True,
        inbox.signal, inbox.disconnect, None, admitted,
    )  # fmt: skip
    await room.wait(entry)
    return inbox


def held_packets() -> float:
    value = REGISTRY.get_sample_value("conclave_packets_dropped_total", {"reason": "muted_by_host"})
    return value or 0.0


def audio_packet(sequence: int) -> tuple[RtpHeader, bytes]:
    data = struct.pack("!BBHII", 0x80, 111, sequence, sequence * 960, 1234) + b"\xfc" * 20
    return RtpHeader.parse(data), data


async def test_waiting_joiners_see_nothing_until_admitted(room: Room) -> None:
    host, host_inbox = await join(room, "p_host", ["microphone"], role="host")
    guest = await wait(room, "p_guest", ["microphone"])
    assert guest.types() == {"waiting"}
    assert "p_guest" not in room.participants
    assert host_inbox.of("waiting_list")[-1]["participants"] == [
        {"participant_id": "p_guest", "name": "p_guest"}
    ]
    # Things the meeting broadcasts do not reach the waiting room.
    await room.set_e2ee_binding(host, "aG9zdA==")
    await room.set_muted(host, "microphone", True)
    assert guest.types() == {"waiting"}
    with pytest.raises(SignalingError):  # no keys either
        await room.send_e2ee_key(host, "p_guest", "a2V5")

    assert await room.admit(["p_guest"]) == ["p_guest"]
    assert guest.admitted is room.participants["p_guest"]
    joined = guest.of("joined")[0]
    assert [p["participant_id"] for p in joined["roster"]] == ["p_host"]
    assert host_inbox.of("participant_joined")[-1]["participant"]["participant_id"] == "p_guest"
    assert host_inbox.of("waiting_list")[-1]["participants"] == []


async def test_deny_and_admit_all(room: Room) -> None:
    await join(room, "p_host", [], role="host")
    one = await wait(room, "p_one", [])
    two = await wait(room, "p_two", [])
    three = await wait(room, "p_three", [])
    with pytest.raises(NotFound):
        await room.deny(["p_one", "p_nobody"])
    assert one.closed is None  # nothing happens when one of the ids is wrong
    assert await room.deny(["p_one"]) == ["p_one"]
    assert one.closed == ("denied", CLOSE_DENIED) and one.types() == {"waiting"}
    assert sorted(await room.admit(None)) == ["p_three", "p_two"]
    assert two.of("joined") and three.of("joined") and not room.waiting


async def test_turning_the_waiting_room_off_admits_everyone(room: Room) -> None:
    room.policy = MeetingPolicy(waiting_room=True)
    await join(room, "p_host", [], role="host")
    guest = await wait(room, "p_guest", [])
    await room.apply_policy(MeetingPolicy(waiting_room=False))
    assert guest.of("joined") and "p_guest" in room.participants


async def test_publish_rights_are_enforced_and_can_change(room: Room) -> None:
    member, inbox = await join(room, "p_member", [], rights={"microphone", "camera"})
    _, host_inbox = await join(room, "p_host", [], role="host")
    with pytest.raises(SignalingError) as refused:
        await room.start_publishing(member, "screen")
    assert refused.value.code == "not_allowed" and not host_inbox.of("track_published")
    await room.set_rights("p_member", {"microphone", "camera", "screen"})
    assert inbox.of("publish_rights")[-1]["sources"] == ["camera", "microphone", "screen"]
    await room.start_publishing(member, "screen")
    published = host_inbox.of("track_published")[-1]
    assert published["track"]["source"] == "screen" and published["track"]["kind"] == "video"
    assert "screen" in member.connection.publish
    await room.set_rights("p_member", {"microphone"})
    assert inbox.of("unpublished")[-1] == {
        "type": "unpublished",
        "source": "screen",
        "reason": "rights",
    }
    assert host_inbox.of("track_unpublished") and "screen" not in member.tracks
    assert "screen" not in member.connection.publish


async def test_cohosts_get_every_source_and_lose_it_when_demoted(room: Room) -> None:
    member, _ = await join(room, "p_member", ["microphone"], rights={"microphone", "camera"})
    _, host_inbox = await join(room, "p_host", [], role="host")
    await room.set_role("p_member", "cohost")
    assert member.moderates and member.rights == {"microphone", "camera", "screen"}
    assert host_inbox.of("participant_updated")[-1]["participant"]["role"] == "cohost"
    await room.set_role("p_member", "participant")
    assert member.rights == {"microphone", "camera"} and "microphone" in member.tracks
    with pytest.raises(SignalingError):
        await room.set_role("p_host", "participant")


async def test_host_mute_stops_forwarding_until_the_participant_unmutes(room: Room) -> None:
    speaker, inbox = await join(room, "p_speaker", ["microphone"])
    track = speaker.tracks["microphone"]
    held_before = held_packets()
    header, data = audio_packet(1)
    await room.on_media(speaker.peer, "microphone", header, data, 0, 0.0)
    await room.mute_participant("p_speaker", "microphone")
    assert inbox.of("muted_by_host") == [{"type": "muted_by_host", "source": "microphone"}]
    assert track.muted and track.held
    header, data = audio_packet(2)
    await room.on_media(speaker.peer, "microphone", header, data, 0, 0.0)
    await room.set_muted(speaker, "microphone", True)  # muting again lifts nothing
    header, data = audio_packet(3)
    await room.on_media(speaker.peer, "microphone", header, data, 0, 0.0)
    await room.set_muted(speaker, "microphone", False)
    header, data = audio_packet(4)
    await room.on_media(speaker.peer, "microphone", header, data, 0, 0.0)
    assert held_packets() - held_before == 2  # packets 2 and 3
    with pytest.raises(SignalingError):
        await room.mute_participant("p_speaker", "camera")  # not published
    with pytest.raises(NotFound):
        await room.mute_participant("p_nobody", "microphone")


async def test_suspension_stops_participants_media_but_not_the_hosts(room: Room) -> None:
    member, inbox = await join(room, "p_member", ["microphone", "camera"])
    host, _ = await join(room, "p_host", ["microphone"], role="host")
    await room.apply_policy(MeetingPolicy(suspended=True))
    assert not member.tracks and "microphone" in host.tracks
    assert {m["source"] for m in inbox.of("unpublished")} == {"microphone", "camera"}
    assert inbox.of("room_updated")[-1]["room"]["suspended"] is True
    with pytest.raises(SignalingError):
        await room.start_publishing(member, "microphone")
    await room.apply_policy(MeetingPolicy())
    await room.start_publishing(member, "microphone")
    assert "microphone" in member.tracks


async def test_removal_disconnects_and_a_recorded_removal_disconnects_on_any_relay(
    room: Room,
) -> None:
    _, pest = await join(room, "p_pest", [])
    _, host_inbox = await join(room, "p_host", [], role="host")
    assert room.find("p_pest").source_tag == "tag-p_pest"
    await room.remove("p_pest")
    assert pest.closed == ("removed", CLOSE_REMOVED)
    assert "p_pest" not in room.participants
    assert host_inbox.of("participant_left")[-1]["participant_id"] == "p_pest"
    # A removal recorded elsewhere (another relay, the control plane) arrives as
    # a policy change: whoever matches it, by id or by address, is disconnected.
    _, again = await join(room, "p_again", [])
    waiting = await wait(room, "p_waiting", [])
    removed = replace(
        MeetingPolicy(),
        removed=(Removal("p_waiting"), Removal("p_other", "tag-p_again")),
    )
    await room.apply_policy(removed)
    assert again.closed == ("removed", CLOSE_REMOVED)
    assert waiting.closed == ("removed", CLOSE_REMOVED)
    assert set(room.participants) == {"p_host"} and not room.waiting
    with pytest.raises(NotFound):
        await room.remove("p_pest")


async def test_the_screen_sharing_rule_applies_to_those_present(room: Room) -> None:
    member, inbox = await join(room, "p_member", ["microphone"], rights={"microphone", "camera"})
    viewer, _ = await join(room, "p_viewer", [], rights=set())
    host, _ = await join(room, "p_host", [], role="host", rights={"microphone", "screen"})
    await room.apply_policy(MeetingPolicy(screen_share="everyone"))
    assert member.rights == {"microphone", "camera", "screen"}
    assert inbox.of("publish_rights")[-1]["sources"] == ["camera", "microphone", "screen"]
    assert viewer.rights == set()  # it publishes nothing: nothing to widen
    await room.start_publishing(member, "screen")
    await room.apply_policy(MeetingPolicy(screen_share="hosts"))
    assert "screen" not in member.rights and "screen" not in member.tracks
    assert inbox.of("unpublished")[-1]["source"] == "screen"
    assert host.rights == {"microphone", "screen"}
