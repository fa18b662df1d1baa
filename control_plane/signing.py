"""Signing join grants with a per-replica Ed25519 key that relays find in etcd.

The private key lives in this process's memory only; the public key is published
under this replica's lease, so it disappears from etcd when the replica stops or
dies and grants it signed stop verifying once relays notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from conclave.store import GRANT_KEYS_PREFIX, EtcdStore, Lease
from control_plane.ids import NodeId, ParticipantId, RoomId
from protos.grant_pb2 import JoinGrant
from protos.grants import encode_public_key, key_id_for, sign

log = logging.getLogger(__name__)

GRANT_LIFETIME_S = 30.0
KEY_LEASE_TTL_S = 10


class GrantSigner:
    """Holds this replica's signing key, keeps its public half in etcd, issues grants."""

    def __init__(
        self,
        store: EtcdStore,
        *,
        lease_ttl: int = KEY_LEASE_TTL_S,
        lifetime_s: float = GRANT_LIFETIME_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._lease_ttl = lease_ttl
        self._lifetime_ms = int(lifetime_s * 1000)
        self._clock = clock
        self._private_key = Ed25519PrivateKey.generate()
        self.public_key: Ed25519PublicKey = self._private_key.public_key()
        self.key_id = key_id_for(self.public_key)
        self._lease: Lease | None = None
        self._guard: asyncio.Task[None] | None = None

    @property
    def etcd_key(self) -> str:
        return GRANT_KEYS_PREFIX + self.key_id

    async def start(self) -> None:
        """Publish the public key under a fresh lease and keep it published."""
        await self._publish()
        self._guard = asyncio.create_task(self._republish_when_lost(), name="grant-key guard")

    async def stop(self) -> None:
        """Revoke the lease: the public key leaves etcd now, not after the TTL."""
        if self._guard is not None:
            self._guard.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._guard
            self._guard = None
        if self._lease is not None:
            await self._lease.revoke()
            self._lease = None

    def issue(
        self,
        room_id: RoomId,
        participant_id: ParticipantId,
        node_id: NodeId,
        display_name: str,
        *,
        sources: Sequence[str],
        can_subscribe: bool,
        node_lease: int = 0,
        role: str = "participant",
        source_tag: str = "",
        rejoin_of: str = "",
    ) -> tuple[str, int]:
        """A signed grant for one join on one node, and on that node's current run
        (its etcd lease): (token, expires_at_ms). `sources` is what it may publish
        (empty: nothing); `source_tag` the HMAC of the address it was asked from;
        `rejoin_of` the admitted participant it replaces (conclave/rejoin.py)."""
        issued_at_ms = int(self._clock() * 1000)
        expires_at_ms = issued_at_ms + self._lifetime_ms
        grant = JoinGrant(
            room_id=room_id,
            participant_id=participant_id,
            node_id=node_id,
            display_name=display_name,
            sources=list(sources),
            can_subscribe=can_subscribe,
            expires_at_ms=expires_at_ms,
            node_lease=node_lease,
            role=role,
            source_tag=source_tag,
            rejoin_of=rejoin_of,
            issued_at_ms=issued_at_ms,
        )
        return sign(grant, self._private_key), expires_at_ms

    async def _publish(self) -> None:
        lease = await self._store.grant_lease(self._lease_ttl)
        try:
            await self._store.put(self.etcd_key, encode_public_key(self.public_key), lease)
        except BaseException:
            await lease.revoke()
            raise
        self._lease = lease
        log.info("grant-signing key %s published", self.key_id)

    async def _republish_when_lost(self) -> None:
        """After a partition longer than the TTL etcd drops the key; put it back."""
        while True:
            assert self._lease is not None
            await self._lease.lost.wait()
            log.warning("grant-signing lease lost; publishing key %s again", self.key_id)
            await self._lease.revoke()
            while True:
                try:
                    await self._publish()
                    break
                except Exception as exc:
                    log.warning("publishing the grant-signing key failed: %s", exc)
                    await asyncio.sleep(1.0)
