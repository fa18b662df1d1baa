"""Answering ICE consent checks on a connected pair, without aioice's general path.

Once ICE has completed, what a relay receives as STUN is mostly consent checks
(RFC 7675): one from every participant every five seconds or so, each answered
with a Binding success response. aioice parses each into a `Message` (enums,
address objects), checks it, then builds the answer and serialises it three
times over (for MESSAGE-INTEGRITY, for FINGERPRINT, to send): about 40 µs. With
hundreds of participants that was the largest part of a relay's fixed Python
work per participant (docs/benchmarks.md).

`ConsentProtocol` is aioice's `StunProtocol` that answers, itself, a Binding
request that can only be a consent check on the connection's nominated pair:
from the pair's remote address, to the pair's own socket, naming the expected
USERNAME, with valid MESSAGE-INTEGRITY and FINGERPRINT, no USE-CANDIDATE and no
role conflict. Its answer is byte for byte the one aioice would send, and for
such a check aioice would change nothing else (the pair has succeeded already).
Every other datagram, and any check that differs in the least, goes to aioice as
before, so the handshakes stay aioice's.

The relay's own consent checks, one to every participant every five seconds or
so, went through aioice's general path too: a `Message` built and serialised
three times over, a `Transaction` with its future and timer, the answer parsed
into a `Message` again. `query_consent` takes the place of aioice's
`Connection.query_consent` on pairs whose socket is a `ConsentProtocol`: it sends
the bytes aioice would send and the protocol recognises the answer by its
transaction id and MESSAGE-INTEGRITY. A check counts as answered when its answer
comes before the next check (aioice waited half a second); after
`CONSENT_FAILURES` checks in a row without one the connection closes, as aioice
closes it: about 30 s, RFC 7675's consent timeout.
"""

from __future__ import annotations

import asyncio
import binascii
import hmac
import logging
import math
import os
import random
import socket
import struct
import weakref
from typing import Any, cast

import aioice.ice
from aioice.candidate import candidate_priority
from aioice.ice import CandidatePair, Connection, StunProtocol

log = logging.getLogger(__name__)

COOKIE = 0x2112A442
_COOKIE_BYTES = COOKIE.to_bytes(4, "big")
_FINGERPRINT_XOR = 0x5354554E
_BINDING_REQUEST = b"\x00\x01"
_BINDING_SUCCESS = 0x0101
_BINDING_SUCCESS_BYTES = _BINDING_SUCCESS.to_bytes(2, "big")

# Attribute types (RFC 8489 18.3, RFC 8445 16.1).
_USERNAME, _MESSAGE_INTEGRITY, _XOR_MAPPED_ADDRESS = 0x0006, 0x0008, 0x0020
_PRIORITY, _USE_CANDIDATE = 0x0024, 0x0025
_FINGERPRINT, _ICE_CONTROLLED, _ICE_CONTROLLING = 0x8028, 0x8029, 0x802A
_COMPREHENSION_OPTIONAL = 0x8000

_header = struct.Struct("!HHI12s")
_attribute = struct.Struct("!HH")
_mapped = struct.Struct("!BBH")
_fingerprint = struct.Struct("!HHI")


class ConsentProtocol(StunProtocol):
    """aioice's protocol of one socket (or one connection on a shared port), with
    a connected pair's consent checks answered here, and the answers to its own
    (`query_consent`) recognised here."""

    consent_sent: bytes | None = None  # the transaction id of the last check sent
    consent_answered = False

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        # Media comes here too on a socket of the Python path: one slice tells it apart.
        kind = data[:2]
        if kind == _BINDING_REQUEST and self._answer_consent(cast(bytes, data), addr):
            return
        if (
            kind == _BINDING_SUCCESS_BYTES
            and data[8:20] == self.consent_sent
            and self._consent_answered(cast(bytes, data))
        ):
            return
        try:
            super().datagram_received(data, addr)
        except struct.error:
            # aioice's parser on an attribute too short for its type (its ValueError
            # it handles itself): garbage, dropped here rather than logged as a crash.
            log.debug("dropped a malformed STUN message")

    def send_consent_check(self, connection: Connection, pair: CandidatePair) -> None:
        self.consent_sent = os.urandom(12)
        self.consent_answered = False
        self.transport.sendto(consent_check(connection, pair, self.consent_sent), pair.remote_addr)

    def _consent_answered(self, data: bytes) -> bool:
        """Whether `data` answers this pair's last consent check: True when it does
        (and is taken), False to leave it to aioice."""
        try:
            key = cast(str, self.receiver.remote_password).encode("utf8")
        except AttributeError:
            return False
        if not _signed(data, key):
            return False
        self.consent_answered = True
        return True

    def _answer_consent(self, data: bytes, addr: tuple[Any, ...]) -> bool:
        """Answer `data` if it is a consent check on the nominated pair: True when
        answered, False to leave it to aioice."""
        if len(data) < 20 or data[:2] != _BINDING_REQUEST or data[4:8] != _COOKIE_BYTES:
            return False
        if int.from_bytes(data[2:4], "big") + 20 != len(data):
            return False
        try:
            connection = self.receiver
            if connection._closing or not connection._early_checks_done:
                return False
            pair = connection._nominated.get(self.local_candidate.component)
            if pair is None or pair.protocol is not self or pair.remote_addr != addr[:2]:
                return False
            expected_username = f"{connection.local_username}:{connection.remote_username}"
            key = connection.local_password.encode("utf8")
            controlling = connection.ice_controlling
        except AttributeError:  # another aioice than the one this was written for
            return False
        check = _parse_check(data)
        if check is None:
            return False
        username, integrity_at, role = check
        if username != expected_username.encode("utf8"):
            return False
        if role == (_ICE_CONTROLLING if controlling else _ICE_CONTROLLED):
            return False  # a role conflict: aioice repairs it
        signed = data[:2] + (integrity_at + 24 - 20).to_bytes(2, "big") + data[4:integrity_at]
        mac = data[integrity_at + 4 : integrity_at + 24]
        if not hmac.compare_digest(hmac.digest(key, signed, "sha1"), mac):
            return False  # aioice answers 401
        self.transport.sendto(binding_success(data[8:20], addr[:2], key), addr)
        return True


