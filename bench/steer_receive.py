"""Run the rest of a benchmark in a network namespace of its own whose loopback
hands received datagrams to other CPUs (receive packet steering).

On loopback the kernel delivers each datagram a server sends in the sender's own
system call: routing, UDP receive, queueing on the subscriber's socket and waking
its reader all land on the server's CPU time, work that over a real network is
done by the receiving machine. Two systems that differ only in what they do per
packet then differ by a smaller ratio than they would on a network, since both
carry the same receive work. With RPS on the namespace's `lo` (rps_cpus = the
workers' CPUs), `loopback_xmit` queues the datagram to a worker CPU's backlog and
the server pays only for sending it.

The namespace is new (unshare(2): network and mount), so the host's loopback and
its settings are untouched; sysfs is mounted again inside so that /sys/class/net
shows the namespace's own `lo`. Needs root. Call before any thread starts.
"""

from __future__ import annotations

import ctypes
import os
import subprocess

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000


def enter(receive_cpus: list[int]) -> None:
    """Move this process into a new network and mount namespace with `lo` up and
    its received datagrams steered to `receive_cpus`."""
    if not receive_cpus:
        raise ValueError("no CPU to steer received datagrams to")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET | CLONE_NEWNS) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"unshare(CLONE_NEWNET|CLONE_NEWNS): {os.strerror(error)}")
    for command in (
        ["mount", "--make-rprivate", "/"],
        ["mount", "-t", "sysfs", "sysfs", "/sys"],
        ["ip", "link", "set", "lo", "up"],
    ):
        subprocess.run(command, check=True)
    mask = sum(1 << cpu for cpu in receive_cpus)
    with open("/sys/class/net/lo/queues/rx-0/rps_cpus", "w") as f:
        f.write(f"{mask:x}\n")
