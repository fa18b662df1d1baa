"""`conclave loadtest media`: many lightweight participants against a running cluster.

Each participant completes ICE and DTLS like a browser (aiortc), but never decodes:
after applying an answer it replaces the bundled DTLS transport's RTP handler with
a counter that reads the RTP header (SSRC, sequence number, timestamp) of every
packet SRTP delivered, so it can track loss (sequence gaps per SSRC) and RFC 3550
interarrival jitter at a few microseconds a packet. Publishers send a clip encoded
once per worker process (VP8 and/or Opus, looped, paced in real time) through
aiortc's sender: no encoder runs per publisher. Participants live in worker
processes (`--workers`), so one machine can drive hundreds of them.

The run: create R meetings through the control plane, join P publishers and S
subscribers to each, wait until everyone receives every stream it should, warm up,
measure T seconds, and print a summary: forwarded packets per second (the relays'
/metrics and the participants' counts), loss, jitter, and each relay's CPU per
forwarded packet when the relay runs on this machine (its process found by its
listening port; otherwise "unavailable"). In the spirit of LiveKit's `lk load-test`.

The worker side (`serve_worker`) is reusable: bench/side_by_side.py registers
participants of other servers (Janus, a naive aiortc relay) with the same counters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import functools
import json
import logging
import math
import os
import re
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import av
import uvloop
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame

from client.errors import ConclaveError
from client.rooms import RoomsClient, control_plane_target
from conclave.ice import addresses_from_env, use_host_addresses

log = logging.getLogger("conclave.loadtest")

JOIN_TIMEOUT_S = 20.0
LEAVE_TIMEOUT_S = 5.0
BATCH = 10  # participants one worker joins at once
VIDEO_FPS = 30
CLIP_SECONDS = 2  # one key frame per loop of the clip
AUDIO_PTIME = 0.020
KIND_SOURCES = {"audio": "microphone", "video": "camera"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
METRIC_FORWARDED = "conclave_packets_forwarded_total"
METRIC_RECEIVED = "conclave_packets_received_total"
LOSS_LIMIT_PCT = 1.0

# ------------------------------------------------------------------ media clips


@dataclass(frozen=True)
class Clip:
    """Encoded frames to loop: `payloads[i]` lasts `ticks` of `time_base`."""

    kind: str
    payloads: tuple[bytes, ...]
    ticks: int
    time_base: fractions.Fraction
    period: float  # seconds per payload

    @property
    def bitrate(self) -> float:
        return sum(len(p) for p in self.payloads) * 8 / (len(self.payloads) * self.period)


_clips: dict[tuple[Any, ...], Clip] = {}


def video_clip(width: int = 640, height: int = 360, bitrate: int = 2_000_000) -> Clip:
    """VP8, encoded once per process: a drifting stripe pattern with moderate luma
    noise (so every frame costs bits and the packet rate stays steady), one key
    frame at the start of each loop."""
    key = ("video", width, height, bitrate)
    if key in _clips:
        return _clips[key]
    count = VIDEO_FPS * CLIP_SECONDS
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "yuv420p"
    codec.bit_rate = bitrate
    codec.time_base = fractions.Fraction(1, VIDEO_FPS)
    codec.gop_size = count
    codec.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "bufsize": str(bitrate),
        "undershoot-pct": "100",
    }
    stripes = bytes(range(0, 256, 4)) * ((width + 64) // 64 + 1)
    table = bytes(b & 0x07 for b in range(256))
    chroma = bytes([128]) * (width // 2 * height // 2)
    payloads: list[bytes] = []
    for index in range(count):
        frame = VideoFrame(width=width, height=height, format="yuv420p")
        luma, cb, cr = frame.planes
        rows = b"".join(
            stripes[(index * 2 + y) % 64 : (index * 2 + y) % 64 + width]
            + bytes(luma.line_size - width)
            for y in range(height)
        )
        noise = os.urandom(len(rows)).translate(table)
        luma.update(bytes(a ^ b for a, b in zip(rows, noise, strict=True)))
        for plane in (cb, cr):
            row = width // 2
            plane.update(
                b"".join(
                    chroma[y * row : (y + 1) * row] + bytes(plane.line_size - row)
                    for y in range(height // 2)
                )
            )
        frame.pts = index
        frame.time_base = codec.time_base
        payloads += [bytes(p) for p in codec.encode(frame)]
    payloads += [bytes(p) for p in codec.encode(None)]
    clip = Clip(
        "video", tuple(payloads), 90_000 // VIDEO_FPS, fractions.Fraction(1, 90_000), 1 / VIDEO_FPS
    )
    _clips[key] = clip
    return clip


def audio_clip(frequency: int = 440) -> Clip:
    """Opus 48 kHz stereo, 20 ms packets of a one-second tone, encoded once per process."""
    key = ("audio", frequency)
    if key in _clips:
        return _clips[key]
    rate, samples = 48_000, 960
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = rate
    codec.layout = "stereo"
    codec.format = "s16"
    codec.bit_rate = 32_000
    codec.time_base = fractions.Fraction(1, rate)
    payloads: list[bytes] = []
    for index in range(rate // samples):
        frame = AudioFrame(format="s16", layout="stereo", samples=samples)
        values = []
        for n in range(index * samples, (index + 1) * samples):
            v = round(8000 * math.sin(2 * math.pi * frequency * n / rate))
            values += [v, v]
        frame.planes[0].update(b"".join(v.to_bytes(2, "little", signed=True) for v in values))
        frame.pts = index * samples
        frame.sample_rate = rate
        frame.time_base = codec.time_base
        payloads += [bytes(p) for p in codec.encode(frame)]
    clip = Clip("audio", tuple(payloads), samples, fractions.Fraction(1, rate), AUDIO_PTIME)
    _clips[key] = clip
    return clip


class ClipTrack(MediaStreamTrack):
    """Loops a pre-encoded clip in real time; aiortc's sender only packetizes it."""

    def __init__(self, clip: Clip) -> None:
        super().__init__()
        self.kind = clip.kind
        self.clip = clip
        self._index = 0
        self._t0: float | None = None

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        index = self._index
        self._index += 1
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        else:
            wait = self._t0 + index * self.clip.period - now
            if wait > 0:
                await asyncio.sleep(wait)
        packet = av.Packet(self.clip.payloads[index % len(self.clip.payloads)])
        packet.pts = index * self.clip.ticks
        packet.time_base = self.clip.time_base
        return packet


