"""`conclave relay drain NODE_ID`: ask a relay to drain (relay/drain.py).

Writes the drain request under the node's own lease and, with `--wait`, follows the
node record until the node is empty or gone. It talks to etcd only, so it works
from anywhere the cluster store is reachable, a Kubernetes preStop hook included.
Prints one JSON object on stdout; exit 0 when asked (or, with --wait, drained or
gone), 1 when the node is not registered or --wait ran out of time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

import grpc
import uvloop

from conclave.arguments import non_negative_float
from conclave.store import NODES_PREFIX, EtcdStore, StoreError
from conclave.tls import add_etcd_tls_arguments, etcd_tls_from
from relay.drain import DEFAULT_DEADLINE_S, DrainRequest, drain_key, now_ms

PROG = "conclave relay drain"
POLL_S = 0.25
# --wait gives the relay this long after the deadline to close what is left.
CLOSE_MARGIN_S = 10.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("node_id", metavar="NODE_ID", help="the relay's --node-id")
    parser.add_argument(
        "--etcd",
        default=os.environ.get("CONCLAVE_ETCD", "http://127.0.0.1:2379"),
        help="etcd endpoint(s), comma-separated (default: $CONCLAVE_ETCD or local)",
    )
    add_etcd_tls_arguments(parser)
    parser.add_argument(
        "--deadline",
        type=non_negative_float,
        default=DEFAULT_DEADLINE_S,
        metavar="SECONDS",
        help="meetings that could not move are closed after this long "
        f"(default {DEFAULT_DEADLINE_S:g})",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="return only once the node has no participants left or is gone, "
        "or the deadline passed",
    )
    args = parser.parse_args(argv)
    args.etcd_tls = etcd_tls_from(args, parser)
    return args


def main(argv: list[str]) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        result, code = uvloop.run(drain(args))
    except (StoreError, OSError, TimeoutError, grpc.aio.AioRpcError) as exc:
        print(f"conclave: error: etcd: {type(exc).__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(result), flush=True)
    return code


async def drain(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    store = EtcdStore(args.etcd.split(","), tls=args.etcd_tls)
    await store.connect()
    try:
        return await _drain(store, args.node_id, args.deadline, args.wait)
    finally:
        await store.close()


async def _drain(
    store: EtcdStore, node_id: str, deadline_s: float, wait: bool
) -> tuple[dict[str, Any], int]:
    record = await _node(store, node_id)
    if record is None:
        print(f"conclave: error: no relay {node_id!r} is registered", file=sys.stderr)
        return {"node_id": node_id, "state": "not_registered"}, 1
    lease = record.get("lease")
    if not isinstance(lease, int) or lease <= 0:
        print(f"conclave: error: the record of {node_id!r} has no lease", file=sys.stderr)
        return {"node_id": node_id, "state": "not_registered"}, 1
    request = DrainRequest(deadline_s, now_ms())
    result: dict[str, Any] = {"node_id": node_id, "deadline_s": deadline_s, "state": "draining"}
    try:
        # Under the node's lease: gone with this run of the relay, never drains the next.
        await store.put(drain_key(node_id), request.to_json(), lease)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:  # "requested lease not found"
            raise
        return {**result, "state": "gone"}, 0
    if not wait:
        return result, 0
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline_s + CLOSE_MARGIN_S
    while True:
        record = await _node(store, node_id)
        if record is None or record.get("lease") != lease:
            return {**result, "state": "gone"}, 0
        participants = record.get("participants")
        if record.get("draining") is True and participants == 0:
            return {**result, "state": "drained", "participants": 0}, 0
        if loop.time() >= give_up:
            return {**result, "state": "deadline_passed", "participants": participants}, 1
        await asyncio.sleep(POLL_S)


async def _node(store: EtcdStore, node_id: str) -> dict[str, Any] | None:
    raw = await store.get(NODES_PREFIX + node_id)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
