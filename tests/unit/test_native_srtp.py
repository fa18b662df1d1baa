"""relay._native (relay/native/srtp.c) does what aiortc's pylibsrtp sessions do.

For every profile aiortc negotiates, with random keys and sessions built as aiortc's
RTCDtlsTransport._setup_srtp builds them: the same SRTP/SRTCP bytes out of protect,
the same plaintext or the same libsrtp status out of unprotect (replays, packets
older than the window, tampering), and garbage is an error, never a crash. The keys
come out of a real aiortc DTLS handshake the same as aiortc's own (relay/native_keys.py).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import aioice.ice
import aiortc.rtcdtlstransport as dtls_module
import pylibsrtp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conclave import ice
from relay import _native as native
from relay.native_keys import aiortc_session, keys_from_dtls

PROFILES = [
    native.SRTP_AES128_CM_SHA1_80,
    native.SRTP_AEAD_AES_128_GCM,
    native.SRTP_AEAD_AES_256_GCM,
]
TAG = {
    native.SRTP_AES128_CM_SHA1_80: 10,
    native.SRTP_AEAD_AES_128_GCM: 16,
    native.SRTP_AEAD_AES_256_GCM: 16,
}
# pylibsrtp's own buffer is 1500 bytes with room kept for libsrtp's largest trailer,
# so this is the longest packet both can protect.
REFERENCE_MAX = 1500 - pylibsrtp.SRTP_MAX_SRTCP_TRAILER_LEN
BAD_PARAM, AUTH_FAIL, REPLAY_FAIL, REPLAY_OLD = 2, 7, 9, 10

Outcome = bytes | int | str  # plaintext/ciphertext, a libsrtp status, or a refusal


reference = aiortc_session


def ours(fn: Callable[[bytes], bytes], data: bytes) -> Outcome:
    try:
        return fn(data)
    except native.SrtpError as exc:
        assert isinstance(exc.status, int) and exc.status != 0
        return exc.status


def theirs(fn: Callable[[bytes], bytes], data: bytes) -> Outcome:
    try:
        return fn(data)
    except pylibsrtp.Error as exc:
        return pylibsrtp.ERRORS.index(str(exc))
    except ValueError:
        return "too long"


def rtp(
    seq: int,
    ssrc: int,
    payload: bytes,
    *,
    timestamp: int = 0,
    pt: int = 96,
    marker: bool = False,
    csrcs: tuple[int, ...] = (),
    extension: bytes | None = None,
) -> bytes:
    first = 0x80 | len(csrcs) | (0x10 if extension is not None else 0)
    header = struct.pack(
        "!BBHII", first, pt | (0x80 if marker else 0), seq & 0xFFFF, timestamp, ssrc
    )
    header += b"".join(struct.pack("!I", c) for c in csrcs)
    if extension is not None:
        extension += b"\0" * (-len(extension) % 4)
        header += struct.pack("!HH", 0xBEDE, len(extension) // 4) + extension
    return header + payload


def rtcp_rr(ssrc: int, blocks: int, rng: random.Random) -> bytes:
    body = rng.randbytes(24 * blocks)
    return struct.pack("!BBHI", 0x80 | blocks, 201, 1 + 6 * blocks, ssrc) + body


def rtp_stream(rng: random.Random, count: int) -> list[bytes]:
    """Three SSRCs, one wrapping its sequence number (ROC 0 -> 1), with CSRCs,
    header extensions, empty and full-size payloads and retransmissions."""
    ssrcs = {rng.getrandbits(32): rng.randrange(65536) for _ in range(2)}
    ssrcs[rng.getrandbits(32)] = 65530
    packets: list[bytes] = []
    for i in range(count):
        ssrc = rng.choice(list(ssrcs))
        if packets and rng.random() < 0.05:
            packets.append(rng.choice(packets))  # a retransmission, same bytes
            continue
        seq = ssrcs[ssrc]
        ssrcs[ssrc] = (seq + 1) & 0xFFFF
        csrcs = tuple(rng.getrandbits(32) for _ in range(rng.choice((0, 0, 1, 3))))
        extension = rng.randbytes(rng.randrange(1, 12)) if rng.random() < 0.5 else None
        header_len = 12 + 4 * len(csrcs) + (0 if extension is None else 4 + 12)
        size = rng.choice((0, 1, 160, 1000, REFERENCE_MAX - header_len, rng.randrange(1200)))
        packets.append(
            rtp(
                seq,
                ssrc,
                rng.randbytes(size),
                timestamp=i * 3000,
                marker=i % 7 == 0,
                csrcs=csrcs,
                extension=extension,
            )
        )
    return packets


@pytest.fixture(params=PROFILES, ids=["aes128cm_sha1_80", "aead_aes128gcm", "aead_aes256gcm"])
def profile(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value


def key_for(profile: int) -> bytes:
    return os.urandom(native.key_and_salt_length(profile))


def test_constants_are_libsrtps_profile_numbers() -> None:
    assert native.SRTP_AES128_CM_SHA1_80 == pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80
    assert native.SRTP_AEAD_AES_128_GCM == pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM
    assert native.SRTP_AEAD_AES_256_GCM == pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM
    for p in dtls_module.SRTP_PROFILES:
        assert native.key_and_salt_length(p.libsrtp_profile) == p.key_length + p.salt_length
    assert native.MAX_PACKET == 1500
    assert native.LIBSRTP_VERSION.startswith("libsrtp2 ")


def test_rtp_protect_is_byte_identical_and_unprotects_both_ways(profile: int) -> None:
    key = key_for(profile)
    rng = random.Random(profile)
    our_tx, ref_tx = native.Session(profile, key, True), reference(profile, key, True)
    our_rx, ref_rx = native.Session(profile, key, False), reference(profile, key, False)
    assert (our_tx.profile, our_tx.outbound, our_rx.outbound) == (profile, True, False)
    seen: set[bytes] = set()
    for plain in rtp_stream(rng, 400):
        protected = our_tx.protect(plain)
        assert protected == ref_tx.protect(plain)
        assert len(protected) == len(plain) + TAG[profile]
        assert protected[:12] == plain[:12]  # the header stays in clear
        # Each receiver gets the other's output: the same plaintext, or (a
        # retransmission) the same replay refusal.
        expected: Outcome = REPLAY_FAIL if plain in seen else plain
        assert ours(our_rx.unprotect, protected) == expected
        assert theirs(ref_rx.unprotect, protected) == expected
        seen.add(plain)


def test_sender_index_and_window_match_libsrtp(profile: int) -> None:
    """The packet index (rollover counter) a sender estimates from each sequence
    number, and its 1024-packet window (a repeat allowed, anything older refused):
    random walks with wraps both ways, jumps of half the sequence space, steps
    back inside and beyond the window, several SSRCs, from every kind of start.
    The relay's outbound RTP is srtp_send.c's, not libsrtp's, on every profile."""
    key = key_for(profile)
    rng = random.Random(1000 + profile)
    outcomes: list[Outcome] = []
    for start in (0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFF0, 0xFFFF, *rng.sample(range(65536), 3)):
        our_tx, ref_tx = native.Session(profile, key, True), reference(profile, key, True)
        seqs = {0x1111: start, 0x2222: rng.randrange(65536)}
        for _ in range(300):
            ssrc = rng.choice(list(seqs))
            roll = rng.random()
            step = (
                1 if roll < 0.55
                else 0 if roll < 0.62
                else rng.randrange(2, 3000) if roll < 0.72
                else -rng.randrange(1, 60) if roll < 0.82
                else -rng.randrange(1000, 1100) if roll < 0.88
                else rng.randrange(30000, 36000) if roll < 0.94
                else -rng.randrange(30000, 36000)
            )  # fmt: skip
            seq = (seqs[ssrc] + step) & 0xFFFF
            if step >= 0 or rng.random() < 0.3:  # most steps back are one-off probes
                seqs[ssrc] = seq
            plain = rtp(seq, ssrc, rng.randbytes(rng.choice((0, 7, 200))))
            mine, ref = ours(our_tx.protect, plain), theirs(ref_tx.protect, plain)
            assert mine == ref, (start, hex(ssrc), seq, mine, ref)
            outcomes.append(mine if isinstance(mine, int) else "ok")
    assert outcomes.count(REPLAY_OLD) >= 20 and outcomes.count("ok") >= 1500


