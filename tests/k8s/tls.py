"""TLS on every hop of k8s/overlays/production, checked on rendered manifests.

Each server and client names PEM files by flag or environment variable; a file only
exists if its directory is a read-only Secret volume (cert-manager writes tls.crt,
tls.key and ca.crt). What each Secret is used for (server or client, which names)
is derived here from the overlay, so k8s/cert-manager/ can be held to it.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections import defaultdict
from collections.abc import Sequence
from urllib.parse import urlsplit

from tests.k8s.manifests import Manifest
from tests.k8s.policy import (
    CONTROL_PLANE,
    ETCD,
    RELAY,
    SNAPSHOT,
    argv,
    container,
    containers,
    env_values,
    find,
    flag,
    pod_templates,
    port_number,
    selects,
    template_of,
)

NAMESPACE = "conclave"
SECRET_FILES = ("tls.crt", "tls.key", "ca.crt")
# The one plain listener allowed: etcd's metrics, for probes and Prometheus.
PLAIN_METRICS = "--listen-metrics-urls=http://0.0.0.0:2381"
# Secrets mounted in production that hold no certificate.
NOT_CERTIFICATES = {"conclave-signing"}
# A node name to put in place of $(NODE_NAME) when checking a relay's names.
SAMPLE_NODE = "node-1"
SERVER, CLIENT = "server auth", "client auth"

# (CA, certificate, key) options of Conclave's etcd client and relay-gRPC TLS.
ETCD_CLIENT = (
    ("--etcd-ca", "CONCLAVE_ETCD_CA"),
    ("--etcd-cert", "CONCLAVE_ETCD_CERT"),
    ("--etcd-key", "CONCLAVE_ETCD_KEY"),
)
RPC = (
    ("--rpc-ca", "CONCLAVE_RPC_CA"),
    ("--rpc-cert", "CONCLAVE_RPC_CERT"),
    ("--rpc-key", "CONCLAVE_RPC_KEY"),
)
ETCD_SERVER = ("--trusted-ca-file", "--cert-file", "--key-file")
ETCD_PEER = ("--peer-trusted-ca-file", "--peer-cert-file", "--peer-key-file")
ETCDCTL = ("--cacert", "--cert", "--key")
ETCDCTL_ENV = ("ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY")

_URL = re.compile(r"\b(https?)://[^\s,'\"]+")


def setting(c: Manifest, name: str, env: str | None = None) -> str | None:
    """A flag's value, else the environment variable that defaults it."""
    value = flag(argv(c), name)
    if value is None and env is not None:
        value = env_values(c).get(env)
    return value


def strings(c: Manifest) -> list[str]:
    """Everything a container runs or is told: command, args, env, hooks, exec probes."""
    found = [*argv(c), *env_values(c).values()]
    for hook in ("preStop", "postStart"):
        found += [
            str(s) for s in c.get("lifecycle", {}).get(hook, {}).get("exec", {}).get("command", [])
        ]
    for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
        found += [str(s) for s in c.get(kind, {}).get("exec", {}).get("command", [])]
    return found


def secret_of(template: Manifest, c: Manifest, path: str | None) -> tuple[str | None, str | None]:
    """(Secret name, problem) for a file path the container is given."""
    if not path:
        return None, "not set"
    directory, name = posixpath.split(path)
    if name not in SECRET_FILES:
        return None, f"{path}: not one of the files a TLS Secret holds {SECRET_FILES}"
    volumes = {v["name"]: v for v in template.get("spec", {}).get("volumes", [])}
    for mount in c.get("volumeMounts", []):
        if mount.get("mountPath", "").rstrip("/") != directory:
            continue
        secret = volumes.get(mount.get("name"), {}).get("secret")
        if secret is None:
            return None, f"{path}: {directory} is not a Secret volume"
        if mount.get("readOnly") is not True:
            return None, f"{path}: Secret {secret.get('secretName')} is not mounted read-only"
        if secret.get("optional") or "items" in secret or mount.get("subPath"):
            return None, f"{path}: Secret {secret.get('secretName')} may lack {name}"
        return secret.get("secretName"), None
    return None, f"{path}: nothing is mounted at {directory}"


