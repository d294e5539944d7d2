"""Tier routing with sticky sessions: which provider+model serves a native request.

`decide()` is read-only: it looks up the session, selects a candidate, and returns a `RouteChoice`
carrying any session write still to be done. A first turn's session is created by `claim()` once the
request is admitted, before its upstream call (`SET NX`: of concurrent first turns, also across
processes, the first decides; the others follow its session as later turns do — bound to its model,
or upgrading it when they asked for a higher tier), and removed by `abandon()` if no model answered
the turn — only if it is still exactly the session it created (recorded before the write, so a turn
cancelled during it removes it too), never one it followed. Each creation carries a claim token of
its own (`Session.claim`), so one whose reply was lost still knows whether the session is its own.
Every other write (an upgrade, a migration, a retry's move, a hit's refresh) is `commit()`ed with
the choice that answered, once it answered, so a request that fails validation or that the quota
refuses creates or changes no session, and one no model answers upgrades or moves none.

Policies (documented in the README):
- a session's provider/model win over a fresh selection; a higher requested tier upgrades the
  session (preferring its provider), a lower one never downgrades it;
- SESSION_FAILOVER=keep (default): a session whose model is in backoff keeps it and the provider's
  error reaches the client; `migrate` moves the session to a healthy model of its tier — only off a
  hard backoff: a soft one (client-causable failures alone, see `sentinel.routing.health`) keeps it,
  as two keys of one person may start one at will;
- a candidate in a soft backoff is avoided while the tier has a healthy or recovering one, and used
  when it has none (as a recovering one is), never a 503 `tier_unavailable`: only hard backoffs
  refuse;
- a session whose model is gone for good (its provider not configured, the tier table naming it
  nowhere, or the provider answering 404 that it no longer serves it: `retired`) moves to a model
  of its tier (of the tier its turn asks for when its own has none left: `_home`, a retry's move
  too) under `keep` too, written before the upstream call over the session as read (`_move`:
  concurrent turns move to one model; the move stays if that model does not answer); a model
  answered as retired is left out of selection for an hour (`ProviderHealth.mark_retired`), unless
  every candidate of the tier is;
- a candidate whose backoff ran out (half-open, see `sentinel.routing.health`) is given one request
  at a time as its trial (claimed in the store, across replicas), while the others keep to the
  tier's healthy candidates (an upgrade whose provider has a healthy one takes no other provider's
  trial); with none, they go to it all the same; a session on it stays on it
  (under `migrate` too: it is out of backoff) and is its trial when none is under way;
- requests without an established session (none, or its first turn, or the turn that upgrades it) are
  retried once, before the first byte, on another healthy candidate, and the session follows the
  retry (`SessionStore.replace_if` from the session the first turn created, if still exactly as
  created, to the model that answered: one a concurrent first turn that followed it was answered
  with meanwhile stays on that model, and the retry's answer is served as a follower's);
  concurrent first turns follow the first one's session (a hit, or an upgrade at a higher tier, with
  the model chosen for that tier); concurrent upgrades and migrations: the
  first answered is written, the others find the session changed since they read it and leave it
  (`SessionStore.replace`);
- the store being unreachable means no stickiness (fresh selection), logged and counted.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from sentinel.domain.identity import Identity
from sentinel.domain.policies import SessionFailover
from sentinel.domain.tiers import TIER_ORDER, TierModelEntry, TierSource
from sentinel.errors import InvalidRequest, ServiceUnavailable, StoreUnavailable
from sentinel.native import ChatRequest
from sentinel.observability.logging import Repeated
from sentinel.observability.metrics import Metrics
from sentinel.routing.health import ProviderHealth, usable
from sentinel.routing.selection import WeightedSelector
from sentinel.routing.sessions import AUTO_PREFIX, Session, SessionStore, auto_conversation_id

log = logging.getLogger("sentinel.router")


def _pair(entry: TierModelEntry) -> tuple[str, str]:
    return (entry.provider, entry.model)


@dataclass
class RouteChoice:
    """Where a request goes, and what to write to its session once the request is known valid."""

    tier: str
    entry: TierModelEntry
    conversation_id: str | None = None
    session: Session | None = None
    pending_write: str | None = None  # "create" | "update" | "touch" | None
    event: str | None = None  # session metric event
    was_unhealthy: bool = False
    tried: list[tuple[str, str]] = field(default_factory=list)
    created: Session | None = None  # the session this first turn created (`claim`), as written
    # The half-open trials this request claimed (provider, model, token), shared by its retries:
    # `TierRouter.release` ends those still held once the request ends.
    trials: list[tuple[str, str, str]] = field(default_factory=list)
    # A migration off a model gone for good (its provider not configured, the tier table naming it
    # nowhere): written before the upstream call (`claim`), so that concurrent turns move together.
    moving: bool = False
    # The tier the turn asked for (`decide`; None: `tier`): a move off a conversation's model whose own
    # tier the operator left no model goes to a model of it (`TierRouter._home`), a retry's move too.
    asked: str | None = None

    @property
    def provider(self) -> str:
        return self.entry.provider

    @property
    def model(self) -> str:
        return self.entry.model

    @property
    def sticky(self) -> bool:
        return self.session is not None

    @property
    def writes_session(self) -> bool:
        """Whether `TierRouter.commit` has a session write to make for this decision."""
        return self.pending_write is not None and self.conversation_id is not None

    @property
    def bound(self) -> bool:
        """The conversation has been served by this model: a session's model, not one chosen for its
        first turn or for the turn that upgraded it."""
        return self.sticky and self.event not in ("created", "upgraded")


class TierRouter:
    """See the module docstring."""

    def __init__(
        self,
        *,
        tiers: TierSource,
        providers: Sequence[str],
        health: ProviderHealth,
        sessions: SessionStore,
        selector: WeightedSelector,
        metrics: Metrics,
        failover: SessionFailover = SessionFailover.keep,
        auto_key: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tiers = tiers
        self.providers = set(providers)
        self.health = health
        self.sessions = sessions
        self.selector = selector
        self.metrics = metrics
        self.failover = failover
        self.auto_key = auto_key
        self.clock = clock
        # A store outage is met by every turn of every conversation: its lines are written when first
        # met, then once a minute with the count (`Repeated`), not once a request.
        self._outage = Repeated(log)

    async def _candidates(self, tier: str) -> list[TierModelEntry]:
        table = await self.tiers.table()
        entries = [e for e in table.get(tier, []) if e.provider in self.providers]
        if not entries:
            raise ServiceUnavailable(
                f"No models are configured for tier '{tier}'", code="no_models_for_tier", retry_after=30
            )
        return entries

    async def _select(
        self, tier: str, trials: list[tuple[str, str, str]], *, prefer: str | None = None,
        exclude: Sequence[tuple[str, str]] = (), unmarked: bool = False,
    ) -> tuple[TierModelEntry, bool]:
        """A candidate of `tier` but those `exclude`d, and whether it has failures on record. `unmarked`:
        only one not marked retired (ServiceUnavailable when there is none)."""
        entries = [e for e in await self._candidates(tier) if (e.provider, e.model) not in exclude]
        states, retired = await self.health.standing([(e.provider, e.model) for e in entries])
        # A model its provider answered as retired is left out while marked (`ProviderHealth.mark_retired`),
        # unless every candidate is: then they are drawn as before (their 404 answered as it was).
        entries = usable(entries, _pair, retired, or_all=not unmarked)
        if not entries:
            raise ServiceUnavailable(f"No other model is available for tier '{tier}'", code="no_alternative")
        now = self.clock()
        healthy: list[TierModelEntry] = []
        recovering: list[TierModelEntry] = []
        free: list[TierModelEntry] = []  # recovering, no other request's trial under way
        soft: list[TierModelEntry] = []  # in a soft backoff: the last resort, never a refusal
        for e in entries:
            state = states[(e.provider, e.model)]
            if state is None:
                healthy.append(e)
            elif state.recovering(now):
                recovering.append(e)
                if not state.trial_running(now):
                    free.append(e)
            elif state.soft:
                soft.append(e)
        # Half-open: a candidate whose backoff ran out gets this request as its trial if no other
        # request's trial runs (`ProviderHealth.claim_trial`); else the request keeps to the healthy
        # ones — or, when there are none, goes to a recovering one all the same (never refused
        # because a trial is under way). A request preferring a provider (an upgrade) that has a
        # healthy model of it takes no other provider's trial: it keeps to its provider. A candidate
        # in a soft backoff (client-causable failures alone: two keys of one person start one at
        # will) is used when there is neither: it may steer traffic, never refuse it.
        if prefer and any(e.provider == prefer for e in healthy):
            free = [e for e in free if e.provider == prefer]
        chosen = await self._trial(free, prefer, trials)
        if chosen is None:
            pool = healthy or recovering or soft
            if not pool:
                wait = min(s.remaining(now) for s in states.values() if s is not None)
                raise ServiceUnavailable(
                    f"All models for tier '{tier}' are currently unavailable", code="tier_unavailable",
                    retry_after=wait,
                )
            chosen = next((e for e in pool if e.provider == prefer), None) if prefer else None
            chosen = chosen or self.selector.choose(pool)
        self.metrics.add(self.metrics.child(self.metrics.model_selections, tier, chosen.provider, chosen.model))
        return chosen, states[(chosen.provider, chosen.model)] is not None

    async def _trial(
        self, free: Sequence[TierModelEntry], prefer: str | None, trials: list[tuple[str, str, str]]
    ) -> TierModelEntry | None:
        """The first of `free` (recovering candidates with no trial under way; the preferred
        provider's first, then by weight) whose trial this request claims (added to `trials`);
        None when none."""
        pool = list(free)
        while pool:
            entry = next((e for e in pool if e.provider == prefer), None) if prefer else None
            entry = entry or self.selector.choose(pool)
            if await self._claim_trial(entry.provider, entry.model, trials):
                return entry
            pool.remove(entry)  # another request's trial claimed it first
        return None

    async def _claim_trial(self, provider: str, model: str, trials: list[tuple[str, str, str]]) -> bool:
        token = uuid.uuid4().hex
        if not await self.health.claim_trial(provider, model, token):
            return False
        trials.append((provider, model, token))
        return True

    async def release(self, decision: RouteChoice) -> None:
        """The request ended: end the trials it claimed that are still held (one whose request was
        refused before it was sent, sent elsewhere, or that ended with neither a success nor a
        provider failure; one that reported is no longer held, and is left). Never raises."""
        trials = list(decision.trials)
        decision.trials.clear()  # (the list its retries share)
        for provider, model, token in trials:
            await self.health.release_trial(provider, model, token)

    def conversation_id(self, identity: Identity, req: ChatRequest) -> str | None:
        if req.conversation_id is not None:
            if req.conversation_id.startswith(AUTO_PREFIX):
                raise InvalidRequest(
                    f"conversation_id must not begin with '{AUTO_PREFIX}': those ids are derived by Sentinel",
                    details={"param": "conversation_id"},
                )
            return req.conversation_id
        if not self.auto_key:
            return None
        system = "\n".join(m.text() for m in req.messages if m.role == "system")
        first_user = next((m.text() for m in req.messages if m.role == "user"), "")
        return auto_conversation_id(identity.external_id, system, first_user)

    async def decide(self, identity: Identity, req: ChatRequest) -> RouteChoice:
        tier = req.tier
        conv = self.conversation_id(identity, req)
        session: Session | None = None
        if conv is not None:
            try:
                session = await self.sessions.get(conv, identity.external_id)
            except StoreUnavailable:
                self.metrics.add(self.metrics.child(self.metrics.sessions, "store_error"))
                self._outage.warning("session store unavailable: serving without stickiness")
                conv = None
        trials: list[tuple[str, str, str]] = []
        if session is None:
            entry, unhealthy = await self._select(tier, trials)
            decision = RouteChoice(tier, entry, conv, None, "create" if conv else None, "created" if conv else None,
                                   trials=trials, asked=tier)
            decision.was_unhealthy = unhealthy
            return decision
        if TIER_ORDER[tier] > TIER_ORDER.get(session.tier, -1):  # a tier no longer known: the lowest
            entry, unhealthy = await self._select(tier, trials, prefer=session.provider)
            decision = RouteChoice(tier, entry, conv, session, "update", "upgraded", trials=trials, asked=tier)
            decision.was_unhealthy = unhealthy
            return decision
        decision = await self._sticky(session, tier)
        decision.asked = tier
        return decision

    async def _sticky(self, session: Session, asked: str) -> RouteChoice:
        named = await self._named(session.tier, session.provider, session.model)
        entry = named or TierModelEntry(provider=session.provider, model=session.model, relative_cost=1)
        pair = (session.provider, session.model)
        # Its health and its retired mark in one MGET: the round trip a turn made for its health alone.
        states, retired = await self.health.standing([pair])
        state = states[pair]
        now = self.clock()
        # Only a hard backoff moves it under `migrate`: a soft one two keys of one person start at will.
        hard = state is not None and state.in_backoff(now) and not state.soft
        trials: list[tuple[str, str, str]] = []
        if pair in retired and session.provider in self.providers and named is not None:
            # Its provider answered that it no longer serves it (`retired`): moved at once, as a model
            # gone for good, to a model of its tier not marked too — rather than paying the 404's round
            # trip first. With none (every other marked, or unavailable), it goes as before: a 404
            # answered so moves it then if it can (`retired`), else is the client's 502.
            home = await self._home(session.tier, asked)
            try:
                new, unhealthy = await self._select(home, trials, exclude=[pair], unmarked=True)
            except ServiceUnavailable:
                pass
            else:
                return RouteChoice(home, new, session.conversation_id, session, "update", "migrated",
                                   was_unhealthy=unhealthy, trials=trials, moving=True)
        # Gone for good: its provider is not configured here, or the operator took the model out of
        # every tier. It moves under `keep` too, written before the call (`claim`, `_move`).
        gone = session.provider not in self.providers or named is None
        if gone or (hard and self.failover is SessionFailover.migrate):
            home = await self._home(session.tier, asked)
            new, unhealthy = await self._select(home, trials, exclude=[(session.provider, session.model)])
            return RouteChoice(home, new, session.conversation_id, session, "update", "migrated",
                               was_unhealthy=unhealthy, trials=trials, moving=gone)
        if state is not None and state.recovering(now) and not state.trial_running(now):
            # Its backoff ran out: the conversation goes to its model either way (as before), and is
            # its trial when no other request's is under way, so that others keep away meanwhile.
            await self._claim_trial(session.provider, session.model, trials)
        decision = RouteChoice(session.tier, entry, session.conversation_id, session, "touch", "hit", trials=trials)
        decision.was_unhealthy = state is not None
        return decision

    async def _home(self, tier: str, asked: str) -> str:
        """The tier a conversation of `tier` moving off its model is moved within: its own, or the one
        its turn `asked` for when the operator left its own no model (a tier reset or taken out of the
        table, or all its providers unconfigured) — else every turn of it was a 503 `no_models_for_tier`,
        at any tier asked, until its session expired."""
        table = await self.tiers.table()
        return tier if any(e.provider in self.providers for e in table.get(tier, [])) else asked

    async def _entry_for(self, tier: str, provider: str, model: str) -> TierModelEntry:
        """The tier table's entry for a conversation's provider+model (its prices included): in its
        tier, else in any tier; a bare entry (prices unknown) when the table no longer names it (a
        session another process wrote with its own table: `claim`)."""
        named = await self._named(tier, provider, model)
        return named or TierModelEntry(provider=provider, model=model, relative_cost=1)

    async def _named(self, tier: str, provider: str, model: str) -> TierModelEntry | None:
        """The tier table's entry for provider+model: in `tier`, else in any tier; None when no tier
        names it (the operator took it out: a conversation on it moves, `_sticky`)."""
        table = await self.tiers.table()
        for entries in (table.get(tier, []), *table.values()):
            for entry in entries:
                if (entry.provider, entry.model) == (provider, model):
                    return entry
        return None

    async def claim(self, identity: Identity, decision: RouteChoice) -> None:
        """A first turn's session, created before its upstream call (the request admitted). If a
        concurrent first turn created it first, this one follows that session: at the same or a
        lower tier it is served by that one's model (`entry`, `tier`: the caller translates again)
        and bound to it as any later turn (a hit); at a higher tier it upgrades that session, with
        the model it chose for its tier, written once answered (`commit`). A write whose reply was
        lost is told apart by the session's claim token (`SessionStore.create`); one whose outcome
        stays unknown (the store down) is settled once the turn ends: `commit` moves or creates it,
        `abandon` removes it, each only if still exactly as written. A session whose provider is not
        configured here (another process's) is migrated, as `_sticky` does. Raises only what reading
        the tier table and choosing a model raise (ServiceUnavailable), never the store's errors.
        A migration off a model gone for good (`RouteChoice.moving`) is written here too (`_move`)."""
        if decision.moving:
            await self._move(decision)
            return
        if decision.pending_write != "create" or decision.conversation_id is None:
            return
        now = self.clock()
        session = Session(
            decision.conversation_id, identity.external_id, decision.tier, decision.provider, decision.model, now, now,
        )
        # Recorded before the write: a first turn cancelled during it still removes (`abandon`) the
        # session if it was written — only ever these bytes (its claim token theirs alone), never a
        # session another request made.
        decision.created = replace(session)  # a copy: `touch` updates the decision's own
        try:
            won = await self.sessions.create(session)  # a lost reply settled by the claim token
        except StoreUnavailable:  # written or not, unknown: `commit` settles it once answered
            self.metrics.add(self.metrics.child(self.metrics.sessions, "store_error"))
            self._outage.warning("could not create the session (store unavailable)")
            return
        decision.session = won
        if won is session:
            decision.pending_write = "touch"  # its event stays "created": counted once answered
            return
        decision.created = None  # a concurrent first turn created it first: not this one's to remove
        if TIER_ORDER[decision.tier] > TIER_ORDER.get(won.tier, -1):
            decision.pending_write, decision.event = "update", "upgraded"
            return
        if won.provider not in self.providers:
            # Created by a process configured otherwise (a rolling deploy that drops a provider):
            # this one cannot call its model (that was a KeyError, a 500). As a later turn's session
            # on a provider gone (`_sticky`), it moves to a model of its tier once answered.
            home = await self._home(won.tier, decision.tier)
            if home != decision.tier:
                decision.entry, decision.was_unhealthy = await self._select(
                    home, decision.trials, exclude=[(won.provider, won.model)])
                decision.tier = home
            decision.pending_write, decision.event = "update", "migrated"
            return
        if (won.tier, won.provider, won.model) != (decision.tier, decision.provider, decision.model):
            decision.entry = await self._entry_for(won.tier, won.provider, won.model)
            decision.tier = won.tier
            decision.was_unhealthy = True  # its health unread: `report` records a success once answered
        decision.pending_write, decision.event = "touch", "hit"

    async def retired(self, decision: RouteChoice) -> RouteChoice | None:
        """`decision`'s model answered that its provider no longer serves it (`ModelRetired`): the
        choice to send the request to instead, once, or None (already a retry; no other model in the
        tier). A conversation bound to the model moves off it under `keep` too, written before the
        call (`_move`: concurrent turns move to one model); one not bound yet (a first turn, an
        upgrade) is retried as after a provider failure (its session follows the retry). No failure is
        recorded against the model's health: it is not failing, and no backoff brings it back; it is
        marked retired (`ProviderHealth.mark_retired`), so selection leaves it out for a while."""
        log.warning("the provider no longer serves a tier's model; take it out of the tier table",
                    extra={"model": f"{decision.provider}/{decision.model}", "tier": decision.tier})
        # Remembered for a while (across replicas), so that first turns stop drawing it: not a failure.
        await self.health.mark_retired(decision.provider, decision.model)
        if decision.tried:
            return None
        retry = await self._retry(decision, [(decision.provider, decision.model)])
        if retry is None:
            return None
        if decision.bound:  # moved by `moved`, once the request is known to suit the new model
            retry.pending_write, retry.event, retry.moving = "update", "migrated", True
        elif decision.sticky:
            retry.pending_write = "update"  # a first turn's session follows the retry (see `alternative`)
        return retry

    async def moved(self, retry: RouteChoice) -> bool:
        """Write the move of a `retired` retry (`_move`), if it is one; False when the session is now
        on a model the retry may not go to (moved back to the retired one meanwhile)."""
        if not retry.moving:
            return True
        await self._move(retry)
        return (retry.provider, retry.model) not in retry.tried

    async def _move(self, decision: RouteChoice) -> None:
        """Write `decision`'s migration (`moving`: its session's model is gone for good) before its
        upstream call, only over the session as read (`SessionStore.replace`): of concurrent turns
        one moves it, and the others — finding it changed — follow the session as it now is (its
        model, a hit), so every turn of the conversation goes to one new model. The move stays if no
        model answers the turn: the old model cannot serve the conversation any more. The store
        down: written once answered, if it can be then (`commit`). Raises nothing but what choosing
        a model raises."""
        read = decision.session
        decision.moving = False
        if read is None or decision.conversation_id is None:
            return
        new = replace(read, tier=decision.tier, provider=decision.provider, model=decision.model,
                      migrations=read.migrations + 1)
        try:
            if await self.sessions.replace(read, new):
                log.info("session moved off a model gone for good", extra={
                    "from": f"{read.provider}/{read.model}", "to": f"{new.provider}/{new.model}"})
                self.metrics.add(self.metrics.child(self.metrics.sessions, "migrated"))
                decision.session, decision.pending_write, decision.event = new, "touch", None
                return
            current = await self.sessions.get(decision.conversation_id, read.external_id)
            if current is None:  # expired meanwhile: created anew on this model, unless another's is there
                anew = new.anew(migrations=0)
                current = await self.sessions.create(anew)
                if current is anew:
                    decision.session, decision.pending_write, decision.event = anew, "touch", "created"
                    return
        except StoreUnavailable:
            self.metrics.add(self.metrics.child(self.metrics.sessions, "store_error"))
            self._outage.warning("could not move a session off a model gone for good (store unavailable)")
            return  # written once answered (`commit`), as any migration
        if current.provider not in self.providers:
            return  # (another process's, on a provider not configured here: written once answered)
        # Moved (or upgraded) by a concurrent turn first: this one follows the session as it now is.
        decision.session = current
        decision.tier = current.tier
        decision.entry = await self._entry_for(current.tier, current.provider, current.model)
        decision.was_unhealthy = True  # its health unread: `report` records a success once answered
        decision.pending_write, decision.event = "touch", "hit"

    async def abandon(self, decision: RouteChoice) -> None:
        """No model answered this first turn: remove the session it created, if still exactly as
        created (a session it followed, or one changed meanwhile, stays). Never raises."""
        if decision.created is None:
            return
        try:
            await self.sessions.delete_if(decision.created)
        except StoreUnavailable:
            self.metrics.add(self.metrics.child(self.metrics.sessions, "store_error"))
            self._outage.warning("could not remove an unanswered first turn's session (store unavailable)")

    async def commit(self, identity: Identity, decision: RouteChoice) -> None:
        """Apply the decision's session write, once its model answered the request. Never raises."""
        if decision.pending_write is None or decision.conversation_id is None:  # (`writes_session`, narrowed)
            return
        now = self.clock()
        try:
            if decision.pending_write == "create":
                session = Session(
                    decision.conversation_id, identity.external_id, decision.tier,
                    decision.provider, decision.model, now, now,
                )
                moved = False
                if decision.created is not None:
                    # Its claim failed with the store, written or not (`claim`): if written and
                    # still exactly as created, it moves to the model that answered (the same one
                    # but for a retry); created here otherwise, with the claim's token, so that a
                    # session of its claim another turn was answered with is found its own, and left.
                    session.claim = decision.created.claim
                    moved = await self.sessions.replace_if(decision.created, session)
                won = session if moved else await self.sessions.create(session)
                decision.session = won
                if won is not session:
                    return  # a concurrent first turn was answered first: the session is its own
            elif decision.session is not None:
                read = decision.session
                if decision.pending_write == "touch":
                    event = decision.event
                    if not await self.sessions.touch(read):
                        # Gone (the first turn it followed was answered by no model and removed
                        # it; or it expired) or changed meanwhile: this model answered, so the
                        # session is created anew unless another request's is there.
                        anew = read.anew(last_seen_at=now)  # (not the claim of the one it followed)
                        decision.session = await self.sessions.create(anew)
                        if decision.session is anew:
                            event = "created"
                    if event:
                        self.metrics.add(self.metrics.child(self.metrics.sessions, event))
                    return
                migrated = decision.event == "migrated"
                new = replace(read, tier=decision.tier, provider=decision.provider, model=decision.model,
                              migrations=read.migrations + (1 if migrated else 0))
                if decision.created is not None:
                    # A first turn's retry: the session it created moves to the retry's model only
                    # if still exactly as created. A concurrent first turn that followed it and was
                    # answered by its model refreshed it: that model has served the conversation.
                    written = await self.sessions.replace_if(decision.created, new)
                else:
                    # Only over the session as `decide` read it: a concurrent request that changed
                    # it first (its own upgrade or migration, answered sooner) keeps its change.
                    written = await self.sessions.replace(read, new)
                if not written:
                    # Changed (or served) by a concurrent request: left as it is. Gone (the first
                    # turn this one followed was answered by no model and removed it; or it
                    # expired): this model answered, so it is created anew.
                    anew = new.anew(last_seen_at=now)
                    if await self.sessions.create(anew) is not anew:
                        log.info("session changed by a concurrent request; left as it is",
                                 extra={"event": decision.event, "model": f"{decision.provider}/{decision.model}"})
                        if decision.created is not None:  # it created the session, and was answered
                            self.metrics.add(self.metrics.child(self.metrics.sessions, "created"))
                        return
                    new = anew
                decision.session = new
                if migrated:
                    log.info("session migrated", extra={"from": f"{read.provider}/{read.model}",
                                                        "to": f"{new.provider}/{new.model}"})
        except StoreUnavailable:
            self.metrics.add(self.metrics.child(self.metrics.sessions, "store_error"))
            self._outage.warning("could not save the session (store unavailable)")
            return
        if decision.event:
            self.metrics.add(self.metrics.child(self.metrics.sessions, decision.event))

    async def may_serve(self, decision: RouteChoice) -> list[TierModelEntry]:
        """The models that may answer `decision`'s request: its own and the other candidates of the
        tier a retry moves it within (`_retry`) — under `keep` too, for a conversation bound to its
        model: a 404 saying the provider retired that model moves it (`retired`), so its reservation
        and image rule must cover the model it moves to (a larger output cap: what the new model is
        sent). (A first turn that follows a concurrent one's session, `claim`, is served by that
        session's model: ask again then.)"""
        home = await self._home(decision.tier, decision.asked or decision.tier)
        table = await self.tiers.table()
        return [decision.entry, *(e for e in table.get(home, []) if e.provider in self.providers)]

    async def _retry(self, decision: RouteChoice, tried: list[tuple[str, str]]) -> RouteChoice | None:
        """A healthy candidate but those `tried` of `decision`'s tier — of the tier its turn asked
        for when the operator left its own none (`_home`, as a conversation's move in `_sticky`) —,
        as `decision`'s retry (its session, pending write and trials carried over), or None when there
        is no other. Its past failures are cleared once it answers (`report`), as a first choice's are."""
        home = await self._home(decision.tier, decision.asked or decision.tier)
        try:
            entry, unhealthy = await self._select(home, decision.trials, exclude=tried)
        except ServiceUnavailable:
            return None
        return RouteChoice(home, entry, decision.conversation_id, decision.session, decision.pending_write,
                           decision.event, was_unhealthy=unhealthy, tried=tried, created=decision.created,
                           trials=decision.trials, asked=decision.asked)

    async def alternative(self, decision: RouteChoice) -> RouteChoice | None:
        """Another healthy candidate of the tier for a retry before the first byte, or None."""
        # Keep binds a session only to a model that has served the conversation (`bound`).
        if decision.bound and self.failover is SessionFailover.keep:
            return None
        retry = await self._retry(decision, [*decision.tried, (decision.provider, decision.model)])
        if retry is None:
            return None
        if decision.sticky:
            # A first turn's session (`claim`) is moved to the retry's model if no other turn was
            # answered with it meanwhile (`commit`), and still counted as created; an upgrade is
            # still one.
            retry.pending_write = "update"
            retry.event = "migrated" if decision.bound else decision.event
        return retry

    async def report(
        self, decision: RouteChoice, *, ok: bool, retry_after: float | None = None, caller: str | None = None
    ) -> None:
        """Record the decision's answer: `ok`, or a provider failure (`retry_after`: the wait its
        answer asked for; `caller`: the user, for a failure a client may have caused — see
        `ProviderHealth.record_failure`)."""
        if ok:
            if decision.was_unhealthy:
                await self.health.record_success(decision.provider, decision.model)
        else:
            await self.health.record_failure(decision.provider, decision.model, retry_after, caller)
