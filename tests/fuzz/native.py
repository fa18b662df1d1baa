"""`python -m tests.fuzz.native`: garbage and mutated packets into relay._native.

Every native entry point that takes packet bytes gets a seeded mix of pure garbage
and mutated valid packets (tests/fuzz/packets.py's RTP streams with extensions,
CSRCs and padding, its RTCP compounds, VP8 and H.264 key frames with SPS, SRTP and
SRTCP with bit flips and truncation): `parse_header`, `keyframe` (both codecs),
`audio_level`, `LevelSum.observe`, `nack`, `Reception`, `Missing`, `Session`
(every profile, both directions), `Track.forward` (audio, VP8 and H.264 tracks
with subscribers of varied extension maps), `retransmit` with random NACK lists,
`sender_report`, and an `Engine` end to end: loopback UDP sockets, keyed legs, a
publisher's SSRCs bound to tracks (`Leg.bind`) whose subscribers sit on another
leg, datagrams (garbage; SRTP of mutated RTP and RTCP; from the right peer and
from a stranger) taken in bounded batches by `engine.readable(fd)`.

The errors the Python API documents (SrtpError, ValueError, OverflowError for
arguments out of range) are expected; anything else is a failure, printed with
the seed, the input's index, its target and its bytes, and the exit status is 1.
The inputs are a function of the seed. `make fuzz-native` runs this with a copy of
the extension built with AddressSanitizer and UBSan (`--native PATH`), which a
memory error or undefined behaviour aborts.
"""

from __future__ import annotations

import importlib.util
import sys


def _use_native(path: str) -> None:
    """Load relay._native from `path` (the sanitized build) before anything imports it."""
    import relay

    spec = importlib.util.spec_from_file_location("relay._native", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["relay._native"] = module
    spec.loader.exec_module(module)
    relay._native = module


if __name__ == "__main__" and "--native" in sys.argv:
    _use_native(sys.argv[sys.argv.index("--native") + 1])

# ruff: noqa: E402 -- the imports below must see the relay._native chosen above
import argparse
import contextlib
import random
import select
import socket
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relay import _native
from tests.fuzz.packets import (
    AUDIO_PT,
    VIDEO_PT,
    Mutator,
    RtpSource,
    extensions,
    rtcp_compound,
    rtp_packet,
    vp8_payload,
)
from tests.unit.test_native_forward import IDR, PPS, Sps, stap_a

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
TWCC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
URIS = (MID_URI, AUDIO_LEVEL, ABS_SEND_TIME, TWCC, "urn:example:unknown")
PROFILES = (
    _native.SRTP_AES128_CM_SHA1_80,
    _native.SRTP_AEAD_AES_128_GCM,
    _native.SRTP_AEAD_AES_256_GCM,
)
H264_PT = 102
ARGUMENT_ERRORS: tuple[type[Exception], ...] = (ValueError, OverflowError)
SRTP_ERRORS: tuple[type[Exception], ...] = (_native.SrtpError, *ARGUMENT_ERRORS)
BATCH = 32  # datagrams sent to the engine between readable() calls
HARNESS_LIFETIME = 25_000  # inputs before the engine and tracks are built afresh
TARGETS = {  # target: weight
    "parse_header": 12,
    "keyframe": 12,
    "audio_level": 6,
    "reception": 6,
    "nack": 3,
    "srtp": 12,
    "track": 20,
    "engine": 29,
}


class TargetFailure(Exception):
    """An invariant broke for one input."""


@dataclass
class Result:
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


# -- inputs ----------------------------------------------------------------------


def garbage(rng: random.Random) -> bytes:
    roll = rng.random()
    size = rng.choice((0, 1, 2, 3, 4, 8, 11, 12, 13, 16, 17, 20, 24, 40, 100, 1200))
    if roll < 0.2:
        size = rng.randrange(1600)
    data = bytearray(rng.randbytes(size))
    if data and roll < 0.6:  # looks like RTP/RTCP to the first-byte demultiplexer
        data[0] = 0x80 | (data[0] & 0x3F)
    if len(data) > 1 and rng.random() < 0.3:
        data[1] = rng.choice((200, 201, 202, 203, 205, 206, AUDIO_PT, VIDEO_PT, H264_PT))
    return bytes(data)


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """Flips, truncation, insertion, extremes: for payloads without an RTP header."""
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3))):
        roll = rng.random()
        if not buf or roll < 0.1:
            buf += rng.randbytes(rng.randint(1, 8))
        elif roll < 0.45:
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif roll < 0.6:
            buf[rng.randrange(len(buf))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF))
        elif roll < 0.8:
            del buf[rng.randrange(len(buf) + 1) :]
        elif roll < 0.9:
            at = rng.randrange(len(buf) + 1)
            buf[at:at] = rng.randbytes(rng.randint(1, 16))
        else:
            at = rng.randrange(len(buf))
            del buf[at : at + rng.randint(1, 8)]
    return bytes(buf)


