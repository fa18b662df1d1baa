"""`conclave dev` as the tests start it: a child process with a config directory of
its own ($XDG_CONFIG_HOME), where it keeps its development CA and the CLI clients
the test runs find it, so that no other test's clients see that CA (a client that
finds a CA talks TLS, conclave/tls.py `find_ca_file`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from conclave.processes import wait_for_line
from conclave.tls import TlsFiles, client_ssl_context

CONCLAVE = [sys.executable, "-m", "conclave.cli"]


@dataclass
class DevCluster:
    process: asyncio.subprocess.Process
    config: Path  # the XDG_CONFIG_HOME of the cluster and of its clients
    ready: dict[str, str]  # the fields of the `ready` line

    @property
    def env(self) -> dict[str, str]:
        """The environment for a `conclave` client of this cluster."""
        return dev_env(self.config)

    @property
    def control_plane(self) -> str:
        return self.ready["control-plane"]

    @property
    def http_port(self) -> int:
        return int(self.ready["http"].rsplit(":", 1)[1])

    @property
    def etcd_url(self) -> str:
        return self.ready["etcd"]

    @property
    def etcd_metrics(self) -> str:
        return self.ready["etcd-metrics"]

    @property
    def ca(self) -> Path:
        return self.config / "conclave" / "dev-pki" / "ca.pem"

    def pki(self, name: str) -> TlsFiles:
        """The dev PKI's `name` certificate (conclave/tls.py `dev_pki`)."""
        directory = self.ca.parent
        return TlsFiles(self.ca, directory / f"{name}.pem", directory / f"{name}-key.pem")

    def ssl_context(self) -> ssl.SSLContext:
        """For https:// to the cluster's relays and control plane."""
        return client_ssl_context(self.ca)

    async def stop(self, timeout: float = 30.0) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


@contextlib.contextmanager
def clients_of(dev: DevCluster) -> Iterator[None]:
    """For the block, this process's clients (RoomsClient, Session) find the
    cluster's CA by themselves, as a user's do after `conclave dev`."""
    previous = os.environ["XDG_CONFIG_HOME"]
    os.environ["XDG_CONFIG_HOME"] = str(dev.config)
    try:
        yield
    finally:
        os.environ["XDG_CONFIG_HOME"] = previous


def dev_env(config: Path) -> dict[str, str]:
    env = {**os.environ, "XDG_CONFIG_HOME": str(config), "CONCLAVE_ICE_ADDRESSES": "127.0.0.1"}
    env.pop("CONCLAVE_CA_FILE", None)
    return env


async def start_dev(*args: str, timeout: float = 90.0, stderr: int | None = None) -> DevCluster:
    """`conclave dev ARGS` until its `ready` line; `stderr` as for subprocesses."""
    config = Path(tempfile.mkdtemp(prefix="conclave-dev-config-"))
    process = await asyncio.create_subprocess_exec(
        *CONCLAVE, "dev", *args, stdout=subprocess.PIPE, stderr=stderr, env=dev_env(config)
    )
    try:
        assert process.stdout is not None
        line = await wait_for_line(process.stdout, "ready", timeout=timeout)
    except BaseException:
        await DevCluster(process, config, {}).stop()
        raise
    fields = dict(word.split("=", 1) for word in line.split()[1:])
    return DevCluster(process, config, fields)
