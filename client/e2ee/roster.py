"""The leader's hash-chained roster: who holds each epoch's keys.

Keys go only to roster members, and every member sees the roster, so anyone able
to decrypt is visible to everyone (Zoom whitepaper §7.6.7, "leader participant
list"). The roster of epoch n is chained to epoch n-1:

    roster_hash(0) = SHA-256(len-prefixed GENESIS_LABEL || meeting id)
    roster_hash(n) = SHA-256(len-prefixed ROSTER_LABEL || roster_hash(n-1) || u64 n
                             || canonical(sorted entries))

where each entry encodes (participant id, identity public key, X25519 public key).
A receiver refuses a roster that does not extend the hash it already holds, so a
server cannot fork the group into two views without the security codes diverging.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from client.e2ee.group_errors import RosterError, WireFormatError
from client.e2ee.identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Binding
from client.e2ee.wire import Reader, Writer, check_id

__all__ = [
    "GENESIS_LABEL",
    "HASH_SIZE",
    "MAX_ROSTER",
    "ROSTER_LABEL",
    "Roster",
    "RosterEntry",
    "genesis_hash",
    "roster_hash",
]

HASH_SIZE = 32
GENESIS_LABEL = b"conclave-e2ee-v1 roster-genesis"
ROSTER_LABEL = b"conclave-e2ee-v1 roster"
MAX_ROSTER = 256  # = 2**SENDER_BITS in client.e2ee.epoch: one sender index per member


def _labelled(label: bytes) -> bytes:
    return len(label).to_bytes(2, "big") + label


@dataclass(frozen=True, slots=True)
class RosterEntry:
    """One member: ids and keys, plus the binding signature so every member can check
    that the X25519 key really was issued by the identity key (not by the leader)."""

    participant_id: str
    identity_public: bytes
    meeting_public: bytes
    binding_signature: bytes

    @classmethod
    def from_binding(cls, binding: Binding) -> RosterEntry:
        return cls(
            binding.participant_id,
            binding.identity_public,
            binding.meeting_public,
            binding.signature,
        )

    def to_binding(self, meeting_id: str) -> Binding:
        return Binding(
            meeting_id,
            self.participant_id,
            self.identity_public,
            self.meeting_public,
            self.binding_signature,
        )

    def canonical(self) -> bytes:
        """The hashed form: id, identity key, X25519 key (RFC-style fixed layout)."""
        return (
            Writer()
            .text(self.participant_id)
            .fixed(self.identity_public, PUBLIC_KEY_SIZE)
            .fixed(self.meeting_public, PUBLIC_KEY_SIZE)
            .finish()
        )

    def write(self, w: Writer) -> None:
        w.text(self.participant_id)
        w.fixed(self.identity_public, PUBLIC_KEY_SIZE)
        w.fixed(self.meeting_public, PUBLIC_KEY_SIZE)
        w.fixed(self.binding_signature, SIGNATURE_SIZE)

    @classmethod
    def read(cls, r: Reader) -> RosterEntry:
        return cls(
            participant_id=r.text("participant id"),
            identity_public=r.fixed(PUBLIC_KEY_SIZE, "identity key"),
            meeting_public=r.fixed(PUBLIC_KEY_SIZE, "meeting key"),
            binding_signature=r.fixed(SIGNATURE_SIZE, "binding signature"),
        )


def _sort_key(entry: RosterEntry) -> bytes:
    return entry.participant_id.encode("utf-8")


def canonical_entries(entries: Iterable[RosterEntry]) -> tuple[RosterEntry, ...]:
    """Sort by participant id (UTF-8 bytes) and refuse duplicates or oversize rosters.

    One roster has one order, so every member computes the same hash and the same
    sender indices; a duplicate id would give one participant two key slots.
    """
    ordered = tuple(sorted(entries, key=_sort_key))
    if not ordered:
        raise RosterError("a roster needs at least one member")
    if len(ordered) > MAX_ROSTER:
        raise RosterError(f"at most {MAX_ROSTER} members fit the KID layout")
    for prev, cur in itertools.pairwise(ordered):
        if prev.participant_id == cur.participant_id:
            raise RosterError(f"participant {cur.participant_id!r} listed twice")
    for entry in ordered:
        check_id(entry.participant_id)
    return ordered


def genesis_hash(meeting_id: str) -> bytes:
    """The chain's anchor; naming the meeting makes chains from other meetings unusable."""
    return hashlib.sha256(_labelled(GENESIS_LABEL) + check_id(meeting_id)).digest()


def roster_hash(prev_hash: bytes, epoch: int, entries: Iterable[RosterEntry]) -> bytes:
    """roster_hash(n) = H(label || roster_hash(n-1) || n || canonical sorted entries)."""
    if len(prev_hash) != HASH_SIZE:
        raise ValueError("previous roster hash must be 32 bytes")
    h = hashlib.sha256(_labelled(ROSTER_LABEL))
    h.update(prev_hash)
    h.update(epoch.to_bytes(8, "big"))
    ordered = canonical_entries(entries)
    h.update(len(ordered).to_bytes(2, "big"))
    for entry in ordered:
        h.update(entry.canonical())
    return h.digest()


@dataclass(frozen=True, slots=True)
class Roster:
    """The members of one epoch, in canonical order, with the hash they chain from."""

    meeting_id: str
    epoch: int
    prev_hash: bytes
    entries: tuple[RosterEntry, ...]

    @classmethod
    def build(
        cls, meeting_id: str, epoch: int, prev_hash: bytes, entries: Iterable[RosterEntry]
    ) -> Roster:
        return cls(meeting_id, epoch, bytes(prev_hash), canonical_entries(entries))

    @property
    def hash(self) -> bytes:
        return roster_hash(self.prev_hash, self.epoch, self.entries)

    @property
    def participant_ids(self) -> tuple[str, ...]:
        return tuple(e.participant_id for e in self.entries)

    def entry(self, participant_id: str) -> RosterEntry | None:
        for e in self.entries:
            if e.participant_id == participant_id:
                return e
        return None

    def sender_index(self, participant_id: str) -> int:
        """Position in canonical order: the sender bits of this member's KID."""
        for i, e in enumerate(self.entries):
            if e.participant_id == participant_id:
                return i
        raise RosterError(f"{participant_id!r} is not in the roster")

    def write_entries(self, w: Writer) -> None:
        w.u16(len(self.entries))
        for e in self.entries:
            e.write(w)

    @staticmethod
    def read_entries(r: Reader) -> tuple[RosterEntry, ...]:
        """Parse entries and insist they arrive already canonical (sorted, unique)."""
        count = r.u16("roster size")
        if count == 0 or count > MAX_ROSTER:
            raise WireFormatError(f"roster size {count} out of range")
        entries = tuple(RosterEntry.read(r) for _ in range(count))
        try:
            ordered = canonical_entries(entries)
        except (RosterError, ValueError) as exc:
            raise WireFormatError(f"roster is not canonical: {exc}") from None
        if ordered != entries:
            raise WireFormatError("roster entries are not in canonical order")
        return entries