def sps_nal(rng: random.Random) -> bytes:
    chroma = rng.choice((0, 1, 1, 2, 3))
    scaling: list[list[int] | None] | None = None
    if rng.random() < 0.3:
        scaling = [
            None
            if rng.random() < 0.3
            else [rng.randint(-128, 127) for _ in range(rng.randint(0, 4))]
            for _ in range(rng.randint(0, 12))
        ]
    crop = tuple(rng.choice((0, 1, 2, 8, 100000)) for _ in range(4)) if rng.random() < 0.3 else None
    sps = Sps(
        profile=rng.choice((66, 77, 88, 100, 110, 122, 244, 44, 83, 128)),
        width_mbs=rng.choice((1, 2, 20, 80, 120, 500, 100000)),
        height_units=rng.choice((1, 2, 15, 45, 68, 500, 100000)),
        frame_mbs_only=rng.getrandbits(1),
        crop=crop,  # type: ignore[arg-type]
        chroma=chroma,
        scaling=scaling,
        poc_type=rng.choice((0, 1, 2)),
        poc_cycle=[rng.randint(-50, 50) for _ in range(rng.choice((0, 1, 3, 255)))],
    )
    return sps.nal()


def h264_payload(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.3:
        return sps_nal(rng)
    if roll < 0.55:
        return stap_a(sps_nal(rng), PPS, IDR)
    if roll < 0.7:
        return bytes([0x7C, rng.choice((0x85, 0x87, 0x05, 0x45))]) + rng.randbytes(
            rng.randint(0, 60)
        )
    if roll < 0.8:
        return IDR + rng.randbytes(rng.randint(0, 100))
    if roll < 0.9:
        return bytes([0x78]) + rng.randbytes(rng.randint(0, 40))  # STAP-A of garbage
    return bytes([rng.getrandbits(8) & 0x9F | 0x60]) + rng.randbytes(rng.randint(0, 40))


def vp8_key_payload(rng: random.Random) -> bytes:
    return vp8_payload(rng, key=rng.random() < 0.6)


def video_rtp(rng: random.Random, source: RtpSource, codec: str) -> bytes:
    if codec == "video/vp8":
        return source.next()
    payload = h264_payload(rng)
    if rng.random() < 0.5:
        payload = mutate_bytes(rng, payload)
    return rtp_packet(H264_PT, source.next_sequence(), source.timestamp, source.ssrc, payload,
                      marker=int(rng.random() < 0.3), extension=extensions(rng, "video"),
                      padding=rng.choice((0, 0, 0, 1, 7)))  # fmt: skip


def lost_list(rng: random.Random, near: int) -> list[int]:
    lost = [(near - rng.randint(0, rng.choice((5, 50, 600)))) & 0xFFFF
            for _ in range(rng.choice((0, 1, 2, 8, 17, 100)))]  # fmt: skip
    if rng.random() < 0.2:
        lost += [65535, 0, 1, near, near]
    if rng.random() < 0.05:
        lost.append(rng.choice((-1, 65536, 2**40)))  # out of range: ValueError
    return lost


def extension_ids(rng: random.Random) -> dict[str, int] | None:
    if rng.random() < 0.3:
        return None
    return {
        uri: rng.choice((1, 2, 3, 5, 9, 14, 15, 0)) for uri in rng.sample(URIS, rng.randint(0, 4))
    }


def source_extensions(rng: random.Random) -> dict[int, str]:
    ids = rng.sample(range(1, 15), 4)
    return {ids[i]: uri for i, uri in enumerate(rng.sample(URIS, 4)) if rng.random() < 0.8}


def mid_element(rng: random.Random, index: int) -> bytes:
    ext_id = rng.choice((1, 1, 4, 14))
    value = b"%d" % index
    return b"" if rng.random() < 0.1 else bytes([ext_id << 4 | (len(value) - 1)]) + value


def subscriber(rng: random.Random, index: int, kind: str) -> _native.Subscriber:
    codecs = None
    if kind == "video" and rng.random() < 0.7:
        codecs = {"video/vp8": (VIDEO_PT, 98), "video/h264": (H264_PT, 103)}
    return _native.Subscriber(
        rng.getrandbits(32),
        AUDIO_PT if kind == "audio" else VIDEO_PT,
        mid_element(rng, index),
        (rng.getrandbits(32), 98) if kind == "video" and rng.random() < 0.7 else None,
        extension_ids(rng),
        codecs,
        next_sequence=rng.getrandbits(16),
        timestamp_base=rng.getrandbits(32),
        rtx_sequence=rng.getrandbits(16),
    )


def check_output(packet: bytes, what: str) -> None:
    if not isinstance(packet, bytes) or len(packet) < 12 or packet[0] >> 6 != 2:
        raise TargetFailure(f"{what} produced a malformed packet: {packet!r}")


# -- the harness ---------------------------------------------------------------------


class Tracks:
    """An audio and a video track (VP8 or H.264), each with a few subscribers."""

    def __init__(self, rng: random.Random, legs: list[_native.Leg] | None = None) -> None:
        self.rng = rng
        self.requests = 0
        self.tapped = 0
        self.tracks: dict[str, _native.Track] = {}
        self.subs: dict[str, list[_native.Subscriber]] = {}
        self.codec = rng.choice(("video/vp8", "video/h264"))
        for kind in ("audio", "video"):
            track = _native.Track(kind, self._request)
            if kind == "video":
                track.set_codec(self.codec)
            if rng.random() < 0.8:
                track.set_source_extensions(source_extensions(rng))
            if legs and rng.random() < 0.5:
                track.tap = self._tap  # links take what the engine forwards
            subs = [subscriber(rng, i, kind) for i in range(rng.randint(1, 4))]
            for sub in subs:
                if kind == "video" and self.codec != "video/vp8":
                    sub.use_codec(self.codec)
                if legs and rng.random() < 0.8:
                    sub.leg = rng.choice(legs)
                track.add_subscriber(sub, rng.choice((0, 0, 1, 2)) if kind == "video" else 0)
            self.tracks[kind], self.subs[kind] = track, subs

    def _request(self, layer: int) -> None:
        self.requests += 1

    def _tap(self, data: bytes, layer: int) -> None:
        self.tapped += 1

    def forward(self, kind: str, data: bytes, layer: int, now: float) -> int:
        out = self.tracks[kind].forward(data, layer, now)
        for _, packet in out:
            check_output(packet, "forward")
        return len(out)

    def feedback(self, kind: str, counts: Counter[str]) -> None:
        """A NACK's retransmissions and a sender report for one subscriber."""
        rng, track = self.rng, self.tracks[kind]
        sub = rng.choice(self.subs[kind])
        try:
            for packet in track.retransmit(sub, lost_list(rng, sub.next_sequence)):
                check_output(packet, "retransmit")
                counts["retransmitted"] += 1
        except ARGUMENT_ERRORS:
            counts["refused"] += 1
        report = track.sender_report(sub, rng.getrandbits(64), rng.getrandbits(32))
        if report is not None:
            counts["sender_reports"] += 1
        layer = rng.choice((0, 0, 1, 2, 3)) if kind == "video" else rng.choice((0, 1))
        cname = rng.randbytes(rng.choice((0, 14, 255, 256, rng.randrange(300))))
        try:
            for _, compound in track.sender_reports(layer, rng.getrandbits(64),
                                                    rng.getrandbits(32), cname):  # fmt: skip
                assert len(compound) % 4 == 0 and compound[1] == 200, compound.hex()
                counts["sender_report_fanouts"] += 1
        except (ValueError, OverflowError, IndexError):
            counts["refused"] += 1
        if rng.random() < 0.05 and kind == "video":
            track.set_target(sub, rng.choice((0, 1, 2)))
        if rng.random() < 0.01:  # churn: a subscriber leaves and another comes
            track.remove_subscriber(sub)
            self.subs[kind].remove(sub)
            new = subscriber(rng, rng.randrange(100), kind)
            track.add_subscriber(new, 0)
            self.subs[kind].append(new)
        if rng.random() < 0.002 and kind == "video":
            self.codec = rng.choice(("video/vp8", "video/h264"))
            track.set_codec(self.codec)
            for each in self.subs[kind]:
                each.use_codec(self.codec)


class Recorder:
    """The protocol of a registered socket and the legs' handlers: counts upcalls."""

    def __init__(self) -> None:
        self.datagrams = 0
        self.rtp = 0
        self.rtcp = 0

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.datagrams += 1

    def on_rtp(self, data: bytes) -> None:
        self.rtp += 1

    def on_rtcp(self, data: bytes) -> None:
        self.rtcp += 1


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return sock


def drain(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(65536)
        except BlockingIOError:
            return count
        count += 1


class EngineHarness:
    """One engine: socket A with the publisher's leg (its peer P), socket B with a
    subscriber's leg (peer Q, B connected to it), a stranger S; the publisher's
    SSRCs bound to tracks whose subscribers mostly sit on leg B. Socket A is also a shared port: the
    legs of EXTRA_PEERS more peers come and go on it (the engine's table of legs
    by address grows, and loses entries in every order)."""

    EXTRA_PEERS = 6

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.profile = rng.choice(PROFILES)
        length = _native.key_and_salt_length(self.profile)
        self.engine = _native.Engine()
        self.ours = [udp_socket(), udp_socket()]
        self.peers = [udp_socket(), udp_socket()]
        self.stranger = udp_socket()
        self.recorder = Recorder()
        self.legs: list[_native.Leg] = []
        self.senders: list[_native.Session] = []
        for ours, peer in zip(self.ours, self.peers, strict=True):
            self.engine.add_socket(ours.fileno(), self.recorder)
            tx, rx = rng.randbytes(length), rng.randbytes(length)
            # B is the subscriber's own socket: connected, as the relay's are (A is shared)
            leg = self.engine.open_leg(ours.fileno(), peer.getsockname(), self.profile, tx, rx,
                                       self.recorder.on_rtp, self.recorder.on_rtcp,
                                       connect=ours is self.ours[1])  # fmt: skip
            self.legs.append(leg)
            self.senders.append(_native.Session(self.profile, rx, True))  # the peer's side
        self.length = length
        self.extra_peers = [udp_socket() for _ in range(self.EXTRA_PEERS)]
        self.extra: list[tuple[_native.Leg, _native.Session] | None] = [None] * self.EXTRA_PEERS
        self.tracks = Tracks(rng, legs=[self.legs[1]])
        self.sources = {"audio": RtpSource(rng, "audio", AUDIO_PT),
                        "video": RtpSource(rng, "video", VIDEO_PT)}  # fmt: skip
        self.bind()
        self.pending = 0

    def bind(self) -> None:
        rng, leg = self.rng, self.legs[0]
        for kind, source in self.sources.items():
            pt = (
                AUDIO_PT
                if kind == "audio"
                else (VIDEO_PT if self.tracks.codec == "video/vp8" else H264_PT)
            )
            clock_rate = 48000 if kind == "audio" else 90000
            leg.bind(source.ssrc, self.tracks.tracks[kind], 0, pt, clock_rate,
                     audio_level_id=rng.choice((0, 3, 5)), nack=rng.random() < 0.8)  # fmt: skip

    def datagram(self, mutator: Mutator) -> tuple[bytes, socket.socket]:
        rng = self.rng
        sender = self.peers[0] if rng.random() < 0.95 else self.stranger
        roll = rng.random()
        if roll < 0.05:  # one of the shared port's other peers, keyed or not
            index = rng.randrange(self.EXTRA_PEERS)
            extra = self.extra[index]
            plain = self.sources["audio"].next()
            if extra is not None and rng.random() < 0.8:
                with contextlib.suppress(*SRTP_ERRORS):
                    plain = extra[1].protect(plain)
            return plain, self.extra_peers[index]
        if roll < 0.1:
            return garbage(rng), sender
        kind = "video" if rng.random() < 0.7 else "audio"
        source = self.sources[kind]
        if roll < 0.75:
            if kind == "video":
                plain = video_rtp(rng, source, self.tracks.codec)
            else:
                plain = source.next()
            is_rtcp = False
        else:
            ssrcs = [s.ssrc for s in self.sources.values()]
            plain = rtcp_compound(rng, ssrcs, [s.ssrc for s in self.tracks.subs["video"]],
                                  lambda _ssrc: rng.getrandbits(16))  # fmt: skip
            is_rtcp = True
        if rng.random() < 0.6:  # mutated, then protected: reaches the parsers
            plain = mutator.mutate(plain, rtcp_format=is_rtcp)
        session = self.senders[0]
        try:
            data = session.protect_rtcp(plain) if is_rtcp else session.protect(plain)
        except SRTP_ERRORS:
            return plain, sender
        if rng.random() < 0.15:  # protected, then mutated: refused by SRTP
            data = mutate_bytes(rng, data)
        return data, sender

    def send(self, data: bytes, sender: socket.socket) -> None:
        try:
            sender.sendto(data, self.ours[0].getsockname())
        except OSError:
            return  # too large or the queue full: the kernel's to drop
        self.pending += 1

    def flush(self, counts: Counter[str], now: float) -> None:
        """The engine takes what was sent, in readable() batches, and the peers
        drain what it sent back; then the books the leg keeps are read."""
        fd = self.ours[0].fileno()
        for _ in range(64):
            if not select.select([fd], [], [], 0)[0]:
                break
            self.engine.readable(fd)
            counts["readable_calls"] += 1
        self.pending = 0
        for peer in self.peers:
            counts["sent_back"] += drain(peer)
        drain(self.ours[1])  # what the stranger or the subscriber's peer sent
        rng, leg = self.rng, self.legs[0]
        bound = set(leg.bound)
        for source in self.sources.values():
            if source.ssrc not in bound:
                continue
            leg.report_block(source.ssrc, now)
            leg.take_levels(source.ssrc)
            if rng.random() < 0.2:
                leg.sender_report(source.ssrc, rng.getrandbits(64), now)
        if rng.random() < 0.1:  # a leg of the shared port goes, or comes
            index = rng.randrange(self.EXTRA_PEERS)
            extra = self.extra[index]
            if extra is not None:
                extra[0].close()
                self.extra[index] = None
            else:
                tx, rx = rng.randbytes(self.length), rng.randbytes(self.length)
                leg = self.engine.open_leg(
                    self.ours[0].fileno(), self.extra_peers[index].getsockname(), self.profile,
                    tx, rx, self.recorder.on_rtp, self.recorder.on_rtcp,
                )  # fmt: skip
                self.extra[index] = (leg, _native.Session(self.profile, rx, True))
        for extra_peer in self.extra_peers:
            drain(extra_peer)
        if rng.random() < 0.01:
            source = rng.choice(list(self.sources.values()))
            leg.unbind(source.ssrc)
            if rng.random() < 0.5:
                source.ssrc = rng.getrandbits(32)
            self.bind()

    def close(self) -> None:
        for leg in self.legs:
            leg.close()
        for sock in self.ours:  # the shared port's other legs are closed with it
            self.engine.remove_socket(sock.fileno())
        for sock in [*self.ours, *self.peers, self.stranger, *self.extra_peers]:
            sock.close()


# -- the run ---------------------------------------------------------------------


class Fuzzer:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = rng = random.Random(seed)
        self.result = Result()
        self.now = 1000.0
        self.sources = {"audio": RtpSource(rng, "audio", AUDIO_PT),
                        "video": RtpSource(rng, "video", VIDEO_PT)}  # fmt: skip
        self.mutator = Mutator(rng, self.donor)
        self.tracks = Tracks(rng)
        self.engine: EngineHarness | None = None
        self.last = b""  # the input being fed, for a failure's report
        self.reception = _native.Reception(rng.getrandbits(32), 90000)
        self.missing = _native.Missing()
        self.levels = _native.LevelSum()
        self.srtp: dict[int, tuple[_native.Session, _native.Session]] = {}
        for profile in PROFILES:
            key = rng.randbytes(_native.key_and_salt_length(profile))
            self.srtp[profile] = (_native.Session(profile, key, True),
                                  _native.Session(profile, key, False))  # fmt: skip
        self.targets = list(TARGETS)
        self.weights = list(TARGETS.values())

    def donor(self) -> bytes:
        return self.rtp() if self.rng.random() < 0.5 else self.rtcp()

    def rtp(self, kind: str | None = None) -> bytes:
        kind = kind or self.rng.choice(("audio", "video"))
        if kind == "video" and self.rng.random() < 0.4:
            return video_rtp(self.rng, self.sources["video"], "video/h264")
        return self.sources[kind].next()

    def rtcp(self) -> bytes:
        ssrcs = [s.ssrc for s in self.sources.values()]
        return rtcp_compound(self.rng, ssrcs, ssrcs, lambda _ssrc: self.rng.getrandbits(16))

    def packet(self) -> bytes:
        """Garbage (a fifth), or a valid RTP or RTCP packet, mostly mutated."""
        rng = self.rng
        if rng.random() < 0.2:
            return garbage(rng)
        is_rtcp = rng.random() < 0.2
        data = self.rtcp() if is_rtcp else self.rtp()
        if rng.random() < 0.8:
            data = self.mutator.mutate(data, rtcp_format=is_rtcp)
        return data

    def run(self, inputs: int, deadline: float | None = None) -> Result:
        counts = self.result.counts
        for index in range(inputs):
            if deadline is not None and index % 256 == 0 and time.monotonic() > deadline:
                counts["stopped_at_deadline"] = 1
                break
            target = self.rng.choices(self.targets, self.weights)[0]
            self.now += self.rng.choice((0.0, 0.001, 0.02, 0.5))
            self.last = b""
            try:
                getattr(self, "fuzz_" + target)()
            except Exception as exc:  # anything the target did not document
                self.fail(index, target, self.last, exc)
            counts["inputs"] += 1
            counts[target] += 1
            if (index + 1) % HARNESS_LIFETIME == 0:
                self.guarded(index, self.renew)
        self.guarded(inputs, self.close_engine)
        return self.result

    def guarded(self, index: int, step: Callable[[], object]) -> None:
        self.last = b""
        try:
            step()
        except Exception as exc:
            self.fail(index, step.__name__, self.last, exc)

    def renew(self) -> None:
        self.tracks = Tracks(self.rng)
        self.close_engine()

    def close_engine(self) -> None:
        """The engine's last batch, its counters, then its sockets closed."""
        if self.engine is None:
            return
        harness, counts = self.engine, self.result.counts
        harness.flush(counts, self.now)
        rec = harness.recorder
        counts["engine_upcalls"] += rec.datagrams + rec.rtp + rec.rtcp
        counts["engine_datagrams"] += harness.engine.datagrams_received
        counts["engine_forwarded"] += harness.engine.rtp_forwarded
        counts["engine_segmented"] += harness.engine.datagrams_segmented
        harness.close()
        self.engine = None

    def fail(self, index: int, target: str, data: bytes, exc: BaseException) -> None:
        detail = "".join(traceback.format_exception(exc)).strip()
        self.result.failures.append(
            f"seed={self.seed} input #{index} ({target}, {len(data)} bytes): {detail}\n"
            f"input hex: {data.hex()}"
        )

    # -- one target each; each returns the input it fed --

    def fuzz_parse_header(self) -> bytes:
        data = self.last = self.packet()
        parsed = _native.parse_header(bytearray(data) if self.rng.random() < 0.3 else data)
        if parsed is not None:
            self.result.counts["parsed"] += 1
            offset = parsed[5]
            if not 12 <= offset <= len(data):
                raise TargetFailure(f"payload offset {offset} outside the packet")
        return data

    def fuzz_keyframe(self) -> bytes:
        rng = self.rng
        codec = rng.choice(("video/vp8", "video/h264"))
        if rng.random() < 0.15:
            data = garbage(rng)
        else:
            data = vp8_key_payload(rng) if codec == "video/vp8" else h264_payload(rng)
            if rng.random() < 0.7:
                data = mutate_bytes(rng, data)
        self.last = data
        _start, size = _native.keyframe(codec, data)
        if size is not None:
            self.result.counts["keyframe_sizes"] += 1
        return data

    def fuzz_audio_level(self) -> bytes:
        rng = self.rng
        data = self.last = self.rtp("audio") if rng.random() < 0.3 else self.packet()
        ext_id = rng.choice((0, 1, 3, 3, 5, 14, 15, 16, -1))
        try:
            level = _native.audio_level(data, ext_id)
            self.levels.observe(data, ext_id)
        except ARGUMENT_ERRORS:
            return data
        if level is not None and not 0 <= level <= 255:
            raise TargetFailure(f"audio level {level}")
        if rng.random() < 0.01:
            self.levels.clear()
        return data

    def fuzz_reception(self) -> bytes:
        rng = self.rng
        data = self.last = self.packet()
        parsed = _native.parse_header(data)
        if parsed is not None:
            sequence, timestamp = parsed[2], parsed[3]
        else:
            sequence, timestamp = rng.getrandbits(16), rng.getrandbits(32)
        self.reception.update(sequence, timestamp, self.now)
        self.missing.update(sequence)
        if rng.random() < 0.1:
            self.reception.sender_report(rng.getrandbits(64), self.now)
        if rng.random() < 0.2:
            report = self.reception.report(self.now)
            if len(report) != 24:
                raise TargetFailure(f"report block of {len(report)} bytes")
            due = self.missing.due(self.now)
            if due:
                self.result.counts["nacks_due"] += 1
        if rng.random() < 0.0005:
            self.reception = _native.Reception(
                rng.getrandbits(32), rng.choice((8000, 48000, 90000))
            )
            self.missing = _native.Missing()
        return data

    def fuzz_nack(self) -> bytes:
        rng = self.rng
        lost = lost_list(rng, rng.getrandbits(16))
        if rng.random() < 0.05:
            lost = [rng.getrandbits(16) for _ in range(rng.randint(0, 3000))]
        self.last = str(lost).encode()  # the list, for a failure's report
        try:
            packet = _native.nack(rng.getrandbits(32), rng.getrandbits(32), lost)
        except ARGUMENT_ERRORS:
            return b""
        if lost and (len(packet) < 16 or packet[1] != 205):
            raise TargetFailure(f"NACK packet {packet.hex()}")
        return self.last

    def fuzz_srtp(self) -> bytes:
        rng = self.rng
        outbound, inbound = self.srtp[rng.choice(PROFILES)]
        is_rtcp = rng.random() < 0.35
        if rng.random() < 0.15:  # garbage both ways
            data = self.last = garbage(rng)
            for call in (outbound.protect, outbound.protect_rtcp, inbound.unprotect,
                         inbound.unprotect_rtcp):  # fmt: skip
                try:
                    call(data)
                except SRTP_ERRORS:
                    pass
            return data
        plain = self.rtcp() if is_rtcp else self.rtp()
        if rng.random() < 0.3:
            plain = self.mutator.mutate(plain, rtcp_format=is_rtcp)
        self.last = plain
        try:
            data = outbound.protect_rtcp(plain) if is_rtcp else outbound.protect(plain)
        except SRTP_ERRORS:
            return plain
        tampered = rng.random() < 0.7
        if tampered:
            data = mutate_bytes(rng, data)
        self.last = data
        try:
            back = inbound.unprotect_rtcp(data) if is_rtcp else inbound.unprotect(data)
        except SRTP_ERRORS:
            return data
        if not tampered and back != plain:
            raise TargetFailure("unprotect(protect(p)) != p")
        self.result.counts["unprotected"] += 1
        return data

    def fuzz_track(self) -> bytes:
        rng = self.rng
        kind = "video" if rng.random() < 0.7 else "audio"
        if kind == "video" and rng.random() < 0.8:
            data = video_rtp(rng, self.sources["video"], self.tracks.codec)
            if rng.random() < 0.8:
                data = self.mutator.mutate(data, rtcp_format=False)
        else:
            data = self.packet()
        self.last = data
        layer = rng.choice((0, 0, 0, 1, 2)) if kind == "video" else 0
        self.result.counts["forwarded"] += self.tracks.forward(kind, data, layer, self.now)
        if rng.random() < 0.15:
            self.tracks.feedback(kind, self.result.counts)
        return data

    def fuzz_engine(self) -> bytes:
        if self.engine is None:
            self.engine = EngineHarness(self.rng)
        data, sender = self.engine.datagram(self.mutator)
        self.last = data
        self.engine.send(data, sender)
        if self.rng.random() < 0.02:
            self.engine.legs[self.rng.randrange(2)].send(self.packet())
        if self.rng.random() < 0.05:  # a packet Python routes (first packets, links)
            kind = self.rng.choice(("audio", "video"))
            track = self.engine.tracks.tracks[kind]
            layer = self.rng.choice((0, 0, 1, 2)) if kind == "video" else 0
            for _, packet in self.engine.engine.forward(track, self.packet(), layer, self.now):
                check_output(packet, "engine forward")
        if self.rng.random() < 0.01:  # a publisher's sender report, fanned out in C
            kind = self.rng.choice(("audio", "video"))
            track = self.engine.tracks.tracks[kind]
            ntp, rtp_timestamp = self.rng.getrandbits(64), self.rng.getrandbits(32)
            cname = self.rng.randbytes(self.rng.randrange(40))
            for _, compound in self.engine.engine.sender_reports(track, 0, ntp, rtp_timestamp,
                                                                 cname):  # fmt: skip
                assert compound[1] == 200, compound.hex()
        if self.engine.pending >= BATCH:
            self.engine.flush(self.result.counts, self.now)
            if self.rng.random() < 0.2:
                self.tracks_feedback_on_engine()
        return data

    def tracks_feedback_on_engine(self) -> None:
        assert self.engine is not None
        self.engine.tracks.feedback(self.rng.choice(("audio", "video")), self.result.counts)


def run(seed: int, inputs: int, deadline: float | None = None) -> Result:
    """`inputs` inputs from `seed`, or as many as fit before `deadline` (monotonic)."""
    return Fuzzer(seed).run(inputs, deadline)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz.native",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop after this long (counts what ran)")  # fmt: skip
    parser.add_argument("--native", metavar="PATH", default=None,
                        help="a build of relay._native to load instead of the tree's")  # fmt: skip
    args = parser.parse_args(argv)
    print(f"fuzzing {_native.__file__} with {args.inputs} inputs, seed {args.seed}", flush=True)
    started = time.monotonic()
    deadline = None if args.max_seconds is None else started + args.max_seconds
    result = run(args.seed, args.inputs, deadline)
    seconds = time.monotonic() - started
    for key in sorted(result.counts):
        print(f"  {key}: {result.counts[key]}")
    for text in result.failures[:20]:
        print(f"FAILED {text}", file=sys.stderr)
    print(f"{result.counts['inputs']} inputs in {seconds:.1f} s, "
          f"{len(result.failures)} failures", flush=True)  # fmt: skip
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
