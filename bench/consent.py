"""µs per ICE consent check on a connected pair (RFC 7675), conclave/consent.py
against aioice's own path, on the same socket: answering a peer's check, sending
one of our own, and recognising its answer.

    .venv/bin/python bench/consent.py [--checks 5000] [--rounds 3]

Two aioice agents connect on loopback with the relay's candidate gathering
(conclave/ice.py). The controlled one is handed the controlling one's check
`checks` times through each path; it sends `checks` checks of its own through
each (aioice: `build_request`, signing, a `Transaction` started and its timer);
it is handed the answer to its check `checks` times (aioice: parsed, checked and
given to the waiting transaction). Best of `rounds`. Answering and sending
include the datagram sent (real UDP on loopback).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Callable

from aioice import stun
from aioice.ice import Connection, StunProtocol

from conclave import ice
from conclave.consent import ConsentProtocol, binding_success


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
        assert isinstance(protocol, ConsentProtocol)
        key = str(b.remote_password).encode()
        answer = binding_success(os.urandom(12), ("127.0.0.1", 9), key)

        def aioice_send() -> None:
            check = b.build_request(pair, nominate=False)
            transaction = stun.Transaction(check, addr, protocol, 0, integrity_key=key)
            check.add_message_integrity(key)
            protocol.transactions[check.transaction_id] = transaction
            transaction._Transaction__retry()  # type: ignore[attr-defined]
            transaction._Transaction__timeout_handle.cancel()  # type: ignore[attr-defined]
            del protocol.transactions[check.transaction_id]

        def aioice_recognise() -> None:
            check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
            transaction = stun.Transaction(check, addr, protocol, 0, integrity_key=key)
            protocol.transactions[answer[8:20]] = transaction
            StunProtocol.datagram_received(protocol, answer, addr)
            del protocol.transactions[answer[8:20]]

        def ours_recognise() -> None:
            protocol.consent_sent, protocol.consent_answered = answer[8:20], False
            protocol.datagram_received(answer, addr)

        ours_recognise()
        assert protocol.consent_answered
        paths: dict[str, dict[str, Callable[[], None]]] = {
            "answered": {
                "conclave/consent.py": lambda: protocol.datagram_received(data, addr),
                "aioice": lambda: StunProtocol.datagram_received(protocol, data, addr),
            },
            "sent": {
                "conclave/consent.py": lambda: protocol.send_consent_check(b, pair),
                "aioice": aioice_send,
            },
            "answer recognised": {
                "conclave/consent.py": ours_recognise,
                "aioice": aioice_recognise,
            },
        }
        for what, ways in paths.items():
            best = dict.fromkeys(ways, float("inf"))
            for _ in range(rounds):
                for name, run in ways.items():
                    start = time.perf_counter()
                    for _ in range(checks):
                        run()
                    best[name] = min(best[name], (time.perf_counter() - start) / checks * 1e6)
                    await asyncio.sleep(0.2)  # let the other agent read what was sent
            for name, us in best.items():
                print(f"{name:<22}{us:6.1f} µs per consent check {what}")
    finally:
        await asyncio.gather(a.close(), b.close())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(min(max(args.checks, 1), 100_000), min(max(args.rounds, 1), 20)))
