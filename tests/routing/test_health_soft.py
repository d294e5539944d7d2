"""Soft backoffs (started by client-causable failures alone) on both store backends: the flag the
failure script writes, how hard failures replace it, and the trial scripts carrying it (the Lua and
its Python twin alike), with an injected clock (no sleeping)."""

from __future__ import annotations

import orjson
import pytest

from sentinel.observability.metrics import Metrics
from sentinel.routing.health import ProviderHealth
from sentinel.store import Store
from tests.support.clock import FakeClock

PAIR = ("openai", "gpt-4o-mini")


async def soft_backoff(health: ProviderHealth, retry_after: float | None = None) -> float | None:
    """Two users' client-causable failures of PAIR (the second one counts)."""
    assert await health.record_failure(*PAIR, retry_after, caller="alice") is None  # remembered only
    return await health.record_failure(*PAIR, retry_after, caller="bob")


async def entry(store: Store) -> dict[str, object]:
    raw = await store.get(ProviderHealth.key(*PAIR))
    assert raw is not None
    data = orjson.loads(raw)
    assert isinstance(data, dict)
    return data


async def soft(health: ProviderHealth) -> bool:
    state = (await health.states([PAIR]))[PAIR]
    assert state is not None
    return state.soft


async def test_a_backoff_client_causable_failures_alone_started_is_soft(store: Store) -> None:
    """Two keys of one person meet the witness rule alone: the backoff they start is marked soft,
    so that routing may steer around it but never refuses a request because of it."""
    clock = FakeClock(1000.0)
    health = ProviderHealth(store, Metrics(), clock=clock)
    assert await soft_backoff(health) == 30
    assert await soft(health)
    assert (await entry(store))["soft"] is True
    assert await soft_backoff(health) == 30  # other soft ones during it: still soft
    assert await soft(health)
    clock.advance(30)  # ran out: the next soft failures double it, still soft
    assert await soft_backoff(health) == 60
    state = (await health.states([PAIR]))[PAIR]
    assert state is not None and (state.failures, state.backoff, state.soft) == (2, 60, True)
    clock.advance(60)
    assert await health.record_failure(*PAIR) == 120  # a hard one after it ran out: the next, hard
    assert not await soft(health)
    assert "soft" not in await entry(store)


async def test_a_hard_failure_during_a_soft_backoff_makes_it_hard_and_keeps_its_end(store: Store) -> None:
    clock = FakeClock(1000.0)
    health = ProviderHealth(store, Metrics(), clock=clock)
    await soft_backoff(health)
    clock.advance(10)
    assert await health.record_failure(*PAIR) == 30  # a 503, say: the provider's own state
    state = (await health.states([PAIR]))[PAIR]
    assert state is not None and (state.failures, state.backoff, state.until, state.soft) == (1, 30, 1030, False)
    assert "soft" not in await entry(store)
    ttl = await store.ttl(ProviderHealth.key(*PAIR))
    assert ttl is not None and ttl > 3600  # its TTL kept


async def test_a_hard_retry_after_during_a_soft_backoff_lengthens_it_hard(store: Store) -> None:
    clock = FakeClock(1000.0)
    health = ProviderHealth(store, Metrics(), clock=clock)
    await soft_backoff(health)
    assert await health.record_failure(*PAIR, retry_after=120) == 120
    state = (await health.states([PAIR]))[PAIR]
    assert state is not None and (state.until, state.soft) == (1120, False)


async def test_a_soft_retry_after_during_a_soft_backoff_lengthens_it_soft(store: Store) -> None:
    clock = FakeClock(1000.0)
    health = ProviderHealth(store, Metrics(), clock=clock)
    await soft_backoff(health)
    assert await soft_backoff(health, retry_after=120) == 120
    state = (await health.states([PAIR]))[PAIR]
    assert state is not None and (state.until, state.soft) == (1120, True)


@pytest.mark.parametrize("retry_after", [None, 120])
async def test_a_soft_failure_during_a_hard_backoff_leaves_it_hard(store: Store, retry_after: float | None) -> None:
    clock = FakeClock(1000.0)
    health = ProviderHealth(store, Metrics(), clock=clock)
    assert await health.record_failure(*PAIR) == 30
    assert await soft_backoff(health, retry_after) == (retry_after or 30)
    assert not await soft(health)
    assert "soft" not in await entry(store)


async def test_the_trial_scripts_keep_the_flag(store: Store) -> None:
    """Claiming a half-open trial and releasing it rewrite the entry: the flag goes with it (else
    the next backoff decision would read a soft one as hard)."""
    clock = FakeClock(1000.0)
    health = ProviderHealth(store, Metrics(), clock=clock)
    await soft_backoff(health)
    clock.advance(30)  # half-open
    assert await health.claim_trial(*PAIR, "trial-1")
    claimed = await entry(store)
    assert (claimed["trial_id"], claimed["soft"]) == ("trial-1", True)
    assert await soft(health)
    await health.release_trial(*PAIR, "trial-1")
    released = await entry(store)
    assert "trial_id" not in released and released["soft"] is True
    assert await soft(health)
    # A hard entry's trial stays hard.
    await health.record_failure(*PAIR)  # the next backoff, hard
    clock.advance(60)
    assert await health.claim_trial(*PAIR, "trial-2")
    assert "soft" not in await entry(store)
    await health.release_trial(*PAIR, "trial-2")
    assert not await soft(health)


@pytest.mark.parametrize("flag", [None, "true", 1, False])
async def test_an_entry_without_a_true_soft_flag_is_hard(store: Store, flag: object) -> None:
    """An entry written by the version before soft backoffs (no `soft`), or with a flag that is not
    JSON's `true`, is a hard backoff, as it was then: a soft failure leaves it hard."""
    clock = FakeClock(1000.0)
    health = ProviderHealth(store, Metrics(), clock=clock)
    old: dict[str, object] = {"failures": 1, "until_ts": 1030, "backoff": 30}
    if flag is not None:
        old["soft"] = flag
    await store.set(ProviderHealth.key(*PAIR), orjson.dumps(old), 3600)
    assert not await soft(health)
    assert await soft_backoff(health) == 30
    assert not await soft(health)
    clock.advance(30)
    assert await health.claim_trial(*PAIR, "trial-1")
    assert not await soft(health)
