"""What a relay writes about itself in etcd, as the control plane reads it."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from conclave.store import NODES_PREFIX, EtcdStore
from control_plane.records import NodeInfo
from tests.integration.relay_harness import RelayProcess


async def test_a_relay_names_its_region_and_the_control_plane_reads_it(
    etcd_endpoint: str, store: EtcdStore
) -> None:
    relay = RelayProcess("relay-region", etcd_endpoint, extra_args=["--region", "eu-west"])
    await relay.start()
    try:
        raw = await store.get(NODES_PREFIX + relay.node_id)
        assert raw is not None
        node = NodeInfo.from_json(raw)
        assert (node.node_id, node.region, node.draining) == ("relay-region", "eu-west", False)
    finally:
        await relay.stop()


async def test_a_node_without_a_region_says_none() -> None:
    node = NodeInfo.from_json(
        b'{"node_id": "n", "signal_url": "ws://h/ws", "rpc_address": "h:1", '
        b'"capacity": 10, "load": 0.0, "lease": 7}'
    )
    assert node.region == ""
    assert NodeInfo.from_json(node.to_json()) == node
    with pytest.raises(ValueError):
        NodeInfo.from_json(node.to_json().replace(b'"region": ""', b'"region": 5'))


async def test_a_malformed_region_is_refused_at_start(etcd_endpoint: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "--etcd", etcd_endpoint, "--node-id", "bad",
        "--region", "eu west; DROP", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert b"region" in err