def test_rtcp_protect_is_byte_identical_and_counts_the_srtcp_index(profile: int) -> None:
    key = key_for(profile)
    rng = random.Random(profile + 100)
    our_tx, ref_tx = native.Session(profile, key, True), reference(profile, key, True)
    our_rx, ref_rx = native.Session(profile, key, False), reference(profile, key, False)
    ssrcs = [rng.getrandbits(32) for _ in range(3)]
    sent = dict.fromkeys(ssrcs, 0)
    for _ in range(60):
        ssrc = rng.choice(ssrcs)
        plain = rtcp_rr(ssrc, rng.randrange(0, 4), rng)
        protected = our_tx.protect_rtcp(plain)
        assert protected == ref_tx.protect_rtcp(plain)
        assert len(protected) == len(plain) + 4 + TAG[profile]
        sent[ssrc] += 1
        # E flag and 31-bit index: before the tag (RFC 3711), or last (RFC 7714 AEAD).
        at = len(protected) - 4 - (TAG[profile] if profile == native.SRTP_AES128_CM_SHA1_80 else 0)
        (e_and_index,) = struct.unpack_from("!I", protected, at)
        assert e_and_index == 0x80000000 | sent[ssrc]
        assert our_rx.unprotect_rtcp(protected) == plain
        assert ref_rx.unprotect_rtcp(protected) == plain
        # SRTCP replays are refused the same way.
        assert ours(our_rx.unprotect_rtcp, protected) == theirs(ref_rx.unprotect_rtcp, protected)
        assert ours(our_rx.unprotect_rtcp, protected) == REPLAY_FAIL


