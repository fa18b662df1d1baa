"""Side by side on this machine, in one run: Conclave's relay, Janus 1.1 (VideoRoom,
`event_loops = 2`) and the naive aiortc relay (decode, re-encode per subscriber).

For each mode (video: VP8 640x360 at 2 Mbit/s, ~200 packets/s; audio: Opus, 50
packets/s) and each N, every system in turn gets the same load: one publisher
(client/loadtest's pre-encoded clip, looped) and N counting subscribers (SRTP
decrypted, RTP header read for loss and jitter, never decoded), in worker
processes. After everyone receives and a warm-up, a window measures the server
process's CPU (/proc, all threads), what the subscribers received and lost.
Figures are per packet delivered to a subscriber, for all three alike (Janus and
the naive relay export no forwarding counter; Conclave's /metrics is reported
beside). The naive relay gets its own, small N (it saturates early).

    .venv/bin/python bench/side_by_side.py [--video 10,50,200] [--audio 10,50,200]
        [--naive-video 1,2,4,8] [--naive-audio 1,5,10,20] [--seconds 15] [--json]

Janus comes from Debian's `janus` package (installed with apt-get if missing and
we are root; bench/janus.py). Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import json
import os
import platform
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from cluster import HOST, Child, Cluster, child_env, spawn, stop_child  # bench/ is sys.path[0]
from janus import JanusServer, create_room, destroy_room

from client.loadtest.measure import Relay, metric_sum, scrape, summarise, take_snapshot
from client.loadtest.worker import BATCH, Worker, join_all, wait_receiving
from client.rooms import RoomsClient
from conclave.processes import free_port

HERE = Path(__file__).resolve().parent
LOSS_LIMIT_PCT = 1.0
VIDEO = {"width": 640, "height": 360, "bitrate": 2_000_000}
Batches = list[tuple[int, Callable[[], Awaitable[list[dict[str, Any]]]]]]


def say(message: str) -> None:
    print(f"[side-by-side] {message}", file=sys.stderr, flush=True)


def udp_receive_drops() -> int:
    """Datagrams the kernel dropped for a full socket receive buffer, machine-wide
    (/proc/net/snmp Udp RcvbufErrors): on loopback, loss the subscribers (or a
    server) did not read in time, as opposed to packets a server never sent."""
    with open("/proc/net/snmp") as f:
        lines = [line.split() for line in f if line.startswith("Udp:")]
    header, values = lines[0], lines[1]
    return int(values[header.index("RcvbufErrors")])


def pin_process(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` on `cpus` (threads made later inherit it)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task), cpus)


def machine_ticks() -> list[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


CONCLAVE_SYSTEMS = {
    "conclave": ["--forwarder", "python"],
    "conclave-native": ["--forwarder", "native"],
    "conclave-1port": ["--forwarder", "python", "--udp-port", "0"],
    "conclave-native-1port": ["--forwarder", "native", "--udp-port", "0"],
}
SYSTEMS = [*CONCLAVE_SYSTEMS, "janus", "naive"]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        # The relay on each media path (docs/native.md): `conclave` is the Python
        # reference, `conclave-native` the C engine; `-1port` the same with every
        # participant on one UDP port (--udp-port); each in a cluster of its own.
        self.clusters = {
            system: Cluster(relay_args=["--capacity", "1000", *relay_args])
            for system, relay_args in CONCLAVE_SYSTEMS.items()
            if system in args.systems
        }
        self.janus = JanusServer(free_port())
        self.naive_port = free_port()
        self.naive: Child | None = None
        self.workers: list[Worker] = []

    async def start(self) -> None:
        systems = self.args.systems
        for name, cluster in self.clusters.items():
            if name in systems:
                await cluster.start()
                assert cluster.relay is not None
                say(f"{name} relay pid {cluster.relay.pid}")
        if "janus" in systems:
            await self.janus.start()
            say(f"janus pid {self.janus.pid} ({self.janus.version}), {self.janus.url}")
        if "naive" in systems:
            self.naive = await spawn(
                "naive-relay",
                [str(HERE / "naive_relay.py"), "--port", str(self.naive_port)],
                ready_prefix="naive relay ready",
                timeout=30,
                echo=True,
            )
            say(f"naive relay pid {self.naive.pid}")
        argv = [sys.executable, str(HERE / "sbs_worker.py")]
        if self.args.native_counting:
            argv.append("--native-counting")
        if self.args.srtp_cm:
            argv.append("--srtp-cm")
        self.workers = [await Worker.start(argv, child_env()) for _ in range(self.args.workers)]
        if self.args.pin:
            self.pin()

    def pin(self) -> None:
        """Each server on CPU 0, the workers on the others: a server's figures are
        then what one core of its own can do."""
        cpus = sorted(os.sched_getaffinity(0))
        servers = [c.relay.pid for c in self.clusters.values() if c.relay is not None]
        if "janus" in self.args.systems:
            servers.append(self.janus.pid)
        if self.naive is not None:
            servers.append(self.naive.pid)
        for pid in servers:
            pin_process(pid, {cpus[0]})
        for worker in self.workers:
            pin_process(worker.pid, set(cpus[1:]))
        say(f"servers pinned to CPU {cpus[0]}, workers to CPUs {cpus[1:]}")

    async def stop(self) -> None:
        await asyncio.gather(*(w.close() for w in self.workers), return_exceptions=True)
        if self.naive is not None:
            await stop_child(self.naive)
        await asyncio.to_thread(self.janus.stop)
        for cluster in self.clusters.values():
            await cluster.stop()

    async def point(
        self,
        system: str,
        kinds: list[str],
        n: int,
        http: aiohttp.ClientSession,
        publishers: int = 1,
    ) -> dict[str, Any]:
        """`publishers` publishers, n subscribers on `system`: join, warm up,
        measure, leave."""
        args = self.args
        count = len(self.workers)
        if system in self.clusters:
            cluster = self.clusters[system]
            assert cluster.relay is not None
            relays = {system: Relay(system, cluster.metrics_url, cluster.relay.pid)}
            rooms = RoomsClient(cluster.control_plane_target)
            room = await rooms.create_room("side-by-side", max_participants=n + publishers)

            async def entries(names: list[str], publisher: bool) -> list[dict[str, Any]]:
                made = []
                for name in names:
                    join = await rooms.join_room(room.room_id, name, publisher, room.passcode)
                    made.append(
                        {
                            "id": name,
                            "server": "conclave",
                            "signal_url": join.signal_url,
                            "grant": join.grant,
                            "publish": kinds if publisher else [],
                            "video": VIDEO,
                        }
                    )
                return made

            async def cleanup() -> None:
                with contextlib.suppress(Exception):
                    await rooms.end_room(room.room_id, room.host_key)
                await rooms.close()
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:  # until the relay is empty again
                    samples = await scrape(http, cluster.metrics_url)
                    if metric_sum(samples, "conclave_participants") == 0:
                        break
                    await asyncio.sleep(0.5)
        elif system == "janus":
            relays = {"janus": Relay("janus", None, self.janus.pid)}
            room_id = random.randint(10_000, 1_000_000_000)
            await create_room(http, self.janus.url, room_id, publishers)
            feeds = list(range(1, publishers + 1))

            async def entries(names: list[str], publisher: bool) -> list[dict[str, Any]]:
                return [
                    {
                        "id": name,
                        "server": "janus",
                        "url": self.janus.url,
                        "room": room_id,
                        "feed": feeds[int(name[3:])] if publisher else 0,
                        "feeds": feeds,
                        "publish": kinds if publisher else [],
                        "video": VIDEO,
                    }
                    for name in names
                ]

            async def cleanup() -> None:
                await destroy_room(http, self.janus.url, room_id)
        else:
            assert self.naive is not None
            relays = {"naive": Relay("naive", None, self.naive.pid)}
            url = f"http://{HOST}:{self.naive_port}"

            async def entries(names: list[str], publisher: bool) -> list[dict[str, Any]]:
                return [
                    {
                        "id": name,
                        "server": "naive",
                        "url": url,
                        "kinds": kinds,
                        "publish": kinds if publisher else [],
                        "video": VIDEO,
                    }
                    for name in names
                ]

            async def cleanup() -> None:
                return None

        names = [f"pub{i}" for i in range(publishers)]
        wanted = dict.fromkeys(names, 0) | {f"s{i}": publishers * len(kinds) for i in range(n)}
        subscribers = [f"s{i}" for i in range(n)]
        pub_batches: Batches = [(0, functools.partial(entries, names, True))]
        sub_batches: Batches = [
            (k % count, functools.partial(entries, subscribers[s : s + BATCH], False))
            for k, s in enumerate(range(0, n, BATCH))
        ]
        result: dict[str, Any] = {
            "system": system,
            "mode": "+".join(kinds),
            "subscribers": n,
            "publishers": publishers,
        }
        try:
            started = time.monotonic()
            failures = await join_all(self.workers, pub_batches, 20.0)
            if not failures:
                failures += await join_all(self.workers, sub_batches, 30.0)
            result["join_failures"] = len(failures)
            result["join_s"] = round(time.monotonic() - started, 1)
            if failures:
                say(f"{system} N={n}: {len(failures)} joins failed, e.g. {failures[0]}")
            waited, short = await wait_receiving(self.workers, wanted, 40.0)
            result["not_receiving"] = len(short)
            if short:
                say(f"{system} N={n}: {len(short)} not receiving after {waited:.0f} s")
                replies = await asyncio.gather(*(w.call({"op": "stats"}) for w in self.workers))
                for reply in replies:
                    for pid, p in reply["participants"].items():
                        if pid in short:
                            say(f"  {pid}: streams {p['streams']} other {p['other']} {p['errors']}")
            await asyncio.sleep(args.warmup)
            ticks0, drops0 = machine_ticks(), udp_receive_drops()
            before = await take_snapshot(http, relays, self.workers)
            await asyncio.sleep(args.seconds)
            after = await take_snapshot(http, relays, self.workers)
            ticks = [y - x for x, y in zip(ticks0, machine_ticks(), strict=False)]
            result["udp_rcvbuf_drops"] = udp_receive_drops() - drops0
            window = summarise(before, after, relays, kinds)
            relay = window["relays"][0]
            received = window["participants_received_pps"]
            result.update(
                received_pps=received,
                expected_pps=window["participants_expected_pps"],
                loss_pct=window["loss_pct"],
                jitter_ms=window["jitter_ms"],
                server_cpu_pct=relay["cpu_pct"],
                server_user_pct=relay.get("cpu_user_pct"),
                server_sys_pct=relay.get("cpu_sys_pct"),
                us_per_delivered=(
                    round(relay["cpu_pct"] / 100 * 1e6 / received, 2) if received else None
                ),
                conclave_forwarded_pps=relay["forwarded_pps"] if system in self.clusters else None,
                us_per_forwarded=relay["cpu_us_per_forwarded"] if system in self.clusters else None,
                workers_cpu_pct=window["workers_cpu_pct"],
                machine_busy_pct=round(100 * (1 - (ticks[3] + ticks[4]) / (sum(ticks) or 1)), 1),
                window_s=window["window_s"],
            )
            return result
        finally:
            await asyncio.gather(
                *(w.call({"op": "leave_all"}, 60) for w in self.workers), return_exceptions=True
            )
            with contextlib.suppress(Exception):
                await cleanup()
            await asyncio.sleep(args.pause)


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    started = datetime.datetime.now(datetime.UTC)
    bench = Bench(args)
    rows: list[dict[str, Any]] = []
    # (kinds, [(subscribers, publishers), ...], systems, saturating)
    plan: list[tuple[list[str], list[tuple[int, int]], list[str], bool]] = []
    big = [s for s in args.systems if s != "naive"]
    if args.video:
        plan.append((["video"], [(n, 1) for n in args.video], big, False))
    if args.audio:
        plan.append((["audio"], [(n, 1) for n in args.audio], big, False))
    if "naive" in args.systems:
        if args.naive_video:
            plan.append((["video"], [(n, 1) for n in args.naive_video], ["naive"], False))
        if args.naive_audio:
            plan.append((["audio"], [(n, 1) for n in args.naive_audio], ["naive"], False))
    if args.saturate:
        points = [(args.saturate_n, p) for p in args.saturate]
        plan.append((["video"], points, big, True))
    try:
        await bench.start()
        async with aiohttp.ClientSession() as http:
            for kinds, points, systems, saturating in plan:
                failed: set[str] = set()  # saturating: systems past 1 % loss stop there
                for n, publishers in points:
                    for system in systems:
                        if system in failed:
                            continue
                        say(f"{system} {'+'.join(kinds)} N={n} publishers={publishers}")
                        try:
                            row = await bench.point(system, kinds, n, http, publishers)
                        except Exception as exc:  # one failed point must not lose the rest
                            row = {
                                "system": system,
                                "mode": "+".join(kinds),
                                "subscribers": n,
                                "publishers": publishers,
                                "error": f"{type(exc).__name__}: {exc}",
                            }
                        say(json.dumps(row))
                        row["saturating"] = saturating
                        rows.append(row)
                        if saturating and not row.get("loss_pct", 100) < LOSS_LIMIT_PCT:
                            failed.add(system)
    finally:
        await bench.stop()
    return {
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/side_by_side.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "janus": bench.janus.version,
        "rows": rows,
        "summary": summarise_systems(rows),
        "saturation": saturation([r for r in rows if r["saturating"]]),
    }


def summarise_systems(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per system and mode: the largest N measured below 1 % loss, and the CPU per
    delivered packet at each N."""
    out: list[dict[str, Any]] = []
    rows = [r for r in rows if not r.get("saturating")]
    keys = sorted({(r["system"], r["mode"]) for r in rows})
    for system, mode in keys:
        mine = [r for r in rows if (r["system"], r["mode"]) == (system, mode) and "error" not in r]
        # A server that falls behind sends fewer packets without sequence gaps (the
        # naive relay's encoders): a point also fails if its subscribers got less
        # than 95 % of the per-subscriber rate of the system's smallest N.
        mine.sort(key=lambda r: int(r["subscribers"]))
        rates = [r["received_pps"] / r["subscribers"] for r in mine if r.get("received_pps")]
        for r in mine:
            if r.get("received_pps") and rates:
                r["rate_vs_smallest_n_pct"] = round(
                    100 * r["received_pps"] / r["subscribers"] / rates[0], 1
                )
        ok = [
            r["subscribers"]
            for r in mine
            if r.get("loss_pct") is not None
            and r["loss_pct"] < LOSS_LIMIT_PCT
            and not r.get("join_failures")
            and not r.get("not_receiving")
            and r.get("rate_vs_smallest_n_pct", 0) >= 95
        ]
        out.append(
            {
                "system": system,
                "mode": mode,
                "max_subscribers_below_1pct_loss": max(ok) if ok else None,
                "us_per_delivered": {r["subscribers"]: r.get("us_per_delivered") for r in mine},
            }
        )
    return out