# ---------------------------------------------------------- what arrives


class StreamStats:
    """One received SSRC: packets, the extended highest sequence number (for loss:
    expected minus received) and RFC 3550 interarrival jitter (in clock units)."""

    __slots__ = ("_at", "_ts", "base", "clock", "cycles", "jitter", "kind", "max_seq", "received")

    def __init__(self, kind: str, clock: int, seq: int, ts: int, now: float) -> None:
        self.kind = kind
        self.clock = clock
        self.base = seq
        self.max_seq = seq
        self.cycles = 0
        self.received = 1
        self.jitter = 0.0
        self._at = now
        self._ts = ts

    def add(self, seq: int, ts: int, now: float) -> None:
        self.received += 1
        delta = (seq - self.max_seq) & 0xFFFF
        if 0 < delta < 0x8000:
            if seq < self.max_seq:
                self.cycles += 0x10000
            self.max_seq = seq
        dts = (ts - self._ts) & 0xFFFFFFFF
        if dts >= 0x80000000:
            dts -= 0x100000000
        d = abs((now - self._at) * self.clock - dts)
        self.jitter += (d - self.jitter) / 16
        self._at = now
        self._ts = ts

    @property
    def expected(self) -> int:
        return self.cycles + self.max_seq - self.base + 1

    def row(self) -> list[Any]:
        """[kind, received, expected, jitter ms], for the worker's reply."""
        return [self.kind, self.received, self.expected, round(self.jitter * 1000 / self.clock, 3)]


_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([\w.-]+)/(\d+)", re.MULTILINE)


def payload_clocks(sdp: str) -> dict[int, tuple[str, int]]:
    """Payload type -> (kind, clock rate) of the media codecs in `sdp` (RTX, FEC and
    comfort noise left out: they are not the stream whose gaps mean loss)."""
    clocks: dict[int, tuple[str, int]] = {}
    for section in sdp.split("\nm=")[1:]:
        kind = section.split(" ", 1)[0]
        for pt, name, clock in _RTPMAP.findall(section):
            if name.lower() not in ("rtx", "red", "ulpfec", "cn", "telephone-event"):
                clocks[int(pt)] = (kind, int(clock))
    return clocks