class Usage:
    """Which Secret each TLS file comes from, and what the overlay needs of it."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.usages: dict[str, set[str]] = defaultdict(set)
        self.names: dict[str, set[str]] = defaultdict(set)
        # (Secret whose ca.crt verifies, Secret whose certificate it must verify)
        self.trusts: set[tuple[str, str]] = set()
        self.etcd_server: str | None = None

    def files(
        self,
        where: str,
        template: Manifest,
        c: Manifest,
        paths: Sequence[str | None],
        options: Sequence[str],
        usages: set[str],
    ) -> tuple[str | None, str | None]:
        """(CA's Secret, certificate's Secret) of a (CA, certificate, key) triple."""
        secrets: list[str | None] = []
        for path, option in zip(paths, options, strict=True):
            if not option:  # a server certificate has no CA of its peers
                secrets.append(None)
                continue
            secret, problem = secret_of(template, c, path)
            if problem:
                self.problems.append(f"{where}: {option} {problem}")
            secrets.append(secret)
        ca, cert, key = secrets
        if cert and key and cert != key:
            self.problems.append(f"{where}: certificate from {cert}, key from {key}")
        if cert:
            self.usages[cert] |= usages
        return ca, cert


def hosts_of(urls: str) -> list[str]:
    return [urlsplit(u).hostname or "" for u in urls.split(",") if u]


def _etcd_endpoints(c: Manifest) -> list[str]:
    """The etcd endpoints a container's programs dial (server, drain hook, etcdctl)."""
    found: list[str] = []
    for value in (setting(c, "--etcd"), setting(c, "--endpoints", "ETCDCTL_ENDPOINTS")):
        if value:
            found += value.split(",")
    hook = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if len(hook) == 3 and hook[1] == "-c":
        value = flag(shlex.split(hook[2]), "--etcd")
        if value:
            found += value.split(",")
    return found


def production_problems(objs: list[Manifest]) -> tuple[list[str], Usage]:
    """Every hop over TLS; and what each Secret must be, for the certificates."""
    use = Usage()
    problems = use.problems
    problems += _etcd_problems(objs, use)
    server = use.etcd_server or "the etcd server certificate"
    for workload, template in pod_templates(objs):
        for c in containers(template):
            where = f"{workload} container {c.get('name')}"
            for text in strings(c):
                for match in _URL.finditer(text):
                    if match.group(1) == "http" and text != PLAIN_METRICS:
                        problems.append(f"{where}: plain {match.group(0)}")
            endpoints = _etcd_endpoints(c)
            for url in endpoints:
                if not url.startswith("https://"):
                    problems.append(f"{where}: etcd endpoint {url} is not https")
            if not endpoints:
                continue
            use.names[server].update(hosts_of(",".join(endpoints)))
            if c.get("name") == "etcd" or argv(c)[:1] == ["etcdctl"]:
                options: Sequence[str] = ETCDCTL if argv(c)[:1] == ["etcdctl"] else ETCDCTL_ENV
                paths = [setting(c, o, e) for o, e in zip(ETCDCTL, ETCDCTL_ENV, strict=True)]
            else:
                options = [o for o, _ in ETCD_CLIENT]
                paths = [setting(c, o, e) for o, e in ETCD_CLIENT]
            ca, cert = use.files(where, template, c, paths, options, {CLIENT})
            if ca:
                use.trusts.add((ca, server))
            if cert:
                use.trusts.add((server, cert))
    problems += _conclave_problems(objs, use)
    problems += _probe_problems(objs)
    problems += _monitor_problems(objs, use)
    if not any(workload == SNAPSHOT for workload, _ in pod_templates(objs)):
        problems.append(f"no {SNAPSHOT}")
    return problems, use


