"""Epoch secrets: wrapping one to a recipient, and deriving per-sender SFrame keys.

An epoch secret is 32 random bytes drawn by the leader (Zoom whitepaper §7.6.3,
"MK"). It is sent to each roster member sealed with ephemeral-static X25519, HKDF
and AES-GCM; the HKDF info names the meeting, epoch, sender and recipient, and the
AAD adds the roster hash, so a wrapped secret cannot be replayed to another
recipient, meeting, epoch or roster. The ephemeral key means a later compromise of
the leader's own meeting key reveals no past epoch secret.

SFrame base keys are derived per sender, and each sender gets its own KID:

    KID = (epoch mod 2**EPOCH_BITS) << SENDER_BITS | sender_index

(RFC 9605 §5.2 "sender bits"): a receiver finds the key from the KID alone, and two
senders never share a key, hence never share a nonce space.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from client.e2ee.group_errors import UnwrapError
from client.e2ee.identity import PUBLIC_KEY_SIZE, MeetingKey
from client.e2ee.roster import HASH_SIZE
from client.e2ee.suites import suite_params
from client.e2ee.wire import Writer

__all__ = [
    "EPOCH_BITS",
    "MAX_EPOCH",
    "MAX_SENDERS",
    "SECRET_SIZE",
    "SENDER_BITS",
    "WRAPPED_SIZE",
    "EpochSecret",
    "WrapContext",
    "make_kid",
    "sender_base_key",
    "split_kid",
    "unwrap_secret",
    "wrap_secret",
]

SECRET_SIZE = 32
# KID layout: 16 epoch bits above 8 sender bits, so a KID is at most 3 bytes on the
# wire. 256 senders per epoch; 65535 epochs per meeting (epoch 0 is the genesis, never
# keyed). SFrameContext never reuses a sending KID, so epochs stop at MAX_EPOCH rather
# than wrapping: at one rekey per second that is 18 hours of continuous churn, after
# which the meeting is restarted under a new meeting id (a new chain).
EPOCH_BITS = 16
SENDER_BITS = 8
MAX_SENDERS = 1 << SENDER_BITS
MAX_EPOCH = (1 << EPOCH_BITS) - 1
_TAG_SIZE = 16
WRAPPED_SIZE = PUBLIC_KEY_SIZE + SECRET_SIZE + _TAG_SIZE

WRAP_LABEL = b"conclave-e2ee-v1 wrap"
SENDER_LABEL = b"conclave-e2ee-v1 sender"


def make_kid(epoch: int, sender_index: int) -> int:
    """The KID for `sender_index` in `epoch` (layout above)."""
    if not 0 <= sender_index < MAX_SENDERS:
        raise ValueError(f"sender index must be below {MAX_SENDERS}")
    if epoch < 0:
        raise ValueError("epoch must not be negative")
    return ((epoch % (1 << EPOCH_BITS)) << SENDER_BITS) | sender_index


def split_kid(kid: int) -> tuple[int, int]:
    """(epoch mod 2**EPOCH_BITS, sender index) of a KID in our layout."""
    if not 0 <= kid < 1 << (EPOCH_BITS + SENDER_BITS):
        raise ValueError("KID is outside the group KID layout")
    return kid >> SENDER_BITS, kid & (MAX_SENDERS - 1)


@dataclass(frozen=True, slots=True)
class EpochSecret:
    """32 bytes from the leader's CSPRNG; never leaves the clients in the clear."""

    value: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.value) != SECRET_SIZE:
            raise ValueError(f"epoch secret must be {SECRET_SIZE} bytes")

    @classmethod
    def generate(cls) -> EpochSecret:
        return cls(os.urandom(SECRET_SIZE))


@dataclass(frozen=True, slots=True)
class WrapContext:
    """Everything a wrapped secret is bound to."""

    meeting_id: str
    epoch: int
    sender_id: str
    recipient_id: str
    roster_hash: bytes

    def info(self) -> bytes:
        return (
            Writer()
            .blob(WRAP_LABEL)
            .text(self.meeting_id)
            .u64(self.epoch)
            .text(self.sender_id)
            .text(self.recipient_id)
            .finish()
        )

    def aad(self) -> bytes:
        return self.info() + bytes(self.roster_hash)


def _wrap_key(dh: bytes, eph_public: bytes, recipient_public: bytes, ctx: WrapContext) -> bytes:
    # Salt with both public keys: the key is bound to this exact key exchange.
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32 + 12,
        salt=eph_public + recipient_public,
        info=ctx.info(),
    ).derive(dh)


def wrap_secret(secret: EpochSecret, recipient_public: bytes, ctx: WrapContext) -> bytes:
    """ephemeral X25519 public key || AES-256-GCM(secret), 80 bytes."""
    if len(ctx.roster_hash) != HASH_SIZE:
        raise ValueError("roster hash must be 32 bytes")
    eph = X25519PrivateKey.generate()
    eph_public = eph.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    dh = MeetingKey(eph).exchange(recipient_public)
    okm = _wrap_key(dh, eph_public, bytes(recipient_public), ctx)
    # A fresh ephemeral key per wrap makes every AES key single-use, so a derived
    # nonce is safe.
    sealed = AESGCM(okm[:32]).encrypt(okm[32:], secret.value, ctx.aad())
    return eph_public + sealed


def unwrap_secret(meeting_key: MeetingKey, wrapped: bytes, ctx: WrapContext) -> EpochSecret:
    """Open a wrapped secret addressed to `meeting_key`; `UnwrapError` on any failure."""
    if len(wrapped) != WRAPPED_SIZE:
        raise UnwrapError("wrapped secret has the wrong length")
    eph_public, sealed = bytes(wrapped[:PUBLIC_KEY_SIZE]), bytes(wrapped[PUBLIC_KEY_SIZE:])
    try:
        dh = meeting_key.exchange(eph_public)  # ValueError on a low-order point
        okm = _wrap_key(dh, eph_public, meeting_key.public_bytes, ctx)
        value = AESGCM(okm[:32]).decrypt(okm[32:], sealed, ctx.aad())
    except (InvalidTag, ValueError):
        raise UnwrapError("wrapped secret does not decrypt for this recipient") from None
    return EpochSecret(value)


def sender_base_key(
    secret: EpochSecret,
    *,
    meeting_id: str,
    epoch: int,
    roster_hash: bytes,
    sender_index: int,
    suite: int,
) -> bytes:
    """The SFrame base_key of one sender in one epoch.

    HKDF-SHA256 with info naming meeting, epoch, sender index and cipher suite, and
    the roster hash as salt: members that disagree on the roster derive different
    keys and fail closed instead of talking past a forked roster.
    """
    params = suite_params(suite)
    info = (
        Writer()
        .blob(SENDER_LABEL)
        .text(meeting_id)
        .u64(epoch)
        .u16(sender_index)
        .u16(params.suite)
        .finish()
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=bytes(roster_hash), info=info).derive(
        secret.value
    )
