"""Rejoin tokens: coming back to a meeting after a lost connection.

When a relay dies, its participants ask the control plane for a new grant and land
on another relay as new participants. A waiting room or a lock would then keep out
people who were already inside. So the relay gives each participant a random token
in `joined` and keeps its SHA-256 under /conclave/rejoin/{room_id}/{participant_id},
on the meeting's own lease (it goes with the meeting). JoinRoom with the old
participant id and the token issues a grant marked `rejoin_of`, which the relay lets
past the waiting room and the lock; the passcode and removals still apply.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from conclave.store import EtcdStore

REJOIN_PREFIX = "/conclave/rejoin/"
TOKEN_BYTES = 18


def room_prefix(room_id: str) -> str:
    """Every rejoin token of a meeting (deleted with it)."""
    return f"{REJOIN_PREFIX}{room_id}/"


def rejoin_key(room_id: str, participant_id: str) -> str:
    return room_prefix(room_id) + participant_id


def new_token() -> tuple[str, str]:
    """(the token for the participant, the digest to store)."""
    token = base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES)).decode()
    return token, _digest(token)


async def record(
    store: EtcdStore, room_id: str, participant_id: str, digest: str, lease: int
) -> None:
    await store.put(rejoin_key(room_id, participant_id), digest.encode(), lease)


async def check(store: EtcdStore, room_id: str, participant_id: str, token: str) -> bool:
    """Whether `token` is the one given to `participant_id` in this meeting."""
    if not participant_id or not token or len(token) > 64 or "/" in participant_id:
        return False
    stored = await store.get(rejoin_key(room_id, participant_id))
    return stored is not None and hmac.compare_digest(stored.decode(), _digest(token))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
