"""Half-open provider health: once a backoff runs out, one request at a time is the pair's trial.

On both store backends (the memory store's Python twin and the Lua script on a real Redis), with an
injected clock. Before, the first request after the backoff and every one after it went to the
recovering pair at once: the next request decided for everyone.
"""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest

from sentinel.domain.catalogue import ModelTarget, Prices
from sentinel.domain.identity import Identity
from sentinel.domain.policies import SessionFailover
from sentinel.domain.tiers import TierModelEntry
from sentinel.errors import InvalidRequest, ServiceUnavailable
from sentinel.native import ChatRequest, parse_chat_request
from sentinel.observability.metrics import Metrics
from sentinel.routing.health import TRIAL_SECONDS, ProviderHealth
from sentinel.routing.model_routes import ModelRoutes
from sentinel.routing.router import RouteChoice, TierRouter
from sentinel.routing.selection import WeightedSelector
from sentinel.routing.sessions import Session, SessionStore
from sentinel.routing.tiers import StaticTiers
from sentinel.store import Store
from tests.routing.helpers import AN_HAIKU, OA_4O, OA_MINI
from tests.support.clock import FakeClock
from tests.support.stores import FlakyStore

ALICE = Identity(external_id="alice", user_id="u1")
PAIR = OA_MINI


async def lapse(health: ProviderHealth, clock: FakeClock, pair: tuple[str, str] = PAIR) -> None:
    """A first failure of `pair`, then its 30 s backoff runs out: half-open."""
    assert await health.record_failure(*pair) == 30
    clock.advance(30)


# --- ProviderHealth ------------------------------------------------------------------------------
async def test_one_trial_at_a_time_once_the_backoff_ran_out(store: Store) -> None:
    clock = FakeClock()
    health = ProviderHealth(store, Metrics(), clock=clock)
    assert await health.claim_trial(*PAIR)  # healthy: nothing to claim, go
    assert await health.record_failure(*PAIR) == 30
    assert not await health.claim_trial(*PAIR)  # in backoff
    clock.advance(30)
    state = (await health.states([PAIR]))[PAIR]
    assert state is not None and state.recovering(clock()) and not state.trial_running(clock())
    assert await health.claim_trial(*PAIR)  # this request is the trial
    assert [await health.claim_trial(*PAIR) for _ in range(3)] == [False, False, False]
    state = (await health.states([PAIR]))[PAIR]
    assert state is not None and state.trial_until == clock() + TRIAL_SECONDS and state.trial_running(clock())
    assert (state.failures, state.backoff) == (1, 30)  # the backoff's record is as it was
    # The trial never reports (its process died): the claim lapses after TRIAL_SECONDS, not before.
    clock.advance(TRIAL_SECONDS - 1)
    assert not await health.claim_trial(*PAIR)
    clock.advance(1)
    assert await health.claim_trial(*PAIR)
    assert not await health.claim_trial(*PAIR)
    assert await health.claim_trial(*OA_4O)  # keyed by provider+model


async def test_a_trials_success_clears_the_pair_and_its_failure_doubles_the_backoff(store: Store) -> None:
    clock = FakeClock()
    health = ProviderHealth(store, Metrics(), clock=clock)
    await lapse(health, clock)
    assert await health.claim_trial(*PAIR)
    await health.record_success(*PAIR)
    assert (await health.states([PAIR]))[PAIR] is None
    assert [await health.claim_trial(*PAIR) for _ in range(3)] == [True, True, True]  # healthy: everyone
    await lapse(health, clock)
    assert await health.claim_trial(*PAIR)
    assert await health.record_failure(*PAIR) == 60  # the trial failed: the next backoff, doubled
    state = (await health.states([PAIR]))[PAIR]
    assert state is not None and (state.failures, state.trial_until) == (2, None)  # the claim is gone
    assert not await health.claim_trial(*PAIR)
    clock.advance(60)
    assert await health.claim_trial(*PAIR)  # a new trial at once, not held by the failed one's claim


async def test_many_concurrent_claims_give_one_trial(store: Store) -> None:
    clock = FakeClock()
    health = ProviderHealth(store, Metrics(), clock=clock)
    await lapse(health, clock)
    won = await asyncio.gather(*(health.claim_trial(*PAIR) for _ in range(20)))
    assert sorted(won) == [False] * 19 + [True]


async def test_a_claim_keeps_the_entrys_lifetime(store: Store) -> None:
    clock = FakeClock()
    health = ProviderHealth(store, Metrics(), clock=clock)
    await lapse(health, clock)
    key = ProviderHealth.key(*PAIR)
    before = await store.ttl(key)
    assert await health.claim_trial(*PAIR)
    after = await store.ttl(key)
    assert before is not None and after is not None and 0 < after <= before


