"""The cert-manager objects of k8s/cert-manager/, checked without cert-manager.

kubernetes-validate has no schema for cert-manager's CRDs, so the fields these files
use of cert-manager.io/v1 are described here, closed like the built-in schemas: a
misspelt field is an error rather than silently ignored.
"""

from __future__ import annotations

import ipaddress

import jsonschema  # type: ignore[import-untyped]

from tests.k8s.manifests import Manifest, name_of

USAGES = [
    "signing", "digital signature", "content commitment", "key encipherment",
    "key agreement", "data encipherment", "cert sign", "crl sign", "encipher only",
    "decipher only", "any", "server auth", "client auth", "code signing",
    "email protection", "s/mime", "ipsec end system", "ipsec tunnel", "ipsec user",
    "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc",
]  # fmt: skip
_DURATION = {"type": "string", "pattern": "^([0-9]+(\\.[0-9]+)?(h|m|s))+$"}
_NAME = {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}


def _metadata(namespaced: bool) -> Manifest:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "namespace"] if namespaced else ["name"],
        "properties": {
            "name": _NAME,
            "namespace": {"type": "string"} if namespaced else {"not": {}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }


CERTIFICATE_SPEC: Manifest = {
    "type": "object",
    "additionalProperties": False,
    "required": ["secretName", "issuerRef"],
    "anyOf": [{"required": [f]} for f in ("commonName", "dnsNames", "ipAddresses")],
    "properties": {
        "secretName": _NAME,
        "isCA": {"type": "boolean"},
        "commonName": {"type": "string", "maxLength": 64},
        "duration": _DURATION,
        "renewBefore": _DURATION,
        "dnsNames": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "ipAddresses": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "usages": {"type": "array", "items": {"enum": USAGES}, "uniqueItems": True},
        "privateKey": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                "size": {"type": "integer"},
                "encoding": {"enum": ["PKCS1", "PKCS8"]},
                "rotationPolicy": {"enum": ["Never", "Always"]},
            },
        },
        "issuerRef": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": _NAME,
                "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                "group": {"const": "cert-manager.io"},
            },
        },
    },
}

ISSUER_SPEC: Manifest = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "maxProperties": 1,
    "properties": {
        "selfSigned": {"type": "object", "additionalProperties": False},
        "ca": {
            "type": "object",
            "additionalProperties": False,
            "required": ["secretName"],
            "properties": {"secretName": _NAME},
        },
        "acme": {
            "type": "object",
            "required": ["server", "privateKeySecretRef", "solvers"],
            "properties": {
                "server": {"type": "string", "pattern": "^https://"},
                "email": {"type": "string"},
                "privateKeySecretRef": {"type": "object", "required": ["name"]},
                "solvers": {"type": "array", "minItems": 1, "items": {"type": "object"}},
            },
        },
    },
}


def _object(kind: str, spec: Manifest, namespaced: bool) -> Manifest:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "cert-manager.io/v1"},
            "kind": {"const": kind},
            "metadata": _metadata(namespaced),
            "spec": spec,
        },
    }


SCHEMAS = {
    "Certificate": _object("Certificate", CERTIFICATE_SPEC, namespaced=True),
    "Issuer": _object("Issuer", ISSUER_SPEC, namespaced=True),
    "ClusterIssuer": _object("ClusterIssuer", ISSUER_SPEC, namespaced=False),
}


def schema_problems(obj: Manifest) -> list[str]:
    schema = SCHEMAS.get(str(obj.get("kind")))
    if schema is None or obj.get("apiVersion") != "cert-manager.io/v1":
        return [f"{name_of(obj)}: not a cert-manager.io/v1 Certificate or Issuer"]
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{name_of(obj)}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(obj)
    ]


def covers(certificate: Manifest, host: str) -> bool:
    """Whether a Certificate's SANs name `host` (a wildcard stands for one label)."""
    spec = certificate["spec"]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        return any(ipaddress.ip_address(ip) == address for ip in spec.get("ipAddresses", []))
    for name in spec.get("dnsNames", []):
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


def issuer_of(objs: list[Manifest], certificate: Manifest) -> tuple[str, str]:
    ref = certificate["spec"]["issuerRef"]
    return ref.get("kind", "Issuer"), ref["name"]