def test_unprotect_of_pylibsrtp_output(profile: int) -> None:
    key = key_for(profile)
    ref_tx, our_rx = reference(profile, key, True), native.Session(profile, key, False)
    for plain in rtp_stream(random.Random(profile + 200), 100):
        assert ours(our_rx.unprotect, ref_tx.protect(plain)) in (plain, REPLAY_FAIL)
    rr = rtcp_rr(1234, 1, random.Random(1))
    assert our_rx.unprotect_rtcp(ref_tx.protect_rtcp(rr)) == rr


def test_replay_window_matches(profile: int) -> None:
    """Duplicates, reordering inside the 1024-packet window, packets behind it."""
    key = key_for(profile)
    tx = reference(profile, key, True)
    ssrc = 0x5EED
    packets = {seq: tx.protect(rtp(seq, ssrc, bytes([seq & 0xFF]) * 20)) for seq in range(0, 3000)}
    order = [
        10,
        11,
        10,
        12,
        9,
        0,
        11,
        1500,
        1500,
        600,
        476,
        477,
        475,
        1499,
        1400,
        2900,
        1800,
        1877,
        1876,
        2899,
        2901,
        2901,
        2000,
        10,
        2950,
        2999,
        1976,
        1975,
    ]
    our_rx, ref_rx = native.Session(profile, key, False), reference(profile, key, False)
    results = []
    for seq in order:
        mine, ref = ours(our_rx.unprotect, packets[seq]), theirs(ref_rx.unprotect, packets[seq])
        assert mine == ref, (seq, mine, ref)
        results.append(mine if isinstance(mine, int) else "ok")
    # The window really is 1024 and both refusals happen (not all "ok").
    assert results.count(REPLAY_FAIL) >= 4 and results.count(REPLAY_OLD) >= 4
    assert results[order.index(477)] == "ok" and results[order.index(476)] == REPLAY_OLD


def test_tampered_packets_are_refused_as_pylibsrtp_refuses_them(profile: int) -> None:
    key = key_for(profile)
    tx = reference(profile, key, True)
    rng = random.Random(profile + 300)
    plain = rtp(100, 0xABCDEF, rng.randbytes(300), extension=b"\x10\x01")
    protected = tx.protect(plain)
    srtcp = tx.protect_rtcp(rtcp_rr(0xABCDEF, 2, rng))
    positions = [0, 1, 3, 5, 9, 20, 150, len(protected) - TAG[profile], len(protected) - 1]
    for at in positions:
        for packet, name in ((protected, "unprotect"), (srtcp, "unprotect_rtcp")):
            if at >= len(packet):
                continue
            bad = bytearray(packet)
            bad[at] ^= 0x01
            our_rx, ref_rx = native.Session(profile, key, False), reference(profile, key, False)
            mine = ours(getattr(our_rx, name), bytes(bad))
            assert mine == theirs(getattr(ref_rx, name), bytes(bad)), (name, at)
            assert isinstance(mine, int), (name, at)  # never accepted
            # and the untouched packet still passes afterwards
            assert getattr(our_rx, name)(packet) != packet
    # A packet under another key is refused too.
    other = native.Session(profile, key_for(profile), False)
    assert ours(other.unprotect, protected) == AUTH_FAIL


