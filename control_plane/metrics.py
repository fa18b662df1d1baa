"""Prometheus metrics of a control-plane replica, served at /metrics on its
`--http-port` (docs/metrics.md). Labels never carry names, ids or addresses: only
outcomes, decisions, states, action names and limit settings."""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from conclave.server_metrics import ServerMetrics
from control_plane.attempts import AttemptLimiter
from control_plane.registry import NodeRegistry

# JoinRoom outcomes; "not_found" is a wrong passcode and an unknown meeting alike.
JOIN_RESULTS = (
    "granted",
    "not_found",
    "locked_out",
    "meeting_locked",
    "removed",
    "unavailable",
    "error",
)
# How a join found its meeting's node (control_plane/placer.py).
PLACEMENT_DECISIONS = ("existing", "placed", "adopted", "spilled", "no_capacity")


class ControlPlaneMetrics:
    """One replica's metrics, in a registry of its own (tests run several replicas
    in one process)."""

    def __init__(self, attempts: AttemptLimiter, nodes: NodeRegistry) -> None:
        self.registry = CollectorRegistry()
        self.server = ServerMetrics(self.registry)
        self.placements = Counter(
            "conclave_control_placements_total",
            "How joins found their meeting's node: existing, placed, adopted "
            "(another replica placed it first), spilled (a node was added to the "
            "meeting), no_capacity",
            ["decision"],
            registry=self.registry,
        )
        for decision in PLACEMENT_DECISIONS:
            self.placements.labels(decision=decision)
        self.joins = Counter(
            "conclave_control_joins_total",
            "JoinRoom calls by outcome",
            ["result"],
            registry=self.registry,
        )
        for result in JOIN_RESULTS:
            self.joins.labels(result=result)
        self.host_actions = Counter(
            "conclave_control_host_actions_total",
            "Host actions written to audit logs by this replica",
            ["action"],
            registry=self.registry,
        )
        self.creates_limited = Counter(
            "conclave_control_creates_limited_total",
            "CreateRoom calls refused because their API key (or the web page) was "
            "over its creation limit on this replica (--create-burst, --creates-per-minute)",
            registry=self.registry,
        )
        self.event_loop_lag = Histogram(
            "conclave_control_event_loop_lag_seconds",
            "How much later than asked the replica's event loop ran a timer",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=self.registry,
        )
        self.registry.register(_AttemptLimits(attempts))
        self.registry.register(_Nodes(nodes))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def handler(self, request: web.Request) -> web.Response:
        response = web.Response(body=self.render())
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response


class _Nodes(Collector):
    """The relays this replica sees registered, read from its cache when scraped."""

    def __init__(self, nodes: NodeRegistry) -> None:
        self._nodes = nodes

    def collect(self) -> Iterator[Metric]:
        live = self._nodes.live_nodes()
        draining = sum(1 for node in live if node.draining)
        states = GaugeMetricFamily(
            "conclave_control_nodes",
            "Relays registered in etcd as this replica sees them, by state",
            labels=["state"],
        )
        states.add_metric(["serving"], len(live) - draining)
        states.add_metric(["draining"], draining)
        yield states
        yield GaugeMetricFamily(
            "conclave_control_cell_capacity_participants",
            "Sum of the registered relays' participant capacities",
            value=sum(node.capacity for node in live),
        )


class _AttemptLimits(Collector):
    """The attempt limiter's settings and counts, read when scraped."""

    def __init__(self, attempts: AttemptLimiter) -> None:
        self._attempts = attempts

    def collect(self) -> Iterator[Metric]:
        policy = self._attempts.policy
        settings = GaugeMetricFamily(
            "conclave_control_attempt_limit",
            "Failed-join limits per meeting and per source address (--attempt-burst, "
            "--attempts-per-minute, --lockout, --max-lockout)",
            labels=["setting"],
        )
        settings.add_metric(["burst"], policy.burst)
        settings.add_metric(["per_minute"], policy.per_minute)
        settings.add_metric(["lockout_seconds"], policy.lockout_s)
        settings.add_metric(["max_lockout_seconds"], policy.max_lockout_s)
        yield settings
        yield CounterMetricFamily(
            "conclave_control_lockouts",
            "Lockouts this replica started (a meeting or a source address ran out)",
            value=self._attempts.lockouts,
        )
        yield CounterMetricFamily(
            "conclave_control_attempts_refused",
            "JoinRoom attempts refused because their meeting or address was locked out",
            value=self._attempts.refused,
        )
