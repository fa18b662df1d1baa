"""The relay nodes a meeting spans, from either server (cascading, issue 9).

A meeting's *home* node is its placement, `/conclave/placement/{room_id}`
(conclave/placements.py). Every further node it gains has a span key,
`/conclave/spans/{room_id}/{node_id}`, valued like a placement and attached to
**that node's** lease: a relay that dies leaves every meeting's node set by itself.
The node set is the home and the span nodes (callers check which are alive).

Nodes are added only by the control plane, each addition one transaction fenced on
the placement key (`add`): of concurrent additions by several replicas exactly one
commits, the others re-read and decide again. A draining relay removes its own span
keys (`leave_all`); ending or expiring a meeting removes them all (`forget_meeting`).
"""

from __future__ import annotations

from conclave.placements import encode_placement, placed_node, placement_key
from conclave.store import EtcdStore

SPANS_PREFIX = "/conclave/spans/"


def room_prefix(room_id: str) -> str:
    """The span keys of one meeting."""
    return f"{SPANS_PREFIX}{room_id}/"


def span_key(room_id: str, node_id: str) -> str:
    return room_prefix(room_id) + node_id


def parse_span_name(name: str) -> tuple[str, str] | None:
    """(room id, node id) of a span key with SPANS_PREFIX cut off; None if malformed."""
    room_id, slash, node_id = name.partition("/")
    return (room_id, node_id) if slash and room_id and node_id else None


async def span_nodes(store: EtcdStore, room_id: str) -> set[str]:
    """The nodes of the meeting's span keys (not its home), as stored."""
    prefix = room_prefix(room_id)
    items, _ = await store.get_prefix(prefix)
    return {key[len(prefix) :] for key in items if len(key) > len(prefix)}


async def meeting_nodes(store: EtcdStore, room_id: str) -> set[str]:
    """The home and the span nodes of the meeting, as stored (alive or not)."""
    nodes = await span_nodes(store, room_id)
    raw = await store.get(placement_key(room_id))
    home = placed_node(raw) if raw is not None else None
    if home is not None:
        nodes.add(home)
    return nodes


async def is_member(store: EtcdStore, room_id: str, node_id: str) -> bool:
    """Whether `node_id` is the meeting's home or one of its span nodes."""
    if await store.get(span_key(room_id, node_id)) is not None:
        return True
    raw = await store.get(placement_key(room_id))
    return raw is not None and placed_node(raw) == node_id


async def read_home(store: EtcdStore, room_id: str) -> tuple[str | None, bytes, int, int]:
    """The meeting's home node as etcd has it now, with what `add` fences on:
    (node id or None, placement value, mod_revision, lease)."""
    raw, revision, lease = await store.get_with_meta(placement_key(room_id))
    if raw is None:
        return None, b"", 0, 0
    return placed_node(raw), raw, revision, lease


async def add(
    store: EtcdStore,
    room_id: str,
    node_id: str,
    node_lease: int,
    home: tuple[bytes, int, int],
) -> bool:
    """Add `node_id` to the meeting, fenced on its placement as `read_home` saw it
    (`home`: value, mod_revision, lease): one transaction that rewrites the
    placement unchanged (same value, same lease) and creates the span key under
    the node's lease. False when the placement changed since the read (another
    replica added a node, or the meeting moved) or the span key exists: re-read and
    decide again. Raises etcd's NOT_FOUND when either lease is gone.
    """
    value, revision, lease = home
    return await store.put_fenced(
        (placement_key(room_id), value, revision, lease),
        span_key(room_id, node_id),
        encode_placement(node_id),
        node_lease,
    )


async def leave_all(store: EtcdStore, node_id: str) -> int:
    """Delete every span key naming `node_id` (a draining relay); returns how many."""
    items, _ = await store.get_prefix(SPANS_PREFIX)
    deleted = 0
    for key in items:
        parsed = parse_span_name(key[len(SPANS_PREFIX) :])
        if parsed is not None and parsed[1] == node_id and await store.delete(key):
            deleted += 1
    return deleted


async def forget_meeting(store: EtcdStore, room_id: str) -> None:
    """Delete every span key of the meeting (it ended or expired)."""
    await store.delete_prefix(room_prefix(room_id))
