"""Settlements the store refused, sent again once it takes them.

A reservation's reconciliation or give-back that the store refused before running it
(`StoreRefused`: Redis out of memory, a replica after a failover, the circuit open, no connection)
left the reservation's estimate counted until its window ended: a request that reserved 4,096
output tokens and used 10 kept the 4,096 for the rest of the day on a daily limit, and a user near
the limit was refused for it. Such a settlement is kept here and sent again in the background, with
backoff, until the store runs it (refused, it did not run: sent again it runs once). One whose
outcome is unknown (a timeout, a connection lost after sending) is not kept: run twice, a refund
would be given twice (README, What next).

Held in this process's memory (at most `limit`, the oldest dropped and logged beyond); what is
still held at shutdown is tried once more (`close`), and what is left then is logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from sentinel.backoff import Backoff
from sentinel.errors import StoreRefused, StoreUnavailable
from sentinel.observability.logging import Repeated

log = logging.getLogger("sentinel.meter")

Settle = Callable[[], Awaitable[None]]

RETRY = Backoff(base=0.5, cap=5.0)


class Unsettled:
    """Settlements to send again (`add`), one background task sending them while any is held."""

    def __init__(self, *, limit: int = 100_000, backoff: Backoff = RETRY) -> None:
        self.limit = limit
        self.backoff = backoff
        self._held: deque[Settle] = deque()
        self._task: asyncio.Task[None] | None = None
        self._repeated = Repeated(log)

    def __len__(self) -> int:
        return len(self._held)

    def add(self, settle: Settle) -> None:
        """Keep `settle` (which the store refused) and send it again once the store takes it."""
        if len(self._held) >= self.limit:
            self._held.popleft()
            self._repeated.log(logging.ERROR, "too many quota settlements refused by the store; the oldest "
                               "is dropped (its reservation stays counted until its window ends)")
        self._held.append(settle)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        retry = 0
        while self._held:
            retry += 1
            await asyncio.sleep(self.backoff.delay(retry))
            if await self._send():
                retry = 0

    async def _send(self) -> bool:
        """Send the held settlements in order until the store refuses one; whether it took them all."""
        while self._held:
            settle = self._held[0]
            try:
                await settle()
            except StoreRefused:
                return False
            except StoreUnavailable:
                # Sent, its outcome unknown: sent once more it might count twice.
                self._repeated.warning("a refused quota settlement was lost on its retry (store unavailable)")
            self._held.popleft()
        return True

    async def close(self) -> None:
        """Stop the background task and send what is held once more; log what is still left."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._held:
            await self._send()
        if self._held:
            log.error("quota settlements the store refused are left unsent at shutdown; their "
                      "reservations stay counted until their windows end", extra={"count": len(self._held)})
            self._held.clear()
