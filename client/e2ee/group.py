"""The group-key session of one participant: leader role, member role, SFrame install.

Protocol (after Zoom's E2EE whitepaper §7.6, our own encoding):

1. Every participant posts a `Binding` (identity key signs its X25519 key for this
   meeting) through the servers.
2. The leader (`elect_leader`: the host, else the earliest joined) verifies the
   bindings, draws a fresh `EpochSecret`, extends the roster hash chain and sends
   each member a `KeyMessage`: the secret wrapped to the member's X25519 key, and an
   identity-key signature over meeting id, epoch, leader, previous and current roster
   hash, recipient id and the wrapped bytes.
3. A member checks the message (`receive`), then derives one SFrame key per sender
   and installs them into its `SFrameContext`: its own as the send key, every other
   member's as receive keys, each under a KID that names epoch and sender.

Every join and every leave starts a new epoch, coalesced by `RekeyPolicy`. The
servers only ever carry bindings and key messages as opaque bytes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from client.e2ee.context import SFrameContext, UnprotectResult
from client.e2ee.epoch import (
    MAX_EPOCH,
    WRAPPED_SIZE,
    EpochSecret,
    WrapContext,
    make_kid,
    sender_base_key,
    unwrap_secret,
    wrap_secret,
)
from client.e2ee.errors import SFrameError
from client.e2ee.group_errors import (
    BindingError,
    EpochExhaustedError,
    GroupKeyError,
    NotLeaderError,
    RosterError,
    SignatureError,
    UnwrapError,
    WireFormatError,
)
from client.e2ee.identity import (
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Binding,
    IdentityKey,
    MeetingKey,
    bind,
    verify_binding,
    verify_signature,
)
from client.e2ee.roster import HASH_SIZE, Roster, RosterEntry, genesis_hash
from client.e2ee.security_code import security_code
from client.e2ee.wire import Reader, Writer

__all__ = [
    "DEFAULT_REKEY_WINDOW",
    "KEY_MESSAGE_LABEL",
    "EpochInstalled",
    "GroupSession",
    "KeyMessage",
    "RefusalReason",
    "Refused",
    "RekeyPolicy",
    "elect_leader",
    "seal_key_message",
]

KEY_MESSAGE_LABEL = b"conclave-e2ee-v1 key-message"
_KEY_MESSAGE_MAGIC = b"CEK1"
DEFAULT_REKEY_WINDOW = 1.0  # seconds: a burst of joins/leaves inside it is one epoch


# --- wire message -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyMessage:
    """One epoch's key for one recipient, from the leader; opaque to the servers."""

    meeting_id: str
    epoch: int
    leader_id: str
    leader_identity: bytes
    prev_roster_hash: bytes
    entries: tuple[RosterEntry, ...]
    recipient_id: str
    wrapped: bytes
    signature: bytes

    def roster(self) -> Roster:
        """The roster this message announces; `RosterError` if it is not canonical."""
        roster = Roster.build(self.meeting_id, self.epoch, self.prev_roster_hash, self.entries)
        if roster.entries != self.entries:
            raise RosterError("roster entries are not in canonical order")
        return roster

    def signed_payload(self, roster_hash: bytes) -> bytes:
        """What the leader signs: the roster enters through its (chained) hash."""
        return key_message_payload(
            self.meeting_id,
            self.epoch,
            self.leader_id,
            self.leader_identity,
            self.prev_roster_hash,
            roster_hash,
            self.recipient_id,
            self.wrapped,
        )

    def to_bytes(self) -> bytes:
        w = (
            Writer()
            .fixed(_KEY_MESSAGE_MAGIC, 4)
            .text(self.meeting_id)
            .u64(self.epoch)
            .text(self.leader_id)
            .fixed(self.leader_identity, PUBLIC_KEY_SIZE)
            .fixed(self.prev_roster_hash, HASH_SIZE)
        )
        Roster(self.meeting_id, self.epoch, self.prev_roster_hash, self.entries).write_entries(w)
        w.text(self.recipient_id)
        w.fixed(self.wrapped, WRAPPED_SIZE)
        w.fixed(self.signature, SIGNATURE_SIZE)
        return w.finish()

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyMessage:
        """Strict parse; `WireFormatError` on truncation, bad sizes, order or trailing bytes."""
        r = Reader(data)
        r.expect(_KEY_MESSAGE_MAGIC, "key message")
        meeting_id = r.text("meeting id")
        epoch = r.u64("epoch")
        leader_id = r.text("leader id")
        leader_identity = r.fixed(PUBLIC_KEY_SIZE, "leader identity")
        prev = r.fixed(HASH_SIZE, "previous roster hash")
        entries = Roster.read_entries(r)
        out = cls(
            meeting_id=meeting_id,
            epoch=epoch,
            leader_id=leader_id,
            leader_identity=leader_identity,
            prev_roster_hash=prev,
            entries=entries,
            recipient_id=r.text("recipient id"),
            wrapped=r.fixed(WRAPPED_SIZE, "wrapped secret"),
            signature=r.fixed(SIGNATURE_SIZE, "signature"),
        )
        r.finish()
        return out


