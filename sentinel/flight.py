"""Single flight: concurrent callers asking for the same key share one run of the work.

The first caller starts the work as a task of its own; callers that arrive while it runs await the
same task and get its result or its exception. Each caller awaits it through a shield, so a caller
that is cancelled (shutdown, a timeout of its own) leaves alone: the work goes on for the others.
The key is dropped once the work ends — nothing is remembered (caching is the caller's business),
so the table holds only what runs now. One event loop, no locking.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """See the module docstring."""

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Task[V]] = {}

    def __contains__(self, key: K) -> bool:
        """Whether work for `key` runs now (a caller would join it)."""
        task = self._running.get(key)
        return task is not None and not task.done()

    def __len__(self) -> int:
        return len(self._running)

    async def run(self, key: K, work: Callable[[], Coroutine[Any, Any, V]]) -> V:
        """The outcome of the work for `key` under way, or of `work()` started now when none is."""
        task = self._running.get(key)
        if task is None or task.done():  # (done: ended, its key not dropped yet) a new run
            task = self._running[key] = asyncio.ensure_future(work())
            task.add_done_callback(lambda ended: self._ended(key, ended))
        return await asyncio.shield(task)

    def forget(self, key: K) -> None:
        """Let the next caller for `key` start work of its own: the run under way (if any) goes on for
        the callers that joined it, none joins it any more (what it reads may be out of date)."""
        self._running.pop(key, None)

    def _ended(self, key: K, task: asyncio.Task[V]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved: every caller may have left before it ended
