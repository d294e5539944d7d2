"""A process reuses the provider health it read for routing for READ_REUSE_SECONDS (`standing`), on
both store backends, with an injected clock: another replica's write is seen that much later at the
most, this process's own writes at once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from sentinel.observability.metrics import Metrics
from sentinel.routing.health import MGET, READ_REUSE_SECONDS, ProviderHealth
from sentinel.store import Script, Store
from tests.support.clock import FakeClock

PAIR = ("openai", "gpt-4o-mini")
OTHER = ("anthropic", "claude-3-5-haiku-20241022")
PAIRS = [PAIR, OTHER]


class CountingStore:
    """`store`, counting the health reads (`MGET` scripts) sent to it; `hold` keeps the next read
    waiting until it is set."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reads = 0
        self.hold: asyncio.Event | None = None
        self.read = asyncio.Event()  # set once a read was made

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if script is MGET:
            self.reads += 1
            read = await self.store.run(script, keys, args)  # read now, answered when released
            self.read.set()
            if self.hold is not None:
                await self.hold.wait()
            return read
        return await self.store.run(script, keys, args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def reusing(store: Store, clock: FakeClock) -> tuple[ProviderHealth, CountingStore]:
    counting = CountingStore(store)
    return ProviderHealth(counting, Metrics(), clock=clock, reuse_seconds=READ_REUSE_SECONDS), counting  # type: ignore[arg-type]


async def test_a_read_is_reused_for_a_second_then_read_again(store: Store) -> None:
    clock = FakeClock()
    health, counting = reusing(store, clock)
    other = ProviderHealth(store, Metrics(), clock=clock)  # another replica
    assert (await health.standing(PAIRS))[0] == {PAIR: None, OTHER: None}
    await other.record_failure(*PAIR)
    clock.advance(READ_REUSE_SECONDS - 0.001)
    states, _ = await health.standing(PAIRS)
    assert states[PAIR] is None and counting.reads == 1  # the other replica's failure: not seen yet
    clock.advance(0.001)
    states, _ = await health.standing(PAIRS)
    assert states[PAIR] is not None and states[PAIR].in_backoff(clock()) and counting.reads == 2


async def test_times_in_a_reused_read_are_read_against_the_clock_now(store: Store) -> None:
    """A backoff read just before it ends is over once it ends, whatever was read."""
    clock = FakeClock()
    health, counting = reusing(store, clock)
    await health.record_failure(*PAIR)
    clock.advance(30 - 0.5)
    states, _ = await health.standing(PAIRS)
    assert states[PAIR] is not None and states[PAIR].in_backoff(clock())
    clock.advance(0.5)
    states, _ = await health.standing(PAIRS)
    assert counting.reads == 1 and states[PAIR] is not None and states[PAIR].recovering(clock())


async def test_this_process_writes_are_seen_at_once(store: Store) -> None:
    clock = FakeClock()
    health, counting = reusing(store, clock)
    await health.standing(PAIRS)
    await health.record_failure(*PAIR)
    states, _ = await health.standing(PAIRS)
    assert states[PAIR] is not None and counting.reads == 2
    await health.record_success(*PAIR)
    assert (await health.standing(PAIRS))[0][PAIR] is None and counting.reads == 3
    await health.mark_retired(*OTHER)
    assert (await health.standing(PAIRS))[1] == {OTHER} and counting.reads == 4
    clock.advance(31)
    await health.record_failure(*PAIR)
    clock.advance(31)  # half-open: a trial claimed is seen as running at once
    assert await health.claim_trial(*PAIR, token="t1")
    states, _ = await health.standing(PAIRS)
    assert states[PAIR] is not None and states[PAIR].trial_running(clock())
    await health.release_trial(*PAIR, "t1")
    states, _ = await health.standing(PAIRS)
    assert states[PAIR] is not None and not states[PAIR].trial_running(clock())


async def test_a_read_begun_before_a_write_is_not_kept(store: Store) -> None:
    clock = FakeClock()
    health, counting = reusing(store, clock)
    counting.hold = asyncio.Event()
    reading = asyncio.create_task(health.standing(PAIRS))
    await counting.read.wait()
    await health.record_failure(*PAIR)  # lands after the read was made, before it is answered
    counting.hold.set()
    assert (await reading)[0][PAIR] is None  # what the store held when read
    states, _ = await health.standing(PAIRS)
    assert states[PAIR] is not None and counting.reads == 2


async def test_without_reuse_every_call_reads(store: Store) -> None:
    clock = FakeClock()
    counting = CountingStore(store)
    health = ProviderHealth(counting, Metrics(), clock=clock)  # type: ignore[arg-type]
    for _ in range(3):
        await health.standing(PAIRS)
    assert counting.reads == 3
