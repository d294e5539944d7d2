"""`stop_within`: a background loop's task given a bounded time to end at shutdown."""

from __future__ import annotations

import asyncio

from sentinel.stopping import stop_within


async def test_a_task_that_ends_in_time_is_left_to_end() -> None:
    done = asyncio.Event()

    async def loop() -> None:
        await done.wait()

    task = asyncio.ensure_future(loop())
    asyncio.get_running_loop().call_soon(done.set)
    assert await stop_within(task, 5.0) is True
    assert task.done() and not task.cancelled()


async def test_a_task_still_waiting_at_the_deadline_is_cut_short_and_unwound() -> None:
    unwound: list[str] = []

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()  # a backend that never answers
        finally:
            unwound.append("finally ran")

    task = asyncio.ensure_future(stuck())
    assert await stop_within(task, 0.0) is False
    assert task.cancelled() and unwound == ["finally ran"]