def saturation(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per system: the most packets per second delivered below 1 % loss, the
    server's CPU there, and what that makes per second of one core's time."""
    out = []
    for system in sorted({r["system"] for r in rows}):
        ok = [
            r
            for r in rows
            if r["system"] == system
            and r.get("loss_pct") is not None
            and r["loss_pct"] < LOSS_LIMIT_PCT
            and not r.get("join_failures")
            and not r.get("not_receiving")
        ]
        if not ok:
            out.append({"system": system, "max_pps_below_1pct_loss": None})
            continue
        best = max(ok, key=lambda r: r["received_pps"])
        out.append(
            {
                "system": system,
                "max_pps_below_1pct_loss": best["received_pps"],
                "publishers": best["publishers"],
                "server_cpu_pct": best["server_cpu_pct"],
                "pps_per_core": round(best["received_pps"] * 100 / best["server_cpu_pct"])
                if best["server_cpu_pct"]
                else None,
            }
        )
    return out


def render(result: dict[str, Any]) -> str:
    header = [
        "system",
        "mode",
        "N",
        "P",
        "recv pkt/s",
        "loss %",
        "rate %",
        "jitter ms (mean/max)",
        "server CPU %",
        "µs/delivered",
        "µs/fwd (metrics)",
        "workers %",
        "rcvbuf drops",
        "machine %",
    ]
    table = [header]
    for r in result["rows"]:
        if "error" in r:
            table.append(
                [r["system"], r["mode"], str(r["subscribers"]), str(r.get("publishers", 1)),
                 r["error"][:60]]
                + [""] * (len(header) - 5)
            )  # fmt: skip
            continue
        kind = r["mode"]
        jitter = r.get("jitter_ms", {}).get(kind, {})
        table.append(
            [
                r["system"],
                r["mode"],
                str(r["subscribers"]),
                str(r.get("publishers", 1)),
                f"{r['received_pps']:.0f}",
                f"{r['loss_pct']}",
                f"{r.get('rate_vs_smallest_n_pct', '-')}",
                f"{jitter.get('mean', '-')}/{jitter.get('max', '-')}",
                f"{r['server_cpu_pct']}",
                f"{r['us_per_delivered']}",
                f"{r['us_per_forwarded'] if r['us_per_forwarded'] is not None else '-'}",
                f"{r['workers_cpu_pct']}",
                f"{r.get('udp_rcvbuf_drops', '-')}",
                f"{r['machine_busy_pct']}",
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    for s in result["summary"]:
        lines.append(
            f"{s['system']} {s['mode']}: max N below 1 % loss "
            f"{s['max_subscribers_below_1pct_loss']}; µs/delivered {s['us_per_delivered']}"
        )
    for s in result.get("saturation", []):
        lines.append(
            f"{s['system']}: most pkt/s delivered below 1 % loss {s['max_pps_below_1pct_loss']}"
            f" (publishers {s.get('publishers')}, server CPU {s.get('server_cpu_pct')} %,"
            f" {s.get('pps_per_core')} pkt/s per core)"
        )
    return f"{result['date']}  {result['command']}\nJanus: {result['janus']}\n\n" + "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)

    def sizes(limit: int) -> Callable[[str], list[int]]:
        def parse(text: str) -> list[int]:
            values = [int(v) for v in text.split(",") if v.strip()]
            if any(v < 1 or v > limit for v in values):
                raise argparse.ArgumentTypeError(f"a comma-separated list of 1..{limit}")
            return values

        return parse

    parser.add_argument("--video", type=sizes(400), default=[10, 50, 200], metavar="N,...")
    parser.add_argument("--audio", type=sizes(400), default=[10, 50, 200], metavar="N,...")
    parser.add_argument("--naive-video", type=sizes(20), default=[1, 2, 4, 8], metavar="N,...")
    parser.add_argument("--naive-audio", type=sizes(20), default=[1, 5, 10, 20], metavar="N,...")
    parser.add_argument(
        "--systems",
        default="conclave,conclave-native,janus,naive",
        type=lambda t: [s for s in t.split(",") if s],
        help=f"of {', '.join(SYSTEMS)}: conclave is the Python media path, -native the "
        "C engine, -1port with every participant on one UDP port",
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="measured window per point")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between points")
    parser.add_argument("--workers", type=int, default=2, help="subscriber worker processes")
    parser.add_argument(
        "--native-counting",
        action="store_true",
        help="workers count on the relay's native engine (bench/native_counter.py)",
    )
    parser.add_argument("--pin", action="store_true", help="servers on CPU 0, workers on the rest")
    parser.add_argument(
        "--srtp-cm",
        action="store_true",
        help="participants offer only AES128_CM_SHA1_80, as Chromium does (default: aiortc's "
        "GCM first)",
    )
    parser.add_argument(
        "--saturate",
        type=sizes(16),
        default=[],
        metavar="P,...",
        help="after the other points, video: these numbers of publishers to --saturate-n "
        "subscribers, each system until it loses 1 %%",
    )
    parser.add_argument("--saturate-n", type=int, default=100, metavar="N")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.seconds <= 60 or not 0 <= args.warmup <= 30:
        parser.error("--seconds 1..60, --warmup 0..30")
    if not set(args.systems) <= set(SYSTEMS):
        parser.error(f"--systems: {', '.join(SYSTEMS)}")
    args.workers = max(1, min(args.workers, 8))
    return args


def main() -> int:
    args = parse_args()
    try:
        result = uvloop.run(amain(args))
    except KeyboardInterrupt:
        return 130
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
