"""SRTP keys of a leg from aiortc's finished DTLS handshake, for the native engine.

Does what aiortc's RTCDtlsTransport._setup_srtp does (docs/native.md, SRTP): the
profile OpenSSL negotiated, then RFC 5764 keying material from the exporter label
"EXTRACTOR-dtls_srtp", laid out as client key, server key, client salt, server
salt. The DTLS client sends with the client half; the server with the server half.
"""

from __future__ import annotations

from typing import NamedTuple

import pylibsrtp
from OpenSSL import SSL

from relay import _native


class _Profile(NamedTuple):
    libsrtp: int
    key_length: int
    salt_length: int


# The profiles aiortc offers (rtcdtlstransport.SRTP_PROFILES), by OpenSSL name.
_PROFILES: dict[bytes, _Profile] = {
    b"SRTP_AES128_CM_SHA1_80": _Profile(_native.SRTP_AES128_CM_SHA1_80, 16, 14),
    b"SRTP_AEAD_AES_128_GCM": _Profile(_native.SRTP_AEAD_AES_128_GCM, 16, 12),
    b"SRTP_AEAD_AES_256_GCM": _Profile(_native.SRTP_AEAD_AES_256_GCM, 32, 12),
}


class SrtpKeys(NamedTuple):
    profile: int
    tx_key_and_salt: bytes
    rx_key_and_salt: bytes


def keys_from_dtls(ssl_connection: SSL.Connection, role: str) -> SrtpKeys:
    """(libsrtp profile, our sending key+salt, our receiving key+salt) of a connection
    whose handshake is complete; `role` is the DTLS role ("client" or "server").

    ValueError if no SRTP profile we know was negotiated or the role is unknown."""
    if role not in ("client", "server"):
        raise ValueError(f"DTLS role must be 'client' or 'server', not {role!r}")
    name = ssl_connection.get_selected_srtp_profile()
    profile = _PROFILES.get(name)
    if profile is None:
        raise ValueError(f"no supported SRTP profile negotiated ({name!r})")
    klen, slen = profile.key_length, profile.salt_length
    material = ssl_connection.export_keying_material(b"EXTRACTOR-dtls_srtp", 2 * (klen + slen))

    def half(index: int) -> bytes:  # 0: client's, 1: server's
        key = material[index * klen : (index + 1) * klen]
        salt = material[2 * klen + index * slen : 2 * klen + (index + 1) * slen]
        return key + salt

    mine, theirs = (0, 1) if role == "client" else (1, 0)
    return SrtpKeys(profile.libsrtp, half(mine), half(theirs))


def aiortc_session(profile: int, key_and_salt: bytes, outbound: bool) -> pylibsrtp.Session:
    """The pylibsrtp session aiortc's _setup_srtp makes from these keys: what the
    native sessions replace, and are tested and measured against."""
    policy = pylibsrtp.Policy(
        key=key_and_salt,
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND
        if outbound
        else pylibsrtp.Policy.SSRC_ANY_INBOUND,
        srtp_profile=profile,
    )
    policy.allow_repeat_tx = True
    policy.window_size = 1024
    return pylibsrtp.Session(policy)
