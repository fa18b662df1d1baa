"""The crypto of a relay-to-relay link (cascading): handshake, key schedule, sealing.

Both relays of a link sign a `Hello` with their Ed25519 link key (published in
their etcd node record, never given to clients) carrying a fresh X25519 key; the
acceptor's hello names a hash of the dialer's, so the pair is one transcript
bound to both nodes, both leases and the clock. The X25519 secret, salted with
that transcript, yields four one-direction keys: AES-256-GCM for the ordered
control stream (implicit counter nonces) and for UDP media (explicit counter,
replay window as in RFC 4303 §3.4.3). Pure functions and small classes: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HELLO_VERSION = 1
MAX_HELLO_BYTES = 4096
MAX_NODE_ID = 128
KDF_INFO = b"conclave link v1"
KEY_BYTES = 32
TAG_BYTES = 16
MEDIA_HEADER = 12  # bytes: 4-byte receiver's link id + 8-byte counter, both big-endian
REPLAY_WINDOW = 1024  # a counter this many below the highest seen is still accepted once

_HELLO_FIELDS = frozenset(
    {"v", "node_id", "lease", "to_node", "ephemeral", "at_ms", "nonce", "reply_to"}
)
_MAX_INT64 = 2**63 - 1
_MIN_DATAGRAM = MEDIA_HEADER + TAG_BYTES
_WINDOW_MASK = (1 << (REPLAY_WINDOW + 1)) - 1  # bit i: counter `highest - i` was accepted

# Prebuilt: the media path packs a header and a nonce per packet. Packing a counter
# of 2**64 raises struct.error, so a key can never reuse a nonce.
_pack_header = struct.Struct(">IQ").pack
_unpack_header = struct.Struct(">IQ").unpack_from
_pack_nonce = struct.Struct(">4xQ").pack


class LinkAuthError(Exception):
    """A link handshake or control frame was refused; `code` is stable and machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NodeIdentity:
    """A relay's link key pair, made at start; the private half never leaves memory."""

    __slots__ = ("_private_key", "public_b64", "public_key")

    def __init__(self, private_key: Ed25519PrivateKey | None = None) -> None:
        if private_key is None:
            private_key = Ed25519PrivateKey.generate()
        self._private_key = private_key
        self.public_key = self._private_key.public_key()
        self.public_b64 = base64.b64encode(self.public_key.public_bytes_raw()).decode()

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature of `data` (the private key is not otherwise reachable)."""
        return self._private_key.sign(data)


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    """A peer's link key from its node record's `link_key`."""
    raw = _b64(text, "link key")
    if len(raw) != KEY_BYTES:
        raise LinkAuthError("malformed", f"link key is {len(raw)} bytes, not {KEY_BYTES}")
    return Ed25519PublicKey.from_public_bytes(raw)


@dataclass(frozen=True)
class Hello:
    """One side's signed handshake message."""

    node_id: str  # sender
    lease: int  # sender's etcd lease id (its current run)
    to_node: str  # intended receiver
    ephemeral: bytes  # X25519 public key, 32 bytes
    at_ms: int  # sender's wall clock
    nonce: bytes  # 16 random bytes
    reply_to: bytes  # b"" from the dialer; from the acceptor, transcript(dialer's payload)


def make_hello(
    identity: NodeIdentity,
    node_id: str,
    lease: int,
    to_node: str,
    ephemeral: X25519PrivateKey,
    reply_to: bytes = b"",
) -> tuple[bytes, bytes]:
    """(payload, signature). The payload is canonical JSON (sorted keys, compact),
    bytes fields in base64, with `"v": 1`; ValueError if it would not parse back."""
    body = {
        "v": HELLO_VERSION,
        "node_id": node_id,
        "lease": lease,
        "to_node": to_node,
        "ephemeral": _b64_text(ephemeral.public_key().public_bytes_raw()),
        "at_ms": int(time.time() * 1000),
        "nonce": _b64_text(secrets.token_bytes(16)),
        "reply_to": _b64_text(reply_to),
    }
    payload = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    try:
        peek_hello(payload)
    except LinkAuthError as error:
        raise ValueError(f"cannot make hello: {error.message}") from None
    return payload, identity.sign(payload)


