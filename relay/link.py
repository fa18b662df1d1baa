"""One meeting's link between this relay and another relay of the meeting.

Control messages are JSON, sealed (relay/link_crypto.py) and carried by the gRPC
stream the two relays authenticated each other on (relay/links.py): ordered and
reliable, for what must not be lost (roster, tracks, key messages). Media travels
as sealed UDP datagrams over the relay's LinkSocket, so a lost packet delays
nothing behind it. A probe each second gives the link's round-trip time and loss,
and tells a silent peer (a dead relay, a cut network) from a quiet one.

The link does not know what a meeting is: it hands what arrives to its `LinkEvents`
(the room) and sends what the room gives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from conclave.tasks import spawn
from protos.link_pb2 import LinkFrame
from relay import metrics
from relay.link_crypto import (
    ControlOpener,
    ControlSealer,
    LinkAuthError,
    LinkKeys,
    MediaOpener,
    MediaSealer,
)
from relay.link_socket import LinkSocket

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 1.0
SILENCE_TIMEOUT_S = 5.0  # no datagram from the peer this long: the link is dead
MAX_CONTROL_BYTES = 256 * 1024  # one control message, sealed
MEDIA_QUEUE = 4096  # datagrams waiting for the room; beyond, newest are dropped

# Datagram plaintext: kind, track index, layer, then the packet (or probe time).
_prefix = struct.Struct("!BHB")
_probe = struct.Struct("!BHBd")
KIND_RTP = 0
KIND_SENDER_REPORT = 1
KIND_PROBE = 2
KIND_PROBE_ANSWER = 3

_NOT_AUTHENTIC = metrics.LINK_DROPPED.labels(reason="not_authentic")
_MALFORMED = metrics.LINK_DROPPED.labels(reason="malformed")


class LinkClosed(Exception):
    """The link ended (the peer closed it, died, or broke the protocol)."""


class LinkChannel(Protocol):
    """The gRPC stream of a link, from either end."""

    async def write(self, frame: LinkFrame) -> None: ...

    async def read(self) -> LinkFrame | None:
        """The next frame, or None at the end of the stream."""


class LinkEvents(Protocol):
    """What a link reports to its room."""

    async def on_link_message(self, link: MeetingLink, message: dict[str, Any]) -> None: ...

    async def on_link_media(self, link: MeetingLink, index: int, layer: int, data: bytes) -> None:
        """An RTP packet of the peer's track `index`, simulcast `layer`."""

    async def on_link_sender_report(
        self, link: MeetingLink, index: int, layer: int, data: bytes
    ) -> None: ...


def media_endpoint(host: str, port: int, link_id: int) -> dict[str, Any]:
    return {"host": host, "port": port, "id": link_id}


def parse_endpoint(value: Any) -> tuple[tuple[str, int], int]:
    """((host, port), link id) from a peer's endpoint; ValueError when malformed."""
    if not isinstance(value, dict):
        raise ValueError("media endpoint is not an object")
    host, port, link_id = value.get("host"), value.get("port"), value.get("id")
    if not isinstance(host, str) or not isinstance(port, int) or not isinstance(link_id, int):
        raise ValueError("media endpoint fields are missing")
    ipaddress.ip_address(host)  # an address, never a name to resolve
    if not 0 < port < 65536 or not 0 < link_id < 1 << 32:
        raise ValueError("media endpoint out of range")
    return (host, port), link_id