def _etcd_problems(objs: list[Manifest], use: Usage) -> list[str]:
    template = template_of(objs, ETCD)
    c = container(template, "etcd")
    if template is None or c is None:
        return [f"no {ETCD}"]
    problems: list[str] = []
    args = argv(c)
    members = [f"etcd-{i}" for i in range(3)]

    def expand(value: str, member: str) -> str:
        return value.replace("$(POD_NAME)", member).replace("$(POD_NAMESPACE)", NAMESPACE)

    for name in ("--client-cert-auth", "--peer-client-cert-auth"):
        if name not in args and flag(args, name) != "true":
            problems.append(f"{ETCD}: {name} is not on")
    for name in (
        "--listen-client-urls",
        "--listen-peer-urls",
        "--advertise-client-urls",
        "--initial-advertise-peer-urls",
    ):
        value = flag(args, name) or ""
        if not value or any(not u.startswith("https://") for u in value.split(",")):
            problems.append(f"{ETCD}: {name} is not https")
    cluster = [m.partition("=")[2] for m in (flag(args, "--initial-cluster") or "").split(",")]
    if not cluster or any(not u.startswith("https://") for u in cluster):
        problems.append(f"{ETCD}: --initial-cluster peer URLs are not https")
    if not str(flag(args, "--listen-metrics-urls")).startswith("http://"):
        problems.append(f"{ETCD}: --listen-metrics-urls is not plain (probes, Prometheus)")
    paths = [flag(args, o) for o in ETCD_SERVER]
    ca, cert = use.files(ETCD, template, c, paths, ETCD_SERVER, {SERVER, CLIENT})
    use.etcd_server = cert
    if cert:
        for member in members:
            use.names[cert].update(
                hosts_of(expand(flag(args, "--advertise-client-urls") or "", member))
            )
        # Clients with several endpoints check "localhost" (conclave/store.py).
        use.names[cert].add("localhost")
    if ca and ca != cert:
        problems.append(f"{ETCD}: clients are checked against {ca}'s CA, not {cert}'s")
    paths = [flag(args, o) for o in ETCD_PEER]
    ca, cert = use.files(ETCD, template, c, paths, ETCD_PEER, {SERVER, CLIENT})
    if cert:
        for host in hosts_of(expand(",".join(cluster), "")):
            # A member checks a peer's certificate by the reverse DNS of its address.
            use.names[cert].update({host, f"{host}.cluster.local"})
        use.trusts.add((cert, cert))
    if ca and ca != cert:
        problems.append(f"{ETCD}: peers are checked against {ca}'s CA, not {cert}'s")
    return problems


def _conclave_problems(objs: list[Manifest], use: Usage) -> list[str]:
    problems: list[str] = []
    cells: list[str | None] = []
    for workload, name in ((CONTROL_PLANE, "control-plane"), (RELAY, "relay")):
        template = template_of(objs, workload)
        c = container(template, name)
        if template is None or c is None:
            problems.append(f"no {workload}")
            continue
        paths = [None, setting(c, "--tls-cert"), setting(c, "--tls-key")]
        options = ["", "--tls-cert", "--tls-key"]
        _, served = use.files(workload, template, c, paths, options, {SERVER})
        rpc = [setting(c, o, e) for o, e in RPC]
        ca, cell = use.files(workload, template, c, rpc, [o for o, _ in RPC], {SERVER, CLIENT})
        cells.append(cell)
        if ca and cell:
            use.trusts.add((ca, cell))
        if workload == RELAY:
            host = (setting(c, "--advertise-host") or "").replace("$(NODE_NAME)", SAMPLE_NODE)
            for secret in (served, cell):
                if secret:
                    use.names[secret].add(host)
        elif served:
            labels = template.get("metadata", {}).get("labels", {})
            for service in objs:
                if service.get("kind") == "Service" and selects(
                    {"matchLabels": service["spec"].get("selector", {})}, labels
                ):
                    svc = service["metadata"]["name"]
                    use.names[served].update({svc, f"{svc}.{NAMESPACE}.svc"})
    if len(set(cells)) != 1:
        problems.append(f"relays and control plane hold different cell certificates {cells}")
    return problems


