"""Meeting security end to end (issue 5): waiting room, publish rights, removal, lock,
suspension, and no way onto a meeting's media without being on its roster.

A `conclave dev` cluster (real etcd, control plane and two relays); hosts act over
gRPC with the host key or over signalling; joiners are raw WebSocket clients where
the test must see every message, and SDK sessions where media must flow.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio

from client.errors import ConclaveError
from client.sdk import Session
from conclave.processes import free_port, free_port_run
from conclave.tls import channel_credentials, client_ssl_context, find_ca_file
from protos import rooms_pb2, rooms_pb2_grpc
from protos.grant_pb2 import JoinGrant, SignedGrant
from tests.api_key import api_metadata
from tests.dev_cluster import clients_of, start_dev
from tests.integration.relay_harness import wait_for_frames

CONCLAVE = [sys.executable, "-m", "conclave.cli"]
pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Cluster:
    control_plane: str
    stub: Any  # rooms_pb2_grpc.RoomServiceStub (generated without annotations)
    http_ports: list[int]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster() -> AsyncIterator[Cluster]:
    http_port = free_port_run(2)
    dev = await start_dev(
        "--relays", "2", "--http-port", str(http_port), "--grpc-port", str(free_port())
    )  # fmt: skip
    with clients_of(dev):  # Sessions, and Raw below, find the dev CA
        channel = grpc.aio.secure_channel(dev.control_plane, channel_credentials(dev.ca))
        stub: Any = rooms_pb2_grpc.RoomServiceStub(channel)  # type: ignore[no-untyped-call]
        yield Cluster(dev.control_plane, stub, [http_port + 1, http_port + 2])
        await channel.close()
    await dev.stop()


@dataclass
class Meeting:
    room_id: str
    host_key: str
    passcode: str


async def new_meeting(cluster: Cluster, **settings: Any) -> Meeting:
    room = await cluster.stub.CreateRoom(
        rooms_pb2.CreateRoomRequest(name="sec", **settings), metadata=api_metadata()
    )
    return Meeting(room.room_id, room.host_key, room.passcode)


async def join_room(
    cluster: Cluster, meeting: Meeting, name: str, *, host: bool = False, publish: bool = True
) -> rooms_pb2.JoinRoomResponse:
    request = rooms_pb2.JoinRoomRequest(
        room_id=meeting.room_id, display_name=name, publish=publish, passcode=meeting.passcode
    )
    if host:
        request.host_key = meeting.host_key
    response: rooms_pb2.JoinRoomResponse = await cluster.stub.JoinRoom(request)
    return response


async def refused_join(cluster: Cluster, meeting: Meeting, name: str) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await join_room(cluster, meeting, name)
    code: grpc.StatusCode = info.value.code()
    return code


@dataclass
class Raw:
    """A signalling connection that keeps every message it receives."""

    ws: aiohttp.ClientWebSocketResponse
    http: aiohttp.ClientSession
    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    _reader: asyncio.Task[None] | None = None

    @classmethod
    async def join(
        cls, response: rooms_pb2.JoinRoomResponse, publish: list[str] | None = None, **extra: Any
    ) -> Raw:
        return await cls.connect(
            response.signal_url,
            {"type": "join", "grant": response.grant, "publish": publish or [], **extra},
        )

    @classmethod
    async def connect(cls, url: str, *messages: dict[str, Any]) -> Raw:
        connector = aiohttp.TCPConnector(ssl=client_ssl_context(find_ca_file()))
        http = aiohttp.ClientSession(connector=connector)
        raw = cls(await http.ws_connect(url), http)
        raw._reader = asyncio.create_task(raw._read())
        for message in messages:
            await raw.send(message)
        return raw

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(message))

    async def _read(self) -> None:
        """Until the close; its code from the relay's close frame, as the SDK takes
        it (client/session.py: over TLS aiohttp may report 1006 instead)."""
        while (frame := await self.ws.receive()).type == aiohttp.WSMsgType.TEXT:
            self.messages.append(json.loads(frame.data))
        closed_by_relay = frame.type == aiohttp.WSMsgType.CLOSE
        self.close_code = frame.data if closed_by_relay else self.ws.close_code

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    async def wait_for(
        self, kind: str, where: Callable[[dict[str, Any]], bool] = lambda m: True
    ) -> dict[str, Any]:
        async with asyncio.timeout(10):
            while True:
                found = [m for m in self.of(kind) if where(m)]
                if found:
                    return found[-1]
                if self._reader is not None and self._reader.done():
                    raise AssertionError(
                        f"closed ({self.close_code}) before {kind}: {self.messages}"
                    )
                await asyncio.sleep(0.05)

    async def closed(self) -> int | None:
        assert self._reader is not None
        await asyncio.wait_for(self._reader, 10)
        return self.close_code

    async def close(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            await self._reader
        await self.http.close()


async def test_waiting_room_shows_nothing_until_admitted_and_denied_never_see_anything(
    cluster: Cluster,
) -> None:
    meeting = await new_meeting(cluster, waiting_room=True)
    assert meeting.passcode == ""  # a waiting room needs no passcode
    host_join = await join_room(cluster, meeting, "host", host=True)
    host = await Raw.join(host_join, ["microphone"])
    await host.wait_for("joined")
    await host.send({"type": "e2ee_binding", "binding": "aG9zdA=="})
    guest_join = await join_room(cluster, meeting, "guest")
    guest = await Raw.join(guest_join, ["microphone"])
    await guest.wait_for("waiting")
    listed = await host.wait_for("waiting_list", lambda m: len(m["participants"]) == 1)
    assert listed["participants"] == [
        {"participant_id": guest_join.participant_id, "name": "guest"}
    ]
    # A waiting joiner may not act in the meeting: not even post a key binding.
    await guest.send({"type": "e2ee_binding", "binding": "Z3Vlc3Q="})
    await guest.send({"type": "video_size", "track_id": "TR_x", "width": 1, "height": 1})
    await guest.wait_for("error", lambda m: m["code"] == "waiting")
    # Nor see the waiting list's admit, or admit itself.
    await guest.send({"type": "admit", "all": True})
    await asyncio.sleep(0.5)
    host_view = await cluster.stub.ListParticipants(
        rooms_pb2.ListParticipantsRequest(room_id=meeting.room_id, host_key=meeting.host_key)
    )
    waiting = [p.participant_id for p in host_view.participants if p.waiting]
    assert waiting == [guest_join.participant_id]
    assert {m["type"] for m in guest.messages} == {"waiting", "error"}, guest.messages

    intruder_join = await join_room(cluster, meeting, "intruder")
    intruder = await Raw.join(intruder_join, ["microphone"])
    await intruder.wait_for("waiting")
    await cluster.stub.DenyParticipants(
        rooms_pb2.DenyParticipantsRequest(
            room_id=meeting.room_id,
            host_key=meeting.host_key,
            participant_ids=[intruder_join.participant_id],
        )
    )
    assert await intruder.closed() == 4007
    assert {m["type"] for m in intruder.messages} == {"waiting", "room_closed"}

    await host.send({"type": "admit", "participant_ids": [guest_join.participant_id]})
    joined = await guest.wait_for("joined")
    assert [p["name"] for p in joined["roster"]] == ["host"]
    await guest.wait_for("offer")
    # Its binding from the waiting room was refused; only now does it become a member.
    assert [m["participant_id"] for m in host.of("e2ee_members")[-1]["members"]] == [
        host_join.participant_id
    ]
    await guest.send({"type": "e2ee_binding", "binding": "Z3Vlc3Q="})
    members = await guest.wait_for("e2ee_members")
    assert [m["participant_id"] for m in members["members"]] == [
        host_join.participant_id,
        guest_join.participant_id,
    ]
    arrived = await host.wait_for("participant_joined")
    assert arrived["participant"]["participant_id"] == guest_join.participant_id
    for raw in (host, guest, intruder):
        await raw.close()
    audit = await cluster.stub.GetAuditLog(
        rooms_pb2.GetAuditLogRequest(room_id=meeting.room_id, host_key=meeting.host_key)
    )
    actions = [(e.action, e.target) for e in audit.entries]
    assert ("deny", intruder_join.participant_id) in actions
    assert ("admit", guest_join.participant_id) in actions


async def test_screen_sharing_needs_the_right_which_the_host_can_give(cluster: Cluster) -> None:
    meeting = await new_meeting(cluster)
    host = await Raw.join(await join_room(cluster, meeting, "host", host=True))
    await host.wait_for("joined")
    member_join = await join_room(cluster, meeting, "member")
    # Asking for the screen at join is refused outright, like any source not granted.
    early = await Raw.join(member_join, ["screen"])
    assert await early.closed() == 4003
    assert early.of("error")[0]["code"] == "not_allowed"
    await early.close()

    member_join = await join_room(cluster, meeting, "member")
    member = await Raw.join(member_join)
    joined = await member.wait_for("joined")
    assert joined["publish_rights"] == ["camera", "microphone"]
    await member.send({"type": "publish", "source": "screen"})
    refusal = await member.wait_for("error")
    assert refusal["code"] == "not_allowed"
    await asyncio.sleep(0.3)
    assert not host.of("track_published") and not member.of("offer")

    await cluster.stub.SetPublishRights(
        rooms_pb2.SetPublishRightsRequest(
            room_id=meeting.room_id,
            host_key=meeting.host_key,
            participant_id=member_join.participant_id,
            sources=["microphone", "camera", "screen"],
        )
    )
    rights = await member.wait_for("publish_rights")
    assert rights["sources"] == ["camera", "microphone", "screen"]
    await member.send({"type": "publish", "source": "screen"})
    offer = await member.wait_for("offer")
    assert list(offer["publish"]) == ["screen"]
    published = await host.wait_for("track_published")
    assert published["track"]["source"] == "screen"
    assert published["participant_id"] == member_join.participant_id

    # Taking the right back stops the share for everyone.
    await host.send(
        {"type": "set_publish_rights", "participant_id": member_join.participant_id, "sources": []}
    )
    stopped = await member.wait_for("unpublished")
    assert stopped == {"type": "unpublished", "source": "screen", "reason": "rights"}
    await host.wait_for("track_unpublished")
    await host.close()
    await member.close()


async def test_removed_participant_cannot_come_back_and_a_lock_refuses_even_valid_grants(
    cluster: Cluster,
) -> None:
    meeting = await new_meeting(cluster)
    host = await Raw.join(await join_room(cluster, meeting, "host", host=True))
    await host.wait_for("joined")
    pest_join = await join_room(cluster, meeting, "pest")
    pest = await Raw.join(pest_join)
    await pest.wait_for("joined")
    spare_grant = await join_room(cluster, meeting, "pest again")  # taken before the removal
    await cluster.stub.RemoveParticipant(
        rooms_pb2.ParticipantRequest(
            room_id=meeting.room_id,
            host_key=meeting.host_key,
            participant_id=pest_join.participant_id,
        )
    )
    assert await pest.closed() == 4006
    assert pest.of("room_closed")[-1]["reason"] == "removed"
    await host.wait_for("participant_left")
    # Its address is refused a new grant, and the grant it holds is refused too.
    assert await refused_join(cluster, meeting, "pest") == grpc.StatusCode.PERMISSION_DENIED
    again = await Raw.join(spare_grant)
    assert await again.closed() == 4006
    await again.close()
    # The host, from the same address, is not affected by the removal.
    host_again = await join_room(cluster, meeting, "host 2", host=True)
    assert host_again.grant
    await host.close()
    await pest.close()

    # Lock: a grant issued before the lock is refused after it; hosts still enter.
    locked = await new_meeting(cluster)
    early_grant = await join_room(cluster, locked, "early")
    await cluster.stub.UpdateRoom(
        rooms_pb2.UpdateRoomRequest(room_id=locked.room_id, host_key=locked.host_key, locked=True)
    )
    assert await refused_join(cluster, locked, "late") == grpc.StatusCode.FAILED_PRECONDITION
    late = await Raw.join(early_grant)
    assert await late.closed() == 4005
    await late.close()
    host = await Raw.join(await join_room(cluster, locked, "host", host=True))
    assert (await host.wait_for("joined"))["room"]["locked"] is True
    await cluster.stub.UpdateRoom(
        rooms_pb2.UpdateRoomRequest(room_id=locked.room_id, host_key=locked.host_key, locked=False)
    )
    await host.wait_for("room_updated", lambda m: m["room"]["locked"] is False)
    guest = await Raw.join(await join_room(cluster, locked, "guest"))
    await guest.wait_for("joined")
    await guest.close()
    await host.close()
    audit = await cluster.stub.GetAuditLog(
        rooms_pb2.GetAuditLogRequest(room_id=locked.room_id, host_key=locked.host_key)
    )
    assert [e.action for e in audit.entries] == ["create", "lock", "unlock"]


async def test_no_way_onto_a_meetings_media_without_being_on_its_roster(cluster: Cluster) -> None:
    """Stolen grants, grants for another node, replays and crafted signalling: none
    of them gets an m-line carrying the meeting's media to anybody off its roster."""
    meeting = await new_meeting(cluster)
    publisher_join = await join_room(cluster, meeting, "publisher")
    publisher = Session(publisher_join, "publisher", ["audio", "video"])
    await publisher.start()
    watcher = await Raw.join(await join_room(cluster, meeting, "watcher", host=True))
    joined = await watcher.wait_for("joined")
    track_ids = {t["track_id"] for p in joined["roster"] for t in p["tracks"]}
    assert len(track_ids) == 2
    home = publisher_join.signal_url
    ports = {int(home.rsplit(":", 1)[1].split("/")[0])}
    other_relays = [
        u for u in relay_urls(cluster) if int(u.rsplit(":", 1)[1].split("/")[0]) not in ports
    ]
    attempts: list[Raw] = []
    try:
        # A grant for another meeting gets that meeting, where the roster shows it.
        other = await new_meeting(cluster)
        stolen = await Raw.join(await join_room(cluster, other, "thief"), room_id=meeting.room_id)
        attempts.append(stolen)
        joined = await stolen.wait_for("joined")
        assert joined["room_id"] == other.room_id and joined["roster"] == []
        # A grant for this meeting's node, presented to another relay.
        wrong_node_grant = await join_room(cluster, meeting, "elsewhere")
        elsewhere = await Raw.connect(
            other_relays[0], {"type": "join", "grant": wrong_node_grant.grant, "publish": []}
        )
        attempts.append(elsewhere)
        assert await elsewhere.closed() == 4001
        assert elsewhere.of("error")[0]["code"] == "grant_wrong_node"
        # The publisher's own grant, replayed.
        replay = await Raw.join(publisher_join)
        attempts.append(replay)
        assert await replay.closed() == 4001
        assert replay.of("error")[0]["code"] == "grant_replayed"
        # A grant altered to name this meeting no longer verifies.
        other_grant = await join_room(cluster, other, "forger")
        forged = await Raw.connect(
            home,
            {"type": "join", "grant": retarget(other_grant.grant, meeting), "publish": []},
        )
        attempts.append(forged)
        assert await forged.closed() == 4001
        assert forged.of("error")[0]["code"] == "grant_bad_signature"
        # Crafted messages without a join, naming the meeting's tracks and people.
        crafted = await Raw.connect(
            home,
            {"type": "video_size", "track_id": sorted(track_ids)[0], "width": 640, "height": 360},
            {"type": "answer", "sdp": "v=0\r\n"},
            {"type": "e2ee_key", "to": publisher_join.participant_id, "message": "a2V5"},
            {"type": "admit", "all": True},
            {"type": "publish", "source": "screen"},
        )
        attempts.append(crafted)
        await asyncio.sleep(1.0)
        assert [m.get("code") for m in crafted.messages] == ["not_joined"] * 5
        # The thief, joined to its own meeting, asks for this meeting's track.
        await stolen.send(
            {"type": "video_size", "track_id": sorted(track_ids)[0], "width": 640, "height": 360}
        )
        assert (await stolen.wait_for("error"))["code"] == "unknown_track"
        await asyncio.sleep(1.0)
        for attempt in attempts:
            offered = {s["track_id"] for m in attempt.of("offer") for s in m["streams"]}
            assert not offered & track_ids, attempt.messages
        # And the meeting's roster never changed: only the watcher saw the publisher.
        roster = await cluster.stub.ListParticipants(
            rooms_pb2.ListParticipantsRequest(room_id=meeting.room_id, host_key=meeting.host_key)
        )
        assert sorted(p.display_name for p in roster.participants) == ["publisher", "watcher"]
    finally:
        for attempt in attempts:
            await attempt.close()
        await watcher.close()
        await publisher.leave()


