"""Starting and stopping the child processes of a local cluster (dev and tests)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


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


async def stop_group(process: asyncio.subprocess.Process, grace: float) -> bool:
    """SIGTERM the process group, SIGKILL it after `grace` seconds; always reaps.
    Returns True when it had to kill."""
    killed = False
    if process.returncode is None:
        signal_group(process.pid, signal.SIGTERM)
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
    """One throw-away etcd member on loopback, data in a temporary directory."""

    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    data_dir: str = ""

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self, log_path: Path | None = None) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            raise RuntimeError("etcd is not on PATH (Debian: apt-get install etcd-server)")
        self.data_dir = tempfile.mkdtemp(prefix="conclave-etcd-")
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        out = open(log_path, "wb") if log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [
                binary,
                "--name",
                "conclave-dev",
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
                f"conclave-dev={peer}",
                "--unsafe-no-fsync",
                "--log-level",
                "error",
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
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.client_port), timeout=0.5),
            ):
                return
            time.sleep(0.1)
        raise RuntimeError("etcd did not start listening in time")

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


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
