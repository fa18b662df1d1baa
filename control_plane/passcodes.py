"""Meeting passcodes and host keys.

Passcodes are generated when the host gives none, stored only as a salted scrypt
hash (memory-hard: a stolen etcd snapshot does not give them away cheaply),
compared in constant time, and checked just as long for a meeting that does not
exist, so that neither the reply nor its timing tells whether an id is in use.

scrypt with N = 2^14, r = 8, p = 1 costs about 36 ms and 16 MiB here: affordable
per join, too dear to try many passcodes offline, and online guessing is bounded
by the attempt limits long before the cost matters. It runs in a worker thread,
never on the event loop. Host keys are random 192-bit secrets: a SHA-256 of them
is enough.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
DIGEST_BYTES = 32
# Generated passcodes: 8 symbols of the room-id alphabet (40 bits), easy to type.
GENERATED_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
GENERATED_LENGTH = 8
# Compared against when the meeting does not exist: same work, never a match.
_ABSENT_SALT = os.urandom(SALT_BYTES)


@dataclass(frozen=True)
class PasscodeHash:
    """What is stored of a passcode: the salt and the scrypt digest."""

    salt: bytes
    digest: bytes

    def to_json(self) -> dict[str, str]:
        return {
            "salt": base64.b64encode(self.salt).decode(),
            "scrypt": base64.b64encode(self.digest).decode(),
        }

    @classmethod
    def from_json(cls, data: object) -> PasscodeHash:
        if not isinstance(data, dict):
            raise ValueError("passcode must be an object")
        salt = base64.b64decode(str(data.get("salt", "")), validate=True)
        digest = base64.b64decode(str(data.get("scrypt", "")), validate=True)
        if len(salt) != SALT_BYTES or len(digest) != DIGEST_BYTES:
            raise ValueError("passcode hash has the wrong size")
        return cls(salt, digest)


def generate() -> str:
    return "".join(secrets.choice(GENERATED_ALPHABET) for _ in range(GENERATED_LENGTH))


def _derive(passcode: str, salt: bytes) -> bytes:
    kdf = Scrypt(salt=salt, length=DIGEST_BYTES, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return kdf.derive(passcode.encode("utf-8"))


def hash_passcode(passcode: str) -> PasscodeHash:
    salt = os.urandom(SALT_BYTES)
    return PasscodeHash(salt, _derive(passcode, salt))


def matches(passcode: str, stored: PasscodeHash | None) -> bool:
    """Whether `passcode` is the meeting's; with no meeting (`stored` None) the same
    derivation runs against a throwaway salt and the answer is False."""
    digest = _derive(passcode, stored.salt if stored is not None else _ABSENT_SALT)
    expected = stored.digest if stored is not None else bytes(DIGEST_BYTES)
    return hmac.compare_digest(digest, expected) and stored is not None


async def check(passcode: str, stored: PasscodeHash | None) -> bool:
    """`matches`, off the event loop."""
    return await asyncio.to_thread(matches, passcode, stored)


async def protect(passcode: str) -> PasscodeHash:
    """`hash_passcode`, off the event loop."""
    return await asyncio.to_thread(hash_passcode, passcode)


def new_host_key() -> str:
    """The meeting's host secret: 192 random bits, so a fast hash suffices. Hex,
    because a base64url key may start with "-", which a command line takes for an
    option (`conclave room end ID --host-key -x...` failed that way)."""
    return secrets.token_hex(24)


def host_key_digest(host_key: str) -> str:
    return hashlib.sha256(host_key.encode("utf-8")).hexdigest()


def is_host_key(host_key: str, digest: str) -> bool:
    """Constant-time; False for an empty key or a meeting without a host."""
    if not host_key or not digest:
        return False
    return hmac.compare_digest(host_key_digest(host_key), digest)
