"""Who may call what on the control plane (docs/security.md, "API credentials").

Every RoomService method has exactly one entry in `POLICY`; a test walks the
service descriptors, so a method added without one fails the suite rather than
going out unprotected.

- `INVITED`: joining a meeting one was invited to. The invitation (passcode, host
  key, or a place in the waiting room) is the credential; no API key.
- `API_KEY`: an API token signed by a live key (conclave/credentials.py). The
  meeting it creates belongs to the key's organisation.
- `MEETING`: acting on one meeting: an API token of the meeting's organisation, or
  the meeting's host key (what `CreateRoom` gave its creator).

Keys live in etcd (`/conclave/api-keys/{key_id}`, public keys only), followed by a
watch: a revoked key is refused by every replica as soon as its watch event
arrives, well within a second.

`CreateLimiter` caps how fast one key creates meetings, per replica, in memory:
it guards capacity, not a secret (docs/security.md, "API credentials").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conclave.credentials import (
    API_KEYS_PREFIX,
    METADATA_KEY,
    CredentialError,
    KeyRecord,
    bearer,
    key_record,
    load_key_file,
    parse_key_record,
    token_key_id,
    verify_token,
)
from conclave.store import EtcdStore, PrefixCache
from control_plane.errors import ControlPlaneError

log = logging.getLogger(__name__)

INVITED, API_KEY, MEETING = "invited", "api_key", "meeting"
POLICY: dict[str, str] = {
    "CreateRoom": API_KEY,
    "JoinRoom": INVITED,
    "GetRoom": MEETING,
    "ListParticipants": MEETING,
    "EndRoom": MEETING,
    "UpdateRoom": MEETING,
    "AdmitParticipants": MEETING,
    "DenyParticipants": MEETING,
    "RemoveParticipant": MEETING,
    "MuteParticipant": MEETING,
    "SetPublishRights": MEETING,
    "SetRole": MEETING,
    "GetAuditLog": MEETING,
}


class Unauthenticated(ControlPlaneError):
    """No credentials where they are required, or credentials that do not hold."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"credentials required: {reason}")
        self.reason = reason


class WrongOrganisation(ControlPlaneError):
    """A valid API key, of another organisation than the meeting's."""

    def __init__(self) -> None:
        super().__init__("this API key's organisation does not own this meeting")


class TooManyCreations(ControlPlaneError):
    """This API key (or the web page) created meetings faster than its limit."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(
            f"too many meetings created with these credentials; "
            f"try again in {max(1, round(retry_after))} s"
        )
        self.retry_after = retry_after


@dataclass(frozen=True)
class Caller:
    """Whoever presented a valid API token."""

    key_id: str
    organisation: str


class ApiKeys:
    """The live API keys (a watch-fed copy of etcd) and token checks against them."""

    def __init__(self, store: EtcdStore, bootstrap_file: Path | None = None) -> None:
        self._store = store
        self._keys = PrefixCache(store, API_KEYS_PREFIX)
        self._bootstrap_file = bootstrap_file

    async def start(self) -> None:
        """Register the bootstrap key (if any) unless it exists, then follow the keys."""
        if self._bootstrap_file is not None:
            key = load_key_file(self._bootstrap_file)
            created, _ = await self._store.create_if_absent(
                API_KEYS_PREFIX + key.key_id, key_record(key)
            )
            if created:
                log.info("registered the API key given with --api-key-file")
        await self._keys.start()

    async def stop(self) -> None:
        await self._keys.stop()

    def record(self, key_id: str) -> KeyRecord | None:
        raw = self._keys.items.get(key_id)
        if raw is None:
            return None
        try:
            return parse_key_record(raw)
        except ValueError:
            log.warning("ignoring a malformed API key record")
            return None

    def caller(self, context: Any) -> Caller | None:
        """The caller behind the request's token; None without one. Raises
        `Unauthenticated` for a token that does not verify (malformed, unknown or
        revoked key, bad signature, expired)."""
        value = next(
            (v for k, v in context.invocation_metadata() or () if k.lower() == METADATA_KEY),
            None,
        )
        if value is None:
            return None
        try:
            token = bearer(str(value))
            record = self.record(token_key_id(token))
            if record is None:
                raise CredentialError("unknown_key", "no such API key (revoked?)")
            verify_token(token, record)
        except CredentialError as exc:
            raise Unauthenticated(exc.code) from None
        return Caller(record.key_id, record.organisation)


DEFAULT_CREATE_BURST = 20  # meetings one key may create at once
DEFAULT_CREATES_PER_MINUTE = 60.0  # and sustained
WEB_BUCKET = "web"  # meetings the web page creates without a key (key ids never match it)


class CreateLimiter:
    """A token bucket of meeting creations per API key id, on this replica only.

    Buckets are kept in the order they were last used; one idle for as long as a
    bucket takes to fill from empty is full, the same as no bucket, and is dropped.
    So the map holds only the keys that created a meeting in the last
    `burst / rate` seconds (20 s by default), and only verified key ids reach it.
    """

    def __init__(
        self,
        burst: int = DEFAULT_CREATE_BURST,
        per_minute: float = DEFAULT_CREATES_PER_MINUTE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or per_minute <= 0:
            raise ValueError("a creation limit needs burst >= 1 and per_minute > 0")
        self.burst = burst
        self.per_minute = per_minute
        self._rate = per_minute / 60.0  # tokens per second
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str) -> None:
        """Spend one creation of `key`'s bucket; raises `TooManyCreations` (with
        the wait until one is back) when it is empty."""
        now = self._clock()
        self._forget_full(now)
        tokens, at = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self._rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            raise TooManyCreations((1 - tokens) / self._rate)
        self._buckets[key] = (tokens - 1, now)  # re-inserted: last in use order

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: str) -> bool:
        return key in self._buckets

    def _forget_full(self, now: float) -> None:
        refill_s = self.burst / self._rate
        while self._buckets:
            key = next(iter(self._buckets))  # the longest idle
            if now - self._buckets[key][1] < refill_s:
                return
            del self._buckets[key]
