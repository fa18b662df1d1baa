"""Active speakers and mute state at a real relay process with aiortc clients.

The clients' audio levels are under the test's control: each publishes a tone that
can be switched between loud and digital silence at runtime, and aiortc's sender
writes the RFC 6464 level of every frame into the packets the relay reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import grpc
import pytest
from aiortc.mediastreams import AudioStreamTrack
from av import AudioFrame

from client.media import SineAudioTrack
from client.sdk import Session
from conclave.ice import use_host_addresses
from protos import relay_pb2_grpc, rooms_pb2
from tests.integration.relay_harness import GrantMinter, RelayProcess


class SwitchableTone(AudioStreamTrack):
    """A 440 Hz tone at a quarter of full scale (-15 dBov) while `loud`, zeros
    (RFC 6464 level 127) otherwise; paced in real time like a microphone."""

    kind = "audio"

    def __init__(self, loud: bool) -> None:
        super().__init__()
        self.loud = loud
        self._tone = SineAudioTrack(amplitude=0.25)

    async def recv(self) -> AudioFrame:
        frame = await self._tone.recv()  # a new frame every time: ours to change
        if not self.loud:
            for plane in frame.planes:
                plane.update(bytes(plane.buffer_size))
        return frame

    def stop(self) -> None:
        super().stop()
        self._tone.stop()


async def until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `condition`; returns how long it took, fails with `what` on timeout."""
    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"not within {timeout:g} s: {what}")
    return time.monotonic() - start


async def new_room(minter: GrantMinter) -> str:
    room = await minter.new_room()
    return room


def audio_session(
    relay: RelayProcess,
    minter: GrantMinter,
    room: str,
    name: str,
    track: SwitchableTone,
    on_speakers: Callable[[list[str]], None] | None = None,
) -> Session:
    join = minter.join_response(relay, room, f"p_{name}", name)
    return Session(join, name, ["audio"], tracks={"audio": track}, on_active_speakers=on_speakers)


async def test_every_participant_learns_who_speaks_and_when_that_changes(
    relay: RelayProcess, minter: GrantMinter
) -> None:
    use_host_addresses(["127.0.0.1"])
    room = await new_room(minter)
    names = ["ann", "ben", "cat"]
    tones = {name: SwitchableTone(loud=name == "ann") for name in names}
    heard: dict[str, list[list[str]]] = {name: [] for name in names}
    sessions = [
        audio_session(relay, minter, room, name, tones[name], heard[name].append) for name in names
    ]

    def everyone_hears(expected: list[str]) -> Callable[[], bool]:
        return lambda: all(s.active_speakers == expected for s in sessions)

    async with contextlib.AsyncExitStack() as stack:
        for session in sessions:
            await stack.enter_async_context(session)
        await until(everyone_hears(["ann"]), 20, "everyone names ann, the only loud one")

        tones["ann"].loud, tones["ben"].loud = False, True
        took = await until(everyone_hears(["ben"]), 8, "everyone names ben after the switch")
        print(f"speaker switch seen by all after {took:.2f} s")

        tones["ben"].loud = False
        await until(everyone_hears([]), 8, "silence empties the list")

        for session in sessions:
            assert not session.errors
    for name in names:
        lists = heard[name]
        # The callback saw ann alone, then ben first, then nobody, in that order...
        first_ann = lists.index(["ann"])
        ben_first = next(i for i, entry in enumerate(lists) if entry[:1] == ["ben"])
        assert first_ann < ben_first < len(lists) - 1 and lists[-1] == [], lists
        # ...and only on changes: no flapping between equal lists.
        assert all(a != b for a, b in itertools.pairwise(lists)), lists
        assert len(lists) <= 8, lists
    assert relay.metric("conclave_active_speaker_updates_total") >= 3
    assert relay.metric("conclave_relay_decoders_created_total") == 0


async def raw_join(relay: RelayProcess, minter: GrantMinter, room: str, pid: str) -> Any:
    """A bare WebSocket join; returns the `joined` message."""
    token = minter.token(room, pid, relay.node_id)
    async with aiohttp.ClientSession() as http, http.ws_connect(relay.signal_url) as ws:
        await ws.send_json({"type": "join", "grant": token, "publish": []})
        return await ws.receive_json(timeout=10)


