"""Who may join: verify join grants against the control plane's public keys.

Keys come from etcd (`/conclave/keys/grant-signing/`), watched into memory. A
grant is single use: its nonce is remembered until the grant would expire anyway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from conclave.store import GRANT_KEYS_PREFIX, EtcdStore, PrefixCache
from protos import grants
from protos.grant_pb2 import JoinGrant

log = logging.getLogger(__name__)


class GrantChecker:
    """Signature, node, expiry (protos.grants) plus single use (here)."""

    def __init__(self, store: EtcdStore, node_id: str) -> None:
        self.node_id = node_id
        # The lease this node is registered under now (0 until registered).
        self.current_lease: Callable[[], int] = lambda: 0
        self._keys_cache = PrefixCache(store, GRANT_KEYS_PREFIX)
        self._seen_nonces: dict[bytes, int] = {}

    async def start(self) -> None:
        await self._keys_cache.start()

    async def stop(self) -> None:
        await self._keys_cache.stop()

    def _keys(self) -> dict[str, Ed25519PublicKey]:
        keys = {}
        for key_id, value in self._keys_cache.items.items():
            try:
                keys[key_id] = grants.decode_public_key(value)
            except ValueError:
                log.warning("ignoring a malformed grant-signing key in etcd")
        return keys

    async def check(self, token: str) -> JoinGrant:
        """The verified grant, or `grants.GrantError`."""
        if grants.peek_key_id(token) not in self._keys_cache.items:
            await self._keys_cache.refresh()  # a key published a moment ago
        now_ms = int(time.time() * 1000)
        grant = grants.verify(token, self._keys(), self.node_id, now_ms)
        if grant.node_lease != self.current_lease():
            # Issued for an earlier run of this node id, whose nonces we never saw.
            raise grants.GrantError("stale_node", "grant is for an earlier run of this node")
        self._forget_expired(now_ms)
        if grant.nonce in self._seen_nonces:
            raise grants.GrantError("replayed", "grant was already used")
        self._seen_nonces[grant.nonce] = grant.expires_at_ms
        return grant

    def _forget_expired(self, now_ms: int) -> None:
        expired = [n for n, exp in self._seen_nonces.items() if exp <= now_ms]
        for nonce in expired:
            del self._seen_nonces[nonce]
