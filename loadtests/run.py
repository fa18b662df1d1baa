"""`make loadtest`: a local cluster, locust against its control plane, a summary.

Starts `conclave dev` on loopback ports, waits for its `ready` line, then:

1. counts etcd writes per operation, alone: CreateRoom a few times, then JoinRoom
   on those meetings, each batch between two readings of etcd's revision (one per
   committed key change) and of `etcd_server_proposals_committed_total` (every raft
   proposal: also lease grants, which change no key), after an idle window that
   shows what the cluster writes by itself;
2. runs locust headless once per user count (`--users 10,20,40`), each run bounded
   by `--time`, with CSV files under loadtests/results/, reading the same etcd
   counts and the CPU time of the control plane, etcd and locust (/proc) around
   each run;
3. stops the cluster and prints requests/s and p50/p99 per method, etcd writes per
   operation, and joins/s per control-plane core (join rate divided by the share
   of one core the replica used: a linear extrapolation, said so).

Everything listens on 127.0.0.1. Every wait has a deadline.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import queue
import re
import resource
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from client.loadtest.measure import process_cpu
from conclave.credentials import METADATA_KEY, find_key, mint_token
from conclave.processes import free_port, free_port_run
from conclave.tls import (
    channel_credentials,
    client_ssl_context,
    dev_pki,
    dev_pki_dir,
)

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
READY_TIMEOUT_S = 90.0
STOP_GRACE_S = 20.0
LOCUST_GRACE_S = 60.0  # past --time: locust's own stop and CSV writing
CLK_TCK = os.sysconf("SC_CLK_TCK")
_PROPOSALS = re.compile(r"^etcd_server_proposals_committed_total\s+(\S+)$", re.MULTILINE)


# --- the cluster -------------------------------------------------------------------


class Cluster:
    """`conclave dev` as a child in its own session; its stderr goes to a log file."""

    def __init__(self, source: Path, relays: int, log_path: Path) -> None:
        self.grpc_port = free_port(HOST)
        self.http_port = free_port_run(relays, HOST)
        self.ready: dict[str, str] = {}  # the fields of conclave dev's ready line
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # closed in stop()
        env = dict(os.environ, PYTHONPATH=str(source), PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conclave.cli",
                "dev",
                "--relays",
                str(relays),
                "--grpc-port",
                str(self.grpc_port),
                "--http-port",
                str(self.http_port),
            ],
            cwd=source,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def target(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.decode(errors="replace").strip())

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            if self.process.poll() is not None:
                raise SystemExit(f"loadtest: conclave dev exited; see {self.log_path}")
            try:
                line = self._lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if line.startswith("ready "):
                self.ready = dict(word.split("=", 1) for word in line.split()[1:])
                return
        raise SystemExit(f"loadtest: no ready line within {READY_TIMEOUT_S:g} s")

    @property
    def etcd(self) -> EtcdAccess:
        return EtcdAccess(self.ready["etcd"], self.ready["etcd-metrics"])

    def child(self, name: str) -> int:
        """The pid of conclave dev's child `name`: "etcd" (the binary) or a Python
        module run with -m ("control_plane")."""
        for pid in _children(self.process.pid):
            argv = _argv(pid)
            if argv and (Path(argv[0]).name == name or argv[1:3] == ["-m", name]):
                return pid
        raise SystemExit(f"loadtest: no {name} process under conclave dev")

    def stop(self) -> None:
        """SIGTERM (conclave dev stops its children in order), SIGKILL after a grace."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self._log.close()


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry.name))
    return found


