"""Measurement: CPU of processes (/proc), the local process behind a relay's
listening port, the relays' Prometheus /metrics, and window figures between two
snapshots of relays and workers (forwarded packets, loss, jitter, CPU per
forwarded packet)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from client.loadtest.worker import Worker

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
METRIC_FORWARDED = "conclave_packets_forwarded_total"
METRIC_RECEIVED = "conclave_packets_received_total"


def process_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all its threads, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # after the ")" field 3 (state) is index 0, so utime (14) and stime (15) are 11, 12
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
