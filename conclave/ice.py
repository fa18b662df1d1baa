"""Which local addresses and ports aiortc uses for ICE, and what it advertises.

aioice leaves out 127.0.0.1, which a single-machine cluster needs, and offers
every interface, which a relay behind a firewall must not. Both ends call
`use_host_addresses` once at start-up, before any peer connection exists.

A relay may also need its sockets inside a fixed UDP port range (firewalls,
Kubernetes hostNetwork: `use_port_range`) and may have to advertise another
address than the one it binds (1:1 NAT, like LiveKit's `rtc.node_ip` or
mediasoup's `announcedAddress`: `advertise_address`). aioice binds every host
candidate's socket to port 0 and builds the candidate from that socket's own
address, so both are done by replacing `aioice.ice.Connection
.get_component_candidates` with a version that binds inside the range and names
the advertised address. It is installed by the first setting, and stays: it
also binds every socket so that its datagrams are never fragmented
(`_never_fragment`), with `ConsentProtocol` on it, and replaces
`Connection.query_consent` with conclave/consent.py's. See docs/operations.md.

A relay may instead put every connection on one UDP port per address
(`use_shared_port`, conclave/shared_port.py), like LiveKit's `rtc.udp_port`.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import random
import re
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import aioice.ice
import aioice.turn
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aioice.ice import Connection, StunProtocol

from conclave import consent
from conclave.consent import ConsentProtocol
from conclave.shared_port import SharedPort

log = logging.getLogger(__name__)

ENV_VAR = "CONCLAVE_ICE_ADDRESSES"
MIN_PORT = 1024  # below are privileged ports, which a relay has no business using
MAX_PORT = 65535
_YIELD_EVERY = 256  # bind attempts between two yields to the event loop

_system_host_addresses = aioice.ice.get_host_addresses
_aioice_get_component_candidates = aioice.ice.Connection.get_component_candidates


def use_host_addresses(addresses: list[str] | None, include_loopback: bool = True) -> None:
    """Offer exactly `addresses` (IPv4/IPv6 literals), or, when None, the system's
    addresses plus 127.0.0.1 if `include_loopback`."""

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        if addresses is not None:
            return [a for a in addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]
        found = _system_host_addresses(use_ipv4, use_ipv6)
        if include_loopback and use_ipv4 and "127.0.0.1" not in found:
            found.insert(0, "127.0.0.1")
        return found

    aioice.ice.get_host_addresses = host_addresses


def addresses_from_env() -> list[str] | None:
    """`CONCLAVE_ICE_ADDRESSES=127.0.0.1,::1` restricts candidates (tests, dev)."""
    value = os.environ.get(ENV_VAR, "").strip()
    return [a.strip() for a in value.split(",") if a.strip()] or None


# ----------------------------------------------------------------- port range


class PortRangeExhausted(OSError):
    """Every port of the configured range is in use on an address: the peer
    connection being gathered cannot get a socket (the others are unaffected)."""


@dataclass(frozen=True)
class PortRange:
    """UDP ports `low` to `high`, both included."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not MIN_PORT <= self.low <= self.high <= MAX_PORT:
            raise ValueError(
                f"port range {self.low}-{self.high} must satisfy "
                f"{MIN_PORT} <= LOW <= HIGH <= {MAX_PORT}"
            )

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """`"50000-50100"` -> PortRange(50000, 50100); ValueError with a clear message."""
        match = re.fullmatch(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", text, re.ASCII)
        if match is None:
            raise ValueError(f"{text!r} is not a port range: expected LOW-HIGH, e.g. 50000-50100")
        return cls(int(match[1]), int(match[2]))

    def __len__(self) -> int:
        return self.high - self.low + 1

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"


def parse_advertised_address(text: str) -> str:
    """A unicast IPv4/IPv6 literal in canonical form; ValueError otherwise."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None
    if address.is_unspecified or address.is_multicast:
        raise ValueError(f"{text!r} cannot be advertised: it is not a unicast address")
    return str(address)


P = TypeVar("P", bound=asyncio.DatagramProtocol)


class Endpoint(Protocol):
    """Serves a protocol (made by the factory) from a bound socket; returns it."""

    def __call__(self, sock: socket.socket, make: Callable[[], P]) -> P: ...


@dataclass
class _Settings:
    ports: PortRange | None = None
    advertised: str | None = None
    next_offset: int = 0  # where the next search in `ports` starts (round robin)
    endpoint: Endpoint | None = None  # None: the event loop's datagram endpoint
    shared_port: int | None = None  # None: a socket per connection; 0: any free port
    shared: dict[str, SharedPort] = field(default_factory=dict)  # by bound address


_settings = _Settings()


def use_port_range(ports: PortRange | None) -> None:
    """Bind every ICE host candidate's UDP socket to a free port in `ports`
    (None: any port, aioice's default).

    Each socket takes the next free port, round robin from a random start, so
    ports that other processes hold are skipped and ports freed by closed peer
    connections are reused. When no port of the range is free on an address,
    gathering raises `PortRangeExhausted`. Call at start-up, before any peer
    connection exists.
    """
    _settings.ports = ports
    _settings.next_offset = random.randrange(len(ports)) if ports is not None else 0
    _install()


def advertise_address(address: str | None) -> None:
    """Put `address` into host candidates instead of the address their socket is
    bound to (None: the bound address, aioice's default).

    It applies to sockets of the same IP version as `address`; the socket still
    binds the interface address (`use_host_addresses`), and a 1:1 NAT must forward
    `address`:port to it. Call at start-up, before any peer connection exists.
    """
    _settings.advertised = parse_advertised_address(address) if address is not None else None
    _install()


def use_endpoint(endpoint: Endpoint | None) -> None:
    """Serve every ICE host socket with `endpoint` instead of the event loop's
    datagram transport (the relay's native engine, relay/native_io.py); None: the
    loop's. Call at start-up, before any peer connection exists."""
    _settings.endpoint = endpoint
    _install()


def use_shared_port(port: int | None) -> None:
    """Put every peer connection's host candidate on one UDP socket per address,
    bound to `port` (0: a free port, inside the port range if one is set; None:
    a socket per connection, aioice's way). conclave/shared_port.py tells the
    connections apart. Sockets already open for the previous setting are closed.
    Call at start-up, before any peer connection exists."""
    if port is not None and not (port == 0 or MIN_PORT <= port <= MAX_PORT):
        raise ValueError(f"UDP port {port} must be 0 or {MIN_PORT}-{MAX_PORT}")
    for shared in _settings.shared.values():
        if shared.transport is not None and not shared.loop.is_closed():
            shared.transport.close()
    _settings.shared.clear()
    _settings.shared_port = port
    _install()


def shared_port_unrouted() -> int:
    """Datagrams the shared ports dropped for want of a connection to give them to."""
    return sum(shared.unrouted for shared in _settings.shared.values())


async def open_shared_ports() -> list[tuple[str, int]]:
    """Bind the shared port on every host address now, so that a port in use is
    an error at start-up rather than at the first join; (address, port) of each."""
    if _settings.shared_port is None:
        return []
    addresses = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True)
    bound = []
    for address in addresses:
        try:
            shared = await _shared_port(address)
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                log.debug("ICE: cannot bind %s: %s", address, exc)
                continue  # like aioice: an address that cannot be bound is not offered
            raise OSError(
                exc.errno, f"cannot bind UDP port {_settings.shared_port} on {address}: {exc}"
            ) from None
        sockname = shared.transport.get_extra_info("sockname") if shared.transport else None
        if sockname is not None:
            bound.append((sockname[0], sockname[1]))
    return bound


async def _shared_port(address: str) -> SharedPort:
    """The shared socket's demultiplexer on `address`, bound on first use."""
    loop = asyncio.get_running_loop()
    shared = _settings.shared.get(address)
    if shared is not None and not shared.closed and shared.loop is loop:
        return shared
    sock = await _bind(address, _settings.shared_port or None)
    try:
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):  # every participant's traffic
            sock.setsockopt(socket.SOL_SOCKET, option, SHARED_SOCKET_BUFFER_SIZE)
        shared = await _serve(sock, SharedPort)
    except BaseException:
        sock.close()
        raise
    _settings.shared[address] = shared
    return shared


#: Per shared socket; the kernel caps it at net.core.rmem_max / wmem_max.
SHARED_SOCKET_BUFFER_SIZE = 4 * 1024 * 1024


async def _serve(sock: socket.socket, make: Callable[[], P]) -> P:
    """A protocol from `make` on `sock`, served by the endpoint in use."""
    if _settings.endpoint is not None:
        return _settings.endpoint(sock, make)
    _, protocol = await asyncio.get_running_loop().create_datagram_endpoint(make, sock=sock)
    return protocol


def _install() -> None:
    aioice.ice.Connection.get_component_candidates = (  # type: ignore[method-assign]
        _get_component_candidates
    )
    aioice.ice.Connection.query_consent = consent.query_consent  # type: ignore[method-assign,assignment]


async def _bind(address: str, port: int | None = None) -> socket.socket:
    """A non-blocking UDP socket bound to `address` and `port`, or else a port of
    the range.

    The socket is bound here, not by `loop.create_datagram_endpoint(local_addr=...)`,
    because uvloop reports every bind failure as an OSError without errno, and only
    "address in use" means "try the next port".
    """
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        _never_fragment(sock, family)
        ports = _settings.ports
        if port is not None or ports is None:
            sock.bind((address, port or 0))
            return sock
        start = _settings.next_offset
        for attempt in range(len(ports)):
            offset = (start + attempt) % len(ports)
            try:
                sock.bind((address, ports.low + offset))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                if attempt % _YIELD_EVERY == _YIELD_EVERY - 1:
                    await asyncio.sleep(0)
                continue
            _settings.next_offset = (offset + 1) % len(ports)
            return sock
        raise PortRangeExhausted(
            errno.EADDRINUSE,
            f"no free UDP port in {ports} on {address}: all {len(ports)} are in use",
        )
    except BaseException:
        sock.close()
        raise


#: Linux <netinet/in.h>; Python's socket module does not name them.
_IP_MTU_DISCOVER, _IPV6_MTU_DISCOVER, _PMTUDISC_PROBE = 10, 23, 3


def _never_fragment(sock: socket.socket, family: int) -> None:
    """Datagrams leave with DF set and are never fragmented, as over IPv6, whatever
    ICMP "fragmentation needed" says (a forged one cannot make the relay fragment).

    WebRTC keeps packets near 1200 bytes, under any real path's MTU, and a
    socket's default (IP_PMTUDISC_WANT) already sets DF on the wire. What this
    changes is the IP identification: for a datagram that may be fragmented the
    kernel draws one from a shared hashed table per datagram, 4 % of the relay's
    CPU at 40 000 packets/s (docs/benchmarks.md). No effect elsewhere than Linux.
    """
    if not sys.platform.startswith("linux"):
        return
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, _PMTUDISC_PROBE)
    else:
        sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _PMTUDISC_PROBE)


