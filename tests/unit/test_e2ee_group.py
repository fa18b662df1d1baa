"""Group keys end to end in memory: epochs, KIDs, roster chain, refusals, security code."""

from __future__ import annotations

import dataclasses
import os
import re

import pytest

from client.e2ee.context import DecryptStatus, SFrameContext
from client.e2ee.epoch import (
    EPOCH_BITS,
    MAX_SENDERS,
    SENDER_BITS,
    EpochSecret,
    WrapContext,
    make_kid,
    split_kid,
    unwrap_secret,
    wrap_secret,
)
from client.e2ee.group import (
    KEY_MESSAGE_LABEL,
    EpochInstalled,
    GroupSession,
    KeyMessage,
    RefusalReason,
    Refused,
    RekeyPolicy,
    elect_leader,
    seal_key_message,
)
from client.e2ee.group_errors import (
    BindingError,
    RosterError,
    UnwrapError,
    WireFormatError,
)
from client.e2ee.identity import (
    Binding,
    IdentityKey,
    MeetingKey,
    bind,
    verify_binding,
)
from client.e2ee.roster import Roster, RosterEntry, genesis_hash, roster_hash
from client.e2ee.security_code import security_code
from client.e2ee.sframe import CipherSuite, decode_header

SUITE = CipherSuite.AES_128_GCM_SHA256_128
MEETING = "meeting-1"
CODE_RE = re.compile(r"^\d{5}( \d{5}){4}$")


class Party:
    """A participant: its device identity and its group session."""

    def __init__(self, pid: str, meeting: str = MEETING, identity: IdentityKey | None = None):
        self.pid = pid
        self.identity = identity or IdentityKey.generate()
        # pending_limit=0: frames for unknown KIDs are refused at once, not buffered
        self.session = GroupSession(
            meeting_id=meeting,
            participant_id=pid,
            identity=self.identity,
            context=SFrameContext(SUITE, pending_limit=0),
        )

    @property
    def binding(self) -> Binding:
        return self.session.binding


def deliver(messages: list[KeyMessage] | None, parties: dict[str, Party]) -> list[EpochInstalled]:
    """Carry each message as opaque bytes to its recipient, as the servers would."""
    assert messages is not None
    out = []
    for m in messages:
        result = parties[m.recipient_id].session.receive(m.to_bytes())
        assert isinstance(result, EpochInstalled), result
        out.append(result)
    return out


@pytest.fixture
def trio() -> dict[str, Party]:
    """alice (leader), bob and carol, all in epoch 1."""
    parties = {p: Party(p) for p in ("alice", "bob", "carol")}
    msgs = parties["alice"].session.on_roster_change([p.binding for p in parties.values()], 0.0)
    assert msgs is not None and len(msgs) == 2
    deliver(msgs, parties)
    return parties


def resign(leader: IdentityKey, msg: KeyMessage, **changes: object) -> KeyMessage:
    """What a (compromised or buggy) leader could send: altered fields, valid signature."""
    forged = dataclasses.replace(msg, **changes)  # type: ignore[arg-type]
    rh = roster_hash(forged.prev_roster_hash, forged.epoch, forged.entries)
    return dataclasses.replace(
        forged, signature=leader.sign(KEY_MESSAGE_LABEL, forged.signed_payload(rh))
    )


def seal(leader: Party, roster: Roster, recipient: str) -> KeyMessage:
    """A key message signed by `leader`'s real identity key for any roster we like."""
    return seal_key_message(
        leader=leader.identity,
        leader_id=leader.pid,
        roster=roster,
        recipient_id=recipient,
        secret=EpochSecret.generate(),
    )


def first_epoch_message(parties: dict[str, Party], recipient: str) -> KeyMessage:
    """A fresh, correct epoch-1 message from alice to `recipient` (not yet delivered)."""
    roster = Roster.build(
        MEETING,
        1,
        genesis_hash(MEETING),
        [RosterEntry.from_binding(p.binding) for p in parties.values()],
    )
    return seal_key_message(
        leader=parties["alice"].identity,
        leader_id="alice",
        roster=roster,
        recipient_id=recipient,
        secret=EpochSecret.generate(),
    )


