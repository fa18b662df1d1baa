"""k8s/ renders with kubectl's kustomize and every object passes its schema, offline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.k8s.manifests import (
    K8S,
    OVERLAYS,
    Manifest,
    kubectl,
    name_of,
    render,
    schema_problems,
)

EXPECTED = {
    "Namespace/conclave",
    "StatefulSet/etcd",
    "Service/etcd-peer",
    "Service/etcd-client",
    "PodDisruptionBudget/etcd",
    "PersistentVolumeClaim/etcd-snapshots",
    "CronJob/etcd-snapshot",
    "Deployment/control-plane",
    "Service/control-plane",
    "Service/control-plane-http",
    "HorizontalPodAutoscaler/control-plane",
    "PodDisruptionBudget/control-plane",
    "DaemonSet/relay",
    "NetworkPolicy/etcd",
    "NetworkPolicy/etcd-relay-nodes",
    "PodMonitor/conclave-relay",
    "PodMonitor/conclave-control-plane",
    "PodMonitor/etcd",
}


def test_kubectl_is_an_executable() -> None:
    assert Path(kubectl()).is_file()


def test_kustomizations_are_local() -> None:
    """A remote base would make rendering (and this suite) need the network."""
    for path in K8S.rglob("kustomization.yaml"):
        assert not re.search(r"\w+://", path.read_text()), path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_whole_deployment(overlay: str) -> None:
    names = [name_of(obj) for obj in render(overlay)]
    assert len(names) == len(set(names)), "an object is rendered twice"
    assert set(names) == EXPECTED


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_passes_its_schema(overlay: str) -> None:
    problems = [problem for obj in render(overlay) for problem in schema_problems(obj)]
    assert problems == []


def production_object(name: str) -> Manifest:
    return next(obj for obj in render("production") if name_of(obj) == name)


def test_strict_schema_rejects_an_unknown_field() -> None:
    deployment = production_object("Deployment/control-plane")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    assert any("imagePullPolice" in problem for problem in schema_problems(deployment))


def test_schema_rejects_a_wrong_type() -> None:
    statefulset = production_object("StatefulSet/etcd")
    statefulset["spec"]["replicas"] = "three"
    assert schema_problems(statefulset) != []


def test_podmonitor_schema_rejects_a_misspelt_field() -> None:
    monitor = production_object("PodMonitor/conclave-relay")
    spec = monitor["spec"]
    spec["podMetricEndpoints"] = spec.pop("podMetricsEndpoints")
    problems = schema_problems(monitor)
    assert any("podMetricEndpoints" in problem for problem in problems)
    assert any("podMetricsEndpoints" in problem for problem in problems)  # now missing


def test_podmonitor_schema_rejects_a_bad_relabeling() -> None:
    monitor = production_object("PodMonitor/etcd")
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    endpoint["relabelings"][0]["action"] = "rename"
    assert schema_problems(monitor) != []


def test_unknown_kind_has_no_schema() -> None:
    obj = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert any("Couldn't find schema" in problem for problem in schema_problems(obj))