async def test_the_stored_claim_is_the_same_on_both_backends(store: Store) -> None:
    """The Lua script and its Python twin write the same entry."""
    clock = FakeClock(1000.0)
    health = ProviderHealth(store, Metrics(), clock=clock)
    await lapse(health, clock)
    clock.advance(5)
    assert await health.claim_trial(*PAIR, "token-1")
    raw = await store.get(ProviderHealth.key(*PAIR))
    assert raw is not None
    assert orjson.loads(raw) == {"failures": 1, "until_ts": 1030, "backoff": 30, "trial_until": 1035 + TRIAL_SECONDS,
                                 "trial_id": "token-1"}
    await health.release_trial(*PAIR, "token-1")
    raw = await store.get(ProviderHealth.key(*PAIR))
    assert raw is not None and orjson.loads(raw) == {"failures": 1, "until_ts": 1030, "backoff": 30}


async def test_a_trial_with_no_verdict_is_released_by_its_own_token_only(store: Store) -> None:
    """A trial whose request ended with neither a success nor a provider failure (refused before it
    was sent, sent elsewhere, a client's 4xx) lets the next request be a trial at once; a release
    that comes after its claim lapsed and another took it leaves the other's claim."""
    clock = FakeClock()
    health = ProviderHealth(store, Metrics(), clock=clock)
    await lapse(health, clock)
    assert await health.claim_trial(*PAIR, "first")
    await health.release_trial(*PAIR, "someone-else")
    assert not await health.claim_trial(*PAIR, "second")  # still the first's
    await health.release_trial(*PAIR, "first")
    assert await health.claim_trial(*PAIR, "second")  # at once
    clock.advance(TRIAL_SECONDS)
    assert await health.claim_trial(*PAIR, "third")  # the second's lapsed
    await health.release_trial(*PAIR, "second")  # late: leaves the third's claim
    assert not await health.claim_trial(*PAIR, "fourth")
    await health.record_success(*PAIR)
    await health.release_trial(*PAIR, "third")  # reported: nothing to release, nothing written
    assert await store.get(ProviderHealth.key(*PAIR)) is None
    await lapse(health, clock)
    assert await health.claim_trial(*PAIR, "fifth")
    assert await health.record_failure(*PAIR) == 60
    await health.release_trial(*PAIR, "fifth")  # failed: the new backoff stays
    state = (await health.states([PAIR]))[PAIR]
    assert state is not None and (state.failures, state.remaining(clock()), state.trial_id) == (2, 60, None)


@pytest.mark.parametrize("trial", [b'"soon"', b"null", b"true", b"[1]", b'{"a": 1}'])
async def test_a_trial_claim_that_cannot_be_read_is_no_claim(store: Store, trial: bytes) -> None:
    clock = FakeClock(1000.0)
    health = ProviderHealth(store, Metrics(), clock=clock)
    raw = b'{"failures": 1, "until_ts": 990, "backoff": 30, "trial_until": ' + trial + b"}"
    await store.set(ProviderHealth.key(*PAIR), raw, 3600)
    state = (await health.states([PAIR]))[PAIR]
    assert state is not None and (state.failures, state.trial_until) == (1, None)
    assert await health.claim_trial(*PAIR)
    assert not await health.claim_trial(*PAIR)


@pytest.mark.parametrize("raw", [b"not json", b'{"failures": 1, "until_ts": 990, "backoff": 30, "trial_until": 1e999}'])
async def test_an_unreadable_entry_is_healthy_and_left_as_it_is(store: Store, raw: bytes) -> None:
    """(An infinite number is JSON orjson refuses: the Lua twin reads the entry as unreadable too.)"""
    health = ProviderHealth(store, Metrics(), clock=FakeClock(1000.0))
    await store.set(ProviderHealth.key(*PAIR), raw, 3600)
    assert (await health.states([PAIR]))[PAIR] is None
    assert [await health.claim_trial(*PAIR) for _ in range(2)] == [True, True]
    assert await store.get(ProviderHealth.key(*PAIR)) == raw


async def test_store_down_means_every_request_may_go() -> None:
    store = FlakyStore()
    clock = FakeClock()
    health = ProviderHealth(store, Metrics(), clock=clock)
    await lapse(health, clock)
    store.fail()
    assert [await health.claim_trial(*PAIR) for _ in range(2)] == [True, True]


# --- TierRouter ----------------------------------------------------------------------------------
def make_router(store: Store, tiers: dict[str, list[tuple[str, str]]], *,
                failover: SessionFailover = SessionFailover.keep) -> tuple[TierRouter, FakeClock]:
    clock = FakeClock()
    metrics = Metrics()
    table = StaticTiers({
        t: [TierModelEntry(provider=p, model=m, relative_cost=1) for p, m in tiers.get(t, [])]
        for t in ("simple", "moderate", "complex")
    })
    router = TierRouter(
        tiers=table, providers=["openai", "anthropic"], health=ProviderHealth(store, metrics, clock=clock),
        sessions=SessionStore(store, ttl=1000, clock=clock), selector=WeightedSelector(random.Random(0)),
        metrics=metrics, failover=failover, clock=clock,
    )
    return router, clock


