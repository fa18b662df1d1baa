"""The RFC 9605 cipher suites and their AEADs, built on `cryptography`.

Kept apart from the header and framing code so the one place that touches raw
key material and nonces is small enough to review on its own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import constant_time, hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from client.e2ee.errors import AuthenticationError, FormatError, UnsupportedCipherSuiteError

# AES-CTR here counts in the last 4 bytes of the block (RFC 9605 §4.5.1: nonce ||
# 0x00000000); past 2**32 blocks the count would carry into the nonce bytes.
MAX_CTR_HMAC_PLAINTEXT = (1 << 32) * 16


class CipherSuite(enum.IntEnum):
    """IANA "SFrame Cipher Suites" values (RFC 9605 §8.1)."""

    AES_128_CTR_HMAC_SHA256_80 = 0x0001
    AES_128_CTR_HMAC_SHA256_64 = 0x0002
    AES_128_CTR_HMAC_SHA256_32 = 0x0003
    AES_128_GCM_SHA256_128 = 0x0004
    AES_256_GCM_SHA512_128 = 0x0005


@dataclass(frozen=True, slots=True)
class SuiteParams:
    """Sizes from RFC 9605 §4.5 Table 1; `nka` is None for the plain GCM suites."""

    suite: CipherSuite
    nh: int
    nka: int | None
    nk: int
    nn: int
    nt: int

    def hash(self) -> hashes.HashAlgorithm:
        """The suite's hash, used for HKDF (RFC 9605 §4.4.2) and, for CTR suites, HMAC."""
        return hashes.SHA512() if self.nh == 64 else hashes.SHA256()


_PARAMS: dict[CipherSuite, SuiteParams] = {
    CipherSuite.AES_128_CTR_HMAC_SHA256_80: SuiteParams(
        CipherSuite.AES_128_CTR_HMAC_SHA256_80, nh=32, nka=16, nk=48, nn=12, nt=10
    ),
    CipherSuite.AES_128_CTR_HMAC_SHA256_64: SuiteParams(
        CipherSuite.AES_128_CTR_HMAC_SHA256_64, nh=32, nka=16, nk=48, nn=12, nt=8
    ),
    CipherSuite.AES_128_CTR_HMAC_SHA256_32: SuiteParams(
        CipherSuite.AES_128_CTR_HMAC_SHA256_32, nh=32, nka=16, nk=48, nn=12, nt=4
    ),
    CipherSuite.AES_128_GCM_SHA256_128: SuiteParams(
        CipherSuite.AES_128_GCM_SHA256_128, nh=32, nka=None, nk=16, nn=12, nt=16
    ),
    CipherSuite.AES_256_GCM_SHA512_128: SuiteParams(
        CipherSuite.AES_256_GCM_SHA512_128, nh=64, nka=None, nk=32, nn=12, nt=16
    ),
}


def suite_params(suite: int) -> SuiteParams:
    """Look a suite up by its IANA value; anything unregistered is refused, not guessed."""
    try:
        return _PARAMS[CipherSuite(suite)]
    except ValueError:
        raise UnsupportedCipherSuiteError(f"unsupported SFrame cipher suite {suite:#06x}") from None


def derive_subkeys(params: SuiteParams, key: bytes) -> tuple[bytes, bytes]:
    """Split the AEAD key into (enc_key, auth_key) (RFC 9605 §4.5.1 derive_subkeys)."""
    if params.nka is None:
        raise UnsupportedCipherSuiteError(f"{params.suite.name} has no CTR/HMAC subkeys")
    if len(key) != params.nk:
        raise ValueError(f"{params.suite.name} needs a {params.nk}-byte key, got {len(key)}")
    return key[: params.nka], key[params.nka :]


def _compute_tag(
    params: SuiteParams, auth_key: bytes, nonce: bytes, aad: bytes, ct: bytes
) -> bytes:
    """HMAC over lengths, nonce, AAD and ciphertext, truncated to Nt (RFC 9605 §4.5.1)."""
    mac = hmac.HMAC(auth_key, params.hash())
    mac.update(len(aad).to_bytes(8, "big"))
    mac.update(len(ct).to_bytes(8, "big"))
    mac.update(params.nt.to_bytes(8, "big"))
    mac.update(nonce)
    mac.update(aad)
    mac.update(ct)
    return mac.finalize()[: params.nt]


def _aes_ctr(enc_key: bytes, nonce: bytes, data: bytes) -> bytes:
    """AES-CTR with the initial counter block nonce || 0x00000000 (RFC 9605 §4.5.1)."""
    if len(data) > MAX_CTR_HMAC_PLAINTEXT:
        raise FormatError("frame too long for the 32-bit AES-CTR block counter")
    ctx = Cipher(algorithms.AES(enc_key), modes.CTR(nonce + b"\x00\x00\x00\x00")).encryptor()
    return ctx.update(data) + ctx.finalize()


class Aead:
    """One suite's AEAD with its key bound once, so per-frame work is only the cipher."""

    __slots__ = ("_auth_key", "_enc_key", "_gcm", "params")

    def __init__(self, suite: int, key: bytes) -> None:
        self.params = suite_params(suite)
        if len(key) != self.params.nk:
            raise ValueError(f"{self.params.suite.name} needs a {self.params.nk}-byte key")
        self._gcm: AESGCM | None = None
        self._enc_key = b""
        self._auth_key = b""
        if self.params.nka is None:
            self._gcm = AESGCM(key)
        else:
            self._enc_key, self._auth_key = derive_subkeys(self.params, key)

    def encrypt(self, nonce: bytes, aad: bytes, pt: bytes) -> bytes:
        """AEAD.Encrypt: ciphertext with the tag appended (RFC 5116 convention, §4.4)."""
        if len(nonce) != self.params.nn:
            raise ValueError(f"nonce must be {self.params.nn} bytes")
        if self._gcm is not None:
            return self._gcm.encrypt(nonce, pt, aad)
        ct = _aes_ctr(self._enc_key, nonce, pt)
        return ct + _compute_tag(self.params, self._auth_key, nonce, aad, ct)

    def decrypt(self, nonce: bytes, aad: bytes, ct: bytes) -> bytes:
        """AEAD.Decrypt: verify the tag before any plaintext is released (RFC 9605 §4.5.1)."""
        if len(nonce) != self.params.nn:
            raise ValueError(f"nonce must be {self.params.nn} bytes")
        if len(ct) < self.params.nt:
            raise FormatError("ciphertext shorter than the authentication tag")
        if self._gcm is not None:
            try:
                return self._gcm.decrypt(nonce, ct, aad)
            except InvalidTag:
                raise AuthenticationError("SFrame authentication failed") from None
        inner, tag = ct[: -self.params.nt], ct[-self.params.nt :]
        candidate = _compute_tag(self.params, self._auth_key, nonce, aad, inner)
        if not constant_time.bytes_eq(tag, candidate):
            raise AuthenticationError("SFrame authentication failed")
        return _aes_ctr(self._enc_key, nonce, inner)
