"""`conclave relay`: one relay node (signalling, media forwarding, registration)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import re
import signal
import socket
from collections.abc import Awaitable, Callable

import grpc
import uvloop
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from conclave.arguments import non_negative_float
from conclave.ice import (
    MAX_PORT,
    MIN_PORT,
    PortRange,
    advertise_address,
    open_shared_ports,
    parse_advertised_address,
    use_endpoint,
    use_host_addresses,
    use_port_range,
    use_shared_port,
)
from conclave.logs import FORMATS, configure
from conclave.loop_lag import watch_lag
from conclave.store import EtcdStore
from conclave.tasks import spawn
from conclave.tls import (
    add_etcd_tls_arguments,
    add_rpc_tls_arguments,
    add_server_tls_arguments,
    etcd_tls_from,
    mutual_server_credentials,
    rpc_tls_from,
    server_ssl_context,
    server_tls_from,
)
from protos import link_pb2_grpc, relay_pb2_grpc
from relay import media_path, metrics, signaling
from relay.admission import GrantChecker
from relay.drain import DEFAULT_DEADLINE_S, Drainer
from relay.link_crypto import NodeIdentity
from relay.link_socket import LinkSocket
from relay.links import SERVER_OPTIONS, LinkManager, LinkServicer
from relay.native_io import NativeSockets
from relay.no_decode import install_decoder_guard
from relay.node import RelayNode
from relay.peer import set_simulcast_offer, set_test_video_loss
from relay.registration import NodeInfo, NodeRegistration
from relay.rpc import RelayServicer

log = logging.getLogger("relay")

Handler = Callable[[web.Request], Awaitable[web.Response]]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="conclave relay", description=__doc__)
    parser.add_argument(
        "--etcd",
        default=os.environ.get("CONCLAVE_ETCD", "http://127.0.0.1:2379"),
        help="etcd endpoint(s), comma-separated",
    )
    add_etcd_tls_arguments(parser)
    add_rpc_tls_arguments(parser)
    add_server_tls_arguments(parser, "signalling and /metrics (--http-port: HTTPS, WSS)")
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
    parser.add_argument(
        "--udp-ports",
        type=_port_range,
        default=None,
        metavar="LOW-HIGH",
        help="bind every ICE socket to a UDP port in this range, e.g. 50000-50100 "
        "(one port per participant and ICE address; docs/operations.md); default: any port",
    )
    parser.add_argument(
        "--udp-port",
        type=_udp_port,
        default=os.environ.get("CONCLAVE_UDP_PORT") or None,
        metavar="PORT",
        help="put every participant's ICE and media on this one UDP port per ICE address, "
        "told apart by ICE username and address (like LiveKit's rtc.udp_port; "
        "docs/operations.md); 0: a free port, inside --udp-ports if given; "
        "default: $CONCLAVE_UDP_PORT, or a port per participant",
    )
    parser.add_argument(
        "--public-ip",
        type=_public_ip,
        default=None,
        metavar="IP",
        help="address to advertise in ICE host candidates instead of the bound one "
        "(1:1 NAT; sockets still bind --ice-address); default: the bound address",
    )
    parser.add_argument("--capacity", type=int, default=200, help="participant limit of the node")
    parser.add_argument(
        "--link-port",
        type=int,
        default=0,
        help="UDP port for media between relays of a meeting (links, docs/cascading.md); "
        "default: any free port",
    )
    parser.add_argument(
        "--region",
        type=_region,
        default=None,
        help="the region the node is in, e.g. eu-west (letters, digits, '-', '.', '_'); "
        "written into its etcd record for placement (default: none)",
    )
    parser.add_argument(
        "--drain-deadline",
        type=non_negative_float,
        default=DEFAULT_DEADLINE_S,
        metavar="SECONDS",
        help="on SIGTERM, drain first: move meetings to other relays, close those that "
        f"cannot move after this long, then exit (default {DEFAULT_DEADLINE_S:g}; "
        "a second SIGTERM, or SIGINT, stops at once)",
    )
    parser.add_argument(
        "--simulcast",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ask browser publishers for three simulcast layers; each subscriber gets "
        "the one its bandwidth and video size suit (docs/simulcast.md; default: on)",
    )
    parser.add_argument(
        "--forwarder",
        choices=media_path.PATHS,
        default=os.environ.get("CONCLAVE_FORWARDER") or "native",
        help="the media path: 'native' (C: batched socket I/O, SRTP and forwarding, "
        "docs/native.md) or 'python' (aiortc's sockets and SRTP, relay/forwarder.py: the "
        "reference); default $CONCLAVE_FORWARDER or native",
    )
    parser.add_argument(
        "--test-drop-video",
        type=float,
        default=0.0,
        metavar="PERCENT",
        help="testing only: drop this share of incoming video packets",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        type=str.lower,
        help="log level on stderr (ids, names and addresses are logged at debug only)",
    )
    parser.add_argument(
        "--log-format", default="text", choices=FORMATS, help="text lines, or one JSON object each"
    )
    args = parser.parse_args(argv)
    if args.udp_port and args.udp_ports is not None:
        parser.error(
            "--udp-port PORT and --udp-ports: give one, or --udp-port 0 to take "
            "the shared port from the range"
        )
    args.etcd_tls = etcd_tls_from(args, parser)
    args.rpc_tls = rpc_tls_from(args, parser)
    args.tls = server_tls_from(args, parser)
    return args


def _port_range(value: str) -> PortRange:
    try:
        return PortRange.parse(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _udp_port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if port != 0 and not MIN_PORT <= port <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"{port} must be 0 or {MIN_PORT}-{MAX_PORT}")
    return port


def _region(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value):
        raise argparse.ArgumentTypeError("a region is 1-64 letters, digits, '-', '.' or '_'")
    return value


def _public_ip(value: str) -> str:
    try:
        return parse_advertised_address(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def configure_ice(args: argparse.Namespace) -> None:
    """Host addresses, port range and advertised address of every peer connection,
    and whose sockets they are (the native engine's with --forwarder native)."""
    # Behind a 1:1 NAT only the interface the NAT forwards to is reachable: the
    # loopback socket would be advertised under the public address and never answer.
    use_host_addresses(args.ice_address, include_loopback=args.public_ip is None)
    use_port_range(args.udp_ports)
    use_shared_port(args.udp_port)
    advertise_address(args.public_ip)
    native = args.forwarder == "native"
    sockets = NativeSockets() if native else None
    use_endpoint(sockets.endpoint if sockets is not None else None)
    media_path.use_native(sockets.engine if sockets is not None else None)
    if sockets is not None:
        metrics.watch_native(sockets.engine)
    log.info("media path: %s", args.forwarder)
    ports = args.udp_ports
    if args.udp_port is None:
        log.info(
            "ICE UDP ports: %s", f"{ports} ({len(ports)} ports)" if ports is not None else "any"
        )
    if args.public_ip is not None:
        # docs/privacy.md: no IP address in log lines above DEBUG, not even our own.
        log.info("ICE host candidates advertise the --public-ip address")
        log.debug("ICE advertised address: %s", args.public_ip)
        if args.ice_address is None:
            log.warning(
                "--public-ip without --ice-address: every interface is advertised as the "
                "public address; give the address the NAT forwards to as --ice-address"
            )


async def metrics_handler(request: web.Request) -> web.Response:
    metrics.sync_native()
    response = web.Response(body=generate_latest())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


async def health_handler(request: web.Request) -> web.Response:
    """Liveness: the process serves HTTP (draining included)."""
    return web.Response(text="ok")


def readiness_handler(node: RelayNode) -> Handler:
    """Readiness: 503 while draining, so load balancers and k8s stop sending joins."""

    async def ready(request: web.Request) -> web.Response:
        if node.draining:
            return web.Response(status=503, text="draining")
        return web.Response(text="ok")

    return ready


def watch_tracks(node: RelayNode, capacity: int) -> None:
    """Capacity and track gauges, counted when scraped rather than kept in step."""
    metrics.CAPACITY.set(capacity)
    metrics.TRACKS_PUBLISHED.set_function(  # by participants here, not over links
        lambda: sum(
            1 for room in node.rooms.values() for track in room.tracks.values() if not track.remote
        )
    )
    metrics.TRACKS_SUBSCRIBED.set_function(
        lambda: sum(
            len(participant.peer.subscriptions)
            for room in node.rooms.values()
            for participant in room.participants.values()
        )
    )


async def serve(args: argparse.Namespace) -> None:
    install_decoder_guard()
    set_test_video_loss(args.test_drop_video / 100)
    set_simulcast_offer(args.simulcast)
    configure_ice(args)
    if args.udp_port is not None:
        bound = await open_shared_ports()  # a port in use stops the relay here
        metrics.watch_shared_port()
        ports = sorted({port for _, port in bound})
        log.info("ICE UDP port (shared by every participant): %s", ",".join(map(str, ports)))
    host = args.advertise_host or args.http_host
    store = EtcdStore(args.etcd.split(","), observe=metrics.SERVER.observe_etcd, tls=args.etcd_tls)
    await store.connect()
    grants = GrantChecker(store, args.node_id)
    await grants.start()
    node = RelayNode(args.node_id, store, grants, args.capacity)
    await node.start()
    watch_tracks(node, args.capacity)
    link_socket = LinkSocket()
    await link_socket.open(args.http_host, args.link_port)
    media_host = await _address_of(host)
    links = LinkManager(node, NodeIdentity(), link_socket, media_host, tls=args.rpc_tls)
    node.links_ready = links.ready

    app = web.Application()
    app.add_routes(
        [
            *signaling.routes(node),
            web.get("/metrics", metrics_handler),
            web.get("/healthz", health_handler),
            web.get("/readyz", readiness_handler(node)),
        ]
    )
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    ssl_context = None if args.tls is None else server_ssl_context(args.tls)
    await web.TCPSite(runner, args.http_host, args.http_port, ssl_context=ssl_context).start()

    rpc_server = grpc.aio.server(
        interceptors=[metrics.SERVER.interceptor()],
        # RelayService requests are small; a link's control frames are at most
        # 256 KiB (relay/link.py). Anything above 1 MiB is refused by gRPC itself.
        options=[*SERVER_OPTIONS, ("grpc.max_receive_message_length", 1024 * 1024)],
    )
    relay_pb2_grpc.add_RelayServiceServicer_to_server(  # type: ignore[no-untyped-call]
        RelayServicer(node), rpc_server
    )
    link_pb2_grpc.add_RelayLinkServicer_to_server(  # type: ignore[no-untyped-call]
        LinkServicer(links), rpc_server
    )
    if args.rpc_tls is None:
        rpc_server.add_insecure_port(f"{args.http_host}:{args.rpc_port}")
    else:  # only the cell's certificates get in: control planes and relays
        rpc_server.add_secure_port(
            f"{args.http_host}:{args.rpc_port}", mutual_server_credentials(args.rpc_tls)
        )
    await rpc_server.start()

    registration = NodeRegistration(
        store,
        NodeInfo(
            node_id=args.node_id,
            signal_url=f"{'ws' if args.tls is None else 'wss'}://{host}:{args.http_port}/ws",
            rpc_address=f"{host}:{args.rpc_port}",
            capacity=args.capacity,
            region=args.region or "",
            link_key=links.identity.public_b64,
        ),
    )
    await registration.start()
    links.lease = lambda: registration.lease_id
    lag_watch = spawn(watch_lag(metrics.EVENT_LOOP_LAG.observe), "event-loop-lag")
    grants.current_lease = lambda: registration.lease_id
    node.on_participants_changed = registration.participants_changed
    drainer = Drainer(node, store, registration)
    await drainer.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    terminated = False

    def on_sigterm() -> None:
        """The first SIGTERM drains, then stops; a second one stops at once."""
        nonlocal terminated
        if terminated:
            stop.set()
            return
        terminated = True
        drainer.begin(args.drain_deadline)
        spawn(_set_when(drainer.drained, stop), "stop-when-drained")

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(
        f"relay ready node={args.node_id} "
        f"http={'http' if args.tls is None else 'https'}://{host}:{args.http_port} "
        f"rpc={host}:{args.rpc_port}",
        flush=True,
    )
    await stop.wait()

    log.info("relay stopping")
    lag_watch.cancel()
    await drainer.stop()
    await links.stop()
    link_socket.close()
    await registration.stop()
    for room in list(node.rooms.values()):
        await room.close("node_shutdown")
    await rpc_server.stop(grace=1)
    await runner.cleanup()
    await node.stop()
    await grants.stop()
    await store.close()


async def _address_of(host: str) -> str:
    """The IP address other relays send link media to (a name is resolved once)."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_DGRAM)
        return str(infos[0][4][0])


async def _set_when(done: asyncio.Event, then: asyncio.Event) -> None:
    await done.wait()
    then.set()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure("relay", args.log_level, args.log_format)
    # Their INFO lines carry addresses; personal data stays out of non-debug logs.
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    uvloop.run(serve(args))
    return 0
