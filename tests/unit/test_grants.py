"""protos.grants: what verifies and what is refused, with which GrantError code."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protos.grant_pb2 import JoinGrant, SignedGrant
from protos.grants import (
    MAX_TOKEN_BYTES,
    GrantError,
    decode_public_key,
    encode_public_key,
    key_id_for,
    peek_key_id,
    sign,
    verify,
)

NODE = "node-a"


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def keys_of(*private: Ed25519PrivateKey) -> dict[str, Ed25519PublicKey]:
    return {key_id_for(k.public_key()): k.public_key() for k in private}


def now_ms() -> int:
    return int(time.time() * 1000)


def make_grant(**overrides: Any) -> JoinGrant:
    fields: dict[str, Any] = {
        "room_id": "abc-defg-hjk",
        "participant_id": "p_1",
        "node_id": NODE,
        "display_name": "Ada",
        "sources": ["microphone", "camera"],
        "can_subscribe": True,
        "expires_at_ms": now_ms() + 30_000,
    }
    fields.update(overrides)
    return JoinGrant(**fields)


def envelope(token: str) -> SignedGrant:
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    env: SignedGrant = SignedGrant.FromString(raw)
    return env


def to_token(env: SignedGrant) -> str:
    return base64.urlsafe_b64encode(env.SerializeToString()).decode().rstrip("=")


def refused(token: str, keys: dict[str, Ed25519PublicKey], node: str = NODE) -> str:
    with pytest.raises(GrantError) as info:
        verify(token, keys, node)
    return info.value.code


def test_signed_grant_verifies(key: Ed25519PrivateKey) -> None:
    token = sign(make_grant(), key)
    grant = verify(token, keys_of(key), NODE)
    assert (grant.room_id, grant.participant_id, grant.display_name) == (
        "abc-defg-hjk",
        "p_1",
        "Ada",
    )
    assert list(grant.sources) == ["microphone", "camera"] and grant.can_subscribe
    assert len(grant.nonce) == 16
    assert grant.key_id == key_id_for(key.public_key()) == peek_key_id(token)


def test_each_grant_gets_a_fresh_nonce(key: Ed25519PrivateKey) -> None:
    a = verify(sign(make_grant(), key), keys_of(key), NODE)
    b = verify(sign(make_grant(), key), keys_of(key), NODE)
    assert a.nonce != b.nonce


def test_tampered_body_is_refused(key: Ed25519PrivateKey) -> None:
    env = envelope(sign(make_grant(sources=[]), key))
    grant = JoinGrant.FromString(env.grant)
    grant.sources.append("screen")  # privilege escalation attempt, signature kept
    env.grant = grant.SerializeToString()
    assert refused(to_token(env), keys_of(key)) == "bad_signature"


def test_flipped_signature_byte_is_refused(key: Ed25519PrivateKey) -> None:
    env = envelope(sign(make_grant(), key))
    sig = bytearray(env.signature)
    sig[10] ^= 0x01
    env.signature = bytes(sig)
    assert refused(to_token(env), keys_of(key)) == "bad_signature"


def test_flipped_body_byte_is_refused(key: Ed25519PrivateKey) -> None:
    env = envelope(sign(make_grant(), key))
    body = bytearray(env.grant)
    body[body.index(b"Ada")] ^= 0x20  # "Ada" -> "ada": still a valid JoinGrant
    env.grant = bytes(body)
    assert refused(to_token(env), keys_of(key)) == "bad_signature"


def test_signature_by_another_key_is_refused(key: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    token = sign(make_grant(), other)
    # Unknown key id: not in the relay's key set at all.
    assert refused(token, keys_of(key)) == "unknown_key"
    # Forged key id: claims to be `key` but was signed by `other`.
    env = envelope(token)
    grant = JoinGrant.FromString(env.grant)
    grant.key_id = key_id_for(key.public_key())
    env.grant = grant.SerializeToString()
    env.signature = other.sign(env.grant)
    assert refused(to_token(env), keys_of(key)) == "bad_signature"


def test_expired_grant_is_refused(key: Ed25519PrivateKey) -> None:
    token = sign(make_grant(expires_at_ms=now_ms() - 1), key)
    assert refused(token, keys_of(key)) == "expired"
    fresh = sign(make_grant(expires_at_ms=now_ms() + 1000), key)
    with pytest.raises(GrantError) as info:
        verify(fresh, keys_of(key), NODE, now_ms=now_ms() + 2000)
    assert info.value.code == "expired"


def test_overlong_lifetime_is_refused(key: Ed25519PrivateKey) -> None:
    token = sign(make_grant(expires_at_ms=now_ms() + 3600_000), key)
    assert refused(token, keys_of(key)) == "expired"


def test_grant_for_another_node_is_refused(key: Ed25519PrivateKey) -> None:
    token = sign(make_grant(node_id="node-b"), key)
    assert refused(token, keys_of(key), node=NODE) == "wrong_node"
    assert verify(token, keys_of(key), "node-b").node_id == "node-b"


def test_short_nonce_is_refused(key: Ed25519PrivateKey) -> None:
    token = sign(make_grant(nonce=b"abc"), key)
    assert refused(token, keys_of(key)) == "malformed"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "AAAA",  # decodes to bytes that are no protobuf message
        "%%% not base64 %%%",
        base64.urlsafe_b64encode(b"\xff" * 40).decode(),
        "A" * (MAX_TOKEN_BYTES + 1),
    ],
)
def test_garbage_is_malformed(key: Ed25519PrivateKey, token: str) -> None:
    assert refused(token, keys_of(key)) == "malformed"


def test_non_string_token_is_malformed(key: Ed25519PrivateKey) -> None:
    with pytest.raises(GrantError) as info:
        verify(b"bytes", keys_of(key), NODE)  # type: ignore[arg-type]
    assert info.value.code == "malformed"


def test_public_key_round_trips_through_its_etcd_encoding(key: Ed25519PrivateKey) -> None:
    public = key.public_key()
    encoded = encode_public_key(public)
    assert len(base64.b64decode(encoded)) == 32
    assert decode_public_key(encoded).public_bytes_raw() == public.public_bytes_raw()
