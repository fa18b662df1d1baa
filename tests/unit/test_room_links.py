"""The room's side of links to the meeting's other relays (relay/room.py, last
section; docs/cascading.md), with a fake link that records what the room sends
and local participants whose signalling is recorded. The real links are covered
by tests/integration/test_relay_links.py; these run in milliseconds."""

from __future__ import annotations

import asyncio
import struct
import time
import types
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from relay.forwarder import SubscriberOutput
from relay.link import KIND_RTP, MeetingLink
from relay.peer import Subscription
from relay.room import Participant, PublishedTrack, Room
from relay.rtp import RtpHeader, is_vp8_keyframe_start

PEER = "relay-b"
VP8_PT = 96
OPUS_PT = 111
# A VP8 payload descriptor (S bit, partition 0, no extensions) then a key frame's
# first bytes: frame tag with P = 0, start code, 640x360 (RFC 7741, RFC 6386).
VP8_KEYFRAME = (
    b"\x10\x00\x00\x00\x9d\x01\x2a"
    + (640).to_bytes(2, "little")
    + (360).to_bytes(2, "little")
    + b"\x00" * 16
)
VP8_DELTA = b"\x10\x01" + b"\x00" * 20  # frame tag P = 1: an inter frame


class FakeLink:
    """What a room uses of a MeetingLink, recording what it is given."""

    def __init__(self, peer_node: str = PEER, dialer: bool = True) -> None:
        self.peer_node = peer_node
        self.dialer = dialer
        self.events: Any = None
        self.closed = asyncio.Event()
        self.sent: list[dict[str, Any]] = []
        self.media: list[tuple[int, int, bytes, int]] = []
        self.closes: list[bool] = []

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def send_media(self, index: int, layer: int, packet: bytes, kind: int = KIND_RTP) -> None:
        self.media.append((index, layer, packet, kind))

    async def close(self, say_bye: bool = True) -> None:
        self.closes.append(say_bye)
        self.closed.set()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["type"] == kind]

    @property
    def link(self) -> MeetingLink:
        return cast(MeetingLink, self)


class Inbox:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def signal(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    async def disconnect(self, reason: str, code: int) -> None:
        pass

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]


class Sink:
    """Where the room sends a subscriber's rewritten packets."""

    join_started_ms: int | None = None

    def __init__(self) -> None:
        self.packets: list[bytes] = []

    async def send_rtp(self, packet: bytes) -> None:
        self.packets.append(packet)

    def media_flowing(self) -> None:
        pass


@pytest.fixture
async def room() -> AsyncIterator[Room]:
    room = Room("room-1", 20)
    yield room
    await empty(room)


async def empty(room: Room) -> None:
    for pid in list(room.participants):
        await room.leave(pid)
    await asyncio.sleep(0)  # spawned link closes run


async def join(
    room: Room, pid: str, publish: list[str], role: str = "participant"
) -> tuple[Participant, Inbox]:
    inbox = Inbox()
    participant = await room.join(
        pid, pid, publish, True, inbox.signal, inbox.disconnect, role=role,
        rights={"microphone", "camera", "screen"},
    )  # fmt: skip
    return participant, inbox


async def attach(room: Room, peer_node: str = PEER) -> FakeLink:
    """Attach a fake link the way relay/links.py does: attach, then start it."""
    fake = FakeLink(peer_node)
    await room.attach_link(fake.link)
    fake.events = room  # what MeetingLink.start sets
    return fake


async def tell(room: Room, fake: FakeLink, message: dict[str, Any]) -> None:
    await room.on_link_message(fake.link, message)


def member(pid: str, name: str | None = None, role: str = "participant") -> dict[str, Any]:
    return {"type": "member", "participant_id": pid, "name": name or pid, "role": role}


def track(pid: str, index: Any, source: str, track_id: Any, **more: Any) -> dict[str, Any]:
    codecs = {str(VP8_PT): "video/vp8"} if source != "microphone" else {str(OPUS_PT): "audio/opus"}
    return {
        "type": "track",
        "participant_id": pid,
        "index": index,
        "track_id": track_id,
        "source": source,
        "muted": False,
        "layers": 0,
        "extensions": {},
        "codecs": codecs,
        **more,
    }


