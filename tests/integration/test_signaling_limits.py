"""Slow and oversized signalling clients at a real relay process (issue 11): a
client that stops reading is closed `too_slow` without holding up its meeting,
and an oversized frame closes only the session that sent it."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from typing import Any

import aiohttp

from relay.signaling import (
    CLOSE_TOO_SLOW,
    MAX_KEY_MESSAGE_CHARS,
    MAX_MESSAGE_BYTES,
    SEND_TIMEOUT_S,
)
from tests.integration.relay_harness import GrantMinter, RelayProcess

SLOW_METRIC = "conclave_signaling_slow_clients_total"
PROMPT_S = 1.0  # how soon a healthy participant must hear of a join or leave


class StalledClient:
    """A WebSocket client on a raw socket with a tiny receive buffer, which reads
    only when told to: everything the relay sends it piles up at the relay."""

    def __init__(self, sock: socket.socket, leftover: bytes) -> None:
        self.sock = sock
        self.buffer = leftover

    @classmethod
    async def connect(cls, port: int) -> StalledClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before the handshake
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        client = cls(sock, b"")
        head = await client._read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return client

    async def _fill(self) -> None:
        chunk = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        if not chunk:
            raise ConnectionError("closed by the relay")
        self.buffer += chunk

    async def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            await self._fill()
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    async def _read_exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            await self._fill()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    async def send_json(self, message: dict[str, Any]) -> None:
        """One masked text frame (RFC 6455 §5.3: clients mask)."""
        payload = json.dumps(message).encode()
        assert len(payload) < 65536
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        header = struct.pack("!BBH", 0x81, 0x80 | 126, len(payload))
        await asyncio.get_running_loop().sock_sendall(self.sock, header + mask + masked)

    async def read_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame; the relay sends them unfragmented."""
        first, second = await self._read_exactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self._read_exactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self._read_exactly(8))
        return first & 0x0F, await self._read_exactly(length)

    async def read_json(self, kind: str) -> dict[str, Any]:
        while True:
            opcode, payload = await self.read_frame()
            assert opcode == 0x1, (opcode, payload[:40])
            message: dict[str, Any] = json.loads(payload)
            if message["type"] == kind:
                return message

    async def read_to_close(self) -> tuple[int, str, list[str]]:
        """Read everything the relay had sent up to its close frame: the close
        code, its reason, and the types of the messages before it."""
        kinds: list[str] = []
        while True:
            opcode, payload = await self.read_frame()
            if opcode == 0x8:
                (code,) = struct.unpack("!H", payload[:2])
                return code, payload[2:].decode(), kinds
            kinds.append(json.loads(payload)["type"])

    def close(self) -> None:
        self.sock.close()


