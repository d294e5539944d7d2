"""Stopping a background loop within a deadline (the usage deliverer's, the roll-up worker's).

At shutdown each loop gets a bounded time to finish the round it is in; one still waiting on its
backend then (a sink or a database that does not answer) is cut short, so whatever closes after it
gets its turn before the process is killed. What the cut round was doing stays where it was (a
batch in the outbox under its key, rows not rolled up yet) and is done after the next start.
"""

from __future__ import annotations

import asyncio


async def stop_within(task: asyncio.Future[None], seconds: float) -> bool:
    """Wait up to `seconds` for `task` to end; if it has not, cancel it and wait for it to unwind.
    Whether it ended by itself."""
    await asyncio.wait({task}, timeout=seconds)
    if task.done():
        return True
    task.cancel()
    await asyncio.wait({task})
    return False
