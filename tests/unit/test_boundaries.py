"""Package boundaries (docs/architecture.md): servers can never hold media keys, and
relay and control plane share only protos/ and conclave/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {"relay", "control_plane", "client", "protos", "conclave", "bench", "tests"}
ALLOWED = {
    "relay": {"relay", "protos", "conclave"},
    "control_plane": {"control_plane", "protos", "conclave"},
    "protos": {"protos"},
}


def imported_packages(package: str) -> dict[str, set[str]]:
    """Top-level packages of ours imported by each module of `package`."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = {n.split(".")[0] for n in names} & OURS
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_may(package: str) -> None:
    wrong = {
        module: sorted(imports - ALLOWED[package])
        for module, imports in imported_packages(package).items()
        if imports - ALLOWED[package]
    }
    assert not wrong, f"{package}/ imports packages it must not: {wrong}"


@pytest.mark.parametrize("entry", ["relay.main", "control_plane.main"])
def test_servers_never_load_the_e2ee_code(entry: str) -> None:
    code = f"import sys, {entry}; print(any(m.startswith('client') for m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