def key_message_payload(
    meeting_id: str,
    epoch: int,
    leader_id: str,
    leader_identity: bytes,
    prev_roster_hash: bytes,
    roster_hash: bytes,
    recipient_id: str,
    wrapped: bytes,
) -> bytes:
    return (
        Writer()
        .text(meeting_id)
        .u64(epoch)
        .text(leader_id)
        .fixed(leader_identity, PUBLIC_KEY_SIZE)
        .fixed(prev_roster_hash, HASH_SIZE)
        .fixed(roster_hash, HASH_SIZE)
        .text(recipient_id)
        .fixed(wrapped, WRAPPED_SIZE)
        .finish()
    )


def seal_key_message(
    *,
    leader: IdentityKey,
    leader_id: str,
    roster: Roster,
    recipient_id: str,
    secret: EpochSecret,
) -> KeyMessage:
    """Wrap `secret` to one roster member and sign the result (the leader's step 2).

    Exposed so tests can build messages a correct leader would never send.
    """
    entry = roster.entry(recipient_id)
    if entry is None:
        raise RosterError(f"{recipient_id!r} is not in the roster; keys go to members only")
    rh = roster.hash
    ctx = WrapContext(roster.meeting_id, roster.epoch, leader_id, recipient_id, rh)
    wrapped = wrap_secret(secret, entry.meeting_public, ctx)
    payload = key_message_payload(
        roster.meeting_id,
        roster.epoch,
        leader_id,
        leader.public_bytes,
        roster.prev_hash,
        rh,
        recipient_id,
        wrapped,
    )
    return KeyMessage(
        meeting_id=roster.meeting_id,
        epoch=roster.epoch,
        leader_id=leader_id,
        leader_identity=leader.public_bytes,
        prev_roster_hash=roster.prev_hash,
        entries=roster.entries,
        recipient_id=recipient_id,
        wrapped=wrapped,
        signature=leader.sign(KEY_MESSAGE_LABEL, payload),
    )


# --- policy -----------------------------------------------------------------------


def elect_leader(join_order: Sequence[str], host_id: str | None = None) -> str:
    """The host if present, else the earliest joined participant.

    The servers supply the join order and host, so they choose the leader (as in
    Zoom); a malicious choice shows up as a changed security code.
    """
    if not join_order:
        raise RosterError("no participants to elect a leader from")
    if host_id is not None and host_id in join_order:
        return host_id
    return join_order[0]


@dataclass(slots=True)
class RekeyPolicy:
    """When the leader may start a new epoch. Pure: time comes in as `now` arguments.

    The first epoch is immediate (nobody can talk before it). After that, the first
    roster change opens a window of `window` seconds and every change inside it joins
    the same epoch, fired when the window closes. The deadline is fixed at the first
    change, so a stream of joins cannot postpone the rekey that shuts out a leaver,
    and there is at most one epoch per window, so a join flood cannot make the
    leader spend all its time wrapping keys.
    """

    window: float = DEFAULT_REKEY_WINDOW
    _pending_since: float | None = None
    _keyed: bool = False

    def __post_init__(self) -> None:
        if self.window < 0:
            raise ValueError("rekey window must not be negative")

    def note_change(self, now: float) -> None:
        """Record a roster change; the window starts at the first unkeyed change."""
        if self._pending_since is None:
            self._pending_since = now

    @property
    def pending(self) -> bool:
        return self._pending_since is not None

    def next_due(self) -> float | None:
        """When to call back (for the caller's timer), or None if nothing is pending."""
        if self._pending_since is None:
            return None
        return self._pending_since if not self._keyed else self._pending_since + self.window

    def due(self, now: float) -> bool:
        deadline = self.next_due()
        return deadline is not None and now >= deadline

    def fired(self) -> None:
        """The epoch was issued: the pending changes are keyed."""
        self._pending_since = None
        self._keyed = True

    def continue_meeting(self) -> None:
        """The meeting already has keys (a member took over as leader): changes wait
        for the window like any later change, so several leaves make one epoch."""
        self._keyed = True


