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


async def join(
    rooms: RoomsClient,
    room_id: str,
    display_name: str,
    publish: Sequence[str] = KINDS,
    *,
    passcode: str = "",
    host_key: str = "",
    **options: Any,
) -> Session:
    """Join a meeting and return the started `Session`, which reconnects by itself
    through `rooms` (a draining or dead relay, a dropped connection) until
    `leave()`. `publish` is kinds as for `Session`; `options` are `Session`'s
    keyword arguments (`e2ee`, `wait_timeout`, `reconnect_timeout`, ...). Keep
    `rooms` open for as long as the session lives."""
    grant = await rooms.join_room(room_id, display_name, bool(publish), passcode, host_key)
    session = Session(
        grant,
        display_name,
        publish,
        rooms=rooms,
        passcode=passcode,
        host_key=host_key,
        **options,
    )
    await session.start()
    return session


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
