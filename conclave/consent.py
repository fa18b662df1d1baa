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
"""

from __future__ import annotations

import binascii
import hmac
import ipaddress
import struct
from typing import Any, cast

from aioice.ice import StunProtocol

COOKIE = 0x2112A442
_COOKIE_BYTES = COOKIE.to_bytes(4, "big")
_FINGERPRINT_XOR = 0x5354554E
_BINDING_REQUEST = b"\x00\x01"
_BINDING_SUCCESS = 0x0101

# Attribute types (RFC 8489 18.3, RFC 8445 16.1).
_USERNAME, _MESSAGE_INTEGRITY, _XOR_MAPPED_ADDRESS = 0x0006, 0x0008, 0x0020
_PRIORITY, _USE_CANDIDATE = 0x0024, 0x0025
_FINGERPRINT, _ICE_CONTROLLED, _ICE_CONTROLLING = 0x8028, 0x8029, 0x802A
_COMPREHENSION_OPTIONAL = 0x8000

_header = struct.Struct("!HHI12s")
_attribute = struct.Struct("!HH")


class ConsentProtocol(StunProtocol):
    """aioice's protocol of one socket (or one connection on a shared port), with
    a connected pair's consent checks answered here."""

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        # Media comes here too on a socket of the Python path: one slice tells it apart.
        if data[:2] == _BINDING_REQUEST and self._answer_consent(cast(bytes, data), addr):
            return
        super().datagram_received(data, addr)

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


def binding_success(transaction_id: bytes, addr: tuple[str, int], key: bytes) -> bytes:
    """A Binding success response as aioice builds one: XOR-MAPPED-ADDRESS,
    MESSAGE-INTEGRITY (`key`), FINGERPRINT."""
    ip = ipaddress.ip_address(addr[0])
    family = 1 if ip.version == 4 else 2
    mask = _COOKIE_BYTES if ip.version == 4 else _COOKIE_BYTES + transaction_id
    xored = bytes(a ^ b for a, b in zip(ip.packed, mask, strict=True))
    value = struct.pack("!BBH", 0, family, addr[1] ^ (COOKIE >> 16)) + xored
    body = _attribute.pack(_XOR_MAPPED_ADDRESS, len(value)) + value
    signed = _header.pack(_BINDING_SUCCESS, len(body) + 24, COOKIE, transaction_id) + body
    body += _attribute.pack(_MESSAGE_INTEGRITY, 20) + hmac.digest(key, signed, "sha1")
    head = _header.pack(_BINDING_SUCCESS, len(body) + 8, COOKIE, transaction_id)
    fingerprint = binascii.crc32(head + body) ^ _FINGERPRINT_XOR
    return head + body + struct.pack("!HHI", _FINGERPRINT, 4, fingerprint)
