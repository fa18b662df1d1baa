"""Relay link crypto: handshake, refusal codes, control and media sealing, loss."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from relay.link_crypto import (
    MAX_HELLO_BYTES,
    MEDIA_HEADER,
    REPLAY_WINDOW,
    ControlOpener,
    ControlSealer,
    Hello,
    LinkAuthError,
    LinkKeys,
    MediaOpener,
    MediaSealer,
    NodeIdentity,
    derive_keys,
    make_hello,
    media_link_id,
    peek_hello,
    public_key_from_b64,
    transcript,
    verify_hello,
)

DIALER, ACCEPTOR = "relay-a", "relay-b"


def _code(error: pytest.ExceptionInfo[LinkAuthError]) -> str:
    return error.value.code


def _handshake() -> tuple[LinkKeys, LinkKeys]:
    """A full handshake through the public API; (dialer's keys, acceptor's keys)."""
    dialer_id, acceptor_id = NodeIdentity(), NodeIdentity()
    dialer_eph, acceptor_eph = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    d_payload, d_sig = make_hello(dialer_id, DIALER, 7, ACCEPTOR, dialer_eph)

    # The acceptor learns who is calling, fetches that node's key, verifies.
    claimed = peek_hello(d_payload)
    assert claimed.node_id == DIALER
    d_key = public_key_from_b64(dialer_id.public_b64)
    d_hello = verify_hello(d_payload, d_sig, d_key, expect_to=ACCEPTOR, expect_reply_to=b"")
    assert d_hello.lease == 7 and d_hello.reply_to == b""
    a_payload, a_sig = make_hello(
        acceptor_id, ACCEPTOR, 9, DIALER, acceptor_eph, reply_to=transcript(d_payload)
    )

    a_key = public_key_from_b64(acceptor_id.public_b64)
    a_hello = verify_hello(
        a_payload, a_sig, a_key, expect_to=DIALER, expect_reply_to=transcript(d_payload)
    )
    assert a_hello.node_id == ACCEPTOR and a_hello.lease == 9

    dialer_keys = derive_keys(dialer_eph, a_hello.ephemeral, d_payload, a_payload, dialer=True)
    acceptor_keys = derive_keys(acceptor_eph, d_hello.ephemeral, d_payload, a_payload, dialer=False)
    return dialer_keys, acceptor_keys


def _signed(identity: NodeIdentity, **changes: Any) -> tuple[bytes, bytes]:
    """A hello from DIALER to ACCEPTOR with some fields replaced, signed, canonical JSON."""
    payload, _ = make_hello(identity, DIALER, 1, ACCEPTOR, X25519PrivateKey.generate())
    body = json.loads(payload)
    body.update(changes)
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return raw, identity.sign(raw)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# --- handshake ---------------------------------------------------------------


def test_handshake_derives_matching_keys() -> None:
    dialer, acceptor = _handshake()
    assert dialer.control_send == acceptor.control_receive
    assert dialer.control_receive == acceptor.control_send
    assert dialer.media_send == acceptor.media_receive
    assert dialer.media_receive == acceptor.media_send
    keys = [dialer.control_send, dialer.control_receive, dialer.media_send, dialer.media_receive]
    assert all(len(key) == 32 for key in keys)
    assert len(set(keys)) == 4
    assert dialer.control_send.hex() not in repr(dialer)


def test_handshakes_give_fresh_keys() -> None:
    assert _handshake()[0] != _handshake()[0]


def test_hello_payload_is_canonical_json() -> None:
    identity = NodeIdentity()
    payload, signature = make_hello(identity, DIALER, 3, ACCEPTOR, X25519PrivateKey.generate())
    body = json.loads(payload)
    assert body["v"] == 1 and body["reply_to"] == ""
    assert payload == json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert len(signature) == 64
    assert len(base64.b64decode(identity.public_b64, validate=True)) == 32


def test_make_hello_refuses_what_would_not_parse() -> None:
    eph = X25519PrivateKey.generate()
    with pytest.raises(ValueError):
        make_hello(NodeIdentity(), "", 1, ACCEPTOR, eph)
    with pytest.raises(ValueError):
        make_hello(NodeIdentity(), DIALER, 1, ACCEPTOR, eph, reply_to=b"short")


# --- refusal codes -----------------------------------------------------------


def _verify(payload: bytes, signature: bytes, identity: NodeIdentity, **kw: Any) -> Hello:
    kw.setdefault("expect_to", ACCEPTOR)
    kw.setdefault("expect_reply_to", b"")
    return verify_hello(payload, signature, identity.public_key, **kw)


def test_tampered_payload_is_bad_signature() -> None:
    identity = NodeIdentity()
    payload, signature = make_hello(identity, DIALER, 1, ACCEPTOR, X25519PrivateKey.generate())
    tampered = payload.replace(b'"lease":1', b'"lease":2')
    assert tampered != payload
    with pytest.raises(LinkAuthError) as error:
        _verify(tampered, signature, identity)
    assert _code(error) == "bad_signature"


def test_signature_by_another_identity_is_bad_signature() -> None:
    payload, signature = _signed(NodeIdentity())
    with pytest.raises(LinkAuthError) as error:
        _verify(payload, signature, NodeIdentity())
    assert _code(error) == "bad_signature"
    with pytest.raises(LinkAuthError) as error:
        _verify(payload, b"", NodeIdentity())
    assert _code(error) == "bad_signature"


def test_wrong_to_node() -> None:
    identity = NodeIdentity()
    payload, signature = _signed(identity, to_node="relay-c")
    with pytest.raises(LinkAuthError) as error:
        _verify(payload, signature, identity)
    assert _code(error) == "wrong_node"


@pytest.mark.parametrize("offset", [-30_001, 30_001])
def test_stale_both_directions(offset: int) -> None:
    identity = NodeIdentity()
    payload, signature = _signed(identity, at_ms=1_000_000_000)
    now = 1_000_000_000 + offset
    with pytest.raises(LinkAuthError) as error:
        _verify(payload, signature, identity, now_ms=now)
    assert _code(error) == "stale"
    # At exactly the limit it still passes.
    limit = 1_000_000_000 + (30_000 if offset > 0 else -30_000)
    assert _verify(payload, signature, identity, now_ms=limit).at_ms == 1_000_000_000


def test_wrong_reply_to() -> None:
    identity = NodeIdentity()
    payload, signature = _signed(identity, reply_to=_b64(transcript(b"another hello")))
    with pytest.raises(LinkAuthError) as error:
        _verify(payload, signature, identity, expect_reply_to=transcript(b"our hello"))
    assert _code(error) == "wrong_reply"
    # A dialer's hello (no reply_to) offered where a reply is expected is refused too.
    payload, signature = _signed(identity)
    with pytest.raises(LinkAuthError) as error:
        _verify(payload, signature, identity, expect_reply_to=transcript(b"our hello"))
    assert _code(error) == "wrong_reply"


def test_checks_run_in_documented_order() -> None:
    identity = NodeIdentity()
    payload, signature = _signed(identity, to_node="relay-c", at_ms=1)
    with pytest.raises(LinkAuthError) as error:
        _verify(payload, signature, NodeIdentity())
    assert _code(error) == "bad_signature"
    with pytest.raises(LinkAuthError) as error:
        _verify(payload, signature, identity)
    assert _code(error) == "wrong_node"


MALFORMED: list[tuple[str, dict[str, Any]]] = [
    ("short ephemeral", {"ephemeral": _b64(bytes(31))}),
    ("long ephemeral", {"ephemeral": _b64(bytes(33))}),
    ("short nonce", {"nonce": _b64(bytes(15))}),
    ("bad base64", {"nonce": "!!not base64!!"}),
    ("unpadded base64", {"nonce": _b64(bytes(16)).rstrip("=")}),
    ("bytes as number", {"ephemeral": 5}),
    ("reply_to not a hash", {"reply_to": _b64(bytes(5))}),
    ("empty node id", {"node_id": ""}),
    ("long node id", {"node_id": "n" * 129}),
    ("node id not a string", {"to_node": 12}),
    ("lease as string", {"lease": "7"}),
    ("lease as bool", {"lease": True}),
    ("negative lease", {"lease": -1}),
    ("huge at_ms", {"at_ms": 2**64}),
    ("float at_ms", {"at_ms": 1.5}),
    ("unknown version", {"v": 2}),
    ("version as bool", {"v": True}),
    ("extra field", {"extra": 1}),
]


@pytest.mark.parametrize(("name", "changes"), MALFORMED, ids=[name for name, _ in MALFORMED])
def test_malformed_fields(name: str, changes: dict[str, Any]) -> None:
    identity = NodeIdentity()
    payload, signature = _signed(identity, **changes)
    with pytest.raises(LinkAuthError) as error:
        _verify(payload, signature, identity)
    assert _code(error) == "malformed", name


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'"hello"',
        b"{}",
        b'{"v":NaN}',
        b"[" * 3000,
        b'{"v":1,"pad":"' + b"x" * MAX_HELLO_BYTES + b'"}',
    ],
)
def test_malformed_payloads(payload: bytes) -> None:
    with pytest.raises(LinkAuthError) as error:
        peek_hello(payload)
    assert _code(error) == "malformed"


def test_missing_field_is_malformed() -> None:
    payload, _ = _signed(NodeIdentity())
    body = json.loads(payload)
    del body["nonce"]
    with pytest.raises(LinkAuthError) as error:
        peek_hello(json.dumps(body).encode())
    assert _code(error) == "malformed"


@pytest.mark.parametrize("text", ["", "abc", _b64(bytes(31)), _b64(bytes(33)), "é" * 44])
def test_public_key_from_bad_b64(text: str) -> None:
    with pytest.raises(LinkAuthError) as error:
        public_key_from_b64(text)
    assert _code(error) == "malformed"


def test_all_zero_shared_secret_refused() -> None:
    own = X25519PrivateKey.generate()
    for low_order in (bytes(32), (1).to_bytes(32, "little")):
        with pytest.raises(LinkAuthError) as error:
            derive_keys(own, low_order, b"d", b"a", dialer=True)
        assert _code(error) == "malformed"
    with pytest.raises(LinkAuthError):
        derive_keys(own, bytes(31), b"d", b"a", dialer=True)


# --- control sealing ---------------------------------------------------------


def _control_pair() -> tuple[ControlSealer, ControlOpener]:
    dialer, acceptor = _handshake()
    return ControlSealer(dialer.control_send), ControlOpener(acceptor.control_receive)


def test_control_round_trip() -> None:
    sealer, opener = _control_pair()
    messages = [b"", b"hello", bytes(range(256)) * 10]
    for message in messages:
        sealed = sealer.seal(message)
        assert message == b"" or message not in sealed
        assert opener.open(sealed) == message


def test_control_same_plaintext_seals_differently() -> None:
    sealer, _ = _control_pair()
    assert sealer.seal(b"ping") != sealer.seal(b"ping")


def test_control_tampered_refused() -> None:
    sealer, opener = _control_pair()
    sealed = bytearray(sealer.seal(b"subscribe"))
    sealed[0] ^= 1
    with pytest.raises(LinkAuthError) as error:
        opener.open(bytes(sealed))
    assert _code(error) == "not_sealed"
    with pytest.raises(LinkAuthError):
        opener.open(b"short")


def test_control_replay_refused() -> None:
    sealer, opener = _control_pair()
    sealed = sealer.seal(b"one")
    assert opener.open(sealed) == b"one"
    with pytest.raises(LinkAuthError) as error:
        opener.open(sealed)
    assert _code(error) == "not_sealed"


def test_control_reorder_refused_and_counter_kept() -> None:
    sealer, opener = _control_pair()
    first, second = sealer.seal(b"first"), sealer.seal(b"second")
    with pytest.raises(LinkAuthError):
        opener.open(second)
    # The failure did not advance the counter: the stream still reads in order.
    assert opener.open(first) == b"first"
    assert opener.open(second) == b"second"


def test_control_wrong_direction_key_refused() -> None:
    dialer, _ = _handshake()
    with pytest.raises(LinkAuthError):
        ControlOpener(dialer.control_receive).open(ControlSealer(dialer.control_send).seal(b"x"))


def test_keys_must_be_32_bytes() -> None:
    for make in (ControlSealer, ControlOpener, MediaOpener):
        with pytest.raises(ValueError):
            make(bytes(16))
    with pytest.raises(ValueError):
        MediaSealer(bytes(32), 2**32)


# --- media sealing -----------------------------------------------------------


def _media_pair(link_id: int = 0xC0FFEE) -> tuple[MediaSealer, MediaOpener]:
    dialer, acceptor = _handshake()
    return MediaSealer(dialer.media_send, link_id), MediaOpener(acceptor.media_receive)


def test_media_round_trip_and_header() -> None:
    sealer, opener = _media_pair(0xC0FFEE)
    rtp = bytes(range(200))
    datagram = sealer.seal(rtp)
    assert len(datagram) == MEDIA_HEADER + len(rtp) + 16
    assert datagram[:12] == (0xC0FFEE).to_bytes(4, "big") + (0).to_bytes(8, "big")
    assert media_link_id(datagram) == 0xC0FFEE
    assert opener.open(datagram) == rtp
    assert sealer.seal(b"")[4:12] == (1).to_bytes(8, "big")
    assert (opener.received, opener.refused) == (1, 0)


def test_media_replay_refused() -> None:
    sealer, opener = _media_pair()
    datagram = sealer.seal(b"rtp")
    assert opener.open(datagram) == b"rtp"
    assert opener.open(datagram) is None
    assert (opener.received, opener.refused) == (1, 1)


def test_media_reorder_within_window_accepted_once() -> None:
    sealer, opener = _media_pair()
    datagrams = [sealer.seal(i.to_bytes(2, "big")) for i in range(REPLAY_WINDOW + 1)]
    order = list(range(len(datagrams)))
    random.Random(5).shuffle(order)
    order.remove(REPLAY_WINDOW)
    order.append(REPLAY_WINDOW)  # highest last, so counter 0 is exactly the window behind
    order.remove(0)
    order.append(0)
    for i in order:
        assert opener.open(datagrams[i]) == i.to_bytes(2, "big")
    assert all(opener.open(datagram) is None for datagram in datagrams)
    assert opener.received == len(datagrams)


def test_media_too_old_refused() -> None:
    sealer, opener = _media_pair()
    old, edge = sealer.seal(b"old"), sealer.seal(b"edge")
    for _ in range(REPLAY_WINDOW - 1):
        sealer.seal(b"lost")
    assert opener.open(sealer.seal(b"new")) == b"new"  # counter REPLAY_WINDOW + 1
    assert opener.open(old) is None  # REPLAY_WINDOW + 1 behind
    assert opener.open(edge) == b"edge"  # exactly REPLAY_WINDOW behind


def test_media_big_jump_resets_window() -> None:
    sealer, opener = _media_pair()
    first = sealer.seal(b"0")
    for _ in range(5000):
        sealer.seal(b"lost")
    assert opener.open(sealer.seal(b"late")) == b"late"
    assert opener.open(first) is None
    assert opener.open(sealer.seal(b"next")) == b"next"


def test_media_other_link_or_key_refused() -> None:
    sealer, opener = _media_pair()
    other_key, _ = _media_pair()
    assert opener.open(other_key.seal(b"x")) is None
    # Rewriting the link id breaks the tag (the header is authenticated).
    datagram = bytearray(sealer.seal(b"x"))
    datagram[0] ^= 0xFF
    assert opener.open(bytes(datagram)) is None
    # An opener told its link id refuses a datagram sealed (validly) for another.
    dialer, acceptor = _handshake()
    strict = MediaOpener(acceptor.media_receive, link_id=1)
    assert strict.open(MediaSealer(dialer.media_send, 2).seal(b"x")) is None
    assert strict.open(MediaSealer(dialer.media_send, 1).seal(b"y")) == b"y"


def test_media_garbage_never_raises() -> None:
    _, opener = _media_pair()
    rng = random.Random(7)
    garbage = [bytes(n) for n in range(0, 100)]
    garbage += [rng.randbytes(n) for n in range(0, 1500, 7)]
    garbage += [b"\xff" * n for n in (28, 29, 1500, 65535)]
    for datagram in garbage:
        assert opener.open(datagram) is None
    assert opener.refused == len(garbage) and opener.received == 0
    assert media_link_id(bytes(27)) is None
    assert media_link_id(b"\x00\x00\x00\x05" + bytes(24)) == 5


def test_media_tampered_payload_refused_without_moving_window() -> None:
    sealer, opener = _media_pair()
    genuine = sealer.seal(b"payload")
    forged = bytearray(genuine)
    forged[-1] ^= 1
    assert opener.open(bytes(forged)) is None
    assert opener.open(genuine) == b"payload"


# --- loss accounting ---------------------------------------------------------


def test_take_loss_counts_from_counters() -> None:
    sealer, opener = _media_pair()
    datagrams = [sealer.seal(b"rtp") for _ in range(100)]
    dropped = set(range(40, 50))  # the last one (counter 99) arrives
    for i, datagram in enumerate(datagrams):
        if i not in dropped:
            opener.open(datagram)
    assert opener.take_loss() == (100, 10)
    assert opener.take_loss() == (0, 0)

    # Next interval: 20 more, 5 lost, plus 3 late ones from before: floor at 0 only
    # when the late ones outnumber the losses.
    more = [sealer.seal(b"rtp") for _ in range(20)]
    for datagram in more[:5] + more[10:]:
        opener.open(datagram)
    assert opener.take_loss() == (20, 5)
    for i in (40, 41, 42):
        opener.open(datagrams[i])
    opener.open(sealer.seal(b"rtp"))
    assert opener.take_loss() == (1, 0)


def test_take_loss_last_datagram_lost_shows_next_interval() -> None:
    sealer, opener = _media_pair()
    datagrams = [sealer.seal(b"rtp") for _ in range(10)]
    for datagram in datagrams[:9]:
        opener.open(datagram)
    assert opener.take_loss() == (9, 0)  # counter 9 is not known to exist yet
    opener.open(sealer.seal(b"rtp"))  # counter 10
    assert opener.take_loss() == (2, 1)


def test_refused_datagrams_do_not_count_as_received() -> None:
    sealer, opener = _media_pair()
    opener.open(b"junk" * 10)
    opener.open(sealer.seal(b"rtp"))
    assert opener.take_loss() == (1, 0)