def _parse_check(data: bytes) -> tuple[bytes, int, int] | None:
    """USERNAME, where MESSAGE-INTEGRITY starts and the role attribute (0 if none)
    of a well-formed check whose FINGERPRINT matches; None for anything else,
    including USE-CANDIDATE and any comprehension-required attribute but these."""
    username: bytes | None = None
    integrity_at = fingerprint_at = -1
    role = 0
    pos = 20
    while pos < len(data):
        if pos + 4 > len(data) or fingerprint_at >= 0:
            return None  # truncated, or something after FINGERPRINT
        kind, length = _attribute.unpack_from(data, pos)
        end = pos + 4 + length
        if end > len(data) or (integrity_at >= 0 and kind != _FINGERPRINT):
            return None
        if kind == _USERNAME:
            username = data[pos + 4 : end]
        elif kind == _MESSAGE_INTEGRITY and length == 20:
            integrity_at = pos
        elif kind == _FINGERPRINT and length == 4:
            fingerprint_at = pos
        elif kind in (_ICE_CONTROLLING, _ICE_CONTROLLED):
            role = kind
        elif kind != _PRIORITY and kind < _COMPREHENSION_OPTIONAL:
            return None  # USE-CANDIDATE, a malformed one of the above, or unknown
        pos = end + (-length % 4)
    if username is None or integrity_at < 0 or fingerprint_at < 0 or pos != len(data):
        return None
    fingerprint = int.from_bytes(data[fingerprint_at + 4 : fingerprint_at + 8], "big")
    if binascii.crc32(data[:fingerprint_at]) ^ _FINGERPRINT_XOR != fingerprint:
        return None
    return username, integrity_at, role


def _signed(data: bytes, key: bytes) -> bool:
    """Whether `data` is a well-formed STUN message with MESSAGE-INTEGRITY valid
    under `key`, and a FINGERPRINT, where there is one, that matches: what aioice
    asks of an answer to its requests."""
    if len(data) < 20 or data[4:8] != _COOKIE_BYTES:
        return False
    if int.from_bytes(data[2:4], "big") + 20 != len(data):
        return False
    integrity_at = -1
    pos = 20
    while pos < len(data):
        if pos + 4 > len(data):
            return False
        kind, length = _attribute.unpack_from(data, pos)
        end = pos + 4 + length
        if end > len(data):
            return False
        if kind == _MESSAGE_INTEGRITY and integrity_at < 0:
            if length != 20:
                return False
            integrity_at = pos
        elif kind == _FINGERPRINT:
            fingerprint = int.from_bytes(data[pos + 4 : pos + 8], "big")
            if length != 4 or binascii.crc32(data[:pos]) ^ _FINGERPRINT_XOR != fingerprint:
                return False
        pos = end + (-length % 4)
    if integrity_at < 0 or pos != len(data):
        return False
    signed = data[:2] + (integrity_at + 24 - 20).to_bytes(2, "big") + data[4:integrity_at]
    mac = data[integrity_at + 4 : integrity_at + 24]
    return hmac.compare_digest(hmac.digest(key, signed, "sha1"), mac)


