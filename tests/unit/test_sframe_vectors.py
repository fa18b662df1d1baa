"""RFC 9605 Appendix C: every published vector through our header, KDF, AEAD and frames.

Data: tests/unit/vectors/rfc9605_appendix_c.json (source recorded in its `_source`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from client.e2ee import sframe
from client.e2ee.suites import Aead, CipherSuite, derive_subkeys, suite_params

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "rfc9605_appendix_c.json").read_text()
)
HEADERS: list[dict[str, Any]] = VECTORS["header"]
AEADS: list[dict[str, Any]] = VECTORS["aes_ctr_hmac"]
FRAMES: list[dict[str, Any]] = VECTORS["sframe"]


def h(value: str) -> bytes:
    return bytes.fromhex(value)


def test_vector_set_is_complete() -> None:
    """Guard against a truncated data file silently shrinking the suite."""
    assert "RFC 9605" in VECTORS["_source"]["document"]
    assert len(HEADERS) == 289
    assert sorted(v["cipher_suite"] for v in AEADS) == [1, 2, 3]
    assert sorted(v["cipher_suite"] for v in FRAMES) == [1, 2, 3, 4, 5]
    assert {(v["kid"], v["ctr"]) for v in HEADERS} >= {(0, 0), (2**64 - 1, 2**64 - 1)}


# --- C.1 header encoding/decoding ----------------------------------------------


@pytest.mark.parametrize("vec", HEADERS, ids=lambda v: f"kid{v['kid']:x}-ctr{v['ctr']:x}")
def test_header_vector(vec: dict[str, Any]) -> None:
    assert sframe.encode_header(vec["kid"], vec["ctr"]).hex() == vec["header"]
    parsed = sframe.decode_header(h(vec["header"]))
    assert (parsed.kid, parsed.ctr, parsed.encoded) == (vec["kid"], vec["ctr"], h(vec["header"]))
    # the header is self-delimiting: trailing ciphertext is not part of it
    assert sframe.decode_header(h(vec["header"]) + b"\xaa\xbb").encoded == h(vec["header"])


# --- C.2 AES-CTR + HMAC AEAD -----------------------------------------------------


@pytest.mark.parametrize("vec", AEADS, ids=lambda v: f"suite{v['cipher_suite']}")
def test_aes_ctr_hmac_vector(vec: dict[str, Any]) -> None:
    params = suite_params(vec["cipher_suite"])
    assert derive_subkeys(params, h(vec["key"])) == (h(vec["enc_key"]), h(vec["auth_key"]))
    aead = Aead(vec["cipher_suite"], h(vec["key"]))
    ct = aead.encrypt(h(vec["nonce"]), h(vec["aad"]), h(vec["pt"]))
    assert ct.hex() == vec["ct"]
    assert aead.decrypt(h(vec["nonce"]), h(vec["aad"]), h(vec["ct"])) == h(vec["pt"])
    assert len(ct) - len(h(vec["pt"])) == params.nt


@pytest.mark.parametrize("vec", AEADS, ids=lambda v: f"suite{v['cipher_suite']}")
def test_aes_ctr_hmac_vector_rejects_any_bit_flip(vec: dict[str, Any]) -> None:
    aead = Aead(vec["cipher_suite"], h(vec["key"]))
    ct = h(vec["ct"])
    for i in range(len(ct)):
        bad = bytearray(ct)
        bad[i] ^= 0x01
        with pytest.raises(sframe.AuthenticationError):
            aead.decrypt(h(vec["nonce"]), h(vec["aad"]), bytes(bad))
    with pytest.raises(sframe.AuthenticationError):
        aead.decrypt(h(vec["nonce"]), h(vec["aad"]) + b"x", ct)


# --- C.3 SFrame encryption/decryption --------------------------------------------


@pytest.mark.parametrize("vec", FRAMES, ids=lambda v: CipherSuite(v["cipher_suite"]).name)
def test_sframe_key_schedule_vector(vec: dict[str, Any]) -> None:
    suite, kid = vec["cipher_suite"], vec["kid"]
    assert sframe.key_label(suite, kid).hex() == vec["sframe_key_label"]
    assert sframe.salt_label(suite, kid).hex() == vec["sframe_salt_label"]
    assert sframe.extract_secret(suite, h(vec["base_key"])).hex() == vec["sframe_secret"]
    key, salt = sframe.derive_key_salt(suite, kid, h(vec["base_key"]))
    assert (key.hex(), salt.hex()) == (vec["sframe_key"], vec["sframe_salt"])
    assert sframe.make_nonce(salt, vec["ctr"]).hex() == vec["nonce"]
    header = sframe.encode_header(kid, vec["ctr"])
    assert (header + h(vec["metadata"])).hex() == vec["aad"]


@pytest.mark.parametrize("vec", FRAMES, ids=lambda v: CipherSuite(v["cipher_suite"]).name)
def test_sframe_encrypt_decrypt_vector(vec: dict[str, Any]) -> None:
    suite = vec["cipher_suite"]
    ct = sframe.encrypt(
        suite, h(vec["base_key"]), vec["kid"], vec["ctr"], h(vec["metadata"]), h(vec["pt"])
    )
    assert ct.hex() == vec["ct"]
    assert sframe.decrypt(suite, h(vec["base_key"]), h(vec["metadata"]), h(vec["ct"])) == (
        vec["kid"],
        vec["ctr"],
        h(vec["pt"]),
    )


@pytest.mark.parametrize("vec", FRAMES, ids=lambda v: CipherSuite(v["cipher_suite"]).name)
def test_sframe_vector_fails_closed(vec: dict[str, Any]) -> None:
    """Each published ciphertext must not decrypt under any change of its inputs."""
    suite, base_key, meta, ct = (
        vec["cipher_suite"],
        h(vec["base_key"]),
        h(vec["metadata"]),
        h(vec["ct"]),
    )
    other_suite = 4 if suite != 4 else 5
    attempts = [
        (suite, bytes([base_key[0] ^ 1]) + base_key[1:], meta, ct),  # wrong key
        (suite, base_key, meta + b"!", ct),  # different metadata
        (suite, base_key, meta, ct[:-1]),  # truncated tag
        (suite, base_key, meta, ct[:-1] + bytes([ct[-1] ^ 0x80])),  # tampered tag
        (suite, base_key, meta, ct[:6] + bytes([ct[6] ^ 1]) + ct[7:]),  # tampered body
        (suite, base_key, meta, sframe.encode_header(vec["kid"], vec["ctr"] + 1) + ct[5:]),
        (other_suite, base_key, meta, ct),  # suite is bound into the key schedule
    ]
    for args in attempts:
        with pytest.raises(sframe.SFrameError):
            sframe.decrypt(*args)