async def remote(
    room: Room, fake: FakeLink, pid: str, tracks: dict[str, int] | None = None
) -> Participant:
    """A participant of the link's relay, publishing `tracks` (source -> index)."""
    await tell(room, fake, member(pid))
    for source, index in (tracks or {}).items():
        await tell(room, fake, track(pid, index, source, f"TR_{pid}_{source}"))
    return room.participants[pid]


def rtp(payload_type: int, sequence: int, payload: bytes, ssrc: int = 0x1111) -> bytes:
    return struct.pack("!BBHII", 0x80, payload_type, sequence, sequence * 3000, ssrc) + payload


async def publish_packet(
    room: Room, publisher: Participant, source: str, sequence: int, layer: int = 0
) -> bytes:
    """A packet of a local publisher, as its peer connection hands it to the room."""
    if source == "microphone":
        data = rtp(OPUS_PT, sequence, b"\xfc" * 20)
    else:
        data = rtp(VP8_PT, sequence, VP8_DELTA, ssrc=0x2000 + layer)
    await room.on_media(publisher.peer, source, RtpHeader.parse(data), data, layer, 0.0)
    return data


def subscribe(room: Room, viewer: Participant, track: PublishedTrack) -> Sink:
    """Finish `viewer`'s subscription to `track` as negotiation would (the answer
    is never given here): its output is made and the room told it is ready."""
    sub: Subscription = viewer.connection.subscriptions[track.track_id]
    sink = Sink()
    sub.output = SubscriberOutput(0x5000 + len(track.forwarder.subscribers), VP8_PT, b"", sink)
    room._on_subscription_ready(sub)
    return sink


def link_tracks(direction: str) -> float:
    value = REGISTRY.get_sample_value("conclave_link_tracks", {"direction": direction})
    return value or 0.0


def links_open() -> float:
    return REGISTRY.get_sample_value("conclave_links") or 0.0


def roster_state(room: Room) -> Any:
    return (
        {pid: (p.name, p.role, p.origin, p.e2ee_binding) for pid, p in room.participants.items()},
        {
            tid: (t.owner.participant_id, t.source, t.muted, t.held)
            for tid, t in room.tracks.items()
        },
        room.local_count,
        set(room._remote_tracks),
        set(room._local_tracks),
    )


# -- 1, 2: what a link learns about this relay's side -------------------------------


async def test_attach_sends_a_snapshot_of_local_participants(room: Room) -> None:
    ann, _ = await join(room, "p_ann", ["microphone"])
    await join(room, "p_ben", [])
    await room.set_e2ee_binding(ann, "YW5u")
    mic = ann.tracks["microphone"]
    before = links_open()

    fake = await attach(room)

    assert fake.sent == [
        member("p_ann"),
        {
            "type": "track",
            "participant_id": "p_ann",
            "index": 0,
            "track_id": mic.track_id,
            "source": "microphone",
            "muted": False,
            "layers": 0,
            "extensions": {},
            "codecs": {},  # nothing negotiated with the publisher yet
        },
        {"type": "e2ee", "participant_id": "p_ann", "binding": "YW5u", "at": ann.e2ee_at},
        member("p_ben"),
        {"type": "synced"},
    ]
    assert room.links == {PEER: fake.link}
    assert links_open() - before == 1
    assert not room.empty


async def test_local_changes_after_attach_reach_the_link(room: Room) -> None:
    await join(room, "p_ann", [])
    fake = await attach(room)
    fake.sent.clear()

    cat, _ = await join(room, "p_cat", [], role="host")
    assert fake.sent == [member("p_cat", role="host")]
    fake.sent.clear()

    await room.start_publishing(cat, "camera")
    camera = cat.tracks["camera"]
    [published] = fake.sent
    assert published["type"] == "track"
    assert (published["participant_id"], published["source"], published["track_id"]) == (
        "p_cat",
        "camera",
        camera.track_id,
    )
    assert published["index"] == camera.index and published["muted"] is False
    fake.sent.clear()

    await room.set_muted(cat, "camera", True)
    assert [(m["type"], m["index"], m["muted"]) for m in fake.sent] == [
        ("track", camera.index, True)
    ]
    fake.sent.clear()

    await room.stop_publishing(cat, "camera", "unpublished")
    assert fake.sent == [{"type": "untrack", "index": camera.index}]
    fake.sent.clear()

    await room.set_e2ee_binding(cat, "Y2F0")
    assert fake.sent == [
        {"type": "e2ee", "participant_id": "p_cat", "binding": "Y2F0", "at": cat.e2ee_at}
    ]
    fake.sent.clear()

    await room.leave("p_cat")
    assert fake.sent == [{"type": "left", "participant_id": "p_cat"}]


