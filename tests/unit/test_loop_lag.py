"""Event-loop lag (conclave/loop_lag.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from conclave.loop_lag import watch_lag


async def test_a_blocked_loop_is_reported_late() -> None:
    seen: list[float] = []
    task = asyncio.create_task(watch_lag(seen.append, interval=0.05))
    await asyncio.sleep(0.12)
    quiet = list(seen)
    time.sleep(0.2)  # noqa: ASYNC251  (the point: a blocking call on the loop)
    await asyncio.sleep(0.1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert quiet and max(quiet) < 0.1
    assert max(seen) >= 0.15
