"""`Session` and the meeting's security features (docs/signaling.md): the waiting
room, being turned away, host controls over signalling, roles, publish rights,
a host's mute, the relay stopping a source, and sharing a screen.

A scripted stand-in relay: the test reads what the client sent and says what the
relay says, one message at a time; an aiortc peer connection makes real offers
where the test needs them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from client.errors import AdmissionRefused, ConclaveError
from client.media import PatternVideoTrack
from client.sdk import Session
from client.session import SOURCE_KINDS
from conclave.ice import use_host_addresses
from conclave.processes import free_port
from protos import rooms_pb2


class ScriptedRelay:
    """One signalling connection at a time; `received` holds the client's messages."""

    def __init__(self) -> None:
        self.url = ""
        self.ws: web.WebSocketResponse | None = None
        self.connected = asyncio.Event()
        self.received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.pc: RTCPeerConnection | None = None
        self.frames: dict[str, int] = {}  # mid -> frames the relay decoded there
        self.tasks: list[asyncio.Task[None]] = []

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.ws = ws
        self.connected.set()
        async for frame in ws:
            assert frame.type == WSMsgType.TEXT
            message = json.loads(frame.data)
            await self.received.put(message)
            if message["type"] == "leave":
                await ws.close()
        return ws

    async def next(self, kind: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """The client's next message (of type `kind`, skipping others)."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.received.get()
                if kind is None or message["type"] == kind:
                    return message

    async def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_json(message)

    async def close(self, code: int) -> None:
        assert self.ws is not None
        await self.ws.close(code=code)

    async def joined(self, role: str = "participant", **extra: Any) -> None:
        await self.send(
            {
                "type": "joined",
                "participant_id": "p-alice",
                "room_id": "room-1",
                "node_id": "relay-0",
                "roster": [],
                "role": role,
                **extra,
            }
        )

    async def offer(self, sources: list[str]) -> dict[str, str]:
        """An offer with a recvonly m-line per source; returns source -> mid once
        the client's answer is applied."""
        if self.pc is None:
            config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
            self.pc = RTCPeerConnection(config)
            self.pc.on("track", self.on_track)
        pc = self.pc
        have = len(pc.getTransceivers())
        for source in sources[have:]:
            pc.addTransceiver(SOURCE_KINDS[source], direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        mids = {s: str(t.mid) for s, t in zip(sources, pc.getTransceivers(), strict=False)}
        await self.send(
            {"type": "offer", "sdp": pc.localDescription.sdp, "publish": mids, "streams": []}
        )
        answer = await self.next("answer", timeout=10)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        return mids

    def on_track(self, track: MediaStreamTrack) -> None:
        pc = self.pc
        assert pc is not None
        mid = next(str(t.mid) for t in pc.getTransceivers() if t.receiver.track is track)

        async def count() -> None:
            try:
                while True:
                    await track.recv()
                    self.frames[mid] = self.frames.get(mid, 0) + 1
            except MediaStreamError:
                pass

        self.tasks.append(asyncio.create_task(count()))

    async def stop(self) -> None:
        if self.pc is not None:
            await self.pc.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def relay() -> AsyncIterator[ScriptedRelay]:
    use_host_addresses(["127.0.0.1"])
    fake = ScriptedRelay()
    app = web.Application()
    app.router.add_get("/ws", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    fake.url = f"ws://127.0.0.1:{port}/ws"
    yield fake
    await fake.stop()
    await runner.cleanup()


def grant(url: str) -> rooms_pb2.JoinRoomResponse:
    return rooms_pb2.JoinRoomResponse(
        room_id="room-1", participant_id="p-alice", node_id="relay-0", signal_url=url, grant="g"
    )


async def until(check: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


# ---------------------------------------------------------------- waiting room


async def test_waiting_until_admitted(relay: ScriptedRelay) -> None:
    waited: list[bool] = []
    session = Session(
        grant(relay.url),
        "alice",
        ["audio"],
        e2ee=False,
        join_timeout=0.5,  # the wait for the host is not bound by it
        on_waiting=lambda: waited.append(session.waiting),
    )
    start = asyncio.create_task(session.start())
    try:
        join = await relay.next("join")
        assert join["publish"] == ["microphone"]
        await relay.send({"type": "waiting"})
        await until(lambda: session.waiting)
        assert waited == [True]
        await asyncio.sleep(1.0)  # longer than join_timeout
        assert not start.done() and session.role is None
        await relay.joined(
            publish_rights=["microphone", "camera"],
            room={"waiting_room": True, "locked": False, "suspended": False,
                  "screen_share": "hosts"},
        )  # fmt: skip
        await asyncio.wait_for(start, 5)
        assert not session.waiting
        assert session.role == "participant"
        assert session.publish_rights == ["microphone", "camera"]
        assert session.room_state["waiting_room"] is True
        assert session.roles == {"p-alice": "participant"}
    finally:
        start.cancel()
        await session.leave()


@pytest.mark.parametrize(
    ("reason", "close_code", "message"),
    [
        ("denied", 4007, "did not let you into the meeting"),
        ("removed", 4006, "you were removed"),
        ("locked", 4005, "the meeting is locked"),
        (None, 4007, "did not let you into the meeting"),  # the close code alone
        (None, 4005, "the meeting is locked"),
    ],
)
async def test_turned_away(
    relay: ScriptedRelay, reason: str | None, close_code: int, message: str
) -> None:
    session = Session(grant(relay.url), "alice", [], e2ee=False)
    start = asyncio.create_task(session.start())
    await relay.next("join")
    await relay.send({"type": "waiting"})
    await until(lambda: session.waiting)
    if reason is not None:
        await relay.send({"type": "room_closed", "reason": reason})
    await relay.close(close_code)
    with pytest.raises(AdmissionRefused, match=message) as info:
        await asyncio.wait_for(start, 5)
    assert isinstance(info.value, ConclaveError)
    assert info.value.code == (reason or {4007: "denied", 4005: "locked"}[close_code])
    assert session.closed and session.closed_reason == info.value.code


async def test_locked_error_before_the_join(relay: ScriptedRelay) -> None:
    session = Session(grant(relay.url), "alice", [], e2ee=False)
    start = asyncio.create_task(session.start())
    await relay.next("join")
    await relay.send({"type": "error", "code": "locked", "message": "the meeting is locked"})
    await relay.close(4005)
    with pytest.raises(AdmissionRefused, match="locked") as info:
        await asyncio.wait_for(start, 5)
    assert info.value.code == "locked"


async def test_wait_timeout(relay: ScriptedRelay) -> None:
    session = Session(grant(relay.url), "alice", [], e2ee=False, wait_timeout=0.3)
    start = asyncio.create_task(session.start())
    await relay.next("join")
    await relay.send({"type": "waiting"})
    with pytest.raises(ConclaveError, match="no host admitted us") as info:
        await asyncio.wait_for(start, 5)
    assert info.value.code == "wait_timeout"


async def test_join_timeout_still_applies_without_waiting(relay: ScriptedRelay) -> None:
    session = Session(grant(relay.url), "alice", [], e2ee=False, join_timeout=0.3)
    with pytest.raises(ConclaveError, match="did not answer the join"):
        await session.start()


async def test_removed_after_the_join(relay: ScriptedRelay) -> None:
    session = Session(grant(relay.url), "alice", [], e2ee=False)
    start = asyncio.create_task(session.start())
    await relay.next("join")
    await relay.joined()
    await asyncio.wait_for(start, 5)
    await relay.send({"type": "room_closed", "reason": "removed"})
    await relay.close(4006)
    await asyncio.wait_for(session.wait_closed(), 5)
    assert session.closed_reason == "removed"
    await session.leave()


# --------------------------------------------------------------- host controls


async def joined_session(relay: ScriptedRelay, role: str, **kwargs: Any) -> Session:
    session = Session(grant(relay.url), "alice", kwargs.pop("publish", []), **kwargs)
    start = asyncio.create_task(session.start())
    await relay.next("join")
    bob = {
        "participant_id": "p-bob",
        "name": "bob",
        "role": "participant",
        "tracks": [
            {"track_id": "t-a", "kind": "audio", "source": "microphone", "muted": False},
            {"track_id": "t-c", "kind": "video", "source": "camera", "muted": False},
            {"track_id": "t-s", "kind": "video", "source": "screen", "muted": True},
        ],
    }
    await relay.joined(role=role, roster=[bob], publish_rights=["microphone", "camera", "screen"])
    await asyncio.wait_for(start, 5)
    return session


async def test_host_actions_over_signalling(relay: ScriptedRelay) -> None:
    session = await joined_session(relay, "host", e2ee=False)
    try:
        await relay.send(
            {
                "type": "waiting_list",
                "participants": [
                    {"participant_id": "p-eve", "name": "eve"},
                    {"participant_id": "p-dan", "name": "dan"},
                ],
            }
        )
        await until(lambda: session.waiting_list)
        assert session.waiting_list == [("p-eve", "eve"), ("p-dan", "dan")]

        await session.admit(["p-eve"])
        assert await relay.next() == {"type": "admit", "participant_ids": ["p-eve"]}
        await session.admit(all=True)
        assert await relay.next() == {"type": "admit", "all": True}
        await session.deny(["p-dan"])
        assert await relay.next() == {"type": "deny", "participant_ids": ["p-dan"]}
        await session.remove("p-bob")
        assert await relay.next() == {"type": "remove", "participant_id": "p-bob"}
        await session.mute_participant("p-bob", "audio")  # a kind names its source
        assert await relay.next() == {
            "type": "mute_participant",
            "participant_id": "p-bob",
            "source": "microphone",
        }
        await session.set_publish_rights("p-bob", ["microphone", "screen"])
        assert await relay.next() == {
            "type": "set_publish_rights",
            "participant_id": "p-bob",
            "sources": ["microphone", "screen"],
        }
        await session.set_publish_rights("p-bob", [])
        assert (await relay.next())["sources"] == []
        await session.set_role("p-bob", "cohost")
        assert await relay.next() == {
            "type": "set_role",
            "participant_id": "p-bob",
            "role": "cohost",
        }
        await session.update_room(locked=True, screen_share="everyone")
        assert await relay.next() == {
            "type": "update_room",
            "locked": True,
            "screen_share": "everyone",
        }

        with pytest.raises(ValueError):
            await session.admit([])
        with pytest.raises(ValueError):
            await session.deny([])
        with pytest.raises(ValueError):
            await session.set_role("p-bob", "host")
        with pytest.raises(ValueError):
            await session.mute_participant("p-bob", "speaker")
        with pytest.raises(ValueError):
            await session.set_publish_rights("p-bob", ["everything"])
        with pytest.raises(ValueError):
            await session.update_room()
        with pytest.raises(ValueError):
            await session.update_room(screen_share="nobody")

        # refused: recorded, the connection stays
        await relay.send({"type": "error", "code": "not_host", "message": "hosts only"})
        await until(lambda: session.errors)
        assert session.errors == [("not_host", "hosts only")]
        assert not session.closed
    finally:
        await session.leave()


async def test_roles_rights_and_room_updates(relay: ScriptedRelay) -> None:
    session = await joined_session(relay, "participant", e2ee=False)
    try:
        assert session.roles == {"p-alice": "participant", "p-bob": "participant"}
        assert session.published_tracks["p-bob"] == {"t-a": "audio", "t-c": "video", "t-s": "video"}
        assert session.published_sources["p-bob"] == {
            "t-a": "microphone",
            "t-c": "camera",
            "t-s": "screen",
        }
        assert session.source_mute_state["p-bob"] == {
            "microphone": False,
            "camera": False,
            "screen": True,
        }
        assert session.mute_state["p-bob"] == {"audio": False, "video": False}
        assert session.is_muted("p-bob", "screen") and not session.is_muted("p-bob", "video")

        await relay.send(
            {"type": "participant_updated", "participant": {"participant_id": "p-bob",
                                                            "name": "bob", "role": "cohost"}}
        )  # fmt: skip
        await relay.send(
            {"type": "participant_updated", "participant": {"participant_id": "p-alice",
                                                            "name": "alice", "role": "cohost"}}
        )  # fmt: skip
        await relay.send({"type": "publish_rights", "sources": ["microphone"]})
        await relay.send(
            {"type": "room_updated", "room": {"waiting_room": False, "locked": True,
                                              "suspended": False, "screen_share": "everyone"}}
        )  # fmt: skip
        await until(lambda: session.room_state.get("locked") is True)
        assert session.roles == {"p-alice": "cohost", "p-bob": "cohost"}
        assert session.role == "cohost"
        assert session.publish_rights == ["microphone"]
        assert session.room_state["screen_share"] == "everyone"

        await relay.send({"type": "participant_left", "participant_id": "p-bob"})
        await until(lambda: "p-bob" not in session.roles)
        assert "p-bob" not in session.published_sources
        assert session.errors == []
    finally:
        await session.leave()


async def test_muted_by_host_and_unpublished(relay: ScriptedRelay) -> None:
    session = await joined_session(relay, "participant", e2ee=False, publish=["audio", "video"])
    try:
        assert session.muted == {"microphone": False, "camera": False}
        await relay.send({"type": "muted_by_host", "source": "microphone"})
        await until(lambda: session.muted_by_host)
        assert session.muted_by_host == ["microphone"]
        assert session.is_muted("p-alice", "audio")  # we report it as muted
        assert session.is_muted("p-alice", "microphone")
        # unmuting ourselves tells the relay
        await session.set_muted("audio", False)
        assert await relay.next("mute") == {"type": "mute", "source": "microphone", "muted": False}
        assert not session.is_muted("p-alice", "audio")

        await relay.send({"type": "unpublished", "source": "camera", "reason": "rights"})
        await until(lambda: session.unpublished)
        assert session.unpublished == [("camera", "rights")]
        assert session.publishing == ["microphone"]
        with pytest.raises(ValueError):
            await session.set_muted("video", True)
        assert session.errors == []
    finally:
        await session.leave()


# ---------------------------------------------------------------- screen share


async def test_screen_share_refused(relay: ScriptedRelay) -> None:
    session = await joined_session(relay, "participant", e2ee=False)
    try:

        async def refuse() -> None:
            assert await relay.next("publish") == {"type": "publish", "source": "screen"}
            await relay.send(
                {"type": "error", "code": "not_allowed", "message": "no right to the screen"}
            )

        refusing = asyncio.create_task(refuse())
        with pytest.raises(ConclaveError, match="does not let us publish screen") as info:
            await session.publish_screen()
        await refusing
        assert info.value.code == "not_allowed"
        assert session.publishing == []
        assert "screen" not in session.muted
    finally:
        await session.leave()


async def test_screen_share_before_the_join_is_refused(relay: ScriptedRelay) -> None:
    session = Session(grant(relay.url), "alice", [], e2ee=False)
    with pytest.raises(ConclaveError, match="not in the meeting"):
        await session.publish_screen()


@pytest.mark.parametrize("e2ee", [False, True])
async def test_screen_share_sends_a_second_video_track(relay: ScriptedRelay, e2ee: bool) -> None:
    session = await joined_session(relay, "participant", e2ee=e2ee, publish=["audio", "video"])
    try:
        first = await relay.offer(["microphone", "camera"])
        assert session.publish_mids == first

        screen = PatternVideoTrack(width=640, height=360)

        async def accept() -> dict[str, str]:
            assert await relay.next("publish") == {"type": "publish", "source": "screen"}
            return await relay.offer(["microphone", "camera", "screen"])

        accepting = asyncio.create_task(accept())
        await session.publish_screen(screen)
        mids = await accepting
        assert session.publishing == ["microphone", "camera", "screen"]
        assert session.publish_mids == mids

        pc = session._pc
        assert pc is not None
        senders = {t.mid: t.sender for t in pc.getTransceivers()}
        assert senders[mids["screen"]].track is screen
        assert senders[mids["camera"]].track not in (None, screen)
        # end-to-end encrypted like the camera: every m-line we publish on
        for source in ("microphone", "camera", "screen"):
            sealed = getattr(senders[mids[source]], "_conclave_sealed", False)
            assert sealed is e2ee, source

        if not e2ee:  # in clear, the stand-in relay decodes what arrives
            await until(lambda: relay.frames.get(mids["screen"], 0) >= 10, timeout=15)
            assert relay.frames.get(mids["camera"], 0) >= 1

        await session.unpublish("screen")
        assert await relay.next("unpublish") == {"type": "unpublish", "source": "screen"}
        assert senders[mids["screen"]].track is None
        assert session.publishing == ["microphone", "camera"]
        assert screen.readyState == "live"  # the application's track: not ours to stop
        assert [e for e in session.errors if e[0] == "client_bad_offer"] == []
    finally:
        await session.leave()
        screen.stop()


async def test_leaving_the_waiting_room(relay: ScriptedRelay) -> None:
    session = Session(grant(relay.url), "alice", [], e2ee=False)
    start = asyncio.create_task(session.start())
    await relay.next("join")
    await relay.send({"type": "waiting"})
    await until(lambda: session.waiting)
    await session.leave()
    assert (await relay.next()) == {"type": "leave"}
    with pytest.raises(ConclaveError, match="left the meeting before the join") as info:
        await asyncio.wait_for(start, 5)
    assert info.value.code == "left"
    assert session.closed
