"""The rendered overlays meet Conclave's deployment policy, and the policy has teeth.

Each broken variant below changes one thing in the rendered production manifests and
expects the policy to name it, so no check passes merely because it looks at nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.k8s import policy
from tests.k8s.manifests import OVERLAYS, Manifest, render


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_meets_the_policy(overlay: str) -> None:
    assert policy.all_problems(render(overlay), production=overlay == "production") == []


def test_production_runs_more_control_plane_replicas_than_dev() -> None:
    def minimum(overlay: str) -> int:
        hpa = policy.find(render(overlay), "HorizontalPodAutoscaler", "control-plane")
        assert hpa is not None
        return int(hpa["spec"]["minReplicas"])

    assert minimum("production") >= 3 > minimum("dev")


def test_dev_would_fail_the_production_replica_rule() -> None:
    problems = policy.control_plane_problems(render("dev"), production=True)
    assert any("fewer than 2" in problem for problem in problems)


def _get(objs: list[Manifest], kind: str, name: str) -> Manifest:
    obj = policy.find(objs, kind, name)
    assert obj is not None
    return obj


def _container(objs: list[Manifest], workload: str, name: str) -> Manifest:
    c = policy.container(policy.template_of(objs, workload), name)
    assert c is not None
    return c


def _remove(objs: list[Manifest], kind: str, name: str) -> None:
    objs.remove(_get(objs, kind, name))


def _set_pod(objs: list[Manifest], workload: str, key: str, value: object) -> None:
    template = policy.template_of(objs, workload)
    assert template is not None
    template["spec"][key] = value


def _replace_arg(c: Manifest, prefix: str, new: str) -> None:
    key = "args" if any(str(a).startswith(prefix) for a in c.get("args", [])) else "command"
    c[key] = [new if str(a).startswith(prefix) else a for a in c[key]]


def _drop_arg(c: Manifest, prefix: str) -> None:
    c["args"] = [a for a in c["args"] if not str(a).startswith(prefix)]


def _no_limits(objs: list[Manifest]) -> None:
    del _container(objs, policy.RELAY, "relay")["resources"]["limits"]


def _writable_root(objs: list[Manifest]) -> None:
    _container(objs, policy.SNAPSHOT, "prune")["securityContext"]["readOnlyRootFilesystem"] = False


def _escalation(objs: list[Manifest]) -> None:
    c = _container(objs, policy.ETCD, "etcd")
    del c["securityContext"]["allowPrivilegeEscalation"]


def _root(objs: list[Manifest]) -> None:
    c = _container(objs, policy.CONTROL_PLANE, "control-plane")
    c["securityContext"]["runAsNonRoot"] = False


def _capabilities(objs: list[Manifest]) -> None:
    c = _container(objs, policy.CONTROL_PLANE, "control-plane")
    c["securityContext"]["capabilities"] = {"add": ["NET_ADMIN"]}


def _token(objs: list[Manifest]) -> None:
    _set_pod(objs, policy.SNAPSHOT, "automountServiceAccountToken", True)


def _unconfined(objs: list[Manifest]) -> None:
    template = policy.template_of(objs, policy.RELAY)
    assert template is not None
    del template["spec"]["securityContext"]["seccompProfile"]


def _unpinned(objs: list[Manifest]) -> None:
    _container(objs, policy.RELAY, "relay")["image"] = "ghcr.io/conclave/conclave:latest"


def _hook_var(objs: list[Manifest]) -> None:
    c = _container(objs, policy.RELAY, "relay")
    c["lifecycle"]["preStop"]["exec"]["command"] = [
        "conclave",
        "relay",
        "drain",
        "$(NODE_NAME)",
        "--wait",
        "--deadline",
        "240",
    ]


def _undefined_var(objs: list[Manifest]) -> None:
    c = _container(objs, policy.RELAY, "relay")
    c["env"] = [e for e in c["env"] if e["name"] != "NODE_IP"]


def _namespace(objs: list[Manifest]) -> None:
    del _get(objs, "NetworkPolicy", "etcd-relay-nodes")["metadata"]["namespace"]


def _same_probes(objs: list[Manifest]) -> None:
    c = _container(objs, policy.CONTROL_PLANE, "control-plane")
    c["readinessProbe"]["httpGet"]["path"] = "/healthz"


def _probe_port(objs: list[Manifest]) -> None:
    c = _container(objs, policy.CONTROL_PLANE, "control-plane")
    c["livenessProbe"]["httpGet"]["port"] = "grpc"


def _one_replica(objs: list[Manifest]) -> None:
    _get(objs, "HorizontalPodAutoscaler", "control-plane")["spec"]["minReplicas"] = 1


def _fixed_replicas(objs: list[Manifest]) -> None:
    _get(objs, "Deployment", "control-plane")["spec"]["replicas"] = 3


def _pdb_blocks(objs: list[Manifest]) -> None:
    _get(objs, "PodDisruptionBudget", "control-plane")["spec"]["minAvailable"] = 3


def _no_signing(objs: list[Manifest]) -> None:
    c = _container(objs, policy.CONTROL_PLANE, "control-plane")
    c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "signing"]


def _pod_network(objs: list[Manifest]) -> None:
    _set_pod(objs, policy.RELAY, "hostNetwork", False)


def _no_prestop(objs: list[Manifest]) -> None:
    del _container(objs, policy.RELAY, "relay")["lifecycle"]


def _short_grace(objs: list[Manifest]) -> None:
    _set_pod(objs, policy.RELAY, "terminationGracePeriodSeconds", 260)


def _drain_other_node(objs: list[Manifest]) -> None:
    c = _container(objs, policy.RELAY, "relay")
    script = c["lifecycle"]["preStop"]["exec"]["command"][2]
    c["lifecycle"]["preStop"]["exec"]["command"][2] = script.replace("$NODE_NAME", "$HOSTNAME")


def _ready_on_healthz(objs: list[Manifest]) -> None:
    c = _container(objs, policy.RELAY, "relay")
    c["readinessProbe"]["httpGet"]["path"] = "/healthz"


def _surge_two(objs: list[Manifest]) -> None:
    strategy = _get(objs, "DaemonSet", "relay")["spec"]["updateStrategy"]
    strategy["rollingUpdate"]["maxUnavailable"] = 2


def _advertise_pod_ip(objs: list[Manifest]) -> None:
    c = _container(objs, policy.RELAY, "relay")
    for e in c["env"]:
        if e["name"] == "NODE_IP":
            e["valueFrom"]["fieldRef"]["fieldPath"] = "status.podIP"


def _set_advertise_host(c: Manifest, host: str) -> None:
    c["args"][c["args"].index("--advertise-host") + 1] = host


def _advertise_one_name(objs: list[Manifest]) -> None:
    _set_advertise_host(_container(objs, policy.RELAY, "relay"), "relays.example.com")


def _advertise_pod_name(objs: list[Manifest]) -> None:
    c = _container(objs, policy.RELAY, "relay")
    c["env"].append({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    _set_advertise_host(c, "$(POD_NAME).relays.example.com")


def _one_member(objs: list[Manifest]) -> None:
    _get(objs, "StatefulSet", "etcd")["spec"]["replicas"] = 1


def _ordered(objs: list[Manifest]) -> None:
    _get(objs, "StatefulSet", "etcd")["spec"]["podManagementPolicy"] = "OrderedReady"


def _no_claims(objs: list[Manifest]) -> None:
    del _get(objs, "StatefulSet", "etcd")["spec"]["volumeClaimTemplates"]


def _no_quota(objs: list[Manifest]) -> None:
    _drop_arg(_container(objs, policy.ETCD, "etcd"), "--quota-backend-bytes")


def _quota_too_big(objs: list[Manifest]) -> None:
    c = _container(objs, policy.ETCD, "etcd")
    _replace_arg(c, "--quota-backend-bytes", "--quota-backend-bytes=999999999999")


def _no_compaction(objs: list[Manifest]) -> None:
    _drop_arg(_container(objs, policy.ETCD, "etcd"), "--auto-compaction-retention")


def _no_lease_checkpoints(objs: list[Manifest]) -> None:
    _drop_arg(_container(objs, policy.ETCD, "etcd"), "--experimental-enable-lease-checkpoint")


def _no_etcd_pdb(objs: list[Manifest]) -> None:
    _remove(objs, "PodDisruptionBudget", "etcd")


def _no_snapshots(objs: list[Manifest]) -> None:
    _remove(objs, "CronJob", "etcd-snapshot")


def _snapshot_to_tmp(objs: list[Manifest]) -> None:
    c = _container(objs, policy.SNAPSHOT, "save")
    c["args"] = [*c["args"][:-1], "/tmp/snapshot.db"]


def _peers_not_ready(objs: list[Manifest]) -> None:
    _get(objs, "Service", "etcd-peer")["spec"]["publishNotReadyAddresses"] = False


def _no_network_policy(objs: list[Manifest]) -> None:
    _remove(objs, "NetworkPolicy", "etcd")
    _remove(objs, "NetworkPolicy", "etcd-relay-nodes")


def _etcd_open_to_namespaces(objs: list[Manifest]) -> None:
    rule = _get(objs, "NetworkPolicy", "etcd")["spec"]["ingress"][0]
    rule["from"].append({"namespaceSelector": {}})


def _etcd_open_to_all(objs: list[Manifest]) -> None:
    _get(objs, "NetworkPolicy", "etcd")["spec"]["ingress"].append({})


def _peer_port_for_clients(objs: list[Manifest]) -> None:
    rule = _get(objs, "NetworkPolicy", "etcd")["spec"]["ingress"][1]
    rule["from"].append(
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "conclave-relay"}}}
    )


def _selector_typo(objs: list[Manifest]) -> None:
    rule = _get(objs, "NetworkPolicy", "etcd")["spec"]["ingress"][0]
    rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] = "control-plane"


def _whole_internet(objs: list[Manifest]) -> None:
    rule = _get(objs, "NetworkPolicy", "etcd-relay-nodes")["spec"]["ingress"][0]
    rule["from"] = [{"ipBlock": {"cidr": "0.0.0.0/0"}}]


def _no_cell_label(objs: list[Manifest]) -> None:
    template = policy.template_of(objs, policy.RELAY)
    assert template is not None
    del template["metadata"]["labels"][policy.CELL_LABEL]


def _no_node_label(objs: list[Manifest]) -> None:
    endpoint = _get(objs, "PodMonitor", "etcd")["spec"]["podMetricsEndpoints"][0]
    endpoint["relabelings"] = [r for r in endpoint["relabelings"] if r["targetLabel"] != "node"]


def _wrong_job(objs: list[Manifest]) -> None:
    endpoint = _get(objs, "PodMonitor", "conclave-relay")["spec"]["podMetricsEndpoints"][0]
    endpoint["relabelings"][0]["replacement"] = "relay"


BROKEN: dict[str, tuple[Callable[[list[Manifest]], None], str]] = {
    "no limits": (_no_limits, "no limits.cpu"),
    "writable root": (_writable_root, "readOnlyRootFilesystem is not true"),
    "privilege escalation": (_escalation, "allowPrivilegeEscalation is not false"),
    "root": (_root, "runAsNonRoot is not true"),
    "capabilities": (_capabilities, "capabilities do not drop ALL"),
    "service-account token": (_token, "service-account token"),
    "no seccomp": (_unconfined, "seccomp profile"),
    "latest image": (_unpinned, "is not pinned"),
    "$(VAR) in a hook": (_hook_var, "hooks do not expand"),
    "undefined $(VAR)": (_undefined_var, "$(NODE_IP) is not in its env"),
    "no namespace": (_namespace, "namespace None"),
    "same probe path": (_same_probes, "probe the same path"),
    "probe on the gRPC port": (_probe_port, "probe on port 50051"),
    "one control plane": (_one_replica, "fewer than 2"),
    "replicas fight the HPA": (_fixed_replicas, "the HPA owns them"),
    "PDB blocks evictions": (_pdb_blocks, "blocks every eviction"),
    "no signing secret": (_no_signing, "conclave-signing"),
    "pod network relay": (_pod_network, "not hostNetwork"),
    "no drain": (_no_prestop, "no preStop exec"),
    "grace shorter than drain": (_short_grace, "after the drain deadline"),
    "drains another node": (_drain_other_node, "not this relay's --node-id"),
    "relay readiness on healthz": (_ready_on_healthz, "readinessProbe is not GET /readyz"),
    "two relays down at once": (_surge_two, "maxUnavailable 1"),
    "advertises the pod IP": (_advertise_pod_ip, "--ice-address is not taken"),
    "advertises one name for all": (_advertise_one_name, "--advertise-host is not taken"),
    "advertises a pod's name": (_advertise_pod_name, "--advertise-host is not taken"),
    "one etcd member": (_one_member, "1 members"),
    "ordered etcd start": (_ordered, "not Parallel"),
    "no etcd volumes": (_no_claims, "not on a volumeClaimTemplate"),
    "no quota": (_no_quota, "--quota-backend-bytes"),
    "quota bigger than volume": (_quota_too_big, "does not fit"),
    "no compaction": (_no_compaction, "--auto-compaction-retention"),
    "lease TTLs reset": (_no_lease_checkpoints, "lease TTLs reset on leader change"),
    "no etcd PDB": (_no_etcd_pdb, "PodDisruptionBudget"),
    "no snapshots": (_no_snapshots, "no CronJob/etcd-snapshot"),
    "snapshot off the volume": (_snapshot_to_tmp, "onto a PersistentVolumeClaim"),
    "peers unresolvable": (_peers_not_ready, "before quorum"),
    "no network policy": (_no_network_policy, "no NetworkPolicy"),
    "etcd open to namespaces": (_etcd_open_to_namespaces, "other namespaces"),
    "etcd open to all": (_etcd_open_to_all, "every source"),
    "relays on the peer port": (_peer_port_for_clients, "open to DaemonSet/relay"),
    "selector typo": (_selector_typo, "matches no Conclave pod"),
    "ipBlock for everyone": (_whole_internet, "whole internet"),
    "no cell label": (_no_cell_label, "no conclave.io/cell"),
    "no node label": (_no_node_label, "target label node"),
    "wrong job name": (_wrong_job, "as job conclave-relay"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_policy_rejects(case: str) -> None:
    breaks, expected = BROKEN[case]
    objs = render("production")
    breaks(objs)
    problems = policy.all_problems(objs, production=True)
    assert any(expected in problem for problem in problems), problems
