"""One UDP socket for every peer connection's ICE and media, per local address.

With a socket per participant a relay needs a port per participant: a firewall
rule or Kubernetes hostPort range as wide as its capacity, and one system call
per participant for every packet it sends to many. A shared port is what
LiveKit's `rtc.udp_port` and mediasoup's WebRtcServer offer: one port, and the
relay tells participants apart itself. `conclave.ice.use_shared_port` turns it on.

aioice keeps doing ICE: each connection gets its own `StunProtocol`, whose
transport (`SharedTransport`) sends on the shared socket. What arrives goes to a
connection by the rules below, in `SharedPort.datagram_received`:

- a STUN request (a check, or consent) names the receiving connection in its
  USERNAME ("ours:theirs", RFC 8445 §7.2.2): it goes there, and its source
  address is the connection's from then on;
- a STUN response goes to the connection whose transaction it answers (several
  connections may ask one STUN server);
- anything else (DTLS, media, indications) goes to the connection that owns its
  source address: one that sent a check from it, or that we sent to first;
- from an address no connection owns, it is dropped and counted (`unrouted`).

On the native path the engine finds a keyed leg by its remote address itself
(relay/native/engine.c), so media never reaches this demultiplexer.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from typing import Any, cast

from aioice.ice import Connection, StunProtocol
from aioice.utils import random_string

from conclave.consent import ConsentProtocol

log = logging.getLogger(__name__)

_MAGIC_COOKIE = b"\x21\x12\xa4\x42"
_USERNAME = 0x0006
_HEADER = 20

Address = tuple[str, int]


def stun_class(data: bytes) -> int | None:
    """0 request, 1 indication, 2 success response, 3 error response (RFC 5389 §6);
    None when `data` is not a STUN message."""
    if len(data) < _HEADER or data[0] > 3 or data[4:8] != _MAGIC_COOKIE:
        return None
    message_type = data[0] << 8 | data[1]
    return (message_type >> 7 & 0b10) | (message_type >> 4 & 0b01)


def local_ufrag(data: bytes) -> str | None:
    """The receiver's ufrag from a STUN request's USERNAME ("ours:theirs"); None
    when it has none or the attributes are malformed."""
    end = min(len(data), _HEADER + (data[2] << 8 | data[3]))
    position = _HEADER
    while position + 4 <= end:
        kind, length = struct.unpack_from("!HH", data, position)
        value = data[position + 4 : position + 4 + length]
        if len(value) < length:
            return None
        if kind == _USERNAME:
            ours, colon, _ = value.partition(b":")
            return ours.decode("ascii", "replace") if colon else None
        position += 4 + (length + 3) // 4 * 4
    return None


class SharedPort(asyncio.DatagramProtocol):
    """The demultiplexer on one shared socket (the socket's datagram protocol)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.loop = asyncio.get_running_loop()
        self.by_ufrag: dict[str, StunProtocol] = {}
        self.by_address: dict[Address, StunProtocol] = {}
        self.attached: set[StunProtocol] = set()
        self.unrouted = 0

    @property
    def closed(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        for protocol in list(self.attached):
            protocol.transport.close()

    def attach(self, connection: Connection) -> StunProtocol:
        """A protocol for `connection` on this socket, as aioice would make one on
        a socket of its own."""
        # aioice's ufrag has 24 bits of randomness: among a thousand connections on
        # one port two may draw the same. Before anything has read it (gathering
        # comes before the local description), a connection that would share one
        # draws again, so a check's USERNAME always names one connection.
        while connection.local_username in self.by_ufrag:
            connection._local_username = random_string(len(connection.local_username))
        protocol = ConsentProtocol(connection)
        protocol.connection_made(SharedTransport(self, protocol))
        self.attached.add(protocol)
        self.by_ufrag[connection.local_username] = protocol
        return protocol

    def detach(self, protocol: StunProtocol) -> None:
        """Forget `protocol`, its ufrag and the addresses it owns."""
        self.attached.discard(protocol)
        if self.by_ufrag.get(protocol.receiver.local_username) is protocol:
            del self.by_ufrag[protocol.receiver.local_username]
        for address in _shared(protocol).addresses:
            if self.by_address.get(address) is protocol:
                del self.by_address[address]

    def claim(self, address: Address, protocol: StunProtocol) -> None:
        """`address` belongs to `protocol` unless another connection owns it."""
        if address not in self.by_address:
            self._own(address, protocol)

    def _own(self, address: Address, protocol: StunProtocol) -> None:
        """`address` belongs to `protocol` from now on."""
        previous = self.by_address.get(address)
        if previous is protocol:
            return
        if previous is not None:
            _shared(previous).addresses.discard(address)
        self.by_address[address] = protocol
        _shared(protocol).addresses.add(address)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        address: Address = (addr[0], addr[1])
        protocol = self._receiver(data, address)
        if protocol is None:
            self.unrouted += 1
            log.debug("shared port: a datagram from %s no connection owns", address)
            return
        protocol.datagram_received(data, address)

    def _receiver(self, data: bytes, address: Address) -> StunProtocol | None:
        kind = stun_class(data)
        if kind == 0:
            ufrag = local_ufrag(data)
            protocol = self.by_ufrag.get(ufrag) if ufrag is not None else None
            if protocol is not None:
                self._own(address, protocol)
                return protocol
        owner = self.by_address.get(address)
        if kind in (2, 3):
            transaction = data[8:_HEADER]
            if owner is None or not _awaits(owner, transaction):
                return next((p for p in self.attached if _awaits(p, transaction)), owner)
        return owner


def _awaits(protocol: StunProtocol, transaction: bytes) -> bool:
    """Whether `protocol` waits for the answer to `transaction`: one of aioice's
    transactions, or the last consent check of its own (conclave/consent.py)."""
    return transaction in protocol.transactions or (
        isinstance(protocol, ConsentProtocol) and transaction == protocol.consent_sent
    )


def _shared(protocol: StunProtocol) -> SharedTransport:
    transport = protocol.transport
    assert isinstance(transport, SharedTransport)
    return transport


class SharedTransport(asyncio.DatagramTransport):
    """One connection's view of a shared socket: sends on it, and closing it
    detaches the connection without closing the socket."""

    def __init__(self, port: SharedPort, protocol: StunProtocol) -> None:
        super().__init__()
        self.port = port
        self._protocol = protocol
        self.addresses: set[Address] = set()
        self.on_close: list[Callable[[], object]] = []  # e.g. the engine's leg, closed too
        self._closing = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        base = self.port.transport
        if self._closing or addr is None or base is None:
            return
        address: Address = (addr[0], addr[1])
        if address not in self.addresses:
            self.port.claim(address, self._protocol)
        base.sendto(data, addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        base = self.port.transport
        return default if base is None else base.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.port.detach(self._protocol)
        for callback in self.on_close:
            callback()
        self.port.loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, StunProtocol)
        self._protocol = protocol