# --- outcomes ---------------------------------------------------------------------


class RefusalReason(enum.Enum):
    """Why a key message was not installed; each names the threat it stops."""

    MALFORMED = "malformed"  # unparseable or non-canonical bytes
    WRONG_MEETING = "wrong_meeting"  # replay from another meeting
    WRONG_RECIPIENT = "wrong_recipient"  # someone else's message redirected to us
    STALE_EPOCH = "stale_epoch"  # replay of an old (or the current) epoch
    EPOCH_EXHAUSTED = "epoch_exhausted"  # no KID space left
    UNTRUSTED_LEADER = "untrusted_leader"  # leader not in the roster, or a stranger
    BAD_SIGNATURE = "bad_signature"  # not signed by the claimed leader, or altered
    BROKEN_CHAIN = "broken_chain"  # roster does not extend the hash we hold (fork)
    NOT_IN_ROSTER = "not_in_roster"  # we would be keyed without being listed
    KEY_MISMATCH = "key_mismatch"  # roster lists other keys for us (substitution)
    BAD_BINDING = "bad_binding"  # a member's X25519 key is not signed by its identity
    UNWRAP_FAILED = "unwrap_failed"  # wrapped secret does not open for us
    INSTALL_FAILED = "install_failed"  # the SFrame context refused the keys


@dataclass(frozen=True, slots=True)
class Refused:
    reason: RefusalReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class EpochInstalled:
    """A new epoch is live locally; `released` holds frames that were waiting for it."""

    epoch: int
    roster_hash: bytes
    leader_id: str
    leader_changed: bool  # UI should ask people to compare the security code again
    members: tuple[str, ...]
    sender_index: int
    send_kid: int
    security_code: str
    released: tuple[UnprotectResult, ...] = field(default=())


# --- session ----------------------------------------------------------------------


