"""A real Prometheus scrapes a real cluster during a meeting.

`conclave dev` (etcd, control plane, two relays) hosts a meeting of three SDK
clients that publish audio and video; Prometheus scrapes every relay's and the
control plane's /metrics and etcd's, with conclave-alerts.yaml loaded, and the
test reads the meeting back through Prometheus' HTTP API: what the dashboards
and alerts see is what the servers measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import pytest_asyncio

from client.sdk import RoomsClient, Session
from conclave.processes import free_port, free_port_run
from tests.dev_cluster import DevCluster, start_dev
from tests.monitoring import catalog
from tests.monitoring.prometheus import PrometheusServer

CONCLAVE = [sys.executable, "-m", "conclave.cli"]
CLIENTS = ("ann", "ben", "cat")
RELAYS = 2
CELL = "test"
POLL_S = 20.0  # how long a figure may take to show up (scrapes are 1 s apart)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]


@dataclass
class Cluster:
    dev: DevCluster
    relay_ports: list[int]  # the relays' /metrics

    @property
    def control_plane(self) -> str:
        return self.dev.control_plane

    @property
    def http_port(self) -> int:
        """The control plane's /metrics."""
        return self.dev.http_port

    @property
    def etcd_metrics(self) -> str:
        """HOST:PORT of etcd's clear-text metrics listener."""
        return self.dev.etcd_metrics.removeprefix("http://").removesuffix("/metrics")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster() -> AsyncIterator[Cluster]:
    grpc_port, http_port = free_port(), free_port_run(RELAYS)
    dev = await start_dev(
        "--relays", str(RELAYS), "--grpc-port", str(grpc_port),
        "--http-port", str(http_port), "--ready-timeout", "40", timeout=45,
    )  # fmt: skip
    try:
        yield Cluster(dev, [http_port + 1 + i for i in range(RELAYS)])
    finally:
        await dev.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def prometheus(cluster: Cluster) -> AsyncIterator[PrometheusServer]:
    def target(address: str, **labels: str) -> dict[str, object]:
        return {"targets": [address], "labels": {"cell": CELL, **labels}}

    # The relays and the control plane serve /metrics over TLS (the dev CA's).
    https = {"scheme": "https", "tls_config": {"ca_file": str(cluster.dev.ca)}}

    server = PrometheusServer(
        {
            "rule_files": [str(catalog.RULES)],
            "scrape_configs": [
                {
                    "job_name": "conclave-relay",
                    **https,
                    "static_configs": [
                        target(f"127.0.0.1:{port}", node=f"relay-{i}")
                        for i, port in enumerate(cluster.relay_ports)
                    ],
                },
                {
                    "job_name": "conclave-control-plane",
                    **https,
                    "static_configs": [target(f"127.0.0.1:{cluster.http_port}")],
                },
                {"job_name": "etcd", "static_configs": [target(cluster.etcd_metrics)]},
            ],
        }
    )
    try:
        await asyncio.to_thread(server.start)
        yield server
    finally:
        await asyncio.to_thread(server.stop)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def meeting(cluster: Cluster, prometheus: PrometheusServer) -> AsyncIterator[list[Session]]:
    """Three participants, each publishing audio and video, media flowing."""
    rooms = RoomsClient(cluster.control_plane, ca=cluster.dev.ca)
    sessions: list[Session] = []
    room = None
    try:
        room = await rooms.create_room("metrics")
        for name in CLIENTS:
            join = await rooms.join_room(room.room_id, name, publish=True, passcode=room.passcode)
            session = Session(join, name, ["audio", "video"], rooms=rooms)
            sessions.append(session)
            await session.start()
        await media_flows(sessions)
        yield sessions
    finally:
        for session in sessions:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.leave(), 10)
        if room is not None:
            with contextlib.suppress(Exception):
                await rooms.end_room(room.room_id, room.host_key)
        await rooms.close()


async def media_flows(sessions: list[Session], timeout: float = 30.0) -> None:
    """Until every participant receives audio and video from every other one."""

    def flowing(session: Session) -> bool:
        stats = session.stats()
        others = [name for name in CLIENTS if name != session.display_name]
        return all(
            name in stats
            and stats[name]["audio_packets"] > 0
            and stats[name]["video_frames_decoded"] > 0
            for name in others
        )

    try:
        async with asyncio.timeout(timeout):
            while not all(flowing(session) for session in sessions):
                await asyncio.sleep(0.2)
    except TimeoutError:
        figures = {session.display_name: session.stats() for session in sessions}
        raise AssertionError(f"media did not flow within {timeout:g} s: {figures}") from None