# -- 3, 4: what a link says about its relay's side ----------------------------------


async def test_remote_members_and_tracks_join_the_roster(room: Room) -> None:
    local, inbox = await join(room, "p_local", [])
    fake = await attach(room)
    fake.sent.clear()

    await tell(room, fake, member("r_rita", "Rita"))
    assert inbox.of("participant_joined") == [
        {
            "type": "participant_joined",
            "participant": {
                "participant_id": "r_rita",
                "name": "Rita",
                "role": "participant",
                "tracks": [],
            },
        }
    ]
    rita = room.participants["r_rita"]
    assert rita.origin == PEER and room.local_count == 1
    assert room.local_participants() == [local]

    await tell(room, fake, track("r_rita", 4, "camera", "TR_rita_cam"))
    assert inbox.of("track_published") == [
        {
            "type": "track_published",
            "participant_id": "r_rita",
            "track": {
                "track_id": "TR_rita_cam",
                "kind": "video",
                "source": "camera",
                "muted": False,
            },
        }
    ]
    cam = room.tracks["TR_rita_cam"]
    assert cam.remote and cam.index == 4 and rita.tracks == {"camera": cam}
    assert "TR_rita_cam" in local.connection.subscriptions  # offered to local subscribers
    assert room.local_count == 1

    # The same member again changes nothing; a new name is an update.
    await tell(room, fake, member("r_rita", "Rita"))
    assert not inbox.of("participant_updated")
    await tell(room, fake, member("r_rita", "Rita B."))
    [updated] = inbox.of("participant_updated")
    assert updated["participant"]["name"] == "Rita B." and rita.name == "Rita B."

    # A remote mute travels in `track`.
    await tell(room, fake, track("r_rita", 4, "camera", "TR_rita_cam", muted=True))
    assert inbox.of("track_muted") == [
        {"type": "track_muted", "participant_id": "r_rita", "track_id": "TR_rita_cam",
         "muted": True}
    ]  # fmt: skip
    assert cam.muted

    await tell(room, fake, {"type": "left", "participant_id": "r_rita"})
    assert inbox.of("track_unpublished") == [
        {"type": "track_unpublished", "participant_id": "r_rita", "track_id": "TR_rita_cam"}
    ]
    assert inbox.of("participant_left") == [
        {"type": "participant_left", "participant_id": "r_rita"}
    ]
    assert "r_rita" not in room.participants and not room.tracks and not room._remote_tracks
    assert "TR_rita_cam" not in local.connection.subscriptions
    assert room.local_count == 1
    assert fake.sent == []  # nothing heard on a link is sent back on it


async def test_untrack_ends_a_remote_track(room: Room) -> None:
    _, inbox = await join(room, "p_local", [])
    fake = await attach(room)
    rita = await remote(room, fake, "r_rita", {"microphone": 2, "camera": 3})
    await tell(room, fake, {"type": "untrack", "index": 2})
    assert list(rita.tracks) == ["camera"]
    assert [m["track_id"] for m in inbox.of("track_unpublished")] == ["TR_r_rita_microphone"]
    assert set(room._remote_tracks) == {(PEER, 3)}


