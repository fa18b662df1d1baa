"""`conclave keys create|list|revoke`: the control plane's API keys (conclave/credentials.py).

Operator commands: they talk to etcd directly, like `conclave relay drain`. `create`
makes a key pair, writes its public half to etcd (no lease: a key lasts until it is
revoked) and the secret to a key file only its owner can read; nothing secret ever
reaches etcd or the terminal. Exit 0 on success, 1 when refused or etcd failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import uvloop

from conclave.credentials import (
    API_KEYS_PREFIX,
    KEY_FILE_ENV,
    ApiKey,
    KeyRecord,
    default_key_path,
    key_record,
    new_key,
    parse_key_record,
    save_key_file,
)
from conclave.store import EtcdStore, StoreError
from conclave.tls import add_etcd_tls_arguments, etcd_tls_from

PROG = "conclave keys"

Command = Callable[[EtcdStore, argparse.Namespace], Awaitable[int]]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    create = commands.add_parser("create", help="make a key and save its file")
    create.add_argument("--org", required=True, help="organisation or service it stands for")
    create.add_argument(
        "--out",
        type=Path,
        metavar="PATH",
        help=f"the key file to write (default: ${KEY_FILE_ENV}, else "
        "$XDG_CONFIG_HOME/conclave/api-key.json); never overwritten",
    )
    create.add_argument("--json", action="store_true", help="print one JSON object")
    listing = commands.add_parser("list", help="the keys etcd knows (public parts only)")
    listing.add_argument("--json", action="store_true", help="print one JSON array")
    revoke = commands.add_parser("revoke", help="delete a key: its tokens stop working")
    revoke.add_argument("key_id", metavar="KEY_ID")
    for command in (create, listing, revoke):
        command.add_argument(
            "--etcd",
            default=os.environ.get("CONCLAVE_ETCD", "http://127.0.0.1:2379"),
            help="etcd endpoint(s), comma-separated (default: $CONCLAVE_ETCD or local)",
        )
        add_etcd_tls_arguments(command)
    args = parser.parse_args(argv)
    args.etcd_tls = etcd_tls_from(args, parser)
    return args


def main(argv: list[str]) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    commands: dict[str, Command] = {"create": _create, "list": _list, "revoke": _revoke}
    if args.command == "create" and not _prepare_create(args):
        return 1
    try:
        return uvloop.run(_with_store(args, commands[args.command]))
    except (StoreError, OSError, TimeoutError, grpc.aio.AioRpcError) as exc:
        print(f"conclave: error: etcd: {type(exc).__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def _with_store(args: argparse.Namespace, command: Command) -> int:
    store = EtcdStore(args.etcd.split(","), tls=args.etcd_tls)
    await store.connect()
    try:
        return await command(store, args)
    finally:
        await store.close()


def _prepare_create(args: argparse.Namespace) -> bool:
    """Everything `create` can refuse without etcd, checked before etcd is written:
    the organisation name, and the key file, which is never replaced."""
    try:
        args.key = new_key(args.org)
    except ValueError as exc:
        _error(str(exc))
        return False
    args.out = args.out or default_key_path()
    if args.out.exists() or args.out.is_symlink():
        _error(f"{args.out} exists; choose another --out (a key file is never overwritten)")
        return False
    return True


async def _create(store: EtcdStore, args: argparse.Namespace) -> int:
    key: ApiKey = args.key
    created_at_ms = int(time.time() * 1000)
    record = key_record(key, created_at_ms)
    created, _ = await store.create_if_absent(API_KEYS_PREFIX + key.key_id, record)
    if not created:  # 96 random bits: only by a broken random source
        _error(f"key id {key.key_id} is taken; try again")
        return 1
    if not await _save(store, key, args.out):
        return 1
    result = {
        "key_id": key.key_id,
        "organisation": key.organisation,
        "path": str(args.out),
        "created_at_ms": created_at_ms,
    }
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        print(f"created API key {key.key_id} for {key.organisation}\nkey file: {args.out}")
    return 0


async def _save(store: EtcdStore, key: ApiKey, path: Path) -> bool:
    """Write the key file; on failure take the record back out of etcd, so that
    no key exists whose secret nobody holds."""
    try:
        save_key_file(key, path)
        return True
    except OSError as exc:
        await store.delete(API_KEYS_PREFIX + key.key_id)
        _error(f"cannot write {path}: {exc.strerror or exc}")
        return False


async def _list(store: EtcdStore, args: argparse.Namespace) -> int:
    items, _ = await store.get_prefix(API_KEYS_PREFIX)
    records: list[KeyRecord] = []
    for name, raw in items.items():
        try:
            records.append(parse_key_record(raw))
        except ValueError as exc:
            _error(f"skipping {name}: {exc}")
    records.sort(key=lambda r: (r.created_at_ms, r.key_id))
    rows = [_row(record) for record in records]
    if args.json:
        print(json.dumps(rows), flush=True)
        return 0
    width = max((len(row["organisation"]) for row in rows), default=0)
    width = max(width, len("ORGANISATION"))
    print(f"{'KEY ID':<19}  {'ORGANISATION':<{width}}  CREATED")
    for row in rows:
        print(f"{row['key_id']:<19}  {row['organisation']:<{width}}  {row['created_at']}")
    return 0


def _row(record: KeyRecord) -> dict[str, Any]:
    return {
        "key_id": record.key_id,
        "organisation": record.organisation,
        "created_at_ms": record.created_at_ms,
        "created_at": _utc(record.created_at_ms),
    }


def _utc(ms: int) -> str:
    try:
        created = datetime.fromtimestamp(ms / 1000, UTC)
    except (OverflowError, ValueError, OSError):  # a record from a wrong clock
        return f"{ms} ms"
    return created.isoformat(timespec="seconds").replace("+00:00", "Z")


async def _revoke(store: EtcdStore, args: argparse.Namespace) -> int:
    if "/" in args.key_id or not await store.delete(API_KEYS_PREFIX + args.key_id):
        _error(f"no API key {args.key_id!r}")
        return 1
    print(f"revoked {args.key_id}", flush=True)
    return 0


def _error(message: str) -> None:
    print(f"conclave: error: {message}", file=sys.stderr)
