"""k8s/monitoring/dashboards: importable anywhere (fixed uid, data source chosen
by a variable), and every query reads metrics the servers export, in PromQL that
Prometheus accepts."""

from __future__ import annotations

from typing import Any

import pytest

from tests.monitoring import catalog
from tests.monitoring.prometheus import PrometheusError, PrometheusServer
from tests.monitoring.promql import unknown_names, variable_query_names

DASHBOARDS = catalog.load_dashboards()


@pytest.fixture(params=sorted(catalog.DASHBOARD_UIDS))
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    name: str = request.param
    assert name in DASHBOARDS, f"k8s/monitoring/dashboards/{name} is missing"
    return DASHBOARDS[name]


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def test_the_three_dashboards_have_their_fixed_uids() -> None:
    assert {name: d.get("uid") for name, d in DASHBOARDS.items()} == catalog.DASHBOARD_UIDS


def test_datasource_is_a_variable(dashboard: dict[str, Any]) -> None:
    datasource = variables(dashboard)["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"


def test_every_panel_and_variable_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    for panel in catalog.panels(dashboard):
        if panel["type"] == "row":
            assert not panel.get("targets"), f"row {panel['title']!r} has queries"
            continue
        assert panel.get("datasource") == catalog.DATASOURCE, panel["title"]
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target.get("datasource", catalog.DATASOURCE) == catalog.DATASOURCE
    for variable in variables(dashboard).values():
        if variable["type"] == "query":
            assert variable["datasource"] == catalog.DATASOURCE, variable["name"]


def test_cell_and_node_variables() -> None:
    for dashboard in DASHBOARDS.values():
        assert "cell" in variables(dashboard), dashboard["uid"]
    node = variables(DASHBOARDS["relay-node.json"])["node"]
    assert variable_query_names(node["query"]) == {"conclave_relay_capacity_participants"}
    assert node["query"].endswith(", node)")


def test_panels_have_unique_ids_and_fit_the_grid(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in catalog.panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in catalog.panels(dashboard):
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]


def test_queries_read_only_exported_metrics(
    dashboard: dict[str, Any], exported_names: set[str]
) -> None:
    """Dashboards use raw metrics only (no recording rules), so they work on a
    Prometheus that has not loaded conclave-alerts.yaml."""
    known = exported_names | catalog.ETCD_METRICS
    assert unknown_names(catalog.panel_queries(dashboard), known) == {}
    for query in catalog.variable_queries(dashboard):
        assert variable_query_names(query) <= known, query


def test_queries_are_promql_that_prometheus_accepts(
    dashboard: dict[str, Any], rules_prometheus: PrometheusServer
) -> None:
    refused: dict[str, str] = {}
    for query in catalog.panel_queries(dashboard):
        try:
            rules_prometheus.query(catalog.fill_variables(query))
        except PrometheusError as exc:
            refused[query] = str(exc)
    assert refused == {}
