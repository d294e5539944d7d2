"""Provider health on both store backends, with an injected clock (no sleeping)."""

from __future__ import annotations

import pytest

from sentinel.observability.metrics import Metrics
from sentinel.routing.health import RETIRED_SECONDS, ProviderHealth
from sentinel.store import Store
from tests.support.clock import FakeClock
from tests.support.stores import FlakyStore

PAIR = ("openai", "gpt-4o-mini")
OTHER = ("anthropic", "claude-3-5-haiku-20241022")



def gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("sentinel_provider_health", {"provider": PAIR[0], "model": PAIR[1]})


async def available(health: ProviderHealth, pair: tuple[str, str]) -> bool:
    return (await health.available([pair]))[pair]


async def test_backoff_doubles_from_30_to_a_300_cap(store: Store) -> None:
    clock = FakeClock()
    health = ProviderHealth(store, Metrics(), clock=clock)
    assert await available(health, PAIR)  # never seen = healthy
    for n, expected in enumerate([30, 60, 120, 240, 300, 300, 300], start=1):
        assert await health.record_failure(*PAIR) == expected
        state = (await health.states([PAIR]))[PAIR]
        assert state is not None
        assert (state.failures, state.backoff, state.remaining(clock())) == (n, expected, expected)
        assert not await available(health, PAIR)
        clock.advance(expected - 1)
        assert not await available(health, PAIR)
        clock.advance(1)  # backoff elapsed: half-open, a probe may go through; the next failure doubles
        assert await available(health, PAIR)
    assert await available(health, OTHER)  # keyed by provider+model


async def test_a_long_outage_stays_at_the_cap(store: Store) -> None:
    """The in-memory twin of the Lua script computed 30 * 2 ** (n - 1) as a float: at the 1,025th
    failure in a row it overflowed, and every later failure of that model was a 500."""
    clock = FakeClock()
    health = ProviderHealth(store, Metrics(), clock=clock)
    backoffs = set()
    for _ in range(1100):
        backoff = await health.record_failure(*PAIR)
        assert backoff is not None
        backoffs.add(backoff)
        clock.advance(backoff)  # ran out: the next failure is the next of the run
    assert backoffs == {30, 60, 120, 240, 300}


async def test_failures_while_in_backoff_leave_it_as_it_is(store: Store) -> None:
    """Requests still go to a model in backoff (those under way when it began, a conversation kept on
    it, `/v1` calls): their failures are the same outage. Each doubled the backoff, so one user's
    burst of five failing requests (a provider 429 their own volume caused) took the model out of
    every tier for 300 s; it is one failure. Once the backoff ran out, the next failure doubles it."""
    clock = FakeClock()
    health = ProviderHealth(store, Metrics(), clock=clock)
    assert [await health.record_failure(*PAIR) for _ in range(5)] == [30, 30, 30, 30, 30]
    clock.advance(29)
    assert await health.record_failure(*PAIR) == 30
    state = (await health.states([PAIR]))[PAIR]
    assert state is not None and (state.failures, state.remaining(clock())) == (1, 1)
    clock.advance(1)
    assert await health.record_failure(*PAIR) == 60
    assert [await health.record_failure(*PAIR) for _ in range(3)] == [60, 60, 60]
    state = (await health.states([PAIR]))[PAIR]
    assert state is not None and (state.failures, state.remaining(clock())) == (2, 60)


async def test_success_resets_the_backoff(store: Store) -> None:
    clock = FakeClock()
    metrics = Metrics()
    health = ProviderHealth(store, metrics, clock=clock)
    for _ in range(3):
        await health.record_failure(*PAIR)
    assert gauge(metrics) == 0
    await health.record_success(*PAIR)
    assert (await health.states([PAIR]))[PAIR] is None
    assert await available(health, PAIR)
    assert gauge(metrics) == 1
    assert await health.record_failure(*PAIR) == 30  # starts over


async def test_store_down_means_assume_healthy() -> None:
    store = FlakyStore()
    store.fail()
    health = ProviderHealth(store, Metrics(), clock=FakeClock())
    assert await health.record_failure(*PAIR) is None
    assert await available(health, PAIR)
    await health.record_success(*PAIR)


