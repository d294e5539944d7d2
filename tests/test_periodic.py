"""`Periodic`, the loop of every background task: rounds until stopped or done, the interval after a
round that went well, the backoff's delay after failures, none while more waits; stop wakes the wait
and bounds a round under way; a round that raises is logged and backed off, never the loop's end."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import pytest

from sentinel.backoff import Backoff
from sentinel.periodic import Next, Periodic
from tests.support.waiting import until

log = logging.getLogger("tests.periodic")


@dataclass(frozen=True)
class Asked(Backoff):
    """A backoff that waits nothing and notes each retry number it was asked the delay of."""

    asked: list[int] = field(default_factory=list)

    def delay(self, retry: int) -> float:
        self.asked.append(retry)
        return 0.0


class Script:
    """A round answering the next of `answers` (failures in a row, `Next`, or an exception raised),
    then `Next.DONE`."""

    def __init__(self, *answers: int | Next | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def __call__(self) -> int | Next:
        self.calls += 1
        answer = self.answers.pop(0) if self.answers else Next.DONE
        if isinstance(answer, Exception):
            raise answer
        return answer


def periodic(round: Script, *, interval: float = 0.0, backoff: Backoff | None = None,
             wait_first: bool = False) -> Periodic:
    return Periodic(round, interval=interval, backoff=backoff, log=log, crashed="round crashed",
                    wait_first=wait_first)


async def settle(loop: Periodic) -> None:
    """Let a loop run until it ended by itself (`Next.DONE`), then stop it."""
    await until(lambda: loop._task is not None and loop._task.done())
    assert await loop.stop(0.0) is True


async def test_failures_back_off_by_their_count_and_a_round_that_went_well_resets_it() -> None:
    backoff = Asked()
    round = Script(1, 2, 0, 1, Next.NOW, 0)
    loop = periodic(round, backoff=backoff)
    loop.start()
    await settle(loop)
    assert round.calls == 7
    assert backoff.asked == [1, 2, 1]  # 0 and NOW ask no delay (the interval, none); 1 after the 0: reset


async def test_stop_wakes_the_interval_wait_and_start_runs_the_loop_again() -> None:
    round = Script(0, 0, 0)
    loop = periodic(round, interval=3600)
    loop.start()
    await until(lambda: round.calls == 1)
    for _ in range(100):
        await asyncio.sleep(0)
    assert round.calls == 1  # waiting its interval
    assert await asyncio.wait_for(loop.stop(), 5) is True
    assert not loop.running and round.calls == 1
    loop.start()  # the stop event cleared: the loop runs again, its first round at once
    await until(lambda: round.calls == 2)
    assert await asyncio.wait_for(loop.stop(5.0), 5) is True


async def test_stop_wakes_a_backoff_wait() -> None:
    round = Script(1)
    loop = periodic(round, interval=0, backoff=Backoff(base=3600, cap=3600))
    loop.start()
    await until(lambda: round.calls == 1)
    for _ in range(100):
        await asyncio.sleep(0)
    assert round.calls == 1  # waiting the backoff (an interval of 0 would have run again by now)
    assert await asyncio.wait_for(loop.stop(), 5) is True
    assert round.calls == 1


async def test_wait_first_runs_the_first_round_an_interval_after_start() -> None:
    round = Script(0)
    loop = periodic(round, interval=3600, wait_first=True)
    loop.start()
    for _ in range(100):
        await asyncio.sleep(0)
    assert await asyncio.wait_for(loop.stop(), 5) is True
    assert round.calls == 0  # stopped during the first wait: no round


async def test_a_round_that_raises_is_logged_and_backed_off_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backoff = Asked()
    round = Script(RuntimeError("a bug"), RuntimeError("a bug"), 0, RuntimeError("a bug"))
    loop = periodic(round, backoff=backoff)
    loop.start()
    await settle(loop)
    assert round.calls == 5
    assert backoff.asked == [1, 2, 1]  # raising rounds in a row grow the delay; one that went well resets it
    crashed = [r for r in caplog.records if r.name == "tests.periodic"]
    assert len(crashed) == 3 and all(r.levelno == logging.ERROR and r.exc_info for r in crashed)


async def test_a_round_that_raises_without_a_backoff_waits_the_interval() -> None:
    round = Script(RuntimeError("a bug"), 0)
    loop = periodic(round, interval=3600)
    loop.start()
    await until(lambda: round.calls == 1)
    for _ in range(100):
        await asyncio.sleep(0)
    assert round.calls == 1  # the interval, not at once
    await asyncio.wait_for(loop.stop(), 5)


async def test_a_round_under_way_past_the_bound_is_cut_short_and_unwound() -> None:
    unwound: list[str] = []

    async def stuck() -> int:
        try:
            await asyncio.Event().wait()  # a backend that never answers
        finally:
            unwound.append("finally ran")
        return 0  # pragma: no cover - never answers

    loop = Periodic(stuck, interval=1.0, log=log, crashed="round crashed")
    loop.start()
    for _ in range(10):
        await asyncio.sleep(0)
    assert await asyncio.wait_for(loop.stop(0.01), 5) is False
    assert unwound == ["finally ran"] and not loop.running


async def test_a_round_under_way_is_let_end_without_a_bound() -> None:
    answer = asyncio.Event()
    ended: list[str] = []

    async def slow() -> int | Next:
        await answer.wait()
        ended.append("ended")
        return 0

    loop = Periodic(slow, interval=3600, log=log, crashed="round crashed")
    loop.start()
    for _ in range(10):
        await asyncio.sleep(0)
    stopping = asyncio.ensure_future(loop.stop())
    for _ in range(10):
        await asyncio.sleep(0)
    assert not stopping.done()  # the round under way is waited for
    answer.set()
    assert await asyncio.wait_for(stopping, 5) is True
    assert ended == ["ended"]