LOCAL_TRACK = "<the local microphone's track id>"
MALFORMED: list[tuple[dict[str, Any], type[Exception] | None]] = [
    ({"type": "member"}, KeyError),
    ({"type": "member", "participant_id": 5, "name": "x", "role": "participant"}, ValueError),
    ({"type": "member", "participant_id": "r_new", "name": None, "role": "host"}, ValueError),
    ({"type": "member", "participant_id": "r_new", "name": "x", "role": "emperor"}, ValueError),
    # A local participant's id: the one connected here stays as it is.
    (member("p_local", "Impostor", role="host"), None),
    ({"type": "left", "participant_id": "p_local"}, None),
    ({"type": "left"}, KeyError),
    (track("r_ghost", 9, "camera", "TR_ghost"), None),  # unknown participant
    (track("p_local", 9, "camera", "TR_stolen"), None),  # not the link's to announce
    (track("r_known", "9", "camera", "TR_x"), ValueError),
    (track("r_known", 9, "hologram", "TR_x"), ValueError),
    (track("r_known", 9, "camera", "TR_x", extensions={"one": "urn:x"}), ValueError),
    (track("r_known", 9, "camera", "TR_x", codecs={"pt": "video/vp8"}), ValueError),
    (track("r_known", 9, "camera", 42), ValueError),
    (track("r_known", 9, "microphone", "TR_x"), ValueError),  # its microphone exists
    (track("r_known", 9, "camera", LOCAL_TRACK), ValueError),  # a local track's id
    ({"type": "track", "participant_id": "r_known", "index": 9}, KeyError),
    ({"type": "untrack", "index": 77}, None),
    ({"type": "untrack", "index": 0}, None),  # 0 numbers a local track, not the link's
    ({"type": "e2ee", "participant_id": "r_known", "binding": 5, "at": 1}, ValueError),
    ({"type": "e2ee", "participant_id": "r_known", "binding": "eA==", "at": "1"}, ValueError),
    ({"type": "e2ee", "participant_id": "p_local", "binding": "eA==", "at": 1}, None),
    ({"type": "e2ee_key", "from": "p_local", "to": "p_other", "message": "k"}, None),
    ({"type": "e2ee_key", "from": "r_known", "to": "p_local", "message": 5}, None),
    ({"type": "e2ee_key", "from": "r_known", "to": "r_known", "message": "k"}, None),
    ({"type": "want", "index": 77, "layers": [0]}, None),
    ({"type": "keyframe", "index": 0, "layer": 7}, None),
    ({"type": "nack", "index": 0, "layer": "0", "sequences": [1]}, None),
    ({"type": "act", "participant_id": "r_known", "action": "mute", "source": "microphone"}, None),
    ({"type": "act", "participant_id": "p_local", "action": "mute", "source": "hologram"}, None),
    ({"type": "act", "participant_id": "p_local", "action": "role", "role": "host"}, None),
    ({"type": "act", "participant_id": "p_local", "action": "explode"}, None),
    ({"type": "no_such_message"}, None),
]


@pytest.mark.parametrize(("message", "raises"), MALFORMED)
async def test_malformed_link_messages_change_nothing(
    room: Room, message: dict[str, Any], raises: type[Exception] | None
) -> None:
    local, local_inbox = await join(room, "p_local", ["microphone"])
    _, other_inbox = await join(room, "p_other", [])
    if message.get("track_id") == LOCAL_TRACK:
        message = {**message, "track_id": local.tracks["microphone"].track_id}
    fake = await attach(room)
    await remote(room, fake, "r_known", {"microphone": 5})
    before = roster_state(room)
    local_seen, other_seen = len(local_inbox.messages), len(other_inbox.messages)
    fake.sent.clear()

    if raises is None:
        await tell(room, fake, message)
    else:
        with pytest.raises(raises):
            await tell(room, fake, message)

    assert roster_state(room) == before
    assert len(local_inbox.messages) == local_seen and len(other_inbox.messages) == other_seen
    assert fake.sent == [] and fake.media == []


async def test_a_replaced_or_unknown_link_is_not_listened_to(room: Room) -> None:
    _, inbox = await join(room, "p_local", [])
    stranger = FakeLink("relay-x")  # never attached
    await tell(room, stranger, member("r_x"))
    await room.on_link_media(stranger.link, 0, 0, rtp(VP8_PT, 1, VP8_KEYFRAME))
    assert list(room.participants) == ["p_local"] and not inbox.of("participant_joined")


# -- 5, 6: end-to-end encryption across relays -------------------------------------

NOW_US = 1_700_000_000_000_000


