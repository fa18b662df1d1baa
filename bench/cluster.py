"""A throw-away Conclave cluster on loopback for benchmarks: etcd, one control plane,
one relay, each a child process that is stopped when the benchmark ends.

Children run in their own session (Ctrl-C reaches only the benchmark, which then
stops them in order) and get SIGTERM if the benchmark dies (`die_with_parent`);
`kill_leftovers()` is the synchronous last resort after the event loop is gone.

The benchmark runs with a config directory of its own (`bench_config`): an API key
made for it, which its control planes register and its clients sign with, and no
development CA (the cluster is in clear), never the user's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from conclave.credentials import default_key_path, new_key, save_key_file
from conclave.processes import EtcdServer, die_with_parent, free_port, signal_group, stop_group

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
GRACE_S = 5.0
TAIL_LINES = 40


@dataclass
class Child:
    """A child process and the task draining its output (so it never blocks)."""

    name: str
    process: asyncio.subprocess.Process
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    pump: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def describe_exit(self) -> str:
        lines = "\n".join(f"  [{self.name}] {line}" for line in self.tail)
        return f"{self.name} exited with code {self.process.returncode}\n{lines}"


def bench_config() -> Path:
    """The benchmark's API key file, made on first use in a config directory of its
    own that this process and its children use from then on."""
    if "CONCLAVE_BENCH_CONFIG" not in os.environ:
        config = tempfile.mkdtemp(prefix="conclave-bench-")
        os.environ["CONCLAVE_BENCH_CONFIG"] = config
        os.environ["XDG_CONFIG_HOME"] = config
        os.environ.pop("CONCLAVE_API_KEY_FILE", None)
        os.environ.pop("CONCLAVE_CA_FILE", None)
        save_key_file(new_key("bench"), default_key_path())
    return default_key_path()


def child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", CONCLAVE_ICE_ADDRESSES=HOST)
    env.pop("CONCLAVE_CONTROL_PLANE", None)
    return env


async def spawn(
    name: str,
    args: list[str],
    *,
    ready_prefix: str | None,
    timeout: float,
    echo: bool,
    stdin_pipe: bool = False,
) -> Child:
    """Start `python *args`; with `ready_prefix`, wait for that line on its output
    (stdout and stderr merged) and keep draining it afterwards. Without it the
    child's stdout is left to the caller (a worker speaking a protocol on it) and
    its stderr goes to ours."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdin=asyncio.subprocess.PIPE if stdin_pipe else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if ready_prefix else None,
        env=child_env(),
        cwd=REPO,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    child = Child(name, process)
    if ready_prefix is None:
        return child
    stream = process.stdout
    assert stream is not None
    try:
        async with asyncio.timeout(timeout):
            while True:
                line = await stream.readline()
                if not line:
                    await process.wait()
                    raise RuntimeError(child.describe_exit())
                text = line.decode(errors="replace").rstrip()
                child.tail.append(text)
                if echo:
                    print(f"[{name}] {text}", file=sys.stderr, flush=True)
                if text.strip().startswith(ready_prefix):
                    break
    except BaseException:
        await stop_child(child)
        raise
    child.pump = asyncio.create_task(_pump(child, stream, echo), name=f"pump-{name}")
    return child


async def _pump(child: Child, stream: asyncio.StreamReader, echo: bool) -> None:
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip()
        child.tail.append(text)
        if echo:
            print(f"[{child.name}] {text}", file=sys.stderr, flush=True)


async def stop_child(child: Child) -> None:
    """SIGTERM its process group, SIGKILL after GRACE_S; always reaps it."""
    await stop_group(child.process, GRACE_S)
    if child.pump is not None:
        child.pump.cancel()
        await asyncio.gather(child.pump, return_exceptions=True)


@dataclass
class Cluster:
    """etcd + control plane + one relay; `start()`, then `stop()` in a finally."""

    echo: bool = True
    ready_timeout: float = 30.0
    relay_node_id: str = "bench-relay"
    control_plane_port: int = field(default_factory=free_port)
    relay_http_port: int = field(default_factory=free_port)
    relay_rpc_port: int = field(default_factory=free_port)
    relay_args: list[str] = field(default_factory=list)  # extra, e.g. ["--capacity", "1000"]
    etcd: EtcdServer | None = None
    children: list[Child] = field(default_factory=list)
    relay: Child | None = None

    @property
    def control_plane_target(self) -> str:
        return f"{HOST}:{self.control_plane_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.relay_http_port}/metrics"

    async def start(self) -> None:
        self.etcd = EtcdServer()
        self.etcd.start()  # a Popen: returns at once, and is never half-done when cancelled
        await _wait_listening(self.etcd.client_port, self.ready_timeout, self.etcd)
        etcd_url = f"http://{self.etcd.endpoint}"
        self.children.append(
            await spawn(
                "control-plane",
                [
                    "-m",
                    "control_plane",
                    "--etcd",
                    etcd_url,
                    "--listen",
                    self.control_plane_target,
                    "--api-key-file",
                    str(bench_config()),
                    # benchmarks create a meeting per point, many in a row
                    "--create-burst",
                    "100000",
                    "--creates-per-minute",
                    "1000000",
                    "--log-level",
                    "warning",
                ],
                ready_prefix="control-plane ready",
                timeout=self.ready_timeout,
                echo=self.echo,
            )
        )
        self.relay = await spawn(
            "relay",
            [
                "-m",
                "relay",
                "--etcd",
                etcd_url,
                "--node-id",
                self.relay_node_id,
                "--http-port",
                str(self.relay_http_port),
                "--rpc-port",
                str(self.relay_rpc_port),
                "--ice-address",
                HOST,
                "--log-level",
                "WARNING",
                *self.relay_args,
            ],
            ready_prefix="relay ready",
            timeout=self.ready_timeout,
            echo=self.echo,
        )
        self.children.append(self.relay)

    def check_alive(self) -> None:
        """Raise if a server died: figures from a half-dead cluster mean nothing."""
        for child in self.children:
            if child.process.returncode is not None:
                raise RuntimeError(child.describe_exit())
        if self.etcd is not None and self.etcd.process is not None:
            code = self.etcd.process.poll()
            if code is not None:
                raise RuntimeError(f"etcd exited with code {code}")

    async def stop(self) -> None:
        """Relay first (it deregisters), then the control plane, then etcd."""
        for child in reversed(self.children):
            await stop_child(child)
        if self.etcd is not None:
            await asyncio.to_thread(self.etcd.stop)
            self.etcd = None

    def kill_leftovers(self) -> None:
        """Synchronous last resort (event loop gone, second Ctrl-C): SIGKILL every
        child's process group and reap it."""
        for child in self.children:
            if child.process.returncode is not None:
                continue  # reaped: its pid may belong to someone else by now
            signal_group(child.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child.pid, 0)
        if self.etcd is not None:
            if self.etcd.process is not None and self.etcd.process.poll() is None:
                self.etcd.process.kill()
            self.etcd.stop()
            self.etcd = None


async def _wait_listening(port: int, timeout: float, etcd: EtcdServer) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if etcd.process is not None and etcd.process.poll() is not None:
            raise RuntimeError(f"etcd exited with code {etcd.process.returncode}")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 0.5)
        except (OSError, TimeoutError):
            await asyncio.sleep(0.1)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise RuntimeError(f"etcd did not listen on {HOST}:{port} within {timeout:g} s")
