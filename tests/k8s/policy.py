"""What a Conclave deployment must be, checked on rendered manifests.

Schema validation says the API server would accept an object; these checks say the
cluster would then behave: meetings survive a relay upgrade, etcd keeps quorum and
its data, the control plane answers probes that mean something, and only Conclave's
own pods reach etcd. Each check returns the problems it finds, so a test can show
that it fails on a broken object as well as passes on ours.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Iterator
from typing import Any

from tests.k8s.manifests import Manifest, name_of

NAMESPACE = "conclave"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
CONTROL_PLANE = "Deployment/control-plane"
RELAY = "DaemonSet/relay"
ETCD = "StatefulSet/etcd"
SNAPSHOT = "CronJob/etcd-snapshot"
# Who may open etcd's client port: the two servers, the members, the backup job.
ETCD_CLIENTS = {CONTROL_PLANE, RELAY, ETCD, SNAPSHOT}
CLIENT_PORT = 2379
PEER_PORT = 2380
CELL_LABEL = "conclave.io/cell"
# `drain --wait` may return 10 s after its deadline; then the relay still has to stop.
STOP_MARGIN_S = 30
MONITORED = {"conclave-relay": RELAY, "conclave-control-plane": CONTROL_PLANE, "etcd": ETCD}

_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
_NODE_DOMAIN = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+")
_QUANTITY = re.compile(r"^([0-9]+)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_UNITS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


# Lookups --------------------------------------------------------------------------


def find(objs: list[Manifest], kind: str, name: str) -> Manifest | None:
    return next((o for o in objs if name_of(o) == f"{kind}/{name}"), None)


def pod_templates(objs: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    """(workload name, pod template) for every object that makes pods."""
    for obj in objs:
        spec = obj.get("spec", {})
        if obj.get("kind") == "CronJob":
            yield name_of(obj), spec.get("jobTemplate", {}).get("spec", {}).get("template", {})
        elif obj.get("kind") in WORKLOAD_KINDS:
            yield name_of(obj), spec.get("template", {})


def template_of(objs: list[Manifest], workload: str) -> Manifest | None:
    return next((t for name, t in pod_templates(objs) if name == workload), None)


def containers(template: Manifest) -> list[Manifest]:
    spec = template.get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def container(template: Manifest | None, name: str) -> Manifest | None:
    if template is None:
        return None
    return next((c for c in containers(template) if c.get("name") == name), None)


def selects(selector: Manifest | None, labels: dict[str, str]) -> bool:
    """Whether a label selector matches `labels`; an empty selector matches everything."""
    if selector is None:
        return False
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def workloads_selected(objs: list[Manifest], selector: Manifest | None) -> set[str]:
    return {
        name
        for name, template in pod_templates(objs)
        if selects(selector, template.get("metadata", {}).get("labels", {}))
    }


def env_values(c: Manifest) -> dict[str, str]:
    """Literal env values, and `field:<path>` for downward-API ones."""
    values: dict[str, str] = {}
    for item in c.get("env", []):
        if "value" in item:
            values[item["name"]] = str(item["value"])
        elif "fieldRef" in item.get("valueFrom", {}):
            values[item["name"]] = "field:" + item["valueFrom"]["fieldRef"]["fieldPath"]
    return values


def argv(c: Manifest) -> list[str]:
    return [str(a) for a in [*c.get("command", []), *c.get("args", [])]]


def flag(args: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE`."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def expand(value: str, c: Manifest) -> str:
    """`$(VAR)` the way the kubelet expands it in command and args (literal env only)."""
    env = {e["name"]: str(e["value"]) for e in c.get("env", []) if "value" in e}
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), value)


def quantity(text: str) -> int:
    match = _QUANTITY.match(str(text))
    if match is None:
        raise ValueError(f"unsupported quantity {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def port_number(c: Manifest, port: Any) -> int | None:
    if isinstance(port, int):
        return port
    for p in c.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    return None


def probe(c: Manifest, kind: str) -> tuple[str | None, int | None]:
    """(path, port number) of an httpGet probe."""
    http = c.get(kind, {}).get("httpGet")
    if http is None:
        return None, None
    return http.get("path"), port_number(c, http.get("port"))


# Checks ---------------------------------------------------------------------------


def container_problems(objs: list[Manifest]) -> list[str]:
    """Every pod and container: bounded, unprivileged, read-only, pinned, $(VARS) defined."""
    problems: list[str] = []
    for workload, template in pod_templates(objs):
        pod_security = template.get("spec", {}).get("securityContext", {})
        if template.get("spec", {}).get("automountServiceAccountToken") is not False:
            problems.append(f"{workload}: mounts a service-account token it never uses")
        if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{workload}: seccomp profile is not RuntimeDefault")
        for c in containers(template):
            where = f"{workload} container {c.get('name')}"
            resources = c.get("resources", {})
            for section in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in resources.get(section, {}):
                        problems.append(f"{where}: no {section}.{resource}")
            security = c.get("securityContext", {})
            if security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is not True:
                problems.append(f"{where}: runAsNonRoot is not true")
            user = security.get("runAsUser", pod_security.get("runAsUser"))
            if not isinstance(user, int) or user == 0:
                problems.append(f"{where}: runAsUser is not a non-zero uid")
            if security.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem is not true")
            if security.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if security.get("privileged"):
                problems.append(f"{where}: privileged")
            capabilities = security.get("capabilities", {})
            if "ALL" not in capabilities.get("drop", []):
                problems.append(f"{where}: capabilities do not drop ALL")
            if capabilities.get("add"):
                problems.append(f"{where}: adds capabilities")
            image = str(c.get("image", ""))
            tag = image.rsplit("/", 1)[-1]
            if "@sha256:" not in image and (":" not in tag or tag.endswith(":latest")):
                problems.append(f"{where}: image {image!r} is not pinned to a tag")
            env = env_values(c)
            for arg in argv(c):
                for var in _VAR.findall(arg):
                    if var not in env:
                        problems.append(f"{where}: $({var}) is not in its env")
            for hook in ("preStop", "postStart"):
                command = c.get("lifecycle", {}).get(hook, {}).get("exec", {}).get("command", [])
                if any(_VAR.search(str(part)) for part in command):
                    # The kubelet expands $(VAR) in command and args only, never in hooks.
                    problems.append(f"{where}: {hook} uses $(VAR), which hooks do not expand")
    return problems


def namespace_problems(objs: list[Manifest]) -> list[str]:
    """Everything lands in the one namespace the overlay also creates."""
    problems: list[str] = []
    if find(objs, "Namespace", NAMESPACE) is None:
        problems.append(f"no Namespace {NAMESPACE}")
    for obj in objs:
        if obj.get("kind") == "Namespace":
            continue
        namespace = obj.get("metadata", {}).get("namespace")
        if namespace != NAMESPACE:
            problems.append(f"{name_of(obj)}: namespace {namespace!r}, not {NAMESPACE!r}")
    return problems


def control_plane_problems(objs: list[Manifest], production: bool) -> list[str]:
    """Probes that mean different things, enough replicas, disruptions bounded."""
    problems: list[str] = []
    deployment = find(objs, "Deployment", "control-plane")
    template = template_of(objs, CONTROL_PLANE)
    c = container(template, "control-plane")
    if deployment is None or template is None or c is None:
        return [f"no {CONTROL_PLANE} with a control-plane container"]
    args = argv(c)
    if args[:2] != ["conclave", "control-plane"]:
        problems.append(f"{CONTROL_PLANE}: runs {args[:2]}, not conclave control-plane")
    http_port = flag(args, "--http-port")
    if http_port is None or flag(args, "--listen") is None:
        problems.append(f"{CONTROL_PLANE}: --http-port or --listen missing")
    live_path, live_port = probe(c, "livenessProbe")
    ready_path, ready_port = probe(c, "readinessProbe")
    if live_path != "/healthz":
        problems.append(f"{CONTROL_PLANE}: liveness probe is {live_path}, not GET /healthz")
    if ready_path != "/readyz":
        problems.append(f"{CONTROL_PLANE}: readiness probe is {ready_path}, not GET /readyz")
    if live_path == ready_path:
        problems.append(f"{CONTROL_PLANE}: liveness and readiness probe the same path")
    for port in (live_port, ready_port):
        if http_port is None or port != int(http_port):
            problems.append(f"{CONTROL_PLANE}: probe on port {port}, not --http-port {http_port}")
    volumes = {v["name"]: v for v in template.get("spec", {}).get("volumes", [])}
    signing = [
        m
        for m in c.get("volumeMounts", [])
        if m.get("mountPath") == "/var/run/conclave/signing"
        and volumes.get(m.get("name"), {}).get("secret", {}).get("secretName") == "conclave-signing"
    ]
    if not signing:
        problems.append(
            f"{CONTROL_PLANE}: Secret conclave-signing not at /var/run/conclave/signing"
        )
    hpa = next(
        (
            o
            for o in objs
            if o.get("kind") == "HorizontalPodAutoscaler"
            and o.get("spec", {}).get("scaleTargetRef", {}).get("name") == "control-plane"
            and o.get("spec", {}).get("scaleTargetRef", {}).get("kind") == "Deployment"
        ),
        None,
    )
    floor = 2 if production else 1
    if hpa is None or hpa.get("apiVersion") != "autoscaling/v2":
        problems.append(f"{CONTROL_PLANE}: no autoscaling/v2 HorizontalPodAutoscaler")
        minimum = deployment.get("spec", {}).get("replicas", 1)
    else:
        spec = hpa["spec"]
        minimum = spec.get("minReplicas", 1)
        if spec.get("maxReplicas", 0) <= minimum:
            problems.append(f"{CONTROL_PLANE}: HPA cannot scale (max <= min)")
        if not any(m.get("resource", {}).get("name") == "cpu" for m in spec.get("metrics", [])):
            problems.append(f"{CONTROL_PLANE}: HPA does not scale on CPU")
        if "replicas" in deployment.get("spec", {}):
            # kubectl apply would reset the HPA's choice to this number on every deploy.
            problems.append(f"{CONTROL_PLANE}: sets replicas although the HPA owns them")
    if minimum < floor:
        problems.append(f"{CONTROL_PLANE}: {minimum} replica(s), fewer than {floor}")
    labels = template.get("metadata", {}).get("labels", {})
    pdbs = [
        o
        for o in objs
        if o.get("kind") == "PodDisruptionBudget" and selects(o["spec"].get("selector"), labels)
    ]
    if not pdbs:
        problems.append(f"{CONTROL_PLANE}: no PodDisruptionBudget")
    for pdb in pdbs:
        available = pdb["spec"].get("minAvailable")
        if not isinstance(available, int) or available < 1:
            problems.append(f"{name_of(pdb)}: minAvailable is not at least 1")
        elif production and available >= minimum:
            problems.append(f"{name_of(pdb)}: minAvailable {available} blocks every eviction")
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
    served: set[Any] = set()
    for service in objs:
        if service.get("kind") == "Service" and selects(service["spec"].get("selector"), labels):
            for p in service["spec"].get("ports", []):
                target = p.get("targetPort", p.get("port"))
                served.add(ports.get(target, target))
    grpc_port = int(str(flag(args, "--listen") or ":0").rpartition(":")[2])
    for wanted, what in ((grpc_port, "gRPC"), (int(http_port or 0), "HTTP")):
        if wanted not in served:
            problems.append(f"{CONTROL_PLANE}: no Service for its {what} port {wanted}")
    return problems


def relay_problems(objs: list[Manifest]) -> list[str]:
    """One relay per node on the host network, drained before it stops."""
    problems: list[str] = []
    daemonset = find(objs, "DaemonSet", "relay")
    template = template_of(objs, RELAY)
    c = container(template, "relay")
    if daemonset is None or template is None or c is None:
        return [f"no {RELAY} with a relay container"]
    spec = template.get("spec", {})
    if spec.get("hostNetwork") is not True:
        problems.append(f"{RELAY}: not hostNetwork (clients must reach the node's UDP ports)")
    if spec.get("dnsPolicy") != "ClusterFirstWithHostNet":
        problems.append(f"{RELAY}: dnsPolicy is not ClusterFirstWithHostNet (etcd-client)")
    strategy = daemonset["spec"].get("updateStrategy", {})
    if (
        strategy.get("type") != "RollingUpdate"
        or strategy.get("rollingUpdate", {}).get("maxUnavailable") != 1
    ):
        problems.append(f"{RELAY}: updates are not rolling with maxUnavailable 1")
    args = argv(c)
    env = env_values(c)
    if args[:2] != ["conclave", "relay"]:
        problems.append(f"{RELAY}: runs {args[:2]}, not conclave relay")
    for name in ("--udp-ports", "--etcd", "--capacity", "--rpc-port", "--link-port"):
        if flag(args, name) is None:
            problems.append(f"{RELAY}: no {name}")
    if flag(args, "--http-host") != "0.0.0.0":
        problems.append(f"{RELAY}: --http-host is not 0.0.0.0")
    for name, field in (
        ("--node-id", "spec.nodeName"),
        ("--advertise-host", "status.hostIP"),
        ("--ice-address", "status.hostIP"),
    ):
        value = flag(args, name) or ""
        match = _VAR.fullmatch(value)
        if name == "--advertise-host" and match is None:
            # With TLS a name per node instead: $(NODE_NAME).relays.example.com, which
            # the relay's certificates cover (docs/operations.md, "TLS in Kubernetes").
            match = _NODE_DOMAIN.fullmatch(value)
            field = "spec.nodeName" if match else field
        if match is None or env.get(match.group(1)) != f"field:{field}":
            problems.append(f"{RELAY}: {name} is not taken from {field}")
    http_port = int(flag(args, "--http-port") or 0)
    for kind, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        if probe(c, kind) != (path, http_port):
            problems.append(f"{RELAY}: {kind} is not GET {path} on --http-port {http_port}")
    command = [
        str(part)
        for part in c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    ]
    if len(command) == 3 and command[0] in ("sh", "/bin/sh") and command[1] == "-c":
        command = shlex.split(command[2])
    if command[:1] == ["exec"]:
        command = command[1:]
    if command[:3] != ["conclave", "relay", "drain"]:
        return [*problems, f"{RELAY}: no preStop exec that runs conclave relay drain"]
    node = _VAR.fullmatch(flag(args, "--node-id") or "")
    if node is None or command[3:4] != ["$" + node.group(1)]:
        problems.append(f"{RELAY}: preStop drains {command[3:4]}, not this relay's --node-id")
    if flag(command, "--etcd") != flag(args, "--etcd"):
        problems.append(f"{RELAY}: preStop drains through another etcd than the relay's")
    if "--wait" not in command:
        problems.append(f"{RELAY}: drain does not --wait for meetings to move")
    deadline = flag(command, "--deadline")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if deadline is None or not deadline.isdigit():
        problems.append(f"{RELAY}: drain has no --deadline")
    elif grace < int(deadline) + STOP_MARGIN_S:
        problems.append(
            f"{RELAY}: terminationGracePeriodSeconds {grace} leaves under {STOP_MARGIN_S} s "
            f"after the drain deadline {deadline}"
        )
    return problems


def etcd_problems(objs: list[Manifest]) -> list[str]:
    """Three members on their own volumes, bounded in size, disruptions and backups."""
    problems: list[str] = []
    statefulset = find(objs, "StatefulSet", "etcd")
    template = template_of(objs, ETCD)
    c = container(template, "etcd")
    if statefulset is None or template is None or c is None:
        return [f"no {ETCD} with an etcd container"]
    spec = statefulset["spec"]
    replicas = spec.get("replicas", 1)
    if replicas != 3:
        problems.append(f"{ETCD}: {replicas} members, not 3")
    if spec.get("podManagementPolicy") != "Parallel":
        # OrderedReady waits for etcd-0 to be ready, which needs a quorum that is not up.
        problems.append(f"{ETCD}: podManagementPolicy is not Parallel")
    args = [expand(a, c) for a in argv(c)]
    members = (flag(args, "--initial-cluster") or "").split(",")
    if len([m for m in members if m]) != replicas:
        problems.append(f"{ETCD}: --initial-cluster does not list {replicas} members")
    for name in ("--auto-compaction-mode", "--auto-compaction-retention", "--listen-metrics-urls"):
        if not flag(args, name):
            problems.append(f"{ETCD}: no {name}")
    for name in (
        "--experimental-enable-lease-checkpoint",
        "--experimental-enable-lease-checkpoint-persist",
    ):
        # Without both, every leader change or restart gives each lease its whole TTL
        # again, and meetings and audit logs outlive --meeting-ttl and --audit-retention.
        if flag(args, name) != "true":
            problems.append(f"{ETCD}: {name} is not true (lease TTLs reset on leader change)")
    claims = {t["metadata"]["name"]: t for t in spec.get("volumeClaimTemplates", [])}
    mounts = [m for m in c.get("volumeMounts", []) if m.get("name") in claims]
    data_dir = flag(args, "--data-dir") or ""
    if not any(data_dir.startswith(m["mountPath"]) for m in mounts):
        problems.append(f"{ETCD}: --data-dir is not on a volumeClaimTemplate")
    quota = flag(args, "--quota-backend-bytes")
    if quota is None or not quota.isdigit():
        problems.append(f"{ETCD}: no numeric --quota-backend-bytes")
    else:
        for m in mounts:
            size = claims[m["name"]]["spec"]["resources"]["requests"]["storage"]
            if int(quota) >= quantity(size):
                problems.append(f"{ETCD}: quota {quota} does not fit its {size} volume")
    services = [o for o in objs if o.get("kind") == "Service"]
    labels = template.get("metadata", {}).get("labels", {})
    peer = find(objs, "Service", spec.get("serviceName", ""))
    if peer is None or peer["spec"].get("clusterIP") != "None":
        problems.append(f"{ETCD}: serviceName is not a headless Service")
    elif peer["spec"].get("publishNotReadyAddresses") is not True:
        problems.append(f"{ETCD}: peers cannot resolve each other before quorum")
    if not any(
        selects(s["spec"].get("selector"), labels)
        and s["spec"].get("clusterIP") != "None"
        and any(p.get("port") == CLIENT_PORT for p in s["spec"].get("ports", []))
        for s in services
    ):
        problems.append(f"{ETCD}: no client Service on {CLIENT_PORT}")
    pdbs = [
        o
        for o in objs
        if o.get("kind") == "PodDisruptionBudget" and selects(o["spec"].get("selector"), labels)
    ]
    if [p["spec"].get("maxUnavailable") for p in pdbs] != [1]:
        problems.append(f"{ETCD}: not exactly one PodDisruptionBudget with maxUnavailable 1")
    problems += snapshot_problems(objs)
    return problems


def snapshot_problems(objs: list[Manifest]) -> list[str]:
    """A CronJob that saves etcd snapshots onto a PersistentVolumeClaim."""
    cronjob = find(objs, "CronJob", "etcd-snapshot")
    template = template_of(objs, SNAPSHOT)
    if cronjob is None or template is None:
        return [f"no {SNAPSHOT}"]
    problems: list[str] = []
    if cronjob["spec"].get("concurrencyPolicy") != "Forbid":
        problems.append(f"{SNAPSHOT}: snapshots may overlap (concurrencyPolicy is not Forbid)")
    volumes = {v["name"]: v for v in template.get("spec", {}).get("volumes", [])}
    saves = False
    for c in containers(template):
        args = argv(c)
        if "etcdctl" not in args[0] or args[-3:-1] != ["snapshot", "save"]:
            continue
        target = args[-1]
        on_claim = [
            m
            for m in c.get("volumeMounts", [])
            if target.startswith(m["mountPath"].rstrip("/") + "/")
            and "persistentVolumeClaim" in volumes.get(m["name"], {})
        ]
        saves = saves or bool(on_claim)
    if not saves:
        problems.append(f"{SNAPSHOT}: no etcdctl snapshot save onto a PersistentVolumeClaim")
    return problems


def _rule_ports(rule: Manifest, etcd: Manifest) -> set[int] | None:
    """Port numbers a NetworkPolicy rule opens on etcd; None for all of them."""
    if not rule.get("ports"):
        return None
    return {port_number(etcd, p.get("port")) or -1 for p in rule["ports"]}


def network_problems(objs: list[Manifest]) -> list[str]:
    """etcd's client port only for Conclave's pods (and relay nodes), peers only for members."""
    template = template_of(objs, ETCD)
    etcd = container(template, "etcd")
    if template is None or etcd is None:
        return [f"no {ETCD} to protect"]
    labels = template.get("metadata", {}).get("labels", {})
    policies = [
        o
        for o in objs
        if o.get("kind") == "NetworkPolicy"
        and selects(o["spec"].get("podSelector"), labels)
        and "Ingress" in o["spec"].get("policyTypes", ["Ingress"])
    ]
    if not policies:
        return [f"{ETCD}: no NetworkPolicy restricts its ingress"]
    problems: list[str] = []
    reach: set[str] = set()
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = _rule_ports(rule, etcd)
            guarded = (
                {CLIENT_PORT, PEER_PORT} if ports is None else ports & {CLIENT_PORT, PEER_PORT}
            )
            if not guarded:
                continue
            where = f"{name_of(policy)} ports {sorted(guarded)}"
            allowed = {ETCD} if PEER_PORT in guarded else ETCD_CLIENTS
            if not rule.get("from"):
                problems.append(f"{where}: open to every source")
            for peer in rule.get("from", []):
                if "namespaceSelector" in peer:
                    problems.append(f"{where}: open to other namespaces")
                elif "podSelector" in peer:
                    selected = workloads_selected(objs, peer["podSelector"])
                    if not selected:
                        problems.append(f"{where}: a podSelector matches no Conclave pod")
                    for workload in selected - allowed:
                        problems.append(f"{where}: open to {workload}")
                    if guarded == {CLIENT_PORT}:
                        reach |= selected
                elif "ipBlock" in peer:
                    # hostNetwork relays connect from their node's address, not a pod's.
                    network = ipaddress.ip_network(peer["ipBlock"]["cidr"], strict=False)
                    if guarded != {CLIENT_PORT}:
                        problems.append(f"{where}: an ipBlock reaches more than the client port")
                    elif network.prefixlen < 8:
                        problems.append(f"{where}: ipBlock {network} is the whole internet")
    for workload in (CONTROL_PLANE, RELAY):
        if workload not in reach:
            problems.append(f"{ETCD}: NetworkPolicy does not let {workload} reach {CLIENT_PORT}")
    return problems


def monitoring_problems(objs: list[Manifest]) -> list[str]:
    """A PodMonitor per job, naming the job and adding node and cell target labels."""
    problems: list[str] = []
    monitors = [o for o in objs if o.get("kind") == "PodMonitor"]
    for job, workload in MONITORED.items():
        template = template_of(objs, workload)
        if template is None:
            problems.append(f"{job}: no {workload}")
            continue
        labels = template.get("metadata", {}).get("labels", {})
        if CELL_LABEL not in labels:
            problems.append(f"{workload}: pods have no {CELL_LABEL} label")
        port_names = {p.get("name") for c in containers(template) for p in c.get("ports", [])}
        found = False
        for monitor in monitors:
            if not selects(monitor["spec"].get("selector"), labels):
                continue
            for endpoint in monitor["spec"].get("podMetricsEndpoints", []):
                relabel = {r.get("targetLabel"): r for r in endpoint.get("relabelings", [])}
                if relabel.get("job", {}).get("replacement") != job:
                    continue
                found = True
                where = f"{name_of(monitor)} ({job})"
                if endpoint.get("port") not in port_names:
                    problems.append(f"{where}: port {endpoint.get('port')} is not a pod port")
                for target, source in (
                    ("node", "__meta_kubernetes_pod_node_name"),
                    ("cell", "__meta_kubernetes_pod_label_conclave_io_cell"),
                ):
                    if relabel.get(target, {}).get("sourceLabels") != [source]:
                        problems.append(f"{where}: target label {target} is not from {source}")
        if not found:
            problems.append(f"{workload}: no PodMonitor scrapes it as job {job}")
    return problems


def all_problems(objs: list[Manifest], production: bool) -> list[str]:
    return [
        *namespace_problems(objs),
        *container_problems(objs),
        *control_plane_problems(objs, production),
        *relay_problems(objs),
        *etcd_problems(objs),
        *network_problems(objs),
        *monitoring_problems(objs),
    ]