@pytest.mark.parametrize("failures", [1, 4])
async def test_states_report_remaining_time(store: Store, failures: int) -> None:
    clock = FakeClock()
    health = ProviderHealth(store, clock=clock)
    for n in range(failures):
        backoff = await health.record_failure(*PAIR)
        if n < failures - 1:
            clock.advance(backoff or 0)  # ran out: the next failure doubles it
    clock.advance(10)
    state = (await health.states([PAIR, OTHER]))
    assert state[OTHER] is None
    assert state[PAIR] is not None and state[PAIR].remaining(clock()) == min(30 * 2 ** (failures - 1), 300) - 10


def test_which_provider_failures_count_toward_backoff_and_which_may_go_elsewhere() -> None:
    """An answer a client made unreadable (a forced tool call cut by its own max_tokens) says nothing
    about the provider; an answer the provider cut off while it was read does — but it was billed, so
    neither is sent again elsewhere; nor is a read timeout, nor a connection dropped after the request
    was sent (it may have been served); a refused connection is. A read timeout after the request was
    sent says the request was long (a client can make it so), not that the provider is down; a
    connect timeout does. A connection dropped after the request was sent, before or during its
    answer, counts only when it dropped at once: a proxy cuts a long request later (or unmeasured)."""
    from sentinel.errors import UpstreamConnectionError, UpstreamTimeout
    from sentinel.providers.errors import UnreadableAnswer, broken_off
    from sentinel.routing.failover import QUICK_DROP_SECONDS, is_provider_failure, may_retry

    unreadable = UnreadableAnswer("bad tool call", usage=None, provider="p")
    assert (is_provider_failure(unreadable), may_retry(unreadable)) == (False, False)
    for elapsed, counts in [(0.2, True), (QUICK_DROP_SECONDS, False), (60.0, False), (None, False)]:
        cut = broken_off("p", elapsed)
        assert (is_provider_failure(cut), may_retry(cut)) == (counts, False), elapsed
        dropped = UpstreamConnectionError("dropped", provider="p", sent=True, elapsed=elapsed)
        assert (is_provider_failure(dropped), may_retry(dropped)) == (counts, False), elapsed
    read_timeout = UpstreamTimeout("slow", provider="p")
    assert (is_provider_failure(read_timeout), may_retry(read_timeout)) == (False, False)
    connect_timeout = UpstreamTimeout("unreachable", provider="p", sent=False)
    assert (is_provider_failure(connect_timeout), may_retry(connect_timeout)) == (True, True)
    refused = UpstreamConnectionError("refused", provider="p", sent=False)
    assert (is_provider_failure(refused), may_retry(refused)) == (True, True)


async def test_a_providers_retry_after_is_the_backoff_between_30_and_300_s(store: Store) -> None:
    """A provider that answers 429 or 503 with a `Retry-After` says how long it wants: the backoff was
    30 s whatever it asked (120 s: the model was tried again, and failed, three more times; 5 s: the
    model stayed out 25 s longer than asked). It lasts what was asked, at least 30 s (the next request
    decides for everyone) and at most 300 s; its failure is counted as any other."""
    clock = FakeClock()
    health = ProviderHealth(store, Metrics(), clock=clock)
    for asked, expected in [(120.0, 120.0), (5.0, 30.0), (0.0, 30.0), (1000.0, 300.0), (45.5, 45.5)]:
        assert await health.record_failure(*PAIR, retry_after=asked) == expected
        state = (await health.states([PAIR]))[PAIR]
        assert state is not None and (state.backoff, state.remaining(clock())) == (expected, expected)
        clock.advance(expected)
        assert await available(health, PAIR)
    state = (await health.states([PAIR]))[PAIR]
    assert state is not None and state.failures == 5
    assert await health.record_failure(*PAIR) == 300  # none asked: the 6th failure in a row doubles
    await health.record_success(*PAIR)
    for junk in (float("nan"), -1.0):  # never from `parse_retry_after`; ignored all the same
        assert await health.record_failure(*PAIR, retry_after=junk) == 30
        clock.advance(30)
        await health.record_success(*PAIR)


