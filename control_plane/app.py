"""One control-plane replica wired together: etcd store, registry, signer, gRPC server.

Kept apart from main.py (argv, signals, event loop) so tests and `conclave dev` can
run a replica in-process with exactly the production wiring.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import grpc
from aiohttp import web

from conclave.credentials import KEY_FILE_ENV
from conclave.loop_lag import watch_lag
from conclave.store import EtcdStore
from conclave.tasks import spawn
from conclave.tls import TlsFiles, server_credentials, server_ssl_context
from control_plane.access import (
    DEFAULT_CREATE_BURST,
    DEFAULT_CREATES_PER_MINUTE,
    ApiKeys,
    CreateLimiter,
)
from control_plane.attempts import AttemptLimiter, Policy
from control_plane.expiry import ExpiryWatcher
from control_plane.gateway import Gateway
from control_plane.metrics import ControlPlaneMetrics
from control_plane.placement import PlacementStrategy, PowerOfTwoChoices
from control_plane.placer import Placer
from control_plane.registry import NodeRegistry
from control_plane.relay_client import RelayClient
from control_plane.service import DEFAULT_AUDIT_RETENTION_S, DEFAULT_MEETING_TTL_S, RoomService
from control_plane.signing import RETIRE_AFTER_S, ROTATION_S, GrantSigner
from protos import rooms_pb2_grpc

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 3.0
# /readyz reads this (absent) key to see that etcd answers.
READY_PROBE_KEY = "/conclave/ping"
READY_ETCD_TIMEOUT_S = 1.0
# The largest request gRPC reads; a bigger one is refused with RESOURCE_EXHAUSTED
# before any handler runs. The largest legitimate ones, measured with protobuf's
# ByteSize(): AdmitParticipants naming the 1000 participants of a full meeting by
# the 18-character ids the control plane issues, 20 076 bytes (64-character ids,
# which validation tolerates but nothing issues, would make 66 116); a JoinRoom
# with every field at its limit in 4-byte characters and a 2 KiB rejoin token,
# 3 337 bytes; SetPublishRights, 210 bytes. The API token is metadata, capped apart.
MAX_REQUEST_BYTES = 64 * 1024


class ControlPlane:
    """A RoomService replica: `await start(host, port)`, later `await stop()`."""

    def __init__(
        self,
        etcd: list[str],
        *,
        strategy: PlacementStrategy | None = None,
        attempts: Policy | None = None,
        trusted_proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
        meeting_ttl: int = DEFAULT_MEETING_TTL_S,
        audit_retention: int = DEFAULT_AUDIT_RETENTION_S,
        api_key_file: Path | None = None,
        web_organisation: str = "",
        create_burst: int = DEFAULT_CREATE_BURST,
        creates_per_minute: float = DEFAULT_CREATES_PER_MINUTE,
        signing_rotation_s: float = ROTATION_S,
        signing_retire_after_s: float = RETIRE_AFTER_S,
        etcd_tls: TlsFiles | None = None,
        tls: TlsFiles | None = None,
        relay_tls: TlsFiles | None = None,
    ) -> None:
        """`api_key_file`: a key (conclave/credentials.py) to register at start if
        etcd does not have it, the way a fresh cluster gets its first key; by
        default the one $CONCLAVE_API_KEY_FILE names, if set. `web_organisation`:
        the web page may create meetings without an API key, for this organisation.
        `create_burst`, `creates_per_minute`: how many meetings one API key (or the
        web page) may create here at once and sustained (access.CreateLimiter).
        `signing_rotation_s`: how often the grant-signing key is replaced (0:
        never); `signing_retire_after_s`: how long a replaced one stays published.
        `etcd_tls`: talk to etcd over TLS with this client certificate. `tls`:
        serve gRPC and HTTP over TLS with this certificate and key (its `ca` is
        not used: clients are not asked for certificates). `relay_tls`: call the
        relays' gRPC port over mutual TLS with this certificate (docs/operations.md)."""
        self.tls = tls
        self.store = EtcdStore(etcd, tls=etcd_tls)
        if api_key_file is None and os.environ.get(KEY_FILE_ENV):
            api_key_file = Path(os.environ[KEY_FILE_ENV])
        self.api_keys = ApiKeys(self.store, api_key_file)
        self.attempts = AttemptLimiter(self.store, attempts)
        self.creates = CreateLimiter(create_burst, creates_per_minute)
        self.registry = NodeRegistry(self.store)
        self.metrics = ControlPlaneMetrics(self.attempts, self.registry)
        self.store.observe = self.metrics.server.observe_etcd
        self.signer = GrantSigner(
            self.store, rotation_s=signing_rotation_s, retire_after_s=signing_retire_after_s
        )
        self.relays = RelayClient(tls=relay_tls)
        self.registry.on_node_removed(self.relays.forget)
        self.placer = Placer(
            self.store,
            self.registry,
            strategy or PowerOfTwoChoices(),
            on_decision=lambda decision: self.metrics.placements.labels(decision=decision).inc(),
        )
        self.expiry = ExpiryWatcher(self.store, self.registry, self.relays)
        self.service = RoomService(
            self.store,
            self.registry,
            self.placer,
            self.signer,
            self.relays,
            self.attempts,
            self.api_keys,
            web_organisation=web_organisation,
            trusted_proxies=trusted_proxies,
            meeting_ttl=meeting_ttl,
            audit_retention=audit_retention,
            metrics=self.metrics,
            creates=self.creates,
            relay_tls=relay_tls,
        )
        self._runner: web.AppRunner | None = None  # the HTTP server (--http-port)
        self._lag_watch: asyncio.Task[None] | None = None
        # Without this gRPC sets SO_REUSEPORT, and a second replica started on the
        # same port would silently share it instead of failing.
        self._server = grpc.aio.server(
            interceptors=[self.metrics.server.interceptor()],
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ],
        )
        rooms_pb2_grpc.add_RoomServiceServicer_to_server(self.service, self._server)  # type: ignore[no-untyped-call]
        self._started = False

    async def start(self, host: str, port: int, http_port: int | None = None) -> int:
        """Connect to etcd, publish the signing key, serve; returns the bound port.
        With `http_port`, the web client and its JSON API (control_plane/gateway.py)
        and /metrics are served on `host` at that port (HTTPS with `tls`).

        Raises `conclave.store.StoreError` if etcd is unreachable and `RuntimeError`
        if the address cannot be bound; whatever started is stopped again.
        """
        self._started = True
        try:
            await self.store.connect()
            await self.registry.start()
            await self.api_keys.start()
            await self.signer.start()
            await self.attempts.start()
            await self.expiry.start()
            self._lag_watch = spawn(
                watch_lag(self.metrics.event_loop_lag.observe), "event-loop-lag"
            )
            address = f"{host}:{port}"
            if self.tls is None:
                bound = int(self._server.add_insecure_port(address))
            else:
                credentials = server_credentials(self.tls)
                bound = int(self._server.add_secure_port(address, credentials))
            await self._server.start()
            if http_port is not None:
                app = Gateway(self.service).application()
                app.add_routes(
                    [
                        web.get("/metrics", self.metrics.handler),
                        web.get("/healthz", self._alive),
                        web.get("/readyz", self._ready),
                    ]
                )
                await self._serve_http(app, host, http_port)
        except BaseException:
            await self.stop(grace=None)
            raise
        log.info("serving RoomService")
        return bound

    async def stop(self, grace: float | None = SHUTDOWN_GRACE_S) -> None:
        """Finish in-flight calls (up to `grace` s), withdraw the signing key, disconnect."""
        if not self._started:
            return
        self._started = False
        if self._lag_watch is not None:
            self._lag_watch.cancel()
            self._lag_watch = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._server.stop(grace)
        await self.expiry.stop()
        await self.signer.stop()
        await self.api_keys.stop()
        await self.registry.stop()
        await self.relays.close()
        await self.store.close()

    async def _alive(self, request: web.Request) -> web.Response:
        """Liveness: the event loop answers. Restarting would not fix etcd."""
        return web.Response(text="ok")

    async def _ready(self, request: web.Request) -> web.Response:
        """Readiness: serving, and etcd answers now; otherwise joins would fail here
        and the load balancer should send them to another replica."""
        if not self._started:
            return web.Response(status=503, text="stopping")
        try:
            async with asyncio.timeout(READY_ETCD_TIMEOUT_S):
                await self.store.get(READY_PROBE_KEY)
        except Exception:
            return web.Response(status=503, text="etcd is not reachable")
        return web.Response(text="ok")

    async def _serve_http(self, app: web.Application, host: str, port: int) -> None:
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        self._runner = runner
        context = None if self.tls is None else server_ssl_context(self.tls)
        await web.TCPSite(runner, host, port, ssl_context=context).start()
