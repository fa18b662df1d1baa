"""Starting and stopping the child processes of a local cluster (dev and tests)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conclave.tls import TlsFiles


def _load_prctl() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl: Callable[[int, int], int] = libc.prctl
        return prctl
    return None


_PRCTL = _load_prctl()  # resolved before any fork: the child must not load libraries
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child before exec: get SIGTERM when the parent dies, even by SIGKILL,
    so that no server outlives the `conclave dev` or test that started it."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal a child's whole process group (children start their own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def stop_group(
    process: asyncio.subprocess.Process, grace: float, sig: signal.Signals = signal.SIGTERM
) -> bool:
    """Signal the process group (SIGTERM unless `sig` says otherwise), SIGKILL it
    after `grace` seconds; always reaps. Returns True when it had to kill."""
    killed = False
    if process.returncode is None:
        signal_group(process.pid, sig)
        try:
            async with asyncio.timeout(grace):
                await process.wait()
        except TimeoutError:
            killed = True
            signal_group(process.pid, signal.SIGKILL)
            await process.wait()
    else:
        signal_group(process.pid, signal.SIGKILL)  # leftovers of its group, if any
    return killed


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether `port` can be bound on `host` now."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port_run(count: int, host: str = "127.0.0.1") -> int:
    """A free port followed by `count` more free ones (`conclave dev` gives its
    relays the ports after the web client's)."""
    for _ in range(50):
        port = free_port(host)
        if port + count < 65536 and all(port_free(port + 1 + i, host) for i in range(count)):
            return port
    raise RuntimeError(f"no run of {count + 1} free ports on {host}")


def terminate(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; always reaps the child."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class EtcdServer:
    """One throw-away etcd member on loopback, data in a temporary directory.

    Alone by default; `EtcdCluster` starts several with `name` and
    `initial_cluster` set so that they form one cluster. With `tls` (the server's
    certificate and key, and the CA whose client certificates it accepts) it serves
    clients over TLS only and refuses any without such a certificate
    (`--client-cert-auth`); `client` is then what `wait_ready`, `status` and
    `healthy` present. Peers talk plain HTTP on loopback unless `peer_tls` (the
    member's peer certificate and key, server and client usage, and the CA whose
    peer certificates it accepts) is given: the peer URL is then https and the
    member refuses peers without a certificate of that CA
    (`--peer-client-cert-auth`). With `metrics_port` it also serves `/metrics`
    (and `/health`) in clear on that port (`--listen-metrics-urls`), so that
    Prometheus can scrape a TLS member without a client certificate.
    """

    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    data_dir: str = ""
    name: str = "conclave-dev"
    initial_cluster: str = ""  # "name=peer-url,...": empty for a one-member cluster
    tls: TlsFiles | None = None
    client: TlsFiles | None = None
    peer_tls: TlsFiles | None = None
    metrics_port: int | None = None

    @property
    def endpoint(self) -> str:
        """`127.0.0.1:PORT` in clear, `https://127.0.0.1:PORT` with TLS."""
        if self.tls is not None:
            return f"https://127.0.0.1:{self.client_port}"
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    @property
    def metrics_url(self) -> str:
        """`http://127.0.0.1:PORT/metrics` of the clear-text metrics listener."""
        if self.metrics_port is None:
            raise ValueError("this etcd has no metrics_port")
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def _tls_arguments(self) -> list[str]:
        arguments: list[str] = []
        if self.tls is not None:
            arguments += [
                "--cert-file", str(self.tls.cert), "--key-file", str(self.tls.key),
                "--client-cert-auth", "--trusted-ca-file", str(self.tls.ca),
            ]  # fmt: skip
        if self.peer_tls is not None:
            arguments += [
                "--peer-cert-file", str(self.peer_tls.cert),
                "--peer-key-file", str(self.peer_tls.key),
                "--peer-client-cert-auth", "--peer-trusted-ca-file", str(self.peer_tls.ca),
            ]  # fmt: skip
        if self.metrics_port is not None:
            arguments += ["--listen-metrics-urls", f"http://127.0.0.1:{self.metrics_port}"]
        return arguments

    def _open(self, request: urllib.request.Request | str, timeout: float) -> Any:
        """urlopen on the client port, presenting `client` when serving TLS."""
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=self.tls.ca)
            if self.client is not None:
                context.load_cert_chain(self.client.cert, self.client.key)
        return urllib.request.urlopen(request, timeout=timeout, context=context)

    @property
    def peer_url(self) -> str:
        scheme = "https" if self.peer_tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.peer_port}"

    def start(self, log_path: Path | None = None) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            raise RuntimeError("etcd is not on PATH (Debian: apt-get install etcd-server)")
        self.data_dir = tempfile.mkdtemp(prefix="conclave-etcd-")
        client = self.client_url
        peer = self.peer_url
        out = open(log_path, "wb") if log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [
                binary,
                "--name",
                self.name,
                "--data-dir",
                self.data_dir,
                "--listen-client-urls",
                client,
                "--advertise-client-urls",
                client,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                self.initial_cluster or f"{self.name}={peer}",
                "--unsafe-no-fsync",
                "--log-level",
                "error",
                *self._tls_arguments(),
            ],
            stdout=out,
            stderr=out,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.process.returncode}")
            if self._answers():
                return
            time.sleep(0.1)
        raise RuntimeError("etcd did not start listening in time")

    def _answers(self) -> bool:
        """It listens; with TLS and a `client`, it also completes a handshake and
        reports itself healthy."""
        if self.tls is not None and self.client is not None:
            return self.healthy(timeout=0.5)
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.client_port), timeout=0.5),
        ):
            return True
        return False

    def status(self, timeout: float = 2.0) -> dict[str, Any]:
        """The member's `/v3/maintenance/status` (JSON gateway: ids are strings)."""
        request = urllib.request.Request(
            f"{self.client_url}/v3/maintenance/status", data=b"{}", method="POST"
        )
        with self._open(request, timeout) as response:
            status: dict[str, Any] = json.loads(response.read())
        return status

    def healthy(self, timeout: float = 2.0) -> bool:
        """True when the member answers `/health`: it has a leader, no alarm, and a
        quorum read went through."""
        try:
            with self._open(f"{self.client_url}/health", timeout) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would; the data directory stays until `stop`."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


