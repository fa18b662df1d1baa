"""The relay's ICE sockets on the native engine (docs/native.md, step 3).

The relay binds each ICE socket itself (conclave/ice.py). With the native path the
socket is registered with `relay._native.Engine`, which reads it in batches, and
aioice's protocol gets a `NativeTransport`: what is not media reaches it through
`datagram_received` as from any datagram transport, and its `sendto` is the
engine's. After aiortc's DTLS handshake, `take_over` gives the leg's SRTP keys to
the engine, which from then on protects and unprotects the leg's media itself.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from aioice.ice import StunProtocol
from aiortc.rtcdtlstransport import RTCDtlsTransport

from conclave.shared_port import SharedTransport
from relay import _native
from relay.native_keys import keys_from_dtls

P = TypeVar("P", bound=asyncio.DatagramProtocol)


class NativeSockets:
    """The engine of one event loop, and the sockets registered with it."""

    def __init__(self) -> None:
        self.engine = _native.Engine()
        self._watched = False

    def endpoint(self, sock: socket.socket, make: Callable[[], P]) -> P:
        """Serve a protocol `make` makes from the bound, non-blocking `sock`, as
        `loop.create_datagram_endpoint(sock=...)` would (conclave.ice.use_endpoint):
        aioice's protocol, or a shared port's demultiplexer."""
        protocol = make()
        transport = NativeTransport(self, sock, protocol)
        self.engine.add_socket(sock.fileno(), protocol)
        if not self._watched:  # the loop watches the engine's epoll, never a socket:
            # uvloop drops the reader of a socket that reports an error (an ICMP
            # port unreachable on a connected one), and this descriptor never does
            asyncio.get_running_loop().add_reader(self.engine.fileno, self.engine.poll)
            self._watched = True
        protocol.connection_made(transport)
        return protocol


class NativeTransport(asyncio.DatagramTransport):
    """The datagram transport aioice sees: sends through the engine, closes the
    socket and tells the protocol, like asyncio's own."""

    def __init__(
        self, sockets: NativeSockets, sock: socket.socket, protocol: asyncio.DatagramProtocol
    ) -> None:
        super().__init__()
        self.sockets = sockets
        self.sock = sock
        self.fd = sock.fileno()
        self._protocol = protocol
        self._closing = False
        self._sockname = sock.getsockname()

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing or addr is None:
            return
        self.sockets.engine.sendto(self.fd, data, addr)  # a failed send is counted there

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._sockname
        if name == "socket":
            return self.sock
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.sockets.engine.remove_socket(self.fd)
        self.sock.close()
        asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.DatagramProtocol)
        self._protocol = protocol


def take_over(
    dtls: RTCDtlsTransport,
    on_rtp: Callable[[bytes], object],
    on_rtcp: Callable[[bytes], object],
) -> _native.Leg | None:
    """Give a leg whose DTLS handshake just finished to the engine: its SRTP keys,
    the socket and remote address ICE selected. From then on the engine unprotects
    what arrives (RTP to `on_rtp`, RTCP to `on_rtcp`) and `dtls._send_rtp` goes
    through the leg. None when the selected pair is not on a native socket (a
    relayed candidate, or the native path is off): the leg stays aiortc's."""
    connection = dtls.transport._connection
    pair = connection._nominated.get(1)
    if pair is None:
        return None
    protocol: StunProtocol = pair.protocol
    transport = getattr(protocol, "transport", None)
    shared = transport if isinstance(transport, SharedTransport) else None
    if shared is not None:  # the engine tells the socket's legs apart by address
        transport = None if shared.is_closing() else shared.port.transport
    if not isinstance(transport, NativeTransport) or transport.is_closing() or dtls._ssl is None:
        return None
    keys = keys_from_dtls(dtls._ssl, dtls._role)
    # A socket of the participant's own is connected to the selected address: the
    # kernel routes it once, not per datagram (docs/native.md).
    leg = transport.sockets.engine.open_leg(
        transport.fd, pair.remote_addr, keys.profile, keys.tx_key_and_salt,
        keys.rx_key_and_salt, on_rtp, on_rtcp, connect=shared is None,
    )  # fmt: skip
    if shared is not None:  # the socket stays: the leg goes with the connection
        shared.on_close.append(leg.close)

    async def send_rtp(data: bytes) -> None:
        if not leg.open:
            raise ConnectionError("the leg is closed")
        leg.send(data)  # a packet the engine cannot send is dropped and counted

    dtls._send_rtp = send_rtp  # type: ignore[method-assign]
    return leg


def run_now(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a handler coroutine from an engine upcall, where no task exists: step
    it now, and only if it waits for a future, resume it when that future is done
    (what a Task does, without making one per packet). On the native path the
    relay's packet handlers never wait: their sends go through the engine."""
    try:
        waited = coroutine.send(None)
    except StopIteration:
        return
    waited._asyncio_future_blocking = False
    waited.add_done_callback(lambda _: run_now(coroutine))
