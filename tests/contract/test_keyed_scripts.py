"""The scripts of provider health, sessions, conversation counts and the governance cache, on every
backend (memory, Redis, a Redis Cluster), with keys of several users, providers, models and objects,
so that on the cluster they fall in different hash slots (asserted): each script's keys share one
slot (`{providers}` for every pair's health entry, witness and retired mark), and each call that
spans slots is made of several commands, each on its own slot.
"""

from __future__ import annotations

from redis.crc import key_slot

from sentinel.governance.cache import GovernanceCache
from sentinel.governance.ownership import Ownership
from sentinel.routing.health import ProviderHealth
from sentinel.routing.sessions import Session, SessionStore
from sentinel.store import Store

NOW = 1_700_000_000.0
# providers and models whose names hold braces too: the `{providers}` tag comes first in every key
PAIRS = [("openai", "gpt-4o-mini"), ("anthropic", "claude-3-5-haiku"), ("acme{x}", "m}1"), ("google", "{gemini}")]


def _slots(keys: list[str]) -> set[int]:
    return {key_slot(key.encode()) for key in keys}


async def test_tier_selection_reads_every_pairs_health_and_retired_mark_at_once(store: Store) -> None:
    """`standing`: the health entries and the retired marks of every pair in one MGET script."""
    now = [NOW]
    health = ProviderHealth(store, clock=lambda: now[0])
    keys = [ProviderHealth.key(*p) for p in PAIRS] + [ProviderHealth.retired_key(*p) for p in PAIRS]
    assert len(_slots(keys)) == 1 and len(_slots([key.replace("{providers}", "providers") for key in keys])) > 1
    assert await health.record_failure(*PAIRS[1]) == 30
    await health.mark_retired(*PAIRS[2])
    states, retired = await health.standing(PAIRS)
    assert [state is not None for state in states.values()] == [False, True, False, False]
    assert retired == {PAIRS[2]}
    now[0] += 30
    token = "trial-1"
    assert await health.claim_trial(*PAIRS[1], token) is True
    assert await health.claim_trial(*PAIRS[1], "trial-2") is False  # one trial at a time
    await health.release_trial(*PAIRS[1], token)
    assert await health.claim_trial(*PAIRS[1]) is True
    await health.record_success(*PAIRS[1])
    assert (await health.standing(PAIRS))[0][PAIRS[1]] is None


async def test_a_client_causable_failure_counts_at_a_second_users_on_every_pair(store: Store) -> None:
    """SECOND_WITNESS: one witness key per pair, all in the `{providers}` slot, whoever the users are."""
    health = ProviderHealth(store, clock=lambda: NOW)
    users = ["alice", "bob", "}odd{", "carol"]
    for pair in PAIRS:
        assert await health.record_failure(*pair, caller=users[0]) is None  # remembered
        assert await health.record_failure(*pair, caller=users[0]) is None  # the same user's: still one
        assert await health.record_failure(*pair, caller=users[2]) == 30  # another user's: counted
    states, _ = await health.standing(PAIRS)
    assert all(state is not None and state.failures == 1 for state in states.values())


async def test_a_soft_backoff_keeps_its_flag_through_the_scripts_and_a_hard_failure_drops_it(store: Store) -> None:
    """RECORD_FAILURE marks a backoff client-causable failures alone started as soft; CLAIM_TRIAL and
    RELEASE_TRIAL keep the flag as they rewrite the entry; a hard failure during it drops the flag."""
    now = [NOW]
    health = ProviderHealth(store, clock=lambda: now[0])
    for pair in PAIRS:
        assert await health.record_failure(*pair, caller="alice") is None
        assert await health.record_failure(*pair, caller="bob") == 30
    now[0] += 30  # half-open
    for pair in PAIRS[:2]:
        assert await health.claim_trial(*pair, "trial-1")
    await health.release_trial(*PAIRS[1], "trial-1")
    assert await health.record_failure(*PAIRS[2]) == 60  # a hard one: the next backoff (doubled), hard
    now[0] -= 10  # (back within the fourth pair's backoff)
    assert await health.record_failure(*PAIRS[3]) == 30  # a hard one during its soft backoff
    now[0] += 10
    states, _ = await health.standing(PAIRS)
    assert [state is not None and state.soft for state in states.values()] == [True, True, False, False]
    assert states[PAIRS[0]] is not None and states[PAIRS[0]].trial_id == "trial-1"


async def test_sessions_of_many_users_are_created_changed_and_deleted(store: Store) -> None:
    """TOUCH, REPLACE, REPLACE_IF and DELETE_IF, each on one user's session key."""
    sessions = SessionStore(store, ttl=3600, clock=lambda: NOW)
    made = [Session(f"conv-{i}", user, "smart", "openai", "gpt-4o-mini", NOW, NOW)
            for i, user in enumerate(["alice", "bob", "}odd{", "carol", "dave"])]
    assert len(_slots([SessionStore.key(s.external_id, s.conversation_id) for s in made])) > 1
    for session in made:
        assert await sessions.create(session) is session
        moved = session.anew(provider="anthropic", model="claude-3-5-haiku")
        assert await sessions.replace_if(session, moved)  # still as it was created
        assert not await sessions.replace_if(session, moved)  # no longer
        assert await sessions.touch(moved)
        upgraded = moved.anew(model="claude-3-5-sonnet", migrations=1)
        assert await sessions.replace(moved, upgraded)
        assert not await sessions.replace(moved, upgraded)  # it changed since `moved` was read
        stored = await sessions.get(session.conversation_id, session.external_id)
        assert stored == upgraded
        assert not await sessions.delete_if(moved)
        assert await sessions.delete_if(stored)
        assert await sessions.get(session.conversation_id, session.external_id) is None


async def test_a_cut_turns_correction_moves_its_conversations_count_once(store: Store) -> None:
    """TURN, TAKE and SET_IF: the response's cut-turn record and its conversation's count live in two
    slots (one script each)."""
    owners = Ownership(store)
    pairs = [(f"resp_{i}", f"conv_{i}") for i in range(6)]
    assert len(_slots([f"sentinel:cut-turn:{r}" for r, _ in pairs] + [f"sentinel:context:{c}" for _, c in pairs])) > 1
    for response, conversation in pairs:
        await owners.grow_context(conversation, 100)
        after = await owners.remember_turn(conversation, 150, 100, None)  # admitted at 100, cut: 150 charged
        assert after == "150"
        await owners.remember_cut_turn(response, conversation, 150, after, None)
        assert await owners.correct_turn(response, 400)  # the provider's count: 400
        assert not await owners.correct_turn(response, 400)  # taken: once
        assert await owners.context_of([conversation]) == 400


async def test_a_cached_value_never_replaces_a_hold_on_any_key(store: Store) -> None:
    """PUT_VALUE on keys of several users (the plan cache's)."""
    cache: GovernanceCache[str] = GovernanceCache(
        store, name="plans", prefix="sentinel:limits:", encode=str, decode=str, ttl=60, grace=60, clock=lambda: NOW)
    users = ["alice", "bob", "}odd{", "carol", "dave"]
    assert len(_slots(["sentinel:limits:" + user for user in users])) > 1
    for user in users:
        await cache.hold(user, 30)
        await cache.put(user, "pro")  # a lookup that read the source before the change: not cached
        held = await cache.get(user)
        assert held is None or held.value is None
        await cache.forget(user)
        await cache.put(user, "pro")
        found = await cache.get(user)
        assert found is not None and found.value == "pro"
