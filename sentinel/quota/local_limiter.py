"""The in-process quota limiter for QUOTA_FAILURE_MODE=local (Redis is down).

Same semantics and code as `QuotaLimiter`, over a private `MemoryStore`. Each replica then
enforces the plan on its own, so N replicas admit up to N times a limit between them while Redis
is away; a reservation must be settled by the limiter that made it (the limiter checks).

What it counted is handed back to the shared limiter once that answers again (`hand_back`, which
the meter calls): for each user, the settled part of every counter whose window has not ended —
the count less what reservations still open here hold — is added to the same counter on Redis
(`QuotaLimiter.take`), exactly once (the hand-back's marker, written in the same script: a hand-back
whose reply was lost is sent again unchanged, under the same token), and only then taken off here.
A reservation still open here when Redis is back is settled here (its reconciliation is local) and
its settled amount is handed back after that: counted once, as reconciled. Zion (external) limits
are not handed back: Zion's next reading counts the usage once it is delivered.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from sentinel.domain.plans import Plan
from sentinel.quota.limiter import QuotaLimiter, Reservation
from sentinel.store.memory import MemoryStore


@dataclass(frozen=True, slots=True)
class HandBack:
    """What one user's counters hand back at once: sent as it is until the store answers."""

    token: str
    counts: tuple[tuple[str, int, float], ...]  # (counter key, amount, the end of its window)


class LocalLimiter(QuotaLimiter):
    """A `QuotaLimiter` whose counters live in this process only, until they are handed back."""

    def __init__(
        self,
        *,
        prefix: str = "sentinel:quota",
        clock: Callable[[], float] = time.time,
        ttl_margin: float = 60.0,
    ) -> None:
        # The store's clock drives only key expiry (TTLs are relative); windows follow `clock`.
        super().__init__(MemoryStore(), prefix=prefix, clock=clock, ttl_margin=ttl_margin)
        # user -> {counter key: the end of its window}: what was counted here and not handed back yet.
        self._windows: dict[str, dict[str, float]] = {}
        # user -> {token: reservation}: admitted here and not settled yet (their amounts stay here).
        self._open: dict[str, dict[str, Reservation]] = {}
        self._handing: dict[str, HandBack] = {}  # user -> the hand-back sent and not answered yet

    @property
    def owing(self) -> bool:
        """Whether any user may have counts here to hand back."""
        return bool(self._windows)

    def owes(self, subject: str) -> bool:
        """Whether `subject` may have counts here to hand back (a dict lookup)."""
        return subject in self._windows

    async def _reserve(
        self, subject: str, plan: Plan, requests: int, input_tokens: int, output_tokens: int, tokens_later: bool,
        *, marked: bool, on_lost: Callable[[Reservation], None] | None = None,
    ) -> Reservation:
        reservation = await super()._reserve(subject, plan, requests, input_tokens, output_tokens, tokens_later,
                                             marked=marked, on_lost=on_lost)
        if reservation.allowed and reservation.marker:
            self._open.setdefault(subject, {})[reservation.token] = reservation
            self._counted(reservation, reservation.reserved_at)
        return reservation

    async def _settle(self, reservation: Reservation, deltas: list[int]) -> None:
        await super()._settle(reservation, deltas)
        self._open.get(reservation.subject, {}).pop(reservation.token, None)
        # (usage above the reservation counts in the windows of now: `QuotaLimiter._adjustments`)
        self._counted(reservation, self.clock())

    def keep(self, reservation: Reservation) -> None:
        """`reservation`, admitted here, stays counted as reserved and is settled by nobody (a batch's,
        which no read can settle: `QuotaMeter.hold`): handed back as it is, no longer held here as open."""
        self._open.get(reservation.subject, {}).pop(reservation.token, None)

    def _counted(self, reservation: Reservation, at: float) -> None:
        """Note the counters of `reservation`'s fixed windows current at `at` as counted here."""
        windows = self._windows.setdefault(reservation.subject, {})
        for limit in reservation.limits:
            if limit.external is None:
                key, reset_at, _ = self._slot(reservation.subject, limit, at)
                windows[key] = reset_at

    async def hand_back(self, to: QuotaLimiter, subject: str | None = None) -> None:
        """Hand `to` (the shared limiter, same key names) what was counted here and settled, in windows
        not ended — `subject`'s, or every user's —, and take it off here once `to`'s store took it.
        StoreUnavailable at the first hand-back the store did not take (refused, or its reply lost):
        it is kept as it is, and sent again by the next call (it counts once), then what was counted
        since."""
        if to.prefix != self.prefix:
            raise ValueError("counts are handed back to a limiter of the same key names")
        for each in [subject] if subject is not None else list(self._windows):
            # (again after one sent earlier, during the outage: more may have been counted since)
            while (back := await self._owed(each)) is not None:
                await to.take(each, back.token, back.counts)
                await self._handed(each, back)

    async def drop_settled(self) -> None:
        """Take off here what every user's counters hand back, without sending it: what the shared store
        lost its data under (`sentinel.services.store_loss`) is counted again from the usage ledger,
        which holds these requests' records — handed back after that seed, it would count twice. A
        hand-back sent and not answered yet is dropped too (its take may still land: README, Quotas)."""
        for subject in list(self._windows):
            while (back := await self._owed(subject)) is not None:
                await self._handed(subject, back)

    async def _owed(self, subject: str) -> HandBack | None:
        """What `subject` has to hand back: the hand-back sent and not answered, else a new one of its
        counters' settled amounts (None: nothing; a user with nothing counted or open is forgotten)."""
        sent = self._handing.get(subject)
        if sent is not None:
            return sent
        now = self.clock()
        windows = self._windows.get(subject, {})
        for key in [key for key, reset_at in windows.items() if reset_at <= now]:
            del windows[key]  # ended: it limits nothing any more, on Redis or here
        held: Counter[str] = Counter()
        opened = self._open.get(subject, {})
        for token, reservation in list(opened.items()):
            if not any(key in windows for key in reservation.keys):
                del opened[token]  # never settled here (a batch's) and its windows ended: nothing to hand back
                continue
            for key, amount in zip(reservation.keys, reservation.amounts, strict=True):
                held[key] += amount
        counts = []
        for key, reset_at in windows.items():
            settled = int(await self.store.get(key) or 0) - held[key]
            if settled > 0:
                counts.append((key, settled, reset_at))
        if not counts:
            if not opened:
                self._windows.pop(subject, None)
                self._open.pop(subject, None)
            return None
        back = HandBack(self._new_token(), tuple(counts))
        self._handing[subject] = back
        return back

    async def _handed(self, subject: str, back: HandBack) -> None:
        """`back` was taken: its amounts are Redis's now, no longer counted here (once)."""
        if self._handing.get(subject) is not back:
            return
        del self._handing[subject]
        for key, amount, _ in back.counts:
            # (the memory store never awaits: nothing runs between the read and the write)
            current = int(await self.store.get(key) or 0)
            if current > 0:
                await self.store.incr(key, -min(amount, current))  # (keeps the key's TTL)