class GroupSession:
    """One participant's view of the group key: leader and member roles in one object.

    No I/O: the caller posts `binding`, forwards `KeyMessage`s through the servers,
    feeds received ones to `receive`, and calls `tick` at `policy.next_due()`.
    """

    def __init__(
        self,
        *,
        meeting_id: str,
        participant_id: str,
        identity: IdentityKey,
        context: SFrameContext,
        meeting_key: MeetingKey | None = None,
        policy: RekeyPolicy | None = None,
    ) -> None:
        self.meeting_id = meeting_id
        self.participant_id = participant_id
        self._identity = identity
        self._meeting_key = meeting_key or MeetingKey.generate()
        self.context = context
        self.policy = policy or RekeyPolicy()
        self.binding: Binding = bind(identity, self._meeting_key, meeting_id, participant_id)
        self._roster: Roster | None = None
        self._roster_hash = genesis_hash(meeting_id)
        self._leader_id: str | None = None
        self._leader_identity: bytes | None = None
        self._send_kid: int | None = None
        self._recv_kids: dict[int, list[int]] = {}  # epoch -> receive KIDs
        self._pending: tuple[RosterEntry, ...] | None = None
        self.rejected: tuple[str, ...] = ()  # ids whose bindings the last change refused

    # --- state ------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return 0 if self._roster is None else self._roster.epoch

    @property
    def roster(self) -> Roster | None:
        return self._roster

    @property
    def roster_hash(self) -> bytes:
        return self._roster_hash

    @property
    def leader_id(self) -> str | None:
        return self._leader_id

    @property
    def send_kid(self) -> int | None:
        return self._send_kid

    @property
    def security_code(self) -> str | None:
        """The code to read aloud; None until the first epoch."""
        if self._leader_identity is None:
            return None
        return security_code(self.meeting_id, self._leader_identity, self._roster_hash)

    # --- leader role ------------------------------------------------------------

    def on_roster_change(self, bindings: Iterable[Binding], now: float) -> list[KeyMessage] | None:
        """As leader: the servers report the current participants' bindings.

        Bindings that do not verify, are for another meeting, claim our id, or change
        the identity key of a current member are left out (and listed in `rejected`):
        keying them would hand the epoch secret to whoever forged them. Returns the
        key messages to send if an epoch is due now, else None (call `tick` later).
        """
        current = self._roster.entries if self._roster is not None else ()
        known = {e.participant_id: e.identity_public for e in current}
        accepted: dict[str, RosterEntry] = {
            self.participant_id: RosterEntry.from_binding(self.binding)
        }
        rejected: list[str] = []
        duplicated: set[str] = set()
        for b in bindings:
            if b.participant_id == self.participant_id:
                if b != self.binding:
                    rejected.append(b.participant_id)
                continue
            try:
                verify_binding(
                    b, meeting_id=self.meeting_id, expected_identity=known.get(b.participant_id)
                )
            except (BindingError, ValueError):
                rejected.append(b.participant_id)
                continue
            if b.participant_id in accepted or b.participant_id in duplicated:
                rejected.append(b.participant_id)  # two bindings for one id: key neither
                accepted.pop(b.participant_id, None)
                duplicated.add(b.participant_id)
                continue
            accepted[b.participant_id] = RosterEntry.from_binding(b)
        self.rejected = tuple(rejected)
        if self._roster is not None:
            self.policy.continue_meeting()
        entries = Roster.build(self.meeting_id, 0, self._roster_hash, accepted.values()).entries
        if entries != current or self._pending is not None:
            self._pending = entries
            self.policy.note_change(now)
        return self.tick(now)

    def tick(self, now: float) -> list[KeyMessage] | None:
        """As leader: issue the pending epoch if the policy says it is due."""
        if self._pending is None or not self.policy.due(now):
            return None
        return self._issue(self._pending)

    def rotate(self) -> list[KeyMessage]:
        """As leader: a new epoch for the same roster now (e.g. periodic rotation)."""
        if self._roster is None:
            raise NotLeaderError("no roster yet; call on_roster_change first")
        return self._issue(self._pending or self._roster.entries)

    def _issue(self, entries: tuple[RosterEntry, ...]) -> list[KeyMessage]:
        epoch = self.epoch + 1
        if epoch > MAX_EPOCH:
            raise EpochExhaustedError("KID layout has no epochs left; restart the meeting")
        roster = Roster.build(self.meeting_id, epoch, self._roster_hash, entries)
        if roster.entry(self.participant_id) is None:
            raise NotLeaderError("the leader must be in its own roster")
        secret = EpochSecret.generate()
        messages = [
            seal_key_message(
                leader=self._identity,
                leader_id=self.participant_id,
                roster=roster,
                recipient_id=e.participant_id,
                secret=secret,
            )
            for e in roster.entries
            if e.participant_id != self.participant_id
        ]
        self._install(roster, secret, self.participant_id, self._identity.public_bytes)
        self._pending = None
        self.policy.fired()
        return messages

    # --- member role ------------------------------------------------------------

    def receive(self, message: KeyMessage | bytes) -> EpochInstalled | Refused:
        """As member: check a key message and, if every check passes, install its epoch.

        Never raises for bad input: a forged message from a server must not be able
        to crash the client, only to be refused with a named reason.
        """
        if not isinstance(message, KeyMessage):
            try:
                message = KeyMessage.from_bytes(message)
            except WireFormatError as exc:
                return Refused(RefusalReason.MALFORMED, str(exc))
        m = message
        if m.meeting_id != self.meeting_id:
            return Refused(RefusalReason.WRONG_MEETING, m.meeting_id)
        if m.recipient_id != self.participant_id:
            return Refused(RefusalReason.WRONG_RECIPIENT, m.recipient_id)
        if m.epoch <= self.epoch:
            return Refused(RefusalReason.STALE_EPOCH, f"epoch {m.epoch} <= {self.epoch}")
        if m.epoch > MAX_EPOCH:
            return Refused(RefusalReason.EPOCH_EXHAUSTED, f"epoch {m.epoch}")
        try:
            roster = m.roster()
            roster_hash = roster.hash
        except (RosterError, ValueError) as exc:
            return Refused(RefusalReason.MALFORMED, str(exc))
        leader_entry = roster.entry(m.leader_id)
        if leader_entry is None or leader_entry.identity_public != m.leader_identity:
            return Refused(RefusalReason.UNTRUSTED_LEADER, "leader is not in its roster")
        leader_changed = self._leader_identity is not None and (
            m.leader_id != self._leader_id or m.leader_identity != self._leader_identity
        )
        if leader_changed and self._roster is not None:
            # A new leader must come from the group we already trust (Zoom §7.6.9);
            # otherwise a server could crown a stranger of its own.
            known = self._roster.entry(m.leader_id)
            if known is None or known.identity_public != m.leader_identity:
                return Refused(RefusalReason.UNTRUSTED_LEADER, "new leader was not a member")
        try:
            verify_signature(
                m.leader_identity, KEY_MESSAGE_LABEL, m.signed_payload(roster_hash), m.signature
            )
        except (SignatureError, ValueError):
            return Refused(RefusalReason.BAD_SIGNATURE, "leader signature does not verify")
        if self._roster is not None or m.epoch == 1:
            # Joining mid-meeting we have no earlier hash and accept the chain as
            # offered (trust on first use; the security code covers it). From then on,
            # or from epoch 1, every roster must extend the hash we hold.
            if m.prev_roster_hash != self._roster_hash:
                return Refused(RefusalReason.BROKEN_CHAIN, "roster does not extend our chain")
        me = roster.entry(self.participant_id)
        if me is None:
            return Refused(RefusalReason.NOT_IN_ROSTER, "roster omits us")
        if (
            me.identity_public != self._identity.public_bytes
            or me.meeting_public != self._meeting_key.public_bytes
        ):
            return Refused(RefusalReason.KEY_MISMATCH, "roster lists other keys for us")
        for entry in roster.entries:
            try:
                verify_binding(entry.to_binding(self.meeting_id), meeting_id=self.meeting_id)
            except (BindingError, ValueError):
                return Refused(RefusalReason.BAD_BINDING, entry.participant_id)
        ctx = WrapContext(self.meeting_id, m.epoch, m.leader_id, self.participant_id, roster_hash)
        try:
            secret = unwrap_secret(self._meeting_key, m.wrapped, ctx)
        except UnwrapError as exc:
            return Refused(RefusalReason.UNWRAP_FAILED, str(exc))
        try:
            return self._install(roster, secret, m.leader_id, m.leader_identity)
        except (GroupKeyError, SFrameError, ValueError) as exc:
            return Refused(RefusalReason.INSTALL_FAILED, f"{type(exc).__name__}: {exc}")

    # --- SFrame -----------------------------------------------------------------

    def _install(
        self, roster: Roster, secret: EpochSecret, leader_id: str, leader_identity: bytes
    ) -> EpochInstalled:
        """Derive every sender's key and put them into the SFrame context."""
        rh = roster.hash
        my_index = roster.sender_index(self.participant_id)
        keys = [
            (
                make_kid(roster.epoch, i),
                sender_base_key(
                    secret,
                    meeting_id=self.meeting_id,
                    epoch=roster.epoch,
                    roster_hash=rh,
                    sender_index=i,
                    suite=self.context.suite,
                ),
            )
            for i in range(len(roster.entries))
        ]
        send_kid, send_key = keys[my_index]
        self.context.add_send_key(send_kid, send_key)
        released: list[UnprotectResult] = []
        recv: list[int] = []
        for i, (kid, base) in enumerate(keys):
            if i != my_index:
                released.extend(self.context.add_recv_key(kid, base))
                recv.append(kid)
        if self._send_kid is not None:
            self.context.remove_key(self._send_kid)  # retired: never reused for sending
        leader_changed = self._leader_identity is not None and (
            leader_id != self._leader_id or leader_identity != self._leader_identity
        )
        self._send_kid = send_kid
        self._recv_kids[roster.epoch] = recv
        # Keep the previous epoch's receive keys for frames still in flight; older go.
        for old in [e for e in self._recv_kids if e < roster.epoch - 1]:
            for kid in self._recv_kids.pop(old):
                self.context.remove_key(kid)
        self._roster = roster
        self._roster_hash = rh
        self._leader_id = leader_id
        self._leader_identity = bytes(leader_identity)
        code = security_code(self.meeting_id, self._leader_identity, rh)
        return EpochInstalled(
            epoch=roster.epoch,
            roster_hash=rh,
            leader_id=leader_id,
            leader_changed=leader_changed,
            members=roster.participant_ids,
            sender_index=my_index,
            send_kid=send_kid,
            security_code=code,
            released=tuple(released),
        )

    def retire_previous_epoch(self) -> None:
        """Stop accepting frames under older epochs' keys.

        Call a short grace period after an epoch starts: until then a member who just
        left still holds keys the others accept (any holder of an epoch secret can
        derive every sender's key of that epoch).
        """
        for old in [e for e in self._recv_kids if e < self.epoch]:
            for kid in self._recv_kids.pop(old):
                self.context.remove_key(kid)

    def protect(self, plaintext: bytes, metadata: bytes = b"") -> bytes | None:
        """Encrypt one frame under the current epoch's send key; None before any epoch."""
        if self._send_kid is None:
            return None
        return self.context.protect(self._send_kid, plaintext, metadata)

    def unprotect(self, ciphertext: bytes, metadata: bytes = b"") -> UnprotectResult:
        """Decrypt one frame; the KID in its header picks the sender and epoch."""
        return self.context.unprotect(ciphertext, metadata)