def peek_hello(payload: bytes) -> Hello:
    """Parse without verifying, to learn whose public key to verify with.
    Raises LinkAuthError("malformed") on anything out of shape."""
    if len(payload) > MAX_HELLO_BYTES:
        raise LinkAuthError("malformed", f"hello is {len(payload)} bytes (max {MAX_HELLO_BYTES})")
    try:
        body = json.loads(payload, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # also UnicodeDecodeError; deep nesting
        raise LinkAuthError("malformed", "hello is not JSON") from None
    if not isinstance(body, dict) or body.keys() != _HELLO_FIELDS:
        raise LinkAuthError("malformed", "hello fields are not the expected ones")
    if _int(body, "v") != HELLO_VERSION:
        raise LinkAuthError("malformed", f"hello version {body['v']} is unknown")
    return Hello(
        node_id=_node_id(body, "node_id"),
        lease=_int(body, "lease"),
        to_node=_node_id(body, "to_node"),
        ephemeral=_bytes_field(body, "ephemeral", (KEY_BYTES,)),
        at_ms=_int(body, "at_ms"),
        nonce=_bytes_field(body, "nonce", (16,)),
        reply_to=_bytes_field(body, "reply_to", (0, 32)),
    )


def verify_hello(
    payload: bytes,
    signature: bytes,
    public_key: Ed25519PublicKey,
    *,
    expect_to: str,
    expect_reply_to: bytes,
    now_ms: int | None = None,
    max_skew_ms: int = 30_000,
) -> Hello:
    """The hello if it parses, is signed by `public_key`, is for `expect_to`, is
    within `max_skew_ms` of now and answers `expect_reply_to`; checked in that
    order, each failure a LinkAuthError with its own code. The caller checks that
    `node_id` and `lease` match the node record the key came from."""
    hello = peek_hello(payload)
    try:
        public_key.verify(signature, payload)
    except InvalidSignature:
        raise LinkAuthError("bad_signature", f"hello from {hello.node_id!r} not signed") from None
    if hello.to_node != expect_to:
        raise LinkAuthError("wrong_node", f"hello is for {hello.to_node!r}, not {expect_to!r}")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if abs(hello.at_ms - now_ms) > max_skew_ms:
        skew = hello.at_ms - now_ms
        raise LinkAuthError("stale", f"hello from {hello.node_id!r} is {skew} ms off our clock")
    if not hmac.compare_digest(hello.reply_to, expect_reply_to):
        raise LinkAuthError("wrong_reply", f"hello from {hello.node_id!r} answers another hello")
    return hello


def transcript(dialer_payload: bytes) -> bytes:
    """SHA-256 of the dialer's hello payload: the acceptor's `reply_to`."""
    return hashlib.sha256(dialer_payload).digest()


@dataclass(frozen=True)
class LinkKeys:
    """One side's four AES-256 keys; repr hides them so logs never carry them."""

    control_send: bytes = field(repr=False)
    control_receive: bytes = field(repr=False)
    media_send: bytes = field(repr=False)
    media_receive: bytes = field(repr=False)


def derive_keys(
    own_ephemeral: X25519PrivateKey,
    peer_ephemeral: bytes,
    dialer_payload: bytes,
    acceptor_payload: bytes,
    *,
    dialer: bool,
) -> LinkKeys:
    """X25519 -> HKDF-SHA256 (salt: SHA-256 of both payloads, so the keys are bound
    to the verified transcript) -> 128 bytes: dialer->acceptor control,
    acceptor->dialer control, dialer->acceptor media, acceptor->dialer media.
    An all-zero secret (a low-order peer key, RFC 7748 §6.1) is refused."""
    try:
        peer = X25519PublicKey.from_public_bytes(peer_ephemeral)
        shared = own_ephemeral.exchange(peer)
    except ValueError:  # wrong length, or OpenSSL refusing the all-zero result
        raise LinkAuthError("malformed", "peer ephemeral key is unusable") from None
    if hmac.compare_digest(shared, bytes(KEY_BYTES)):
        raise LinkAuthError("malformed", "peer ephemeral key gives an all-zero secret")
    salt = hashlib.sha256(dialer_payload + acceptor_payload).digest()
    okm = HKDF(hashes.SHA256(), 4 * KEY_BYTES, salt, KDF_INFO).derive(shared)
    d2a_control, a2d_control, d2a_media, a2d_media = (
        okm[i : i + KEY_BYTES] for i in range(0, 4 * KEY_BYTES, KEY_BYTES)
    )
    if dialer:
        return LinkKeys(d2a_control, a2d_control, d2a_media, a2d_media)
    return LinkKeys(a2d_control, d2a_control, a2d_media, d2a_media)


class ControlSealer:
    """AES-256-GCM for the ordered control stream; the nonce is an implicit counter
    (4 zero bytes + 8-byte big-endian, from 0), so frames carry no header."""

    __slots__ = ("_counter", "_encrypt")

    def __init__(self, key: bytes) -> None:
        self._encrypt = AESGCM(_check_key(key)).encrypt
        self._counter = 0

    def seal(self, plaintext: bytes) -> bytes:
        """Ciphertext and tag of the next frame."""
        sealed = self._encrypt(_pack_nonce(self._counter), plaintext, None)
        self._counter += 1
        return sealed


class ControlOpener:
    """The receiving half of ControlSealer; a refused frame should end the link."""

    __slots__ = ("_counter", "_decrypt")

    def __init__(self, key: bytes) -> None:
        self._decrypt = AESGCM(_check_key(key)).decrypt
        self._counter = 0

    def open(self, sealed: bytes) -> bytes:
        """The plaintext; LinkAuthError("not_sealed") for a wrong key, tampering,
        reordering or replay (the counter advances only on success)."""
        try:
            plaintext = self._decrypt(_pack_nonce(self._counter), sealed, None)
        except InvalidTag:
            raise LinkAuthError("not_sealed", f"control frame {self._counter} refused") from None
        self._counter += 1
        return plaintext


def media_link_id(datagram: bytes) -> int | None:
    """The receiver's link id (to pick the opener), None if too short to be sealed."""
    if len(datagram) < _MIN_DATAGRAM:
        return None
    link_id: int = _unpack_header(datagram)[0]
    return link_id


class MediaSealer:
    """Seals RTP/RTCP for one link direction: header + AES-256-GCM(header as AAD)."""

    __slots__ = ("_counter", "_encrypt", "_link_id")

    def __init__(self, key: bytes, link_id: int) -> None:
        """`link_id` is the id the receiver chose for this link."""
        if not 0 <= link_id < 2**32:
            raise ValueError(f"link id {link_id} does not fit 4 bytes")
        self._encrypt = AESGCM(_check_key(key)).encrypt
        self._link_id = link_id
        self._counter = 0

    def seal(self, plaintext: bytes) -> bytes:
        """One datagram; the counter goes up by one per call, from 0."""
        counter = self._counter
        header = _pack_header(self._link_id, counter)
        self._counter = counter + 1
        return header + self._encrypt(_pack_nonce(counter), plaintext, header)


class MediaOpener:
    """Authenticated decryption with a replay window (RFC 4303 §3.4.3): a counter
    up to REPLAY_WINDOW below the highest accepted is taken once; a duplicate or an
    older one is refused; a higher one is fine (UDP reorders and loses)."""

    __slots__ = (
        "_decrypt",
        "_highest",
        "_highest_at_take",
        "_link_id",
        "_received_at_take",
        "_seen",
        "received",
        "refused",
    )

    def __init__(self, key: bytes, link_id: int | None = None) -> None:
        """With `link_id`, datagrams whose header names another link are refused too."""
        self._decrypt = AESGCM(_check_key(key)).decrypt
        self._link_id = link_id
        self._highest = -1  # no counter seen yet; the first expected is 0
        self._seen = 0
        self._highest_at_take = -1
        self._received_at_take = 0
        self.received = 0  # datagrams accepted
        self.refused = 0  # datagrams refused

    def open(self, datagram: bytes) -> bytes | None:
        """The plaintext, or None for anything refused (short, forged, replayed,
        too old, another link's); never raises."""
        if len(datagram) < _MIN_DATAGRAM:
            self.refused += 1
            return None
        link_id, counter = _unpack_header(datagram)
        behind = self._highest - counter
        if (self._link_id is not None and link_id != self._link_id) or (
            behind >= 0 and (behind > REPLAY_WINDOW or (self._seen >> behind) & 1)
        ):
            self.refused += 1
            return None
        try:
            plaintext = self._decrypt(
                _pack_nonce(counter), datagram[MEDIA_HEADER:], datagram[:MEDIA_HEADER]
            )
        except InvalidTag:
            self.refused += 1
            return None
        if behind < 0:  # a new highest: slide the window (never by more than its width)
            shift = -behind
            self._seen = 1 if shift > REPLAY_WINDOW else ((self._seen << shift) | 1) & _WINDOW_MASK
            self._highest = counter
        else:
            self._seen |= 1 << behind
        self.received += 1
        return plaintext

    def take_loss(self) -> tuple[int, int]:
        """(expected, lost) since the last call (or since creation).

        expected = highest counter accepted now - highest accepted at the last call
        (-1 at creation, as counters start at 0): how many counters the sender used
        in between, as far as we can tell. lost = max(0, expected - datagrams
        accepted in between); late arrivals from an earlier interval count as
        accepted, hence the floor. For a per-second loss ratio, lost / expected."""
        expected = self._highest - self._highest_at_take
        accepted = self.received - self._received_at_take
        self._highest_at_take = self._highest
        self._received_at_take = self.received
        return expected, max(0, expected - accepted)


def _check_key(key: bytes) -> bytes:
    """AES-256 only: AESGCM would quietly accept 16- or 24-byte keys."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"link key is {len(key)} bytes, not {KEY_BYTES}")
    return key


def _b64_text(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _b64(text: object, what: str) -> bytes:
    """Strict standard base64 (alphabet and padding checked)."""
    if not isinstance(text, str):
        raise LinkAuthError("malformed", f"{what} is not a string")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        raise LinkAuthError("malformed", f"{what} is not base64") from None


def _refuse_constant(name: str) -> Any:
    """JSON's NaN and Infinity have no place in a hello."""
    raise ValueError(f"{name} in hello")


def _int(body: dict[str, Any], key: str) -> int:
    """A non-negative int64 (not a bool, which is an int to Python)."""
    value = body[key]
    if type(value) is not int or not 0 <= value <= _MAX_INT64:
        raise LinkAuthError("malformed", f"hello {key} is not a non-negative 64-bit integer")
    return value


def _node_id(body: dict[str, Any], key: str) -> str:
    value = body[key]
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NODE_ID:
        raise LinkAuthError("malformed", f"hello {key} is not a node id")
    return value


def _bytes_field(body: dict[str, Any], key: str, lengths: tuple[int, ...]) -> bytes:
    raw = _b64(body[key], f"hello {key}")
    if len(raw) not in lengths:
        raise LinkAuthError("malformed", f"hello {key} is {len(raw)} bytes, not {lengths}")
    return raw
