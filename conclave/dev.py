"""`conclave dev`: a whole cluster on loopback, for trying Conclave on one machine.

Starts one etcd, one control plane and N relays as child processes, prints one
`ready ...` line on stdout when every one of them is serving, and then only waits.

Every hop is TLS, as in production (docs/security.md): etcd serves clients only
with a certificate (`--client-cert-auth`), the control plane's gRPC API and web
page are TLS, relays and the control plane talk mutual TLS, and relays signal over
WSS. The certificates come from a development CA in `conclave.tls.dev_pki_dir()`,
made on first use and kept, where the CLI and the SDK find it by themselves.
Ctrl-C or SIGTERM stops them all (SIGTERM, SIGKILL after a grace period); if any
child dies on its own, the rest are stopped too and the exit code is 1, because a
half-running cluster is more confusing than none.

Output: the control plane's and relays' stdout and stderr go to this process's
stderr, each line prefixed with `[name]`; etcd logs (errors only) to `etcd.log` in
a temporary directory whose path is printed at start-up and which is removed on a
clean exit. Stdout carries only the `ready` line: `ready control-plane=HOST:PORT
http=URL etcd=URL etcd-metrics=URL` (etcd's /metrics listener is in clear and
serves nothing but metrics and health).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

from conclave.arguments import int_between, port
from conclave.credentials import default_key_path, load_key_file, new_key, save_key_file
from conclave.processes import EtcdServer, die_with_parent, free_port, port_free, stop_group
from conclave.tls import TlsFiles, dev_pki, dev_pki_dir, spki_sha256

HOST = "127.0.0.1"
DEV_ORGANISATION = "dev"  # the development key's organisation, and the web page's
GRACE_S = 5.0


class StartupError(Exception):
    """The cluster could not be brought up; the message says which part and why."""


@dataclass
class Child:
    """One server process and the task copying its output to our stderr."""

    name: str
    process: asyncio.subprocess.Process
    ready_prefix: str
    ready: asyncio.Future[str]
    pump: asyncio.Task[None] | None = None


@dataclass
class Cluster:
    relays: int
    grpc_port: int
    http_port: int
    etcd_port: int | None
    ready_timeout: float
    relay_capacity: int | None = None  # each relay's participant limit (None: its default)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="conclave-dev-")))
    etcd: EtcdServer | None = None
    pki: dict[str, TlsFiles] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)
    _etcd_started: asyncio.Future[None] | None = None

    @property
    def etcd_url(self) -> str:
        assert self.etcd is not None
        return self.etcd.client_url

    async def start(self) -> None:
        """etcd, then the control plane, then the relays (they need both)."""
        busy = [p for p in self._fixed_ports() if not port_free(p, HOST)]
        if busy:
            raise StartupError(f"port(s) already in use on {HOST}: {', '.join(map(str, busy))}")
        self.pki = await asyncio.to_thread(dev_pki, dev_pki_dir())
        log_path = self.workdir / "etcd.log"
        _say(f"logs: etcd -> {log_path}; servers -> stderr, prefixed")
        self.etcd = EtcdServer(
            client_port=self.etcd_port or free_port(),
            tls=self.pki["etcd-server"],
            client=self.pki["etcd-client"],
            metrics_port=free_port(),
        )
        try:
            # Shielded and remembered: if we are interrupted mid-start, stop() waits
            # for Popen to return, so the etcd it made is stopped, not orphaned.
            self._etcd_started = asyncio.ensure_future(asyncio.to_thread(self.etcd.start, log_path))
            await asyncio.shield(self._etcd_started)
            await asyncio.to_thread(self.etcd.wait_ready)
        except RuntimeError as exc:
            raise StartupError(f"etcd: {exc} (see {log_path})") from None

        key_path = _dev_key()
        self._tell_where_things_are(key_path)
        control_plane = await self._spawn(
            "control-plane",
            [
                "-m",
                "control_plane",
                "--etcd",
                self.etcd_url,
                *self._etcd_tls(),
                *_files("--rpc", self.pki["cell"]),
                "--tls-cert",
                str(self.pki["control-plane"].cert),
                "--tls-key",
                str(self.pki["control-plane"].key),
                "--listen",
                f"{HOST}:{self.grpc_port}",
                "--http-port",
                str(self.http_port),
                "--api-key-file",
                str(key_path),
                "--web-create-organisation",
                DEV_ORGANISATION,
                # A laptop's cluster for trying things and load tests: no creation limit
                # worth meeting (production keeps the defaults, docs/security.md).
                "--create-burst",
                "100000",
                "--creates-per-minute",
                "1000000",
            ],
            "control-plane ready",
        )
        await self._wait_ready([control_plane])
        relays = [
            await self._spawn(
                f"relay-{i}",
                [
                    "-m",
                    "relay",
                    "--etcd",
                    self.etcd_url,
                    *self._etcd_tls(),
                    *_files("--rpc", self.pki["cell"]),
                    "--tls-cert",
                    str(self.pki["relay"].cert),
                    "--tls-key",
                    str(self.pki["relay"].key),
                    "--node-id",
                    f"relay-{i}",
                    "--http-port",
                    str(self.relay_port(i)),
                    "--rpc-port",
                    str(free_port()),
                    "--ice-address",
                    HOST,
                    *(["--capacity", str(self.relay_capacity)] if self.relay_capacity else []),
                ],
                "relay ready",
            )
            for i in range(self.relays)
        ]
        await self._wait_ready(relays)

    def _etcd_tls(self) -> list[str]:
        return _files("--etcd", self.pki["etcd-client"])

    def _tell_where_things_are(self, key_path: Path) -> None:
        """What a person needs to reach this cluster from elsewhere, on stderr."""
        assert self.etcd is not None
        client = self.pki["etcd-client"]
        web = ",".join(spki_sha256(self.pki[name].cert) for name in ("control-plane", "relay"))
        _say(f"API key: {key_path} (conclave room create and the SDK find it there)")
        _say(f"dev CA: {client.ca} (the CLI and the SDK find it there)")
        _say(
            "browsers do not know the dev CA: import it (Firefox: Settings > Certificates), "
            f"or start Chromium with --ignore-certificate-errors-spki-list={web} "
            "--user-data-dir=DIR"
        )
        _say(
            f"etcd (for `conclave keys` and `conclave relay drain`): export "
            f"CONCLAVE_ETCD={self.etcd_url} CONCLAVE_ETCD_CA={client.ca} "
            f"CONCLAVE_ETCD_CERT={client.cert} CONCLAVE_ETCD_KEY={client.key}"
        )

    async def wait_for_exit(self) -> str:
        """Until some child exits; returns a sentence saying which and how."""
        waits: dict[asyncio.Task[int], str] = {
            asyncio.create_task(child.process.wait()): child.name for child in self.children
        }
        waits[asyncio.create_task(self._wait_etcd())] = "etcd"
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            task = next(iter(done))
            return f"{waits[task]} exited unexpectedly with code {task.result()}"
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def stop(self) -> None:
        """Relays first (they deregister), then the control plane, then etcd."""
        relays = [c for c in self.children if c.name.startswith("relay-")]
        others = [c for c in self.children if not c.name.startswith("relay-")]
        # SIGINT: stop now. SIGTERM would drain, but every relay is going away.
        await asyncio.gather(*(_terminate(c, signal.SIGINT) for c in relays))
        await asyncio.gather(*(_terminate(c) for c in others))
        if self._etcd_started is not None:
            await asyncio.gather(self._etcd_started, return_exceptions=True)
        if self.etcd is not None:
            await asyncio.to_thread(self.etcd.stop)

    def relay_port(self, index: int) -> int:
        """Relay i's HTTP/signalling port: the ports after the web client's."""
        return self.http_port + 1 + index

    def _fixed_ports(self) -> list[int]:
        ports = [self.grpc_port, self.http_port, *map(self.relay_port, range(self.relays))]
        return [*ports, self.etcd_port] if self.etcd_port else ports

    async def _wait_etcd(self) -> int:
        """etcd is a Popen (conclave.processes): wait for it in a thread; `stop()`
        reaps it, which also ends this thread."""
        assert self.etcd is not None and self.etcd.process is not None
        return await asyncio.to_thread(self.etcd.process.wait)

    async def _spawn(self, name: str, args: list[str], ready_prefix: str) -> Child:
        env = dict(os.environ, PYTHONUNBUFFERED="1")  # readiness lines must not sit in a buffer
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches only us; we stop children in order
            preexec_fn=die_with_parent,
        )
        child = Child(name, process, ready_prefix, asyncio.get_running_loop().create_future())
        child.pump = asyncio.create_task(_pump(child), name=f"pump-{name}")
        self.children.append(child)
        return child

    async def _wait_ready(self, children: list[Child]) -> None:
        try:
            async with asyncio.timeout(self.ready_timeout):
                await asyncio.gather(*(c.ready for c in children))
        except TimeoutError:
            late = [c.name for c in children if not c.ready.done()]
            raise StartupError(
                f"{', '.join(late)} not ready within {self.ready_timeout:g} s"
            ) from None


async def _pump(child: Child) -> None:
    """Copy the child's output to stderr, prefixed, and notice its ready line."""
    stream = child.process.stdout
    assert stream is not None
    prefix = f"[{child.name}] "
    try:
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip("\n")
            sys.stderr.write(prefix + text + "\n")
            sys.stderr.flush()
            if not child.ready.done() and text.strip().startswith(child.ready_prefix):
                child.ready.set_result(text.strip())
    finally:
        if not child.ready.done():
            code = await child.process.wait()
            child.ready.set_exception(
                StartupError(f"{child.name} exited with code {code} before it was ready")
            )


