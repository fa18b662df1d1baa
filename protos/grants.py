"""The join-grant format: an Ed25519-signed `JoinGrant` as one URL-safe token.

The control plane signs (it holds the private key in memory only); relays verify
with public keys they read from etcd. Replay tracking is the relay's job: this
module checks signature, key, node and expiry.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError

from protos.grant_pb2 import JoinGrant, SignedGrant

MAX_GRANT_LIFETIME_S = 60
MAX_TOKEN_BYTES = 4096


class GrantError(Exception):
    """A grant was refused; `code` is stable and machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def key_id_for(public_key: Ed25519PublicKey) -> str:
    """A short stable name for a public key, so relays know which one to use."""
    raw = public_key.public_bytes_raw()
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(grant: JoinGrant, private_key: Ed25519PrivateKey) -> str:
    """Fill in nonce and key id, sign, and return the token."""
    grant.key_id = key_id_for(private_key.public_key())
    if not grant.nonce:
        grant.nonce = secrets.token_bytes(16)
    body = grant.SerializeToString()
    envelope = SignedGrant(grant=body, signature=private_key.sign(body))
    return base64.urlsafe_b64encode(envelope.SerializeToString()).decode().rstrip("=")


def verify(
    token: str,
    keys: Mapping[str, Ed25519PublicKey],
    node_id: str,
    now_ms: int | None = None,
) -> JoinGrant:
    """Return the grant if it is well-formed, signed by a known key, for this node
    and unexpired; raise `GrantError` otherwise."""
    grant, envelope = _decode(token)
    key = keys.get(grant.key_id)
    if key is None:
        raise GrantError("unknown_key", f"grant signed by unknown key {grant.key_id!r}")
    try:
        key.verify(envelope.signature, envelope.grant)
    except InvalidSignature:
        raise GrantError("bad_signature", "grant signature does not verify") from None
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if grant.expires_at_ms <= now_ms:
        raise GrantError("expired", f"grant expired {now_ms - grant.expires_at_ms} ms ago")
    if grant.expires_at_ms > now_ms + MAX_GRANT_LIFETIME_S * 1000 + 5000:
        raise GrantError("expired", "grant lifetime exceeds the maximum")
    if grant.node_id != node_id:
        raise GrantError("wrong_node", f"grant is for node {grant.node_id!r}, not {node_id!r}")
    if len(grant.nonce) < 8:
        raise GrantError("malformed", "grant nonce is missing")
    return grant


def peek_key_id(token: str) -> str:
    """The key id a token claims, before verification (to fetch a missing key)."""
    grant, _ = _decode(token)
    return grant.key_id


def _decode(token: str) -> tuple[JoinGrant, SignedGrant]:
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
        raise GrantError("malformed", "grant must be a non-empty string token")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        envelope = SignedGrant.FromString(raw)
        grant = JoinGrant.FromString(envelope.grant)
    except (ValueError, DecodeError):
        raise GrantError("malformed", "grant is not a valid token") from None
    return grant, envelope


def encode_public_key(public_key: Ed25519PublicKey) -> bytes:
    """How a grant-signing public key is stored in etcd: raw 32 bytes, base64."""
    return base64.b64encode(public_key.public_bytes_raw())


def decode_public_key(value: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(value))