async def _members_order(remote_first: bool) -> tuple[list[str], list[dict[str, Any]]]:
    room = Room("room-e2ee", 10)
    try:
        local, inbox = await join(room, "p_mid", [])
        fake = await attach(room)
        for pid in ("r_early", "a_tie", "z_tie"):
            await tell(room, fake, member(pid))
        remote_bindings = [
            {"type": "e2ee", "participant_id": "r_early", "binding": "ZWFybHk=", "at": NOW_US - 5},
            {"type": "e2ee", "participant_id": "z_tie", "binding": "eg==", "at": NOW_US},
            {"type": "e2ee", "participant_id": "a_tie", "binding": "YQ==", "at": NOW_US},
        ]
        if not remote_first:
            await room.set_e2ee_binding(local, "bWlk")
        for message in remote_bindings:
            await tell(room, fake, message)
        if remote_first:
            await room.set_e2ee_binding(local, "bWlk")
        assert local.e2ee_at == NOW_US
        members = inbox.of("e2ee_members")[-1]["members"]
        assert members == room._e2ee_members()["members"]
        return [m["participant_id"] for m in members], fake.of("e2ee")
    finally:
        await empty(room)


async def test_e2ee_members_are_ordered_by_binding_time_then_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = types.SimpleNamespace(time=time.time, time_ns=lambda: NOW_US * 1000)
    monkeypatch.setattr("relay.room.time", clock)
    expected = ["r_early", "a_tie", "p_mid", "z_tie"]
    local_first, sent_a = await _members_order(remote_first=False)
    remote_first, sent_b = await _members_order(remote_first=True)
    assert local_first == expected and remote_first == expected
    binding = {"type": "e2ee", "participant_id": "p_mid", "binding": "bWlk", "at": NOW_US}
    assert sent_a == [binding] and sent_b == [binding]


async def test_a_remote_binding_is_dropped_from_the_members_when_it_leaves(room: Room) -> None:
    _, inbox = await join(room, "p_local", [])
    fake = await attach(room)
    await remote(room, fake, "r_rita")
    message = {"type": "e2ee", "participant_id": "r_rita", "binding": "cml0YQ==", "at": 7}
    await tell(room, fake, message)
    assert inbox.of("e2ee_members")[-1]["members"] == [
        {"participant_id": "r_rita", "binding": "cml0YQ=="}
    ]
    await tell(room, fake, {"type": "left", "participant_id": "r_rita"})
    assert inbox.of("e2ee_members")[-1]["members"] == []


async def test_e2ee_keys_cross_the_link_unread(room: Room) -> None:
    ann, inbox = await join(room, "p_ann", [])
    fake = await attach(room)
    await remote(room, fake, "r_rita")
    fake.sent.clear()

    await room.send_e2ee_key(ann, "r_rita", "a2V5LWZvci1yaXRh")
    assert fake.sent == [
        {"type": "e2ee_key", "from": "p_ann", "to": "r_rita", "message": "a2V5LWZvci1yaXRh"}
    ]
    assert not inbox.of("e2ee_key")

    await tell(room, fake, {"type": "e2ee_key", "from": "r_rita", "to": "p_ann", "message": "aGk="})
    assert inbox.of("e2ee_key") == [{"type": "e2ee_key", "from": "r_rita", "message": "aGk="}]


# -- 7, 9: this relay's tracks sent to a link ---------------------------------------


async def test_a_link_receives_only_the_layers_it_wants(room: Room) -> None:
    pub, _ = await join(room, "p_pub", ["camera"])
    camera = pub.tracks["camera"]
    fake = await attach(room)
    sent_before = link_tracks("sent")

    await tell(room, fake, {"type": "want", "index": camera.index, "layers": [0]})
    assert link_tracks("sent") - sent_before == 1
    assert camera.links == {fake.link: {0}}
    first = await publish_packet(room, pub, "camera", 100, layer=0)
    await publish_packet(room, pub, "camera", 200, layer=1)
    await publish_packet(room, pub, "camera", 300, layer=2)
    second = await publish_packet(room, pub, "camera", 101, layer=0)
    # As the publisher sent them, tagged with the track's index and layer.
    assert fake.media == [(camera.index, 0, first, KIND_RTP), (camera.index, 0, second, KIND_RTP)]

    await tell(room, fake, {"type": "want", "index": camera.index, "layers": [0]})  # again
    assert link_tracks("sent") - sent_before == 1

    await tell(room, fake, {"type": "want", "index": camera.index, "layers": []})
    assert link_tracks("sent") - sent_before == 0
    fake.media.clear()
    await publish_packet(room, pub, "camera", 102, layer=0)
    assert fake.media == []