@dataclass
class EtcdCluster:
    """Several throw-away etcd members on loopback forming one cluster, so that
    tests can kill a member (or the leader) and watch clients fail over.

    `tls`, `client` and `peer_tls` are given to every member it makes (see
    `EtcdServer`): `EtcdCluster(3, tls=..., client=..., peer_tls=...)` runs all of
    them with client and peer TLS. Given `members` are taken as they are."""

    size: int = 3
    members: list[EtcdServer] = field(default_factory=list)
    tls: TlsFiles | None = None
    client: TlsFiles | None = None
    peer_tls: TlsFiles | None = None

    def __post_init__(self) -> None:
        if not self.members:
            self.members = [
                EtcdServer(
                    name=f"conclave-{i}", tls=self.tls, client=self.client, peer_tls=self.peer_tls
                )
                for i in range(self.size)
            ]
        self.size = len(self.members)
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def endpoint_list(self) -> str:
        """All client endpoints comma-separated, as `--etcd` takes them."""
        return ",".join(self.endpoints)

    def start(self, log_dir: Path | None = None) -> None:
        """Start every member; they elect a leader once a quorum is up."""
        try:
            for member in self.members:
                member.start(log_dir / f"{member.name}.log" if log_dir else None)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every member listens and reports itself healthy (it has a leader)."""
        deadline = time.monotonic() + timeout
        for member in self.members:
            member.wait_ready(max(deadline - time.monotonic(), 0.1))
        while not all(m.healthy() for m in self.members):
            for member in self.members:
                if member.process is not None and member.process.poll() is not None:
                    code = member.process.returncode
                    raise RuntimeError(f"etcd {member.name} exited with {code}")
            if time.monotonic() > deadline:
                raise RuntimeError("the etcd cluster did not become healthy in time")
            time.sleep(0.1)

    def leader(self, timeout: float = 10.0) -> int:
        """The index of the member that leads now, once every live member agrees."""
        deadline = time.monotonic() + timeout
        while True:
            indexes: dict[str, int] = {}  # member id -> index
            leaders: set[str] = set()
            for index, member in enumerate(self.members):
                if member.alive():
                    with contextlib.suppress(OSError, ValueError, KeyError):
                        status = member.status()
                        indexes[status["header"]["member_id"]] = index
                        leaders.add(status["leader"])
            if len(leaders) == 1 and (leader := leaders.pop()) in indexes:
                return indexes[leader]
            if time.monotonic() > deadline:
                raise RuntimeError("the live etcd members do not agree on a leader")
            time.sleep(0.1)

    def stop(self) -> None:
        for member in self.members:
            member.stop()


async def wait_for_line(stream: asyncio.StreamReader, prefix: str, timeout: float) -> str:
    """Read lines until one starts with `prefix`; raise on EOF or timeout."""
    async with asyncio.timeout(timeout):
        while True:
            line = await stream.readline()
            if not line:
                raise RuntimeError(f"process ended before printing {prefix!r}")
            text = line.decode(errors="replace").strip()
            if text.startswith(prefix):
                return text
