"""What the monitoring files reference, and what the servers export.

The dashboards and alert rules in k8s/monitoring name metrics by string; the tests
compare those names with the servers' own registries, so the files cannot drift
from the code unnoticed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.monitoring.promql import sample_names

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "k8s" / "monitoring"
RULES = MONITORING / "rules" / "conclave-alerts.yaml"
RULE_TESTS = MONITORING / "rules" / "conclave-alerts.test.yaml"
DASHBOARDS = MONITORING / "dashboards"
OPERATIONS = REPO / "docs" / "operations.md"

# Each dashboard's fixed uid: links and bookmarks survive re-imports.
DASHBOARD_UIDS = {
    "cluster-overview.json": "conclave-cluster",
    "relay-node.json": "conclave-relay",
    "control-plane.json": "conclave-control-plane",
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# etcd's own metrics (job="etcd") the files may use; all are served by etcd 3.4+
# on its client or metrics port (the live test scrapes a real etcd for them).
ETCD_METRICS = frozenset(
    {
        "etcd_server_has_leader",
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_server_quota_backend_bytes",
        "etcd_server_leader_changes_seen_total",
    }
)

# Values for Grafana's variables when a dashboard query is run outside Grafana.
GRAFANA_VALUES = {
    "cell": ".*",
    "node": ".*",
    "instance": ".*",
    "__rate_interval": "5s",
    "__interval": "1s",
    "__range": "1m",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def exported_names() -> set[str]:
    """Series names a relay and a control-plane replica can expose: the relay's
    module-level metrics in the default registry, its native engine's (collected
    from an engine of its own here) and its shared port's, and a control-plane
    replica's registry built as the replica builds it (nothing is connected)."""
    from prometheus_client import REGISTRY, CollectorRegistry

    import conclave.server_metrics  # noqa: F401  (the shared gRPC/etcd metrics)
    import relay.metrics  # registers the relay's metrics
    from conclave.store import EtcdStore
    from control_plane.attempts import AttemptLimiter
    from control_plane.metrics import ControlPlaneMetrics
    from control_plane.registry import NodeRegistry
    from relay import _native

    store = EtcdStore(["127.0.0.1:1"])  # never connected: the registry only needs objects
    control_plane = ControlPlaneMetrics(AttemptLimiter(store), NodeRegistry(store))
    native = CollectorRegistry()
    native.register(relay.metrics.NativeCollector(_native.Engine()))
    native.register(relay.metrics.SharedPortCollector())
    return sample_names([REGISTRY, native, control_plane.registry])


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard file by file name."""
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """All panels, also those nested in collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def panel_queries(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", [])]


def variable_queries(dashboard: dict[str, Any]) -> list[str]:
    queries: list[str] = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def fill_variables(query: str) -> str:
    """A dashboard query as Grafana would send it with every variable at "All"."""

    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        if name not in GRAFANA_VALUES:
            raise KeyError(f"no test value for Grafana variable ${name} in {query!r}")
        return GRAFANA_VALUES[name]

    return _VARIABLE.sub(value, query)


def runbook_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, spaces to dashes,
    punctuation other than - and _ dropped."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")
