"""`conclave keys create|list|revoke` against a real etcd: the key file holds the
secret (mode 0600, never overwritten), etcd only the public key."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from conclave.credentials import (
    API_KEYS_PREFIX,
    KEY_FILE_ENV,
    load_key_file,
    mint_token,
    parse_key_record,
    verify_token,
)
from conclave.processes import EtcdServer
from conclave.store import EtcdStore

pytestmark = pytest.mark.asyncio(loop_scope="module")

CONCLAVE = str(Path(sys.executable).parent / "conclave")


@pytest_asyncio.fixture(loop_scope="module")
async def store(etcd: EtcdServer) -> AsyncIterator[EtcdStore]:
    s = EtcdStore([etcd.endpoint])
    await s.connect()
    yield s
    await s.close()


async def keys(
    etcd: EtcdServer, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run `conclave keys ARGS --etcd ...`: (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        CONCLAVE, "keys", *args, "--etcd", etcd.endpoint,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_create_list_revoke(etcd: EtcdServer, store: EtcdStore, tmp_path: Path) -> None:
    path = tmp_path / "keys" / "acme.json"
    code, out, err = await keys(etcd, "create", "--org", "acme", "--out", str(path), "--json")
    assert code == 0, err
    created = json.loads(out)
    key_id = created["key_id"]
    assert created["organisation"] == "acme" and created["path"] == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = load_key_file(path)
    assert key.key_id == key_id
    secret = json.loads(path.read_text())["secret"]
    assert secret not in out + err

    raw = await store.get(API_KEYS_PREFIX + key_id)
    assert raw is not None and secret.encode() not in raw
    assert set(json.loads(raw)) == {"key_id", "organisation", "public_key", "created_at_ms"}
    record = parse_key_record(raw)
    assert record.created_at_ms == created["created_at_ms"]
    verify_token(mint_token(key), record)

    before, _ = await store.get_prefix(API_KEYS_PREFIX)
    code, out, err = await keys(etcd, "create", "--org", "acme", "--out", str(path))
    assert code == 1 and "exists" in err and str(path) in err
    assert (await store.get_prefix(API_KEYS_PREFIX))[0] == before
    assert load_key_file(path).key_id == key_id

    code, out, err = await keys(etcd, "list", "--json")
    assert code == 0, err
    listed = {row["key_id"]: row for row in json.loads(out)}
    assert listed[key_id]["organisation"] == "acme"
    assert set(listed[key_id]) == {"key_id", "organisation", "created_at_ms", "created_at"}
    code, out, err = await keys(etcd, "list")
    assert code == 0 and key_id in out and "acme" in out

    code, out, err = await keys(etcd, "revoke", key_id)
    assert code == 0 and key_id in out, err
    assert await store.get(API_KEYS_PREFIX + key_id) is None
    code, out, err = await keys(etcd, "revoke", key_id)
    assert code == 1 and key_id in err


async def test_create_at_the_default_path(
    etcd: EtcdServer, store: EtcdStore, tmp_path: Path
) -> None:
    path = tmp_path / "conclave" / "api-key.json"
    env = {KEY_FILE_ENV: str(path)}
    code, out, err = await keys(etcd, "create", "--org", "svc.billing", env=env)
    assert code == 0, err
    key = load_key_file(path)
    assert key.key_id in out and str(path) in out and "svc.billing" in out
    assert await store.get(API_KEYS_PREFIX + key.key_id) is not None
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


async def test_bad_organisation_writes_nothing(
    etcd: EtcdServer, store: EtcdStore, tmp_path: Path
) -> None:
    before, _ = await store.get_prefix(API_KEYS_PREFIX)
    code, _, err = await keys(etcd, "create", "--org", "no spaces", "--out", str(tmp_path / "k"))
    assert code == 1 and "organisation" in err
    assert not (tmp_path / "k").exists()
    assert (await store.get_prefix(API_KEYS_PREFIX))[0] == before
