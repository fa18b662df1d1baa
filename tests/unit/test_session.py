"""`Session` against a stand-in relay that follows docs/signaling.md: an aiohttp
WebSocket plus an aiortc peer connection that offers, like the real relay does.

This pins the client's half of the contract (answering, attaching tracks on the
`publish` m-lines, attributing `streams` m-lines to publishers, renegotiation,
roster, leave) without needing the real relay or a control plane.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from client.errors import ConclaveError
from client.media import PatternVideoTrack, SineAudioTrack
from client.sdk import Session
from client.session import SOURCE_KINDS
from conclave.ice import use_host_addresses
from conclave.processes import free_port
from protos import rooms_pb2

GRANT = "grant-for-alice"


@dataclass
class FakeRelay:
    """One meeting: alice (the client under test) and bob, who publishes both kinds."""

    url: str = ""
    joins: list[dict[str, Any]] = field(default_factory=list)
    received: dict[str, int] = field(default_factory=lambda: {"audio": 0, "video": 0})
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    left: asyncio.Event = field(default_factory=asyncio.Event)
    ws: web.WebSocketResponse | None = None
    pc: RTCPeerConnection | None = None
    answers: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    tracks: list[MediaStreamTrack] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.ws = ws
        async for frame in ws:
            assert frame.type == WSMsgType.TEXT
            message = json.loads(frame.data)
            if message["type"] == "join":
                self.joins.append(message)
                if message["grant"] != GRANT:
                    await ws.send_json(
                        {"type": "error", "code": "grant_bad_signature", "message": "bad"}
                    )
                    await ws.close(code=4001)
                    break
                self.tasks.append(asyncio.create_task(self.converse(message["publish"])))
            elif message["type"] == "answer":
                await self.answers.put(message["sdp"])
            elif message["type"] == "leave":
                self.left.set()
                await ws.close()
        return ws

    async def converse(self, publish: list[str]) -> None:
        """joined, first offer (bob's media), then bob leaves and carol arrives with
        audio: a second offer on the same peer connection."""
        ws = self.ws
        assert ws is not None
        bob = {
            "participant_id": "p-bob",
            "name": "bob",
            "tracks": [
                {"track_id": "t-bob-a", "kind": "audio", "muted": False},
                {"track_id": "t-bob-v", "kind": "video", "muted": False},
            ],
        }
        await ws.send_json(
            {
                "type": "joined",
                "participant_id": "p-alice",
                "room_id": "room-1",
                "node_id": "relay-0",
                "roster": [bob],
            }
        )
        # max-bundle, as the real relay must: see the note in client/sdk.py
        config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        pc = self.pc = RTCPeerConnection(config)
        pc.on("track", self.on_track)
        for source in publish:  # sources: microphone, camera
            pc.addTransceiver(SOURCE_KINDS[source], direction="recvonly")
        bob_audio, bob_video = SineAudioTrack(frequency=300), PatternVideoTrack()
        self.tracks += [bob_audio, bob_video]
        pc.addTransceiver(bob_audio, direction="sendonly")
        pc.addTransceiver(bob_video, direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        mids = [str(t.mid) for t in pc.getTransceivers()]
        publish_mids = dict(zip(publish, mids, strict=False))
        streams = [
            {
                "mid": mids[len(publish)],
                "participant_id": "p-bob",
                "track_id": "t-bob-a",
                "kind": "audio",
            },
            {
                "mid": mids[len(publish) + 1],
                "participant_id": "p-bob",
                "track_id": "t-bob-v",
                "kind": "video",
            },
        ]
        await self.offer(publish_mids, streams)

        await asyncio.sleep(2.0)  # media flows
        carol = {"participant_id": "p-carol", "name": "carol", "tracks": []}
        await ws.send_json({"type": "participant_joined", "participant": carol})
        await ws.send_json({"type": "participant_left", "participant_id": "p-bob"})
        carol_audio = SineAudioTrack(frequency=500)
        self.tracks.append(carol_audio)
        pc.addTransceiver(carol_audio, direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        streams.append(
            {
                "mid": str(pc.getTransceivers()[-1].mid),
                "participant_id": "p-carol",
                "track_id": "t-carol-a",
                "kind": "audio",
            }
        )
        await ws.send_json(
            {
                "type": "track_published",
                "participant_id": "p-carol",
                "track": {"track_id": "t-carol-a", "kind": "audio", "muted": False},
            }
        )
        await self.offer(publish_mids, streams)
        self.answered.set()

    async def offer(self, publish: dict[str, str], streams: list[dict[str, str]]) -> None:
        assert self.ws is not None and self.pc is not None
        await self.ws.send_json(
            {
                "type": "offer",
                "sdp": self.pc.localDescription.sdp,
                "publish": publish,
                "streams": streams,
            }
        )
        sdp = await asyncio.wait_for(self.answers.get(), 10)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    def on_track(self, track: MediaStreamTrack) -> None:
        async def count() -> None:
            try:
                while True:
                    await track.recv()
                    self.received[track.kind] += 1
            except MediaStreamError:
                pass

        self.tasks.append(asyncio.create_task(count()))

    async def close(self) -> None:
        for track in self.tracks:
            track.stop()
        if self.pc is not None:
            await self.pc.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def relay() -> AsyncIterator[FakeRelay]:
    use_host_addresses(["127.0.0.1"])
    fake = FakeRelay()
    app = web.Application()
    app.router.add_get("/ws", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    fake.url = f"ws://127.0.0.1:{port}/ws"
    yield fake
    await fake.close()
    await runner.cleanup()


def grant(url: str, token: str = GRANT) -> rooms_pb2.JoinRoomResponse:
    return rooms_pb2.JoinRoomResponse(
        room_id="room-1",
        participant_id="p-alice",
        node_id="relay-0",
        signal_url=url,
        grant=token,
    )


async def test_session_answers_publishes_and_attributes_media(relay: FakeRelay) -> None:
    # The stand-in relay plays bob and carol with media in clear: no E2EE here
    # (tests/integration/test_e2ee_media.py covers it against a real relay).
    session = Session(grant(relay.url), "alice", ["audio", "video"], e2ee=False)
    await session.start()
    try:
        assert relay.joins == [
            {
                "type": "join",
                "grant": GRANT,
                "publish": ["microphone", "camera"],
                "video_codec": "vp8",
            }
        ]
        assert session.roster == {"p-alice": "alice", "p-bob": "bob"}
        await asyncio.wait_for(relay.answered.wait(), 15)
        for _ in range(50):  # up to 10 s for carol's audio, negotiated second
            carol = session.stats().get("carol")
            if carol is not None and carol["audio_packets"] >= 10:
                break
            await asyncio.sleep(0.2)
    finally:
        await session.leave()
    assert relay.left.is_set()
    stats = session.stats()
    assert set(stats) == {"bob", "carol"}
    assert stats["bob"]["audio_packets"] > 20
    assert stats["bob"]["video_frames_decoded"] > 10
    assert stats["carol"]["video_frames_decoded"] == 0
    assert session.roster == {"p-alice": "alice", "p-carol": "carol"}
    assert sorted(session.seen.values()) == ["alice", "bob", "carol"]
    assert session.published_tracks["p-carol"] == {"t-carol-a": "audio"}
    assert session.published_sources["p-carol"] == {"t-carol-a": "microphone"}
    assert session.publishing == ["microphone", "camera"]
    assert set(session.publish_mids) == {"microphone", "camera"}
    # what alice sent arrived at the relay on the m-lines it named in `publish`
    assert relay.received["audio"] > 20
    assert relay.received["video"] > 10
    assert session.errors == []


async def test_refused_join_raises_clear_error(relay: FakeRelay) -> None:
    session = Session(grant(relay.url, token="forged"), "mallory", [])
    with pytest.raises(ConclaveError, match="grant_bad_signature") as info:
        await session.start()
    assert info.value.code == "grant_bad_signature"
    assert session.closed


async def test_unreachable_relay_raises_clear_error() -> None:
    session = Session(grant(f"ws://127.0.0.1:{free_port()}/ws"), "alice", [])
    with pytest.raises(ConclaveError, match="cannot open the signalling connection"):
        await session.start()


def test_video_codec_choice_is_checked() -> None:
    with pytest.raises(ValueError, match="AV1"):
        Session(grant("ws://127.0.0.1:1/ws"), "alice", [], e2ee=False, video_codec="AV1")
    assert Session(grant("ws://127.0.0.1:1/ws"), "a", [], e2ee=False, video_codec="h264")