class MeetingLink:
    """Both halves of one link: sealed control messages and media datagrams."""

    def __init__(
        self,
        room_id: str,
        peer_node: str,
        dialer: bool,
        keys: LinkKeys,
        channel: LinkChannel,
        socket: LinkSocket,
    ) -> None:
        self.room_id = room_id
        self.peer_node = peer_node
        self.dialer = dialer  # this relay opened the link
        self.events: LinkEvents | None = None
        self._keys = keys
        self._channel = channel
        self._socket = socket
        self._sealer = ControlSealer(keys.control_send)
        self._opener = ControlOpener(keys.control_receive)
        self._media_opener = MediaOpener(keys.media_receive)
        self._media_sealer: MediaSealer | None = None
        self._peer_address: tuple[str, int] | None = None
        self.receive_id = socket.new_link_id()
        socket.register(self.receive_id, self._on_datagram)
        self._outgoing: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._media: asyncio.Queue[tuple[int, int, int, bytes]] = asyncio.Queue(MEDIA_QUEUE)
        self._tasks: list[asyncio.Task[None]] = []
        self._last_heard = asyncio.get_running_loop().time()
        self.closed = asyncio.Event()
        # The peer has sent everything about its side of the meeting (its "synced"
        # follows its snapshot): a first joiner here may see the whole meeting now.
        self.synced = asyncio.Event()
        self.said_bye = False  # the peer closed it on purpose (no redial)

    # -- setting up --------------------------------------------------------

    def set_peer_media(self, endpoint: Any) -> None:
        """Where the peer receives this link's datagrams; ValueError when malformed."""
        address, link_id = parse_endpoint(endpoint)
        self._peer_address = address
        self._media_sealer = MediaSealer(self._keys.media_send, link_id)

    async def receive_message(self, timeout: float) -> dict[str, Any]:
        """One control message, during the opening exchange (before `start`)."""
        frame = await asyncio.wait_for(self._channel.read(), timeout)
        if frame is None:
            raise LinkClosed("the peer ended the link")
        return self._decode(frame)

    async def send_now(self, message: dict[str, Any]) -> None:
        """Send one control message directly, during the opening exchange."""
        await self._channel.write(LinkFrame(payload=self._sealer.seal(_encode(message))))

    def start(
        self, events: LinkEvents, on_closed: Callable[[MeetingLink], Awaitable[None]]
    ) -> None:
        """Start carrying messages and media both ways; `on_closed` runs once at the end."""
        self.events = events
        self._tasks = [
            spawn(self._read_forever(), "link-read"),
            spawn(self._write_forever(), "link-write"),
            spawn(self._media_forever(), "link-media"),
            spawn(self._probe_forever(), "link-probe"),
        ]
        spawn(self._close_when_done(on_closed), "link-close")

    # -- control -----------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        """Queue a control message; sealed in queue order by the writer."""
        if not self.closed.is_set():
            self._outgoing.put_nowait(_encode(message))

    def _decode(self, frame: LinkFrame) -> dict[str, Any]:
        if len(frame.payload) > MAX_CONTROL_BYTES or frame.signature:
            raise LinkClosed("oversized or unexpected frame")
        try:
            message = json.loads(self._opener.open(frame.payload))
        except LinkAuthError as exc:
            raise LinkClosed(f"control frame refused: {exc.code}") from None
        except ValueError:
            raise LinkClosed("control frame is not JSON") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise LinkClosed("control message has no type")
        return message

    async def _read_forever(self) -> None:
        try:
            while True:
                frame = await self._channel.read()
                if frame is None:
                    return
                message = self._decode(frame)
                if message["type"] == "bye":
                    self.said_bye = True
                    return
                if message["type"] == "synced":
                    self.synced.set()
                    continue
                assert self.events is not None
                try:
                    await self.events.on_link_message(self, message)
                except Exception as exc:  # a message we cannot apply ends nothing else
                    log.debug("link message %s failed: %s", message["type"], exc, exc_info=True)
        except LinkClosed as exc:
            log.info("link to a peer relay closed: %s", exc)
        except Exception as exc:  # the stream broke
            log.debug("link stream failed: %s", exc)
        finally:
            self.closed.set()

    async def _write_forever(self) -> None:
        try:
            while True:
                plain = await self._outgoing.get()
                if plain is None:
                    return
                await self._channel.write(LinkFrame(payload=self._sealer.seal(plain)))
        except Exception as exc:
            log.debug("link write failed: %s", exc)
        finally:
            self.closed.set()

    # -- media -------------------------------------------------------------

    def send_media(self, index: int, layer: int, packet: bytes, kind: int = KIND_RTP) -> None:
        sealer, address = self._media_sealer, self._peer_address
        if sealer is None or address is None:
            return
        self._socket.send(sealer.seal(_prefix.pack(kind, index, layer) + packet), address)

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        plain = self._media_opener.open(data)
        if plain is None:
            _NOT_AUTHENTIC.inc()
            return
        if len(plain) < _prefix.size:
            _MALFORMED.inc()
            return
        loop = asyncio.get_running_loop()
        self._last_heard = loop.time()
        kind, index, layer = _prefix.unpack_from(plain)
        if kind == KIND_PROBE and len(plain) == _probe.size:
            self.send_media(0, 0, plain[_prefix.size :], KIND_PROBE_ANSWER)
        elif kind == KIND_PROBE_ANSWER and len(plain) == _probe.size:
            (sent,) = struct.unpack_from("!d", plain, _prefix.size)
            rtt = loop.time() - sent
            if 0 <= rtt < 60:
                metrics.LINK_RTT.observe(rtt)
        elif kind in (KIND_RTP, KIND_SENDER_REPORT):
            try:
                self._media.put_nowait((kind, index, layer, plain[_prefix.size :]))
            except asyncio.QueueFull:
                metrics.PACKETS_DROPPED.labels(reason="link_backlog").inc()
        else:
            _MALFORMED.inc()

    async def _media_forever(self) -> None:
        """Hands received packets to the room in arrival order (the socket's callback
        cannot wait for the room's sends)."""
        while True:
            kind, index, layer, packet = await self._media.get()
            events = self.events
            if events is None:
                continue
            try:
                if kind == KIND_RTP:
                    await events.on_link_media(self, index, layer, packet)
                else:
                    await events.on_link_sender_report(self, index, layer, packet)
            except Exception as exc:
                metrics.PACKETS_DROPPED.labels(reason="internal_error").inc()
                log.debug("link media handling failed: %s", exc, exc_info=True)

    async def _probe_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PROBE_INTERVAL_S)
            self.send_media(0, 0, struct.pack("!d", loop.time()), KIND_PROBE)
            expected, lost = self._media_opener.take_loss()
            if expected > 0:
                metrics.LINK_LOSS.observe(min(lost / expected, 1.0))
            if loop.time() - self._last_heard > SILENCE_TIMEOUT_S:
                log.info("link to a peer relay went silent")
                self.closed.set()
                return

    # -- closing -------------------------------------------------------------

    async def _close_when_done(self, on_closed: Callable[[MeetingLink], Awaitable[None]]) -> None:
        await self.closed.wait()
        await self._stop_tasks()
        try:
            await on_closed(self)
        except Exception as exc:
            log.debug("link close handling failed: %s", exc, exc_info=True)

    async def close(self, say_bye: bool = True) -> None:
        """End the link on purpose: the peer is told, so it does not dial again."""
        self._socket.unregister(self.receive_id)  # also for a link never started
        if self.closed.is_set():
            return
        if say_bye:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._channel.write(LinkFrame(payload=self._sealer.seal(b'{"type":"bye"}'))),
                    1.0,
                )
        self.closed.set()

    async def _stop_tasks(self) -> None:
        self._socket.unregister(self.receive_id)
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        for task in self._tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()
