"""`LoopbackCapture`: what crosses the loopback interface, for the tests that
check nothing secret travels in clear (relay links, the control plane's TLS)."""

from __future__ import annotations

import socket
import struct
import threading


class LoopbackCapture:
    """Every IPv4 TCP and UDP packet on the loopback interface while open: an
    AF_PACKET socket (root, as the test machines run), read in a thread."""

    def __init__(self) -> None:
        self.packets: list[tuple[str, int, int, bytes]] = []  # (proto, sport, dport, payload)
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self._sock.bind(("lo", 0))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LoopbackCapture:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self._sock.recv(65535)
            except TimeoutError:
                continue
            ip = frame[14:]  # loopback frames carry an Ethernet header
            if len(ip) < 20 or ip[0] >> 4 != 4:
                continue
            header, proto = (ip[0] & 0x0F) * 4, ip[9]
            if proto == 17:
                sport, dport = struct.unpack_from("!HH", ip, header)
                self.packets.append(("udp", sport, dport, ip[header + 8 :]))
            elif proto == 6:
                sport, dport = struct.unpack_from("!HH", ip, header)
                offset = (ip[header + 12] >> 4) * 4
                self.packets.append(("tcp", sport, dport, ip[header + offset :]))