async def test_a_wanted_track_stops_crossing_when_unpublished(room: Room) -> None:
    pub, _ = await join(room, "p_pub", ["microphone"])
    mic = pub.tracks["microphone"]
    fake = await attach(room)
    sent_before = link_tracks("sent")
    await tell(room, fake, {"type": "want", "index": mic.index, "layers": [0, 1, 2]})
    assert mic.links == {fake.link: {0}}  # audio has one stream
    packet = await publish_packet(room, pub, "microphone", 5)
    assert fake.media == [(mic.index, 0, packet, KIND_RTP)]
    await room.stop_publishing(pub, "microphone", "unpublished")
    assert link_tracks("sent") == sent_before
    assert fake.of("untrack") == [{"type": "untrack", "index": mic.index}]


async def test_a_link_nack_is_answered_from_the_packets_sent(room: Room) -> None:
    pub, _ = await join(room, "p_pub", ["camera"])
    camera = pub.tracks["camera"]
    fake = await attach(room)
    await tell(room, fake, {"type": "want", "index": camera.index, "layers": [0]})
    packets = {seq: await publish_packet(room, pub, "camera", seq) for seq in range(1000, 1005)}
    fake.media.clear()

    await tell(room, fake, {"type": "nack", "index": camera.index, "layer": 0, "sequences": [1002]})
    assert fake.media == [(camera.index, 0, packets[1002], KIND_RTP)]
    fake.media.clear()

    # Never sent, or the same cache slot as a sent one (1002 + 512): nothing.
    unknown = [999, 1005, 1002 + 512, "1003"]
    await tell(
        room, fake, {"type": "nack", "index": camera.index, "layer": 0, "sequences": unknown}
    )
    await tell(room, fake, {"type": "nack", "index": camera.index, "layer": 1, "sequences": [1002]})
    await tell(room, fake, {"type": "nack", "index": camera.index, "layer": 5, "sequences": [1002]})
    assert fake.media == []


async def test_a_link_keyframe_request_is_throttled_with_the_publishers(room: Room) -> None:
    pub, _ = await join(room, "p_pub", ["camera"])
    camera = pub.tracks["camera"]
    fake = await attach(room)
    await tell(room, fake, {"type": "keyframe", "index": camera.index, "layer": 0})
    assert 0 in camera.throttles


# -- 8: remote tracks asked of their relay -------------------------------------------


async def test_the_first_local_subscriber_asks_the_link_for_the_track(room: Room) -> None:
    viewer, _ = await join(room, "p_viewer", [])
    other, _ = await join(room, "p_other", [])
    fake = await attach(room)
    await remote(room, fake, "r_rita", {"camera": 7})
    cam = room.tracks["TR_r_rita_camera"]
    fake.sent.clear()
    received_before = link_tracks("received")

    sink = subscribe(room, viewer, cam)
    assert fake.of("want") == [{"type": "want", "index": 7, "layers": [0]}]
    # A video subscriber starts at a key frame, asked of the publisher's relay.
    assert fake.of("keyframe") == [{"type": "keyframe", "index": 7, "layer": 0}]
    assert cam.wanted == {0} and link_tracks("received") - received_before == 1

    subscribe(room, other, cam)  # a second subscriber asks nothing more
    assert len(fake.of("want")) == 1

    # The media that comes back reaches the subscribers; a gap on the link is
    # NACKed to the publisher's relay.
    keyframe = rtp(VP8_PT, 500, VP8_KEYFRAME)
    assert is_vp8_keyframe_start(keyframe[12:])
    await room.on_link_media(fake.link, 7, 0, keyframe)
    assert len(sink.packets) == 1
    await room.on_link_media(fake.link, 7, 0, rtp(VP8_PT, 503, VP8_DELTA))
    assert len(sink.packets) == 2
    assert fake.of("nack") == [{"type": "nack", "index": 7, "layer": 0, "sequences": [501, 502]}]

    # Unknown index or payload type: dropped.
    await room.on_link_media(fake.link, 8, 0, rtp(VP8_PT, 504, VP8_DELTA))
    await room.on_link_media(fake.link, 7, 0, rtp(OPUS_PT, 505, VP8_DELTA))
    await room.on_link_media(fake.link, 7, 0, b"\x00" * 8)
    assert len(sink.packets) == 2

    await tell(room, fake, {"type": "untrack", "index": 7})
    assert link_tracks("received") == received_before


