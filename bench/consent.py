"""µs to answer one ICE consent check on a connected pair: conclave/consent.py
against aioice's own path, on the same socket and the same check.

    .venv/bin/python bench/consent.py [--checks 5000] [--rounds 3]

Two aioice agents connect on loopback with the relay's candidate gathering
(conclave/ice.py), then the controlled one is handed the controlling one's
consent check `checks` times through each path; best of `rounds`. Both include
sending the answer (a real UDP datagram on loopback).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

from aioice.ice import Connection, StunProtocol

from conclave import ice


async def connected() -> tuple[Connection, Connection]:
    a = Connection(ice_controlling=True, components=1)
    b = Connection(ice_controlling=False, components=1)
    await asyncio.gather(a.gather_candidates(), b.gather_candidates())
    for x, y in ((a, b), (b, a)):
        for candidate in y.local_candidates:
            await x.add_remote_candidate(candidate)
        await x.add_remote_candidate(None)
        x.remote_username, x.remote_password = y.local_username, y.local_password
    await asyncio.gather(a.connect(), b.connect())
    return a, b


async def main(checks: int, rounds: int) -> None:
    ice.use_host_addresses(["127.0.0.1"])
    ice.use_port_range(None)  # installs the relay's gathering: ConsentProtocol sockets
    a, b = await connected()
    try:
        pair = b._nominated[1]
        protocol, addr = pair.protocol, pair.remote_addr
        request = a.build_request(a._nominated[1], nominate=False)
        request.add_message_integrity(b.local_password.encode("utf8"))
        data = bytes(request)
        paths: dict[str, Callable[[bytes, tuple[str, int]], None]] = {
            "conclave/consent.py": protocol.datagram_received,
            "aioice": lambda d, ad: StunProtocol.datagram_received(protocol, d, ad),
        }
        best = dict.fromkeys(paths, float("inf"))
        for _ in range(rounds):
            for name, receive in paths.items():
                start = time.perf_counter()
                for _ in range(checks):
                    receive(data, addr)
                best[name] = min(best[name], (time.perf_counter() - start) / checks * 1e6)
                await asyncio.sleep(0.2)  # let the other agent read the answers
        for name, us in best.items():
            print(f"{name:<22}{us:6.1f} µs per consent check answered")
    finally:
        await asyncio.gather(a.close(), b.close())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(min(max(args.checks, 1), 100_000), min(max(args.rounds, 1), 20)))
