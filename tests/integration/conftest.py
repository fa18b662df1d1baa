"""Fixtures for tests that talk to a real relay process directly."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from conclave.store import EtcdStore
from tests.integration.relay_harness import GrantMinter, RelayProcess


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
