"""Settlements the store did not take, sent again until it does.

A reservation's reconciliation or give-back that failed — refused by the store before it ran
(`StoreRefused`: Redis out of memory, a replica after a failover, the circuit open, no connection)
or with its outcome unknown (a timeout, a connection lost after sending, redis-py's cluster retry)
— left the reservation's estimate counted until its window ended: a request that reserved 4,096
output tokens and used 10 kept the 4,096 for the rest of the day on a daily limit, and a user near
the limit was refused for it. Such a settlement is kept here and sent again in the background, with
backoff, until the store runs it. Sending it again is safe whatever happened to the first send: a
settlement runs only in the call that deletes its reservation's marker (`QuotaLimiter`), so one
that ran already changes nothing the second time (a refund is never given twice). The give-back
of a reservation whose own reply was lost (`QuotaLimiter.reserve`'s `on_lost`) and the settlement
of a batch's held reservation (`QuotaLimiter.settle_held`'s `again`) wait here alike.

One whose sends keep failing other than by a refusal (`MAX_UNKNOWN` of them: a command error, a
Redis that keeps timing out) is dropped and logged, so it cannot block those behind it forever; so
is one failing with an error that is no store's (a bug), at once, with its traceback.
Held in this process's memory (at most `limit`, the oldest dropped and logged beyond); what is
still held at shutdown is tried once more (`close`) within what is left of the shutdown deadline
(the usage records still to be flushed come after it), and what is left then is logged, as is a
failure met after it (a settlement still under way past the deadline): nothing outlives shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sentinel.backoff import Backoff
from sentinel.errors import StoreRefused, StoreUnavailable
from sentinel.observability.logging import Repeated

log = logging.getLogger("sentinel.meter")

Settle = Callable[[], Awaitable[None]]

RETRY = Backoff(base=0.5, cap=5.0)

# Sends of one settlement that may have failed for good (not refused) before it is dropped.
MAX_UNKNOWN = 30


@dataclass(slots=True)
class _Held:
    settle: Settle
    failed: int = 0  # its sends that failed other than refused


class Unsettled:
    """Settlements to send again (`add`), one background task sending them while any is held."""

    def __init__(self, *, limit: int = 100_000, backoff: Backoff = RETRY, max_unknown: int = MAX_UNKNOWN) -> None:
        self.limit = limit
        self.backoff = backoff
        self.max_unknown = max_unknown
        self._held: deque[_Held] = deque()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._repeated = Repeated(log)

    def __len__(self) -> int:
        return len(self._held)

    def add(self, settle: Settle) -> None:
        """Keep `settle` (which the store did not take, or may not have) and send it again until the
        store takes it; after `close`, only logged (no task outlives shutdown)."""
        if self._closed:
            self._repeated.log(logging.ERROR, "a quota settlement the store did not take at shutdown is left "
                               "unsent; its reservation stays counted until its window ends")
            return
        if len(self._held) >= self.limit:
            self._held.popleft()
            self._repeated.log(logging.ERROR, "too many quota settlements the store did not take; the oldest "
                               "is dropped (its reservation stays counted until its window ends)")
        self._held.append(_Held(settle))
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
        """Send the held settlements in order until the store fails one; whether it took them all."""
        while self._held:
            held = self._held[0]
            try:
                await held.settle()
            except StoreRefused:
                return False
            except StoreUnavailable:
                # Its outcome unknown again (or an error): sent once more, it still runs at most once.
                held.failed += 1
                if held.failed < self.max_unknown:
                    return False
                self._repeated.log(logging.ERROR, "a quota settlement kept failing and is dropped (its "
                                   "reservation stays counted until its window ends)")
            except Exception:  # noqa: BLE001 - a bug: raised on, it ended this task and stayed first in line
                log.exception("a quota settlement could not be sent (a bug) and is dropped; its reservation "
                              "stays counted until its window ends")
            self._done(held)
        return True

    def _done(self, held: _Held) -> None:
        """Take `held`, sent (or dropped), out of the queue — unless `add` dropped it meanwhile to make
        room (it was the oldest): the one first in line now is another, never sent."""
        if self._held and self._held[0] is held:
            self._held.popleft()

    async def close(self, within: float) -> None:
        """Stop the background task and send what is held once more, for at most `within` seconds;
        log what is still left. Nothing is kept after (`add`)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._held:
            # One by one, each bounded by the store's timeout and breaker — but 100,000 of them
            # (a Redis back at shutdown) took minutes, the outbox's flush waiting behind them.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(within, 0.0)):
                    await self._send()
        if self._held:
            log.error("quota settlements the store did not take are left unsent at shutdown; their "
                      "reservations stay counted until their windows end", extra={"count": len(self._held)})
            self._held.clear()
