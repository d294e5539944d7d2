"""One home for the gateway's background loops: a round run again and again until stopped.

The usage deliverer, the roll-ups, the request statistics' writer, the plan-change finisher, the
start-up seed and the store-loss check each own their round (what it does, what it logs); `Periodic`
owns the loop around it. After each round it waits on a stop event: `interval` seconds after a round
that went well, the `backoff`'s delay after failures (how many in a row the round says), none when
the round says more is waiting (`Next.NOW`); a round saying `Next.DONE` ends the loop. `stop` wakes
the wait at once and gives a round under way a bounded time to end (`stopping.stop_within`); `start`
after `stop` runs the loop again.

A round that raises (a bug: each round handles the outages it expects) does not end the loop: it is
logged with its traceback (`crashed`, on the owner's logger) and the next round waits as after a
failure — the backoff's delay, growing while rounds keep raising, or `interval` without a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable

from sentinel.backoff import Backoff
from sentinel.stopping import stop_within


class Next(enum.Enum):
    """What a round says of the next one, instead of its failures in a row."""

    NOW = "now"  # more is waiting: the next round at once
    DONE = "done"  # nothing is left to do: the loop ends


# A round: its failures in a row (0: it went well), or `Next`.
Round = Callable[[], Awaitable["int | Next"]]


class Periodic:
    """Runs `round` until stopped or done (module docstring). `wait_first`: the first round comes an
    `interval` after `start`, not at once. `name` names the task; `log` and `crashed` say a round that
    raised."""

    def __init__(self, round: Round, *, interval: float, backoff: Backoff | None = None, log: logging.Logger,
                 crashed: str, name: str | None = None, wait_first: bool = False) -> None:
        self.round = round
        self.interval = interval
        self.backoff = backoff
        self.log = log
        self.crashed = crashed
        self.name = name
        self.wait_first = wait_first
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def running(self) -> bool:
        """Whether the loop was started and not stopped (it may have ended: `Next.DONE`)."""
        return self._task is not None

    def start(self) -> None:
        """Run the loop in a task of its own (once: a loop running is left as it is)."""
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self, within: float | None = None) -> bool:
        """Stop the loop: a wait under way ends at once, and no round starts after it. A round under
        way is given `within` seconds to end, then cut short (cancelled, and waited for to unwind);
        `within` None: as long as it takes; 0: cut short at once. Whether it ended by itself."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is None:
            return True
        if within is None:
            await task
            return True
        if within <= 0:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return not task.cancelled()
        return await stop_within(task, within)

    def delay(self, failures: int) -> float:
        """The wait before the next round after `failures` in a row (0: `interval`)."""
        return self.backoff.delay(failures) if failures and self.backoff is not None else self.interval

    async def _run(self) -> None:
        crashes = 0  # rounds in a row that raised
        wait = self.interval if self.wait_first else 0.0
        while True:
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), wait)
            if self._stopping.is_set():
                return
            try:
                after = await self.round()
            except Exception:  # noqa: BLE001 - the loop must outlive anything; logged, backed off
                crashes += 1
                self.log.exception(self.crashed)
                wait = self.delay(crashes)
                continue
            crashes = 0
            if after is Next.DONE:
                return
            wait = 0.0 if after is Next.NOW else self.delay(after)
