"""Per-device identity keys, per-meeting key-agreement keys, and the binding between them.

Following Zoom's E2EE design (whitepaper §7.6.2), each device holds a long-term
Ed25519 identity key and draws a fresh X25519 key for every meeting. The identity
key signs a *binding* (meeting id, participant id, X25519 public key, context
label). The leader wraps epoch secrets only to X25519 keys whose binding verifies,
so a server that substitutes its own X25519 key for a participant's (to receive the
meeting key itself) is refused. Which identity key belongs to which person is not
decided here: the security code (`client.e2ee.security_code`) lets humans check it.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from client.e2ee.group_errors import BindingError, SignatureError, WireFormatError
from client.e2ee.wire import Reader, Writer

__all__ = [
    "BINDING_LABEL",
    "PUBLIC_KEY_SIZE",
    "SIGNATURE_SIZE",
    "Binding",
    "IdentityKey",
    "MeetingKey",
    "bind",
    "verify_binding",
    "verify_signature",
]

PUBLIC_KEY_SIZE = 32  # both Ed25519 and X25519
SIGNATURE_SIZE = 64
BINDING_LABEL = b"conclave-e2ee-v1 binding"
_BINDING_MAGIC = b"CEB1"


def _signed_bytes(label: bytes, payload: bytes) -> bytes:
    """Label (length-prefixed) then payload: a signature made for one purpose never
    verifies for another (domain separation)."""
    return len(label).to_bytes(2, "big") + label + payload


def verify_signature(public_key: bytes, label: bytes, payload: bytes, signature: bytes) -> None:
    """Raise `SignatureError` unless `signature` is the identity's signature on `payload`."""
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes(public_key))
        key.verify(bytes(signature), _signed_bytes(label, payload))
    except (InvalidSignature, ValueError):
        raise SignatureError(f"signature does not verify for {label.decode()}") from None


class IdentityKey:
    """A device's Ed25519 identity key; the private half never leaves this object."""

    __slots__ = ("_private", "public_bytes")

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public_bytes: bytes = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def generate(cls) -> IdentityKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> IdentityKey:
        """Restore a persisted device key (storage is the caller's business)."""
        return cls(Ed25519PrivateKey.from_private_bytes(bytes(raw)))

    def sign(self, label: bytes, payload: bytes) -> bytes:
        """Sign `payload` under a purpose `label` (see `_signed_bytes`)."""
        return self._private.sign(_signed_bytes(label, payload))


class MeetingKey:
    """A fresh X25519 key for one meeting; discarded when the meeting ends."""

    __slots__ = ("_private", "public_bytes")

    def __init__(self, private: X25519PrivateKey) -> None:
        self._private = private
        self.public_bytes: bytes = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def generate(cls) -> MeetingKey:
        return cls(X25519PrivateKey.generate())

    def exchange(self, peer_public: bytes) -> bytes:
        """X25519 shared secret; raises ValueError for a low-order peer key (all-zero output)."""
        return self._private.exchange(X25519PublicKey.from_public_bytes(bytes(peer_public)))


@dataclass(frozen=True, slots=True)
class Binding:
    """A participant's signed statement "my X25519 key for this meeting is K"."""

    meeting_id: str
    participant_id: str
    identity_public: bytes
    meeting_public: bytes
    signature: bytes

    def signed_payload(self) -> bytes:
        return binding_payload(
            self.meeting_id, self.participant_id, self.identity_public, self.meeting_public
        )

    def to_bytes(self) -> bytes:
        return (
            Writer()
            .fixed(_BINDING_MAGIC, 4)
            .text(self.meeting_id)
            .text(self.participant_id)
            .fixed(self.identity_public, PUBLIC_KEY_SIZE)
            .fixed(self.meeting_public, PUBLIC_KEY_SIZE)
            .fixed(self.signature, SIGNATURE_SIZE)
            .finish()
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Binding:
        r = Reader(data)
        r.expect(_BINDING_MAGIC, "binding")
        out = cls(
            meeting_id=r.text("meeting id"),
            participant_id=r.text("participant id"),
            identity_public=r.fixed(PUBLIC_KEY_SIZE, "identity key"),
            meeting_public=r.fixed(PUBLIC_KEY_SIZE, "meeting key"),
            signature=r.fixed(SIGNATURE_SIZE, "signature"),
        )
        r.finish()
        return out


def binding_payload(
    meeting_id: str, participant_id: str, identity_public: bytes, meeting_public: bytes
) -> bytes:
    """The exact bytes a binding signature covers."""
    return (
        Writer()
        .text(meeting_id)
        .text(participant_id)
        .fixed(identity_public, PUBLIC_KEY_SIZE)
        .fixed(meeting_public, PUBLIC_KEY_SIZE)
        .finish()
    )


def bind(
    identity: IdentityKey, meeting_key: MeetingKey, meeting_id: str, participant_id: str
) -> Binding:
    """Sign this device's X25519 key for one meeting and participant id."""
    payload = binding_payload(
        meeting_id, participant_id, identity.public_bytes, meeting_key.public_bytes
    )
    return Binding(
        meeting_id=meeting_id,
        participant_id=participant_id,
        identity_public=identity.public_bytes,
        meeting_public=meeting_key.public_bytes,
        signature=identity.sign(BINDING_LABEL, payload),
    )


def verify_binding(
    binding: Binding, *, meeting_id: str, expected_identity: bytes | None = None
) -> None:
    """Raise `BindingError` unless `binding` is a valid binding for `meeting_id`.

    Defends against a server that swaps a participant's X25519 key (signature fails),
    replays a binding from another meeting (meeting id differs), or, when the caller
    pins `expected_identity`, substitutes a whole new identity for a known participant.
    """
    if binding.meeting_id != meeting_id:
        raise BindingError("binding is for another meeting")
    if expected_identity is not None and bytes(expected_identity) != binding.identity_public:
        raise BindingError("binding is signed by an unexpected identity key")
    try:
        verify_signature(
            binding.identity_public, BINDING_LABEL, binding.signed_payload(), binding.signature
        )
    except (SignatureError, WireFormatError, ValueError):
        raise BindingError(f"binding for {binding.participant_id!r} does not verify") from None