class Counter:
    """Per-SSRC statistics of one peer connection; `hook` puts it in place of the
    bundled transport's RTP handler (SRTP still decrypts, nothing is decoded)."""

    def __init__(self) -> None:
        self.streams: dict[int, StreamStats] = {}
        self.clocks: dict[int, tuple[str, int]] = {}
        self.other = 0  # packets of payload types that are not media (RTX, unknown)
        self._hooked: set[int] = set()

    def hook(self, pc: RTCPeerConnection, sdp: str) -> None:
        self.clocks.update(payload_clocks(sdp))
        for transceiver in pc.getTransceivers():
            transport = transceiver.receiver.transport
            if transport is None or id(transport) in self._hooked:
                continue
            self._hooked.add(id(transport))
            transport._handle_rtp_data = self.on_rtp  # type: ignore[method-assign]

    async def on_rtp(self, data: bytes, arrival_time_ms: int) -> None:
        now = time.monotonic()
        if len(data) < 12:
            return
        ssrc = int.from_bytes(data[8:12], "big")
        seq = int.from_bytes(data[2:4], "big")
        ts = int.from_bytes(data[4:8], "big")
        stream = self.streams.get(ssrc)
        if stream is not None:
            stream.add(seq, ts, now)
            return
        codec = self.clocks.get(data[1] & 0x7F)
        if codec is None:
            self.other += 1
            return
        self.streams[ssrc] = StreamStats(codec[0], codec[1], seq, ts, now)

    def rows(self) -> dict[str, list[Any]]:
        return {str(ssrc): stream.row() for ssrc, stream in self.streams.items()}


# ------------------------------------------------------------- participants


class Participant(Protocol):
    counter: Counter
    errors: list[str]

    async def start(self, timeout: float) -> None: ...

    async def leave(self) -> None: ...


Factory = Callable[[aiohttp.ClientSession, dict[str, Any]], Participant]


def publish_tracks(kinds: Sequence[str], video: dict[str, int]) -> dict[str, ClipTrack]:
    """A clip track per kind ("audio", "video"); the clips are shared per process."""
    tracks: dict[str, ClipTrack] = {}
    for kind in kinds:
        clip = video_clip(**video) if kind == "video" else audio_clip()
        tracks[kind] = ClipTrack(clip)
    return tracks


class ConclaveParticipant:
    """One participant speaking docs/signaling.md: joins with its grant, publishes
    clip tracks on the m-lines the relay names, answers every offer, counts."""

    def __init__(self, http: aiohttp.ClientSession, entry: dict[str, Any]) -> None:
        self.http = http
        self.signal_url = str(entry["signal_url"])
        self.grant = str(entry["grant"])
        self.publish = [str(k) for k in entry.get("publish") or []]
        self.tracks = publish_tracks(self.publish, dict(entry.get("video") or {}))
        self.counter = Counter()
        self.errors: list[str] = []
        self.pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._answered = asyncio.Event()
        self._closed = asyncio.Event()
        self._left = False

    async def start(self, timeout: float) -> None:
        """Join, and return once the relay's first offer has been answered."""
        async with asyncio.timeout(timeout):
            self._ws = await self.http.ws_connect(self.signal_url)
            self._reader = asyncio.create_task(self._read(self._ws), name="load-signalling")
            sources = [KIND_SOURCES[k] for k in self.publish]
            await self._ws.send_str(
                json.dumps({"type": "join", "grant": self.grant, "publish": sources})
            )
            waits = [
                asyncio.ensure_future(self._answered.wait()),
                asyncio.ensure_future(self._closed.wait()),
            ]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waits:
                    waiter.cancel()
        if not self._answered.is_set():
            raise ConclaveError(f"the relay closed the connection before an offer: {self.errors}")

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                message = json.loads(frame.data)
                kind = message.get("type")
                if kind == "offer":
                    await self._answer(message)
                elif kind == "error":
                    self.errors.append(f"{message.get('code')}: {message.get('message')}")
                elif kind == "room_closed":
                    self.errors.append(f"room_closed: {message.get('reason')}")
        except Exception as exc:  # a bad offer: this participant is done
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            self._closed.set()

    async def _answer(self, message: dict[str, Any]) -> None:
        pc = self.pc
        sdp = str(message["sdp"])
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        publish = {str(s): str(m) for s, m in (message.get("publish") or {}).items()}
        for kind, track in self.tracks.items():
            transceiver = _by_mid(pc, publish.get(KIND_SOURCES[kind], ""))
            if transceiver is None or transceiver.kind != kind:
                continue
            if transceiver.sender.track is not track:
                transceiver.sender.replaceTrack(track)
            transceiver.direction = "sendonly"
        await pc.setLocalDescription(await pc.createAnswer())
        self.counter.hook(pc, sdp)
        assert self._ws is not None
        await self._ws.send_str(json.dumps({"type": "answer", "sdp": pc.localDescription.sdp}))
        self._answered.set()

    async def leave(self) -> None:
        if self._left:
            return
        self._left = True
        ws = self._ws
        with contextlib.suppress(Exception):
            async with asyncio.timeout(LEAVE_TIMEOUT_S):
                if ws is not None and not ws.closed and not self._closed.is_set():
                    await ws.send_str(json.dumps({"type": "leave"}))
                    await self._closed.wait()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await close_pc(self.pc, self.tracks.values())
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()