def test_lengths_are_bounded(profile: int) -> None:
    key = key_for(profile)
    tx, rx = native.Session(profile, key, True), native.Session(profile, key, False)
    largest = rtp(1, 7, b"\xaa" * (native.MAX_PACKET - 12))
    protected = tx.protect(largest)
    assert len(protected) == native.MAX_PACKET + TAG[profile]
    assert rx.unprotect(protected) == largest
    for fn, packet in (
        (tx.protect, largest + b"x"),
        (tx.protect_rtcp, rtcp_rr(7, 0, random.Random()) + b"\0" * (native.MAX_PACKET - 7)),
        (rx.unprotect, protected + b"x"),
        (rx.unprotect_rtcp, b"\x80\xc9" + b"\0" * (native.MAX_PACKET + 4 + TAG[profile] - 1)),
        (tx.protect, b"\x80" * 11),  # shorter than an RTP header
        (tx.protect, rtp(1, 7, b"")[:-1]),
        (tx.protect, b"\x8f" + b"\0" * 70),  # 15 CSRCs claimed, 17 words there
        (tx.protect, rtp(1, 7, b"", extension=b"\1\2\3\4")[:-1]),
        (tx.protect, b"\x90" + b"\0" * 13 + b"\xff\xff"),  # extension longer than the packet
        (tx.protect_rtcp, b"\x80\xc9\x00\x01\x00\x00\x00"),
        (rx.unprotect, protected[: 12 + TAG[profile] - 1]),
        (rx.unprotect_rtcp, b"\x80\xc9\x00\x01" + b"\0" * (4 + 4 + TAG[profile] - 1)),
        (tx.unprotect, protected),  # wrong direction
        (rx.protect, largest),
    ):
        with pytest.raises(native.SrtpError) as raised:
            fn(packet)
        assert raised.value.status == BAD_PARAM
    with pytest.raises(native.SrtpError, match="too long"):
        tx.protect(largest + b"x")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unsupported SRTP profile"):
        native.Session(2, b"\0" * 30, True)  # aes128_cm_sha1_32: not one aiortc uses
    with pytest.raises(ValueError, match="must be 30 bytes"):
        native.Session(native.SRTP_AES128_CM_SHA1_80, b"\0" * 29, True)
    with pytest.raises(ValueError):
        native.key_and_salt_length(0)
    with pytest.raises(TypeError):
        native.Session(native.SRTP_AES128_CM_SHA1_80, b"\0" * 30, True).protect("text")  # type: ignore[arg-type]
    # Any buffer will do, not only bytes.
    session = native.Session(native.SRTP_AES128_CM_SHA1_80, bytearray(30), True)
    assert session.protect(memoryview(rtp(1, 2, b"abc"))) == session.protect(rtp(1, 2, b"abc"))


def _status_of(exc: native.SrtpError) -> int:
    return exc.status


GARBAGE_SESSIONS = {
    p: (
        native.Session(p, bytes(range(native.key_and_salt_length(p))), True),
        native.Session(p, bytes(range(native.key_and_salt_length(p))), False),
    )
    for p in PROFILES
}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(min_size=0, max_size=2000),
    profile=st.sampled_from(PROFILES),
    prefix=st.sampled_from([b"", b"\x80", b"\x90", b"\x8f", b"\x80\xc8", b"\x9f\xff"]),
)
def test_garbage_is_an_error_never_a_crash(data: bytes, profile: int, prefix: bytes) -> None:
    data = (prefix + data)[:2000]
    tx, rx = GARBAGE_SESSIONS[profile]
    for fn, grows in (
        (tx.protect, TAG[profile]),
        (tx.protect_rtcp, 4 + TAG[profile]),
        (rx.unprotect, None),
        (rx.unprotect_rtcp, None),
    ):
        try:
            out = fn(data)
        except native.SrtpError as exc:
            assert _status_of(exc) > 0
        else:
            assert isinstance(out, bytes)
            if grows is None:
                assert len(out) < len(data)
            else:
                assert len(out) == len(data) + grows and len(data) <= native.MAX_PACKET


def _rss_kib() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def test_dealloc_frees_the_libsrtp_session() -> None:
    key = key_for(native.SRTP_AEAD_AES_256_GCM)

    def churn(n: int) -> None:
        for i in range(n):
            s = native.Session(native.SRTP_AEAD_AES_256_GCM, key, i % 2 == 0)
            if i % 2 == 0:
                s.protect(rtp(i, i, b"x"))  # clones a stream per SSRC: more to free
            del s

    churn(2000)  # warm up allocator pools
    before = _rss_kib()
    churn(20000)
    assert _rss_kib() - before < 4096


# ------------------------------------------------------- the C API, in place

