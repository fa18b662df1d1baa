"""k8s/restore/: the pods of the etcd restore procedure in docs/operations.md.

A restore is rehearsed rarely, so these files are held to the running cluster: the
restored member must be the one the StatefulSet will start on that volume, in the
same cluster, or etcd refuses to start on it.
"""

from __future__ import annotations

import re

import pytest

from tests.k8s import policy
from tests.k8s.manifests import K8S, Manifest, render, schema_problems, yaml_objects

RESTORE = K8S / "restore"
# The peer URLs' scheme each overlay runs etcd with (production: peer TLS).
SCHEMES = {"dev": "http", "production": "https"}


def restore_pod(member: str, scheme: str = "https") -> Manifest:
    text = (RESTORE / "etcd-restore-member.yaml").read_text()
    [pod] = yaml_objects(text.replace("@MEMBER@", member).replace("@SCHEME@", scheme))
    return pod


def restore_files() -> list[Manifest]:
    shell = yaml_objects((RESTORE / "snapshots-shell.yaml").read_text())
    return [*shell, restore_pod("etcd-1")]


def test_restore_pods_pass_schema_and_container_policy() -> None:
    objs = restore_files()
    assert [p for obj in objs for p in schema_problems(obj)] == []
    pods = [{"kind": "Job", "metadata": o["metadata"], "spec": {"template": o}} for o in objs]
    assert policy.container_problems(pods) == []


def test_restore_files_are_not_deployed() -> None:
    """They are run by hand, one member at a time; `apply -k` must not start them."""
    for overlay in ("dev", "production"):
        kinds = {obj["kind"] for obj in render(overlay)}
        assert "Pod" not in kinds


def test_restore_file_has_only_known_placeholders() -> None:
    text = (RESTORE / "etcd-restore-member.yaml").read_text()
    assert set(re.findall(r"@[A-Z_]+@", text)) == {"@MEMBER@", "@SCHEME@"}


@pytest.mark.parametrize("overlay", sorted(SCHEMES))
@pytest.mark.parametrize("index", [0, 1, 2])
def test_restored_member_matches_the_statefulset(index: int, overlay: str) -> None:
    member = f"etcd-{index}"
    pod = restore_pod(member, SCHEMES[overlay])
    objs = render(overlay)
    statefulset = policy.find(objs, "StatefulSet", "etcd")
    etcd = policy.container(policy.template_of(objs, policy.ETCD), "etcd")
    restore = policy.container(pod, "restore")
    assert statefulset is not None and etcd is not None and restore is not None
    claim = statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == f"{claim}-etcd-{index}"

    running = [policy.expand(a, etcd).replace("$(POD_NAME)", member) for a in policy.argv(etcd)]
    restored = [policy.expand(a, restore) for a in policy.argv(restore)]
    assert policy.flag(restored, "--name") == member
    for name in ("--initial-cluster", "--initial-cluster-token", "--initial-advertise-peer-urls"):
        assert policy.flag(restored, name) == policy.flag(running, name), name
    mount = next(m for m in etcd["volumeMounts"] if m["name"] == claim)["mountPath"]
    swap = " ".join(policy.argv(policy.container(pod, "swap") or {}))
    assert f"{policy.flag(restored, '--data-dir')} {policy.flag(running, '--data-dir')}" in swap
    assert str(policy.flag(running, "--data-dir")).startswith(mount)
