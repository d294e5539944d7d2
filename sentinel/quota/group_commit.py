"""Group commit: concurrent writers share one write per batch instead of one write each.

`await commit.submit(item)` returns once the item has been written (or raises what the write
raised). A write starts one turn of the event loop after it is scheduled, so items submitted in
that turn join it (a write that does not wait, such as SQLite's on the event loop, would otherwise
carry one item each); items that arrive while a write is running are written together by the next
one. Under load each write carries many items; an idle system writes an item a turn later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """Batches `submit`ted items into calls of `write(items)` (see the module docstring)."""

    def __init__(self, write: Callable[[list[T]], Awaitable[None]]) -> None:
        self._write = write
        self._queue: list[tuple[T, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> None:
        """Write `item` with whatever else is waiting. A cancelled caller cannot cut a write: the
        flusher task writes, the caller only waits on its future (cancelled with it, then skipped), so
        no shield is needed — one was an outer future and a turn of the loop more a request."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        while self._queue:
            await asyncio.sleep(0)  # one more turn of the loop: items submitted in it join this write
            batch, self._queue = self._queue, []
            try:
                await self._write([item for item, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every waiting caller, who sees it raised
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)