C_PROGRAM = r"""
#include <stdio.h>
#include <string.h>
#include "srtp.h"

#define BAD srtp_err_status_bad_param
#define GCM256 NATIVE_SRTP_AEAD_AES_256_GCM
#define ROOM NATIVE_SRTP_PROTECT_HEADROOM
#define CHECK(cond) do { if (!(cond)) { printf("FAIL line %d\n", __LINE__); return 1; } } while (0)

int main(void)
{
    CHECK(native_srtp_init() == 0 && native_srtp_init() == 0);
    uint8_t key[44];
    for (size_t i = 0; i < sizeof key; i++) key[i] = (uint8_t)i;
    native_srtp_t tx, rx;
    CHECK(native_srtp_open(&tx, 99, key, 44, 1) == BAD && tx.session == NULL);
    CHECK(native_srtp_open(&tx, GCM256, key, 43, 1) == BAD);
    CHECK(native_srtp_open(&tx, GCM256, key, 44, 1) == 0);
    CHECK(native_srtp_open(&rx, GCM256, key, 44, 0) == 0);

    uint8_t buf[NATIVE_SRTP_BUFFER_SIZE], plain[200], copy[sizeof buf];
    memset(plain, 0x5a, sizeof plain);
    plain[0] = 0x80; plain[1] = 96; plain[3] = 1; plain[11] = 9;
    memcpy(buf, plain, sizeof plain);
    memcpy(copy, buf, sizeof buf);
    size_t len = sizeof plain;
    /* One byte short of the headroom: refused, buffer and length untouched. */
    CHECK(native_srtp_protect(&tx, buf, &len, len + ROOM - 1, 0) == BAD);
    CHECK(len == sizeof plain && memcmp(buf, copy, sizeof buf) == 0);
    CHECK(native_srtp_protect(&tx, buf, &len, len + ROOM, 0) == 0);
    CHECK(len == sizeof plain + 16 && memcmp(buf + 12, plain + 12, 20) != 0);
    CHECK(native_srtp_unprotect(&rx, buf, &len, 0) == 0);
    CHECK(len == sizeof plain && memcmp(buf, plain, len) == 0);

    len = 1501;
    CHECK(native_srtp_protect(&tx, buf, &len, sizeof buf, 0) == BAD);
    len = 8;
    CHECK(native_srtp_protect(&tx, buf, &len, sizeof buf, 1) == 0 && len == 8 + 4 + 16);
    CHECK(native_srtp_unprotect(&rx, buf, &len, 1) == 0 && len == 8);

    native_srtp_close(&tx);
    native_srtp_close(&tx); /* closing twice is harmless */
    len = sizeof plain;
    CHECK(native_srtp_protect(&tx, buf, &len, sizeof buf, 0) == BAD);
    native_srtp_close(&rx);
    printf("OK\n");
    return 0;
}
"""


@pytest.fixture
def c_compiler() -> Iterator[str]:
    gcc = shutil.which("gcc")
    if gcc is None or not Path("/usr/include/srtp2/srtp.h").exists():
        pytest.skip("needs gcc and libsrtp2-dev")
    yield gcc