def _by_mid(pc: RTCPeerConnection, mid: str) -> RTCRtpTransceiver | None:
    return next((t for t in pc.getTransceivers() if t.mid == mid), None)


async def close_pc(pc: RTCPeerConnection, tracks: Any = ()) -> None:
    for track in tracks:
        track.stop()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(LEAVE_TIMEOUT_S):
            await pc.close()


FACTORIES: dict[str, Factory] = {"conclave": ConclaveParticipant}


# ------------------------------------------------------------------- worker


class WorkerState:
    """The participants of one worker process, by the orchestrator's ids."""

    def __init__(self, factories: dict[str, Factory]) -> None:
        self.factories = factories
        self.participants: dict[str, Participant] = {}
        self.http: aiohttp.ClientSession | None = None

    async def join(self, entries: list[dict[str, Any]], timeout: float) -> list[str]:
        """Join concurrently; returns one error text per failed entry ("" if it joined)."""
        if self.http is None:
            # limit=0: every WebSocket holds a connection; the default pool of 100
            # would make participant 101 wait forever.
            self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        made = [self.factories[str(e.get("server", "conclave"))](self.http, e) for e in entries]
        results = await asyncio.gather(*(p.start(timeout) for p in made), return_exceptions=True)
        errors = []
        for entry, participant, result in zip(entries, made, results, strict=True):
            if isinstance(result, BaseException):
                errors.append(f"{type(result).__name__}: {result} {participant.errors}".strip())
                await participant.leave()
            else:
                self.participants[str(entry["id"])] = participant
                errors.append("")
        return errors

    def stats(self) -> dict[str, Any]:
        user, system = process_cpu(os.getpid())
        return {
            "cpu": [user, system],
            "participants": {
                pid: {"streams": p.counter.rows(), "other": p.counter.other, "errors": p.errors}
                for pid, p in self.participants.items()
            },
        }

    async def leave_all(self) -> None:
        leaving, self.participants = list(self.participants.values()), {}
        await asyncio.gather(*(p.leave() for p in leaving), return_exceptions=True)

    async def close(self) -> None:
        await self.leave_all()
        if self.http is not None:
            await self.http.close()


async def serve_worker(factories: dict[str, Factory] | None = None) -> None:
    """One JSON request per line on stdin, one JSON reply per line on stdout:
    {"op": "join", "entries": [...], "timeout": s}, {"op": "stats"},
    {"op": "leave_all"}. Leaves everyone and returns at end of input."""
    use_host_addresses(addresses_from_env())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    state = WorkerState(factories or FACTORIES)
    try:
        while line := await reader.readline():
            request = json.loads(line)
            try:
                op = request.get("op")
                if op == "join":
                    timeout = float(request.get("timeout", JOIN_TIMEOUT_S))
                    reply: dict[str, Any] = {
                        "errors": await state.join(request["entries"], timeout)
                    }
                elif op == "stats":
                    reply = state.stats()
                elif op == "leave_all":
                    await state.leave_all()
                    reply = {}
                else:
                    raise ValueError(f"unknown op {op!r}")
                reply["ok"] = True
            except Exception as exc:
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    finally:
        await state.close()