def _argv(pid: int) -> list[str]:
    try:
        raw = (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores (/proc/stat):
    the benchmark shares it, and what others ran meanwhile belongs in the figures."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / CLK_TCK, sum(fields[:8]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included), in seconds."""
    return sum(process_cpu(pid))


# --- etcd's counts -----------------------------------------------------------------


@dataclass(frozen=True)
class EtcdCounts:
    revision: int
    proposals: int

    def __sub__(self, other: EtcdCounts) -> EtcdCounts:
        return EtcdCounts(self.revision - other.revision, self.proposals - other.proposals)


@dataclass(frozen=True)
class EtcdAccess:
    """conclave dev's etcd: its client URL (TLS: the dev PKI's client certificate)
    and its clear-text metrics URL."""

    url: str
    metrics: str

    def context(self) -> ssl.SSLContext:
        client = dev_pki(dev_pki_dir())["etcd-client"]
        context = client_ssl_context(client.ca)
        context.load_cert_chain(client.cert, client.key)
        return context


def etcd_counts(etcd: EtcdAccess) -> EtcdCounts:
    """The store's revision (JSON gateway) and committed raft proposals (/metrics)."""
    body = json.dumps({"key": base64.b64encode(b"/conclave/ping").decode()}).encode()
    request = urllib.request.Request(f"{etcd.url}/v3/kv/range", data=body)
    with urllib.request.urlopen(request, timeout=5, context=etcd.context()) as response:
        revision = int(json.load(response)["header"]["revision"])
    with urllib.request.urlopen(etcd.metrics, timeout=5) as response:  # loopback only
        match = _PROPOSALS.search(response.read().decode())
    if match is None:
        raise SystemExit("loadtest: etcd exports no etcd_server_proposals_committed_total")
    return EtcdCounts(revision, int(float(match.group(1))))


# --- 1. writes per operation, alone ------------------------------------------------


def writes_per_operation(target: str, etcd: EtcdAccess, rooms: int, joins: int) -> dict[str, Any]:
    """etcd revisions and proposals per CreateRoom and per JoinRoom, measured alone."""
    import grpc

    from protos import rooms_pb2, rooms_pb2_grpc

    def per(op: EtcdCounts, count: int) -> dict[str, float]:
        return {"revisions": op.revision / count, "proposals": op.proposals / count}

    with grpc.secure_channel(target, channel_credentials(dev_pki_dir() / "ca.pem")) as channel:
        stub = rooms_pb2_grpc.RoomServiceStub(channel)  # type: ignore[no-untyped-call]
        idle_before = etcd_counts(etcd)
        time.sleep(3.0)
        idle = etcd_counts(etcd) - idle_before
        key = find_key()
        assert key is not None, "conclave dev leaves its API key where clients look"
        stub.CreateRoom(
            rooms_pb2.CreateRoomRequest(name="warm-up"),
            timeout=10,
            metadata=((METADATA_KEY, f"Bearer {mint_token(key)}"),),
        )
        before = etcd_counts(etcd)
        made = [
            stub.CreateRoom(
                rooms_pb2.CreateRoomRequest(name="count"),
                timeout=10,
                metadata=((METADATA_KEY, f"Bearer {mint_token(key)}"),),
            )
            for _ in range(rooms)
        ]
        created = etcd_counts(etcd) - before
        before = etcd_counts(etcd)
        for room in made:
            for _ in range(joins):
                stub.JoinRoom(
                    rooms_pb2.JoinRoomRequest(
                        room_id=room.room_id, display_name="count", passcode=room.passcode
                    ),
                    timeout=10,
                )
        joined = etcd_counts(etcd) - before
    placed = sum(1 for room in made if room.node_id)
    return {
        "idle_3s": asdict(idle),
        "create_room": {"calls": rooms, "placed_at_create": placed, **per(created, rooms)},
        "join_room": {"calls": rooms * joins, **per(joined, rooms * joins)},
    }


# --- 2. locust ---------------------------------------------------------------------


def run_locust(
    cluster: Cluster, args: argparse.Namespace, users: int, prefix: Path
) -> dict[str, Any]:
    """One bounded headless locust run; etcd and CPU figures around it."""
    etcd_pid, plane_pid = cluster.child("etcd"), cluster.child("control_plane")
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(REPO / "loadtests" / "locustfile.py"),
        "--headless",
        "--users",
        str(users),
        "--spawn-rate",
        str(args.spawn_rate or max(1.0, users / 5)),
        "--run-time",
        args.time,
        "--stop-timeout",
        "10",
        "--host",
        cluster.target,
        "--csv",
        str(prefix),
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--joins-per-meeting",
        str(args.joins_per_meeting),
        "--gate",
        args.gate,
        "--think-time",
        str(args.think_time),
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    etcd_before = etcd_counts(cluster.etcd)
    cpu_before = {"control_plane": cpu_seconds(plane_pid), "etcd": cpu_seconds(etcd_pid)}
    reaped_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    machine_before = machine_busy()
    started = time.monotonic()
    with open(f"{prefix}_locust.log", "wb") as log:
        locust = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)
        try:
            locust.wait(_seconds(args.time) + LOCUST_GRACE_S)
        except subprocess.TimeoutExpired:
            locust.kill()
            locust.wait(5)
            raise SystemExit(f"loadtest: locust overran; see {prefix}_locust.log") from None
    wall = time.monotonic() - started
    machine_after = machine_busy()
    # Our reaped children's CPU: locust's alone (conclave dev is not reaped yet).
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {
        "control_plane": cpu_seconds(plane_pid) - cpu_before["control_plane"],
        "etcd": cpu_seconds(etcd_pid) - cpu_before["etcd"],
        "locust": reaped.ru_utime
        + reaped.ru_stime
        - reaped_before.ru_utime
        - reaped_before.ru_stime,
    }
    cpu["machine"] = machine_after[0] - machine_before[0]
    writes = etcd_counts(cluster.etcd) - etcd_before
    stats = read_stats(Path(f"{prefix}_stats.csv"))
    return {
        "users": users,
        "exit_code": locust.returncode,
        "wall_s": round(wall, 1),
        "methods": stats,
        "etcd": asdict(writes),
        "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
        "cpu_share_of_one_core": {k: round(v / wall, 3) for k, v in cpu.items()},
        "cores": os.cpu_count(),
    }


