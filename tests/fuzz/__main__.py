"""`python -m tests.fuzz`: the packet fuzzer for longer than `make test` runs it.

Each layer (parsers and forwarders, a peer's handlers, sequence numbers) gets
`--inputs` inputs, split into jobs of `--chunk` with seeds SEED, SEED+1, ..., run on
every core. Without `--seed` a fresh one is drawn; a failure prints the command that
replays its job alone.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import uvloop

from tests.fuzz.packets import FuzzFailure, run_peer, run_pure, run_sequences

LAYERS = ("pure", "peer", "sequences")
SEQUENCE_LENGTH = 200


def run_job(layer: str, seed: int, inputs: int) -> tuple[str, int, dict[str, int], float]:
    started = time.perf_counter()
    if layer == "pure":
        counts = run_pure(seed, inputs)
    elif layer == "peer":
        counts = uvloop.run(run_peer(seed, inputs))
    else:
        counts = run_sequences(seed, max(1, inputs // SEQUENCE_LENGTH), SEQUENCE_LENGTH)
    return layer, seed, dict(counts), time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--inputs", type=int, default=1_000_000, help="per layer")
    parser.add_argument("--chunk", type=int, default=100_000, help="inputs per job")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--only", choices=LAYERS, action="append", help="repeatable")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    layers = args.only or list(LAYERS)
    jobs = [
        (layer, seed + i, min(args.chunk, args.inputs - start))
        for layer in layers
        for i, start in enumerate(range(0, args.inputs, args.chunk))
    ]
    print(f"fuzzing {', '.join(layers)}: {args.inputs} inputs each, seed {seed}", flush=True)
    totals: dict[str, Any] = {}
    failed = 0
    started = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        futures = [(job, pool.submit(run_job, *job)) for job in jobs]
        for (layer, job_seed, inputs), future in futures:
            try:
                _, _, counts, seconds = future.result()
            except FuzzFailure as exc:
                failed += 1
                print(f"FAILED {layer} seed {job_seed}:\n{exc}", file=sys.stderr)
                print(f"replay: python -m tests.fuzz --only {layer} --seed {job_seed} "
                      f"--inputs {inputs} --chunk {inputs}", file=sys.stderr)  # fmt: skip
                continue
            print(f"{layer} seed {job_seed}: {inputs} inputs in {seconds:.1f} s", flush=True)
            for key, value in counts.items():
                totals[f"{layer}.{key}"] = totals.get(f"{layer}.{key}", 0) + value
    for key in sorted(totals):
        print(f"  {key}: {totals[key]}")
    print(f"{len(jobs) - failed} passed, {failed} failed in {time.perf_counter() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
