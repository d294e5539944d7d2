"""Serving a catalogue name: its targets in order, with the provider health the tier router uses.

A model name has one target and is never retried elsewhere: its provider's failure reaches the
client (and is recorded against the provider+model's health, which the native API's routing reads;
a read timeout after the request was sent is not, nor a connection dropped after it was sent unless
at once: the caller's request was long, see `is_provider_failure`).
An alias with several targets tries its healthy targets first (in the alias's order; one whose
backoff ran out counts as healthy when it would be tried first and this request claims its trial —
`ProviderHealth.claim_trial` — or when another target comes before it: one tried only if that one
fails claims no trial; while another request's trial of it runs it comes after the healthy ones,
before those in backoff: first those in a soft one — client-causable failures alone, see
`sentinel.routing.health`, likely to serve an ordinary request —, then those in a hard one; an
alias refuses no request for a backoff) and moves to the next target when one fails with a provider failure before the first byte (5xx, connect timeout,
refused connection, provider 429, a refusal of the provider key itself; not a read timeout nor a connection dropped after the request was
sent: the provider may have served it; nor to another provider's target for a request that stores an
object upstream or names one: `one_provider`) — the same rule as the native API's failover; a stream that
ends with the provider's `overloaded_error` event after it began counts too (`failed_mid_stream`), retried as a 529 when it
came before the answer's first block (`OverloadedAtStart`: the stream's opening was held back; the last target's is relayed as it
came), never after it; a 429 refusing the
request as larger than the provider's per-minute limit moves on too, counting against no health. So does a 404
saying the provider no longer serves the target's model (`ModelRetired`, the native rule): no failure, not
charged, and the pair is marked retired (`ProviderHealth.mark_retired`), which later requests skip as they
skip a target in backoff (`usable`) — unless every target is marked: then they go in the alias's order. A single target
costs no health lookup: only a failure is written, and a later success clears it when this process
saw it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar, cast

from sentinel.domain.catalogue import ModelTarget
from sentinel.errors import SentinelError
from sentinel.providers.errors import ModelRetired, OverloadedAtStart
from sentinel.routing.failover import (
    asked_wait,
    is_provider_failure,
    may_retry,
    overloaded_mid_stream,
    too_large_here,
    witness,
)
from sentinel.routing.health import ProviderHealth, usable

T = TypeVar("T")
_MAX_REMEMBERED = 10_000


class ModelRoutes:
    """Calls a request's targets in order (see the module docstring)."""

    def __init__(self, health: ProviderHealth) -> None:
        self.health = health
        self._failed: set[tuple[str, str]] = set()  # pairs this process put in backoff

    async def order(
        self, targets: Sequence[ModelTarget], trials: list[tuple[str, str, str]] | None = None
    ) -> tuple[list[ModelTarget], set[tuple[str, str]]]:
        """The targets to try (healthy ones first) and the pairs with failures on record (in backoff,
        or out of it with their count kept: an answer clears them, as the tier router's does). A
        half-open trial claimed for the first target is added to `trials` (provider, model, token)."""
        if len(targets) < 2:
            return list(targets), set()
        states, retired = await self.health.standing([_pair(t) for t in targets])
        # One its provider answered as retired is left out while marked, unless every one is (`usable`).
        targets = usable(targets, _pair, retired)
        now = self.health.clock()
        first: list[ModelTarget] = []  # in the alias's order
        waiting: list[ModelTarget] = []  # recovering, another request's trial under way
        soft: list[ModelTarget] = []  # in a soft backoff: likelier to answer than one in a hard backoff
        out: list[ModelTarget] = []  # in a hard backoff
        for target in targets:
            state = states[_pair(target)]
            if state is None:
                first.append(target)
            elif state.in_backoff(now):
                (soft if state.soft else out).append(target)
            elif first:  # reached only if one before it fails: no trial claimed for it
                first.append(target)
            elif not state.trial_running(now) and await self._claim(target, trials):
                first.append(target)  # this request is its trial
            else:
                waiting.append(target)
        recorded = {pair for pair, state in states.items() if state is not None}
        return first + waiting + soft + out, recorded

    async def counting(self, targets: Sequence[ModelTarget]) -> ModelTarget | None:
        """For a call that only reads health (`/v1/messages/count_tokens`: it writes none, see
        `MessagesService.count_tokens`): the first of `targets` (those marked retired left out, unless
        every one is: `usable`) not in a hard backoff — one in a soft backoff is asked, as a soft
        backoff never refuses —; None when every one is in a hard backoff. One read of the store (all
        healthy when it is down); no trial claimed: a count is no verdict on the model's health."""
        states, retired = await self.health.standing([_pair(t) for t in targets])
        now = self.health.clock()
        for target in usable(targets, _pair, retired):
            state = states[_pair(target)]
            if state is None or state.soft or not state.in_backoff(now):
                return target
        return None

    async def call(
        self,
        targets: Sequence[ModelTarget],
        send: Callable[[ModelTarget], Awaitable[T]],
        on_attempt: Callable[[ModelTarget], None] | None = None,
        caller: str | None = None,
        one_provider: bool = False,
    ) -> T:
        """`send` to each target in turn until one answers; raise the last provider failure, or at once
        any other error (a client error is the same on every target). `caller`: the user's id, which a
        failure a client can cause is recorded with (`witness`). `one_provider`: a request that stores
        an object upstream or names one goes on only to targets of the provider it was first sent to
        (another keeps no object of that one's: it was created, or looked for, where object calls do
        not go)."""
        trials: list[tuple[str, str, str]] = []
        try:
            ordered, recorded = await self.order(targets, trials)
            if one_provider and ordered:
                ordered = [t for t in ordered if t.provider == ordered[0].provider]
            for position, target in enumerate(ordered):
                if on_attempt is not None:
                    on_attempt(target)
                try:
                    result = await send(target)
                except SentinelError as exc:
                    last = position == len(ordered) - 1
                    if isinstance(exc, OverloadedAtStart):  # a stream overloaded before its first block
                        if last:  # nowhere else to go: the stream as it came (counted as it ends)
                            return cast(T, exc.relay())
                        exc.drop()
                    if isinstance(exc, ModelRetired):  # gone for good: no failure, remembered (`order`)
                        await self.health.mark_retired(*_pair(target))
                    elif is_provider_failure(exc):
                        await self._report_failure(target, asked_wait(exc), witness(exc, caller))
                    elif not too_large_here(exc):  # (too large for this one's limit: not its failure)
                        raise
                    if last or not may_retry(exc):
                        raise
                    continue
                await self._report_success(target, _pair(target) in recorded)
                return result
            raise ValueError("no targets to call")
        finally:  # a trial that had no verdict (a client error, cancelled) lets the next one go
            for provider, model, token in trials:
                await asyncio.shield(self.health.release_trial(provider, model, token))

    async def _claim(self, target: ModelTarget, trials: list[tuple[str, str, str]] | None) -> bool:
        token = uuid.uuid4().hex
        if not await self.health.claim_trial(*_pair(target), token):
            return False
        if trials is not None:
            trials.append((*_pair(target), token))
        return True

    async def failed_mid_stream(self, target: ModelTarget, code: str | None) -> None:
        """A stream `target` began ended with the provider's error event of type `code`: recorded against
        its health when that error is Anthropic's overload (`overloaded_mid_stream`), as its 529
        before the first byte is; not retried here (the client was sent the stream's opening already: one
        overloaded before its first block was retried in `call`, `OverloadedAtStart`)."""
        if overloaded_mid_stream(target.kind, code):
            await self._report_failure(target, None)

    async def _report_failure(
        self, target: ModelTarget, retry_after: float | None, caller: str | None = None
    ) -> None:
        await self.health.record_failure(target.provider, target.upstream_model, retry_after, caller)
        if len(self._failed) < _MAX_REMEMBERED:
            self._failed.add(_pair(target))

    async def _report_success(self, target: ModelTarget, recorded: bool) -> None:
        pair = _pair(target)
        if recorded or pair in self._failed:
            self._failed.discard(pair)
            await self.health.record_success(*pair)


def _pair(target: ModelTarget) -> tuple[str, str]:
    return (target.provider, target.upstream_model)
