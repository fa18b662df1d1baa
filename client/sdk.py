"""The Conclave client SDK, its public surface in one place: `RoomsClient` for the
control plane (client/rooms.py) and `Session` for a meeting connection to a relay
(client/session.py), and `join`, which puts the two together into a session that
follows its meeting from relay to relay."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from client.errors import AdmissionRefused, ConclaveError
from client.rooms import (
    CONTROL_PLANE_ENV,
    DEFAULT_CONTROL_PLANE,
    RoomsClient,
    control_plane_target,
)
from client.session import KINDS, SOURCES, RemoteStats, RemoteStream, Session

FULL_RETRIES = 3  # joins again after a relay said node_full or node_draining
NODE_REFUSALS = ("node_full", "node_draining")


async def join(
    rooms: RoomsClient,
    room_id: str,
    display_name: str,
    publish: Sequence[str] = KINDS,
    *,
    passcode: str = "",
    host_key: str = "",
    region: str = "",
    **options: Any,
) -> Session:
    """Join a meeting and return the started `Session`, which reconnects by itself
    through `rooms` (a draining or dead relay, a dropped connection) until
    `leave()`. `publish` is kinds as for `Session`; `region` asks for a relay in that
    region; `options` are `Session`'s keyword arguments (`e2ee`, `wait_timeout`,
    `reconnect_timeout`, ...). Keep `rooms` open for as long as the session lives.

    A relay that turns the join away as full is named in the next JoinRoom, which
    sends the joiner to another relay of the meeting (docs/cascading.md)."""
    full_node = ""
    for attempt in range(FULL_RETRIES + 1):
        grant = await rooms.join_room(
            room_id,
            display_name,
            bool(publish),
            passcode,
            host_key,
            region=region,
            full_node_id=full_node,
        )
        session = Session(
            grant,
            display_name,
            publish,
            rooms=rooms,
            passcode=passcode,
            host_key=host_key,
            region=region,
            **options,
        )
        try:
            await session.start()
        except ConclaveError as exc:
            if exc.code not in NODE_REFUSALS or attempt == FULL_RETRIES:
                raise
            full_node = grant.node_id if exc.code == "node_full" else ""
            continue
        return session
    raise AssertionError("unreachable")


__all__ = [
    "CONTROL_PLANE_ENV",
    "DEFAULT_CONTROL_PLANE",
    "KINDS",
    "SOURCES",
    "AdmissionRefused",
    "ConclaveError",
    "RemoteStats",
    "RemoteStream",
    "RoomsClient",
    "Session",
    "control_plane_target",
    "join",
]