async def test_a_retry_after_during_a_backoff_lengthens_it_only_to_what_it_asks(store: Store) -> None:
    """A failure while the backoff runs leaves it as it is (one burst is one failure), unless its
    answer asks for a later end: the backoff then ends there — no later (no 30 s floor added from
    now), and never earlier than it did."""
    clock = FakeClock()
    health = ProviderHealth(store, Metrics(), clock=clock)
    assert await health.record_failure(*PAIR) == 30
    clock.advance(10)  # 20 s left
    assert await health.record_failure(*PAIR, retry_after=5) == 30  # ends sooner than the backoff: as it is
    assert await health.record_failure(*PAIR) == 30
    state = (await health.states([PAIR]))[PAIR]
    assert state is not None and state.remaining(clock()) == 20
    assert await health.record_failure(*PAIR, retry_after=25) == 25  # ends 5 s later than it did
    state = (await health.states([PAIR]))[PAIR]
    assert state is not None and (state.failures, state.remaining(clock())) == (1, 25)
    assert await health.record_failure(*PAIR, retry_after=1000) == 300  # at most 300 s from now
    state = (await health.states([PAIR]))[PAIR]
    assert state is not None and (state.failures, state.remaining(clock())) == (1, 300)
    clock.advance(300)
    assert await health.record_failure(*PAIR) == 60  # ran out: the next failure is the second


UNREADABLE = [
    b"not json", b"", b"{", b"null", b"[]", b"42", b'"until_ts"', b"{}",
    b'{"failures": 2, "until_ts": 1000}',  # a field missing
    b'{"failures": "2", "until_ts": 1000, "backoff": 60}',  # not a number
    b'{"failures": 2, "until_ts": null, "backoff": 60}',
    b'{"failures": true, "until_ts": 1000, "backoff": 60}',
    b'{"failures": -1, "until_ts": 1000, "backoff": 60}',
    b'{"failures": 1.5, "until_ts": 1000, "backoff": 60}',
    b'{"failures": 2, "until_ts": 1e999, "backoff": 60}',  # infinite
    b'{"failures": 2, "until_ts": {"a": 1}, "backoff": 60}',
]


@pytest.mark.parametrize("raw", UNREADABLE, ids=range(len(UNREADABLE)))
async def test_an_unreadable_entry_counts_as_healthy_and_its_next_failure_is_a_first(store: Store, raw: bytes) -> None:
    """A health entry that is not the JSON object the scripts write (set by hand, or by an older
    version) made reading it, and recording a failure over it, raise: every request of its tier was
    a 500. It counts as healthy, as when the store is down, and the next failure replaces it."""
    clock = FakeClock(1000.0)
    health = ProviderHealth(store, Metrics(), clock=clock)
    await store.set(ProviderHealth.key(*PAIR), raw, 3600)
    assert (await health.states([PAIR, OTHER])) == {PAIR: None, OTHER: None}
    assert await available(health, PAIR)
    assert await health.record_failure(*PAIR) == 30  # a first failure
    state = (await health.states([PAIR]))[PAIR]
    assert state is not None and (state.failures, state.backoff, state.until) == (1, 30, 1030)
    await store.set(ProviderHealth.key(*PAIR), raw, 3600)
    assert await health.record_failure(*PAIR, retry_after=120) == 120  # with a Retry-After too
    state = (await health.states([PAIR]))[PAIR]
    assert state is not None and (state.failures, state.backoff, state.until) == (1, 120, 1120)


async def test_a_whole_number_written_as_a_float_is_still_read(store: Store) -> None:
    """What the Lua script's cjson writes (`1e+20`, `2.0`) is a readable entry, not junk."""
    clock = FakeClock(1000.0)
    health = ProviderHealth(store, Metrics(), clock=clock)
    await store.set(ProviderHealth.key(*PAIR), b'{"failures": 2.0, "until_ts": 1060.5, "backoff": 6e1}', 3600)
    state = (await health.states([PAIR]))[PAIR]
    assert state is not None and (state.failures, state.backoff, state.until) == (2, 60, 1060.5)
    assert await health.record_failure(*PAIR) == 60  # in backoff: left as it is
    clock.advance(61)
    assert await health.record_failure(*PAIR) == 120  # the third in a row


async def test_a_retired_mark_lasts_an_hour_and_is_no_failure(store: Store) -> None:
    health = ProviderHealth(store, Metrics(), clock=FakeClock())
    assert await health.standing([PAIR, OTHER]) == ({PAIR: None, OTHER: None}, set())
    await health.mark_retired(*PAIR)
    assert await health.standing([PAIR, OTHER]) == ({PAIR: None, OTHER: None}, {PAIR})  # no backoff, no trial
    ttl = await store.ttl(ProviderHealth.retired_key(*PAIR))
    assert ttl is not None and RETIRED_SECONDS - 60 < ttl <= RETIRED_SECONDS  # then drawn again
    await store.delete(ProviderHealth.retired_key(*PAIR))  # (as the TTL does)
    assert await health.standing([PAIR]) == ({PAIR: None}, set())
