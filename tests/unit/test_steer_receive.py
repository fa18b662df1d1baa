"""bench/steer_receive.py: the benchmark's own network namespace steers loopback
receive work to the given CPUs, and the host's loopback is left as it was."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
RPS = "/sys/class/net/lo/queues/rx-0/rps_cpus"
CHILD = f"""
import socket, sys
sys.path.insert(0, {str(BENCH)!r})
import steer_receive
steer_receive.enter([1])
print(open({RPS!r}).read().strip())
a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.bind(("127.0.0.1", 0))
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b.settimeout(5)
b.sendto(b"over the namespace's loopback", a.getsockname())
a.settimeout(5)
print(a.recv(100).decode())
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="unshare(2) of a network namespace needs root")
def test_the_namespace_steers_its_loopback_and_leaves_the_hosts_alone() -> None:
    with open(RPS) as f:
        before = f.read()
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.splitlines() == ["2", "over the namespace's loopback"], done.stderr
    with open(RPS) as f:
        assert f.read() == before
