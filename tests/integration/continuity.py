"""Watching media keep flowing while a meeting moves between relays.

`MediaWatch` samples, every 50 ms, how many video frames each client has decoded
from each other publisher (`video_frames`, cumulative across reconnects), and
notes when each of those counters last went up: the longest time without a new
frame is what a participant saw as frozen video. `timed` measures the other side
of continuity: how long one request took.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Iterable, Mapping
from typing import TypeVar

from client.sdk import Session
from tests.integration.relay_harness import video_frames

T = TypeVar("T")
Pair = tuple[str, str]  # (viewer, publisher), display names


class MediaWatch:
    """`async with MediaWatch(sessions)`: samples until the block ends.

    Every session watches every other one, or only those in `publishers` (the
    display names of the sessions that send video)."""

    def __init__(
        self,
        sessions: Mapping[str, Session],
        interval: float = 0.05,
        publishers: Iterable[str] | None = None,
    ) -> None:
        self.sessions = dict(sessions)
        self.interval = interval
        senders = self.sessions if publishers is None else list(publishers)
        self.pairs = [(v, p) for v in self.sessions for p in senders if v != p]
        self.rises: dict[Pair, list[float]] = {pair: [] for pair in self.pairs}
        self._last: dict[Pair, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MediaWatch:
        self._sample(time.monotonic())
        self._task = asyncio.create_task(self._run(), name="media-watch")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._sample(time.monotonic())

    def _sample(self, now: float) -> None:
        for viewer, publisher in self.pairs:
            count = video_frames(self.sessions[viewer], publisher)
            if count > self._last.get((viewer, publisher), -1):
                if (viewer, publisher) in self._last:
                    self.rises[(viewer, publisher)].append(now)
                self._last[(viewer, publisher)] = count

    def longest_gaps(self, since: float, until: float) -> dict[Pair, float]:
        """Per pair, the longest time in [since, until] without a new frame."""
        gaps = {}
        for pair, rises in self.rises.items():
            inside = [since, *(t for t in rises if since < t < until), until]
            gaps[pair] = max(b - a for a, b in itertools.pairwise(inside))
        return gaps

    def resumed_after(self, moment: float) -> dict[Pair, float | None]:
        """Per pair, how long after `moment` media came back after the longest
        outage that followed it (frames already on their way when it began do not
        count as coming back); None: no frame after `moment` at all."""
        resumed: dict[Pair, float | None] = {}
        for pair, rises in self.rises.items():
            after = [moment, *(t for t in rises if t > moment)]
            if len(after) == 1:
                resumed[pair] = None
                continue
            _, back = max(itertools.pairwise(after), key=lambda gap: gap[1] - gap[0])
            resumed[pair] = back - moment
        return resumed

    async def flowing(self, since: float, frames: int, timeout: float) -> None:
        """Until every pair has had `frames` new frames after `since`."""
        async with asyncio.timeout(timeout):
            while not all(
                sum(1 for t in rises if t > since) >= frames for rises in self.rises.values()
            ):
                await asyncio.sleep(self.interval)


async def timed(call: Awaitable[T]) -> tuple[T, float]:
    """What `call` returned, and how many seconds it took."""
    started = time.monotonic()
    result = await call
    return result, time.monotonic() - started
