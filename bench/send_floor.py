"""The kernel floor of sending 1200-byte UDP datagrams on loopback.

Why: the native relay forwards each incoming packet to N subscribers, each behind
its own relay socket (one per participant, as aioice does), so it makes one
`sendmmsg` per subscriber socket carrying one message (connected to the
subscriber since pattern E was measured). This measures what the
kernel alone charges per datagram in that pattern and in the alternatives, to
tell how cheap a relay's per-delivered-packet cost could ever be:

  A  200 sender sockets, each to its own receiver, sendmmsg with 1 message (today)
  B  the same with sendto()
  C  1 sender socket, one sendmmsg carrying 200 messages, one per receiver
  D  1 sender socket, sendmmsg with 32 messages to one receiver per call
  E  as A, each sender socket connected to its receiver (no address per message;
     what the native engine does with a participant's own socket)
  F  as E, 4 datagrams per call in one UDP GSO message (UDP_SEGMENT): a video
     frame's packets to one subscriber, as the engine sends a run of one size
  G  as E with send() (no message header for the kernel to copy in)

The work is done by bench/send_floor.c, compiled here with `cc -O2` into a temp
dir. A forked child drains the 200 receiver sockets (epoll + recvmmsg) and the
sender keeps within a window of what it has read, so buffers do not overflow;
Udp RcvbufErrors (/proc/net/snmp, for the whole network namespace) is read
before and after each pattern. CPU time is each process's own getrusage over
the run, divided by datagrams sent (received, for the receiver). On loopback the
sender's system time also covers the receive path up to the socket queue
(the loopback device hands the packet on in the sender's context).

Run: .venv/bin/python bench/send_floor.py [--datagrams N] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().with_name("send_floor.c")
PATTERNS = {
    "A": "per-socket sendmmsg x1",
    "B": "per-socket sendto",
    "C": "shared sendmmsg x200",
    "D": "shared sendmmsg x32",
    "E": "connected sendmmsg x1",
    "F": "connected GSO x4",
    "G": "connected send",
}


@dataclass
class Result:
    pattern: str
    sent: int
    calls: int
    errors: int
    waits: int
    seconds: float
    user_us: float
    system_us: float
    received: int
    rx_user_us: float
    rx_system_us: float
    rcvbuf_errors: int = 0


def rcvbuf_errors() -> int:
    """Udp RcvbufErrors from /proc/net/snmp (header line, then values)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    header, values = [line for line in lines if line[0] == "Udp:"][:2]
    return int(values[header.index("RcvbufErrors")])


def run(binary: Path, pattern: str, datagrams: int, max_seconds: float) -> Result:
    before = rcvbuf_errors()
    out = subprocess.run(
        [str(binary), pattern, str(datagrams), str(max_seconds)],
        check=True,
        capture_output=True,
        text=True,
        timeout=max_seconds + 15,
    ).stdout
    result = Result(**json.loads(out))
    result.rcvbuf_errors = rcvbuf_errors() - before
    return result


def table(results: list[Result]) -> str:
    rows = [
        f"{'pattern':<26} {'datagrams':>9} {'calls':>8} {'user':>6} {'sys':>6} {'total':>6}"
        f" {'rx total':>8} {'drops':>6}",
        f"{'':<26} {'':>9} {'':>8} {'µs CPU per datagram':^20} {'µs/dgram':>8}",
    ]
    for r in results:
        n = max(r.sent, 1)
        rx = (r.rx_user_us + r.rx_system_us) / max(r.received, 1)
        rows.append(
            f"{r.pattern + ' ' + PATTERNS[r.pattern]:<26} {r.sent:>9} {r.calls:>8}"
            f" {r.user_us / n:>6.2f} {r.system_us / n:>6.2f}"
            f" {(r.user_us + r.system_us) / n:>6.2f} {rx:>8.2f} {r.rcvbuf_errors:>6}"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--datagrams", type=int, default=2_000_000, help="per pattern")
    parser.add_argument("--seconds", type=float, default=8.0, help="cap per pattern")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "send_floor"
        subprocess.run(["cc", "-O2", "-Wall", "-o", str(binary), str(SOURCE)], check=True)
        results = [run(binary, p, args.datagrams, args.seconds) for p in PATTERNS]
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(table(results))


if __name__ == "__main__":
    main()
