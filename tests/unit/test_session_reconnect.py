"""`Session(rooms=...)` follows its meeting: on `reconnect` or a dropped connection it
asks the control plane again (rejoin token; the lost node as a hint when the relay
vanished without a word) and joins the new relay; final closes end it; it gives up
after `reconnect_timeout`. Stand-in relays speak just enough signalling (`joined`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from aiohttp import WSMsgType, web

from client.errors import ConclaveError
from client.sdk import RoomsClient, Session
from conclave.processes import free_port
from protos import rooms_pb2

ROOM = "room-1"


@dataclass
class StandInRelay:
    """A relay that admits every join, numbering participants `<node>-<n>`."""

    node_id: str
    refuse: str | None = None  # an error code to refuse joins with (closed 4004)
    url: str = ""
    sockets: list[web.WebSocketResponse] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.add_routes([web.get("/ws", self.handle)])
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"ws://127.0.0.1:{port}/ws"

    async def stop(self) -> None:
        for ws in self.sockets:
            await ws.close()
        if self.runner is not None:
            await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        async for frame in ws:
            if frame.type != WSMsgType.TEXT:
                continue
            message = frame.json()
            self.messages.append(message)
            if message["type"] == "join" and self.refuse:
                await ws.send_json({"type": "error", "code": self.refuse, "message": "no"})
                await ws.close(code=4004)
            elif message["type"] == "join":
                pid = f"{self.node_id}-{len(self.sockets)}"
                await ws.send_json(
                    {
                        "type": "joined",
                        "participant_id": pid,
                        "room_id": ROOM,
                        "role": "participant",
                        "publish_rights": [],
                        "room": {},
                        "roster": [],
                        "rejoin_token": f"token-of-{pid}",
                    }
                )
            elif message["type"] == "leave":
                await ws.close()
        return ws

    @property
    def joins(self) -> int:
        return sum(1 for m in self.messages if m["type"] == "join")

    def grant(self) -> rooms_pb2.JoinRoomResponse:
        return rooms_pb2.JoinRoomResponse(
            room_id=ROOM, participant_id="", node_id=self.node_id, signal_url=self.url, grant="g"
        )


class StandInRooms:
    """The control plane: hands out the next relay's grant, records each call."""

    ca = None  # RoomsClient's CA file: the relays here speak plain ws://

    def __init__(self, *relays: StandInRelay) -> None:
        self.relays = list(relays)
        self.calls: list[dict[str, Any]] = []
        self.fail: ConclaveError | None = None

    async def join_room(
        self,
        room_id: str,
        display_name: str,
        publish: bool,
        passcode: str = "",
        host_key: str = "",
        **rejoin: str,
    ) -> rooms_pb2.JoinRoomResponse:
        self.calls.append({"room_id": room_id, "passcode": passcode, **rejoin})
        if self.fail is not None:
            raise self.fail
        return self.relays.pop(0).grant()


@pytest.fixture
async def relays() -> AsyncIterator[dict[str, StandInRelay]]:
    started = {name: StandInRelay(name) for name in ("a", "b", "c")}
    for relay in started.values():
        await relay.start()
    yield started
    for relay in started.values():
        await relay.stop()


async def _session(relay: StandInRelay, rooms: StandInRooms | None, **options: Any) -> Session:
    session = Session(
        relay.grant(),
        "ann",
        [],
        e2ee=False,
        rooms=cast(RoomsClient | None, rooms),  # the part of it a Session uses
        passcode="pw",
        **options,
    )
    await session.start()
    return session


async def _until(condition: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_reconnect_message_moves_the_session_with_its_rejoin_token(
    relays: dict[str, StandInRelay],
) -> None:
    a, b = relays["a"], relays["b"]
    rooms = StandInRooms(b)
    session = await _session(a, rooms)
    try:
        assert session.participant_id == "a-1" and session.node_id == "a"
        await a.sockets[0].send_json({"type": "reconnect", "reason": "node_draining"})
        await _until(lambda: session.reconnects == 1)
        assert rooms.calls == [
            {
                "room_id": ROOM,
                "passcode": "pw",
                "rejoin_participant_id": "a-1",
                "rejoin_token": "token-of-a-1",
                "unreachable_node_id": "",  # the relay spoke: nothing to check
                "region": "",
            }
        ]
        assert session.node_id == "b" and session.participant_id == "b-1"
        assert not session.closed and not session.reconnecting
        await _until(lambda: a.sockets[0].closed)  # the old connection is let go
    finally:
        await session.leave()
    assert session.closed


async def test_a_dropped_connection_names_the_lost_relay_and_retries(
    relays: dict[str, StandInRelay],
) -> None:
    a, b, c = relays["a"], relays["b"], relays["c"]
    c.refuse = "node_draining"  # a stale placement: refused, asked again
    rooms = StandInRooms(c, b)
    session = await _session(a, rooms)
    try:
        await a.sockets[0].close()  # no room_closed: the relay is gone
        await _until(lambda: session.reconnects == 1)
        assert [call["unreachable_node_id"] for call in rooms.calls] == ["a", "a"]
        assert c.joins == 1 and session.node_id == "b" and not session.closed
    finally:
        await session.leave()


async def test_a_final_close_ends_the_session(relays: dict[str, StandInRelay]) -> None:
    a = relays["a"]
    rooms = StandInRooms(relays["b"])
    session = await _session(a, rooms)
    await a.sockets[0].send_json({"type": "room_closed", "reason": "room_ended"})
    await a.sockets[0].close(code=4000)
    await asyncio.wait_for(session.wait_closed(), 10)
    assert session.closed_reason == "room_ended" and rooms.calls == []
    await session.leave()


async def test_it_gives_up_after_the_reconnect_timeout(relays: dict[str, StandInRelay]) -> None:
    a = relays["a"]
    rooms = StandInRooms()
    rooms.fail = ConclaveError("cannot reach the control plane", "UNAVAILABLE")
    session = await _session(a, rooms, reconnect_timeout=0.6)
    await a.sockets[0].close()
    await asyncio.wait_for(session.wait_closed(), 10)
    assert session.closed_reason == "connection_lost"
    assert 2 <= len(rooms.calls) <= 4  # at once, after 0.25 s, after 0.5 s
    await session.leave()


async def test_the_meeting_ending_meanwhile_ends_the_session(
    relays: dict[str, StandInRelay],
) -> None:
    a = relays["a"]
    rooms = StandInRooms()
    rooms.fail = ConclaveError("JoinRoom failed: no meeting (NOT_FOUND)", "NOT_FOUND")
    session = await _session(a, rooms)
    await a.sockets[0].close()
    await asyncio.wait_for(session.wait_closed(), 10)
    assert session.closed_reason == "room_ended" and len(rooms.calls) == 1
    await session.leave()


async def test_without_a_control_plane_a_drop_ends_the_session(
    relays: dict[str, StandInRelay],
) -> None:
    a = relays["a"]
    session = await _session(a, None)
    await a.sockets[0].close()
    await asyncio.wait_for(session.wait_closed(), 10)
    assert session.reconnects == 0 and session.closed_reason is None
    await session.leave()