async def eventually(
    prometheus: PrometheusServer, expr: str, wanted: Callable[[float], bool]
) -> float | None:
    """The value of `expr` once `wanted` holds for it, or the last one seen when
    POLL_S ran out (the caller's assertion then says what was expected)."""
    deadline = asyncio.get_running_loop().time() + POLL_S
    while True:
        value = await asyncio.to_thread(prometheus.value, expr)
        if (value is not None and wanted(value)) or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.5)


async def test_prometheus_scrapes_every_server(
    prometheus: PrometheusServer, meeting: list[Session]
) -> None:
    expected = RELAYS + 2  # relays, control plane, etcd
    up = await eventually(prometheus, "sum(up)", lambda v: v == expected)
    targets = await asyncio.to_thread(prometheus.api, "targets")
    errors = {t["scrapeUrl"]: t["lastError"] for t in targets["activeTargets"] if t["lastError"]}
    assert up == expected, f"{up} of {expected} targets up: {errors}"


async def test_the_meetings_participants_are_visible(
    prometheus: PrometheusServer, meeting: list[Session]
) -> None:
    participants = await eventually(
        prometheus, "sum(conclave_participants)", lambda v: v == len(CLIENTS)
    )
    assert participants == len(CLIENTS)
    rooms = await eventually(prometheus, "sum(conclave_rooms)", lambda v: v == 1)
    assert rooms == 1


async def test_forwarded_packets_are_visible(
    prometheus: PrometheusServer, meeting: list[Session]
) -> None:
    total = await eventually(prometheus, "sum(conclave_packets_forwarded_total)", lambda v: v > 0)
    assert total is not None and total > 0, f"conclave_packets_forwarded_total: {total}"
    rate = await eventually(
        prometheus, "sum(rate(conclave_packets_forwarded_total[5s]))", lambda v: v > 0
    )
    assert rate is not None and rate > 0, f"forwarding rate: {rate}"


async def test_join_latency_is_visible(
    prometheus: PrometheusServer, meeting: list[Session]
) -> None:
    joins = await eventually(
        prometheus, "sum(conclave_join_duration_seconds_count)", lambda v: v >= len(CLIENTS)
    )
    assert joins is not None and joins >= len(CLIENTS), (
        f"conclave_join_duration_seconds_count: {joins}, expected >= {len(CLIENTS)}"
    )


async def test_granted_joins_are_visible(
    prometheus: PrometheusServer, meeting: list[Session]
) -> None:
    granted = await eventually(
        prometheus,
        'sum(conclave_control_joins_total{result="granted"})',
        lambda v: v >= len(CLIENTS),
    )
    assert granted is not None and granted >= len(CLIENTS)


async def test_etcd_serves_the_metrics_the_rules_read(
    prometheus: PrometheusServer, meeting: list[Session]
) -> None:
    for name in sorted(catalog.ETCD_METRICS):
        count = await eventually(prometheus, f'count({name}{{job="etcd"}})', lambda v: v >= 1)
        assert count == 1, f"etcd does not export {name}"
    assert await asyncio.to_thread(prometheus.value, "min(etcd_server_has_leader)") == 1


async def test_the_cluster_dashboard_shows_the_meeting(
    prometheus: PrometheusServer, meeting: list[Session]
) -> None:
    dashboard = catalog.load_dashboards()["cluster-overview.json"]
    by_title = {panel["title"]: panel for panel in catalog.panels(dashboard)}
    query = catalog.fill_variables(by_title["Participants by node"]["targets"][0]["expr"])
    shown = await eventually(prometheus, f"sum({query})", lambda v: v == len(CLIENTS))
    assert shown == len(CLIENTS)


async def test_every_rule_evaluates_without_error(
    prometheus: PrometheusServer, meeting: list[Session]
) -> None:
    deadline = asyncio.get_running_loop().time() + POLL_S
    while True:
        rules = await asyncio.to_thread(prometheus.rules)
        unhealthy = {rule["name"]: (rule["health"], rule.get("lastError")) for rule in rules}
        unhealthy = {name: state for name, state in unhealthy.items() if state[0] != "ok"}
        if not unhealthy or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.5)
    assert rules and not unhealthy
