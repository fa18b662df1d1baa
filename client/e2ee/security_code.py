"""The meeting security code: a short decimal string humans compare out loud.

Like Zoom's "meeting leader security code" (whitepaper §7.7), it covers the leader's
identity key, so a server that interposes its own leader (a man in the middle) is
caught when people read the code to each other. Ours also covers the current roster
hash, which chains every earlier roster: equal codes mean equal views of who has
held the keys, and the code changes with every epoch (every join or leave).

25 decimal digits (5 groups of 5) carry about 83 bits; forging a matching code
needs a second preimage, not a collision, which is far out of reach within a meeting.
"""

from __future__ import annotations

import hashlib

from client.e2ee.identity import PUBLIC_KEY_SIZE
from client.e2ee.roster import HASH_SIZE
from client.e2ee.wire import Writer

__all__ = ["CODE_GROUPS", "CODE_GROUP_DIGITS", "SECURITY_CODE_LABEL", "security_code"]

SECURITY_CODE_LABEL = b"conclave-e2ee-v1 security-code"
CODE_GROUPS = 5
CODE_GROUP_DIGITS = 5


def security_code(meeting_id: str, leader_identity: bytes, roster_hash: bytes) -> str:
    """ "ddddd ddddd ddddd ddddd ddddd", equal for every member of the same epoch."""
    if len(roster_hash) != HASH_SIZE:
        raise ValueError("roster hash must be 32 bytes")
    digest = hashlib.sha256(
        Writer()
        .blob(SECURITY_CODE_LABEL)
        .text(meeting_id)
        .fixed(leader_identity, PUBLIC_KEY_SIZE)
        .fixed(roster_hash, HASH_SIZE)
        .finish()
    ).digest()
    digits = CODE_GROUPS * CODE_GROUP_DIGITS
    # 256 bits reduced mod 10**25: the bias is below 2**-170, i.e. none.
    number = str(int.from_bytes(digest, "big") % 10**digits).zfill(digits)
    return " ".join(number[i : i + CODE_GROUP_DIGITS] for i in range(0, digits, CODE_GROUP_DIGITS))
