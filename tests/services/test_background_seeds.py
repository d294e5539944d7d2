"""The start-up seed and the store-loss check are background loops (`Periodic`): an attempt that
raises unexpectedly (a bug, not the outages each expects) is logged with its traceback and tried
again after the backoff, as the other loops' rounds are — it no longer ends the loop for good (the
seed then never done, a store's later loss never noticed, the exception raised again at shutdown)."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest

from sentinel.backoff import Backoff
from sentinel.domain.plans import Plan, parse_plan_spec
from sentinel.governance.applied_settings import AppliedSettings
from sentinel.governance.plans import PlanRepository
from sentinel.observability.metrics import Metrics
from sentinel.services.startup_seed import StartupSeed
from sentinel.services.store_loss import StoreLoss
from sentinel.services.window_seed import WindowSeeder
from sentinel.store.memory import MemoryStore
from tests.support.waiting import until

AT_ONCE = Backoff(base=0, cap=0)


class Seeder:
    """A `WindowSeeder` whose first seed raises (a bug), the later ones done."""

    def __init__(self) -> None:
        self.calls = 0

    async def _answer(self) -> str | None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug")
        return None

    async def seed(self, *_: Any) -> str | None:
        return await self._answer()

    async def seed_all(self, *_: Any) -> str | None:
        return await self._answer()


class Applied:
    """`AppliedSettings` in memory."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    async def get(self, name: str) -> str | None:
        return self.values.get(name)

    async def put(self, name: str, value: str) -> None:
        self.values[name] = value


def bugs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]


async def test_a_start_up_seed_that_raises_is_logged_and_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    seeder = Seeder()
    plan = parse_plan_spec("requests=5/1d")
    seed = StartupSeed(cast(AppliedSettings, Applied()), cast(WindowSeeder, seeder), plan, backoff=AT_ONCE)
    seed.start()
    await seed.wait(5.0)  # the first attempt (it raised) lets start-up go on
    await until(lambda: seed.done)
    await seed.stop()  # (before: raised the bug again, at shutdown)
    assert seeder.calls == 2 and len(bugs(caplog)) == 1


async def test_a_store_loss_seed_that_raises_is_logged_and_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    seeder = Seeder()
    default: Plan = parse_plan_spec("requests=5/1d")
    loss = StoreLoss(MemoryStore(), cast(WindowSeeder, seeder), cast(PlanRepository, object()), default, Metrics(),
                     interval=3600, backoff=AT_ONCE)
    await loss.begin()  # no marker: a seed is owed
    assert loss.pending
    loss.start()
    await until(lambda: not loss.pending)  # the attempt after the bug seeded
    await loss.stop()
    assert seeder.calls == 2 and len(bugs(caplog)) == 1
