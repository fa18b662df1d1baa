"""`conclave loadtest media`: many lightweight participants against a running cluster.

The run: create R meetings through the control plane, join P publishers and S
subscribers to each, wait until everyone receives every stream it should, warm up,
measure T seconds, and print a summary: forwarded packets per second (the relays'
/metrics and the participants' counts), loss, jitter, and each relay's CPU per
forwarded packet when the relay runs on this machine (its process found by its
listening port; otherwise "unavailable"). In the spirit of LiveKit's `lk load-test`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import uvloop

from client.errors import ConclaveError
from client.loadtest.measure import Relay, listening_pid, summarise, take_snapshot
from client.loadtest.worker import (
    BATCH,
    JOIN_TIMEOUT_S,
    Worker,
    join_all,
    wait_receiving,
    worker_argv,
    worker_main,
)
from client.rooms import RoomsClient, control_plane_target
from conclave.tls import client_ssl_context, find_ca_file

LOSS_LIMIT_PCT = 1.0


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
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=client_ssl_context(find_ca_file()))
            ) as http,
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