def test_c_functions_protect_in_place_within_capacity(c_compiler: str, tmp_path: Path) -> None:
    native_dir = Path(__file__).resolve().parents[2] / "relay" / "native"
    (tmp_path / "main.c").write_text(C_PROGRAM)
    exe = tmp_path / "srtp_c_test"
    subprocess.run(
        [
            c_compiler,
            "-std=c11",
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-DNATIVE_SRTP_NO_PYTHON",
            f"-I{native_dir}",
            str(tmp_path / "main.c"),
            str(native_dir / "srtp.c"),
            str(native_dir / "srtp_send.c"),
            str(native_dir / "crypto.c"),
            "-lsrtp2",
            "-lcrypto",
            "-o",
            str(exe),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and run.stdout.strip() == "OK", run.stdout + run.stderr


# ------------------------------------------- keys from a real aiortc handshake


@pytest.fixture
def loopback_ice() -> Iterator[None]:
    host_addresses = aioice.ice.get_host_addresses
    ice.use_host_addresses(["127.0.0.1"])
    yield
    aioice.ice.get_host_addresses = host_addresses


async def _connected_pair() -> tuple[RTCPeerConnection, RTCPeerConnection]:
    a = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    b = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    a.createDataChannel("keys")  # a DTLS transport with no media on it
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    async with asyncio.timeout(20):
        while (
            a.sctp is None
            or b.sctp is None
            or not (a.sctp.transport.state == "connected" and b.sctp.transport.state == "connected")
        ):
            await asyncio.sleep(0.02)
    return a, b


@pytest.mark.parametrize(
    "profile", PROFILES, ids=["aes128cm_sha1_80", "aead_aes128gcm", "aead_aes256gcm"]
)
async def test_keys_from_a_real_aiortc_handshake(
    profile: int, loopback_ice: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Offer only this profile, so each is negotiated once.
    only = [p for p in dtls_module.SRTP_PROFILES if p.libsrtp_profile == profile]
    monkeypatch.setattr(dtls_module, "SRTP_PROFILES", only)
    a, b = await _connected_pair()
    try:
        assert a.sctp is not None and b.sctp is not None
        dtls_a, dtls_b = a.sctp.transport, b.sctp.transport
        assert {dtls_a._role, dtls_b._role} == {"client", "server"}
        assert dtls_a._ssl is not None and dtls_b._ssl is not None
        keys_a = keys_from_dtls(dtls_a._ssl, dtls_a._role)
        keys_b = keys_from_dtls(dtls_b._ssl, dtls_b._role)
        assert keys_a.profile == keys_b.profile == profile
        assert keys_a.tx_key_and_salt == keys_b.rx_key_and_salt != keys_a.rx_key_and_salt
        assert keys_b.tx_key_and_salt == keys_a.rx_key_and_salt

        rng = random.Random(profile)
        sides = [
            (
                their_dtls,
                native.Session(keys.profile, keys.tx_key_and_salt, True),
                native.Session(keys.profile, keys.rx_key_and_salt, False),
            )
            for keys, their_dtls in ((keys_a, dtls_b), (keys_b, dtls_a))
        ]
        # SSRCs aiortc's own RTCP never uses, so their replay state is ours alone;
        # one session per direction all along, as the engine will hold them (a
        # fresh sender would restart the SRTCP index and be refused as a replay).
        for seq in range(5):
            for their_dtls, tx, rx in sides:
                plain = rtp(seq, 0x0A0B0C0D, rng.randbytes(200))
                report = rtcp_rr(0x0A0B0C0D, 1, rng)
                # our sender -> aiortc's receiving session on the other side
                assert their_dtls._rx_srtp.unprotect(tx.protect(plain)) == plain
                assert their_dtls._rx_srtp.unprotect_rtcp(tx.protect_rtcp(report)) == report
                # aiortc's sending session on the other side -> our receiver
                other = rtp(seq, 0x01020304, rng.randbytes(100))
                assert rx.unprotect(their_dtls._tx_srtp.protect(other)) == other
                assert rx.unprotect_rtcp(their_dtls._tx_srtp.protect_rtcp(report)) == report
                # the halves are not interchangeable: our receiver refuses our sending
                with pytest.raises(native.SrtpError) as raised:
                    rx.unprotect(tx.protect(rtp(seq, 0x0F0F0F0F, b"x" * 10)))
                assert raised.value.status == AUTH_FAIL
        assert dtls_a._state.name == dtls_b._state.name == "CONNECTED"
    finally:
        await a.close()
        await b.close()


def test_keys_from_dtls_refuses_unknown_role_and_profile() -> None:
    class FakeConnection:
        def __init__(self, name: bytes) -> None:
            self.name = name

        def get_selected_srtp_profile(self) -> bytes:
            return self.name

        def export_keying_material(
            self, label: bytes, olen: int, context: bytes | None = None
        ) -> bytes:
            assert label == b"EXTRACTOR-dtls_srtp"
            return bytes(range(olen))

    conn = FakeConnection(b"SRTP_AES128_CM_SHA1_80")
    with pytest.raises(ValueError, match="role"):
        keys_from_dtls(conn, "peer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no supported SRTP profile"):
        keys_from_dtls(FakeConnection(b""), "client")  # type: ignore[arg-type]
    # RFC 5764 layout: client key | server key | client salt | server salt
    client = keys_from_dtls(conn, "client")  # type: ignore[arg-type]
    assert client.tx_key_and_salt == bytes(range(0, 16)) + bytes(range(32, 46))
    assert client.rx_key_and_salt == bytes(range(16, 32)) + bytes(range(46, 60))
    server = keys_from_dtls(conn, "server")  # type: ignore[arg-type]
    assert (server.tx_key_and_salt, server.rx_key_and_salt) == (
        client.rx_key_and_salt,
        client.tx_key_and_salt,
    )
