"""SFrame context and failure behaviour: CTR use, key roles, replay, unknown KIDs."""

from __future__ import annotations

import pytest

from client.e2ee import sframe
from client.e2ee.context import (
    DecryptStatus,
    EncryptFailure,
    ReplayWindow,
    SFrameContext,
)
from client.e2ee.errors import (
    AuthenticationError,
    FormatError,
    HeaderError,
    KeyUsageError,
    UnsupportedCipherSuiteError,
)
from client.e2ee.sframe import MAX_CTR, CipherSuite

ALL_SUITES = list(CipherSuite)
ALICE_KEY = bytes(range(16))
BOB_KEY = bytes(range(16, 32))
ALICE_KID = 0x1234


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pair(
    suite: int = CipherSuite.AES_128_GCM_SHA256_128, replay_window: int = 1024
) -> tuple[SFrameContext, SFrameContext]:
    sender = SFrameContext(suite)
    receiver = SFrameContext(suite, replay_window=replay_window)
    sender.add_send_key(ALICE_KID, ALICE_KEY)
    receiver.add_recv_key(ALICE_KID, ALICE_KEY)
    return sender, receiver


def seal(ctx: SFrameContext, pt: bytes = b"frame", meta: bytes = b"") -> bytes:
    out = ctx.protect(ALICE_KID, pt, meta)
    assert out is not None
    return out


# --- stateless functions: failures are SFrameError --------------------------------


@pytest.mark.parametrize("suite", ALL_SUITES, ids=lambda s: s.name)
def test_round_trip_every_suite(suite: CipherSuite) -> None:
    for kid, ctr in [(0, 0), (7, 7), (8, 8), (2**64 - 1, 2**64 - 1)]:
        for pt in [b"", b"x", bytes(1500)]:
            ct = sframe.encrypt(suite, ALICE_KEY, kid, ctr, b"meta", pt)
            assert sframe.decrypt(suite, ALICE_KEY, b"meta", ct) == (kid, ctr, pt)


@pytest.mark.parametrize("suite", ALL_SUITES, ids=lambda s: s.name)
def test_decrypt_failures_raise_sframe_error(suite: CipherSuite) -> None:
    ct = sframe.encrypt(suite, ALICE_KEY, 300, 70000, b"meta", b"payload")
    header_len = len(sframe.encode_header(300, 70000))
    with pytest.raises(AuthenticationError):
        sframe.decrypt(suite, BOB_KEY, b"meta", ct)  # wrong key
    with pytest.raises(AuthenticationError):
        sframe.decrypt(suite, ALICE_KEY, b"other", ct)  # wrong metadata
    retagged = sframe.encode_header(300, 70001)  # same length, CTR changed
    assert len(retagged) == header_len
    with pytest.raises(AuthenticationError):
        sframe.decrypt(suite, ALICE_KEY, b"meta", retagged + ct[header_len:])
    for i in range(len(ct)):  # every single-bit flip fails closed
        bad = bytearray(ct)
        bad[i] ^= 0x40
        with pytest.raises(sframe.SFrameError):
            sframe.decrypt(suite, ALICE_KEY, b"meta", bytes(bad))
    for n in range(len(ct)):  # every truncation fails closed
        with pytest.raises(sframe.SFrameError):
            sframe.decrypt(suite, ALICE_KEY, b"meta", ct[:n])
    with pytest.raises(FormatError):
        sframe.decrypt(suite, ALICE_KEY, b"meta", ct[: header_len + 1])
    with pytest.raises(HeaderError):
        sframe.decrypt(suite, ALICE_KEY, b"meta", b"")


def test_tampered_header_fields() -> None:
    suite = CipherSuite.AES_128_CTR_HMAC_SHA256_32
    ct = sframe.encrypt(suite, ALICE_KEY, 9, 9, b"", b"payload")
    assert ct[:3] == bytes([0x88, 9, 9])
    for header in [bytes([0x88, 9, 10]), bytes([0x88, 10, 9]), bytes([0x88, 8, 9])]:
        with pytest.raises(AuthenticationError):
            sframe.decrypt(suite, ALICE_KEY, b"", header + ct[3:])


