"""Named errors for the group-key layer (identity, roster, epoch wrapping, wire codec).

Kept apart from `client.e2ee.errors` (the SFrame family) so a key-management failure
is never mistaken for a bad media frame, and vice versa.
"""

from __future__ import annotations


class GroupKeyError(Exception):
    """Base for every group-key failure."""


class WireFormatError(GroupKeyError, ValueError):
    """Bytes from the network are not a well-formed message of the expected type.

    Everything the servers carry is untrusted; parsing is strict (exact lengths, no
    trailing bytes, no duplicates) so one message has exactly one meaning.
    """


class SignatureError(GroupKeyError):
    """An Ed25519 signature did not verify under the claimed identity key."""


class BindingError(SignatureError):
    """A participant's X25519 key is not bound to its identity key for this meeting."""


class UnwrapError(GroupKeyError):
    """A wrapped epoch secret did not decrypt: wrong recipient key, context or bytes."""


class RosterError(GroupKeyError, ValueError):
    """A roster is unusable: duplicate participants, too many senders, or empty."""


class EpochExhaustedError(GroupKeyError):
    """No epoch numbers are left in the KID layout; the meeting must restart."""


class NotLeaderError(GroupKeyError):
    """A leader-only operation was called on a session that is not in the roster."""
