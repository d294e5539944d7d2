"""Waiting on a condition with a deadline, instead of sleeping for a guessed time.

A test that must let something happen in another thread or process polls for the condition and
fails (the helpers return False) only when the deadline passes: the wait is as short as the
machine allows, and a slow machine makes it longer, never red. `until` is the same for tasks
in the test's own event loop, counted in loop turns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, *, every: float = 0.05) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` seconds passed (its last answer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = 20.0, every: float = 0.1) -> bool:
    """`wait_for` for async checks: poll `check` until it holds or `within` seconds passed."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(every)
    return await check()


async def reached(condition: Callable[[], bool], *, within: float = 15.0) -> bool:
    """`eventually` for a plain condition on what another thread changes (a fake server's counts):
    polled without blocking the test's event loop."""

    async def check() -> bool:
        return condition()

    return await eventually(check, within=within, every=0.02)


async def until(condition: Callable[[], bool], *, turns: int = 10_000) -> None:
    """Let the event loop's other tasks run until `condition` holds (for in-process fakes: counted
    loop turns, no clock); AssertionError when it never does."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")