async def list_participants(relay: RelayProcess, room: str) -> list[rooms_pb2.Participant]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{relay.rpc_port}") as channel:
        stub: Any = relay_pb2_grpc.RelayServiceStub(channel)  # type: ignore[no-untyped-call]
        response = await stub.ListParticipants(
            rooms_pb2.ListParticipantsRequest(room_id=room), timeout=10
        )
        return list(response.participants)


async def test_mute_is_announced_kept_in_the_roster_and_ends_speaking(
    relay: RelayProcess, minter: GrantMinter
) -> None:
    use_host_addresses(["127.0.0.1"])
    room = await new_room(minter)
    ann_tone, ben_tone = SwitchableTone(loud=True), SwitchableTone(loud=False)
    ann = audio_session(relay, minter, room, "ann", ann_tone)
    ben = audio_session(relay, minter, room, "ben", ben_tone)
    async with ann, ben:
        await until(lambda: ben.active_speakers == ["ann"], 20, "ben hears ann speak")
        assert ben.mute_state["p_ann"] == {"audio": False}

        # A client that signals mute but keeps sending sound: the relay forwards the
        # packets (muting is the client's job) yet never lists ann as a speaker.
        await ann._send({"type": "mute", "kind": "audio", "muted": True})
        await until(lambda: ben.is_muted("p_ann", "audio"), 5, "ben gets track_muted")
        await until(lambda: ben.active_speakers == [], 3, "a muted ann is not a speaker")
        await ben.refresh_stats()
        before = ben.stats()["ann"]["audio_packets"]
        await until(
            lambda: ben.stats()["ann"]["audio_packets"] > before + 20,
            5,
            "the relay keeps forwarding a muted track",
        )
        for _ in range(5):  # ann stays loud and muted: never listed again
            await asyncio.sleep(0.3)
            assert ben.active_speakers == []

        # Whoever joins later sees the mute in the roster; so does the control plane.
        joined = await raw_join(relay, minter, room, "p_late")
        assert joined["type"] == "joined"
        roster = {p["participant_id"]: p["tracks"] for p in joined["roster"]}
        assert [t["muted"] for t in roster["p_ann"]] == [True]
        assert [t["muted"] for t in roster["p_ben"]] == [False]
        listed = {p.participant_id: p for p in await list_participants(relay, room)}
        assert [t.muted for t in listed["p_ann"].tracks] == [True]
        assert [t.muted for t in listed["p_ben"].tracks] == [False]

        # Unmuting through the SDK: announced, and ann speaks again.
        await ann.set_muted("audio", False)
        await until(lambda: not ben.is_muted("p_ann", "audio"), 5, "ben sees the unmute")
        await until(lambda: ben.active_speakers == ["ann"], 5, "ann speaks again")

        # Muting through the SDK also silences what ann sends.
        await ann.set_muted("audio", True)
        assert ann.is_muted(ann.participant_id, "audio")
        await until(lambda: ben.is_muted("p_ann", "audio"), 5, "ben sees the mute")
        await until(lambda: ben.active_speakers == [], 3, "muted ann is not a speaker")
        with pytest.raises(ValueError):
            await ann.set_muted("video", True)
        assert not ann.errors and not ben.errors


async def test_bad_mute_messages_are_refused_and_the_session_survives(
    relay: RelayProcess, minter: GrantMinter
) -> None:
    room = await new_room(minter)
    token = minter.token(room, "p_quiet", relay.node_id)
    bad = [
        {"type": "mute", "kind": "audio", "muted": True},  # publishes nothing
        {"type": "mute", "kind": "desktop", "muted": True},
        {"type": "mute", "muted": True},
        {"type": "mute", "kind": "video", "muted": "yes"},
        {"type": "mute", "kind": "video", "muted": 1},
        {"type": "mute", "kind": "audio"},
    ]
    async with aiohttp.ClientSession() as http, http.ws_connect(relay.signal_url) as ws:
        await ws.send_json({"type": "mute", "kind": "audio", "muted": True})
        assert (await ws.receive_json(timeout=10))["code"] == "not_joined"
        await ws.send_json({"type": "join", "grant": token, "publish": []})
        assert (await ws.receive_json(timeout=10))["type"] == "joined"
        codes = []
        for message in bad:
            await ws.send_str(json.dumps(message))
            reply = await ws.receive_json(timeout=10)
            assert reply["type"] == "error"
            codes.append(reply["code"])
        assert codes == ["not_published"] + ["malformed"] * 5
        assert not ws.closed
