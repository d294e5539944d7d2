"""Serving a catalogue name: its targets in order, with the provider health the tier router uses.

A model name has one target and is never retried elsewhere: its provider's failure reaches the
client (and is recorded against the provider+model's health, which the native API's routing reads;
a read timeout after the request was sent is not, nor a connection dropped after it was sent unless
at once: the caller's request was long, see `is_provider_failure`).
An alias with several targets tries its healthy targets first (in the alias's order) and moves to
the next target when one fails with a provider failure before the first byte (5xx, connect timeout,
refused connection, provider 429, a refusal of the provider key itself; not a read timeout nor a connection dropped after the request was
sent: the provider may have served it) — the same rule as the native API's failover. A single target
costs no health lookup: only a failure is written, and a later success clears it when this process
saw it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from sentinel.domain.catalogue import ModelTarget
from sentinel.errors import SentinelError
from sentinel.routing.failover import asked_wait, is_provider_failure, may_retry
from sentinel.routing.health import ProviderHealth

T = TypeVar("T")
_MAX_REMEMBERED = 10_000


class ModelRoutes:
    """Calls a request's targets in order (see the module docstring)."""

    def __init__(self, health: ProviderHealth) -> None:
        self.health = health
        self._failed: set[tuple[str, str]] = set()  # pairs this process put in backoff

    async def order(self, targets: Sequence[ModelTarget]) -> tuple[list[ModelTarget], set[tuple[str, str]]]:
        """The targets to try (healthy ones first) and the pairs with failures on record (in backoff,
        or out of it with their count kept: an answer clears them, as the tier router's does)."""
        if len(targets) < 2:
            return list(targets), set()
        states = await self.health.states([_pair(t) for t in targets])
        now = self.health.clock()
        available = {pair: state is None or state.until <= now for pair, state in states.items()}
        healthy = [t for t in targets if available[_pair(t)]]
        recorded = {pair for pair, state in states.items() if state is not None}
        return healthy + [t for t in targets if not available[_pair(t)]], recorded

    async def call(
        self,
        targets: Sequence[ModelTarget],
        send: Callable[[ModelTarget], Awaitable[T]],
        on_attempt: Callable[[ModelTarget], None] | None = None,
    ) -> T:
        """`send` to each target in turn until one answers; raise the last provider failure, or at once
        any other error (a client error is the same on every target)."""
        ordered, recorded = await self.order(targets)
        for position, target in enumerate(ordered):
            if on_attempt is not None:
                on_attempt(target)
            try:
                result = await send(target)
            except SentinelError as exc:
                if not is_provider_failure(exc):
                    raise
                await self._report_failure(target, asked_wait(exc))
                if position == len(ordered) - 1 or not may_retry(exc):
                    raise
                continue
            await self._report_success(target, _pair(target) in recorded)
            return result
        raise ValueError("no targets to call")

    async def _report_failure(self, target: ModelTarget, retry_after: float | None) -> None:
        await self.health.record_failure(target.provider, target.upstream_model, retry_after)
        if len(self._failed) < _MAX_REMEMBERED:
            self._failed.add(_pair(target))

    async def _report_success(self, target: ModelTarget, recorded: bool) -> None:
        pair = _pair(target)
        if recorded or pair in self._failed:
            self._failed.discard(pair)
            await self.health.record_success(*pair)


def _pair(target: ModelTarget) -> tuple[str, str]:
    return (target.provider, target.upstream_model)
