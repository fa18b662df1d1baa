"""Releasing a meeting's placement, from either server, without racing a new one.

`/conclave/placement/{room_id}` names the relay hosting a meeting (written by the
control plane, control_plane/placer.py). Two parties take it away again before the
relay's lease would: a draining relay (relay/drain.py), so that the next JoinRoom
places the meeting elsewhere, and the control plane when a rejoining client reports
a relay that no longer answers (control_plane/failover.py). Either must delete the
placement only while it still names that node: by the time the delete runs, another
replica may already have placed the meeting again, and that placement must stay.
So the delete is one etcd transaction that compares the value it read.
"""

from __future__ import annotations

import json

from conclave.store import PLACEMENT_PREFIX, EtcdStore


def placement_key(room_id: str) -> str:
    return PLACEMENT_PREFIX + room_id


def encode_placement(node_id: str) -> bytes:
    """The placement value; identical bytes for every meeting on one node (cheap to
    count, and what a value-compared delete compares)."""
    return json.dumps({"node_id": node_id}).encode()


def placed_node(raw: bytes) -> str | None:
    """The node id a placement value names; None for a value that is not one."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    node_id = data.get("node_id") if isinstance(data, dict) else None
    return node_id if isinstance(node_id, str) and node_id else None


async def release(store: EtcdStore, room_id: str, node_id: str) -> bool:
    """Delete the meeting's placement if, and only while, it names `node_id`.

    True when this call deleted it; False when there was none, it names another
    node, or it changed between the read and the delete.
    """
    key = placement_key(room_id)
    raw = await store.get(key)
    if raw is None or placed_node(raw) != node_id:
        return False
    return await store.delete_if_value(key, raw)


async def placements_of(store: EtcdStore, node_id: str) -> dict[str, bytes]:
    """room id -> placement value, for every meeting placed on `node_id` now."""
    items, _ = await store.get_prefix(PLACEMENT_PREFIX)
    return {
        key[len(PLACEMENT_PREFIX) :]: raw
        for key, raw in items.items()
        if placed_node(raw) == node_id
    }