# --- a full epoch ---------------------------------------------------------------------


def test_three_participants_share_one_epoch_and_talk(trio: dict[str, Party]) -> None:
    sessions = {p: trio[p].session for p in trio}
    assert {s.epoch for s in sessions.values()} == {1}
    assert len({s.roster_hash for s in sessions.values()}) == 1
    codes = {s.security_code for s in sessions.values()}
    assert len(codes) == 1
    (code,) = codes
    assert code is not None and CODE_RE.match(code)

    kids = {p: s.send_kid for p, s in sessions.items()}
    assert len(set(kids.values())) == 3, "two senders share a KID"
    for pid, kid in kids.items():
        assert kid is not None
        epoch_bits, index = split_kid(kid)
        assert epoch_bits == 1
        roster = sessions[pid].roster
        assert roster is not None and roster.sender_index(pid) == index

    for sender, s in sessions.items():
        frame = f"frame from {sender}".encode()
        ct = s.protect(frame, b"rtp-meta")
        assert ct is not None
        assert decode_header(ct).kid == kids[sender]
        for receiver, r in sessions.items():
            if receiver == sender:
                continue
            res = r.unprotect(ct, b"rtp-meta")
            assert res.ok and res.plaintext == frame, (sender, receiver, res)


def test_members_verify_the_roster_they_are_keyed_with(trio: dict[str, Party]) -> None:
    roster = trio["bob"].session.roster
    assert roster is not None
    assert roster.participant_ids == ("alice", "bob", "carol")
    assert trio["carol"].session.leader_id == "alice"


# --- KID layout -----------------------------------------------------------------------


def test_kid_layout_separates_senders_and_epochs() -> None:
    assert make_kid(1, 0) == 1 << SENDER_BITS
    assert make_kid(2, 5) == (2 << SENDER_BITS) | 5
    kids = {make_kid(e, i) for e in range(1, 40) for i in range(MAX_SENDERS)}
    assert len(kids) == 39 * MAX_SENDERS
    assert split_kid(make_kid(77, 200)) == (77, 200)
    # the largest KID fits in 3 bytes of SFrame header
    assert make_kid((1 << EPOCH_BITS) - 1, MAX_SENDERS - 1) < 1 << 24
    with pytest.raises(ValueError):
        make_kid(1, MAX_SENDERS)
    with pytest.raises(ValueError):
        split_kid(1 << (EPOCH_BITS + SENDER_BITS))


# --- joins, leaves, rate limit --------------------------------------------------------


def test_rekey_policy_coalesces_a_burst() -> None:
    policy = RekeyPolicy(window=1.0)
    assert not policy.due(0.0)
    policy.note_change(0.0)
    assert policy.due(0.0), "the first epoch is immediate"
    policy.fired()
    policy.note_change(10.0)
    policy.note_change(10.4)
    policy.note_change(10.9)
    assert policy.next_due() == 11.0
    assert not policy.due(10.99)
    assert policy.due(11.0)
    policy.fired()
    assert not policy.pending and policy.next_due() is None


def test_burst_of_three_joins_makes_one_new_epoch(trio: dict[str, Party]) -> None:
    alice = trio["alice"].session
    old_kids = {p.session.send_kid for p in trio.values()}
    for pid, now in (("dave", 10.0), ("erin", 10.3), ("frank", 10.6)):
        trio[pid] = Party(pid)
        assert alice.on_roster_change([p.binding for p in trio.values()], now) is None
    assert alice.tick(10.99) is None
    assert alice.epoch == 1
    msgs = alice.tick(11.0)
    assert msgs is not None and len(msgs) == 5
    assert alice.tick(11.5) is None, "one burst, one epoch"
    installed = deliver(msgs, trio)
    assert {i.epoch for i in installed} == {2}
    assert {p.session.epoch for p in trio.values()} == {2}
    assert len({p.session.security_code for p in trio.values()}) == 1
    new_kids = {p.session.send_kid for p in trio.values()}
    assert len(new_kids) == 6 and not new_kids & old_kids
    # the newcomers hear alice and alice hears them
    ct = alice.protect(b"welcome")
    assert ct is not None
    assert trio["frank"].session.unprotect(ct).plaintext == b"welcome"
    ct = trio["dave"].session.protect(b"hi")
    assert ct is not None
    assert alice.unprotect(ct).plaintext == b"hi"


