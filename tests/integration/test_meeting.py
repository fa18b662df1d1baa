"""The walking skeleton end to end: `conclave dev`, then `conclave` CLI clients.

Everything here is real: etcd, the control plane, two relay processes, and aiortc
clients in their own processes exchanging synthetic audio and video.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from client.sdk import RoomsClient, Session
from conclave.ice import use_host_addresses
from conclave.processes import free_port, free_port_run, wait_for_line
from conclave.server_metrics import ETCD_OPERATIONS
from conclave.store import EtcdStore
from control_plane import metrics as control_metrics
from protos import relay_pb2, rooms_pb2
from relay import metrics as relay_metrics
from tests.dev_cluster import DevCluster, dev_env, start_dev
from tests.integration.relay_harness import scrape_metric

CONCLAVE = [sys.executable, "-m", "conclave.cli"]
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class MeetingCluster:
    dev: DevCluster
    http_ports: list[int]  # the relays'

    @property
    def process(self) -> asyncio.subprocess.Process:
        return self.dev.process

    @property
    def control_plane(self) -> str:
        return self.dev.control_plane

    @property
    def web_port(self) -> int:
        """The control plane's HTTP port: web client, API, /metrics."""
        return self.dev.http_port

    def metric(self, port: int, name: str) -> float:
        return scrape_metric(port, name, self.dev.ssl_context())

    async def conclave(self, *args: str, timeout: float = 60) -> dict[str, Any]:
        """Run one `conclave` command as a client of this cluster; return its JSON
        output (it must succeed)."""
        process = await asyncio.create_subprocess_exec(
            *CONCLAVE, *args, "--json",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.dev.env,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), timeout)
        assert process.returncode == 0, err.decode()
        result: dict[str, Any] = json.loads(out)
        return result

    def node_ids(self) -> list[str]:
        """The relays' node ids, in the order of `http_ports`."""
        return [f"relay-{i}" for i in range(len(self.http_ports))]

    def all_ports(self) -> list[int]:
        """Every process's HTTP port with a /metrics: relays, then the control plane."""
        return [*self.http_ports, self.web_port]


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc (children may use new sessions)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster() -> AsyncIterator[MeetingCluster]:
    grpc_port, http_port, etcd_port = free_port(), free_port_run(2), free_port()
    dev = await start_dev(
        "--relays", "2", "--grpc-port", str(grpc_port),
        "--http-port", str(http_port), "--etcd-port", str(etcd_port),
    )  # fmt: skip
    assert dev.control_plane == f"127.0.0.1:{grpc_port}"
    assert dev.ready["http"] == f"https://127.0.0.1:{http_port}"
    assert dev.etcd_url == f"https://127.0.0.1:{etcd_port}"
    yield MeetingCluster(dev, [http_port + 1, http_port + 2])
    await dev.stop()


# Runs first, on an empty cluster: placement then has both relays to choose from.
@pytest.mark.asyncio(loop_scope="module")
async def test_meetings_created_back_to_back_land_on_different_relays(
    cluster: MeetingCluster,
) -> None:
    first = await cluster.conclave("room", "create", "--control-plane", cluster.control_plane)
    second = await cluster.conclave("room", "create", "--control-plane", cluster.control_plane)
    assert first["node_id"] and second["node_id"]
    assert first["node_id"] != second["node_id"]
    for room in (first, second):
        await cluster.conclave("room", "end", room["room_id"], "--host-key", room["host_key"],
                       "--control-plane", cluster.control_plane)  # fmt: skip


