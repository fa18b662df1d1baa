"""µs per SRTP protect and unprotect of a 1200-byte RTP packet: relay._native
(relay/native/srtp.c on the system libsrtp2) against pylibsrtp (what aiortc uses).

    .venv/bin/python bench/srtp_native.py [--packets 20000] [--rounds 5]

Prints figures only; the best of `rounds` runs of `packets` distinct packets each
(distinct sequence numbers, so unprotect never meets a replay).
"""

from __future__ import annotations

import argparse
import os
import struct
import time
from collections.abc import Callable

import pylibsrtp

from relay import _native as native
from relay.native_keys import aiortc_session

PROFILES = {
    "AES128_CM_SHA1_80": native.SRTP_AES128_CM_SHA1_80,
    "AEAD_AES_128_GCM": native.SRTP_AEAD_AES_128_GCM,
    "AEAD_AES_256_GCM": native.SRTP_AEAD_AES_256_GCM,
}


reference = aiortc_session


def packets(count: int, first_seq: int) -> list[bytes]:
    payload = os.urandom(1200 - 12)
    return [
        struct.pack("!BBHII", 0x80, 96, (first_seq + i) & 0xFFFF, i * 3000, 0x1234) + payload
        for i in range(count)
    ]


def timed(fn: Callable[[bytes], bytes], inputs: list[bytes]) -> tuple[float, list[bytes]]:
    start = time.perf_counter_ns()
    out = [fn(p) for p in inputs]
    return (time.perf_counter_ns() - start) / len(inputs) / 1000, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=20000, help="per round, at most 60000")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    count, rounds = min(max(args.packets, 1), 60000), min(max(args.rounds, 1), 20)
    print(
        f"{native.LIBSRTP_VERSION} (ours) vs pylibsrtp {pylibsrtp.__version__}; "
        f"1200-byte RTP, best of {rounds} x {count} packets, µs per packet"
    )
    print(
        f"{'profile':<20}{'ours protect':>14}{'pylibsrtp':>11}{'ours unprot.':>14}{'pylibsrtp':>11}"
    )
    for name, profile in PROFILES.items():
        key = os.urandom(native.key_and_salt_length(profile))
        best = [float("inf")] * 4
        our_tx, our_rx = native.Session(profile, key, True), native.Session(profile, key, False)
        ref_tx, ref_rx = reference(profile, key, True), reference(profile, key, False)
        for r in range(rounds):
            # Each round: fresh sequence numbers (sessions keep their state).
            plain = packets(count, r * count)
            t0, ours_out = timed(our_tx.protect, plain)
            t1, ref_out = timed(ref_tx.protect, plain)
            assert ours_out == ref_out, "protect differs from pylibsrtp"
            t2, back = timed(our_rx.unprotect, ref_out)
            t3, ref_back = timed(ref_rx.unprotect, ours_out)
            assert back == plain == ref_back
            best = [min(b, t) for b, t in zip(best, (t0, t1, t2, t3), strict=True)]
        print(f"{name:<20}{best[0]:>14.2f}{best[1]:>11.2f}{best[2]:>14.2f}{best[3]:>11.2f}")


if __name__ == "__main__":
    main()
