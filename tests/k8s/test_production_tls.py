"""k8s/overlays/production runs every hop over TLS with certificates from Secrets, and
k8s/cert-manager/ produces exactly those Secrets (docs/operations.md, "TLS in
Kubernetes"). Each broken variant shows that a check finds what it looks for.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.k8s import cert_manager, policy, tls
from tests.k8s.manifests import K8S, Manifest, name_of, render, render_directory

CERT_MANAGER = K8S / "cert-manager"
# Hops that must not share a CA: a certificate of one would be accepted on another.
TRUST_DOMAINS = {
    "etcd-server-tls": "etcd clients",
    "etcd-client-tls": "etcd clients",
    "etcd-peer-tls": "etcd peers",
    "cell-tls": "relay gRPC",
    "control-plane-tls": "control plane API",
    "relay-tls": "public",
}


def problems(objs: list[Manifest]) -> list[str]:
    return tls.production_problems(objs)[0]


def certificates() -> dict[str, Manifest]:
    """Certificate objects by the Secret they write (the last one if several do)."""
    return {
        o["spec"]["secretName"]: o
        for o in render_directory(CERT_MANAGER)
        if o.get("kind") == "Certificate"
    }


def test_production_talks_tls_everywhere() -> None:
    assert problems(render("production")) == []


def test_dev_stays_plain() -> None:
    """The throw-away overlay has none of it: the checks do look at something."""
    found = problems(render("dev"))
    assert any("etcd endpoint http://etcd-client:2379 is not https" in p for p in found)
    assert any("--cert-file not set" in p for p in found)
    assert tls.mounted_secrets(render("dev")) == set()


def test_production_mounts_every_certificate_secret() -> None:
    assert tls.mounted_secrets(render("production")) == set(TRUST_DOMAINS)


def test_cert_manager_is_not_applied_with_the_overlay() -> None:
    """Its CRDs may not be installed; `apply -k` of the overlay must not need them."""
    for overlay in ("dev", "production"):
        assert not [o for o in render(overlay) if "cert-manager.io" in o.get("apiVersion", "")]
    text = (K8S / "overlays" / "production" / "kustomization.yaml").read_text()
    assert "cert-manager" not in text.replace("k8s/cert-manager/", "")


def test_cert_manager_objects_pass_their_schema() -> None:
    objs = render_directory(CERT_MANAGER)
    assert objs
    assert [p for o in objs for p in cert_manager.schema_problems(o)] == []
    for obj in objs:
        if obj["kind"] != "ClusterIssuer":
            assert obj["metadata"]["namespace"] == policy.NAMESPACE, name_of(obj)


def test_cert_manager_schema_rejects_a_misspelt_field() -> None:
    certificate = dict(certificates()["cell-tls"])
    certificate["spec"] = {**certificate["spec"], "dnsName": ["x"]}
    assert any("dnsName" in p for p in cert_manager.schema_problems(certificate))
    certificate["spec"] = {**certificate["spec"], "usages": ["server-auth"]}
    assert cert_manager.schema_problems(certificate) != []


def test_every_issuer_exists_and_every_ca_is_issued() -> None:
    objs = render_directory(CERT_MANAGER)
    issuers = {(o["kind"], o["metadata"]["name"]): o for o in objs if o["kind"].endswith("Issuer")}
    by_secret = certificates()
    for certificate in by_secret.values():
        assert cert_manager.issuer_of(objs, certificate) in issuers, name_of(certificate)
    for issuer in issuers.values():
        ca = issuer["spec"].get("ca")
        if ca is not None:
            assert by_secret[ca["secretName"]]["spec"].get("isCA") is True


def test_each_mounted_secret_comes_from_exactly_one_certificate() -> None:
    made = [
        o["spec"]["secretName"]
        for o in render_directory(CERT_MANAGER)
        if o["kind"] == "Certificate"
    ]
    for secret in tls.mounted_secrets(render("production")):
        assert made.count(secret) == 1, secret
    assert len(made) == len(set(made))


def test_certificates_have_the_usages_and_names_the_overlay_needs() -> None:
    _, use = tls.production_problems(render("production"))
    by_secret = certificates()
    assert set(use.usages) == set(TRUST_DOMAINS)
    for secret, usages in use.usages.items():
        spec = by_secret[secret]["spec"]
        assert usages <= set(spec.get("usages", [])), secret
        assert spec.get("isCA") is not True, secret
        if tls.SERVER not in usages:  # a client certificate is no server, nor a peer
            assert tls.SERVER not in spec.get("usages", []), secret
    assert use.names["relay-tls"]
    for secret, hosts in use.names.items():
        for host in hosts:
            assert cert_manager.covers(by_secret[secret], host), f"{secret} lacks {host}"


def test_each_ca_file_trusts_the_issuer_of_the_other_side() -> None:
    _, use = tls.production_problems(render("production"))
    objs = render_directory(CERT_MANAGER)
    by_secret = certificates()
    assert use.trusts
    for ca, cert in use.trusts:
        issuers = {cert_manager.issuer_of(objs, by_secret[s]) for s in (ca, cert)}
        assert len(issuers) == 1, f"{ca}'s ca.crt does not sign {cert}"


def test_hops_do_not_share_a_ca() -> None:
    objs = render_directory(CERT_MANAGER)
    domains: dict[tuple[str, str], set[str]] = {}
    for secret, certificate in certificates().items():
        if secret in TRUST_DOMAINS:
            issuer = cert_manager.issuer_of(objs, certificate)
            domains.setdefault(issuer, set()).add(TRUST_DOMAINS[secret])
    assert all(len(d) == 1 for d in domains.values()), domains


def test_relay_certificate_is_public_and_internal_ones_are_not() -> None:
    objs = render_directory(CERT_MANAGER)
    by_secret = certificates()
    kind, name = cert_manager.issuer_of(objs, by_secret["relay-tls"])
    issuer = next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)
    assert "acme" in issuer["spec"]
    for secret in set(TRUST_DOMAINS) - {"relay-tls"}:
        kind, name = cert_manager.issuer_of(objs, by_secret[secret])
        issuer = next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)
        assert "ca" in issuer["spec"], secret


def test_wildcards_cover_one_label() -> None:
    certificate = {"spec": {"dnsNames": ["*.relays.example.com"], "ipAddresses": ["127.0.0.1"]}}
    assert cert_manager.covers(certificate, "node-1.relays.example.com")
    assert not cert_manager.covers(certificate, "a.node-1.relays.example.com")
    assert not cert_manager.covers(certificate, "relays.example.com")
    assert cert_manager.covers(certificate, "127.0.0.1")
    assert not cert_manager.covers(certificate, "10.0.0.1")


# Broken variants ------------------------------------------------------------------


def _container(objs: list[Manifest], workload: str, name: str) -> Manifest:
    c = policy.container(policy.template_of(objs, workload), name)
    assert c is not None
    return c


def _plain_relay_etcd(objs: list[Manifest]) -> None:
    c = _container(objs, policy.RELAY, "relay")
    c["args"] = ["http://etcd-client:2379" if a.startswith("https://") else a for a in c["args"]]


def _plain_drain(objs: list[Manifest]) -> None:
    command = _container(objs, policy.RELAY, "relay")["lifecycle"]["preStop"]["exec"]["command"]
    command[2] = command[2].replace("https://", "http://")


def _no_rpc_env(objs: list[Manifest]) -> None:
    c = _container(objs, policy.CONTROL_PLANE, "control-plane")
    c["env"] = [e for e in c["env"] if e["name"] != "CONCLAVE_RPC_KEY"]


def _unmounted(objs: list[Manifest]) -> None:
    c = _container(objs, policy.RELAY, "relay")
    c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "etcd-tls"]


def _writable_mount(objs: list[Manifest]) -> None:
    c = _container(objs, policy.CONTROL_PLANE, "control-plane")
    for m in c["volumeMounts"]:
        m.pop("readOnly", None)


def _emptydir_certs(objs: list[Manifest]) -> None:
    template = policy.template_of(objs, policy.RELAY)
    assert template is not None
    for v in template["spec"]["volumes"]:
        if v["name"] == "tls":
            del v["secret"]
            v["emptyDir"] = {}


def _plain_peers(objs: list[Manifest]) -> None:
    c = _container(objs, policy.ETCD, "etcd")
    c["args"] = [a.replace("https://", "http://") if "peer-urls" in a else a for a in c["args"]]


def _no_client_auth(objs: list[Manifest]) -> None:
    c = _container(objs, policy.ETCD, "etcd")
    c["args"] = [a for a in c["args"] if not a.startswith("--client-cert-auth")]


def _snapshot_without_cert(objs: list[Manifest]) -> None:
    c = _container(objs, policy.SNAPSHOT, "save")
    c["args"] = [a for a in c["args"] if not a.startswith("--cert=")]


def _http_probe(objs: list[Manifest]) -> None:
    del _container(objs, policy.RELAY, "relay")["readinessProbe"]["httpGet"]["scheme"]


def _https_metrics_probe(objs: list[Manifest]) -> None:
    _container(objs, policy.ETCD, "etcd")["livenessProbe"]["httpGet"]["scheme"] = "HTTPS"


def _etcdctl_probe(objs: list[Manifest]) -> None:
    c = _container(objs, policy.SNAPSHOT, "save")
    c["livenessProbe"] = {"exec": {"command": ["etcdctl", "endpoint", "health"]}}


def _plain_scrape(objs: list[Manifest]) -> None:
    monitor = policy.find(objs, "PodMonitor", "conclave-control-plane")
    assert monitor is not None
    monitor["spec"]["podMetricsEndpoints"][0]["scheme"] = "http"


def _no_server_name(objs: list[Manifest]) -> None:
    monitor = policy.find(objs, "PodMonitor", "conclave-relay")
    assert monitor is not None
    del monitor["spec"]["podMetricsEndpoints"][0]["tlsConfig"]


def _two_cells(objs: list[Manifest]) -> None:
    template = policy.template_of(objs, policy.RELAY)
    assert template is not None
    for v in template["spec"]["volumes"]:
        if v["name"] == "cell-tls":
            v["secret"]["secretName"] = "relay-cell-tls"


BROKEN: dict[str, tuple[Callable[[list[Manifest]], None], str]] = {
    "relay dials etcd in clear": (_plain_relay_etcd, "etcd endpoint http://etcd-client"),
    "drain dials etcd in clear": (_plain_drain, "plain http://etcd-client"),
    "control plane without rpc key": (_no_rpc_env, "--rpc-key not set"),
    "certificate not mounted": (_unmounted, "nothing is mounted at /var/run/conclave/etcd-tls"),
    "writable certificates": (_writable_mount, "is not mounted read-only"),
    "certificate not from a Secret": (_emptydir_certs, "is not a Secret volume"),
    "peers in clear": (_plain_peers, "--listen-peer-urls is not https"),
    "etcd takes any client": (_no_client_auth, "--client-cert-auth is not on"),
    "snapshot without certificate": (_snapshot_without_cert, "--cert not set"),
    "HTTP probe on an HTTPS port": (_http_probe, "readinessProbe: HTTP on port 7880"),
    "HTTPS probe on etcd metrics": (_https_metrics_probe, "livenessProbe: HTTPS on port 2381"),
    "etcdctl probe in clear": (_etcdctl_probe, "etcdctl without its certificates"),
    "control plane scraped in clear": (_plain_scrape, "scheme http"),
    "relay scraped without a name": (_no_server_name, "no serverName"),
    "two cell certificates": (_two_cells, "different cell certificates"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_tls_checks_reject(case: str) -> None:
    breaks, expected = BROKEN[case]
    objs = render("production")
    breaks(objs)
    found = problems(objs)
    assert any(expected in problem for problem in found), found
