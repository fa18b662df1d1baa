"""Shared fixtures: a real etcd server per test session, run under uvloop."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import uvloop

from conclave.credentials import new_key, save_key_file
from conclave.processes import EtcdServer
from conclave.store import EtcdStore

os.environ.setdefault("CONCLAVE_ICE_ADDRESSES", "127.0.0.1")
# One API key for the whole run, as `conclave dev` makes one: every control plane
# the tests start registers it, every client signs with it (conclave/credentials.py).
# Never the user's own ~/.config key.
# Nor the user's development CA: a client that finds one talks TLS
# (conclave/tls.py find_ca_file); tests that want TLS name their CA, and tests
# that run `conclave dev` give it a config directory of its own (tests/dev_cluster.py).
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="conclave-test-config-")
os.environ.pop("CONCLAVE_CA_FILE", None)
if "CONCLAVE_API_KEY_FILE" not in os.environ:
    _key_dir = Path(tempfile.mkdtemp(prefix="conclave-test-key-"))
    os.environ["CONCLAVE_API_KEY_FILE"] = str(_key_dir / "api-key.json")
    save_key_file(new_key("tests"), _key_dir / "api-key.json")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
    """Every async test runs on uvloop, as the servers do."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    server = EtcdServer()
    server.start()
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture
def etcd_endpoint(etcd_server: EtcdServer) -> str:
    return etcd_server.endpoint


@pytest.fixture
async def store(etcd_endpoint: str) -> AsyncIterator[EtcdStore]:
    s = EtcdStore([etcd_endpoint])
    await s.connect()
    yield s
    await s.close()
