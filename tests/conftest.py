"""Shared fixtures: a real etcd server per test session, run under uvloop."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import uvloop

from conclave.processes import EtcdServer
from conclave.store import EtcdStore

os.environ.setdefault("CONCLAVE_ICE_ADDRESSES", "127.0.0.1")


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