async def _terminate(child: Child, sig: signal.Signals = signal.SIGTERM) -> None:
    """Signal the child's process group, SIGKILL it after GRACE_S; always reap."""
    if await stop_group(child.process, GRACE_S, sig):
        _say(f"{child.name} did not stop within {GRACE_S:g} s: killed it")
    if child.pump is not None:
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            async with asyncio.timeout(1.0):
                await asyncio.shield(child.pump)
        child.pump.cancel()
    if not child.ready.done():
        child.ready.cancel()


def _files(prefix: str, files: TlsFiles) -> list[str]:
    """`{prefix}-ca CA {prefix}-cert CERT {prefix}-key KEY`, as the servers take them."""
    return [
        f"{prefix}-ca", str(files.ca), f"{prefix}-cert", str(files.cert),
        f"{prefix}-key", str(files.key),
    ]  # fmt: skip


def _say(message: str) -> None:
    print(f"conclave dev: {message}", file=sys.stderr, flush=True)


async def _run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    cluster = Cluster(
        relays=args.relays,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        etcd_port=args.etcd_port,
        ready_timeout=args.ready_timeout,
        relay_capacity=args.relay_capacity,
    )
    stop_task = asyncio.create_task(stop.wait())
    tasks: list[asyncio.Task[object]] = [stop_task]
    code = 1
    try:
        start_task = asyncio.create_task(cluster.start())
        tasks.append(start_task)
        await asyncio.wait({start_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if not start_task.done():
            _say("interrupted during start-up")
            code = 0
            return code
        start_task.result()  # StartupError -> reported below
        assert cluster.etcd is not None
        print(
            f"ready control-plane={HOST}:{args.grpc_port} http=https://{HOST}:{args.http_port} "
            f"etcd={cluster.etcd_url} etcd-metrics={cluster.etcd.metrics_url}",
            flush=True,
        )
        exit_task = asyncio.create_task(cluster.wait_for_exit())
        tasks.append(exit_task)
        await asyncio.wait({exit_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if exit_task.done():
            _say(f"{exit_task.result()}; stopping the cluster")
            code = 1
        else:
            _say("stopping")
            code = 0
        return code
    except StartupError as exc:
        _say(f"error: {exc}; stopping the cluster")
        return 1
    finally:
        # Whatever got us here (signal, failure, cancellation), nothing may still be
        # spawning while we stop, and every child that exists gets stopped.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await cluster.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if code == 0 or not any(cluster.workdir.iterdir()):
            shutil.rmtree(cluster.workdir, ignore_errors=True)
        else:
            _say(f"logs kept in {cluster.workdir}")


def _dev_key() -> Path:
    """The development API key where clients look by themselves (default_key_path),
    made on first use; the control plane registers it in this cluster's etcd."""
    path = default_key_path()
    if not path.exists():
        save_key_file(new_key(DEV_ORGANISATION), path)
    else:
        load_key_file(path)  # a malformed file is said now, not at the first request
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conclave dev",
        description="Run etcd, a control plane and N relays on 127.0.0.1 until Ctrl-C, "
        "every hop over TLS with a development CA.",
    )
    parser.add_argument(
        "--relays",
        type=int_between(1),
        default=2,
        metavar="N",
        help="number of relay nodes (default 2)",
    )
    parser.add_argument(
        "--grpc-port", type=port, default=50051, help="control-plane gRPC port (default 50051)"
    )
    parser.add_argument(
        "--http-port",
        type=port,
        default=8080,
        help="the web client's port (open it in a browser); relay i signals on PORT+1+i "
        "(default 8080)",
    )
    parser.add_argument(
        "--etcd-port", type=port, default=None, help="etcd client port (default: a free port)"
    )
    parser.add_argument(
        "--relay-capacity",
        type=int_between(1),
        default=None,
        metavar="N",
        help="participant limit of each relay (default: the relay's own); a meeting "
        "larger than that spans several relays (docs/cascading.md)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long each server may take to become ready (default 60)",
    )
    return parser


def main(argv: list[str]) -> int:
    """`conclave dev [--relays N] [--grpc-port P] [--http-port P] [--etcd-port P]`."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    if args.http_port + args.relays > 65535:
        print("conclave dev: error: --http-port + --relays exceeds 65535", file=sys.stderr)
        return 2
    return uvloop.run(_run(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