def test_leaver_cannot_decrypt_the_next_epoch(trio: dict[str, Party]) -> None:
    alice, bob, carol = (trio[p].session for p in ("alice", "bob", "carol"))
    stale_from_carol = carol.protect(b"still here?")
    assert stale_from_carol is not None
    assert alice.on_roster_change([trio["alice"].binding, trio["bob"].binding], 5.0) is None
    msgs = alice.tick(6.0)
    assert msgs is not None and [m.recipient_id for m in msgs] == ["bob"]
    deliver(msgs, trio)
    assert carol.receive(msgs[0]) == Refused(RefusalReason.WRONG_RECIPIENT, "bob")

    ct = alice.protect(b"after carol left")
    assert ct is not None
    assert bob.unprotect(ct).plaintext == b"after carol left"
    res = carol.unprotect(ct)
    assert not res.ok and res.status is DecryptStatus.UNKNOWN_KID
    assert carol.epoch == 1

    # within the grace period carol's epoch-1 frames still open; after it, never
    assert bob.unprotect(stale_from_carol).ok
    later = carol.protect(b"sneaking in")
    assert later is not None
    bob.retire_previous_epoch()
    assert bob.unprotect(later).status is DecryptStatus.UNKNOWN_KID


def test_joiner_cannot_decrypt_what_was_sent_before_it_joined(trio: dict[str, Party]) -> None:
    alice, bob = trio["alice"].session, trio["bob"].session
    before = alice.protect(b"before dave")
    assert before is not None
    trio["dave"] = Party("dave")
    dave = trio["dave"].session
    deliver(alice.on_roster_change([p.binding for p in trio.values()], 5.0) or alice.tick(6.0),
            trio)  # fmt: skip
    assert dave.epoch == 2
    after = alice.protect(b"with dave")
    assert after is not None
    assert dave.unprotect(after).plaintext == b"with dave"
    assert bob.unprotect(before).plaintext == b"before dave"
    assert dave.unprotect(before).status is DecryptStatus.UNKNOWN_KID  # epoch 1: never keyed


def test_security_code_changes_with_the_roster(trio: dict[str, Party]) -> None:
    before = trio["bob"].session.security_code
    trio["dave"] = Party("dave")
    alice = trio["alice"].session
    alice.on_roster_change([p.binding for p in trio.values()], 20.0)
    deliver(alice.tick(21.0), trio)
    after = {p.session.security_code for p in trio.values()}
    assert len(after) == 1 and before not in after


def test_security_code_function() -> None:
    ik = IdentityKey.generate().public_bytes
    rh = os.urandom(32)
    code = security_code(MEETING, ik, rh)
    assert CODE_RE.match(code)
    assert code == security_code(MEETING, ik, rh)
    assert code != security_code(MEETING, IdentityKey.generate().public_bytes, rh)
    assert code != security_code(MEETING, ik, os.urandom(32))
    assert code != security_code("meeting-2", ik, rh)


def test_leader_handover_to_a_member(trio: dict[str, Party]) -> None:
    bob = trio["bob"].session
    code_before = trio["carol"].session.security_code
    # The meeting has keys already: the new leader waits the window (more leaves
    # may follow) instead of keying at once as for the first epoch.
    assert bob.on_roster_change([trio["bob"].binding, trio["carol"].binding], 30.0) is None
    assert bob.tick(30.0 + bob.policy.window - 0.01) is None
    msgs = bob.tick(30.0 + bob.policy.window)
    (installed,) = deliver(msgs, trio)
    assert installed.epoch == 2 and installed.leader_id == "bob" and installed.leader_changed
    assert installed.security_code == bob.security_code != code_before


