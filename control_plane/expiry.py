"""Cleaning up after meetings that expired.

A meeting's record is on an expiring etcd lease (control_plane/service.py): when it
runs out etcd deletes the record, but the placement is on the relay's lease and
would stay for as long as the relay lives. Every replica watches the rooms prefix
and deletes the placement of a meeting whose record is gone; deleting a key that
is already gone is harmless, so replicas need not agree on who does it. The one
whose delete removed the key also asks the relay to close the meeting (the relay
notices the deleted record by itself too).

The meeting's span keys (the further relays it was on, conclave/spans.py) go
with its placement.

At start, and whenever the watch has to be re-established, a sweep deletes every
placement and span key whose meeting has no record (one that expired while no
replica watched).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from conclave import spans
from conclave.store import PLACEMENT_PREFIX, ROOMS_PREFIX, EtcdStore
from control_plane.errors import RelayUnavailable
from control_plane.ids import RoomId
from control_plane.records import NodeInfo, decode_placement, placement_key
from control_plane.registry import NodeRegistry
from control_plane.relay_client import RelayClient

log = logging.getLogger(__name__)

RETRY_S = 0.5


class ExpiryWatcher:
    """`await start()` sweeps and starts watching; `await stop()` ends it."""

    def __init__(self, store: EtcdStore, registry: NodeRegistry, relays: RelayClient) -> None:
        self._store = store
        self._registry = registry
        self._relays = relays
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self.cleaned = 0  # placements this replica deleted (for tests and metrics)

    async def start(self) -> None:
        revision = await self.sweep()
        self._task = asyncio.create_task(self._follow(revision + 1), name="meeting expiry")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._closing) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None
        self._closing.clear()

    async def sweep(self) -> int:
        """Delete placements of meetings without a record; returns the revision the
        records were read at (the watch continues from there).

        Placements are read first: a meeting's record is written before it is
        placed, so a placement seen without a record read later is one whose
        meeting is gone, never one being created."""
        placements, _ = await self._store.get_prefix(PLACEMENT_PREFIX)
        spanned, _ = await self._store.get_prefix(spans.SPANS_PREFIX)
        rooms, revision = await self._store.get_prefix(ROOMS_PREFIX)
        for key, raw in placements.items():
            room_id = key[len(PLACEMENT_PREFIX) :]
            if ROOMS_PREFIX + room_id not in rooms:
                await self._gone(RoomId(room_id), raw)
        orphans = {
            parsed[0]
            for key in spanned
            if (parsed := spans.parse_span_name(key[len(spans.SPANS_PREFIX) :])) is not None
            and ROOMS_PREFIX + parsed[0] not in rooms
        }
        for room_id in sorted(orphans):
            with contextlib.suppress(Exception):
                await spans.forget_meeting(self._store, room_id)
            self._registry.forget_spans(RoomId(room_id))
        return revision

    async def _follow(self, revision: int) -> None:
        while True:
            try:
                async for event in self._store.watch_prefix(ROOMS_PREFIX, revision):
                    if event.kind == "delete":
                        await self._gone(RoomId(event.key[len(ROOMS_PREFIX) :]))
                log.warning("meeting expiry watch ended; sweeping and watching again")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("meeting expiry watch failed (%s); retrying", type(exc).__name__)
                log.debug("expiry watch failure", exc_info=True)
            await asyncio.sleep(RETRY_S)
            with contextlib.suppress(Exception):
                revision = await self.sweep() + 1

    async def _gone(self, room_id: RoomId, placement: bytes | None = None) -> None:
        """The meeting's record is gone: drop its placement and spans (idempotent)."""
        node_id = self._registry.placement(room_id)
        if node_id is None and placement is not None:
            with contextlib.suppress(ValueError):
                node_id = decode_placement(placement)
        try:
            deleted = await self._store.delete(placement_key(room_id))
            await spans.forget_meeting(self._store, room_id)
        except Exception as exc:
            log.warning("deleting an expired meeting's placement failed (%s)", type(exc).__name__)
            return
        self._registry.forget_placement(room_id)
        self._registry.forget_spans(room_id)
        if not deleted:
            return
        self.cleaned += 1
        log.debug("room %s gone: placement on node %s deleted", room_id, node_id)
        node = self._registry.node(node_id) if node_id is not None else None
        if node is not None:
            task = asyncio.create_task(self._close(node, room_id), name="close room")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close(self, node: NodeInfo, room_id: RoomId) -> None:
        try:
            await self._relays.close_room(node, room_id)
        except RelayUnavailable as exc:
            log.debug("closing expired room %s: %s", room_id, exc)
