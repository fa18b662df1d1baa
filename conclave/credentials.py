"""API credentials: a key per organisation or service, presented as a signed,
short-lived token, never as the secret itself.

The key's secret is an Ed25519 private key that only its holder keeps (the key
file, mode 0600); etcd keeps only the public key (`KeyRecord`), so nothing secret
is at rest in the cluster store. Ed25519 rather than HMAC for that reason: a
server that checks tokens cannot mint them (RFC 8032).

A token is three dot-separated parts, like a compact JWS (RFC 7515 §7.1) but
with one fixed algorithm and no header to negotiate it:

    cv1.<b64url(claims JSON)>.<b64url(Ed25519 signature of "cv1.<claims part>")>

Claims: {"kid", "org", "iat", "exp", "jti"}; `iat` and `exp` in whole seconds.
Every refusal is one `CredentialError` with a short `code`; nothing else is ever
raised for a string that came off the wire.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from conclave.paths import config_dir

API_KEYS_PREFIX = "/conclave/api-keys/"
KEY_FILE_ENV = "CONCLAVE_API_KEY_FILE"
TOKEN_PREFIX = "cv1"
TOKEN_LIFETIME_S = 300  # what clients mint
MAX_TOKEN_LIFETIME_S = 900  # what servers accept (exp - iat)
CLOCK_SKEW_S = 60
METADATA_KEY = "authorization"  # gRPC metadata / HTTP header; value "Bearer <token>"

MAX_TOKEN_CHARS = 2048
KEY_ID_PREFIX = "ck_"
_KEY_ID = re.compile(r"ck_[A-Za-z0-9_-]{16}")
_ORGANISATION = re.compile(r"[A-Za-z0-9._-]{1,64}")
_JTI = re.compile(r"[A-Za-z0-9_-]{11}")  # 8 random bytes, b64url without padding
_CLAIMS = frozenset({"kid", "org", "iat", "exp", "jti"})
_RECORD = ("key_id", "organisation", "public_key", "created_at_ms")
_KEY_FILE = ("key_id", "organisation", "secret")
_RAW = serialization.Encoding.Raw


class CredentialError(Exception):
    """A token or an authorization value was refused; `code` says why.

    Codes: "missing", "malformed", "unknown_key", "bad_signature", "expired",
    "not_yet_valid", "too_long".
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ApiKey:
    """What the holder keeps (the key file)."""

    key_id: str
    organisation: str
    private_key: Ed25519PrivateKey = field(repr=False, compare=False)

    def public_b64(self) -> str:
        """Base64 (standard, padded) of the raw 32-byte public key."""
        raw = self.private_key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode()


@dataclass(frozen=True)
class KeyRecord:
    """What etcd keeps at API_KEYS_PREFIX + key_id: no secret."""

    key_id: str
    organisation: str
    public_key: Ed25519PublicKey = field(compare=False)
    created_at_ms: int


# ------------------------------------------------------------------ keys


def new_key(organisation: str) -> ApiKey:
    """A fresh key for `organisation`; ValueError on a bad organisation name."""
    _check_organisation(organisation)
    key_id = KEY_ID_PREFIX + secrets.token_urlsafe(12)  # 12 bytes: 16 characters
    return ApiKey(key_id, organisation, Ed25519PrivateKey.generate())


def key_record(key: ApiKey, created_at_ms: int | None = None) -> bytes:
    """The JSON record etcd keeps for `key`: its public half only."""
    if created_at_ms is None:
        created_at_ms = int(time.time() * 1000)
    record = {
        "key_id": key.key_id,
        "organisation": key.organisation,
        "public_key": key.public_b64(),
        "created_at_ms": created_at_ms,
    }
    return json.dumps(record, separators=(",", ":")).encode()


def parse_key_record(raw: bytes) -> KeyRecord:
    """The record as `key_record` wrote it; ValueError when anything is off.

    Unknown fields are ignored (a later version may add some); known ones must
    have exactly their type, and the key must be 32 bytes in canonical base64.
    """
    data = _json_object(raw, "key record")
    _require_fields(data, _RECORD, "key record")
    key_id, organisation = _check_names(data["key_id"], data["organisation"])
    created_at_ms = data["created_at_ms"]
    if not _is_int(created_at_ms) or created_at_ms < 0:
        raise ValueError("key record: created_at_ms must be a non-negative integer")
    raw_key = _b64_32(data["public_key"], "key record: public_key")
    return KeyRecord(
        key_id, organisation, Ed25519PublicKey.from_public_bytes(raw_key), created_at_ms
    )


