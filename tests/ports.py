"""Free UDP port ranges for tests of `--udp-ports`."""

from __future__ import annotations

import contextlib
import random
import socket


def free_udp_range(size: int, host: str = "127.0.0.1") -> tuple[int, int]:
    """`size` consecutive UDP ports free on `host` right now, outside the kernel's
    ephemeral range when possible (so no port-0 socket grabs one meanwhile)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 0
    low, high = (10000, ephemeral_low - size) if ephemeral_low > 11000 else (40000, 59000)
    for _ in range(100):
        base = random.randrange(low, high)
        with contextlib.ExitStack() as held:
            try:
                for port in range(base, base + size):
                    sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                    sock.bind((host, port))
            except OSError:
                continue
        return base, base + size - 1
    raise RuntimeError("no free UDP port range found")