async def test_ask_link_for_a_subscriber_added_directly(room: Room) -> None:
    await join(room, "p_viewer", [])
    fake = await attach(room)
    await remote(room, fake, "r_rita", {"microphone": 3})
    mic = room.tracks["TR_r_rita_microphone"]
    fake.sent.clear()
    room._ask_link(mic)
    assert fake.sent == []  # nobody here receives it: nothing asked
    mic.forwarder.add_subscriber(SubscriberOutput(0x77, OPUS_PT, b"", Sink()))
    room._ask_link(mic)
    assert fake.sent == [{"type": "want", "index": 3, "layers": [0]}]


async def test_the_last_local_subscriber_leaving_stops_the_remote_track(room: Room) -> None:
    viewer, _ = await join(room, "p_viewer", [])
    await join(room, "p_stays", [])
    fake = await attach(room)
    await remote(room, fake, "r_rita", {"camera": 7})
    cam = room.tracks["TR_r_rita_camera"]
    subscribe(room, viewer, cam)
    fake.sent.clear()
    await room.leave(viewer.participant_id)
    await asyncio.sleep(0.6)  # a round of layer choices
    assert fake.of("want") == [{"type": "want", "index": 7, "layers": []}]


# -- 10: links ending and replaced --------------------------------------------------


async def test_detach_removes_the_relays_participants_and_tracks(room: Room) -> None:
    _, inbox = await join(room, "p_local", [])
    fake = await attach(room)
    other = await attach(room, "relay-c")
    await remote(room, fake, "r_rita", {"microphone": 1, "camera": 2})
    await remote(room, fake, "r_rob")
    await remote(room, other, "c_cleo", {"microphone": 1})  # same index, other relay
    before = links_open()

    await room.detach_link(fake.link)

    assert set(room.participants) == {"p_local", "c_cleo"}
    assert set(room.tracks) == {"TR_c_cleo_microphone"}
    assert set(room._remote_tracks) == {("relay-c", 1)}
    assert {m["participant_id"] for m in inbox.of("participant_left")} == {"r_rita", "r_rob"}
    assert {m["track_id"] for m in inbox.of("track_unpublished")} == {
        "TR_r_rita_microphone",
        "TR_r_rita_camera",
    }
    assert room.links == {"relay-c": other.link}
    assert links_open() - before == -1
    await room.detach_link(fake.link)  # twice: nothing more
    assert links_open() - before == -1


async def test_detach_stops_sending_this_relays_tracks(room: Room) -> None:
    pub, _ = await join(room, "p_pub", ["camera"])
    camera = pub.tracks["camera"]
    fake = await attach(room)
    sent_before = link_tracks("sent")
    await tell(room, fake, {"type": "want", "index": camera.index, "layers": [0]})
    await room.detach_link(fake.link)
    assert camera.links == {} and link_tracks("sent") == sent_before
    await publish_packet(room, pub, "camera", 1)
    assert fake.media == []