def test_elect_leader() -> None:
    assert elect_leader(["b", "a", "c"], host_id="c") == "c"
    assert elect_leader(["b", "a", "c"], host_id="zed") == "b"
    assert elect_leader(["b", "a"]) == "b"
    with pytest.raises(RosterError):
        elect_leader([])


# --- refusals -------------------------------------------------------------------------


def test_tampered_signature_is_refused(trio: dict[str, Party]) -> None:
    del trio["bob"]
    trio["bob"] = Party("bob")  # fresh bob who has not installed epoch 1
    parties = {"alice": trio["alice"], "bob": trio["bob"], "carol": trio["carol"]}
    msg = first_epoch_message(parties, "bob")
    bad_sig = bytes([msg.signature[0] ^ 1]) + msg.signature[1:]
    result = parties["bob"].session.receive(dataclasses.replace(msg, signature=bad_sig))
    assert isinstance(result, Refused) and result.reason is RefusalReason.BAD_SIGNATURE
    # the untouched message still installs: the refusal left no state behind
    assert isinstance(parties["bob"].session.receive(msg), EpochInstalled)


def test_tampered_wrapped_secret_is_refused() -> None:
    parties = {p: Party(p) for p in ("alice", "bob", "carol")}
    msg = first_epoch_message(parties, "bob")
    flipped = msg.wrapped[:-1] + bytes([msg.wrapped[-1] ^ 1])
    bob = parties["bob"].session
    result = bob.receive(dataclasses.replace(msg, wrapped=flipped))
    assert isinstance(result, Refused) and result.reason is RefusalReason.BAD_SIGNATURE
    # even re-signed by the leader, a wrap that does not open for bob is refused
    result = bob.receive(resign(parties["alice"].identity, msg, wrapped=flipped))
    assert isinstance(result, Refused) and result.reason is RefusalReason.UNWRAP_FAILED
    # a wrap made for carol, redirected to bob and re-signed, does not open either
    for_carol = first_epoch_message(parties, "carol")
    result = bob.receive(resign(parties["alice"].identity, for_carol, recipient_id="bob"))
    assert isinstance(result, Refused) and result.reason is RefusalReason.UNWRAP_FAILED
    assert bob.epoch == 0


def test_roster_that_omits_the_recipient_is_refused() -> None:
    parties = {p: Party(p) for p in ("alice", "bob", "carol")}
    two = {"alice": parties["alice"], "bob": parties["bob"]}
    msg = first_epoch_message(two, "bob")
    hidden = resign(parties["alice"].identity, msg, recipient_id="carol")
    result = parties["carol"].session.receive(hidden)
    assert isinstance(result, Refused) and result.reason is RefusalReason.NOT_IN_ROSTER


def test_roster_that_does_not_chain_is_refused(trio: dict[str, Party]) -> None:
    bob = trio["bob"].session
    entries = bob.roster.entries if bob.roster else ()
    # epoch 2 that claims to extend some other history (a fork)
    forked = Roster.build(MEETING, 2, os.urandom(32), entries)
    msg = seal(trio["alice"], forked, "bob")
    result = bob.receive(msg)
    assert isinstance(result, Refused) and result.reason is RefusalReason.BROKEN_CHAIN
    # epoch 2 that restarts from genesis instead of extending epoch 1
    restart = Roster.build(MEETING, 2, genesis_hash(MEETING), entries)
    msg = seal(trio["alice"], restart, "bob")
    result = bob.receive(msg)
    assert isinstance(result, Refused) and result.reason is RefusalReason.BROKEN_CHAIN
    # epoch 1 must start at this meeting's genesis
    fresh = {p: Party(p) for p in ("alice", "bob")}
    start_entries = [RosterEntry.from_binding(p.binding) for p in fresh.values()]
    bad_start = Roster.build(MEETING, 1, genesis_hash("meeting-2"), start_entries)
    msg = seal(fresh["alice"], bad_start, "bob")
    result = fresh["bob"].session.receive(msg)
    assert isinstance(result, Refused) and result.reason is RefusalReason.BROKEN_CHAIN


