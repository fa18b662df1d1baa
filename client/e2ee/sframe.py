"""SFrame (RFC 9605): header codec, key/salt derivation, nonces and the frame functions.

Everything here is stateless. `encrypt`/`decrypt` are the plain interface that the
RFC's Appendix C vectors drive; CTR bookkeeping, key roles and anti-replay live in
`client.e2ee.context`, which is what the media path should use.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from client.e2ee.errors import (
    AuthenticationError,
    FormatError,
    HeaderError,
    SFrameError,
    UnsupportedCipherSuiteError,
)
from client.e2ee.suites import Aead, CipherSuite, SuiteParams, suite_params

__all__ = [
    "MAX_CTR",
    "MAX_KID",
    "AuthenticationError",
    "CipherSuite",
    "FormatError",
    "Header",
    "HeaderError",
    "KeyContext",
    "SFrameError",
    "UnsupportedCipherSuiteError",
    "decode_header",
    "decrypt",
    "derive_key_salt",
    "encode_header",
    "encrypt",
    "extract_secret",
    "key_label",
    "make_nonce",
    "salt_label",
]

# KID and CTR are at most 8 bytes on the wire (3-bit length field, RFC 9605 §4.3).
MAX_KID = (1 << 64) - 1
MAX_CTR = (1 << 64) - 1

_KEY_LABEL = b"SFrame 1.0 Secret key "
_SALT_LABEL = b"SFrame 1.0 Secret salt "


# --- Header (RFC 9605 §4.3) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    """A parsed SFrame header; `encoded` is kept because it is the AAD prefix (§4.4.3)."""

    kid: int
    ctr: int
    encoded: bytes


def _check_u64(name: str, value: int) -> None:
    if not 0 <= value <= MAX_KID:
        raise HeaderError(f"{name} {value} does not fit in 64 bits")


def _min_len(value: int) -> int:
    """Bytes needed for `value` in big-endian, at least 1 (RFC 9605 §4.3: minimal)."""
    return max(1, (value.bit_length() + 7) // 8)


def encode_header(kid: int, ctr: int) -> bytes:
    """Config byte |X|K|Y|C| then KID then CTR, minimal big-endian (RFC 9605 §4.3)."""
    _check_u64("KID", kid)
    _check_u64("CTR", ctr)
    config = 0
    tail = b""
    if kid < 8:
        config |= kid << 4
    else:
        klen = _min_len(kid)
        config |= 0x80 | ((klen - 1) << 4)
        tail += kid.to_bytes(klen, "big")
    if ctr < 8:
        config |= ctr
    else:
        clen = _min_len(ctr)
        config |= 0x08 | (clen - 1)
        tail += ctr.to_bytes(clen, "big")
    return bytes([config]) + tail


def _read_field(data: bytes, offset: int, length: int, name: str) -> int:
    """Read one extended KID/CTR field, refusing truncation and non-minimal encodings."""
    end = offset + length
    if end > len(data):
        raise HeaderError(f"SFrame header truncated in {name}")
    value = int.from_bytes(data[offset:end], "big")
    # RFC 9605 §4.3: values 0-7 live in the config byte and longer ones MUST use the
    # minimum length, so any other spelling is malformed (one (KID, CTR), one header).
    if value < 8 or _min_len(value) != length:
        raise HeaderError(f"SFrame header {name} is not minimally encoded")
    return value


def decode_header(data: bytes) -> Header:
    """Parse the header at the start of `data`; the rest is the AEAD ciphertext."""
    if not data:
        raise HeaderError("empty SFrame ciphertext")
    config = data[0]
    offset = 1
    if config & 0x80:
        klen = ((config >> 4) & 0x07) + 1
        kid = _read_field(data, offset, klen, "KID")
        offset += klen
    else:
        kid = (config >> 4) & 0x07
    if config & 0x08:
        clen = (config & 0x07) + 1
        ctr = _read_field(data, offset, clen, "CTR")
        offset += clen
    else:
        ctr = config & 0x07
    return Header(kid=kid, ctr=ctr, encoded=bytes(data[:offset]))


# --- Key schedule (RFC 9605 §4.4.2) ---------------------------------------------


def extract_secret(suite: int, base_key: bytes) -> bytes:
    """sframe_secret = HKDF-Extract("", base_key) with the suite's hash (RFC 9605 §4.4.2)."""
    params = suite_params(suite)
    mac = hmac.HMAC(b"", params.hash())  # RFC 5869 §2.2: Extract is HMAC(salt, IKM)
    mac.update(bytes(base_key))
    return mac.finalize()


