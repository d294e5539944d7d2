"""TierRouter decisions over a real store, with a seeded selector and an injected clock."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from sentinel.domain.identity import Identity
from sentinel.domain.policies import SessionFailover
from sentinel.domain.tiers import TierModelEntry
from sentinel.native import ChatRequest, parse_chat_request
from sentinel.observability.metrics import Metrics
from sentinel.routing.health import ProviderHealth
from sentinel.routing.router import TierRouter
from sentinel.routing.selection import WeightedSelector
from sentinel.routing.sessions import Session, SessionStore
from sentinel.routing.tiers import StaticTiers
from sentinel.store import Store
from tests.routing.helpers import AN_HAIKU, AN_SONNET, OA_4O, OA_MINI
from tests.support.clock import FakeClock
from tests.support.lost_replies import LostReply
from tests.support.stores import FlakyStore

ALICE = Identity(external_id="alice", user_id="u1")


def table(**tiers: list[tuple[str, str]]) -> StaticTiers:
    return StaticTiers({
        t: [TierModelEntry(provider=p, model=m, relative_cost=1) for p, m in tiers.get(t, [])]
        for t in ("simple", "moderate", "complex")
    })


def make_router(store: Store, tiers: StaticTiers, *, failover: SessionFailover = SessionFailover.keep,
                seed: int = 0) -> TierRouter:
    clock = FakeClock()
    metrics = Metrics()
    return TierRouter(
        tiers=tiers, providers=["openai", "anthropic"], health=ProviderHealth(store, metrics, clock=clock),
        sessions=SessionStore(store, ttl=1000, clock=clock), selector=WeightedSelector(random.Random(seed)),
        metrics=metrics, failover=failover, clock=clock,
    )


def request(tier: str = "simple", conv: str | None = "conv-1") -> ChatRequest:
    body: dict[str, Any] = {"tier": tier, "messages": [{"role": "user", "content": "hi"}]}
    if conv is not None:
        body["conversation_id"] = conv
    return parse_chat_request(body)


def sessions_count(router: TierRouter, event: str) -> float:
    router.metrics.flush()  # (counts are held until a scrape: `Metrics.add`)
    return router.metrics.registry.get_sample_value("sentinel_sessions_total", {"event": event}) or 0.0


async def turn(router: TierRouter, req: ChatRequest) -> tuple[str, str, str]:
    decision = await router.decide(ALICE, req)
    await router.claim(ALICE, decision)  # as the handler: a first turn's session before the call
    await router.commit(ALICE, decision)
    await router.report(decision, ok=True)
    return decision.tier, decision.provider, decision.model


async def test_upgrade_prefers_the_session_provider_and_never_downgrades(store: Store) -> None:
    tiers = table(simple=[OA_MINI, AN_HAIKU], complex=[OA_4O, AN_SONNET])
    for seed in range(6):
        router = make_router(store, tiers, seed=seed)
        conv = f"conv-{seed}"
        tier, provider, _ = await turn(router, request("simple", conv))
        assert tier == "simple"
        upgraded = await turn(router, request("complex", conv))
        assert upgraded[:2] == ("complex", provider)
        assert await turn(router, request("simple", conv)) == upgraded
        assert await turn(router, request("moderate", conv)) == upgraded
        stored = await router.sessions.get(conv, "alice")
        assert stored is not None and (stored.tier, stored.provider, stored.model) == upgraded
        assert [sessions_count(router, e) for e in ("created", "upgraded", "hit")] == [1, 1, 2]


async def test_first_turn_failure_is_retried_and_the_session_follows_the_retry(store: Store) -> None:
    """A conversation that has not been served yet is not bound to a model that failed its first call."""
    router = make_router(store, table(simple=[OA_MINI, AN_HAIKU]))
    first = await router.decide(ALICE, request())
    await router.claim(ALICE, first)  # created before the upstream call
    assert first.created is not None and first.sticky
    await router.report(first, ok=False)
    retry = await router.alternative(first)
    assert retry is not None and retry.model != first.model
    await router.commit(ALICE, retry)
    await router.report(retry, ok=True)
    stored = await router.sessions.get("conv-1", "alice")
    assert stored is not None and (stored.provider, stored.model) == (retry.provider, retry.model)
    assert stored.migrations == 0
    assert sessions_count(router, "created") == 1 and sessions_count(router, "migrated") == 0
    assert await turn(router, request()) == ("simple", retry.provider, retry.model)


async def test_keep_leaves_an_established_session_on_its_model(store: Store) -> None:
    router = make_router(store, table(simple=[OA_MINI, AN_HAIKU]))
    _, provider, model = await turn(router, request())
    await router.health.record_failure(provider, model)
    decision = await router.decide(ALICE, request())
    assert (decision.provider, decision.model, decision.event) == (provider, model, "hit")
    assert await router.alternative(decision) is None  # the provider's error reaches the client


async def test_migrate_moves_a_session_off_a_model_in_backoff(store: Store) -> None:
    router = make_router(store, table(simple=[OA_MINI, OA_4O, AN_HAIKU]), failover=SessionFailover.migrate)
    _, provider, model = await turn(router, request())
    await router.health.record_failure(provider, model)
    tier, new_provider, new_model = await turn(router, request())
    assert tier == "simple" and (new_provider, new_model) != (provider, model)
    stored = await router.sessions.get("conv-1", "alice")
    assert stored is not None and (stored.model, stored.migrations) == (new_model, 1)
    assert sessions_count(router, "migrated") == 1


async def lapsed(router: TierRouter, pair: tuple[str, str], failures: int) -> None:
    """`pair` failed `failures` times in a row and its last backoff has run out (available again)."""
    assert isinstance(router.clock, FakeClock)
    for _ in range(failures):
        router.clock.advance(await router.health.record_failure(*pair) or 0.0)
    assert (await router.health.available([pair]))[pair]


@pytest.mark.parametrize("how", ["migrated", "retried"])
async def test_a_model_that_answers_a_moved_request_has_its_failures_cleared(store: Store, how: str) -> None:
    """A model whose backoff ran out and that then answers, as a migrated session's model or as a
    retry's, is healthy again: its next failure is the first of a run (30 s). Its failures were kept
    (only a first choice's answer cleared them), so one later failure took it out for 240 s."""
    router = make_router(store, table(simple=[OA_MINI, OA_4O]), failover=SessionFailover.migrate)
    first = await router.decide(ALICE, request())
    other = next(pair for pair in (OA_MINI, OA_4O) if pair != (first.provider, first.model))
    await lapsed(router, other, failures=3)
    if how == "migrated":
        await router.claim(ALICE, first)
        await router.commit(ALICE, first)
        await router.report(first, ok=True)
        await router.health.record_failure(first.provider, first.model)
        moved = await router.decide(ALICE, request())
        assert moved.event == "migrated"
    else:
        await router.report(first, ok=False)
        retry = await router.alternative(first)
        assert retry is not None
        moved = retry
    assert (moved.provider, moved.model) == other
    await router.report(moved, ok=True)
    assert (await router.health.states([other]))[other] is None
    assert await router.health.record_failure(*other) == 30


async def test_store_down_means_no_stickiness() -> None:
    store = FlakyStore()
    store.fail("get")
    router = make_router(store, table(simple=[OA_MINI, AN_HAIKU]))
    decision = await router.decide(ALICE, request())
    assert decision.conversation_id is None and not decision.sticky and decision.pending_write is None
    assert sessions_count(router, "store_error") == 1


async def test_a_conversation_served_by_another_candidate_keeps_that_candidates_prices(store: Store) -> None:
    """A first turn that lost the race to create its session, and every turn of a conversation whose
    model left its tier, were served under a bare entry without prices: their cost was unknown."""
    priced = StaticTiers({
        "simple": [
            TierModelEntry(provider="openai", model="gpt-4o-mini", input_price_per_million=0.15,
                           output_price_per_million=0.6),
            TierModelEntry(provider="anthropic", model="claude-3-5-haiku-20241022", input_price_per_million=0.8,
                           output_price_per_million=4.0),
        ],
        "moderate": [], "complex": [],
    })
    by_provider = {e.provider: e for e in (await priced.table())["simple"]}
    router = make_router(store, priced)
    decision = await router.decide(ALICE, request("simple", "raced"))
    other = by_provider["anthropic" if decision.provider == "openai" else "openai"]
    now = router.clock()
    await router.sessions.create(Session("raced", "alice", "simple", other.provider, other.model, now, now))
    await router.claim(ALICE, decision)  # the concurrent first turn won: this one follows it
    assert (decision.provider, decision.entry.prices) == (other.provider, other.prices)
    assert decision.session is not None and decision.session.provider == other.provider
    assert decision.created is None  # not this one's to remove
    await router.abandon(decision)  # no model answered it: the winner's session stays
    assert await router.sessions.get("raced", "alice") is not None
    # The model is taken out of the simple tier but still in the table (another tier): its prices stay.
    rest = next(e for e in by_provider.values() if e is not other)
    moved = StaticTiers({"simple": [rest], "moderate": [other], "complex": []})
    later = await make_router(store, moved).decide(ALICE, request("simple", "raced"))
    assert (later.provider, later.entry.prices) == (other.provider, other.prices)


@pytest.mark.parametrize(("tier", "serving"), [("moderate", OA_4O), ("complex", AN_SONNET)])
async def test_a_first_turn_following_a_session_on_a_provider_not_configured_here_migrates_it(
    store: Store, tier: str, serving: tuple[str, str]
) -> None:
    """A concurrent first turn in a process configured otherwise (a rolling deploy dropping a
    provider) created the session on a provider this process does not have: the follower was handed
    its model, which no provider here serves (a KeyError, a 500). It is served by a model of the
    session's tier (at the same tier its own choice), and moves the session there once answered, as
    a later turn on a provider gone does."""
    router = make_router(store, table(simple=[OA_MINI], moderate=[OA_4O], complex=[AN_SONNET]))
    decision = await router.decide(ALICE, request("moderate", "raced"))
    now = router.clock()
    await router.sessions.create(Session("raced", "alice", tier, "gone", "old-model", now, now))
    await router.claim(ALICE, decision)
    assert (decision.tier, decision.provider, decision.model, decision.event) == (tier, *serving, "migrated")
    assert decision.created is None  # not this one's to remove
    await router.commit(ALICE, decision)
    stored = await router.sessions.get("raced", "alice")
    assert stored is not None and (stored.tier, stored.provider, stored.model) == (tier, *serving)
    assert stored.migrations == 1


async def test_of_two_requests_that_change_a_session_the_first_answered_wins(store: Store) -> None:
    """Sessions are written once answered: a request that upgrades the session it read and generates
    for a minute, and one that meanwhile migrates the same session off a model in backoff, each
    wrote their own unconditionally. The upgrade, answered last, overwrote the migration and the
    migrations count it made. The first answered now wins; the other leaves the session as it is."""
    router = make_router(store, table(simple=[OA_MINI, OA_4O, AN_HAIKU], complex=[OA_4O, AN_SONNET]),
                         failover=SessionFailover.migrate)
    _, provider, model = await turn(router, request("simple"))
    await router.health.record_failure(provider, model)
    upgrading = await router.decide(ALICE, request("complex"))
    migrating = await router.decide(ALICE, request("simple"))
    assert (upgrading.event, migrating.event) == ("upgraded", "migrated")
    await router.commit(ALICE, migrating)  # answered first
    await router.commit(ALICE, upgrading)  # answered a minute later
    stored = await router.sessions.get("conv-1", "alice")
    assert stored is not None
    assert (stored.tier, stored.provider, stored.model, stored.migrations) == (
        "simple", migrating.provider, migrating.model, 1)
    assert sessions_count(router, "migrated") == 1 and sessions_count(router, "upgraded") == 0
    # the next complex request upgrades the session as it now is
    assert (await turn(router, request("complex")))[0] == "complex"
    stored = await router.sessions.get("conv-1", "alice")
    assert stored is not None and (stored.tier, stored.migrations) == ("complex", 1)


async def test_a_concurrent_first_turn_at_a_higher_tier_upgrades_the_session_it_lost_to(store: Store) -> None:
    """A first turn that lost the race to create its session followed the winner's model even when
    it asked for a higher tier: a complex request was served by the simple model. Now it upgrades
    the winner's session (with the model it chose for its tier), written once answered."""
    router = make_router(store, table(simple=[OA_MINI, AN_HAIKU], complex=[OA_4O, AN_SONNET]))
    simple = await router.decide(ALICE, request("simple"))
    complex_ = await router.decide(ALICE, request("complex"))  # both read no session
    chosen = (complex_.provider, complex_.model)
    await router.claim(ALICE, simple)
    await router.claim(ALICE, complex_)
    assert (complex_.tier, complex_.provider, complex_.model) == ("complex", *chosen)
    assert (complex_.event, complex_.pending_write, complex_.created) == ("upgraded", "update", None)
    assert complex_.session is not None and complex_.session.model == simple.model
    await router.abandon(complex_)  # were it not answered: the session it did not create stays
    assert await router.sessions.get("conv-1", "alice") is not None
    await router.commit(ALICE, simple)
    await router.commit(ALICE, complex_)
    stored = await router.sessions.get("conv-1", "alice")
    assert stored is not None and (stored.tier, stored.provider, stored.model) == ("complex", *chosen)
    assert [sessions_count(router, e) for e in ("created", "upgraded", "hit")] == [1, 1, 0]


async def test_a_concurrent_first_turn_that_follows_is_bound_to_the_winners_model(store: Store) -> None:
    """A first turn that followed a concurrent one's session kept the event "created": it was not
    bound, so a failure was retried on another model whose answer moved the session (two models
    served the conversation's first turns), and each counted the session as created."""
    for failover in SessionFailover:
        router = make_router(store, table(simple=[OA_MINI, AN_HAIKU]), failover=failover)
        conv = f"conv-{failover.value}"
        first = await router.decide(ALICE, request("simple", conv))
        second = await router.decide(ALICE, request("simple", conv))
        await router.claim(ALICE, first)
        await router.claim(ALICE, second)
        assert (second.provider, second.model) == (first.provider, first.model)
        assert (second.event, second.pending_write, second.created, second.bound) == ("hit", "touch", None, True)
        retry = await router.alternative(second)
        if failover is SessionFailover.keep:
            assert retry is None  # the provider's error reaches the client, as on any later turn
        else:
            assert retry is not None and (retry.event, retry.pending_write) == ("migrated", "update")
        await router.commit(ALICE, first)
        await router.commit(ALICE, second)
        assert [sessions_count(router, e) for e in ("created", "hit")] == [1, 1]


async def test_a_first_turns_retry_leaves_a_session_a_follower_was_answered_with(store: Store) -> None:
    """The first turn's model fails slowly; a concurrent first turn follows its session and is
    answered by that model (a refresh). The retry's answer, on another model, moved the session
    anyway (its compare ignored the refresh): under `keep` a conversation a model had served moved,
    uncounted. It stays; the retry is served, and the session counted created once."""
    router = make_router(store, table(simple=[OA_MINI, AN_HAIKU]))
    clock = router.clock
    assert isinstance(clock, FakeClock)
    first = await router.decide(ALICE, request())
    await router.claim(ALICE, first)  # created on X, before X's (slow) call
    clock.advance(2)
    follower = await router.decide(ALICE, request())  # reads the session: a hit on X
    assert (follower.event, follower.provider, follower.model) == ("hit", first.provider, first.model)
    await router.commit(ALICE, follower)  # X answered the follower: last_seen_at refreshed
    await router.report(follower, ok=True)
    clock.advance(1)
    await router.report(first, ok=False)  # X fails the first turn: a 5xx
    retry = await router.alternative(first)
    assert retry is not None and retry.model != first.model
    await router.commit(ALICE, retry)  # Y answered the retry
    stored = await router.sessions.get("conv-1", "alice")
    assert stored is not None and (stored.provider, stored.model, stored.migrations) == (
        first.provider, first.model, 0)
    assert stored.last_seen_at == clock.now - 1  # the follower's refresh, nothing written since
    assert [sessions_count(router, e) for e in ("created", "hit", "migrated")] == [1, 1, 0]
    assert await turn(router, request()) == ("simple", first.provider, first.model)


async def test_a_follower_answered_after_the_first_turn_was_not_recreates_the_session_once(store: Store) -> None:
    router = make_router(store, table(simple=[OA_MINI, AN_HAIKU]))
    first = await router.decide(ALICE, request())
    second = await router.decide(ALICE, request())
    await router.claim(ALICE, first)
    await router.claim(ALICE, second)
    await router.abandon(first)  # no model answered the first: its session goes
    assert await router.sessions.get("conv-1", "alice") is None
    await router.commit(ALICE, second)  # the follower was answered, by that model
    stored = await router.sessions.get("conv-1", "alice")
    assert stored is not None and (stored.provider, stored.model) == (second.provider, second.model)
    assert [sessions_count(router, e) for e in ("created", "hit")] == [1, 0]


async def test_a_higher_tier_follower_answered_after_the_first_turn_was_not_keeps_its_upgrade(store: Store) -> None:
    """The follower's upgrade was a compare-and-set over the winner's session; when no model
    answered the winner, which removed it, the follower's write found nothing and wrote nothing: a
    conversation the complex model had just served had no session (the next turn drew afresh)."""
    router = make_router(store, table(simple=[OA_MINI, AN_HAIKU], complex=[OA_4O, AN_SONNET]))
    simple = await router.decide(ALICE, request("simple"))
    complex_ = await router.decide(ALICE, request("complex"))
    await router.claim(ALICE, simple)
    await router.claim(ALICE, complex_)
    await router.abandon(simple)  # no model answered the winner: its session goes
    await router.commit(ALICE, complex_)  # the follower was answered, by its complex model
    stored = await router.sessions.get("conv-1", "alice")
    assert stored is not None and (stored.tier, stored.provider, stored.model) == (
        "complex", complex_.provider, complex_.model)
    assert sessions_count(router, "upgraded") == 1


async def test_an_upgrade_answered_by_its_retry_is_counted_as_an_upgrade(store: Store) -> None:
    router = make_router(store, table(simple=[OA_MINI], complex=[OA_4O, AN_SONNET]))
    await turn(router, request("simple"))
    upgrading = await router.decide(ALICE, request("complex"))
    retry = await router.alternative(upgrading)
    assert retry is not None
    await router.commit(ALICE, retry)
    stored = await router.sessions.get("conv-1", "alice")
    assert stored is not None and (stored.tier, stored.model) == ("complex", retry.model)
    assert sessions_count(router, "upgraded") == 1


async def test_a_first_turn_cancelled_during_its_session_write_removes_it(store: Store) -> None:
    """`claim` recorded the session it created only once the write returned: a first turn
    cancelled while the write was in flight (written, its reply not yet read) left `created`
    None, and the session on a model that never answered stayed."""
    router = make_router(store, table(simple=[OA_MINI, AN_HAIKU]))
    decision = await router.decide(ALICE, request())
    written = asyncio.Event()
    create = router.sessions.create

    async def written_then_cancelled(session: Session) -> Session:
        await create(session)
        written.set()
        await asyncio.Event().wait()  # the reply never comes: the request is cancelled
        raise AssertionError("unreachable")

    router.sessions.create = written_then_cancelled  # type: ignore[method-assign]
    claiming = asyncio.ensure_future(router.claim(ALICE, decision))
    await written.wait()
    claiming.cancel()
    with pytest.raises(asyncio.CancelledError):
        await claiming
    assert await router.sessions.get("conv-1", "alice") is not None
    await router.abandon(decision)
    assert await router.sessions.get("conv-1", "alice") is None


LOST = "sentinel:session:"  # the next session write's reply is lost (`LostReply`)


async def test_a_first_turn_whose_claims_reply_was_lost_is_its_sessions_creator(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim's SET ran and its reply was lost: the turn took the session it had written for
    another's, so its retry's answer did not move it (the conversation stayed on the model that had
    failed it) and no session was counted created. Its claim token read back, it is its own: a
    retry's answer moves it, a turn no model answered removes it."""
    router = make_router(store, table(simple=[OA_MINI, AN_HAIKU]))
    lost = LostReply(store, monkeypatch, "SET", LOST)
    first = await router.decide(ALICE, request())
    await router.claim(ALICE, first)
    assert lost.lost == 1
    assert (first.pending_write, first.event, first.bound) == ("touch", "created", False)
    await router.report(first, ok=False)
    retry = await router.alternative(first)
    assert retry is not None and retry.model != first.model
    await router.commit(ALICE, retry)
    stored = await router.sessions.get("conv-1", "alice")
    assert stored is not None and (stored.provider, stored.model) == (retry.provider, retry.model)
    assert [sessions_count(router, e) for e in ("created", "store_error")] == [1, 0]

    lost = LostReply(store, monkeypatch, "SET", LOST)
    unanswered = await router.decide(ALICE, request(conv="conv-2"))
    await router.claim(ALICE, unanswered)
    assert lost.lost == 1
    await router.abandon(unanswered)  # no model answered it
    assert await router.sessions.get("conv-2", "alice") is None


async def test_a_first_turn_whose_claims_reply_was_lost_follows_anothers_session(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A concurrent first turn created the session (the same model, at the same instant: the very
    same fields) and this turn's claim found it, its reply lost: it follows that session as a hit,
    and removes nothing when no model answers it."""
    router = make_router(store, table(simple=[OA_MINI]))
    first = await router.decide(ALICE, request())
    second = await router.decide(ALICE, request())
    await router.claim(ALICE, first)
    lost = LostReply(store, monkeypatch, "SET", LOST)
    await router.claim(ALICE, second)
    assert lost.lost == 1
    assert (second.event, second.pending_write, second.created, second.bound) == ("hit", "touch", None, True)
    await router.abandon(second)
    stored = await router.sessions.get("conv-1", "alice")
    assert first.created is not None and stored is not None and stored.claim == first.created.claim


async def test_a_first_turn_whose_claims_outcome_stayed_unknown_settles_it_once_answered(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim's SET ran, its reply was lost and the session could not be read back either: once a
    retry answered, the session it may have written moves to that model (still exactly as created),
    counted created; without the claim's write, it is created then."""
    for conv, written in (("conv-1", True), ("conv-2", False)):
        store = FlakyStore()
        router = make_router(store, table(simple=[OA_MINI, AN_HAIKU]))
        first = await router.decide(ALICE, request(conv=conv))
        if written:
            LostReply(store, monkeypatch, "SET", LOST)
            store.fail("get")
        else:
            store.fail("set")
        await router.claim(ALICE, first)
        store.recover()
        assert (first.pending_write, first.created is not None) == ("create", True)
        assert (await router.sessions.get(conv, "alice") is not None) is written
        await router.report(first, ok=False)
        retry = await router.alternative(first)
        assert retry is not None and retry.model != first.model
        await router.commit(ALICE, retry)
        stored = await router.sessions.get(conv, "alice")
        assert stored is not None and (stored.provider, stored.model) == (retry.provider, retry.model)
        assert sessions_count(router, "created") == 1


async def test_a_follower_answered_after_the_retry_moved_the_session_does_not_take_it_for_its_own(
    store: Store,
) -> None:
    """A follower whose refresh finds the session moved (the first turn's retry answered first)
    creates it anew only if it is gone: the moved session keeps the first turn's claim token, and
    the follower's new one has a token of its own, so it is not taken for the follower's creation."""
    router = make_router(store, table(simple=[OA_MINI, AN_HAIKU]))
    first = await router.decide(ALICE, request())
    await router.claim(ALICE, first)
    follower = await router.decide(ALICE, request())
    assert follower.event == "hit"
    retry = await router.alternative(first)
    assert retry is not None
    await router.commit(ALICE, retry)  # the session moves to the retry's model
    await router.commit(ALICE, follower)  # answered by the first model: the session stays moved
    stored = await router.sessions.get("conv-1", "alice")
    assert stored is not None and (stored.provider, stored.model) == (retry.provider, retry.model)
    assert [sessions_count(router, e) for e in ("created", "hit")] == [1, 1]


async def test_the_models_that_may_serve_a_request(store: Store) -> None:
    """What the native API prices a request's images and reserves a large cap by (`may_serve`): any
    candidate of its tier — one bound to its session's model with `keep` too, which a 404 saying the
    provider retired that model moves to another of them (`TierRouter.retired`)."""
    for failover in SessionFailover:
        router = make_router(store, table(simple=[OA_MINI, AN_HAIKU], complex=[OA_4O]), failover=failover)
        conv = f"conv-{failover.value}"
        assert await serving(router, request("simple", None)) == {OA_MINI, AN_HAIKU}
        assert await serving(router, request("simple", conv)) == {OA_MINI, AN_HAIKU}  # a first turn
        _, *first = await turn(router, request("simple", conv))
        assert tuple(first) in {OA_MINI, AN_HAIKU}
        assert await serving(router, request("simple", conv)) == {OA_MINI, AN_HAIKU}, failover
        assert await serving(router, request("complex", conv)) == {OA_4O}  # an upgrade: the tier it upgrades to


async def serving(router: TierRouter, req: ChatRequest) -> set[tuple[str, str]]:
    return {(e.provider, e.model) for e in await router.may_serve(await router.decide(ALICE, req))}


class Cycling(WeightedSelector):
    """Picks the candidates in turn: two requests choosing one after the other choose differently."""

    def __init__(self) -> None:
        super().__init__()
        self.picks = 0

    def choose(self, entries: Any) -> TierModelEntry:
        self.picks += 1
        return list(entries)[self.picks % len(entries)]


async def test_concurrent_turns_of_a_conversation_whose_model_was_retired_move_to_one_model(store: Store) -> None:
    """Two turns read the session on a model the provider then answered 404 for (`ModelRetired`):
    each choosing its own new model (the selector picks differently each time), and writing it once
    answered, the conversation's turns were served by two models and the last answered won. The
    first to move writes the move before its call; the other finds the session changed and follows."""
    router = make_router(store, table(simple=[OA_MINI, OA_4O, AN_HAIKU]))
    router.selector = Cycling()
    _, provider, model = await turn(router, request())
    one, two = await router.decide(ALICE, request()), await router.decide(ALICE, request())
    assert (one.event, two.event) == ("hit", "hit")
    moved_one, moved_two = await router.retired(one), await router.retired(two)
    assert moved_one is not None and moved_two is not None
    assert (moved_one.provider, moved_one.model) != (moved_two.provider, moved_two.model)  # each drew its own
    assert await router.moved(moved_one) and await router.moved(moved_two)
    assert (moved_one.provider, moved_one.model) != (provider, model)
    assert (moved_two.provider, moved_two.model) == (moved_one.provider, moved_one.model)
    stored = await router.sessions.get("conv-1", "alice")
    assert stored is not None and (stored.provider, stored.model, stored.migrations) == (
        moved_one.provider, moved_one.model, 1)
    for moved in (moved_one, moved_two):
        await router.commit(ALICE, moved)
    stored = await router.sessions.get("conv-1", "alice")
    assert stored is not None and (stored.provider, stored.model, stored.migrations) == (
        moved_one.provider, moved_one.model, 1)
    assert sessions_count(router, "migrated") == 1
    assert await router.retired(moved_one) is None  # a retry is not moved again


async def test_concurrent_turns_of_a_conversation_whose_model_left_every_tier_move_to_one_model(
    store: Store,
) -> None:
    """The operator took the session's model out of the tier table: its turns moved to a model each
    chose (written once answered, the last answered winning); now the first to claim moves it."""
    router = make_router(store, table(simple=[OA_MINI]))
    await turn(router, request())
    edited = make_router(store, table(simple=[OA_4O, AN_HAIKU]))
    edited.selector = Cycling()
    one, two = await edited.decide(ALICE, request()), await edited.decide(ALICE, request())
    assert (one.event, two.event) == ("migrated", "migrated") and (one.model, one.provider) != (two.model, two.provider)
    await edited.claim(ALICE, one)
    await edited.claim(ALICE, two)
    assert (two.provider, two.model) == (one.provider, one.model)
    for decision in (two, one):
        await edited.commit(ALICE, decision)
    stored = await edited.sessions.get("conv-1", "alice")
    assert stored is not None and (stored.provider, stored.model, stored.migrations) == (one.provider, one.model, 1)
    assert sessions_count(edited, "migrated") == 1