@pytest.mark.asyncio(loop_scope="module")
async def test_three_participants_exchange_audio_and_video(cluster: MeetingCluster) -> None:
    room = await cluster.conclave("room", "create", "--control-plane", cluster.control_plane)
    names = ["alice", "bob", "carol"]
    reports = await asyncio.gather(
        *(
            cluster.conclave("join", room["room_id"], "--passcode", room["passcode"],
                     "--control-plane", cluster.control_plane,
                     "--name", name, "--duration", "12")
            for name in names
        )
    )  # fmt: skip
    # Everyone holds the same keys: one security code, nothing failed to decrypt.
    codes = {report["security_code"] for report in reports}
    assert len(codes) == 1 and None not in codes, reports
    for name, report in zip(names, reports, strict=True):
        assert report["e2ee"] is True
        assert all(f["decrypt_failures"] == 0 for f in report["remote"].values()), report
        assert report["node_id"] == room["node_id"]
        assert report["roster"] == names
        others = sorted(set(names) - {name})
        assert sorted(report["remote"]) == others
        for other in others:
            figures = report["remote"][other]
            assert figures["video_frames_decoded"] >= 30, (name, other, figures)
            assert figures["audio_packets"] > 0, (name, other, figures)
    for port in cluster.http_ports:  # forwarded packets, and never a decoder, on any relay
        assert cluster.metric(port, "conclave_relay_decoders_created_total") == 0
        # The event loop is watched (a second of meeting gives a few samples).
        assert cluster.metric(port, "conclave_event_loop_lag_seconds_count") > 0
    forwarded = sum(
        cluster.metric(port, "conclave_packets_forwarded_total") for port in cluster.http_ports
    )
    assert forwarded > 1000
    # Everyone left: nothing of the meeting remains on any relay.
    listing = await cluster.conclave("room", "participants", room["room_id"],
                             "--host-key", room["host_key"],
                             "--control-plane", cluster.control_plane)  # fmt: skip
    assert listing["participants"] == []
    # A relay drops the meeting once its last participant's peer connection has
    # closed, which may finish just after the roster no longer lists anyone.
    for port in cluster.http_ports:
        async with asyncio.timeout(10):
            while cluster.metric(port, "conclave_rooms") != 0:
                await asyncio.sleep(0.1)
        assert cluster.metric(port, "conclave_participants") == 0
    await cluster.conclave("room", "end", room["room_id"], "--host-key", room["host_key"],
                   "--control-plane", cluster.control_plane)  # fmt: skip


