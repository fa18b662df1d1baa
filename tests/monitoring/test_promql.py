"""The metric-name checker itself: it must find every metric a query reads, skip
label names, functions and keywords, and reject names nobody exports."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tests.monitoring import catalog
from tests.monitoring.promql import (
    metric_names,
    sample_names,
    unknown_names,
    variable_query_names,
)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (cell) (rate(a_total{job="x", cell=~"$cell"}[5m]))', {"a_total"}),
        ("sum(rate(a_total[1h30m])) by (node, le)", {"a_total"}),
        (
            'histogram_quantile(0.99, sum by (le) (rate(x_bucket{node=~"$node"}'
            "[$__rate_interval])))",
            {"x_bucket"},
        ),
        ("time() - heartbeat_seconds > 15", {"heartbeat_seconds"}),
        ("a / on (instance) group_left (node) b", {"a", "b"}),
        ("a / ignoring (code) group_right b unless c", {"a", "b", "c"}),
        ("SUM WITHOUT (le) (a) AND b offset 5m", {"a", "b"}),
        ("count(etcd_server_has_leader == 1) or vector(0)", {"etcd_server_has_leader"}),
        ('label_replace(a, "node", "$1", "instance", "(.*):.*")', {"a"}),
        ("recorded:ratio:rate5m < (1 - 14.4 * (1 - 0.995))", {"recorded:ratio:rate5m"}),
        ("a # comment naming b\n+ c", {"a", "c"}),
        ('max by (state) (s{state="draining"}) == bool 1', {"s"}),
    ],
)
def test_finds_the_metrics_a_query_reads(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


@pytest.mark.parametrize(
    "expr",
    ["rate_of(a[5m])", 'sum(a{b="c"}', "a]", "sum by (le (a)"],
)
def test_refuses_what_is_not_promql(expr: str) -> None:
    with pytest.raises(ValueError):
        metric_names(expr)


def test_variable_queries_name_their_metric() -> None:
    assert variable_query_names('label_values(m{cell=~"$cell"}, node)') == {"m"}
    assert variable_query_names("label_values(cell)") == set()
    with pytest.raises(ValueError):
        variable_query_names("query_result(m)")


def test_sample_names_follow_the_metric_type() -> None:
    registry = CollectorRegistry()
    Counter("c_total", "", ["reason"], registry=registry)  # no child yet: still counted
    Gauge("g", "", registry=registry)
    Histogram("h_seconds", "", registry=registry)
    names = sample_names([registry])
    assert {"c_total", "g", "h_seconds_bucket", "h_seconds_sum", "h_seconds_count"} <= names
    assert "h_seconds" not in names and "c" not in names


def test_checker_rejects_a_made_up_metric(exported_names: set[str]) -> None:
    """So that the dashboard and rule checks can fail at all."""
    exprs = [
        "sum(rate(conclave_packets_forwarded_total[5m]))",
        "sum(rate(conclave_packets_teleported_total[5m]))",
        "conclave_participants_bucket",  # a gauge has no buckets
    ]
    assert unknown_names(exprs, exported_names | catalog.ETCD_METRICS) == {
        exprs[1]: {"conclave_packets_teleported_total"},
        exprs[2]: {"conclave_participants_bucket"},
    }
