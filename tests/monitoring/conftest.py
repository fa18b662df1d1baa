"""Fixtures for the monitoring tests: the Prometheus tools (never skipped: a
missing promtool fails with the install hint) and the exported metric names."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.monitoring import catalog
from tests.monitoring.prometheus import PrometheusServer, binary


@pytest.fixture(scope="session")
def promtool() -> str:
    try:
        return binary("promtool")
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def rules_prometheus() -> Iterator[PrometheusServer]:
    """A Prometheus with conclave-alerts.yaml loaded and nothing to scrape: its
    API lists the rules as it parsed them and checks any query's syntax."""
    try:
        binary("prometheus")
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
    server = PrometheusServer({"rule_files": [str(catalog.RULES)]})
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def exported_names() -> set[str]:
    return catalog.exported_names()