def test_message_for_another_meeting_or_recipient_is_refused(trio: dict[str, Party]) -> None:
    # the same people, same devices, in another meeting: a replay across meetings
    other = {p: Party(p, meeting="meeting-2", identity=trio[p].identity) for p in ("alice", "bob")}
    msgs = other["alice"].session.on_roster_change([p.binding for p in other.values()], 0.0)
    assert msgs is not None
    fresh_bob = Party("bob", identity=trio["bob"].identity)
    result = fresh_bob.session.receive(msgs[0])
    assert isinstance(result, Refused) and result.reason is RefusalReason.WRONG_MEETING

    trio["dave"] = Party("dave")
    alice = trio["alice"].session
    alice.on_roster_change([p.binding for p in trio.values()], 40.0)
    msgs = alice.tick(41.0)
    assert msgs is not None
    for_bob = next(m for m in msgs if m.recipient_id == "bob")
    result = trio["carol"].session.receive(for_bob)
    assert isinstance(result, Refused) and result.reason is RefusalReason.WRONG_RECIPIENT


def test_replayed_old_epoch_is_refused(trio: dict[str, Party]) -> None:
    alice = trio["alice"].session
    trio["dave"] = Party("dave")
    alice.on_roster_change([p.binding for p in trio.values()], 50.0)
    epoch2 = alice.tick(51.0)
    assert epoch2 is not None
    deliver(epoch2, trio)
    alice.on_roster_change([p.binding for p in trio.values() if p.pid != "dave"], 60.0)
    epoch3 = alice.tick(61.0)
    deliver(epoch3, trio)
    bob = trio["bob"].session
    for old in epoch2:
        if old.recipient_id == "bob":
            result = bob.receive(old.to_bytes())
            assert isinstance(result, Refused) and result.reason is RefusalReason.STALE_EPOCH
    assert epoch3 is not None
    again = bob.receive(next(m for m in epoch3 if m.recipient_id == "bob"))
    assert isinstance(again, Refused) and again.reason is RefusalReason.STALE_EPOCH
    assert bob.epoch == 3


def test_stranger_cannot_take_over_as_leader(trio: dict[str, Party]) -> None:
    mallory = Party("mallory")
    bob = trio["bob"].session
    entries = [RosterEntry.from_binding(p.binding) for p in (*trio.values(), mallory)]
    roster = Roster.build(MEETING, 2, bob.roster_hash, entries)
    msg = seal(mallory, roster, "bob")
    result = bob.receive(msg)
    assert isinstance(result, Refused) and result.reason is RefusalReason.UNTRUSTED_LEADER
    # nor can she claim to be alice with her own key
    forged = dataclasses.replace(msg, leader_id="alice")
    result = bob.receive(forged)
    assert isinstance(result, Refused) and result.reason is RefusalReason.UNTRUSTED_LEADER
    assert bob.epoch == 1


def test_roster_with_substituted_keys_is_refused() -> None:
    parties = {p: Party(p) for p in ("alice", "bob")}
    server_key = MeetingKey.generate()
    # the roster lists bob with a key the server holds (bound by the server's own identity)
    fake_bob = bind(IdentityKey.generate(), server_key, MEETING, "bob")
    entries = [
        RosterEntry.from_binding(parties["alice"].binding),
        RosterEntry.from_binding(fake_bob),
    ]
    roster = Roster.build(MEETING, 1, genesis_hash(MEETING), entries)
    msg = seal(parties["alice"], roster, "bob")
    result = parties["bob"].session.receive(msg)
    assert isinstance(result, Refused) and result.reason is RefusalReason.KEY_MISMATCH