def save_key_file(key: ApiKey, path: Path) -> None:
    """Write `key`, secret included, to a new file readable by its owner only.

    Refuses to replace anything at `path` (FileExistsError); missing parent
    directories are created with mode 0700.
    """
    seed = key.private_key.private_bytes(
        _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    content = {
        "key_id": key.key_id,
        "organisation": key.organisation,
        "secret": base64.b64encode(seed).decode(),
    }
    _make_private_dirs(path.parent)
    # O_EXCL: never overwrite, and never follow a symlink planted at `path`.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            fd = -1
            json.dump(content, file, indent=2)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        if fd >= 0:
            os.close(fd)
        path.unlink(missing_ok=True)
        raise


def load_key_file(path: Path) -> ApiKey:
    """The key `save_key_file` wrote; ValueError when the file is malformed."""
    data = _json_object(path.read_bytes(), "key file")
    _require_fields(data, _KEY_FILE, "key file")
    key_id, organisation = _check_names(data["key_id"], data["organisation"])
    seed = _b64_32(data["secret"], "key file: secret")
    return ApiKey(key_id, organisation, Ed25519PrivateKey.from_private_bytes(seed))


def default_key_path() -> Path:
    """$CONCLAVE_API_KEY_FILE, else $XDG_CONFIG_HOME/conclave/api-key.json,
    else ~/.config/conclave/api-key.json."""
    explicit = os.environ.get(KEY_FILE_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    return config_dir() / "api-key.json"


def find_key() -> ApiKey | None:
    """The key at `default_key_path()`, or None when there is no file there.
    A malformed file raises ValueError naming the path."""
    path = default_key_path()
    if not path.is_file():
        return None
    try:
        return load_key_file(path)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


# ------------------------------------------------------------------ tokens


def mint_token(key: ApiKey, now: float | None = None, lifetime: int = TOKEN_LIFETIME_S) -> str:
    """A token valid from `now` for `lifetime` seconds, signed with `key`."""
    if lifetime <= 0:
        raise ValueError(f"token lifetime must be positive, not {lifetime}")
    iat = int(time.time() if now is None else now)
    claims = {
        "kid": key.key_id,
        "org": key.organisation,
        "iat": iat,
        "exp": iat + lifetime,
        "jti": _b64url(secrets.token_bytes(8)),
    }
    body = f"{TOKEN_PREFIX}.{_b64url(json.dumps(claims, separators=(',', ':')).encode())}"
    return f"{body}.{_b64url(key.private_key.sign(body.encode('ascii')))}"


def token_key_id(token: str) -> str:
    """The key id the token claims, unverified: only to look up its record."""
    claims, _, _ = _split(token)
    kid: str = claims["kid"]
    return kid


def verify_token(token: str, record: KeyRecord, now: float | None = None) -> dict[str, Any]:
    """The token's claims, once it is shown to be signed by `record`'s key and
    valid at `now`; CredentialError otherwise."""
    claims, signed, signature = _split(token)
    if claims["kid"] != record.key_id or claims["org"] != record.organisation:
        raise CredentialError("malformed", "token does not name this key and organisation")
    try:
        record.public_key.verify(signature, signed)
    except InvalidSignature:
        raise CredentialError(
            "bad_signature", f"token signature invalid for {record.key_id}"
        ) from None
    _check_times(claims["iat"], claims["exp"], time.time() if now is None else now)
    return claims


def bearer(metadata_value: str) -> str:
    """The token of an authorization value "Bearer <token>" (RFC 6750 §2.1; the
    scheme is case-insensitive, RFC 9110 §11.1)."""
    if not isinstance(metadata_value, str):
        raise CredentialError("malformed", "authorization value is not text")
    scheme, _, token = metadata_value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or any(c.isspace() for c in token):
        raise CredentialError("malformed", 'authorization must be "Bearer <token>"')
    return token


def _split(token: str) -> tuple[dict[str, Any], bytes, bytes]:
    """(claims, signed bytes, signature) of a well-formed token, else malformed."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise CredentialError("malformed", "token is not a short ASCII string")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        raise CredentialError("malformed", f"token is not {TOKEN_PREFIX}.<claims>.<signature>")
    signature = _unb64url(parts[2])
    if signature is None or len(signature) != 64:
        raise CredentialError("malformed", "token signature is not 64 bytes of base64url")
    claims = _parse_claims(_unb64url(parts[1]))
    return claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature


def _parse_claims(raw: bytes | None) -> dict[str, Any]:
    try:
        if raw is None:
            raise ValueError("not base64url")
        claims = _json_object(raw, "claims")
    except ValueError:
        raise CredentialError("malformed", "token claims are not a JSON object") from None
    if set(claims) != _CLAIMS:
        raise CredentialError("malformed", f"token claims must be exactly {sorted(_CLAIMS)}")
    kid, org, iat, exp, jti = (claims[k] for k in ("kid", "org", "iat", "exp", "jti"))
    if not (isinstance(kid, str) and _KEY_ID.fullmatch(kid)):
        raise CredentialError("malformed", "token kid is not a key id")
    if not (isinstance(org, str) and _ORGANISATION.fullmatch(org)):
        raise CredentialError("malformed", "token org is not an organisation name")
    if not (isinstance(jti, str) and _JTI.fullmatch(jti)):
        raise CredentialError("malformed", "token jti is not 8 bytes of base64url")
    if not (_is_int(iat) and _is_int(exp)) or exp <= iat:
        raise CredentialError("malformed", "token iat and exp are not whole seconds, iat < exp")
    return claims


def _check_times(iat: int, exp: int, now: float) -> None:
    if exp - iat > MAX_TOKEN_LIFETIME_S:
        raise CredentialError(
            "too_long", f"token lifetime {exp - iat} s exceeds {MAX_TOKEN_LIFETIME_S} s"
        )
    if iat > now + CLOCK_SKEW_S:
        raise CredentialError("not_yet_valid", f"token issued {iat - now:.0f} s in the future")
    if now > exp + CLOCK_SKEW_S:
        raise CredentialError("expired", f"token expired {now - exp:.0f} s ago")


# ------------------------------------------------------------------ helpers


def _check_organisation(organisation: object) -> str:
    if not (isinstance(organisation, str) and _ORGANISATION.fullmatch(organisation)):
        raise ValueError(f"organisation must be 1 to 64 of [A-Za-z0-9._-], not {organisation!r}")
    return organisation


def _check_names(key_id: object, organisation: object) -> tuple[str, str]:
    if not (isinstance(key_id, str) and _KEY_ID.fullmatch(key_id)):
        raise ValueError(f"key_id must be ck_ and 16 base64url characters, not {key_id!r}")
    return key_id, _check_organisation(organisation)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    """A JSON object without repeated keys; ValueError otherwise."""
    try:
        data = json.loads(raw, object_pairs_hook=_no_repeats)
    except RecursionError:
        raise ValueError(f"{what}: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{what}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: not a JSON object")
    return data


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        raise ValueError("repeated key")
    return data


def _require_fields(data: dict[str, Any], fields: tuple[str, ...], what: str) -> None:
    missing = [name for name in fields if name not in data]
    if missing:
        raise ValueError(f"{what}: missing {', '.join(missing)}")


def _b64_32(value: object, what: str) -> bytes:
    """32 bytes from canonical standard base64 (padded); ValueError otherwise."""
    try:
        if not isinstance(value, str) or not value.isascii():
            raise ValueError
        raw = base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        raise ValueError(f"{what} is not base64") from None
    if len(raw) != 32 or base64.b64encode(raw).decode() != value:
        raise ValueError(f"{what} is not 32 bytes in canonical base64")
    return raw


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes | None:
    """Canonical unpadded base64url only: one encoding per value, so a token
    cannot be re-spelled into a different string that still verifies."""
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (ValueError, binascii.Error):
        return None
    return raw if _b64url(raw) == text else None


def _make_private_dirs(directory: Path) -> None:
    """Create `directory` and its missing parents, each with mode 0700."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for new in reversed(missing):
        new.mkdir(mode=0o700, exist_ok=True)
