"""The room's wiring of active speakers and mute state (relay/room.py), with
participants whose signalling is recorded instead of sent."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from relay.errors import SignalingError
from relay.room import Participant, Room
from relay.rtp import RtpHeader, extension_block, one_byte_element

LEVEL_ID = 7  # deliberately not aiortc's default id (2): the room must use the peer's


class Inbox:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def signal(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    async def disconnect(self, reason: str, code: int) -> None:
        pass

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]


def audio_packet(sequence: int, level: int, ext_id: int = LEVEL_ID) -> tuple[RtpHeader, bytes]:
    block = extension_block(one_byte_element(1, b"0") + one_byte_element(ext_id, bytes([level])))
    data = struct.pack("!BBHII", 0x90, 111, sequence, sequence * 960, 1234) + block + b"\xfc" * 20
    return RtpHeader.parse(data), data


async def join(room: Room, pid: str, publish: list[str]) -> tuple[Participant, Inbox]:
    inbox = Inbox()
    participant = await room.join(pid, pid, publish, False, inbox.signal, inbox.disconnect)
    return participant, inbox


async def speak(room: Room, participant: Participant, level: int, seconds: float) -> None:
    """Packets at `level` every 20 ms for `seconds`, as the peer would hand them over."""
    for sequence in range(int(seconds / 0.02)):
        header, data = audio_packet(sequence, level)
        await room.on_media(participant.peer, "microphone", header, data, 0, 0.0)
        await asyncio.sleep(0.02)


async def test_speakers_and_mutes_reach_the_room_and_the_task_ends_with_it() -> None:
    room = Room("room-1", 10)
    assert room._speaker_task is None
    ann, ann_inbox = await join(room, "p_ann", ["microphone"])
    task = room._speaker_task
    assert task is not None and not task.done()
    ben, ben_inbox = await join(room, "p_ben", [])
    assert room._speaker_task is task  # one task per room
    try:
        # Until an answer says which id carries the level, nothing is read.
        await speak(room, ann, 10, 0.7)
        assert not ben_inbox.of("active_speakers")
        ann.peer.audio_level_id = LEVEL_ID
        await speak(room, ann, 10, 1.2)
        # Sent when the list changed: the level then, on its way up to -10 dBov.
        [entry] = ben_inbox.of("active_speakers")[-1]["speakers"]
        assert entry["participant_id"] == "p_ann" and 0.0 < entry["level"] <= 0.32
        expected = [entry]
        assert ann_inbox.of("active_speakers")[-1]["speakers"] == expected

        # A newcomer is told who speaks right away.
        _, cat_inbox = await join(room, "p_cat", [])
        [newcomer_entry] = cat_inbox.of("active_speakers")[-1]["speakers"]
        assert newcomer_entry["participant_id"] == "p_ann"

        await room.set_muted(ann, "microphone", True)
        await room.set_muted(ann, "microphone", True)  # no change: nothing sent
        track_id = ann.tracks["microphone"].track_id
        muted = {"type": "track_muted", "participant_id": "p_ann", "track_id": track_id}
        assert ben_inbox.of("track_muted") == [{**muted, "muted": True}]
        assert cat_inbox.of("track_muted") == [{**muted, "muted": True}]
        assert not ann_inbox.of("track_muted")
        assert ann.describe()["tracks"] == [
            {"track_id": track_id, "kind": "audio", "source": "microphone", "muted": True}
        ]
        await speak(room, ann, 10, 0.7)  # still loud, but muted
        assert ben_inbox.of("active_speakers")[-1]["speakers"] == []

        with pytest.raises(SignalingError) as refused:
            await room.set_muted(ann, "camera", True)
        assert refused.value.code == "not_published"
        with pytest.raises(SignalingError):
            await room.set_muted(ben, "microphone", True)

        await room.set_muted(ann, "microphone", False)
        assert ben_inbox.of("track_muted")[-1] == {**muted, "muted": False}
        await room.leave("p_cat")
        await room.leave("p_ben")
        assert room._speaker_task is task
    finally:
        for pid in list(room.participants):
            await room.leave(pid)
    assert room._speaker_task is None
    await asyncio.sleep(0)
    assert task.cancelled()

    # The room comes back to life with the next participant, with a new task.
    await join(room, "p_dan", [])
    assert room._speaker_task is not None and room._speaker_task is not task
    await room.leave("p_dan")
    assert room._speaker_task is None