def request(conv: str | None = None) -> ChatRequest:
    body: dict[str, object] = {"tier": "simple", "messages": [{"role": "user", "content": "hi"}]}
    if conv is not None:
        body["conversation_id"] = conv
    return parse_chat_request(body)


async def decide(router: TierRouter, conv: str | None = None) -> RouteChoice:
    decision = await router.decide(ALICE, request(conv))
    await router.claim(ALICE, decision)
    return decision


def pair(decision: RouteChoice) -> tuple[str, str]:
    return decision.provider, decision.model


async def test_the_tier_sends_one_trial_and_the_rest_to_the_healthy_candidate(store: Store) -> None:
    router, clock = make_router(store, {"simple": [OA_MINI, AN_HAIKU]})
    await lapse(router.health, clock, OA_MINI)
    trial = await decide(router)
    assert pair(trial) == OA_MINI and trial.was_unhealthy
    others = [await decide(router) for _ in range(10)]  # while the trial is under way
    assert {pair(d) for d in others} == {AN_HAIKU}
    await router.report(trial, ok=True)  # it answered: healthy again
    assert (await router.health.states([OA_MINI]))[OA_MINI] is None
    after = {pair(await decide(router)) for _ in range(30)}
    assert after == {OA_MINI, AN_HAIKU}


async def test_a_failed_trial_starts_the_next_backoff(store: Store) -> None:
    router, clock = make_router(store, {"simple": [OA_MINI, AN_HAIKU]})
    await lapse(router.health, clock, OA_MINI)
    trial = await decide(router)
    assert pair(trial) == OA_MINI
    await router.report(trial, ok=False)
    state = (await router.health.states([OA_MINI]))[OA_MINI]
    assert state is not None and (state.failures, state.remaining(clock())) == (2, 60)
    retry = await router.alternative(trial)  # its retry goes to the healthy one
    assert retry is not None and pair(retry) == AN_HAIKU
    assert {pair(await decide(router)) for _ in range(10)} == {AN_HAIKU}
    clock.advance(60)
    assert pair(await decide(router)) == OA_MINI  # the next trial


async def test_a_request_that_ends_without_a_verdict_releases_its_trial(store: Store) -> None:
    """Refused before it was sent (its quota, say): the next request is the trial at once, not
    TRIAL_SECONDS later — else a user refused again and again kept the model from ever recovering."""
    router, clock = make_router(store, {"simple": [OA_MINI, AN_HAIKU]})
    await lapse(router.health, clock, OA_MINI)
    refused = await decide(router)
    assert pair(refused) == OA_MINI and pair(await decide(router)) == AN_HAIKU
    await router.release(refused)
    trial = await decide(router)
    assert pair(trial) == OA_MINI
    await router.report(trial, ok=True)
    await router.release(trial)  # reported: nothing left to release
    assert (await router.health.states([OA_MINI]))[OA_MINI] is None


async def test_a_trial_that_never_reports_holds_the_claim_for_trial_seconds(store: Store) -> None:
    router, clock = make_router(store, {"simple": [OA_MINI, AN_HAIKU]})
    await lapse(router.health, clock, OA_MINI)
    assert pair(await decide(router)) == OA_MINI  # then its process died
    clock.advance(TRIAL_SECONDS - 1)
    assert pair(await decide(router)) == AN_HAIKU
    clock.advance(1)
    assert pair(await decide(router)) == OA_MINI  # the next trial


@pytest.mark.parametrize("other", ["none", "in backoff"])
async def test_a_request_with_no_other_candidate_is_never_refused_for_a_trial(store: Store, other: str) -> None:
    tiers = {"simple": [OA_MINI] if other == "none" else [OA_MINI, AN_HAIKU]}
    router, clock = make_router(store, tiers)
    await lapse(router.health, clock, OA_MINI)
    if other == "in backoff":
        assert await router.health.record_failure(*AN_HAIKU) == 30
    trial = await decide(router)
    assert pair(trial) == OA_MINI
    following = [await decide(router) for _ in range(3)]  # the trial under way: to it all the same
    assert {pair(d) for d in following} == {OA_MINI} and all(d.was_unhealthy for d in following)
    await router.report(following[0], ok=True)  # any answer of it counts
    assert (await router.health.states([OA_MINI]))[OA_MINI] is None


