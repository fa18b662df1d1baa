"""Event-loop lag: how late a timer fires. Anything that blocks the loop (a slow
callback, a blocking call that should have gone to a thread) shows up here before
it shows up as lost packets or slow joins."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

INTERVAL_S = 0.25


async def watch_lag(observe: Callable[[float], None], interval: float = INTERVAL_S) -> None:
    """Forever: sleep `interval`, report how much later than that the loop woke us."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval)
        observe(max(0.0, loop.time() - start - interval))
