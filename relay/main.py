"""`conclave relay`: one relay node (signalling, media forwarding, registration)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import grpc
import uvloop
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from conclave.ice import use_host_addresses
from conclave.store import EtcdStore
from protos import relay_pb2_grpc
from relay import signaling
from relay.admission import GrantChecker
from relay.no_decode import install_decoder_guard
from relay.node import RelayNode
from relay.registration import NodeInfo, NodeRegistration
from relay.rpc import RelayServicer

log = logging.getLogger("relay")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="conclave relay", description=__doc__)
    parser.add_argument(
        "--etcd",
        default=os.environ.get("CONCLAVE_ETCD", "http://127.0.0.1:2379"),
        help="etcd endpoint(s), comma-separated",
    )
    parser.add_argument("--node-id", required=True, help="unique name of this node")
    parser.add_argument("--http-host", default="127.0.0.1", help="signalling/metrics bind address")
    parser.add_argument("--http-port", type=int, default=7880)
    parser.add_argument("--rpc-port", type=int, default=7881, help="RelayService gRPC port")
    parser.add_argument(
        "--advertise-host",
        default=None,
        help="host clients and the control plane use to reach this node (default: --http-host)",
    )
    parser.add_argument(
        "--ice-address",
        action="append",
        default=None,
        help="offer only this local address as ICE host candidate (repeatable); "
        "default: every interface",
    )
    parser.add_argument("--capacity", type=int, default=200, help="participant limit of the node")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


async def metrics_handler(request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


async def health_handler(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def serve(args: argparse.Namespace) -> None:
    install_decoder_guard()
    use_host_addresses(args.ice_address, include_loopback=True)
    host = args.advertise_host or args.http_host
    store = EtcdStore(args.etcd.split(","))
    await store.connect()
    grants = GrantChecker(store, args.node_id)
    await grants.start()
    node = RelayNode(args.node_id, store, grants)

    app = web.Application()
    app.add_routes(
        [
            *signaling.routes(node),
            web.get("/metrics", metrics_handler),
            web.get("/healthz", health_handler),
        ]
    )
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.http_host, args.http_port).start()

    rpc_server = grpc.aio.server()
    relay_pb2_grpc.add_RelayServiceServicer_to_server(  # type: ignore[no-untyped-call]
        RelayServicer(node), rpc_server
    )
    rpc_server.add_insecure_port(f"{args.http_host}:{args.rpc_port}")
    await rpc_server.start()

    registration = NodeRegistration(
        store,
        NodeInfo(
            node_id=args.node_id,
            signal_url=f"ws://{host}:{args.http_port}/ws",
            rpc_address=f"{host}:{args.rpc_port}",
            capacity=args.capacity,
        ),
    )
    await registration.start()
    node.on_participants_changed = registration.participants_changed

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"relay ready node={args.node_id} http=http://{host}:{args.http_port} "
        f"rpc={host}:{args.rpc_port}",
        flush=True,
    )
    await stop.wait()

    log.info("relay stopping")
    await registration.stop()
    for room in list(node.rooms.values()):
        await room.close("node_shutdown")
    await rpc_server.stop(grace=1)
    await runner.cleanup()
    await grants.stop()
    await store.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s relay %(levelname)s %(name)s: %(message)s",
    )
    # Their INFO lines carry addresses; personal data stays out of non-debug logs.
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    uvloop.run(serve(args))
    return 0
