"""`conclave control-plane`: run one RoomService replica until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

from conclave.arguments import int_between, non_negative_float
from conclave.logs import FORMATS, configure
from conclave.store import StoreError
from conclave.tls import (
    TlsFiles,
    add_etcd_tls_arguments,
    add_rpc_tls_arguments,
    add_server_tls_arguments,
    etcd_tls_from,
    rpc_tls_from,
    server_tls_from,
)
from control_plane.access import DEFAULT_CREATE_BURST, DEFAULT_CREATES_PER_MINUTE
from control_plane.app import ControlPlane
from control_plane.attempts import Policy
from control_plane.service import DEFAULT_AUDIT_RETENTION_S, DEFAULT_MEETING_TTL_S
from control_plane.signing import ROTATION_S

log = logging.getLogger("control_plane")

DEFAULT_ETCD = "http://127.0.0.1:2379"
DEFAULT_LISTEN = "127.0.0.1:50051"
MAX_TTL_S = 10 * 365 * 86_400  # far below etcd's lease limit


@dataclass(frozen=True)
class Options:
    etcd: list[str]
    host: str
    port: int
    log_level: str
    attempts: Policy = field(default_factory=Policy)
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(
        default_factory=list
    )
    meeting_ttl: int = DEFAULT_MEETING_TTL_S
    audit_retention: int = DEFAULT_AUDIT_RETENTION_S
    http_port: int | None = None
    log_format: str = "text"
    api_key_file: Path | None = None
    web_organisation: str = ""
    create_burst: int = DEFAULT_CREATE_BURST
    creates_per_minute: float = DEFAULT_CREATES_PER_MINUTE
    signing_rotation_s: float = ROTATION_S
    etcd_tls: TlsFiles | None = None
    tls: TlsFiles | None = None
    relay_tls: TlsFiles | None = None


def parse_args(argv: list[str] | None) -> Options:
    """Command-line options; `--etcd` may repeat and may hold comma-separated URLs."""
    parser = argparse.ArgumentParser(
        prog="conclave control-plane", description="Run one Conclave control-plane replica."
    )
    parser.add_argument(
        "--etcd",
        action="append",
        metavar="URL",
        help="etcd endpoint; repeat or separate with commas "
        f"(default: $CONCLAVE_ETCD or {DEFAULT_ETCD})",
    )
    add_etcd_tls_arguments(parser)
    add_rpc_tls_arguments(parser)
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"gRPC address for RoomService; port 0 picks a free one (default: {DEFAULT_LISTEN})",
    )
    defaults = Policy()
    add_server_tls_arguments(parser, "gRPC and --http-port")
    parser.add_argument(
        "--attempt-burst",
        type=int_between(1),
        default=defaults.burst,
        metavar="N",
        help="failed joins allowed at once, per meeting and per source address "
        f"(default {defaults.burst})",
    )
    parser.add_argument(
        "--attempts-per-minute",
        type=float,
        default=defaults.per_minute,
        metavar="N",
        help=f"failed joins allowed per minute, sustained (default {defaults.per_minute:g})",
    )
    parser.add_argument(
        "--lockout",
        type=float,
        default=defaults.lockout_s,
        metavar="SECONDS",
        help=f"first lockout once they are spent, doubling (default {defaults.lockout_s:g})",
    )
    parser.add_argument(
        "--max-lockout",
        type=float,
        default=defaults.max_lockout_s,
        metavar="SECONDS",
        help=f"longest lockout (default {defaults.max_lockout_s:g})",
    )
    parser.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="CIDR",
        help="a proxy (ingress) whose x-forwarded-for names the real client; repeatable",
    )
    parser.add_argument(
        "--meeting-ttl",
        type=int_between(2, MAX_TTL_S),
        default=DEFAULT_MEETING_TTL_S,
        metavar="SECONDS",
        help="a meeting and its data are deleted this long after it was created, "
        f"unless ended earlier (default {DEFAULT_MEETING_TTL_S}: a day)",
    )
    parser.add_argument(
        "--audit-retention",
        type=int_between(0, MAX_TTL_S),
        default=DEFAULT_AUDIT_RETENTION_S,
        metavar="SECONDS",
        help="a meeting's audit log is kept this long after the meeting expires "
        f"(default {DEFAULT_AUDIT_RETENTION_S}: 30 days)",
    )
    parser.add_argument(
        "--http-port",
        type=int_between(1, 65535),
        metavar="PORT",
        help="serve the web client, its JSON API and Prometheus /metrics over HTTP on "
        "this port, on the --listen host (default: not served)",
    )
    parser.add_argument(
        "--api-key-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="register this API key (a `conclave keys create` file) at start if etcd "
        "does not have it: a new cluster's first key (default: $CONCLAVE_API_KEY_FILE, "
        "if set)",
    )
    parser.add_argument(
        "--web-create-organisation",
        default="",
        metavar="ORG",
        help="let the web page create meetings without an API key, as this organisation "
        "(default: off; `conclave dev` turns it on)",
    )
    parser.add_argument(
        "--create-burst",
        type=int_between(1),
        default=DEFAULT_CREATE_BURST,
        metavar="N",
        help="meetings one API key (or the web page) may create at once, on each "
        f"replica (default {DEFAULT_CREATE_BURST})",
    )
    parser.add_argument(
        "--signing-key-rotation",
        type=non_negative_float,
        default=ROTATION_S,
        metavar="SECONDS",
        help="replace this replica's grant-signing key this often; the old one stays "
        f"published until its grants expired (default {ROTATION_S:g}; 0: never)",
    )
    parser.add_argument(
        "--creates-per-minute",
        type=non_negative_float,
        default=DEFAULT_CREATES_PER_MINUTE,
        metavar="N",
        help="meetings one API key (or the web page) may create per minute, sustained, "
        f"on each replica (default {DEFAULT_CREATES_PER_MINUTE:g})",
    )
    parser.add_argument(
        "--log-format", default="text", choices=FORMATS, help="text lines, or one JSON object each"
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        type=str.lower,
        help="log level on stderr (room ids, names and addresses are logged at debug only)",
    )
    args = parser.parse_args(argv)
    raw = args.etcd or [os.environ.get("CONCLAVE_ETCD") or DEFAULT_ETCD]
    endpoints = [e.strip() for item in raw for e in item.split(",") if e.strip()]
    if not endpoints:
        parser.error("--etcd needs at least one endpoint")
    etcd_tls = etcd_tls_from(args, parser)
    tls = server_tls_from(args, parser)
    relay_tls = rpc_tls_from(args, parser)
    host, sep, port = args.listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        parser.error(f"--listen must be HOST:PORT, got {args.listen!r}")
    try:
        proxies = [ipaddress.ip_network(cidr, strict=False) for cidr in args.trusted_proxy]
    except ValueError as exc:
        parser.error(f"--trusted-proxy: {exc}")
    if args.creates_per_minute <= 0:
        parser.error("--creates-per-minute must be above 0")
    policy = Policy(
        burst=args.attempt_burst,
        per_minute=args.attempts_per_minute,
        lockout_s=args.lockout,
        max_lockout_s=max(args.lockout, args.max_lockout),
    )
    return Options(
        endpoints,
        host,
        int(port),
        args.log_level,
        policy,
        proxies,
        meeting_ttl=args.meeting_ttl,
        audit_retention=args.audit_retention,
        http_port=args.http_port,
        log_format=args.log_format,
        api_key_file=args.api_key_file,
        web_organisation=args.web_create_organisation,
        create_burst=args.create_burst,
        creates_per_minute=args.creates_per_minute,
        signing_rotation_s=args.signing_key_rotation,
        etcd_tls=etcd_tls,
        tls=tls,
        relay_tls=relay_tls,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `conclave control-plane`; returns the process exit code."""
    options = parse_args(argv)
    configure("control-plane", options.log_level, options.log_format)
    logging.getLogger("grpc").setLevel(max(logging.INFO, logging.getLogger().level))
    try:
        return uvloop.run(serve(options))
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 130