def worker_main(factories: dict[str, Factory] | None = None) -> None:
    """Entry point of a worker process (quiet logs: stdout is the protocol)."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for name in ("aiortc", "aioice"):
        logging.getLogger(name).setLevel(logging.ERROR)
    uvloop.run(serve_worker(factories))


class Worker:
    """A worker process driven over its stdin/stdout."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, argv: Sequence[str], env: dict[str, str] | None = None) -> Worker:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            limit=1 << 24,
        )
        return cls(process)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def call(self, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        process = self.process
        assert process.stdin is not None and process.stdout is not None
        async with self._lock:
            process.stdin.write(json.dumps(request).encode() + b"\n")
            await process.stdin.drain()
            line = await asyncio.wait_for(process.stdout.readline(), timeout)
        if not line:
            raise ConclaveError(f"a load worker exited (code {process.returncode})")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise ConclaveError(f"load worker: {reply.get('error')}")
        return reply

    async def close(self) -> None:
        """End of input: the worker leaves everyone and exits (killed if it hangs)."""
        process = self.process
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        try:
            async with asyncio.timeout(20.0):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


def worker_argv() -> list[str]:
    return [sys.executable, "-m", "client.loadtest", "_worker"]


# ------------------------------------------------------------- measurement


def process_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all its threads, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def listening_pid(host: str, port: int) -> int | None:
    """The local process listening on TCP `port` (at `host` or a wildcard), from
    /proc/net/tcp{,6} and the processes' socket descriptors; None if it is not on
    this machine or not visible to us."""
    try:
        addresses = {
            str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        }
    except OSError:
        return None
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                address_hex, port_hex = local.split(":")
                if state != "0A" or int(port_hex, 16) != port:
                    continue
                address = _proc_address(address_hex)
                wildcard = address in ("0.0.0.0", "::")
                if wildcard and not any(_is_local(a) for a in addresses):
                    continue
                if wildcard or address in addresses:
                    inodes.add(inode)
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in wanted:
                        return int(entry)
    return None


def _proc_address(text: str) -> str:
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def _is_local(address: str) -> bool:
    try:
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """Prometheus text format -> {"name{labels}": value}."""
    async with asyncio.timeout(10.0), http.get(url) as response:
        text = await response.text()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                samples[name] = float(value)
    return samples


def metric_sum(samples: dict[str, float], name: str) -> float:
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


@dataclass
class Relay:
    """A relay the meetings landed on: its /metrics, and its process if local."""

    node_id: str
    metrics_url: str | None  # None: a server without Conclave's metrics (benchmarks)
    pid: int | None


@dataclass
class Snapshot:
    at: float
    relays: dict[str, tuple[float, float, tuple[float, float] | None]]  # fwd, in, cpu
    participants: dict[str, dict[str, Any]]
    workers_cpu: float


async def take_snapshot(
    http: aiohttp.ClientSession, relays: dict[str, Relay], workers: list[Worker]
) -> Snapshot:
    at = time.monotonic()
    relay_figures: dict[str, tuple[float, float, tuple[float, float] | None]] = {}
    for node_id, relay in relays.items():
        cpu = None
        if relay.pid is not None:
            with contextlib.suppress(OSError):
                cpu = process_cpu(relay.pid)
        samples: dict[str, float] = {}
        if relay.metrics_url is not None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                samples = await scrape(http, relay.metrics_url)
        relay_figures[node_id] = (
            metric_sum(samples, METRIC_FORWARDED),
            metric_sum(samples, METRIC_RECEIVED),
            cpu,
        )
    replies = await asyncio.gather(*(w.call({"op": "stats"}) for w in workers))
    participants: dict[str, dict[str, Any]] = {}
    cpu_total = 0.0
    for reply in replies:
        participants.update(reply["participants"])
        cpu_total += sum(reply["cpu"])
    return Snapshot(at, relay_figures, participants, cpu_total)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summarise(
    a: Snapshot, b: Snapshot, relays: dict[str, Relay], kinds: Sequence[str]
) -> dict[str, Any]:
    """Window figures between two snapshots."""
    dt = b.at - a.at
    relay_rows = []
    for node_id, relay in relays.items():
        fwd0, in0, cpu0 = a.relays[node_id]
        fwd1, in1, cpu1 = b.relays[node_id]
        forwarded = fwd1 - fwd0
        row: dict[str, Any] = {
            "node_id": node_id,
            "metrics_url": relay.metrics_url,
            "pid": relay.pid,
            "forwarded_pps": round(forwarded / dt, 1),
            "received_pps": round((in1 - in0) / dt, 1),
            "cpu_pct": None,
            "cpu_us_per_forwarded": None,
        }
        if cpu0 is not None and cpu1 is not None:
            cpu = sum(cpu1) - sum(cpu0)
            row["cpu_pct"] = round(100 * cpu / dt, 1)
            row["cpu_user_pct"] = round(100 * (cpu1[0] - cpu0[0]) / dt, 1)
            row["cpu_sys_pct"] = round(100 * (cpu1[1] - cpu0[1]) / dt, 1)
            if forwarded > 0:
                row["cpu_us_per_forwarded"] = round(cpu * 1e6 / forwarded, 2)
        relay_rows.append(row)
    received = expected = 0
    streams = lossy = 0
    jitters: dict[str, list[float]] = {k: [] for k in ("audio", "video")}
    worst_loss = 0.0
    for pid, after in b.participants.items():
        before = a.participants.get(pid, {}).get("streams", {})
        for ssrc, (kind, rec1, exp1, jitter_ms) in after["streams"].items():
            rec0, exp0 = (before[ssrc][1], before[ssrc][2]) if ssrc in before else (0, 0)
            got, wanted = rec1 - rec0, exp1 - exp0
            if wanted <= 0:
                continue
            streams += 1
            received += got
            expected += wanted
            lost = max(0, wanted - got)
            if lost:
                lossy += 1
                worst_loss = max(worst_loss, 100 * lost / wanted)
            jitters.setdefault(kind, []).append(float(jitter_ms))
    forwarded_total = sum(r["forwarded_pps"] for r in relay_rows)
    loss_pct = 100 * (expected - received) / expected if expected else None
    result: dict[str, Any] = {
        "window_s": round(dt, 2),
        "relays": relay_rows,
        "forwarded_pps": round(forwarded_total, 1),
        "participants_received_pps": round(received / dt, 1),
        "participants_expected_pps": round(expected / dt, 1),
        "streams": streams,
        "streams_with_loss": lossy,
        "loss_packets": expected - received,
        "loss_pct": None if loss_pct is None else round(loss_pct, 3),
        "worst_stream_loss_pct": round(worst_loss, 3),
        "workers_cpu_pct": round(100 * (b.workers_cpu - a.workers_cpu) / dt, 1),
        "jitter_ms": {
            kind: {
                "mean": round(statistics.fmean(values), 3),
                "p95": round(percentile(values, 0.95), 3),
                "max": round(max(values), 3),
            }
            for kind, values in jitters.items()
            if values
        },
    }
    return result


# ------------------------------------------------------------ orchestration


@dataclass
class Plan:
    rooms: int
    publishers: int
    subscribers: int
    kinds: list[str]
    video: dict[str, int] = field(default_factory=dict)

    def wanted_streams(self, publisher: bool) -> int:
        """Streams a participant should receive: everyone else's published kinds."""
        return (self.publishers - (1 if publisher else 0)) * len(self.kinds)


def say(message: str) -> None:
    print(f"conclave loadtest: {message}", file=sys.stderr, flush=True)


async def wait_receiving(
    workers: list[Worker], wanted: dict[str, int], timeout: float
) -> tuple[float, list[str]]:
    """Until every participant receives packets on as many SSRCs as it should;
    returns (seconds waited, ids still short at the deadline)."""
    started = time.monotonic()
    short: list[str] = list(wanted)
    while time.monotonic() - started < timeout:
        replies = await asyncio.gather(*(w.call({"op": "stats"}) for w in workers))
        seen: dict[str, int] = {}
        for reply in replies:
            for pid, p in reply["participants"].items():
                seen[pid] = sum(1 for row in p["streams"].values() if row[1] > 0)
        short = [pid for pid, n in wanted.items() if seen.get(pid, 0) < n]
        if not short:
            break
        await asyncio.sleep(0.5)
    return time.monotonic() - started, short


async def join_all(
    workers: list[Worker],
    batches: list[tuple[int, Callable[[], Awaitable[list[dict[str, Any]]]]]],
    timeout: float,
) -> list[str]:
    """Run (worker index, make entries) batches, the workers in parallel, each
    worker's batches in turn; the entries are made right before their batch (grants
    are short-lived). Returns the failures' texts."""
    queues: dict[int, list[Callable[[], Awaitable[list[dict[str, Any]]]]]] = {}
    for index, make in batches:
        queues.setdefault(index, []).append(make)
    failures: list[str] = []

    async def run(index: int) -> None:
        for make in queues[index]:
            entries = await make()
            reply = await workers[index].call(
                {"op": "join", "entries": entries, "timeout": timeout}, timeout + 30
            )
            failures.extend(e for e in reply["errors"] if e)

    await asyncio.gather(*(run(i) for i in queues))
    return failures


async def run_media(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    plan = Plan(
        args.rooms,
        args.publishers,
        args.subscribers,
        ["audio"] if args.audio_only else ["audio", "video"] if args.audio else ["video"],
        {"width": args.width, "height": args.height, "bitrate": args.video_bitrate},
    )
    total = plan.rooms * (plan.publishers + plan.subscribers)
    count = args.workers or max(1, min(os.cpu_count() or 1, math.ceil(total / 50)))
    say(
        f"{plan.rooms} meeting(s) x ({plan.publishers} publishers + {plan.subscribers} "
        f"subscribers), {'+'.join(plan.kinds)}, {count} worker process(es)"
    )
    workers = [await Worker.start(worker_argv()) for _ in range(count)]
    relays: dict[str, Relay] = {}
    wanted: dict[str, int] = {}
    created: list[Any] = []
    code = 0
    try:
        async with (
            RoomsClient(control_plane_target(args.control_plane)) as rooms,
            aiohttp.ClientSession() as http,
        ):
            for i in range(plan.rooms):
                room = await rooms.create_room(
                    f"loadtest-{i}", max_participants=plan.publishers + plan.subscribers
                )
                created.append(room)

            async def grants(room: Any, names: list[str], publisher: bool) -> list[dict[str, Any]]:
                entries = []
                for name in names:
                    join = await rooms.join_room(room.room_id, name, publisher, room.passcode)
                    if join.node_id not in relays:
                        url = urlsplit(join.signal_url)
                        scheme = "https" if url.scheme == "wss" else "http"
                        pid = listening_pid(url.hostname or "", url.port or 80)
                        relays[join.node_id] = Relay(
                            join.node_id, f"{scheme}://{url.netloc}/metrics", pid
                        )
                    entries.append(
                        {
                            "id": name,
                            "server": "conclave",
                            "signal_url": join.signal_url,
                            "grant": join.grant,
                            "publish": plan.kinds if publisher else [],
                            "video": plan.video,
                        }
                    )
                return entries

            def batches(
                publisher: bool,
            ) -> list[tuple[int, Callable[[], Awaitable[list[dict[str, Any]]]]]]:
                made: list[tuple[int, Callable[[], Awaitable[list[dict[str, Any]]]]]] = []
                n = 0
                for r, room in enumerate(created):
                    per_room = plan.publishers if publisher else plan.subscribers
                    names = [f"r{r}-{'p' if publisher else 's'}{k}" for k in range(per_room)]
                    for name in names:
                        wanted[name] = plan.wanted_streams(publisher)
                    for start in range(0, len(names), BATCH):
                        chunk = names[start : start + BATCH]
                        made.append((n % count, functools.partial(grants, room, chunk, publisher)))
                        n += 1
                return made

            started = time.monotonic()
            failures = await join_all(workers, batches(True), args.join_timeout)
            failures += await join_all(workers, batches(False), args.join_timeout)
            joined_s = time.monotonic() - started
            for text in failures[:5]:
                say(f"join failed: {text}")
            say(
                f"joined {total - len(failures)}/{total} in {joined_s:.1f} s; relays: "
                + ", ".join(f"{r.node_id} (pid {r.pid or 'not local'})" for r in relays.values())
            )
            waited, short = await wait_receiving(workers, wanted, args.receive_timeout)
            if short:
                say(
                    f"{len(short)} participant(s) not receiving every stream after "
                    f"{waited:.1f} s (e.g. {short[:3]}); measuring anyway"
                )
            await asyncio.sleep(args.warmup)
            before = await take_snapshot(http, relays, workers)
            await asyncio.sleep(args.duration)
            after = await take_snapshot(http, relays, workers)
            result = summarise(before, after, relays, plan.kinds)
            result.update(
                {
                    "rooms": plan.rooms,
                    "publishers_per_room": plan.publishers,
                    "subscribers_per_room": plan.subscribers,
                    "kinds": plan.kinds,
                    "workers": count,
                    "joined": total - len(failures),
                    "join_failures": len(failures),
                    "join_s": round(joined_s, 2),
                    "all_receiving_s": round(waited, 2),
                    "not_receiving": len(short),
                }
            )
            if failures or short or (result["loss_pct"] or 0) >= LOSS_LIMIT_PCT:
                code = 1
            return result, code
    finally:
        await asyncio.gather(
            *(w.call({"op": "leave_all"}, 60) for w in workers), return_exceptions=True
        )
        if created:
            with contextlib.suppress(Exception):
                async with RoomsClient(control_plane_target(args.control_plane)) as rooms:
                    for room in created:
                        with contextlib.suppress(ConclaveError):
                            await rooms.end_room(room.room_id, room.host_key)
        await asyncio.gather(*(w.close() for w in workers), return_exceptions=True)


def render(result: dict[str, Any]) -> str:
    lines = [
        f"meetings {result['rooms']} x ({result['publishers_per_room']} publishers + "
        f"{result['subscribers_per_room']} subscribers), {'+'.join(result['kinds'])}; "
        f"joined {result['joined']} ({result['join_failures']} failed) in {result['join_s']} s; "
        f"all receiving after {result['all_receiving_s']} s"
        + (f" ({result['not_receiving']} not)" if result["not_receiving"] else ""),
        f"window {result['window_s']} s",
        f"forwarded (relays' /metrics): {result['forwarded_pps']} packets/s",
        f"received (participants' count): {result['participants_received_pps']} packets/s "
        f"of {result['participants_expected_pps']} expected",
        f"loss: {result['loss_packets']} packets ({result['loss_pct']} %), "
        f"{result['streams_with_loss']} of {result['streams']} streams, worst "
        f"{result['worst_stream_loss_pct']} %",
    ]
    for kind, j in result["jitter_ms"].items():
        lines.append(
            f"jitter {kind} (RFC 3550, ms): mean {j['mean']}, p95 {j['p95']}, max {j['max']}"
        )
    for r in result["relays"]:
        if r["cpu_pct"] is None:
            cpu = "CPU unavailable (relay not on this machine or not visible)"
        else:
            cpu = (
                f"CPU {r['cpu_pct']} % of a core ({r['cpu_user_pct']} user, "
                f"{r['cpu_sys_pct']} sys), {r['cpu_us_per_forwarded']} µs per forwarded packet"
            )
        lines.append(
            f"relay {r['node_id']} (pid {r['pid'] or '-'}): forwarded {r['forwarded_pps']} pkt/s, "
            f"received {r['received_pps']} pkt/s; {cpu}"
        )
    lines.append(
        f"load workers: {result['workers']} process(es), {result['workers_cpu_pct']} % of a core"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conclave loadtest",
        description="Load a running Conclave cluster with lightweight participants.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    media = sub.add_parser(
        "media",
        help="publishers and counting subscribers in R meetings for T seconds",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    media.add_argument("--rooms", type=_bounded(1, 100), default=1, metavar="R")
    media.add_argument(
        "--publishers", type=_bounded(0, 50), default=1, metavar="P", help="per meeting (default 1)"
    )
    media.add_argument(
        "--subscribers",
        type=_bounded(0, 1000),
        default=10,
        metavar="S",
        help="per meeting (default 10)",
    )
    media.add_argument(
        "--duration",
        type=_bounded(1, 3600),
        default=15,
        metavar="T",
        help="measured seconds (default 15)",
    )
    media.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    media.add_argument(
        "--control-plane",
        default=None,
        metavar="HOST:PORT",
        help="default: $CONCLAVE_CONTROL_PLANE or 127.0.0.1:50051",
    )
    kinds = media.add_mutually_exclusive_group()
    kinds.add_argument(
        "--video",
        dest="audio",
        action="store_false",
        default=False,
        help="publish video only (default)",
    )
    kinds.add_argument(
        "--audio-video", dest="audio", action="store_true", help="publish audio and video"
    )
    kinds.add_argument("--audio-only", action="store_true", help="publish Opus audio only")
    media.add_argument("--width", type=int, default=640)
    media.add_argument("--height", type=int, default=360)
    media.add_argument("--video-bitrate", type=int, default=2_000_000, metavar="BPS")
    media.add_argument(
        "--workers",
        type=_bounded(1, 64),
        default=0,
        metavar="N",
        help="worker processes (default: one per 50 participants, up to the CPUs)",
    )
    media.add_argument("--join-timeout", type=float, default=JOIN_TIMEOUT_S)
    media.add_argument(
        "--receive-timeout",
        type=float,
        default=30.0,
        help="seconds to wait until everyone receives every stream",
    )
    media.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _bounded(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}..{high}")
        return value

    return parse


def main(argv: list[str]) -> int:
    """`conclave loadtest media ...`; exit code 1 if a join failed, someone never
    received, or loss reached 1 %."""
    if argv[:1] == ["_worker"]:
        worker_main()
        return 0
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    if args.publishers == 0:
        print("conclave loadtest: error: --publishers must be at least 1", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        result, code = uvloop.run(run_media(args))
    except ConclaveError as exc:
        say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(result, indent=2) if args.json else render(result))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
