"""The Conclave client SDK, its public surface in one place: `RoomsClient` for the
control plane (client/rooms.py) and `Session` for a meeting connection to a relay
(client/session.py)."""

from __future__ import annotations

from client.errors import AdmissionRefused, ConclaveError
from client.rooms import (
    CONTROL_PLANE_ENV,
    DEFAULT_CONTROL_PLANE,
    RoomsClient,
    control_plane_target,
)
from client.session import KINDS, SOURCES, RemoteStats, RemoteStream, Session

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
]