def test_non_minimal_and_truncated_headers_are_malformed() -> None:
    for bad in [
        bytes([0x08, 0x05]),  # CTR 5 must live in the config byte
        bytes([0x09, 0x00, 0x09]),  # leading zero byte in CTR
        bytes([0x80, 0x07, 0x00]),  # KID 7 must live in the config byte
        bytes([0x90, 0x00, 0x10, 0x00]),  # leading zero byte in KID
        bytes([0x0F]),  # CTR of 8 bytes promised, none present
        bytes([0xF8, 1, 2, 3]),  # KID of 8 bytes promised, 3 present
    ]:
        with pytest.raises(HeaderError):
            sframe.decode_header(bad)


def test_out_of_range_values_and_unknown_suite() -> None:
    with pytest.raises(HeaderError):
        sframe.encode_header(2**64, 0)
    with pytest.raises(HeaderError):
        sframe.encode_header(0, -1)
    with pytest.raises(UnsupportedCipherSuiteError):
        sframe.encrypt(6, ALICE_KEY, 1, 1, b"", b"x")
    with pytest.raises(sframe.SFrameError):
        sframe.decrypt(0, ALICE_KEY, b"", b"\x00" + bytes(16))


def test_header_is_minimal_at_every_boundary() -> None:
    for value in [0, 7, 8, 255, 256, 2**16 - 1, 2**16, 2**56 - 1, 2**56, 2**64 - 1]:
        size = 0 if value < 8 else max(1, (value.bit_length() + 7) // 8)
        assert len(sframe.encode_header(value, 0)) == 1 + size
        assert len(sframe.encode_header(0, value)) == 1 + size
        parsed = sframe.decode_header(sframe.encode_header(value, value))
        assert (parsed.kid, parsed.ctr) == (value, value)


# --- sender: CTR monotonic and never reused ---------------------------------------


def test_ctr_is_monotonic_and_never_reused() -> None:
    sender, receiver = pair()
    ctrs = []
    for i in range(300):
        ct = seal(sender, b"f%d" % i)
        ctrs.append(sframe.decode_header(ct).ctr)
        assert receiver.unprotect(ct).plaintext == b"f%d" % i
    assert ctrs == list(range(300))
    assert sender.next_ctr(ALICE_KID) == 300
    assert sender.stats.encrypted == 300 and receiver.stats.decrypted == 300


def test_sending_kid_cannot_be_reset_or_readded() -> None:
    sender, _ = pair()
    seal(sender)
    with pytest.raises(KeyUsageError):
        sender.add_send_key(ALICE_KID, ALICE_KEY)  # would restart CTR at 0
    sender.remove_key(ALICE_KID)
    with pytest.raises(KeyUsageError):
        sender.add_send_key(ALICE_KID, ALICE_KEY)
    assert sender.protect(ALICE_KID, b"x") is None
    assert sender.stats.encrypt_failures[EncryptFailure.UNKNOWN_KID] == 1


def test_ctr_exhaustion_refuses_instead_of_wrapping() -> None:
    sender = SFrameContext(CipherSuite.AES_128_CTR_HMAC_SHA256_80)
    sender.add_send_key(1, ALICE_KEY, next_ctr=MAX_CTR)
    last = sender.protect(1, b"last")
    assert last is not None and sframe.decode_header(last).ctr == MAX_CTR
    assert sender.protect(1, b"again") is None
    assert sender.protect(1, b"again") is None
    assert sender.stats.encrypt_failures[EncryptFailure.CTR_EXHAUSTED] == 2


# --- key roles --------------------------------------------------------------------


def test_encrypt_only_and_decrypt_only_keys_are_enforced() -> None:
    sender, receiver = pair()
    # a receive key cannot encrypt; a send key's frames are not accepted for decryption
    assert receiver.protect(ALICE_KID, b"x") is None
    assert receiver.stats.encrypt_failures[EncryptFailure.WRONG_KEY_USAGE] == 1
    result = sender.unprotect(seal(sender))
    assert result.status is DecryptStatus.WRONG_KEY_USAGE and result.plaintext is None
    assert sender.stats.decrypt_failures[DecryptStatus.WRONG_KEY_USAGE] == 1
    # the same KID or the same base key can't take the other role in one context
    with pytest.raises(KeyUsageError):
        sender.add_recv_key(ALICE_KID, BOB_KEY)
    with pytest.raises(KeyUsageError):
        sender.add_recv_key(99, ALICE_KEY)
    with pytest.raises(KeyUsageError):
        receiver.add_send_key(ALICE_KID, BOB_KEY)
    with pytest.raises(KeyUsageError):
        receiver.add_send_key(99, ALICE_KEY)
    # distinct keys in distinct roles are fine
    sender.add_recv_key(7, BOB_KEY)
    receiver.add_send_key(7 + 1, bytes(16))


# --- receiver: replay window and failures as counted results ------------------------


def test_replay_window_rejects_repeats_and_old_accepts_reordering() -> None:
    sender, receiver = pair(replay_window=16)
    frames = [seal(sender, b"%d" % i) for i in range(40)]
    order = [0, 2, 1, 5, 3, 4, 20, 10, 19, 6]  # 6 is 14 behind 20: inside a 16 window
    for i in order:
        assert receiver.unprotect(frames[i]).status is DecryptStatus.OK, i
    for i in order:  # now 20 is the highest: within 16 behind is a replay, else too old
        expected = DecryptStatus.REPLAY if 20 - i < 16 else DecryptStatus.TOO_OLD
        assert receiver.unprotect(frames[i]).status is expected, i
    assert receiver.unprotect(frames[7]).status is DecryptStatus.OK  # never seen, in window
    assert receiver.unprotect(frames[39]).status is DecryptStatus.OK
    assert receiver.unprotect(frames[20]).status is DecryptStatus.TOO_OLD
    assert receiver.unprotect(frames[30]).status is DecryptStatus.OK
    stats = receiver.stats
    assert stats.decrypted == len(order) + 3
    assert stats.decrypt_failures[DecryptStatus.REPLAY] == 5  # 5, 20, 10, 19, 6
    assert stats.decrypt_failures[DecryptStatus.TOO_OLD] == 5 + 1  # 0-4, then 20


def test_forged_frames_do_not_move_the_replay_window() -> None:
    sender, receiver = pair(replay_window=8)
    early = seal(sender)
    forged = sframe.encrypt(
        CipherSuite.AES_128_GCM_SHA256_128, BOB_KEY, ALICE_KID, 10**6, b"", b"x"
    )
    assert receiver.unprotect(forged).status is DecryptStatus.AUTH_FAILED
    assert receiver.unprotect(early).status is DecryptStatus.OK


def test_replay_window_unit() -> None:
    window = ReplayWindow(4)
    assert window.check(2**64 - 1) is None
    window.commit(2**64 - 1)  # a huge jump must stay cheap
    assert window.check(2**64 - 1) is DecryptStatus.REPLAY
    assert window.check(2**64 - 4) is None
    assert window.check(2**64 - 5) is DecryptStatus.TOO_OLD
    with pytest.raises(ValueError):
        ReplayWindow(0)


@pytest.mark.parametrize("suite", ALL_SUITES, ids=lambda s: s.name)
def test_receiver_counts_failures_without_raising(suite: CipherSuite) -> None:
    sender, receiver = pair(suite)
    _, wrong = pair(suite)
    wrong.remove_key(ALICE_KID)
    wrong.add_recv_key(ALICE_KID, BOB_KEY)
    good = seal(sender, b"payload", b"meta")
    tampered_body = good[:-1] + bytes([good[-1] ^ 1])
    header_len = len(sframe.decode_header(good).encoded)
    tampered_header = bytes([good[0]]) + bytes([good[1] ^ 1]) + good[2:]
    cases = [
        (wrong, good, b"meta", DecryptStatus.AUTH_FAILED),
        (receiver, good, b"other", DecryptStatus.AUTH_FAILED),
        (receiver, tampered_body, b"meta", DecryptStatus.AUTH_FAILED),
        (receiver, tampered_header, b"meta", DecryptStatus.PENDING),  # KID now unknown
        (receiver, good[: header_len + 2], b"meta", DecryptStatus.MALFORMED),
        (receiver, good[:1], b"meta", DecryptStatus.MALFORMED),
        (receiver, b"", b"meta", DecryptStatus.MALFORMED),
    ]
    for ctx, data, meta, expected in cases:
        result = ctx.unprotect(data, meta)
        assert result.status is expected
        assert result.plaintext is None and not result.ok
    assert receiver.stats.decrypt_failures[DecryptStatus.AUTH_FAILED] == 2
    assert receiver.stats.decrypt_failures[DecryptStatus.MALFORMED] == 3
    assert wrong.stats.decrypt_failures[DecryptStatus.AUTH_FAILED] == 1
    # none of that disturbed the good frame
    ok = receiver.unprotect(good, b"meta")
    assert ok.ok and ok.plaintext == b"payload" and ok.kid == ALICE_KID and ok.ctr == 0


def test_ctr_tampered_header_is_auth_failure() -> None:
    sender, receiver = pair()
    for _ in range(9):
        seal(sender)
    good = seal(sender)  # CTR 9: header 0x?8 0x09 after the KID bytes
    tampered = good[:3] + bytes([good[3] ^ 0x02]) + good[4:]
    assert sframe.decode_header(tampered).ctr == 11
    assert receiver.unprotect(tampered).status is DecryptStatus.AUTH_FAILED
    assert receiver.unprotect(good).ok


# --- unknown KIDs -----------------------------------------------------------------


def test_unknown_kid_is_buffered_then_released_when_key_arrives() -> None:
    clock = FakeClock()
    sender = SFrameContext(CipherSuite.AES_256_GCM_SHA512_128)
    receiver = SFrameContext(CipherSuite.AES_256_GCM_SHA512_128, clock=clock)
    sender.add_send_key(ALICE_KID, ALICE_KEY)
    frames = [sender.protect(ALICE_KID, b"%d" % i, b"m") for i in range(3)]
    for f in frames:
        assert f is not None
        assert receiver.unprotect(f, b"m").status is DecryptStatus.PENDING
    assert receiver.pending_count == 3
    clock.now += 0.1
    released = receiver.add_recv_key(ALICE_KID, ALICE_KEY)
    assert [r.plaintext for r in released] == [b"0", b"1", b"2"]
    assert receiver.pending_count == 0 and receiver.stats.decrypted == 3


def test_unknown_kid_buffer_expires_and_is_bounded() -> None:
    clock = FakeClock()
    sender = SFrameContext(CipherSuite.AES_128_GCM_SHA256_128)
    receiver = SFrameContext(
        CipherSuite.AES_128_GCM_SHA256_128, pending_limit=2, pending_ttl=0.5, clock=clock
    )
    sender.add_send_key(ALICE_KID, ALICE_KEY)
    frames = [seal(sender, b"%d" % i) for i in range(4)]
    for f in frames[:3]:
        assert receiver.unprotect(f).status is DecryptStatus.PENDING
    assert receiver.pending_count == 2  # the oldest was evicted
    assert receiver.stats.dropped_unknown_kid == 1
    clock.now += 0.6
    assert receiver.unprotect(b"").status is DecryptStatus.MALFORMED  # any call expires
    assert receiver.pending_count == 0 and receiver.stats.dropped_unknown_kid == 3
    assert receiver.add_recv_key(ALICE_KID, ALICE_KEY) == []
    assert receiver.unprotect(frames[3]).plaintext == b"3"


def test_unknown_kid_dropped_when_buffering_is_off() -> None:
    sender = SFrameContext(CipherSuite.AES_128_GCM_SHA256_128)
    receiver = SFrameContext(CipherSuite.AES_128_GCM_SHA256_128, pending_limit=0)
    sender.add_send_key(ALICE_KID, ALICE_KEY)
    assert receiver.unprotect(seal(sender)).status is DecryptStatus.UNKNOWN_KID
    assert receiver.stats.decrypt_failures[DecryptStatus.UNKNOWN_KID] == 1
    assert receiver.pending_count == 0
