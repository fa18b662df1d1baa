"""API credentials (conclave/credentials.py): tokens, key files, key records, and
RoomsClient presenting them."""

from __future__ import annotations

import base64
import json
import random
import re
import stat
import string
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import client.rooms
from client.errors import ConclaveError
from client.rooms import RoomsClient
from conclave.credentials import (
    CLOCK_SKEW_S,
    KEY_FILE_ENV,
    MAX_TOKEN_LIFETIME_S,
    TOKEN_LIFETIME_S,
    ApiKey,
    CredentialError,
    KeyRecord,
    bearer,
    default_key_path,
    find_key,
    key_record,
    load_key_file,
    mint_token,
    new_key,
    parse_key_record,
    save_key_file,
    token_key_id,
    verify_token,
)
from protos import rooms_pb2, rooms_pb2_grpc

NOW = 1_700_000_000.0


@pytest.fixture
def key() -> ApiKey:
    return new_key("acme.example")


@pytest.fixture
def record(key: ApiKey) -> KeyRecord:
    return parse_key_record(key_record(key, 1234))


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signed(key: ApiKey, claims: dict[str, Any]) -> str:
    """A token over arbitrary claims, correctly signed by `key`."""
    body = "cv1." + _b64url(json.dumps(claims).encode())
    return body + "." + _b64url(key.private_key.sign(body.encode()))


def _claims(key: ApiKey, **changes: Any) -> dict[str, Any]:
    claims = {"kid": key.key_id, "org": key.organisation, "iat": int(NOW), "exp": int(NOW) + 300}
    return {**claims, "jti": "AAAAAAAAAAA", **changes}


def _code(token: str, record: KeyRecord, now: float = NOW) -> str:
    with pytest.raises(CredentialError) as caught:
        verify_token(token, record, now)
    return caught.value.code


# ------------------------------------------------------------------ tokens


def test_mint_verify_round_trip(key: ApiKey, record: KeyRecord) -> None:
    token = mint_token(key, NOW)
    assert token.startswith("cv1.") and token.count(".") == 2 and "=" not in token
    claims = verify_token(token, record, NOW + 10)
    assert claims["kid"] == key.key_id and claims["org"] == "acme.example"
    assert claims["exp"] - claims["iat"] == TOKEN_LIFETIME_S
    assert len(_unb64url(claims["jti"])) == 8
    assert token_key_id(token) == key.key_id
    assert mint_token(key, NOW) != token  # a fresh jti each time


def test_key_id_and_public_key_shape(key: ApiKey) -> None:
    assert key.key_id.startswith("ck_") and len(key.key_id) == 19
    assert len(base64.b64decode(key.public_b64(), validate=True)) == 32
    assert "private_key" not in repr(key)


def test_tampered_claims_are_a_bad_signature(key: ApiKey, record: KeyRecord) -> None:
    prefix, claims_part, signature = mint_token(key, NOW).split(".")
    claims = json.loads(_unb64url(claims_part))
    claims["exp"] += 600
    forged = f"{prefix}.{_b64url(json.dumps(claims).encode())}.{signature}"
    assert _code(forged, record) == "bad_signature"


def test_tampered_signature(key: ApiKey, record: KeyRecord) -> None:
    token = mint_token(key, NOW)
    body, signature = token.rsplit(".", 1)
    raw = bytearray(_unb64url(signature))
    raw[10] ^= 1
    assert _code(f"{body}.{_b64url(bytes(raw))}", record) == "bad_signature"


def test_another_keys_signature(key: ApiKey, record: KeyRecord) -> None:
    impostor = ApiKey(key.key_id, key.organisation, Ed25519PrivateKey.generate())
    assert _code(mint_token(impostor, NOW), record) == "bad_signature"


def test_wrong_kid_or_org(key: ApiKey, record: KeyRecord) -> None:
    other = new_key("acme.example")
    assert _code(mint_token(other, NOW), record) == "malformed"
    renamed = ApiKey(key.key_id, "evil", key.private_key)
    assert _code(mint_token(renamed, NOW), record) == "malformed"