def key_label(suite: int, kid: int) -> bytes:
    """ "SFrame 1.0 Secret key " + KID (8-byte BE) + cipher_suite (2-byte BE), §4.4.2."""
    _check_u64("KID", kid)
    return _KEY_LABEL + kid.to_bytes(8, "big") + suite_params(suite).suite.to_bytes(2, "big")


def salt_label(suite: int, kid: int) -> bytes:
    """ "SFrame 1.0 Secret salt " + KID (8-byte BE) + cipher_suite (2-byte BE), §4.4.2."""
    _check_u64("KID", kid)
    return _SALT_LABEL + kid.to_bytes(8, "big") + suite_params(suite).suite.to_bytes(2, "big")


def _expand(params: SuiteParams, secret: bytes, info: bytes, length: int) -> bytes:
    return HKDFExpand(algorithm=params.hash(), length=length, info=info).derive(secret)


def derive_key_salt(suite: int, kid: int, base_key: bytes) -> tuple[bytes, bytes]:
    """(sframe_key, sframe_salt) for one KID: Nk and Nn bytes (RFC 9605 §4.4.2)."""
    params = suite_params(suite)
    secret = extract_secret(suite, base_key)
    key = _expand(params, secret, key_label(suite, kid), params.nk)
    salt = _expand(params, secret, salt_label(suite, kid), params.nn)
    return key, salt


def make_nonce(salt: bytes, ctr: int) -> bytes:
    """nonce = sframe_salt XOR CTR as a big-endian Nn-byte integer (RFC 9605 §4.4.3)."""
    _check_u64("CTR", ctr)
    return (int.from_bytes(salt, "big") ^ ctr).to_bytes(len(salt), "big")


# --- Frames (RFC 9605 §4.4.3, §4.4.4) --------------------------------------------


class KeyContext:
    """The derived key, salt and bound AEAD for one (suite, KID, base_key).

    Deriving once per key rather than once per frame keeps HKDF off the media path.
    """

    __slots__ = ("_aead", "_salt", "kid", "suite")

    def __init__(self, suite: int, kid: int, base_key: bytes) -> None:
        self.suite = suite_params(suite).suite
        self.kid = kid
        key, self._salt = derive_key_salt(suite, kid, base_key)
        self._aead = Aead(suite, key)

    def seal(self, ctr: int, metadata: bytes, plaintext: bytes) -> bytes:
        """header || AEAD.Encrypt(key, nonce, header || metadata, pt) (RFC 9605 §4.4.3)."""
        header = encode_header(self.kid, ctr)
        nonce = make_nonce(self._salt, ctr)
        return header + self._aead.encrypt(nonce, header + bytes(metadata), bytes(plaintext))

    def open(self, header: Header, metadata: bytes, ciphertext: bytes) -> bytes:
        """Authenticate and decrypt the bytes after `header` (RFC 9605 §4.4.4)."""
        if header.kid != self.kid:
            raise AuthenticationError("frame KID does not match this key")
        nonce = make_nonce(self._salt, header.ctr)
        body = bytes(ciphertext)[len(header.encoded) :]
        return self._aead.decrypt(nonce, header.encoded + bytes(metadata), body)


def encrypt(
    suite: int, base_key: bytes, kid: int, ctr: int, metadata: bytes, plaintext: bytes
) -> bytes:
    """One SFrame ciphertext. Stateless: the caller owns CTR uniqueness (RFC 9605 §9.1)."""
    return KeyContext(suite, kid, base_key).seal(ctr, metadata, plaintext)


def decrypt(
    suite: int, base_key: bytes, metadata: bytes, ciphertext: bytes
) -> tuple[int, int, bytes]:
    """(kid, ctr, plaintext) of an SFrame ciphertext; raises `SFrameError` on any failure.

    The key is derived for the KID named in the header, as if `base_key` were stored
    under that KID (RFC 9605 Appendix C.3 drives it this way).
    """
    data = bytes(ciphertext)
    header = decode_header(data)
    if len(data) - len(header.encoded) < suite_params(suite).nt:
        raise FormatError("SFrame ciphertext shorter than its authentication tag")
    plaintext = KeyContext(suite, header.kid, base_key).open(header, metadata, data)
    return header.kid, header.ctr, plaintext
