"""Signing join grants with a per-replica Ed25519 key that relays find in etcd.

The private key lives in this process's memory only; the public key is published
under this replica's lease, so it disappears from etcd when the replica stops or
dies and grants it signed stop verifying once relays notice.

The key is replaced every `rotation_s` (an hour by default; docs/security.md, "Key
rotation"): the new public key is published first, grants are signed with it from
then on, and the old one stays published until every grant it signed has expired,
so a rotation never turns a valid grant away.
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
from protos.grants import MAX_GRANT_LIFETIME_S, encode_public_key, key_id_for, sign

log = logging.getLogger(__name__)

GRANT_LIFETIME_S = 30.0
KEY_LEASE_TTL_S = 10
ROTATION_S = 3600.0
# A retired key stays published this long: longer than any grant relays accept.
RETIRE_AFTER_S = MAX_GRANT_LIFETIME_S + 10


class GrantSigner:
    """Holds this replica's signing key, keeps its public half in etcd, issues grants."""

    def __init__(
        self,
        store: EtcdStore,
        *,
        lease_ttl: int = KEY_LEASE_TTL_S,
        lifetime_s: float = GRANT_LIFETIME_S,
        rotation_s: float = ROTATION_S,
        retire_after_s: float = RETIRE_AFTER_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._lease_ttl = lease_ttl
        self._lifetime_ms = int(lifetime_s * 1000)
        self._rotation_s = rotation_s
        self._retire_after_s = retire_after_s
        self._clock = clock
        self._private_key = Ed25519PrivateKey.generate()
        self.public_key: Ed25519PublicKey = self._private_key.public_key()
        self.key_id = key_id_for(self.public_key)
        # Every public key relays must still find: the current one and those retiring.
        self._published: dict[str, Ed25519PublicKey] = {self.key_id: self.public_key}
        self.rotations = 0
        self._lease: Lease | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def etcd_key(self) -> str:
        return GRANT_KEYS_PREFIX + self.key_id

    async def start(self) -> None:
        """Publish the public key under a fresh lease, keep it published, rotate."""
        await self._publish()
        self._tasks.append(asyncio.create_task(self._republish_when_lost(), name="grant-key guard"))
        if self._rotation_s > 0:
            self._tasks.append(
                asyncio.create_task(self._rotate_forever(), name="grant-key rotation")
            )

    async def rotate(self) -> None:
        """Sign with a new key from now on. Its public half is in etcd before the
        first grant it signs; the old one stays there `retire_after_s` longer."""
        private_key = Ed25519PrivateKey.generate()
        public_key = private_key.public_key()
        key_id = key_id_for(public_key)
        assert self._lease is not None
        await self._store.put(
            GRANT_KEYS_PREFIX + key_id, encode_public_key(public_key), self._lease
        )
        self._published[key_id] = public_key
        old = self.key_id
        self._private_key, self.public_key, self.key_id = private_key, public_key, key_id
        self.rotations += 1
        log.info("grant-signing key %s replaces %s", key_id, old)
        self._tasks.append(asyncio.create_task(self._retire(old), name="grant-key retire"))

    async def _retire(self, key_id: str) -> None:
        await asyncio.sleep(self._retire_after_s)
        self._published.pop(key_id, None)
        try:
            await self._store.delete(GRANT_KEYS_PREFIX + key_id)
        except Exception as exc:  # it goes with the lease at the latest
            log.warning("retiring a grant-signing key failed: %s", type(exc).__name__)

    async def _rotate_forever(self) -> None:
        while True:
            await asyncio.sleep(self._rotation_s)
            try:
                await self.rotate()
            except Exception as exc:  # the current key stays; the next period tries again
                log.warning("rotating the grant-signing key failed: %s", type(exc).__name__)

    async def stop(self) -> None:
        """Revoke the lease: the public keys leave etcd now, not after the TTL."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
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
            for key_id, public_key in list(self._published.items()):
                await self._store.put(
                    GRANT_KEYS_PREFIX + key_id, encode_public_key(public_key), lease
                )
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
