"""The relay's UDP socket for media between relays (links, docs/cascading.md).

One socket per relay carries every link's datagrams. The first four bytes of a
datagram name the link its receiver chose (relay/link_crypto.py), so receiving is
one dictionary lookup before decryption; a datagram for no known link is dropped
and counted, never answered.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

from relay import metrics
from relay.link_crypto import media_link_id

log = logging.getLogger(__name__)

# Called with a datagram and the address it came from.
DatagramHandler = Callable[[bytes, tuple[str, int]], None]

_UNKNOWN_LINK = metrics.LINK_DROPPED.labels(reason="unknown_link")
_MALFORMED = metrics.LINK_DROPPED.labels(reason="malformed")
_SENT_PACKETS = metrics.LINK_PACKETS.labels(direction="sent")
_SENT_BYTES = metrics.LINK_BYTES.labels(direction="sent")
_RECEIVED_PACKETS = metrics.LINK_PACKETS.labels(direction="received")
_RECEIVED_BYTES = metrics.LINK_BYTES.labels(direction="received")


class LinkSocket(asyncio.DatagramProtocol):
    """Demultiplexes link datagrams by link id; sends on behalf of every link."""

    def __init__(self) -> None:
        self._handlers: dict[int, DatagramHandler] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self.port = 0

    async def open(self, host: str, port: int = 0) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def register(self, link_id: int, handler: DatagramHandler) -> None:
        self._handlers[link_id] = handler

    def unregister(self, link_id: int) -> None:
        self._handlers.pop(link_id, None)

    def new_link_id(self) -> int:
        """A link id not in use on this socket (random: a stale datagram of an earlier
        link is unlikely to find a later one)."""
        while True:
            candidate = secrets.randbits(32)
            if candidate and candidate not in self._handlers:
                return candidate

    def send(self, datagram: bytes, address: tuple[str, int]) -> None:
        transport = self._transport
        if transport is None:
            return
        transport.sendto(datagram, address)
        _SENT_PACKETS.inc()
        _SENT_BYTES.inc(len(datagram))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        link_id = media_link_id(data)
        if link_id is None:
            _MALFORMED.inc()
            return
        handler = self._handlers.get(link_id)
        if handler is None:
            _UNKNOWN_LINK.inc()
            return
        _RECEIVED_PACKETS.inc()
        _RECEIVED_BYTES.inc(len(data))
        try:
            handler(data, addr)
        except Exception as exc:  # one link's bug must not stop the socket
            log.debug("link datagram handling failed: %s", exc, exc_info=True)

    def error_received(self, exc: Exception) -> None:
        log.debug("link socket error: %s", exc)