def consent_check(connection: Connection, pair: CandidatePair, transaction_id: bytes) -> bytes:
    """The Binding request aioice sends `pair`'s peer to check consent
    (`Connection.build_request` without nomination, MESSAGE-INTEGRITY with the
    peer's password, FINGERPRINT)."""
    username = f"{connection.remote_username}:{connection.local_username}".encode()
    body = _attribute.pack(_USERNAME, len(username)) + username + bytes(-len(username) % 4)
    priority = candidate_priority(pair.component, "prflx")
    body += _attribute.pack(_PRIORITY, 4) + priority.to_bytes(4, "big")
    role = _ICE_CONTROLLING if connection.ice_controlling else _ICE_CONTROLLED
    body += _attribute.pack(role, 8) + connection._tie_breaker.to_bytes(8, "big")
    key = cast(str, connection.remote_password).encode("utf8")
    signed = _header.pack(1, len(body) + 24, COOKIE, transaction_id) + body
    body += _attribute.pack(_MESSAGE_INTEGRITY, 20) + hmac.digest(key, signed, "sha1")
    head = _header.pack(1, len(body) + 8, COOKIE, transaction_id)
    fingerprint = binascii.crc32(head + body) ^ _FINGERPRINT_XOR
    return head + body + _fingerprint.pack(_FINGERPRINT, 4, fingerprint)


_aioice_query_consent = Connection.query_consent


async def query_consent(connection: Connection) -> None:
    """`Connection.query_consent` (RFC 7675 consent freshness) for connections
    whose nominated pairs have `ConsentProtocol` sockets; aioice's own for any
    other (a TURN relay's, say)."""
    if not all(isinstance(p.protocol, ConsentProtocol) for p in connection._nominated.values()):
        await _aioice_query_consent(connection)
        return
    failures = 0
    while True:
        interval = aioice.ice.CONSENT_INTERVAL
        await _ticks().sleep(interval * (0.8 + 0.4 * random.random()), interval / _TICKS)
        pairs = list(connection._nominated.values())
        protocols = [cast(ConsentProtocol, p.protocol) for p in pairs]
        unanswered = any(p.consent_sent is not None and not p.consent_answered for p in protocols)
        failures = failures + 1 if unanswered else 0
        if failures >= aioice.ice.CONSENT_FAILURES:
            log.info("ICE consent to send expired")
            connection._query_consent_task = None
            await connection.close()
            return
        for pair, protocol in zip(pairs, protocols, strict=True):
            protocol.send_consent_check(connection, pair)


_TICKS = 10  # instants per consent interval that checks are sent at


class _Ticks:
    """Wakes the consent checks of every connection on one grid of instants on the
    loop's clock: the checks due at an instant go out in one loop iteration, on
    one timer, instead of each waking the relay on its own (with 200 participants,
    40 wake-ups a second). The randomised interval keeps its spread, in steps of
    a tenth."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: dict[float, list[asyncio.Future[None]]] = {}  # by instant

    async def sleep(self, delay: float, tick: float) -> None:
        instant = math.ceil((self._loop.time() + delay) / tick) * tick
        waiting = self._due.get(instant)
        if waiting is None:
            waiting = self._due[instant] = []
            self._loop.call_at(instant, self._wake, instant)
        future = self._loop.create_future()
        waiting.append(future)
        await future

    def _wake(self, instant: float) -> None:
        for future in self._due.pop(instant, ()):
            if not future.done():  # its task was cancelled: the connection closed
                future.set_result(None)


_ticks_of: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Ticks] = (
    weakref.WeakKeyDictionary()
)


def _ticks() -> _Ticks:
    loop = asyncio.get_running_loop()
    ticks = _ticks_of.get(loop)
    if ticks is None:
        ticks = _ticks_of[loop] = _Ticks(loop)
    return ticks


def binding_success(transaction_id: bytes, addr: tuple[str, int], key: bytes) -> bytes:
    """A Binding success response as aioice builds one: XOR-MAPPED-ADDRESS,
    MESSAGE-INTEGRITY (`key`), FINGERPRINT."""
    host = addr[0].partition("%")[0]  # an IPv6 scope is not on the wire
    try:
        packed, family, mask = socket.inet_pton(socket.AF_INET, host), 1, _COOKIE_BYTES
    except OSError:
        packed, family = socket.inet_pton(socket.AF_INET6, host), 2
        mask = _COOKIE_BYTES + transaction_id
    xored = (int.from_bytes(packed, "big") ^ int.from_bytes(mask, "big")).to_bytes(len(packed))
    value = _mapped.pack(0, family, addr[1] ^ (COOKIE >> 16)) + xored
    body = _attribute.pack(_XOR_MAPPED_ADDRESS, len(value)) + value
    signed = _header.pack(_BINDING_SUCCESS, len(body) + 24, COOKIE, transaction_id) + body
    body += _attribute.pack(_MESSAGE_INTEGRITY, 20) + hmac.digest(key, signed, "sha1")
    head = _header.pack(_BINDING_SUCCESS, len(body) + 8, COOKIE, transaction_id)
    fingerprint = binascii.crc32(head + body) ^ _FINGERPRINT_XOR
    return head + body + _fingerprint.pack(_FINGERPRINT, 4, fingerprint)