async def serve(options: Options) -> int:
    """Start, print the ready line, serve until a stop signal, then stop cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    replica = ControlPlane(
        options.etcd,
        attempts=options.attempts,
        trusted_proxies=options.trusted_proxies,
        meeting_ttl=options.meeting_ttl,
        audit_retention=options.audit_retention,
        api_key_file=options.api_key_file,
        web_organisation=options.web_organisation,
        signing_rotation_s=options.signing_rotation_s,
        create_burst=options.create_burst,
        creates_per_minute=options.creates_per_minute,
        etcd_tls=options.etcd_tls,
        tls=options.tls,
        relay_tls=options.relay_tls,
    )
    try:
        port = await replica.start(options.host, options.port, options.http_port)
    except Exception as exc:
        # Messages may hold addresses: the reason at ERROR, the detail at DEBUG.
        if isinstance(exc, StoreError):
            reason = "etcd is not reachable"
        elif isinstance(exc, RuntimeError):  # what grpc raises when it cannot bind
            reason = "cannot listen on the --listen address (in use?)"
        elif isinstance(exc, OSError):  # what aiohttp raises when it cannot bind
            reason = "cannot listen on the --http-port (in use?)"
        else:
            reason = f"{type(exc).__name__} while connecting to etcd"
        log.error("cannot start: %s", reason)
        log.debug("start-up failure", exc_info=True)
        return 1
    try:
        scheme = "https" if options.tls else "http"
        http = f" http={scheme}://{options.host}:{options.http_port}" if options.http_port else ""
        print(f"control-plane ready listen={options.host}:{port}{http}", flush=True)
        await stop.wait()
        log.info("stopping")
    finally:
        await replica.stop()
    return 0