def _probe_problems(objs: list[Manifest]) -> list[str]:
    """httpGet probes speak HTTPS exactly on the ports that serve TLS; etcdctl has its certs."""
    problems: list[str] = []
    for workload, template in pod_templates(objs):
        for c in containers(template):
            args = argv(c)
            tls_ports = set()
            if setting(c, "--tls-cert"):
                tls_ports.add(int(flag(args, "--http-port") or 0))
            if "--cert-file" in " ".join(args):
                for name in ("--listen-client-urls", "--listen-peer-urls"):
                    for url in (flag(args, name) or "").split(","):
                        if url.startswith("https://"):
                            tls_ports.add(urlsplit(url).port or 0)
            for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
                probe = c.get(kind, {})
                where = f"{workload} container {c.get('name')} {kind}"
                http = probe.get("httpGet")
                if http is not None:
                    port = port_number(c, http.get("port"))
                    scheme = http.get("scheme", "HTTP")
                    if (port in tls_ports) != (scheme == "HTTPS"):
                        problems.append(f"{where}: {scheme} on port {port}")
                command = " ".join(str(s) for s in probe.get("exec", {}).get("command", []))
                if "etcdctl" in command and not (
                    "--cacert" in command or "ETCDCTL_CACERT" in env_values(c)
                ):
                    problems.append(f"{where}: etcdctl without its certificates")
    return problems


def _monitor_problems(objs: list[Manifest], use: Usage) -> list[str]:
    """Prometheus scrapes HTTPS where /metrics is TLS, checking the server's name."""
    problems: list[str] = []
    served = {CONTROL_PLANE: "control-plane-tls", RELAY: "relay-tls"}
    for monitor_name, workload, tls in (
        ("conclave-control-plane", CONTROL_PLANE, True),
        ("conclave-relay", RELAY, True),
        ("etcd", ETCD, False),
    ):
        monitor = find(objs, "PodMonitor", monitor_name)
        if monitor is None:
            problems.append(f"no PodMonitor/{monitor_name}")
            continue
        for endpoint in monitor["spec"].get("podMetricsEndpoints", []):
            where = f"PodMonitor/{monitor_name}"
            scheme = endpoint.get("scheme", "http")
            if scheme != ("https" if tls else "http"):
                problems.append(f"{where}: scheme {scheme}")
            if not tls:
                continue
            config = endpoint.get("tlsConfig", {})
            if config.get("insecureSkipVerify"):
                problems.append(f"{where}: does not check certificates")
            name = config.get("serverName")
            if not name:
                problems.append(f"{where}: no serverName (targets are pod IPs)")
            else:
                use.names[served[workload]].add(name)
            ca = config.get("ca", {}).get("secret", {}).get("name")
            if ca:
                use.trusts.add((ca, served[workload]))
    return problems


def mounted_secrets(objs: list[Manifest]) -> set[str]:
    """Every Secret a production pod mounts, and those PodMonitors read."""
    found = {
        v["secret"]["secretName"]
        for _, template in pod_templates(objs)
        for v in template.get("spec", {}).get("volumes", [])
        if "secret" in v
    }
    for monitor in (o for o in objs if o.get("kind") == "PodMonitor"):
        for endpoint in monitor["spec"].get("podMetricsEndpoints", []):
            for part in ("ca", "cert"):
                name = endpoint.get("tlsConfig", {}).get(part, {}).get("secret", {}).get("name")
                if name:
                    found.add(name)
    return found - NOT_CERTIFICATES
