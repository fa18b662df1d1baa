"""Forwarding benchmark: relay CPU per forwarded packet, 1 publisher -> N subscribers.

Starts a real cluster on loopback (etcd, one control plane, ONE relay; bench/cluster.py),
then for each N: creates a room, joins one publisher (client.sdk.Session, VP8 from a
noisy synthetic pattern at a pinned bitrate) and N counting subscribers
(bench/counting_subscriber.py: signalling spoken directly, RTP counted after SRTP,
never parsed or decoded), waits until every subscriber receives packets, warms up,
and measures over a window:

- the relay process's CPU time (utime + stime from /proc/PID/stat),
- packets the relay received and forwarded (its /metrics counters),
- packets the subscribers counted,
- the CPU of the benchmark's own processes and of the whole machine (incl. steal).

With `--simulcast` the publisher is headless Chromium instead (bench/browser_publisher.py:
tests/e2e/page/meeting.html, fake 1280x720 camera, video only), so three simulcast
layers go into the relay, while each counting subscriber receives one layer, the one
the relay chooses for the size it asks for with `video_size` (`--video-sizes`, given
to the subscribers in turn). Chromium's own bandwidth estimator decides its bitrates;
what it sent per layer (getStats outbound-rtp) is part of the result, and so is
which layer each group of subscribers got (matched by packet rate).

    .venv/bin/python bench/forward.py [--subscribers 1,10,50] [--seconds 20] [--json]
    .venv/bin/python bench/forward.py --simulcast [--video-sizes 1280x720,640x360,320x180]

Results go to stdout (a table, or one JSON object with --json); progress and the
servers' own output go to stderr. Every child is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import os
import platform
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import aiortc.codecs.vpx
import uvloop
from av import VideoFrame
from browser_publisher import BrowserPublisher  # bench/ is sys.path[0]
from cluster import HOST, Child, Cluster, spawn
from counting_subscriber import SubscriberPool, VideoSize

from client.errors import ConclaveError
from client.loadtest.measure import METRIC_FORWARDED, METRIC_RECEIVED, process_cpu, scrape
from client.loadtest.worker import Worker
from client.media import PatternVideoTrack
from client.sdk import RoomsClient, Session
from conclave.ice import use_host_addresses
from protos.rooms_pb2 import JoinRoomResponse

WORKER_SCRIPT = Path(__file__).resolve().parent / "counting_subscriber.py"  # beside this file
METRIC_PARTICIPANTS = "conclave_participants"
METRIC_KEYFRAMES = "conclave_keyframe_requests_total"
METRIC_DROPPED = "conclave_packets_dropped_total"
METRIC_SWITCHES = "conclave_layer_switches_total"
METRIC_DYNACAST = "conclave_dynacast_changes_total"
RID_ORDER = {"h": 0, "m": 1, "l": 2}  # best first, as the relay names them
SATURATED_PCT = 90.0
# With --simulcast subscribers send this constant REMB (no figure limits their
# layer; the relay then tells Chromium its simulcast upstream figure, 4 Mbit/s).
SIMULCAST_REMB = 10_000_000
SETTLED_S = 3.0  # simulcast: no layer switch and the same layers sent for this long


# --------------------------------------------------------------------------- media


class NoisyPatternVideoTrack(PatternVideoTrack):
    """client.media's moving pattern with moderate luma noise on every frame.

    The noise (the low `noise_bits` bits of each luma byte flipped at random) makes
    every frame cost bits, so a CBR encoder sends a steady packet rate; pure noise
    would make aiortc's VP8 encoder overshoot its target. A pool of precomputed
    noise planes (a prime number of them) keeps the per-frame cost to a few
    big-integer operations.
    """

    def __init__(self, width: int, height: int, noise_bits: int, pool: int = 31) -> None:
        super().__init__(width, height)
        if not 0 <= noise_bits <= 8:
            raise ValueError("noise_bits must be 0..8")
        self._mask = (1 << noise_bits) - 1
        self._pool_size = pool
        self._noise: list[int] = []
        self._count = 0

    async def recv(self) -> VideoFrame:
        frame = await super().recv()
        if self._mask:
            luma = frame.planes[0]
            data = bytes(luma)
            if not self._noise:
                table = bytes(b & self._mask for b in range(256))
                self._noise = [
                    int.from_bytes(os.urandom(len(data)).translate(table), "little")
                    for _ in range(self._pool_size)
                ]
            noise = self._noise[self._count % len(self._noise)]
            self._count += 1
            luma.update((int.from_bytes(data, "little") ^ noise).to_bytes(len(data), "little"))
        return frame


def pin_vp8_bitrate(bitrate: int) -> None:
    """aiortc's VP8 encoder starts at DEFAULT_BITRATE and only moves on REMB, which
    the relay never sends; raising the default (and the cap) pins the rate."""
    aiortc.codecs.vpx.MAX_BITRATE = max(aiortc.codecs.vpx.MAX_BITRATE, bitrate)
    aiortc.codecs.vpx.DEFAULT_BITRATE = bitrate


class AiortcPublisher:
    """client.sdk.Session in this process: the noisy pattern at a pinned bitrate,
    one stream (aiortc cannot send simulcast)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.session: Session | None = None

    async def join(self, join: JoinRoomResponse) -> None:
        args = self.args
        kinds = ["audio", "video"] if args.audio else ["video"]
        track = NoisyPatternVideoTrack(args.width, args.height, args.noise_bits)
        # No end-to-end encryption (docs/e2ee.md): SFrame is the publisher's work, not
        # the relay's, and figures stay comparable with those taken before it existed.
        self.session = Session(join, "bench-publisher", kinds, tracks={"video": track}, e2ee=False)
        await self.session.start()

    async def leave(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            await session.leave()

    def cpu(self) -> dict[int, float]:
        return {}  # it is the benchmark process's CPU

    async def layers(self) -> dict[str, Any] | None:
        return None


class Publisher(Protocol):
    async def join(self, join: JoinRoomResponse) -> None: ...

    async def leave(self) -> None: ...

    def cpu(self) -> dict[int, float]: ...

    async def layers(self) -> dict[str, Any] | None: ...


# ----------------------------------------------------------------------- subscribers


class Pool(Protocol):
    @property
    def pid(self) -> int: ...

    async def join(
        self, entries: list[tuple[str, str, VideoSize | None]], timeout: float, remb: int
    ) -> None: ...

    async def counts(self) -> list[tuple[int, int]]: ...

    async def padded(self) -> list[int]: ...

    async def errors(self) -> list[str]: ...

    async def leave_all(self) -> None: ...

    async def close(self) -> None: ...


class WorkerPool:
    """A SubscriberPool in a child process, driven over its stdin/stdout
    (client/loadtest's Worker speaking bench/counting_subscriber.py's requests)."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.worker = Worker(child.process, "subscriber worker")

    @classmethod
    async def start(cls) -> WorkerPool:
        script = str(WORKER_SCRIPT)
        child = await spawn(
            "subscribers", [script], ready_prefix=None, timeout=0, echo=True, stdin_pipe=True
        )
        return cls(child)

    @property
    def pid(self) -> int:
        return self.child.pid

    async def join(
        self, entries: list[tuple[str, str, VideoSize | None]], timeout: float, remb: int
    ) -> None:
        request = {"op": "join", "subscribers": entries, "timeout": timeout, "remb": remb}
        await self.worker.call(request, timeout + 10)

    async def counts(self) -> list[tuple[int, int]]:
        reply = await self.worker.call({"op": "counts"}, 10.0)
        return [(int(p), int(b)) for p, b in reply["counts"]]

    async def padded(self) -> list[int]:
        reply = await self.worker.call({"op": "padded"}, 10.0)
        return [int(p) for p in reply["padded"]]

    async def errors(self) -> list[str]:
        reply = await self.worker.call({"op": "errors"}, 10.0)
        return [str(e) for e in reply["errors"]]

    async def leave_all(self) -> None:
        await self.worker.call({"op": "leave_all"}, 30.0)

    async def close(self) -> None:
        """End of input: the worker leaves everyone and exits."""
        await self.worker.close()


# ---------------------------------------------------------------------- measurement


def process_schedstat(pid: int) -> tuple[int, int]:
    """(on-CPU ns, runnable-but-waiting ns) summed over the process's live threads,
    from /proc/PID/task/*/schedstat: exact scheduler accounting, unlike the
    tick-sampled utime/stime, and the wait shows whether the process was starved."""
    run = wait = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            fields = f.read().split()
            run += int(fields[0])
            wait += int(fields[1])
    return run, wait


def machine_cpu() -> list[int]:
    """The aggregate `cpu` line of /proc/stat: user nice system idle iowait irq
    softirq steal ..., in clock ticks summed over all CPUs."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


@dataclass
class Snapshot:
    at: float
    relay: tuple[float, float]
    relay_sched: tuple[int, int]
    bench: tuple[float, float]
    worker: tuple[float, float] | None
    machine: list[int]
    metrics: dict[str, float]
    counts: list[tuple[int, int]]
    padded: list[int]  # per subscriber: packets with the RTP padding bit (with --remb)
    publisher_cpu: dict[int, float]  # pid -> CPU s of a publisher outside this process
    publisher_layers: dict[str, Any] | None  # Chromium's outbound-rtp per rid, its estimate


async def snapshot(
    cluster: Cluster, pool: Pool, publisher: Publisher, http: aiohttp.ClientSession, inline: bool
) -> Snapshot:
    assert cluster.relay is not None
    cluster.check_alive()
    at = time.monotonic()
    relay = process_cpu(cluster.relay.pid)
    relay_sched = process_schedstat(cluster.relay.pid)
    publisher_layers = await publisher.layers()
    metrics = await scrape(http, cluster.metrics_url)
    counts = await pool.counts()
    padded = await pool.padded()
    return Snapshot(
        publisher_cpu=publisher.cpu(),
        publisher_layers=publisher_layers,
        at=at,
        relay=relay,
        relay_sched=relay_sched,
        bench=process_cpu(os.getpid()),
        worker=None if inline else process_cpu(pool.pid),
        machine=machine_cpu(),
        metrics=metrics,
        counts=counts,
        padded=padded,
    )


def summarise(
    n: int, a: Snapshot, b: Snapshot, sizes: list[VideoSize] | None = None
) -> dict[str, Any]:
    dt = b.at - a.at
    relay_user = b.relay[0] - a.relay[0]
    relay_sys = b.relay[1] - a.relay[1]
    relay_cpu = relay_user + relay_sys
    sched_run = (b.relay_sched[0] - a.relay_sched[0]) / 1e9
    sched_wait = (b.relay_sched[1] - a.relay_sched[1]) / 1e9
    forwarded = b.metrics.get(METRIC_FORWARDED, 0) - a.metrics.get(METRIC_FORWARDED, 0)
    into_relay = b.metrics.get(METRIC_RECEIVED, 0) - a.metrics.get(METRIC_RECEIVED, 0)
    per_sub = [(pb - pa, bb - ba) for (pa, ba), (pb, bb) in zip(a.counts, b.counts, strict=True)]
    received = sum(p for p, _ in per_sub)
    received_bytes = sum(nb for _, nb in per_sub)
    ticks = [y - x for x, y in zip(a.machine, b.machine, strict=False)]
    total_ticks = sum(ticks) or 1
    steal = ticks[7] if len(ticks) > 7 else 0
    idle = ticks[3] + ticks[4]
    dropped = {
        key.split('reason="', 1)[1].rstrip('"}'): b.metrics[key] - a.metrics.get(key, 0)
        for key in b.metrics
        if key.startswith(METRIC_DROPPED + "{") and b.metrics[key] - a.metrics.get(key, 0)
    }
    result: dict[str, Any] = {
        "subscribers": n,
        "seconds": round(dt, 2),
        "publisher_pps": round(into_relay / dt, 1),
        "forwarded_pps": round(forwarded / dt, 1),
        "received_pps": round(received / dt, 1),
        "loss_pct": round(100 * (forwarded - received) / forwarded, 3) if forwarded else None,
        "relay_cpu_pct": round(100 * relay_cpu / dt, 1),
        "relay_user_pct": round(100 * relay_user / dt, 1),
        "relay_sys_pct": round(100 * relay_sys / dt, 1),
        "relay_us_per_forwarded": round(1e6 * relay_cpu / forwarded, 1) if forwarded else None,
        "relay_sched_cpu_pct": round(100 * sched_run / dt, 1),
        "relay_sched_us_per_forwarded": (
            round(1e6 * sched_run / forwarded, 1) if forwarded else None
        ),
        "relay_runqueue_wait_pct": round(100 * sched_wait / dt, 1),
        "relay_us_per_packet_in": round(1e6 * relay_cpu / into_relay, 1) if into_relay else None,
        "video_kbps_per_subscriber": round(8 * received_bytes / n / dt / 1000, 1),
        "per_subscriber_pps_min": round(min(p for p, _ in per_sub) / dt, 1),
        "per_subscriber_pps_max": round(max(p for p, _ in per_sub) / dt, 1),
        "bench_cpu_pct": round(100 * (sum(b.bench) - sum(a.bench)) / dt, 1),
        "worker_cpu_pct": (
            round(100 * (sum(b.worker) - sum(a.worker)) / dt, 1)
            if a.worker is not None and b.worker is not None
            else None
        ),
        "machine_busy_pct": round(100 * (total_ticks - idle - steal) / total_ticks, 1),
        "machine_steal_pct": round(100 * steal / total_ticks, 1),
        "keyframe_requests": int(
            b.metrics.get(METRIC_KEYFRAMES, 0) - a.metrics.get(METRIC_KEYFRAMES, 0)
        ),
        "dropped": {k: int(v) for k, v in dropped.items()},
        "relay_forwarded_counted": int(forwarded),
        "subscribers_counted": int(received),
    }
    result["relay_saturated"] = result["relay_cpu_pct"] >= SATURATED_PCT
    if b.publisher_cpu:
        spent = sum(cpu - a.publisher_cpu.get(pid, 0.0) for pid, cpu in b.publisher_cpu.items())
        result["publisher_cpu_pct"] = round(100 * spent / dt, 1)
    if a.publisher_layers is not None and b.publisher_layers is not None:
        result.update(summarise_layers(a, b, dt, into_relay, per_sub, sizes or []))
    return result


def counter_delta(a: Snapshot, b: Snapshot, name: str) -> int:
    return int(b.metrics.get(name, 0) - a.metrics.get(name, 0))


def summarise_layers(
    a: Snapshot,
    b: Snapshot,
    dt: float,
    into_relay: float,
    per_sub: list[tuple[int, int]],
    sizes: list[VideoSize],
) -> dict[str, Any]:
    """The simulcast figures: what Chromium sent per layer (outbound-rtp deltas),
    how much of it reached the relay, which layer each group of subscribers (by
    requested size) got, matched by media bitrate, and the relay's layer switches."""
    assert a.publisher_layers is not None and b.publisher_layers is not None
    earlier = {str(o["rid"]): o for o in a.publisher_layers["layers"]}
    layers = []
    for o in sorted(b.publisher_layers["layers"], key=lambda o: RID_ORDER.get(o["rid"], 9)):
        was = earlier.get(str(o["rid"]), {})

        def delta(key: str, now: dict[str, Any] = o, was: dict[str, Any] = was) -> float:
            return float(now.get(key, 0) or 0) - float(was.get(key, 0) or 0)

        layers.append(
            {
                "rid": o["rid"],
                "size": f"{o['frameWidth']}x{o['frameHeight']}" if o["frameWidth"] else "-",
                "fps": round(delta("framesEncoded") / dt, 1),
                "pps": round(delta("packetsSent") / dt, 1),
                "kbps": round(8 * (delta("bytesSent") + delta("headerBytesSent")) / dt / 1000, 1),
                "payload_kbps": round(8 * delta("bytesSent") / dt / 1000, 1),
                "key_frames": int(delta("keyFramesEncoded")),
                "plis": int(delta("pliCount")),
                "nacks": int(delta("nackCount")),
                "target_kbps": round(float(o.get("targetBitrate") or 0) / 1000, 1),
                "limited_by": o.get("qualityLimitationReason") or "",
                "active": o.get("active"),
            }
        )
    sent = sum(layer["pps"] for layer in layers) * dt
    sending = [layer for layer in layers if layer["pps"] > 0]
    groups = []
    for size in dict.fromkeys(sizes):
        indices = [i for i in range(len(per_sub)) if sizes[i % len(sizes)] == size]
        members = [per_sub[i] for i in indices]
        padded = sum(b.padded[i] - a.padded[i] for i in indices)
        if not members:
            continue
        pps = [p / dt for p, _ in members]
        mean = sum(pps) / len(pps)
        kbps = 8 * sum(nb for _, nb in members) / len(members) / dt / 1000
        # By media bitrate, not packet rate: Chromium's packet counts include the
        # padding-only packets that the relay drops (docs/benchmarks.md).
        match = min(sending, key=lambda layer: abs(layer["payload_kbps"] - kbps), default=None)
        groups.append(
            {
                "requested": f"{size[0]}x{size[1]}",
                "subscribers": len(members),
                "pps_mean": round(mean, 1),
                "pps_min": round(min(pps), 1),
                "pps_max": round(max(pps), 1),
                "kbps_mean": round(kbps, 1),
                "matches_layer": match["rid"] if match else None,
                "matches_size": match["size"] if match else None,
                "pct_of_that_layer": (
                    round(100 * kbps / match["payload_kbps"], 1) if match else None
                ),
                "padded_pct": round(100 * padded / max(1, sum(p for p, _ in members)), 1),
            }
        )
    estimate = b.publisher_layers.get("estimate")
    return {
        "layers": layers,
        "chromium_sent_pps": round(sent / dt, 1),
        "chromium_estimate_kbps": round(float(estimate) / 1000, 1) if estimate else None,
        "into_relay_loss_pct": round(100 * (sent - into_relay) / sent, 2) if sent else None,
        "groups": groups,
        "layer_switches": counter_delta(a, b, METRIC_SWITCHES),
        "dynacast_changes": counter_delta(a, b, METRIC_DYNACAST),
    }


def linear_fit(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Least squares of relay CPU (core-seconds per second) on forwarded packets/s:
    the slope is the marginal CPU per forwarded packet, the intercept the cost of
    everything else (ingest, timers, keep-alives) at zero fan-out."""
    points = [(r["forwarded_pps"], r["relay_cpu_pct"] / 100) for r in runs]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    intercept = mean_y - slope * mean_x
    pairwise = [
        {
            "from": a["subscribers"],
            "to": b["subscribers"],
            "us_per_forwarded": round(
                1e6
                * (b["relay_cpu_pct"] - a["relay_cpu_pct"])
                / 100
                / (b["forwarded_pps"] - a["forwarded_pps"]),
                1,
            ),
        }
        for a, b in itertools.pairwise(runs)
        if b["forwarded_pps"] != a["forwarded_pps"]
    ]
    return {
        "marginal_us_per_forwarded": round(slope * 1e6, 1),
        "intercept_cpu_pct": round(intercept * 100, 1),
        "pairwise": pairwise,
        "projected_saturation_pps": round((1 - intercept) / slope) if slope > 0 else None,
    }


def loopback_send_cost(count: int = 50_000, size: int = 1200) -> dict[str, float]:
    """CPU of one `sendto()` of a `size`-byte datagram over loopback, for this
    machine right now: the per-packet floor of any relay that sends without
    batching. A thread drains the receiving socket; only the sending thread's
    CPU (RUSAGE_THREAD: user is Python's loop, system is the kernel's send and
    loopback delivery) is counted."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    received = 0

    def drain() -> None:
        nonlocal received
        with contextlib.suppress(OSError):
            while received < count:
                receiver.recv(2048)
                received += 1

    with receiver, sender:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        receiver.bind((HOST, 0))
        receiver.settimeout(2.0)
        address = receiver.getsockname()
        thread = threading.Thread(target=drain, daemon=True)
        thread.start()
        data = os.urandom(size)
        before = resource.getrusage(resource.RUSAGE_THREAD)
        for i in range(count):
            sender.sendto(data, address)
            if i % 64 == 63:
                time.sleep(0.0002)  # let the receiver keep up: no drops, no full queue
        after = resource.getrusage(resource.RUSAGE_THREAD)
        thread.join(5.0)
    return {
        "datagram_bytes": size,
        "user_us": round(1e6 * (after.ru_utime - before.ru_utime) / count, 2),
        "sys_us": round(1e6 * (after.ru_stime - before.ru_stime) / count, 2),
        "delivered_pct": round(100 * received / count, 1),
    }


# ---------------------------------------------------------------------------- runs


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


async def wait_until(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float, interval: float = 0.5
) -> None:
    """Poll the async predicate `check` until true; bounded in time."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


async def relay_idle_cpu(cluster: Cluster, seconds: float) -> float:
    """The relay's CPU with no meeting at all (lease renewal, gRPC, timers): the
    part of the fit's intercept that is not the publisher's ingest."""
    assert cluster.relay is not None
    await asyncio.sleep(1.0)  # past start-up
    start, before = time.monotonic(), process_schedstat(cluster.relay.pid)[0]
    await asyncio.sleep(seconds)
    after = process_schedstat(cluster.relay.pid)[0]
    return round(100 * (after - before) / 1e9 / (time.monotonic() - start), 2)


async def settle_layers(
    n: int,
    args: argparse.Namespace,
    cluster: Cluster,
    publisher: Publisher,
    http: aiohttp.ClientSession,
) -> dict[str, Any]:
    """Simulcast: wait (at most --layer-wait s) until Chromium sends every layer the
    subscribers' sizes call for (`expected_layers`), and neither the layers it sends
    nor the relay's layer switches have changed for SETTLED_S: the subscribers have
    climbed to their layers and dynacast has paused the unused ones. Chromium's
    bandwidth estimate starts low and climbs, and the relay asks for a layer that did
    not start again only after 30 s, so the top layer can take a minute."""
    expected = expected_layers(args.camera, args.video_sizes[:n])
    started = last_said = time.monotonic()
    previous: dict[str, int] = {}
    state: tuple[float, frozenset[str]] | None = None
    stable_since = started
    while True:
        await asyncio.sleep(1.0)
        cluster.check_alive()
        switches = (await scrape(http, cluster.metrics_url)).get(METRIC_SWITCHES, 0)
        stats = await publisher.layers() or {}
        packets = {str(o["rid"]): int(o["packetsSent"]) for o in stats.get("layers", [])}
        sending = frozenset(r for r, p in packets.items() if p > previous.get(r, p))
        previous = packets
        now = time.monotonic()
        if (switches, sending) != state:
            state, stable_since = (switches, sending), now
        settled = expected <= sending and now - stable_since >= SETTLED_S
        if now - last_said >= 10:
            last_said = now
            estimate = stats.get("estimate") or 0
            say(f"  sending {sorted(sending)}, Chromium's estimate {estimate / 1e3:.0f} kbit/s")
        if settled or now - started >= args.layer_wait:
            return {
                "settled": settled,
                "after_s": round(now - started, 1),
                "expected": sorted(expected, key=lambda r: RID_ORDER.get(r, 9)),
                "sending": sorted(sending, key=lambda r: RID_ORDER.get(r, 9)),
            }


def expected_layers(camera: str, sizes: list[VideoSize]) -> frozenset[str]:
    """The rids the relay should forward for these requested sizes: the smallest
    layer covering each size (the relay asks for scales 1/2/4: relay/simulcast.py),
    plus the lowest, which dynacast never pauses."""
    width, height = (int(v) for v in camera.split("x"))
    ladder = [("l", 4), ("m", 2), ("h", 1)]
    wanted = {"l"}
    for w, h in sizes:
        wanted.add(next((r for r, k in ladder if width // k >= w and height // k >= h), "h"))
    return frozenset(wanted)


async def run_one(
    n: int,
    args: argparse.Namespace,
    cluster: Cluster,
    rooms: RoomsClient,
    pool: Pool,
    publisher: Publisher,
    http: aiohttp.ClientSession,
) -> dict[str, Any]:
    room = await rooms.create_room(name=f"bench-n{n}", max_participants=n + 1)
    sizes: list[VideoSize] = args.video_sizes if args.simulcast else []
    try:
        join = await rooms.join_room(room.room_id, "bench-publisher", True, room.passcode)
        await publisher.join(join)
        base = (await scrape(http, cluster.metrics_url)).get(METRIC_RECEIVED, 0)

        async def publisher_flowing() -> bool:
            cluster.check_alive()
            return (await scrape(http, cluster.metrics_url)).get(METRIC_RECEIVED, 0) > base + 30

        await wait_until(publisher_flowing, "the publisher's packets at the relay", 30)
        say(f"N={n}: publisher sending; joining {n} subscribers")
        for start in range(0, n, args.batch):
            size = min(args.batch, n - start)
            entries = []
            for i in range(start, start + size):
                grant = await rooms.join_room(room.room_id, f"bench-sub-{i}", False, room.passcode)
                wanted = sizes[i % len(sizes)] if sizes else None
                entries.append((grant.signal_url, grant.grant, wanted))
            await pool.join(entries, 20.0, args.remb)
        joined_at = time.monotonic()

        async def all_receiving() -> bool:
            cluster.check_alive()
            counts = await pool.counts()
            return len(counts) == n and all(p > 0 for p, _ in counts)

        await wait_until(all_receiving, f"all {n} subscribers to receive packets", 60)
        say(f"N={n}: all receiving {time.monotonic() - joined_at:.1f} s after the last join")
        settled = await settle_layers(n, args, cluster, publisher, http) if args.simulcast else None
        if settled is not None:
            say(f"N={n}: layers {settled}")
        say(f"N={n}: warm-up {args.warmup:g} s, then {args.seconds:g} s measured")
        await asyncio.sleep(args.warmup)
        before = await snapshot(cluster, pool, publisher, http, args.inline)
        await asyncio.sleep(args.seconds)
        after = await snapshot(cluster, pool, publisher, http, args.inline)
        cluster.check_alive()
        result = summarise(n, before, after, sizes)
        if settled is not None:
            result["layers_settled"] = settled
        errors = await pool.errors()
        if errors:
            result["subscriber_errors"] = errors[:5]
        return result
    finally:
        await pool.leave_all()
        await publisher.leave()
        with contextlib.suppress(Exception):
            await rooms.end_room(room.room_id, room.host_key)

        async def relay_empty() -> bool:
            metrics = await scrape(http, cluster.metrics_url)
            return metrics.get(METRIC_PARTICIPANTS, 0) == 0

        with contextlib.suppress(Exception):
            await wait_until(relay_empty, "the relay to drop every participant", 20)


def aligned(rows: list[list[str]]) -> list[str]:
    """Right-aligned columns, a rule under the first row."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_layers(result: dict[str, Any]) -> list[str]:
    """Simulcast: per run, what Chromium sent per layer and what each group of
    subscribers received."""
    lines: list[str] = []
    for run in result["runs"]:
        if "layers" not in run:
            continue
        n = run["subscribers"]
        lines += [
            "",
            f"N={n}: Chromium sent {run['chromium_sent_pps']:.0f} pkt/s, its estimate "
            f"{run['chromium_estimate_kbps']} kbit/s; into-relay loss "
            f"{run['into_relay_loss_pct']} %; layer switches {run['layer_switches']}, "
            f"dynacast changes {run['dynacast_changes']} in the window; "
            f"settled {run.get('layers_settled')}",
        ]
        rows = [["rid", "size", "fps", "pkt/s", "kbit/s", "payload", "target", "keyframes"]]
        for layer in run["layers"]:
            rows.append(
                [
                    str(layer["rid"]),
                    layer["size"],
                    f"{layer['fps']:.1f}",
                    f"{layer['pps']:.0f}",
                    f"{layer['kbps']:.0f}",
                    f"{layer['payload_kbps']:.0f}",
                    f"{layer['target_kbps']:.0f}",
                    str(layer["key_frames"]),
                ]
            )
        lines += aligned(rows)
        header = ["asked", "subs", "pkt/s each", "min", "max", "kbit/s each", "= layer"]
        rows = [[*header, "% of it", "padded %"]]
        for group in run["groups"]:
            rows.append(
                [
                    group["requested"],
                    str(group["subscribers"]),
                    f"{group['pps_mean']:.1f}",
                    f"{group['pps_min']:.1f}",
                    f"{group['pps_max']:.1f}",
                    f"{group['kbps_mean']:.0f}",
                    f"{group['matches_layer']} ({group['matches_size']})",
                    f"{group['pct_of_that_layer']}",
                    f"{group['padded_pct']}",
                ]
            )
        lines += ["", *aligned(rows)]
    return lines


def format_table(result: dict[str, Any]) -> str:
    columns = [
        ("N", "subscribers", "{}"),
        ("pub pkt/s", "publisher_pps", "{:.0f}"),
        ("fwd pkt/s", "forwarded_pps", "{:.0f}"),
        ("recv pkt/s", "received_pps", "{:.0f}"),
        ("loss %", "loss_pct", "{:.2f}"),
        ("relay CPU %", "relay_cpu_pct", "{:.1f}"),
        ("usr/sys %", None, ""),
        ("µs/fwd pkt", "relay_us_per_forwarded", "{:.1f}"),
        ("(schedstat)", "relay_sched_us_per_forwarded", "{:.1f}"),
        ("µs/pkt in", "relay_us_per_packet_in", "{:.1f}"),
        ("rq wait %", "relay_runqueue_wait_pct", "{:.1f}"),
        ("kbit/s/sub", "video_kbps_per_subscriber", "{:.0f}"),
        ("bench %", "bench_cpu_pct", "{:.0f}"),
        ("worker %", "worker_cpu_pct", "{:.0f}"),
        ("chromium %", "publisher_cpu_pct", "{:.0f}"),
        ("machine %", "machine_busy_pct", "{:.0f}"),
        ("steal %", "machine_steal_pct", "{:.1f}"),
    ]
    rows = [[title for title, _, _ in columns]]
    for run in result["runs"]:
        row = []
        for _, key, fmt in columns:
            if key is None:
                row.append(f"{run['relay_user_pct']:.0f}/{run['relay_sys_pct']:.0f}")
            else:
                value = run.get(key)
                row.append("-" if value is None else fmt.format(value))
        rows.append(row)
    lines = aligned(rows)
    fit = result.get("fit")
    if fit:
        pairs = ", ".join(
            f"{p['from']}->{p['to']}: {p['us_per_forwarded']} µs" for p in fit["pairwise"]
        )
        lines.append("")
        lines.append(
            f"marginal relay CPU per forwarded packet (least squares over N): "
            f"{fit['marginal_us_per_forwarded']} µs; intercept {fit['intercept_cpu_pct']} % "
            f"of a core; pairwise {pairs}"
        )
        if fit["projected_saturation_pps"]:
            lines.append(
                f"linear extrapolation to one full core (not measured): "
                f"~{fit['projected_saturation_pps']} forwarded packets/s"
            )
    if result.get("relay_idle_cpu_pct") is not None:
        lines.append(f"relay idle, no meeting: {result['relay_idle_cpu_pct']} % of a core")
    for run in result["runs"]:
        notes = []
        if run["relay_saturated"]:
            notes.append("relay near one full core (saturated)")
        if run["dropped"]:
            notes.append(f"relay drops {run['dropped']}")
        if run.get("subscriber_errors"):
            notes.append(f"relay errors to subscribers {run['subscriber_errors']}")
        if notes:
            lines.append(f"N={run['subscribers']}: " + "; ".join(notes))
    return "\n".join(lines + format_layers(result))


async def amain(
    args: argparse.Namespace, cluster: Cluster, browser: BrowserPublisher | None
) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    use_host_addresses([HOST])
    pin_vp8_bitrate(args.bitrate)
    started = datetime.datetime.now(datetime.UTC)
    calibration = await asyncio.to_thread(loopback_send_cost)
    say(f"loopback sendto of 1200 bytes: {calibration}")
    say("starting etcd, control plane and relay")
    pool: Pool | None = None
    publisher: Publisher = browser if browser is not None else AiortcPublisher(args)
    runs: list[dict[str, Any]] = []
    idle_cpu_pct: float | None = None
    try:
        if browser is not None:
            await browser.start()
            say(f"Chromium {browser.version} headless, page {browser.page_url}")
        await cluster.start()
        assert cluster.relay is not None
        say(f"relay pid {cluster.relay.pid}, metrics {cluster.metrics_url}")
        if args.inline:
            pool = SubscriberPool()
        else:
            worker = await WorkerPool.start()
            cluster.children.append(worker.child)  # stopped first, before the relay
            pool = worker
            say(f"subscriber worker pid {worker.pid}")
        idle_cpu_pct = await relay_idle_cpu(cluster, min(5.0, args.seconds))
        say(f"relay idle (no meeting): {idle_cpu_pct} % of a core")
        async with (
            aiohttp.ClientSession() as http,
            RoomsClient(cluster.control_plane_target) as rooms,
        ):
            for n in args.subscribers:
                runs.append(await run_one(n, args, cluster, rooms, pool, publisher, http))
                say(f"N={n}: {json.dumps(runs[-1])}")
                await asyncio.sleep(args.pause)
    finally:
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.close()
        if browser is not None:
            await browser.close()
        await cluster.stop()
    return {
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/forward.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "publisher": (
            {
                "video": f"Chromium {browser.version} fake camera {args.camera} (30 fps asked), "
                "simulcast h/m/l (scale 1/2/4), VP8, bitrate from its own estimator",
                "audio": None,
                "subscriber_sizes": [f"{w}x{h}" for w, h in args.video_sizes],
            }
            if browser is not None
            else {
                "video": f"VP8 {args.width}x{args.height} 30 fps, noisy pattern "
                f"({args.noise_bits} noise bits), pinned {args.bitrate / 1e6:g} Mbit/s",
                "audio": "Opus 48 kHz sine" if args.audio else None,
            }
        ),
        "subscribers_in": "bench process" if args.inline else "one worker process",
        "subscriber_remb_bps": args.remb,
        "warmup_s": args.warmup,
        "loopback_sendto": calibration,
        "relay_idle_cpu_pct": idle_cpu_pct,
        "runs": runs,
        "fit": linear_fit(runs),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])

    def sizes(text: str) -> list[int]:
        values = [int(v) for v in text.split(",") if v.strip()]
        if not values or any(v < 1 or v > 190 for v in values):
            raise argparse.ArgumentTypeError("a comma-separated list of 1..190")
        return values

    parser.add_argument("--subscribers", type=sizes, default=[1, 10, 50], metavar="N,N,...")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per N")
    parser.add_argument("--warmup", type=float, default=3.0, help="after all subscribers receive")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--bitrate", type=int, default=2_000_000, help="VP8 target, bit/s")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--noise-bits", type=int, default=3, help="luma noise amplitude, bits")
    parser.add_argument("--audio", action="store_true", help="publish Opus audio as well")
    parser.add_argument(
        "--inline", action="store_true", help="run subscribers in this process, not a worker"
    )
    parser.add_argument("--batch", type=int, default=10, help="subscribers joining at once")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between runs")

    def video_sizes(text: str) -> list[VideoSize]:
        try:
            values = [size(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = []
        if not values:
            raise argparse.ArgumentTypeError("a comma-separated list of WIDTHxHEIGHT")
        return values

    def size(text: str) -> VideoSize:
        width, height = (int(v) for v in text.strip().lower().split("x"))
        if not (1 <= width <= 16384 and 1 <= height <= 16384):
            raise ValueError(text)
        return width, height

    parser.add_argument(
        "--simulcast",
        action="store_true",
        help="publisher: headless Chromium sending three simulcast layers",
    )
    parser.add_argument(
        "--video-sizes",
        type=video_sizes,
        default=[(1280, 720), (640, 360), (320, 180)],
        metavar="WxH,...",
        help="with --simulcast: the video_size each subscriber asks for, in turn",
    )
    parser.add_argument(
        "--camera",
        type=lambda text: "{}x{}".format(*size(text)),
        default="1280x720",
        help="with --simulcast: the fake camera's size",
    )
    parser.add_argument(
        "--remb",
        type=int,
        default=None,
        metavar="BPS",
        help="subscribers send a constant REMB of this figure every second; 0: none "
        "(default: 10000000 with --simulcast, else 0)",
    )
    parser.add_argument(
        "--layer-wait",
        type=float,
        default=90.0,
        help="with --simulcast: at most this long for the layers to settle",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 600 or not 0 <= args.warmup <= 60:
        parser.error("--seconds must be 1..600 and --warmup 0..60")
    if not 0 <= args.layer_wait <= 300:
        parser.error("--layer-wait must be 0..300")
    if args.remb is None:
        args.remb = SIMULCAST_REMB if args.simulcast else 0
    if not 0 <= args.remb <= 1_000_000_000:
        parser.error("--remb must be 0..1e9 bit/s")
    if not args.simulcast:
        args.video_sizes = []
    args.batch = max(1, min(args.batch, 50))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cluster = Cluster()
    browser = BrowserPublisher(args.camera) if args.simulcast else None
    try:
        result = uvloop.run(amain(args, cluster, browser))
    except KeyboardInterrupt:
        say("interrupted; every child stopped")
        return 130
    except asyncio.CancelledError:  # SIGTERM cancels the main task
        say("terminated; every child stopped")
        return 143
    except (RuntimeError, OSError, ConclaveError) as exc:
        say(f"failed: {exc}")
        return 1
    finally:
        cluster.kill_leftovers()
        if browser is not None:
            browser.kill_leftovers()
    cal = result["loopback_sendto"]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['date']}  {result['command']}\npublisher: {result['publisher']['video']}"
            f"{'; ' + result['publisher']['audio'] if args.audio else ''}; subscribers in "
            f"{result['subscribers_in']}; warm-up {args.warmup:g} s; "
            f"subscribers' REMB {args.remb / 1e6:g} Mbit/s\n"
            f"loopback sendto() of 1200 bytes here, now: {cal['user_us']} µs user + "
            f"{cal['sys_us']} µs system per datagram\n"
        )
        print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