def test_roster_with_an_unbound_member_is_refused() -> None:
    parties = {p: Party(p) for p in ("alice", "bob")}
    eve = Party("eve")
    bad = dataclasses.replace(RosterEntry.from_binding(eve.binding), binding_signature=bytes(64))
    entries = [RosterEntry.from_binding(p.binding) for p in parties.values()] + [bad]
    roster = Roster.build(MEETING, 1, genesis_hash(MEETING), entries)
    msg = seal(parties["alice"], roster, "bob")
    result = parties["bob"].session.receive(msg)
    assert isinstance(result, Refused) and result.reason is RefusalReason.BAD_BINDING


def test_malformed_bytes_are_refused_not_raised(trio: dict[str, Party]) -> None:
    bob = trio["bob"].session
    msg = first_epoch_message(trio, "bob").to_bytes()
    for data in (b"", b"garbage", msg[:-1], msg + b"\x00", b"XXXX" + msg[4:]):
        result = bob.receive(data)
        assert isinstance(result, Refused) and result.reason is RefusalReason.MALFORMED


# --- leader-side binding checks -------------------------------------------------------


def test_leader_leaves_out_bindings_that_do_not_verify() -> None:
    alice, bob, carol = Party("alice"), Party("bob"), Party("carol")
    swapped = dataclasses.replace(bob.binding, meeting_public=MeetingKey.generate().public_bytes)
    impostor = bind(IdentityKey.generate(), MeetingKey.generate(), MEETING, "alice")
    msgs = alice.session.on_roster_change([swapped, carol.binding, impostor], 0.0)
    assert msgs is not None and [m.recipient_id for m in msgs] == ["carol"]
    assert set(alice.session.rejected) == {"bob", "alice"}
    roster = alice.session.roster
    assert roster is not None and roster.participant_ids == ("alice", "carol")


def test_leader_pins_identity_keys_of_current_members(trio: dict[str, Party]) -> None:
    alice = trio["alice"].session
    new_carol_key = bind(IdentityKey.generate(), MeetingKey.generate(), MEETING, "carol")
    bindings = [trio["alice"].binding, trio["bob"].binding, new_carol_key]
    alice.on_roster_change(bindings, 70.0)
    assert alice.rejected == ("carol",)


# --- bindings, wrapping, wire ---------------------------------------------------------


def test_binding_verifies_and_swapped_key_is_refused() -> None:
    ik, mk = IdentityKey.generate(), MeetingKey.generate()
    b = bind(ik, mk, MEETING, "alice")
    verify_binding(b, meeting_id=MEETING)
    verify_binding(b, meeting_id=MEETING, expected_identity=ik.public_bytes)
    assert Binding.from_bytes(b.to_bytes()) == b
    swapped = dataclasses.replace(b, meeting_public=MeetingKey.generate().public_bytes)
    with pytest.raises(BindingError):
        verify_binding(swapped, meeting_id=MEETING)
    with pytest.raises(BindingError):
        verify_binding(dataclasses.replace(b, participant_id="bob"), meeting_id=MEETING)
    with pytest.raises(BindingError):
        verify_binding(b, meeting_id="meeting-2")
    with pytest.raises(BindingError):
        verify_binding(b, meeting_id=MEETING, expected_identity=IdentityKey.generate().public_bytes)
    raw = b.to_bytes()
    for bad in (raw[:-1], raw + b"\x00", b"CEK1" + raw[4:]):
        with pytest.raises(WireFormatError):
            Binding.from_bytes(bad)


