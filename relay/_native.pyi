"""The relay's native media path (relay/native/, docs/native.md): SRTP on libsrtp2
(srtp.c) and the media sockets (engine.c)."""

from collections.abc import Callable
from typing import Any, Final, Protocol, final

_Bytes = bytes | bytearray | memoryview

SRTP_AES128_CM_SHA1_80: Final[int]
SRTP_AEAD_AES_128_GCM: Final[int]
SRTP_AEAD_AES_256_GCM: Final[int]
MAX_PACKET: Final[int]
"""Largest plaintext RTP/RTCP packet protected (1500)."""
PROTECT_HEADROOM: Final[int]
"""Bytes a protect buffer needs past the packet (libsrtp's worst-case trailer)."""
LIBSRTP_VERSION: Final[str]

class SrtpError(Exception):
    """An SRTP operation failed or was refused; `status` is libsrtp's srtp_err_status_t."""

    status: int

def key_and_salt_length(profile: int, /) -> int:
    """Master key + salt length of `profile`; ValueError if unsupported."""

@final
class Session:
    """One direction of a leg: outbound protects, inbound unprotects. Policy as aiortc's:
    any SSRC, replay window 1024, repeated transmissions allowed."""

    def __new__(cls, profile: int, key_and_salt: _Bytes, outbound: bool) -> Session: ...
    @property
    def profile(self) -> int: ...
    @property
    def outbound(self) -> bool: ...
    def protect(self, rtp: _Bytes, /) -> bytes: ...
    def protect_rtcp(self, rtcp: _Bytes, /) -> bytes: ...
    def unprotect(self, srtp: _Bytes, /) -> bytes: ...
    def unprotect_rtcp(self, srtcp: _Bytes, /) -> bytes: ...

BATCH: Final[int]
"""Datagrams per recvmmsg/sendmmsg call."""
READ_BUDGET: Final[int]
"""Datagrams one readable() call takes at most before returning to the loop."""

class _DatagramProtocol(Protocol):
    def datagram_received(self, data: bytes, addr: tuple[Any, ...], /) -> None: ...

@final
class Engine:
    """The relay's media sockets: batched I/O, SRTP per leg, upcalls (engine.c)."""

    def __new__(cls) -> Engine: ...
    def add_socket(self, fd: int, protocol: _DatagramProtocol, /) -> None: ...
    def remove_socket(self, fd: int, /) -> None: ...
    def readable(self, fd: int, /) -> None: ...
    def sendto(self, fd: int, data: _Bytes, addr: tuple[Any, ...], /) -> bool: ...
    def open_leg(
        self,
        fd: int,
        remote: tuple[Any, ...],
        profile: int,
        tx_key: _Bytes,
        rx_key: _Bytes,
        on_rtp: Callable[[bytes], object],
        on_rtcp: Callable[[bytes], object],
    ) -> Leg: ...
    @property
    def datagrams_received(self) -> int: ...
    @property
    def datagrams_sent(self) -> int: ...
    @property
    def upcalls(self) -> int: ...
    @property
    def dropped(self) -> dict[str, int]: ...

@final
class Leg:
    """A participant's keyed leg: SRTP both ways to the address ICE selected."""

    def send(self, packet: _Bytes, /) -> bool: ...
    def close(self) -> None: ...
    @property
    def remote(self) -> tuple[Any, ...]: ...
    @property
    def open(self) -> bool: ...
    @property
    def rtp_received(self) -> int: ...
    @property
    def rtcp_received(self) -> int: ...
    @property
    def sent(self) -> int: ...