class Watcher:
    """A healthy participant: an aiohttp client that reads everything at once,
    remembering when each message arrived."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.seen: list[tuple[float, dict[str, Any]]] = []

    async def expect(self, kind: str, within: float, **fields: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(within):
            while True:
                frame = await self.ws.receive()
                assert frame.type == aiohttp.WSMsgType.TEXT, frame
                message: dict[str, Any] = json.loads(frame.data)
                self.seen.append((loop.time(), message))
                if message["type"] == kind and all(
                    _field(message, k) == v for k, v in fields.items()
                ):
                    return message

    def left(self, participant_id: str) -> bool:
        return any(
            m["type"] == "participant_left" and m["participant_id"] == participant_id
            for _, m in self.seen
        )


def _field(message: dict[str, Any], name: str) -> Any:
    if name == "joined_id":
        return message.get("participant", {}).get("participant_id")
    return message.get(name)


async def _join_ws(
    http: aiohttp.ClientSession,
    relay: RelayProcess,
    minter: GrantMinter,
    room: str,
    pid: str,
    compress: int = 15,  # aiohttp's default: permessage-deflate
) -> Watcher:
    ws = await http.ws_connect(relay.signal_url, compress=compress)
    watcher = Watcher(ws)
    await ws.send_json({"type": "join", "grant": minter.token(room, pid, relay.node_id)})
    await watcher.expect("joined", 10)
    return watcher


async def _join_stalled(relay: RelayProcess, minter: GrantMinter, room: str) -> StalledClient:
    stalled = await StalledClient.connect(relay.http_port)
    token = minter.token(room, "p_stalled", relay.node_id)
    await stalled.send_json({"type": "join", "grant": token, "publish": []})
    async with asyncio.timeout(10):
        await stalled.read_json("joined")
    return stalled


def _key_message() -> dict[str, Any]:
    """An e2ee_key of the largest size, for p_stalled: incompressible base64."""
    text = base64.b64encode(os.urandom(MAX_KEY_MESSAGE_CHARS * 3 // 4)).decode()
    return {"type": "e2ee_key", "to": "p_stalled", "message": text}


async def test_a_client_that_stops_reading_is_closed_and_holds_up_nobody(
    relay: RelayProcess, minter: GrantMinter
) -> None:
    room = await minter.new_room()
    loop = asyncio.get_running_loop()
    stalled = await _join_stalled(relay, minter, room)  # first in the room's broadcasts
    async with aiohttp.ClientSession() as http:
        healthy = await _join_ws(http, relay, minter, room, "p_healthy")
        # ~650 KiB for a client that reads none of it: past what the relay's
        # socket buffers hold (SEND_BUFFER_BYTES, doubled, and the transport's
        # 64 KiB), so its writer now waits on the socket; well short of the
        # queue's bound. Before issue 11 every broadcast then waited too.
        for _ in range(5):
            await healthy.ws.send_json(_key_message())
        stuffed = loop.time()
        await asyncio.sleep(0.3)  # the relay has written what the socket takes
        delays = []
        for n in range(3):
            pid = f"p_guest{n}"
            started = loop.time()
            guest = await _join_ws(http, relay, minter, room, pid)
            await healthy.expect("participant_joined", PROMPT_S, joined_id=pid)
            delays.append(loop.time() - started)
            await guest.ws.close()
            await healthy.expect("participant_left", PROMPT_S, participant_id=pid)
        assert loop.time() - stuffed < SEND_TIMEOUT_S, "the stalled client is still connected"
        assert not healthy.left("p_stalled")
        assert relay.metric(SLOW_METRIC) == 0
        # Its writer gives up after SEND_TIMEOUT_S on one write; the room hears.
        await healthy.expect("participant_left", SEND_TIMEOUT_S + 3, participant_id="p_stalled")
        dropped_after = loop.time() - stuffed
        assert SEND_TIMEOUT_S - 0.5 < dropped_after < SEND_TIMEOUT_S + 3
        assert relay.metric(SLOW_METRIC) == 1
        # Reading now, it finds what the relay's socket held, then the close.
        async with asyncio.timeout(5):
            code, reason, kinds = await stalled.read_to_close()
        assert (code, reason) == (CLOSE_TOO_SLOW, "too_slow")
        assert kinds[0] == "participant_joined" and "e2ee_key" in kinds, kinds
        assert kinds[-1] == "room_closed" and "participant_joined" not in kinds[1:], kinds
        stalled.close()
        # The meeting goes on.
        late = await _join_ws(http, relay, minter, room, "p_late")
        await healthy.expect("participant_joined", PROMPT_S, joined_id="p_late")
        await late.ws.close()
        await healthy.ws.close()
    print(f"join->participant_joined: {[round(d, 3) for d in delays]} s; too_slow after "
          f"{dropped_after:.2f} s")  # fmt: skip
    assert relay.process is not None and relay.process.returncode is None


async def test_a_backlog_past_the_bound_closes_at_once(
    relay: RelayProcess, minter: GrantMinter
) -> None:
    room = await minter.new_room()
    loop = asyncio.get_running_loop()
    stalled = await _join_stalled(relay, minter, room)
    async with aiohttp.ClientSession() as http:
        healthy = await _join_ws(http, relay, minter, room, "p_healthy")
        # 14 messages of 128 KiB: past what the socket holds plus MAX_QUEUED_BYTES.
        started = loop.time()
        for _ in range(14):
            await healthy.ws.send_json(_key_message())
        await healthy.expect("participant_left", 3, participant_id="p_stalled")
        dropped_after = loop.time() - started
        assert dropped_after < SEND_TIMEOUT_S  # the bound, not the write timeout
        assert relay.metric(SLOW_METRIC) == 1
        await healthy.ws.close()
    stalled.close()
    print(f"too_slow (queue bound) after {dropped_after:.2f} s")


async def test_an_oversized_message_closes_only_its_session(
    relay: RelayProcess, minter: GrantMinter
) -> None:
    room = await minter.new_room()
    async with aiohttp.ClientSession() as http:
        healthy = await _join_ws(http, relay, minter, room, "p_healthy")
        # Uncompressed, so that the frame is as long as the message.
        big = await _join_ws(http, relay, minter, room, "p_big", compress=0)
        await healthy.expect("participant_joined", PROMPT_S, joined_id="p_big")
        # Just under the limit: refused as text that is not JSON; the session stays.
        await big.ws.send_str("x" * (MAX_MESSAGE_BYTES - 1))
        assert (await big.expect("error", 5))["code"] == "malformed"
        # Over it (aiohttp's reader refuses an uncompressed frame of exactly
        # MAX_MESSAGE_BYTES too): closed with 1009, before the relay reads it.
        await big.ws.send_str("x" * (MAX_MESSAGE_BYTES + 1))
        async with asyncio.timeout(5):
            while (await big.ws.receive()).type == aiohttp.WSMsgType.TEXT:
                pass
        assert big.ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        await healthy.expect("participant_left", PROMPT_S, participant_id="p_big")
        # The relay and the rest of the meeting carry on.
        other = await _join_ws(http, relay, minter, room, "p_other")
        await healthy.expect("participant_joined", PROMPT_S, joined_id="p_other")
        await other.ws.close()
        await healthy.ws.close()
    assert relay.process is not None and relay.process.returncode is None
    assert relay.metric(SLOW_METRIC) == 0


async def test_a_disconnect_still_sends_room_closed_before_the_close(
    relay: RelayProcess, minter: GrantMinter
) -> None:
    """`disconnect()` only queues: `room_closed` must still come out first."""
    room = await minter.new_room()
    async with aiohttp.ClientSession() as http:
        host = Watcher(await http.ws_connect(relay.signal_url))
        token = minter.token(room, "p_host", relay.node_id, role="host")
        await host.ws.send_json({"type": "join", "grant": token})
        await host.expect("joined", 10)
        guest = await _join_ws(http, relay, minter, room, "p_guest")
        await host.expect("participant_joined", PROMPT_S, joined_id="p_guest")
        await host.ws.send_json({"type": "remove", "participant_id": "p_guest"})
        closed = await guest.expect("room_closed", 5)
        assert closed["reason"] == "removed"
        async with asyncio.timeout(5):
            frame = await guest.ws.receive()
        assert frame.type == aiohttp.WSMsgType.CLOSE and frame.data == 4006
        await host.expect("participant_left", PROMPT_S, participant_id="p_guest")
        await host.ws.close()
    assert relay.metric(SLOW_METRIC) == 0