def test_wrap_is_bound_to_its_context() -> None:
    mk = MeetingKey.generate()
    secret = EpochSecret.generate()
    ctx = WrapContext(MEETING, 3, "alice", "bob", os.urandom(32))
    wrapped = wrap_secret(secret, mk.public_bytes, ctx)
    assert unwrap_secret(mk, wrapped, ctx) == secret
    for other in (
        dataclasses.replace(ctx, meeting_id="meeting-2"),
        dataclasses.replace(ctx, epoch=4),
        dataclasses.replace(ctx, sender_id="mallory"),
        dataclasses.replace(ctx, recipient_id="carol"),
        dataclasses.replace(ctx, roster_hash=os.urandom(32)),
    ):
        with pytest.raises(UnwrapError):
            unwrap_secret(mk, wrapped, other)
    with pytest.raises(UnwrapError):
        unwrap_secret(MeetingKey.generate(), wrapped, ctx)
    with pytest.raises(UnwrapError):  # low-order ephemeral point
        unwrap_secret(mk, bytes(32) + wrapped[32:], ctx)


def test_key_message_wire_round_trip_and_strictness(trio: dict[str, Party]) -> None:
    msg = first_epoch_message(trio, "bob")
    raw = msg.to_bytes()
    assert KeyMessage.from_bytes(raw) == msg
    for cut in range(len(raw)):
        with pytest.raises(WireFormatError):
            KeyMessage.from_bytes(raw[:cut])
    with pytest.raises(WireFormatError):
        KeyMessage.from_bytes(raw + b"\x00")
    # entries out of canonical order are refused (one roster, one encoding)
    swapped = dataclasses.replace(msg, entries=tuple(reversed(msg.entries)))
    with pytest.raises(WireFormatError):
        KeyMessage.from_bytes(swapped.to_bytes())
    # duplicate participants are refused
    dup = dataclasses.replace(msg, entries=(msg.entries[0], msg.entries[0]))
    with pytest.raises(WireFormatError):
        KeyMessage.from_bytes(dup.to_bytes())


def test_roster_hash_chains_history() -> None:
    entries = [RosterEntry.from_binding(Party(p).binding) for p in ("alice", "bob")]
    g = genesis_hash(MEETING)
    h1 = roster_hash(g, 1, entries)
    assert h1 == roster_hash(g, 1, list(reversed(entries))), "order must not matter"
    assert h1 != roster_hash(os.urandom(32), 1, entries), "the previous hash must count"
    assert h1 != roster_hash(g, 2, entries)
    assert h1 != roster_hash(g, 1, entries[:1])
    assert g != genesis_hash("meeting-2")


def test_rotation_with_the_same_roster_moves_the_chain(trio: dict[str, Party]) -> None:
    alice = trio["alice"].session
    before = (alice.roster_hash, alice.security_code)
    deliver(alice.rotate(), trio)
    assert {p.session.epoch for p in trio.values()} == {2}
    assert {p.session.roster_hash for p in trio.values()} == {alice.roster_hash}
    assert (alice.roster_hash, alice.security_code) != before


def test_first_message_from_an_impostor_leader_is_refused() -> None:
    parties = {p: Party(p) for p in ("alice", "bob")}
    mallory = Party("mallory")
    roster = Roster.build(
        MEETING,
        1,
        genesis_hash(MEETING),
        [RosterEntry.from_binding(p.binding) for p in parties.values()],
    )
    # mallory signs with her own key but names alice (who is in the roster) as leader
    msg = dataclasses.replace(seal(mallory, roster, "bob"), leader_id="alice")
    msg = resign(mallory.identity, msg)
    result = parties["bob"].session.receive(msg)
    assert isinstance(result, Refused) and result.reason is RefusalReason.UNTRUSTED_LEADER
    # and a leader outside its own roster is refused even as the very first leader
    result = parties["bob"].session.receive(resign(mallory.identity, seal(mallory, roster, "bob")))
    assert isinstance(result, Refused) and result.reason is RefusalReason.UNTRUSTED_LEADER


def test_leader_keys_neither_of_two_bindings_for_one_id() -> None:
    alice, bob = Party("alice"), Party("bob")
    twins = [bind(IdentityKey.generate(), MeetingKey.generate(), MEETING, "bob") for _ in range(2)]
    msgs = alice.session.on_roster_change([bob.binding, *twins], 0.0)
    assert msgs == []
    roster = alice.session.roster
    assert roster is not None and roster.participant_ids == ("alice",)