def _candidate_host(bound: str) -> str:
    advertised = _settings.advertised
    if advertised is None:
        return bound
    same_version = ipaddress.ip_address(advertised).version == ipaddress.ip_address(bound).version
    return advertised if same_version else bound


def _name_candidate(protocol: StunProtocol, component: int) -> None:
    """The host candidate of a protocol's socket, as aioice names it."""
    bound_host, port = protocol.transport.get_extra_info("sockname")[:2]
    host = _candidate_host(bound_host)
    protocol.local_candidate = Candidate(
        foundation=candidate_foundation("host", "udp", host),
        component=component,
        transport="udp",
        priority=candidate_priority(component, "host"),
        host=host,
        port=port,
        type="host",
    )


async def _get_component_candidates(
    self: Connection, component: int, addresses: list[str], timeout: int = 5
) -> list[Candidate]:
    """`aioice.ice.Connection.get_component_candidates` with host sockets bound in
    the port range and host candidates naming the advertised address.

    Server-reflexive candidates (STUN) are gathered from those sockets as aioice
    does; relayed candidates (TURN) are left to aioice itself, called without
    addresses: their socket talks to the TURN server only and is outside the range.
    With a shared port, each host candidate is the connection's protocol on that
    address's shared socket.
    """
    host_protocols: list[StunProtocol] = []
    try:
        for address in addresses:
            if _settings.shared_port is not None:
                try:
                    shared = await _shared_port(address)
                except PortRangeExhausted:
                    raise
                except (OSError, ValueError) as exc:
                    log.debug("ICE: cannot bind %s: %s", address, exc)
                    continue
                protocol = shared.attach(self)
                host_protocols.append(protocol)
                _name_candidate(protocol, component)
                continue
            try:
                sock = await _bind(address)
            except PortRangeExhausted:
                raise
            except (OSError, ValueError) as exc:  # like aioice: such an address is skipped
                log.debug("ICE: cannot bind %s: %s", address, exc)
                continue
            try:
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_RCVBUF, aioice.turn.UDP_SOCKET_BUFFER_SIZE
                )
                protocol = await _serve(sock, lambda: ConsentProtocol(self))
            except BaseException:
                sock.close()
                raise
            host_protocols.append(protocol)
            _name_candidate(protocol, component)
    except BaseException:
        for protocol in host_protocols:
            await protocol.close()
        raise
    self._protocols += host_protocols
    candidates = [p.local_candidate for p in host_protocols]

    async def reflexive() -> list[Candidate]:
        stun_server = self.stun_server
        if not stun_server:
            return []
        tasks = [
            asyncio.create_task(aioice.ice.server_reflexive_candidate(p, stun_server))
            for p in host_protocols
            if ipaddress.ip_address(p.transport.get_extra_info("sockname")[0]).version == 4
        ]
        if not tasks:
            return []
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        return [t.result()[0] for t in done if t.exception() is None]

    reflexive_candidates, relayed_candidates = await asyncio.gather(
        reflexive(), _aioice_get_component_candidates(self, component, [], timeout)
    )
    return candidates + reflexive_candidates + relayed_candidates