def test_expiry_allows_the_clock_skew(key: ApiKey, record: KeyRecord) -> None:
    token = mint_token(key, NOW)
    exp = int(NOW) + TOKEN_LIFETIME_S
    verify_token(token, record, exp + CLOCK_SKEW_S)
    assert _code(token, record, exp + CLOCK_SKEW_S + 1) == "expired"


def test_not_yet_valid(key: ApiKey, record: KeyRecord) -> None:
    token = mint_token(key, NOW)
    verify_token(token, record, NOW - CLOCK_SKEW_S)
    assert _code(token, record, NOW - CLOCK_SKEW_S - 1) == "not_yet_valid"


def test_lifetime_too_long(key: ApiKey, record: KeyRecord) -> None:
    verify_token(mint_token(key, NOW, MAX_TOKEN_LIFETIME_S), record, NOW)
    assert _code(mint_token(key, NOW, MAX_TOKEN_LIFETIME_S + 1), record) == "too_long"


@pytest.mark.parametrize(
    "changes",
    [
        {"iat": 1.5},
        {"iat": True},
        {"exp": "1700000300"},
        {"exp": int(NOW)},  # not after iat
        {"jti": ""},
        {"kid": None},
        {"extra": 1},
    ],
)
def test_signed_but_malformed_claims(key: ApiKey, record: KeyRecord, changes: Any) -> None:
    assert _code(_signed(key, _claims(key, **changes)), record) == "malformed"


def test_signed_claims_of_our_own_are_accepted(key: ApiKey, record: KeyRecord) -> None:
    assert verify_token(_signed(key, _claims(key)), record, NOW)["jti"] == "AAAAAAAAAAA"


def test_respelled_base64_is_malformed(key: ApiKey, record: KeyRecord) -> None:
    """Unused low bits of the last base64 character: another spelling of the same
    signature is refused, so each valid token has exactly one string."""
    token = mint_token(key, NOW)
    alphabet = string.ascii_letters + string.digits + "-_"
    last = alphabet.index(token[-1])
    respelled = token[:-1] + alphabet[last ^ 1]
    assert _code(respelled, record) == "malformed"


def _garbage(key: ApiKey) -> Iterator[object]:
    token = mint_token(key, NOW)
    return (value for value in _mangled(token) if value != token)


def _mangled(token: str) -> Iterator[object]:
    prefix, claims, signature = token.split(".")
    yield from [
        "", ".", "..", "...", "cv1", "cv1.", "cv1..", "cv2" + token[3:], token + ".",
        token + "x", token[:-1], "x" * 5000, token + "=", token.replace("-", "+"),
        "cv1.=.=", "cv1.%%%.%%%", "cv1.é.é", "cv1.\x00.\x00", token.upper(),
        f"{prefix}.{claims}.{_b64url(b'short')}", f"{prefix}.{claims}",
        None, 17, b"cv1.a.b",
    ]  # fmt: skip
    odd_claims = [b"[]", b"null", b"\xff\xfe", b"[" * 1400, b'{"kid": 1, "kid": 2}', b"1e999"]
    yield from (f"{prefix}.{_b64url(raw)}.{signature}" for raw in odd_claims)
    rng = random.Random(11)
    for _ in range(300):
        chars = list(token)
        for _ in range(rng.randint(1, 4)):
            chars[rng.randrange(len(chars))] = chr(rng.randrange(0x20, 0x300))
        yield "".join(chars)
        yield token[: rng.randrange(len(token))]


def test_garbage_only_ever_raises_credential_error(key: ApiKey, record: KeyRecord) -> None:
    for value in _garbage(key):
        with pytest.raises(CredentialError) as caught:
            verify_token(value, record, NOW)  # type: ignore[arg-type]
        assert caught.value.code in ("malformed", "bad_signature"), value
        try:
            token_key_id(value)  # type: ignore[arg-type]
        except CredentialError as exc:
            assert exc.code == "malformed"
        with pytest.raises(CredentialError):
            bearer(value)  # type: ignore[arg-type]