# Every key Conclave keeps in etcd and every field of its value (None: not JSON),
# as docs/privacy.md lists them. Anything else found in a running cluster fails.
ETCD_INVENTORY: dict[str, set[str] | None] = {
    r"/conclave/nodes/[\w-]+": {"node_id", "signal_url", "rpc_address", "capacity", "load",
                                "lease", "draining", "participants", "region", "link_key"},
    r"/conclave/drain/[\w-]+": {"deadline_s", "requested_at_ms"},
    r"/conclave/rooms/[\w-]+": {"room_id", "name", "created_at_ms", "max_participants",
                                "passcode", "host_key_sha256", "policy", "expires_at_ms",
                                "lease", "audit_lease", "org"},
    r"/conclave/audit/[\w-]+/host": None,
    r"/conclave/audit/[\w-]+/entries/\d{16}-[0-9a-f]{8}": {"at_ms", "action", "actor",
                                                          "target", "detail"},
    r"/conclave/placement/[\w-]+": {"node_id"},
    r"/conclave/spans/[\w-]+/[\w-]+": {"node_id"},
    r"/conclave/api-keys/[\w-]+": {"key_id", "organisation", "public_key", "created_at_ms"},
    r"/conclave/rejoin/[\w-]+/[\w-]+": None,
    r"/conclave/keys/grant-signing/[\w-]+": None,
    r"/conclave/attempts/address-key": None,
    r"/conclave/attempts/room/[\w-]+": {"tokens", "at", "locked_until", "strikes"},
    r"/conclave/attempts/source/[0-9a-f]{32}": {"tokens", "at", "locked_until", "strikes"},
}  # fmt: skip
IPV4 = re.compile(r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b")


@pytest.mark.asyncio(loop_scope="module")
async def test_privacy_inventory_holds_for_a_running_cluster(cluster: MeetingCluster) -> None:
    """The etcd key space and the metric labels of a cluster that holds a meeting
    (and a failed join) have nothing docs/privacy.md does not list; ending the
    meeting removes its records."""
    privacy = (REPO_ROOT / "docs" / "privacy.md").read_text()
    for pattern, fields in ETCD_INVENTORY.items():
        prefix = pattern.split("[", 1)[0]
        assert prefix in privacy, f"docs/privacy.md does not list {prefix}"
        for field in fields or ():
            assert f"`{field}`" in privacy, f"docs/privacy.md does not list field {field}"

    room = await cluster.conclave("room", "create", "--name", "Secret Board Meeting",
                          "--control-plane", cluster.control_plane)  # fmt: skip
    failed = await asyncio.create_subprocess_exec(
        *CONCLAVE, "join", room["room_id"], "--passcode", "wrong", "--name", "Mallory",
        "--control-plane", cluster.control_plane,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cluster.dev.env,
    )  # fmt: skip
    _, err = await asyncio.wait_for(failed.communicate(), 60)
    assert b"passcode" in err, err  # refused for the passcode, not for want of TLS
    assert failed.returncode != 0
    report = await cluster.conclave("join", room["room_id"], "--passcode", room["passcode"],
                            "--name", "Alice Example", "--duration", "3",
                            "--control-plane", cluster.control_plane)  # fmt: skip

    store = EtcdStore([cluster.dev.etcd_url], tls=cluster.dev.pki("etcd-client"))
    await store.connect()
    try:
        items, _ = await store.get_prefix("/conclave/")
        for key, value in items.items():
            matched = next((p for p in ETCD_INVENTORY if re.fullmatch(p, key)), None)
            assert matched is not None, f"{key} is not in the privacy inventory"
            fields = ETCD_INVENTORY[matched]
            if fields is not None:
                extra = set(json.loads(value)) - fields
                assert not extra, f"{key} holds fields the inventory lacks: {extra}"
            for secret in ("Alice Example", "Mallory", room["passcode"], room["host_key"]):
                assert secret.encode() not in value, f"{key} holds {secret!r}"
            assert not IPV4.search(value.decode("latin-1").replace("127.0.0.1", "")), key
        assert f"/conclave/attempts/room/{room['room_id']}" in items  # the failed join
        await cluster.conclave("room", "end", room["room_id"], "--host-key", room["host_key"],
                       "--control-plane", cluster.control_plane)  # fmt: skip
        left, _ = await store.get_prefix("/conclave/")
        assert f"/conclave/rooms/{room['room_id']}" not in left
        assert f"/conclave/placement/{room['room_id']}" not in left
    finally:
        await store.close()

    # No name, id or address in any metric label of any relay or the control plane.
    secrets = {room["room_id"], report["participant_id"], "Alice Example", "Mallory"}
    for port in [*cluster.http_ports, cluster.web_port]:
        text = await asyncio.to_thread(metrics_text, port, cluster.dev.ssl_context())
        for line in text.splitlines():
            if line.startswith("#") or "{" not in line:
                continue
            labels = line[line.index("{") + 1 : line.rindex("}")]
            assert not any(secret in labels for secret in secrets), line
            assert not IPV4.search(labels), line


def metrics_text(port: int, context: ssl.SSLContext) -> str:
    url = f"https://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5, context=context) as response:
        return str(response.read().decode())


# The closed sets every label of a conclave_ metric must come from (docs/metrics.md).
def label_values() -> dict[str, set[str]]:
    signalling = (REPO_ROOT / "docs" / "signaling.md").read_text().split("## Error codes")[1]
    codes = {c for row in signalling.splitlines() if row.startswith("| `")
             for c in re.findall(r"`([a-z_]+)`", row.split("|")[1])}  # fmt: skip
    methods = {
        method.name
        for module in (rooms_pb2, relay_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    return {
        "reason": set(relay_metrics.DROP_REASONS)
        | set(relay_metrics.GRANT_REFUSALS)
        | set(relay_metrics.LINK_DROP_REASONS)
        | set(relay_metrics.NATIVE_DROP_REASONS),
        "result": set(relay_metrics.JOIN_RESULTS)
        | set(control_metrics.JOIN_RESULTS)
        | set(relay_metrics.LINK_OPEN_RESULTS),
        "direction": set(relay_metrics.LINK_DIRECTIONS) | set(relay_metrics.NATIVE_DIRECTIONS),
        "decision": set(control_metrics.PLACEMENT_DECISIONS),
        "state": set(relay_metrics.NODE_STATES),
        "method": methods,
        "code": codes | {status.name for status in grpc.StatusCode},
        "operation": set(ETCD_OPERATIONS),
        "setting": {"burst", "per_minute", "lockout_seconds", "max_lockout_seconds"},
    }


LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
ACTION = re.compile(r"[a-z_]{1,24}")  # audit action names: constants in the code


@pytest.mark.asyncio(loop_scope="module")
async def test_a_meeting_is_measured_with_bounded_labels(cluster: MeetingCluster) -> None:
    """Three publishers in one meeting show up in the metrics docs/metrics.md
    promises, on the relay and the control plane; every label of every conclave_
    series on every process comes from a closed set (no ids, names, addresses)."""
    use_host_addresses(["127.0.0.1"])
    names = ["dora", "emil", "fay"]
    async with RoomsClient(cluster.control_plane, ca=cluster.dev.ca) as rooms:
        room = await rooms.create_room("measured")
        joins = [await rooms.join_room(room.room_id, n, True, room.passcode) for n in names]
        sessions = [
            Session(j, n, ["audio", "video"], rooms=rooms)
            for j, n in zip(joins, names, strict=True)
        ]
        for session in sessions:
            await session.start()
        try:
            port = cluster.http_ports[cluster.node_ids().index(room.node_id)]
            async with asyncio.timeout(30):  # receiver reports answer sender reports
                while cluster.metric(port, "conclave_subscriber_rtt_seconds_count") < 3:
                    await asyncio.sleep(0.25)
            assert cluster.metric(port, "conclave_participants") == 3
            assert cluster.metric(port, "conclave_tracks_published") == 6
            assert cluster.metric(port, "conclave_tracks_subscribed") == 12
            assert cluster.metric(port, "conclave_join_duration_seconds_count") >= 3
            assert cluster.metric(port, "conclave_subscriber_loss_ratio_count") > 0
            assert cluster.metric(port, "conclave_bytes_forwarded_total") > 100_000
            assert cluster.metric(port, "conclave_etcd_request_duration_seconds_count") > 0
            assert cluster.metric(port, "conclave_relay_capacity_participants") > 0
            web = cluster.web_port
            assert cluster.metric(web, "conclave_control_placements_total") >= 3
            assert cluster.metric(web, "conclave_grpc_server_handling_seconds_count") >= 5
            assert cluster.metric(web, "conclave_etcd_request_duration_seconds_count") > 0
            assert cluster.metric(web, "conclave_control_cell_capacity_participants") > 0
            context = cluster.dev.ssl_context()
            texts = [await asyncio.to_thread(metrics_text, p, context) for p in cluster.all_ports()]
        finally:
            for session in sessions:
                await session.leave()
        await rooms.end_room(room.room_id, room.host_key)

    allowed = label_values()
    seen: set[str] = set()
    for text in texts:
        for line in text.splitlines():
            if not line.startswith("conclave_") or "{" not in line:
                continue
            name = line[: line.index("{")]
            for label, value in LABEL.findall(line[line.index("{") : line.rindex("}") + 1]):
                seen.add(label)
                if label == "le":
                    float(value)
                elif label == "action":
                    assert ACTION.fullmatch(value), line
                else:
                    assert label in allowed, f"{name} has an unexpected label {label!r}"
                    assert value in allowed[label], f"{name}: {label}={value!r} is not bounded"
    assert {"reason", "result", "method", "code", "operation"} <= seen


@pytest.mark.asyncio(loop_scope="module")
async def test_dev_stops_every_child_on_sigterm(cluster: MeetingCluster) -> None:
    children = descendants(cluster.process.pid)
    assert len(children) >= 4  # etcd, control plane, two relays
    cluster.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(cluster.process.wait(), 30) == 0
    await asyncio.sleep(0.5)
    assert not [pid for pid in children if alive(pid)]


@pytest.mark.asyncio(loop_scope="module")
async def test_make_run_reaches_ready() -> None:
    grpc_port, http_port = free_port(), free_port_run(2)
    process = await asyncio.create_subprocess_exec(
        "make", "--no-print-directory", "run",
        f"DEV_ARGS=--grpc-port {grpc_port} --http-port {http_port}",
        cwd=REPO_ROOT, stdout=subprocess.PIPE, start_new_session=True,
        env=dev_env(Path(tempfile.mkdtemp(prefix="conclave-make-run-"))),
    )  # fmt: skip
    assert process.stdout is not None
    try:
        line = await wait_for_line(process.stdout, "ready", timeout=120)
        assert line.startswith(
            f"ready control-plane=127.0.0.1:{grpc_port} http=https://127.0.0.1:{http_port} "
        )
        children = descendants(process.pid)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)
    await asyncio.sleep(0.5)
    assert not [pid for pid in children if alive(pid)]
