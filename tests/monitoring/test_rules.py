"""k8s/monitoring/rules: promtool's checks and unit tests, what every alert must
carry for whoever is paged, and that the rules read only metrics that exist."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest

from tests.monitoring import catalog
from tests.monitoring.prometheus import PrometheusServer
from tests.monitoring.promql import unknown_names

SEVERITIES = {"critical", "warning"}


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args],
        cwd=catalog.RULES.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def alerts(server: PrometheusServer) -> list[dict[str, Any]]:
    return [rule for rule in server.rules() if rule["type"] == "alerting"]


def test_promtool_check_rules(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", catalog.RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", catalog.RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_loads_the_rules(rules_prometheus: PrometheusServer) -> None:
    names = {rule["name"] for rule in alerts(rules_prometheus)}
    assert {
        "ConclaveJoinSuccessFastBurn",
        "ConclaveJoinSuccessSlowBurn",
        "ConclaveJoinLatencyHigh",
        "ConclaveRelayPacketLossHigh",
        "ConclaveRelayHeartbeatStale",
        "ConclaveRelayStuckDraining",
        "ConclaveCellCapacityLow",
        "ConclaveEtcdNoLeader",
        "ConclaveEtcdDatabaseNearQuota",
        "ConclaveGrpcServerErrorsHigh",
    } <= names


def test_every_alert_says_how_bad_what_and_where_to_read_on(
    rules_prometheus: PrometheusServer,
) -> None:
    for alert in alerts(rules_prometheus):
        assert alert["labels"].get("severity") in SEVERITIES, alert["name"]
        annotations = alert["annotations"]
        assert {"summary", "description", "runbook_url"} <= annotations.keys(), alert["name"]
        assert annotations["runbook_url"] == f"docs/operations.md#{alert['name'].lower()}"


def test_every_runbook_url_names_a_section_of_the_operations_doc(
    rules_prometheus: PrometheusServer,
) -> None:
    headings = re.findall(r"^### (.+)$", catalog.OPERATIONS.read_text(), re.M)
    anchors = {catalog.runbook_anchor(heading) for heading in headings}
    missing = [
        alert["annotations"]["runbook_url"]
        for alert in alerts(rules_prometheus)
        if alert["annotations"]["runbook_url"].split("#", 1)[1] not in anchors
    ]
    assert not missing, f"no '### AlertName' section in docs/operations.md for {missing}"


def test_every_alert_has_a_firing_and_a_quiet_unit_test(
    rules_prometheus: PrometheusServer,
) -> None:
    # The test file's cases read `alertname: X` then `exp_alerts: []` (must stay
    # quiet) or `exp_alerts:` followed by the expected alerts (must fire).
    cases = re.findall(
        r"^\s*alertname:\s*(\w+)\s*\n\s*exp_alerts:[ \t]*(\[\])?",
        catalog.RULE_TESTS.read_text(),
        re.M,
    )
    fires = {name for name, quiet in cases if not quiet}
    quiet = {name for name, quiet in cases if quiet}
    for alert in alerts(rules_prometheus):
        assert alert["name"] in fires, f"no unit test where {alert['name']} fires"
        assert alert["name"] in quiet, f"no unit test where {alert['name']} stays quiet"


def test_rules_read_only_exported_metrics(
    rules_prometheus: PrometheusServer, exported_names: set[str]
) -> None:
    rules = rules_prometheus.rules()
    recorded = {rule["name"] for rule in rules if rule["type"] == "recording"}
    known = exported_names | catalog.ETCD_METRICS | recorded
    assert unknown_names([rule["query"] for rule in rules], known) == {}


@pytest.mark.parametrize("window", ["5m", "30m", "1h", "6h"])
def test_join_slo_is_recorded_for_every_window(
    rules_prometheus: PrometheusServer, window: str
) -> None:
    recorded = {rule["name"] for rule in rules_prometheus.rules() if rule["type"] == "recording"}
    assert f"conclave:control_join_success:ratio_rate{window}" in recorded
