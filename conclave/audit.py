"""The audit log of a meeting's administrative actions, readable by its hosts.

Entries live under /conclave/audit/{room_id}/entries/ on the meeting's audit
lease, which the control plane grants when it creates the meeting (its id is the
record's "audit_lease"), next to /conclave/audit/{room_id}/host, the SHA-256 of the
host key, so hosts can read the log after the meeting ended. etcd deletes all of it
`audit_retention` after the meeting's expiry, whether or not it ended earlier
(docs/privacy.md). An entry holds participant ids, never names or addresses.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass

from conclave.store import EtcdStore

AUDIT_PREFIX = "/conclave/audit/"
MAX_DETAIL_CHARS = 200


def entries_prefix(room_id: str) -> str:
    return f"{AUDIT_PREFIX}{room_id}/entries/"


def host_key(room_id: str) -> str:
    """Where the meeting's host-key digest is kept for as long as its log."""
    return f"{AUDIT_PREFIX}{room_id}/host"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at_ms: int
    action: str
    actor: str  # "host-api", or the acting host's or co-host's participant id
    target: str = ""  # a participant id
    detail: str = ""

    @classmethod
    def from_json(cls, raw: bytes) -> AuditEntry:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("audit entry is not an object")
        return cls(
            at_ms=int(data["at_ms"]),
            action=str(data["action"]),
            actor=str(data["actor"]),
            target=str(data.get("target", "")),
            detail=str(data.get("detail", "")),
        )


async def append(
    store: EtcdStore,
    room_id: str,
    lease: int,
    action: str,
    actor: str,
    target: str = "",
    detail: str = "",
) -> AuditEntry:
    """Write one entry; keys sort by time (in microseconds, strictly increasing
    within a process, so one caller's entries keep their order even within a
    millisecond; a random tail against collisions between processes). Every entry
    is on the audit lease, so none outlives the documented retention."""
    if lease <= 0:
        raise ValueError("audit entries need the meeting's audit lease")
    key, value, entry = prepare(room_id, action, actor, target, detail)
    await store.put(key, value, lease)
    return entry


def prepare(
    room_id: str, action: str, actor: str, target: str = "", detail: str = ""
) -> tuple[str, bytes, AuditEntry]:
    """The key and value of a new entry, for a caller that writes it together with
    other keys in one transaction (a new meeting: see `append` for the key's form;
    the value goes on the audit lease)."""
    at_us = _next_micros()
    entry = AuditEntry(at_us // 1000, action, actor, target, detail[:MAX_DETAIL_CHARS])
    key = f"{entries_prefix(room_id)}{at_us:016d}-{secrets.token_hex(4)}"
    return key, json.dumps(asdict(entry)).encode(), entry


_last_micros = 0


def _next_micros() -> int:
    global _last_micros
    _last_micros = max(time.time_ns() // 1000, _last_micros + 1)
    return _last_micros


async def read(store: EtcdStore, room_id: str) -> list[AuditEntry]:
    """The meeting's entries, oldest first; malformed ones are skipped."""
    items, _ = await store.get_prefix(entries_prefix(room_id))
    entries = []
    for key in sorted(items):
        try:
            entries.append(AuditEntry.from_json(items[key]))
        except (ValueError, KeyError, TypeError):
            continue
    return entries