async def test_an_upgrade_preferring_a_provider_takes_its_trial_first(store: Store) -> None:
    router, clock = make_router(store, {"simple": [OA_MINI], "complex": [AN_HAIKU, OA_4O]})
    await lapse(router.health, clock, OA_4O)
    first = await decide(router, "conv-1")
    await router.commit(ALICE, first)
    upgrade = await router.decide(ALICE, parse_chat_request(
        {"tier": "complex", "conversation_id": "conv-1", "messages": [{"role": "user", "content": "hi"}]}))
    assert pair(upgrade) == OA_4O  # the session's provider's model, as its trial
    assert not await router.health.claim_trial(*OA_4O)


async def test_an_upgrade_keeps_to_its_providers_healthy_model_over_another_providers_trial(store: Store) -> None:
    """An upgrade prefers the session's provider: a recovering model of another provider does not
    take it as its trial (it moved the conversation off its provider, its prompt cache lost)."""
    router, clock = make_router(store, {"simple": [OA_MINI], "complex": [AN_HAIKU, OA_4O]})
    await lapse(router.health, clock, AN_HAIKU)
    first = await decide(router, "conv-1")
    await router.commit(ALICE, first)
    upgrade = await router.decide(ALICE, parse_chat_request(
        {"tier": "complex", "conversation_id": "conv-1", "messages": [{"role": "user", "content": "hi"}]}))
    assert pair(upgrade) == OA_4O and upgrade.trials == []
    assert await router.health.claim_trial(*AN_HAIKU)  # its trial left for a request with no preference


@pytest.mark.parametrize("failover", list(SessionFailover))
async def test_a_conversation_on_a_recovering_model_stays_and_is_its_trial(
    store: Store, failover: SessionFailover
) -> None:
    router, clock = make_router(store, {"simple": [OA_MINI, AN_HAIKU]}, failover=failover)
    now = clock()
    await router.sessions.create(Session("conv-1", "alice", "simple", *OA_MINI, now, now))
    await lapse(router.health, clock, OA_MINI)
    kept = await decide(router, "conv-1")
    assert pair(kept) == OA_MINI and kept.event == "hit" and kept.was_unhealthy
    fresh = {pair(await decide(router)) for _ in range(10)}
    assert fresh == {AN_HAIKU}  # its trial under way: fresh requests keep away
    again = await decide(router, "conv-1")  # the conversation still goes to its model
    assert pair(again) == OA_MINI
    await router.report(kept, ok=True)
    assert (await router.health.states([OA_MINI]))[OA_MINI] is None


async def test_a_tier_of_recovering_models_refuses_nothing(store: Store) -> None:
    """All candidates recovering, each with a trial under way: no 503, one of them serves."""
    router, clock = make_router(store, {"simple": [OA_MINI, AN_HAIKU]})
    await router.health.record_failure(*OA_MINI)
    await router.health.record_failure(*AN_HAIKU)
    clock.advance(30)
    trials = {pair(await decide(router)) for _ in range(2)}
    assert trials == {OA_MINI, AN_HAIKU}
    assert pair(await decide(router)) in {OA_MINI, AN_HAIKU}
    await router.health.record_failure(*OA_MINI)
    await router.health.record_failure(*AN_HAIKU)
    with pytest.raises(ServiceUnavailable):  # in backoff, both: as before
        await decide(router)


# --- ModelRoutes (/v1 aliases) -------------------------------------------------------------------
A = ModelTarget("a", "openai", "openai", OA_MINI[1], Prices(1.0, 1.0))
B = ModelTarget("b", "anthropic", "anthropic", AN_HAIKU[1], Prices(1.0, 1.0))


async def test_an_alias_sends_one_trial_to_its_recovering_first_target(store: Store) -> None:
    clock = FakeClock()
    health = ProviderHealth(store, Metrics(), clock=clock)
    routes = ModelRoutes(health)
    await lapse(health, clock, OA_MINI)
    assert (await routes.order([A, B]))[0] == [A, B]  # the trial
    assert (await routes.order([A, B]))[0] == [B, A]  # another request meanwhile
    assert (await routes.order([B, A]))[0] == [B, A]  # behind a healthy target: claims no trial
    served: list[str] = []

    async def send(target: ModelTarget) -> str:
        served.append(target.name)
        return target.name

    clock.advance(TRIAL_SECONDS)  # the first trial never reported

    async def refuse(target: ModelTarget) -> str:
        served.append(target.name)
        raise InvalidRequest("a client's error")

    with pytest.raises(InvalidRequest):  # a trial with no verdict: released as the call ends
        await routes.call([A, B], refuse)
    served.clear()
    assert await routes.call([A, B], send) == "a"  # the next one is a trial at once, and answers
    assert served == ["a"] and (await health.states([OA_MINI]))[OA_MINI] is None
    assert (await routes.order([A, B]))[0] == [A, B]