def relay_metrics(port: int) -> str:
    """The relay's non-zero conclave_ metrics, to explain a failure."""
    context = client_ssl_context(find_ca_file())
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=context) as page:
        text = page.read().decode()
    return "\n".join(
        line for line in text.splitlines() if line.startswith("conclave_") and " 0.0" not in line
    )


def relay_urls(cluster: Cluster) -> list[str]:
    return [f"wss://127.0.0.1:{port}/ws" for port in cluster.http_ports]


def retarget(token: str, meeting: Meeting) -> str:
    """The grant with its room id replaced (signature kept): a forgery."""
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    envelope = SignedGrant.FromString(raw)
    grant = JoinGrant.FromString(envelope.grant)
    grant.room_id = meeting.room_id
    envelope.grant = grant.SerializeToString()
    return base64.urlsafe_b64encode(envelope.SerializeToString()).decode().rstrip("=")


async def conclave_cli(cluster: Cluster, *args: str) -> Any:
    """One `conclave` command against the cluster, its JSON output."""
    process = await asyncio.create_subprocess_exec(
        *CONCLAVE, *args, "--control-plane", cluster.control_plane, "--json",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return json.loads(out)


async def test_admitted_guest_gets_media_shares_its_screen_once_allowed_and_suspension_stops_it(
    cluster: Cluster,
) -> None:
    """The SDK and CLI over the real path: waiting, admission by the host over
    signalling, encrypted media, a screen share refused then allowed, suspension."""
    meeting = await new_meeting(cluster, waiting_room=True)
    host = Session(await join_room(cluster, meeting, "host", host=True), "host", ["audio", "video"])
    await host.start()
    guest = Session(await join_room(cluster, meeting, "guest"), "guest", ["audio"])
    guest_start = asyncio.create_task(guest.start())
    try:
        async with asyncio.timeout(10):
            while not host.waiting_list:
                await asyncio.sleep(0.05)
        assert guest.waiting and not guest.roster and not guest.e2ee_members
        [(guest_id, name)] = host.waiting_list
        assert name == "guest"
        await host.admit([guest_id])
        await asyncio.wait_for(guest_start, 10)
        await wait_for_frames(guest, "host", 15)
        assert guest.role == "participant"

        with pytest.raises(ConclaveError) as refused:
            await guest.publish_screen()
        assert refused.value.code == "not_allowed"
        await conclave_cli(
            cluster, "room", "allow", meeting.room_id, guest_id, "microphone", "screen",
            "--host-key", meeting.host_key,
        )  # fmt: skip
        async with asyncio.timeout(10):
            while "screen" not in guest.publish_rights:
                await asyncio.sleep(0.05)
        await guest.publish_screen()
        try:
            async with asyncio.timeout(30):
                while host.received_screen_frames(guest_id) < 15:
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(
                f"screen frames {host.received_screen_frames(guest_id)}; host stats "
                f"{host.stats()} streams {host.streams} errors {host.errors}; guest "
                f"publishing {guest.publishing} mids {guest.publish_mids} errors {guest.errors}"
                + "".join(relay_metrics(port) for port in cluster.http_ports)
            ) from None
        assert host.stats()["guest"]["decrypt_failures"] == 0

        await conclave_cli(
            cluster, "room", "suspend", meeting.room_id, "--host-key", meeting.host_key
        )
        async with asyncio.timeout(10):
            while len(guest.unpublished) < 2:
                await asyncio.sleep(0.05)
        assert sorted(guest.unpublished) == [("microphone", "suspended"), ("screen", "suspended")]
        assert await refused_join(cluster, meeting, "late") == grpc.StatusCode.FAILED_PRECONDITION
        frames = host.received_screen_frames(guest_id)
        await asyncio.sleep(1.0)
        assert host.received_screen_frames(guest_id) <= frames + 2  # in flight at most
        await conclave_cli(
            cluster, "room", "suspend", meeting.room_id, "--lift", "--host-key", meeting.host_key
        )
        async with asyncio.timeout(10):
            while guest.room_state.get("suspended") is not False:
                await asyncio.sleep(0.05)
        await guest.publish_screen()
        audit = await conclave_cli(
            cluster, "room", "audit", meeting.room_id, "--host-key", meeting.host_key
        )
        actions = [(e["action"], e["actor"]) for e in audit["entries"]]
        assert actions == [
            ("create", "host-api"),
            ("admit", host.participant_id),
            ("publish_rights", "host-api"),
            ("suspend", "host-api"),
            ("lift_suspension", "host-api"),
        ]
    finally:
        guest_start.cancel()
        await guest.leave()
        await host.leave()


async def test_a_participant_whose_connection_dropped_comes_back_with_its_rejoin_token(
    cluster: Cluster,
) -> None:
    """Past the waiting room and the lock it was already inside; not with a wrong
    token, not after leaving on purpose, not after a removal."""
    meeting = await new_meeting(cluster, waiting_room=True)
    host = await Raw.join(await join_room(cluster, meeting, "host", host=True))
    await host.wait_for("joined")
    first = await join_room(cluster, meeting, "guest")
    guest = await Raw.join(first)
    await guest.wait_for("waiting")
    await host.send({"type": "admit", "participant_ids": [first.participant_id]})
    token = (await guest.wait_for("joined"))["rejoin_token"]
    await host.send({"type": "update_room", "locked": True})
    await host.wait_for("room_updated", lambda m: m["room"]["locked"] is True)
    await guest.ws.close()  # the connection drops (no `leave`)
    await guest.close()

    async def rejoin(participant_id: str, rejoin_token: str) -> rooms_pb2.JoinRoomResponse:
        response: rooms_pb2.JoinRoomResponse = await cluster.stub.JoinRoom(
            rooms_pb2.JoinRoomRequest(
                room_id=meeting.room_id, display_name="guest", publish=True,
                rejoin_participant_id=participant_id, rejoin_token=rejoin_token,
            )
        )  # fmt: skip
        return response

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await rejoin(first.participant_id, "not-the-token")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    second = await rejoin(first.participant_id, token)
    back = await Raw.join(second)
    joined = await back.wait_for("joined")  # no waiting room, no lock
    assert joined["participant_id"] == second.participant_id
    assert not back.of("waiting")

    # Leaving on purpose ends the token: the lock applies again.
    await back.send({"type": "leave"})
    await back.closed()
    await back.close()
    await asyncio.sleep(0.5)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await rejoin(second.participant_id, joined["rejoin_token"])
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # A removed participant's token does not bring it back either.
    await host.send({"type": "update_room", "locked": False})
    await host.wait_for("room_updated", lambda m: m["room"]["locked"] is False)
    third = await Raw.join(await join_room(cluster, meeting, "other"))
    await third.wait_for("waiting")
    listed = await host.wait_for("waiting_list", lambda m: len(m["participants"]) == 1)
    [waiting_id] = [p["participant_id"] for p in listed["participants"]]
    await host.send({"type": "admit", "participant_ids": [waiting_id]})
    third_token = (await third.wait_for("joined"))["rejoin_token"]
    await host.send({"type": "remove", "participant_id": waiting_id})
    assert await third.closed() == 4006
    await third.close()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await rejoin(waiting_id, third_token)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await host.close()


#: every moderator message (docs/signaling.md), as a participant might send it
def moderator_messages(target: str) -> list[dict[str, Any]]:
    return [
        {"type": "admit", "all": True},
        {"type": "deny", "participant_ids": [target]},
        {"type": "remove", "participant_id": target},
        {"type": "mute_participant", "participant_id": target, "source": "microphone"},
        {"type": "set_publish_rights", "participant_id": target, "sources": []},
        {"type": "set_role", "participant_id": target, "role": "cohost"},
        {"type": "update_room", "locked": True},
    ]


async def refusals(raw: Raw, messages: list[dict[str, Any]]) -> list[str]:
    """Send each message; the error code each one got, in order."""
    codes = []
    for message in messages:
        before = len(raw.of("error"))
        await raw.send(message)
        async with asyncio.timeout(10):
            while len(raw.of("error")) == before:
                await asyncio.sleep(0.02)
        codes.append(raw.of("error")[-1]["code"])
    return codes


async def test_a_participant_grant_moderates_nothing_and_a_cohost_only_what_the_docs_say(
    cluster: Cluster,
) -> None:
    """A participant's every moderator message is refused (`not_host`) and changes
    nothing; made a co-host, it may mute, set rights and lock, but cannot make
    co-hosts, remove or demote the host; demoted, it is refused again; a co-host
    once more, it removes a participant."""
    meeting = await new_meeting(cluster)
    host_join = await join_room(cluster, meeting, "host", host=True)
    host = await Raw.join(host_join)
    await host.wait_for("joined")
    raws: dict[str, Raw] = {}
    ids: dict[str, str] = {}
    for name in ("ann", "bob", "cyd"):
        response = await join_room(cluster, meeting, name)
        raws[name], ids[name] = await Raw.join(response), response.participant_id
        await raws[name].wait_for("joined")
    ann, bob, cyd = raws["ann"], raws["bob"], raws["cyd"]
    try:
        # A participant: refused, every time, and nobody notices anything.
        for target in (ids["bob"], host_join.participant_id):
            assert set(await refusals(ann, moderator_messages(target))) == {"not_host"}
        await asyncio.sleep(0.3)
        assert not bob.of("muted_by_host") and not bob.of("publish_rights")
        assert not host.of("room_updated") and not bob.of("room_updated")
        assert not bob.of("room_closed") and not host.of("participant_updated")

        # Made a co-host by the host: it moderates.
        await host.send({"type": "set_role", "participant_id": ids["ann"], "role": "cohost"})
        await ann.wait_for(
            "participant_updated",
            lambda m: (
                m["participant"]["participant_id"] == ids["ann"]
                and m["participant"]["role"] == "cohost"
            ),
        )
        # Past the role check: bob publishes no microphone (a raw connection has no media).
        mute = {"type": "mute_participant", "participant_id": ids["bob"], "source": "microphone"}
        assert await refusals(ann, [mute]) == ["not_published"]
        await ann.send(
            {"type": "set_publish_rights", "participant_id": ids["bob"], "sources": ["camera"]}
        )
        assert (await bob.wait_for("publish_rights"))["sources"] == ["camera"]
        await ann.send({"type": "update_room", "locked": True})
        assert (await host.wait_for("room_updated"))["room"]["locked"] is True
        # ...but makes no co-hosts, and cannot touch the host.
        assert await refusals(
            ann,
            [
                {"type": "set_role", "participant_id": ids["bob"], "role": "cohost"},
                {"type": "set_role", "participant_id": host_join.participant_id,
                 "role": "participant"},
                {"type": "remove", "participant_id": host_join.participant_id},
            ],
        ) == ["not_host", "not_host", "not_allowed"]  # fmt: skip
        assert not host.of("room_closed")

        # Demoted: a participant again.
        await host.send({"type": "set_role", "participant_id": ids["ann"], "role": "participant"})
        await ann.wait_for(
            "participant_updated",
            lambda m: (
                m["participant"]["participant_id"] == ids["ann"]
                and m["participant"]["role"] == "participant"
            ),
        )
        assert set(await refusals(ann, moderator_messages(ids["bob"]))) == {"not_host"}
        assert not bob.of("room_closed")

        # A co-host again, it removes. The removal takes everyone from cyd's address
        # (docs/security.md), here all three on loopback; the host stays.
        def promotions() -> int:
            updates = ann.of("participant_updated")
            return sum(u["participant"]["role"] == "cohost" for u in updates)

        await host.send({"type": "set_role", "participant_id": ids["ann"], "role": "cohost"})
        async with asyncio.timeout(10):
            while promotions() < 2:
                await asyncio.sleep(0.02)
        await ann.send({"type": "remove", "participant_id": ids["cyd"]})
        assert await cyd.closed() == 4006
        await host.wait_for("participant_left", lambda m: m["participant_id"] == ids["cyd"])
        assert not host.of("room_closed")
    finally:
        for raw in (host, *raws.values()):
            await raw.close()
