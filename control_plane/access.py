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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conclave.credentials import (
    API_KEYS_PREFIX,
    KEY_FILE_ENV,
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
                log.info("registered the API key of %s", KEY_FILE_ENV)
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

    def require(self, context: Any) -> Caller:
        caller = self.caller(context)
        if caller is None:
            raise Unauthenticated("missing")
        return caller