def test_bearer() -> None:
    assert bearer("Bearer cv1.a.b") == "cv1.a.b"
    assert bearer("bearer  cv1.a.b ") == "cv1.a.b"
    for value in ["", "Bearer", "Bearer ", "Basic cv1.a.b", "cv1.a.b", "Bearer a b"]:
        with pytest.raises(CredentialError) as caught:
            bearer(value)
        assert caught.value.code == "malformed"


# ------------------------------------------------------------------ key records


def test_key_record_has_no_secret(key: ApiKey) -> None:
    raw = key_record(key, 42)
    data = json.loads(raw)
    assert set(data) == {"key_id", "organisation", "public_key", "created_at_ms"}
    assert data["public_key"] == key.public_b64()
    record = parse_key_record(raw)
    assert (record.key_id, record.organisation) == (key.key_id, key.organisation)
    assert record.created_at_ms == 42


@pytest.mark.parametrize(
    "change",
    [
        {"key_id": "ck_short"},
        {"key_id": "xx_" + "a" * 16},
        {"key_id": 7},
        {"organisation": ""},
        {"organisation": "a" * 65},
        {"organisation": "a b"},
        {"organisation": "acme\n"},
        {"public_key": base64.b64encode(b"\x01" * 31).decode()},
        {"public_key": base64.b64encode(b"\x01" * 33).decode()},
        {"public_key": base64.b64encode(b"\x01" * 32).decode().rstrip("=")},
        {"public_key": "!" * 44},
        {"public_key": None},
        {"created_at_ms": "42"},
        {"created_at_ms": 4.2},
        {"created_at_ms": True},
        {"created_at_ms": -1},
        {"key_id": None, "drop": "key_id"},
    ],
)
def test_parse_key_record_is_strict(key: ApiKey, change: dict[str, Any]) -> None:
    data = json.loads(key_record(key, 42))
    data.update(change)
    data.pop(change.get("drop", ""), None)
    data.pop("drop", None)
    with pytest.raises(ValueError):
        parse_key_record(json.dumps(data).encode())


@pytest.mark.parametrize("raw", [b"", b"[]", b"null", b"\xff", b"{", b'{"key_id": 1, "key_id": 2}'])
def test_parse_key_record_rejects_non_records(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_key_record(raw)


def test_new_key_checks_the_organisation() -> None:
    for bad in ["", "a" * 65, "a/b", "ä", "acme\n"]:
        with pytest.raises(ValueError):
            new_key(bad)
    assert new_key("a" * 64).organisation == "a" * 64


# ------------------------------------------------------------------ key files


def test_key_file_round_trip(key: ApiKey, tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "api-key.json"
    save_key_file(key, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    assert set(json.loads(path.read_text())) == {"key_id", "organisation", "secret"}
    loaded = load_key_file(path)
    assert (loaded.key_id, loaded.organisation) == (key.key_id, key.organisation)
    assert loaded.public_b64() == key.public_b64()
    verify_token(mint_token(loaded, NOW), parse_key_record(key_record(key)), NOW)


def test_key_file_is_never_overwritten(key: ApiKey, tmp_path: Path) -> None:
    path = tmp_path / "api-key.json"
    path.write_text("keep me")
    with pytest.raises(FileExistsError):
        save_key_file(key, path)
    assert path.read_text() == "keep me"
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(FileExistsError):
        save_key_file(key, link)
    assert not (tmp_path / "elsewhere.json").exists()


@pytest.mark.parametrize(
    "content",
    ["", "{}", "[]", '{"key_id": "ck_aaaaaaaaaaaaaaaa", "organisation": "x", "secret": "AAAA"}'],
)
def test_malformed_key_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "api-key.json"
    path.write_text(content)
    with pytest.raises(ValueError):
        load_key_file(path)


def test_default_key_path_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert default_key_path() == tmp_path / "home/.config/conclave/api-key.json"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/ignored")
    assert default_key_path() == tmp_path / "home/.config/conclave/api-key.json"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_key_path() == tmp_path / "xdg/conclave/api-key.json"
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "explicit.json"))
    assert default_key_path() == tmp_path / "explicit.json"


def test_find_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: ApiKey) -> None:
    path = tmp_path / "api-key.json"
    monkeypatch.setenv(KEY_FILE_ENV, str(path))
    assert find_key() is None
    save_key_file(key, path)
    found = find_key()
    assert found is not None and found.key_id == key.key_id
    path.unlink()
    path.write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        find_key()


