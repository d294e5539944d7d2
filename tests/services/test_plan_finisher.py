"""The gateway's finisher of unfinished plan changes: it keeps trying while changes are left (the
store or the database down), backing off, outlives a bug, and stops without waiting its backoff."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sentinel.backoff import Backoff
from sentinel.errors import GovernanceUnavailable
from sentinel.services.plan_finisher import PlanFinisher
from tests.support.waiting import until


class Finish:
    """`AdminService.finish_plan_changes` as a script: each call answers the next of `answers` (a
    count of changes left, or an exception raised), then 0."""

    def __init__(self, *answers: int | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def __call__(self) -> int:
        self.calls += 1
        answer = self.answers.pop(0) if self.answers else 0
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_changes_left_are_tried_again_until_finished_and_a_bug_does_not_end_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    finish = Finish(2, GovernanceUnavailable("database unavailable"), RuntimeError("a bug"), 1)
    finisher = PlanFinisher(finish, interval=3600, backoff=Backoff(base=0, cap=0))
    finisher.start()
    await until(lambda: finish.calls == 5)  # retried at once (no backoff) while some were left
    for _ in range(100):
        await asyncio.sleep(0)
    assert finish.calls == 5 and finisher.failures == 0  # all finished: the next look is an interval away
    await finisher.stop()
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)  # the bug, with its traceback


async def test_while_changes_are_left_the_finisher_backs_off_and_stopping_does_not_wait_it_out() -> None:
    finish = Finish(3)
    finisher = PlanFinisher(finish, interval=0, backoff=Backoff(base=3600, cap=3600))
    finisher.start()
    await until(lambda: finish.calls == 1 and finisher.failures == 1)
    for _ in range(100):
        await asyncio.sleep(0)
    assert finish.calls == 1  # waiting its backoff (an interval of 0 would have called again by now)
    await asyncio.wait_for(finisher.stop(), 5)
    assert finish.calls == 1
    assert await finisher.run_once() == 0 and finisher.failures == 0  # a round by hand after: all finished
