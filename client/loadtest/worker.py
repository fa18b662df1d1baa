"""The worker process protocol: participants live in worker processes, so one
machine can drive hundreds of them. A worker reads one JSON request per line on
stdin and writes one JSON reply per line on stdout (`serve_lines`); `Worker` is the
orchestrator's handle on one. `serve_worker` is reusable: bench/side_by_side.py
registers participants of other servers (Janus, a naive aiortc relay) with the same
counters, and bench/counting_subscriber.py serves its own requests with
`serve_lines`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import uvloop

from client.errors import ConclaveError
from client.loadtest.measure import process_cpu
from client.loadtest.participants import FACTORIES, Factory, Participant, load_http
from conclave.ice import addresses_from_env, use_host_addresses

JOIN_TIMEOUT_S = 20.0
BATCH = 10  # participants one worker joins at once

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class WorkerState:
    """The participants of one worker process, by the orchestrator's ids."""

    def __init__(self, factories: dict[str, Factory]) -> None:
        self.factories = factories
        self.participants: dict[str, Participant] = {}
        self.http: aiohttp.ClientSession | None = None

    async def join(self, entries: list[dict[str, Any]], timeout: float) -> list[str]:
        """Join concurrently; returns one error text per failed entry ("" if it joined)."""
        if self.http is None:
            self.http = load_http()
        made = [self.factories[str(e.get("server", "conclave"))](self.http, e) for e in entries]
        results = await asyncio.gather(*(p.start(timeout) for p in made), return_exceptions=True)
        errors = []
        for entry, participant, result in zip(entries, made, results, strict=True):
            if isinstance(result, BaseException):
                errors.append(f"{type(result).__name__}: {result} {participant.errors}".strip())
                await participant.leave()
            else:
                self.participants[str(entry["id"])] = participant
                errors.append("")
        return errors

    def stats(self) -> dict[str, Any]:
        user, system = process_cpu(os.getpid())
        return {
            "cpu": [user, system],
            "participants": {
                pid: {"streams": p.counter.rows(), "other": p.counter.other, "errors": p.errors}
                for pid, p in self.participants.items()
            },
        }

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """{"op": "join", "entries": [...], "timeout": s}, {"op": "stats"},
        {"op": "leave_all"}."""
        op = request.get("op")
        if op == "join":
            timeout = float(request.get("timeout", JOIN_TIMEOUT_S))
            return {"errors": await self.join(request["entries"], timeout)}
        if op == "stats":
            return self.stats()
        if op == "leave_all":
            await self.leave_all()
            return {}
        raise ValueError(f"unknown op {op!r}")

    async def leave_all(self) -> None:
        leaving, self.participants = list(self.participants.values()), {}
        await asyncio.gather(*(p.leave() for p in leaving), return_exceptions=True)

    async def close(self) -> None:
        await self.leave_all()
        if self.http is not None:
            await self.http.close()


async def serve_lines(handle: Handler) -> None:
    """One JSON request per line on stdin, one JSON reply per line on stdout: what
    `handle` returns with "ok": true, or {"ok": false, "error": text} if it raised.
    Returns at end of input."""
    use_host_addresses(addresses_from_env())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        try:
            reply = {**await handle(json.loads(line)), "ok": True}
        except Exception as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


async def serve_worker(factories: dict[str, Factory] | None = None) -> None:
    """`WorkerState.handle`'s requests until end of input; then leaves everyone."""
    state = WorkerState(factories or FACTORIES)
    try:
        await serve_lines(state.handle)
    finally:
        await state.close()


def worker_main(factories: dict[str, Factory] | None = None) -> None:
    """Entry point of a worker process (quiet logs: stdout is the protocol)."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for name in ("aiortc", "aioice"):
        logging.getLogger(name).setLevel(logging.ERROR)
    uvloop.run(serve_worker(factories))


class Worker:
    """A worker process driven over its stdin/stdout."""

    def __init__(self, process: asyncio.subprocess.Process, name: str = "load worker") -> None:
        self.process = process
        self.name = name  # in error messages
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, argv: Sequence[str], env: dict[str, str] | None = None) -> Worker:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            limit=1 << 24,
        )
        return cls(process)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def call(self, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        process = self.process
        assert process.stdin is not None and process.stdout is not None
        async with self._lock:
            process.stdin.write(json.dumps(request).encode() + b"\n")
            await process.stdin.drain()
            line = await asyncio.wait_for(process.stdout.readline(), timeout)
        if not line:
            raise ConclaveError(f"a {self.name} exited (code {process.returncode})")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise ConclaveError(f"{self.name}: {reply.get('error')}")
        return reply

    async def close(self) -> None:
        """End of input: the worker leaves everyone and exits (killed if it hangs)."""
        process = self.process
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        try:
            async with asyncio.timeout(20.0):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


def worker_argv() -> list[str]:
    return [sys.executable, "-m", "client.loadtest", "_worker"]


async def wait_receiving(
    workers: list[Worker], wanted: dict[str, int], timeout: float
) -> tuple[float, list[str]]:
    """Until every participant receives packets on as many SSRCs as it should;
    returns (seconds waited, ids still short at the deadline)."""
    started = time.monotonic()
    short: list[str] = list(wanted)
    while time.monotonic() - started < timeout:
        replies = await asyncio.gather(*(w.call({"op": "stats"}) for w in workers))
        seen: dict[str, int] = {}
        for reply in replies:
            for pid, p in reply["participants"].items():
                seen[pid] = sum(1 for row in p["streams"].values() if row[1] > 0)
        short = [pid for pid, n in wanted.items() if seen.get(pid, 0) < n]
        if not short:
            break
        await asyncio.sleep(0.5)
    return time.monotonic() - started, short


async def join_all(
    workers: list[Worker],
    batches: list[tuple[int, Callable[[], Awaitable[list[dict[str, Any]]]]]],
    timeout: float,
) -> list[str]:
    """Run (worker index, make entries) batches, the workers in parallel, each
    worker's batches in turn; the entries are made right before their batch (grants
    are short-lived). Returns the failures' texts."""
    queues: dict[int, list[Callable[[], Awaitable[list[dict[str, Any]]]]]] = {}
    for index, make in batches:
        queues.setdefault(index, []).append(make)
    failures: list[str] = []

    async def run(index: int) -> None:
        for make in queues[index]:
            entries = await make()
            reply = await workers[index].call(
                {"op": "join", "entries": entries, "timeout": timeout}, timeout + 30
            )
            failures.extend(e for e in reply["errors"] if e)

    await asyncio.gather(*(run(i) for i in queues))
    return failures