# ------------------------------------------------------------------ RoomsClient


class RecordingRooms(rooms_pb2_grpc.RoomServiceServicer):
    """Answers CreateRoom, keeping each call's metadata; `refuse` makes it fail."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []
        self.refuse: grpc.StatusCode | None = None

    async def CreateRoom(self, request: Any, context: Any) -> rooms_pb2.Room:
        self.metadata.append({k: v for k, v in context.invocation_metadata()})
        if self.refuse is not None:
            await context.abort(self.refuse, "key ck_x revoked")
        return rooms_pb2.Room(room_id="r1", name=request.name)


@pytest.fixture
async def rooms_server() -> AsyncIterator[tuple[str, RecordingRooms]]:
    servicer = RecordingRooms()
    server = grpc.aio.server()
    rooms_pb2_grpc.add_RoomServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", servicer
    await server.stop(None)


async def test_rooms_client_sends_and_reuses_a_token(
    rooms_server: tuple[str, RecordingRooms],
    key: ApiKey,
    record: KeyRecord,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target, servicer = rooms_server
    clock = [NOW]
    # Only the client's clock: grpc's deadlines need the real one.
    monkeypatch.setattr(client.rooms, "time", SimpleNamespace(time=lambda: clock[0]))
    async with RoomsClient(target, api_key=key) as rooms:
        await rooms.create_room("a")
        await rooms.create_room("b")
        clock[0] = NOW + TOKEN_LIFETIME_S - 61  # still more than 60 s left: reused
        await rooms.create_room("c")
        clock[0] = NOW + TOKEN_LIFETIME_S - 60  # renewed
        await rooms.create_room("d")
    tokens = [bearer(m["authorization"]) for m in servicer.metadata]
    assert tokens[0] == tokens[1] == tokens[2] != tokens[3]
    verify_token(tokens[0], record, NOW)
    assert verify_token(tokens[3], record, clock[0])["iat"] == int(clock[0])


async def test_rooms_client_without_a_key_sends_nothing(
    rooms_server: tuple[str, RecordingRooms], key: ApiKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    target, servicer = rooms_server
    async with RoomsClient(target, api_key=None) as rooms:
        await rooms.create_room("a")
        servicer.refuse = grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(ConclaveError, match="conclave keys create") as caught:
            await rooms.create_room("b")
    assert caught.value.code == "UNAUTHENTICATED"
    assert all("authorization" not in m for m in servicer.metadata)


async def test_rooms_client_finds_the_key_file(
    rooms_server: tuple[str, RecordingRooms],
    key: ApiKey,
    record: KeyRecord,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    target, servicer = rooms_server
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "api-key.json"))
    save_key_file(key, tmp_path / "api-key.json")
    async with RoomsClient(target) as rooms:
        assert rooms.api_key is not None and rooms.api_key.key_id == key.key_id
        await rooms.create_room("a")
        servicer.refuse = grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(ConclaveError, match="key ck_x revoked") as caught:
            await rooms.create_room("b")
        assert caught.value.code == "PERMISSION_DENIED"
        servicer.refuse = grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(ConclaveError, match=f"refused API key {key.key_id}"):
            await rooms.create_room("c")
    verify_token(bearer(servicer.metadata[0]["authorization"]), record)


async def test_rooms_client_reports_a_malformed_key_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "api-key.json").write_text("[]")
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "api-key.json"))
    with pytest.raises(ConclaveError, match=r"api-key\.json"):
        RoomsClient("127.0.0.1:1")