def _seconds(duration: str) -> float:
    """locust's --run-time form: 90, 90s, 2m, 1h30m."""
    total, number = 0.0, ""
    for char in duration.strip():
        if char.isdigit() or char == ".":
            number += char
        else:
            total += float(number or 0) * {"s": 1, "m": 60, "h": 3600}[char]
            number = ""
    return total + float(number or 0)


def read_stats(path: Path) -> dict[str, dict[str, float]]:
    """locust's per-method figures from its _stats.csv (the Aggregated row too)."""
    methods: dict[str, dict[str, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            name = row["Name"]
            methods[name] = {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "rps": float(row["Requests/s"]),
                "p50_ms": float(row["50%"] or 0),
                "p99_ms": float(row["99%"] or 0),
                "max_ms": float(row["Max Response Time"] or 0),
            }
    return methods


# --- 3. the summary ----------------------------------------------------------------


def summarize(alone: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    lines = ["", "etcd writes per operation (measured alone):"]
    idle = alone["idle_3s"]
    lines.append(
        f"  idle cluster, 3 s: {idle['revision']} revisions, {idle['proposals']} proposals"
    )
    for op in ("create_room", "join_room"):
        figures = alone[op]
        lines.append(
            f"  {op}: {figures['revisions']:.2f} revisions, {figures['proposals']:.2f} "
            f"proposals per call ({figures['calls']} calls)"
        )
    lines.append("")
    header = (
        f"{'users':>5} {'method':<11} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'fail':>5} {'cp core':>8} {'etcd core':>9} {'locust':>6} {'machine':>7}"
    )
    lines.append(header)
    lines.append("  (cores: CPU seconds per second; machine: every process, all cores)")
    for run in runs:
        share = run["cpu_share_of_one_core"]
        for name in ("CreateRoom", "JoinRoom", "Aggregated"):
            m = run["methods"].get(name)
            if m is None:
                continue
            lines.append(
                f"{run['users']:>5} {name:<11} {m['rps']:>7.1f} {m['p50_ms']:>7.0f} "
                f"{m['p99_ms']:>7.0f} {m['failures']:>5.0f} "
                f"{share['control_plane']:>8.2f} {share['etcd']:>9.2f} "
                f"{share['locust']:>6.2f} {share['machine']:>7.2f}"
            )
        joins = run["methods"].get("JoinRoom", {}).get("rps", 0.0)
        creates = run["methods"].get("CreateRoom", {}).get("requests", 0)
        if share["control_plane"] > 0:
            lines.append(
                f"      joins/s per control-plane core (extrapolated): "
                f"{joins / share['control_plane']:.0f}"
            )
        if creates:
            lines.append(
                f"      etcd during the run: {run['etcd']['revision']} revisions, "
                f"{run['etcd']['proposals']} proposals "
                f"({run['etcd']['revision'] / creates:.2f} and "
                f"{run['etcd']['proposals'] / creates:.2f} per CreateRoom)"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loadtests/run.py", description=__doc__.split("\n")[0])
    parser.add_argument("--users", default="20", help="user counts, comma-separated: one run each")
    parser.add_argument(
        "--spawn-rate",
        type=float,
        default=None,
        help="users started per second (default: all of them within 5 s)",
    )
    parser.add_argument("--time", default="60s", help="each run's length (locust --run-time)")
    parser.add_argument("--relays", type=int, default=2)
    parser.add_argument("--joins-per-meeting", type=int, default=5)
    parser.add_argument("--gate", choices=("passcode", "waiting-room"), default="passcode")
    parser.add_argument("--think-time", type=float, default=1.0)
    parser.add_argument("--count-rooms", type=int, default=20, help="CreateRooms counted alone")
    parser.add_argument(
        "--source",
        type=Path,
        default=REPO,
        help="the tree the cluster runs from (e.g. an older commit's, to compare)",
    )
    parser.add_argument("--results", type=Path, default=REPO / "loadtests" / "results")
    args = parser.parse_args(argv)
    users = [int(u) for u in args.users.split(",") if u.strip()]
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    cluster = Cluster(args.source.resolve(), args.relays, args.results / f"{stamp}_cluster.log")
    try:
        cluster.wait_ready()
        print(f"loadtest: cluster ready, control plane {cluster.target}", flush=True)
        alone = writes_per_operation(
            cluster.target, cluster.etcd, args.count_rooms, args.joins_per_meeting
        )
        runs = []
        for count in users:
            print(f"loadtest: locust, {count} users, {args.time}", flush=True)
            runs.append(run_locust(cluster, args, count, args.results / f"{stamp}_u{count}"))
    finally:
        cluster.stop()
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "alone": alone, "runs": runs}
    (args.results / f"{stamp}_summary.json").write_text(json.dumps(report, indent=2))
    print(summarize(alone, runs))
    print(f"\nloadtest: CSV and summary in {args.results}/{stamp}_*", flush=True)
    return 0 if all(run["exit_code"] == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
