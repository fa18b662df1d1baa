"""Fixtures for tests that talk to a real relay process directly, and for modules
that need an etcd and a control plane of their own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from conclave.processes import EtcdServer
from conclave.store import EtcdStore
from tests.integration.relay_harness import (
    ControlPlaneProcess,
    GrantMinter,
    RelayProcess,
    running,
)


@pytest.fixture
async def relay(etcd_endpoint: str) -> AsyncIterator[RelayProcess]:
    process = RelayProcess(f"relay-{uuid.uuid4().hex[:8]}", etcd_endpoint)
    await process.start()
    yield process
    await process.stop()


@pytest.fixture
async def minter(store: EtcdStore) -> GrantMinter:
    minter = GrantMinter(store)
    await minter.publish()
    return minter


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def etcd() -> AsyncIterator[EtcdServer]:
    """A dedicated etcd: the control plane must see only this module's relays."""
    async with running(EtcdServer()) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def control_plane(etcd: EtcdServer) -> AsyncIterator[str]:
    """`python -m control_plane` on this module's `etcd`: its gRPC address."""
    process = ControlPlaneProcess(etcd.endpoint)
    try:
        await process.start()
        yield process.listen
    finally:
        await process.stop()