async def test_a_replacement_link_keeps_the_remote_participants(room: Room) -> None:
    viewer, inbox = await join(room, "p_viewer", [])
    old = await attach(room)
    await remote(room, old, "r_rita", {"camera": 7, "microphone": 8})
    cam = room.tracks["TR_r_rita_camera"]
    subscribe(room, viewer, cam)
    before = links_open()

    new = await attach(room)
    await asyncio.sleep(0)  # the old link's close is spawned
    assert old.closes == [False] and old.events is None  # it tells the room nothing more
    assert room.links == {PEER: new.link}
    # The wants go again on the new link, then the snapshot of this side.
    assert new.sent == [
        {"type": "want", "index": 7, "layers": [0]},
        member("p_viewer"),
        {"type": "synced"},
    ]
    assert not inbox.of("participant_left") and not inbox.of("track_unpublished")
    assert room.participants["r_rita"].origin == PEER and set(room._remote_tracks) == {
        (PEER, 7),
        (PEER, 8),
    }

    # The old link's last words are ignored; its end does not drop anybody.
    await tell(room, old, {"type": "left", "participant_id": "r_rita"})
    await room.detach_link(old.link)
    assert "r_rita" in room.participants
    assert links_open() - before == 0  # one more at the attach, one less at the end

    # Media and messages now come over the new link.
    await room.on_link_media(new.link, 7, 0, rtp(VP8_PT, 1, VP8_KEYFRAME))
    assert cam.forwarder.layers[0].packets == 1
    await tell(room, new, {"type": "left", "participant_id": "r_rita"})
    assert "r_rita" not in room.participants


async def test_a_replaced_link_no_longer_gets_this_relays_media(room: Room) -> None:
    pub, _ = await join(room, "p_pub", ["camera"])
    camera = pub.tracks["camera"]
    old = await attach(room)
    sent_before = link_tracks("sent")
    await tell(room, old, {"type": "want", "index": camera.index, "layers": [0]})
    new = await attach(room)
    await room.detach_link(old.link)  # its end, as MeetingLink reports it
    await publish_packet(room, pub, "camera", 1)
    assert old.media == []
    assert link_tracks("sent") == sent_before
    assert new.media == []  # until the new link asks


# -- 11: host actions across relays --------------------------------------------------


async def test_host_actions_on_a_remote_participant_go_to_its_relay(room: Room) -> None:
    _, host_inbox = await join(room, "p_host", [], role="host")
    fake = await attach(room)
    rita = await remote(room, fake, "r_rita", {"microphone": 1})
    mic = rita.tracks["microphone"]
    fake.sent.clear()

    await room.mute_participant("r_rita", "microphone")
    assert fake.sent == [
        {"type": "act", "participant_id": "r_rita", "action": "mute", "source": "microphone"}
    ]
    assert not mic.muted and not mic.held  # its relay mutes it, and says so in `track`
    assert not host_inbox.of("track_muted")

    await room.set_rights("r_rita", {"camera", "microphone"})
    await room.set_role("r_rita", "cohost")
    assert fake.sent[1:] == [
        {"type": "act", "participant_id": "r_rita", "action": "rights",
         "sources": ["camera", "microphone"]},
        {"type": "act", "participant_id": "r_rita", "action": "role", "role": "cohost"},
    ]  # fmt: skip
    assert rita.role == "participant" and not rita.rights

    await room.remove("r_rita")  # its relay follows the meeting's record
    assert "r_rita" in room.participants


async def test_a_remote_hosts_actions_apply_here(room: Room) -> None:
    ann, inbox = await join(room, "p_ann", ["microphone"])
    _, watcher = await join(room, "p_watcher", [])
    mic = ann.tracks["microphone"]
    fake = await attach(room)
    await remote(room, fake, "r_host")
    fake.sent.clear()

    act = {"type": "act", "participant_id": "p_ann", "action": "mute", "source": "microphone"}
    await tell(room, fake, act)
    assert inbox.of("muted_by_host") == [{"type": "muted_by_host", "source": "microphone"}]
    assert mic.muted and mic.held
    assert watcher.of("track_muted") == [
        {"type": "track_muted", "participant_id": "p_ann", "track_id": mic.track_id,
         "muted": True}
    ]  # fmt: skip
    assert [(m["type"], m["muted"]) for m in fake.sent] == [("track", True)]

    await tell(room, fake, {"type": "act", "participant_id": "p_ann", "action": "role",
                            "role": "cohost"})  # fmt: skip
    assert ann.role == "cohost" and fake.of("member") == [member("p_ann", role="cohost")]
    await tell(room, fake, {"type": "act", "participant_id": "p_ann", "action": "rights",
                            "sources": ["camera"]})  # fmt: skip
    assert ann.rights == {"camera"} and "microphone" not in ann.tracks
