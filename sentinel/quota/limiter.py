"""The atomic quota limiter: reserve before forwarding, reconcile after.

`reserve()` checks every limit of a plan and, only if all of them fit, adds the request's amounts
to all of them, in one atomic script call (Lua on Redis, its Python twin in memory). So concurrent
requests on any number of replicas can never overrun a limit, and a denied request consumes
nothing. `commit()` later replaces the estimated token amounts with the real ones (in the same
windows the reservation used; usage above the reservation settled after a window ended goes to the
window of now), and `release()` gives everything back for a request that was never forwarded.

Windows are fixed and aligned to the Unix epoch, one counter per (metric, window):
`{prefix}:{<subject>}:{metric}:{window_seconds}:{window_index}`. The braces are a Redis Cluster
hash tag, so all keys of one script live in one slot; `%`, `{` and `}` in the subject are written
`%25`, `%7B`, `%7D`, or a subject such as `}x` would end the tag early (an empty tag hashes the
whole key: one user's counters in several slots). Each key expires `ttl_margin` seconds after
its window ends. Time comes from the caller's clock, passed to the script (not Redis TIME), so
replicas agree on window indexes and tests can move time.

Limits with `ExternalUsage` (Zion mode) count locally per reading instead of per window: their key
ends in `x<snapshot>`, the script adds `external.used`, and the key lives `window_seconds` +
margin after its last increment. Such a key can expire while a reservation on it is still running
(a long stream) and be made again, under the same name, by the next reservation: a refund then
would take back that one's amount, so a reservation older than `window_seconds` gives nothing back
on an external key (its amount stays counted, against the user, until the next reading).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sentinel.domain.plans import Limit, Plan
from sentinel.quota.decision import Decision, LimitState
from sentinel.store.base import LocalOps, Script, Store

_RESERVE_LUA = """
local n = #KEYS
local used = {}
local denied = 0
for i = 1, n do
  local a = (i - 1) * 4
  local amount = tonumber(ARGV[a + 1])
  local limit = tonumber(ARGV[a + 2])
  local room = limit - tonumber(ARGV[a + 3])
  local current = tonumber(redis.call('GET', KEYS[i]) or '0')
  used[i] = current
  if denied == 0 and (amount > 0 or limit > 0) and current + math.max(amount, 1) > room then
    denied = i
  end
end
if denied == 0 then
  for i = 1, n do
    local a = (i - 1) * 4
    local amount = tonumber(ARGV[a + 1])
    if amount > 0 then
      used[i] = redis.call('INCRBY', KEYS[i], amount)
      redis.call('PEXPIRE', KEYS[i], ARGV[a + 4])
    end
  end
end
table.insert(used, 1, denied)
return used
"""


def _reserve_local(ops: LocalOps, keys: list[str], args: list[str]) -> list[int]:
    used: list[int] = []
    denied = 0
    for i, key in enumerate(keys):
        amount, cap, offset = int(args[4 * i]), int(args[4 * i + 1]), int(args[4 * i + 2])
        current = int(ops.get(key) or 0)
        used.append(current)
        # A limit of 0 bans its metric: it refuses any amount of it, never a request needing none.
        if denied == 0 and (amount > 0 or cap > 0) and current + max(amount, 1) > cap - offset:
            denied = i + 1
    if denied == 0:
        for i, key in enumerate(keys):
            amount = int(args[4 * i])
            if amount > 0:
                used[i] = ops.incrby(key, amount)
                ops.expire(key, int(args[4 * i + 3]) / 1000)
    return [denied, *used]


# A delta per key (ARGV[2i-1]) and how to apply it (ARGV[2i]): "" adjusts a window that still exists
# (an expired window no longer limits anything: a refund there is moot); a TTL in ms adds to the
# window, creating it if needed (usage above a reservation, settled after its window ended, lands
# in the window current at the settlement). A counter never goes below 0.
_ADJUST_LUA = """
for i = 1, #KEYS do
  local delta = tonumber(ARGV[2 * i - 1])
  local ttl = ARGV[2 * i]
  if delta ~= 0 and (ttl ~= '' or redis.call('EXISTS', KEYS[i]) == 1) then
    local value = redis.call('INCRBY', KEYS[i], delta)
    if value < 0 then
      redis.call('INCRBY', KEYS[i], -value)
    end
    if ttl ~= '' and redis.call('PTTL', KEYS[i]) < 0 then
      redis.call('PEXPIRE', KEYS[i], ttl)
    end
  end
end
return 1
"""


def _adjust_local(ops: LocalOps, keys: list[str], args: list[str]) -> int:
    for n, key in enumerate(keys):
        delta, ttl = int(args[2 * n]), args[2 * n + 1]
        if delta != 0 and (ttl != "" or ops.get(key) is not None):
            value = ops.incrby(key, delta)
            if value < 0:
                ops.incrby(key, -value)  # incrby keeps the key's TTL, unlike set
            if ttl != "" and ops.pttl(key) < 0:
                ops.expire(key, int(ttl) / 1000)
    return 1


RESERVE = Script("sentinel_quota_reserve", _RESERVE_LUA, _reserve_local)
ADJUST = Script("sentinel_quota_adjust", _ADJUST_LUA, _adjust_local)


def hash_tag(subject: str) -> str:
    """`subject` as the hash tag of its keys: itself, with `%`, `{`, `}` percent-encoded (one-to-one,
    so two subjects never share counters; plain ids are unchanged)."""
    return subject.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


@dataclass(eq=False)
class Reservation:
    """What one `reserve()` took: the decision, the counter keys and the amounts per key.

    A denied reservation took nothing and is already settled; `commit`/`release` settle an
    admitted one, once (later calls are no-ops).
    """

    subject: str
    decision: Decision
    keys: tuple[str, ...]
    limits: tuple[Limit, ...]
    amounts: tuple[int, ...]
    requests: int
    input_tokens: int
    output_tokens: int
    settled: bool = False
    owner: QuotaLimiter | None = field(default=None, repr=False)  # the limiter that made it
    reserved_at: float = 0.0  # the limiter's clock when it was made

    @property
    def allowed(self) -> bool:
        return self.decision.allowed


class QuotaLimiter:
    """Atomic multi-limit quotas over a Store (Redis across replicas, memory in one process)."""

    def __init__(
        self,
        store: Store,
        *,
        prefix: str = "sentinel:quota",
        clock: Callable[[], float] = time.time,
        ttl_margin: float = 60.0,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.clock = clock
        self.ttl_margin = ttl_margin
        self._bases: dict[tuple[str, str, int], str] = {}  # key prefixes, built once per user and limit

    def _base(self, subject: str, limit: Limit) -> str:
        key = (subject, limit.metric, limit.window_seconds)
        base = self._bases.get(key)
        if base is None:
            base = f"{self.prefix}:{{{hash_tag(subject)}}}:{limit.metric}:{limit.window_seconds}"
            if len(self._bases) >= 50_000:
                self._bases.clear()
            self._bases[key] = base
        return base

    def _slot(self, subject: str, limit: Limit, now: float) -> tuple[str, float, int]:
        """(key, reset_at, ttl_ms) of the counter `limit` uses at time `now`."""
        base = self._base(subject, limit)
        if limit.external is not None:
            reset_at = limit.external.resets_at or now + limit.window_seconds
            ttl = limit.window_seconds + self.ttl_margin
            return f"{base}:x{limit.external.snapshot}", reset_at, math.ceil(ttl * 1000)
        index = math.floor(now / limit.window_seconds)
        reset_at = float((index + 1) * limit.window_seconds)
        return f"{base}:{index}", reset_at, math.ceil((reset_at - now + self.ttl_margin) * 1000)

    async def reserve(
        self, subject: str, plan: Plan, *, requests: int = 1, input_tokens: int, output_tokens: int
    ) -> Reservation:
        """Check every limit of `plan` and, only if all fit, count the request against all of them.

        Raises StoreUnavailable when the store cannot be reached (the caller applies the failure
        mode); a denial is not an exception: see `reservation.decision` / `decision.to_error()`.
        """
        if min(requests, input_tokens, output_tokens) < 0:
            raise ValueError("reserved amounts cannot be negative")
        wanted = {"requests": requests, "input_tokens": input_tokens, "output_tokens": output_tokens}
        now = self.clock()
        slots = [self._slot(subject, limit, now) for limit in plan.limits]
        amounts = tuple(wanted[limit.metric] for limit in plan.limits)
        keys = tuple(key for key, _, _ in slots)
        denied = 0
        used: list[int] = []
        if plan.limits:
            args: list[int] = []
            for limit, amount, (_, _, ttl_ms) in zip(plan.limits, amounts, slots, strict=True):
                args += [amount, limit.limit, limit.offset, ttl_ms]
            denied, *used = (int(v) for v in await self.store.run(RESERVE, keys, args))
        states = tuple(
            LimitState(limit, count + limit.offset, amount, reset_at)
            for limit, count, amount, (_, reset_at, _) in zip(plan.limits, used, amounts, slots, strict=True)
        )
        decision = Decision.from_states(states, denied - 1 if denied else None, now)
        return Reservation(
            subject,
            decision,
            keys,
            plan.limits,
            amounts,
            requests,
            input_tokens,
            output_tokens,
            settled=not decision.allowed,
            owner=self,
            reserved_at=now,
        )

    async def peek(self, subject: str, plan: Plan) -> Decision:
        """Every limit's state, counting nothing; `allowed` says whether a request would fit now."""
        reservation = await self.reserve(subject, plan, requests=0, input_tokens=0, output_tokens=0)
        return reservation.decision

    async def commit(self, reservation: Reservation, *, input_tokens: int, output_tokens: int) -> None:
        """Replace the reserved token estimates with the actual amounts (up or down, floored at 0).

        The request count stays. Applies to the windows the reservation used, even if time has
        moved on since — but usage above the reservation, when that window has ended, is added to
        the window of now (it would limit nothing in the one that ended). One atomic call; no-op for
        a denied or already settled reservation.
        """
        if min(input_tokens, output_tokens) < 0:
            raise ValueError("token counts cannot be negative")
        actual = {"input_tokens": input_tokens, "output_tokens": output_tokens}
        reserved = {"input_tokens": reservation.input_tokens, "output_tokens": reservation.output_tokens}
        await self._settle(
            reservation,
            [
                actual[lim.metric] - reserved[lim.metric] if lim.metric in actual else 0
                for lim in reservation.limits
            ],
        )

    async def release(self, reservation: Reservation) -> None:
        """Give back everything a reservation took, the request count included.

        For requests that were never forwarded (rejected later for another reason).
        """
        await self._settle(reservation, [-amount for amount in reservation.amounts])

    async def _settle(self, reservation: Reservation, deltas: list[int]) -> None:
        if reservation.owner is not self:
            raise ValueError("a reservation must be settled by the limiter that made it")
        if reservation.settled:
            return
        now = self.clock()
        keys: list[str] = []
        args: list[str | int] = []
        for key, limit, delta in zip(reservation.keys, reservation.limits, deltas, strict=True):
            if not delta:
                continue
            if delta > 0:
                # Usage above the reservation counts in the window of now — the reservation's own
                # while it lasts, else the next (in one that ended it would limit nothing) — created
                # if need be: a call that reserved no tokens (pass-through) made no token counter.
                current, _, ttl_ms = self._slot(reservation.subject, limit, now)
                keys.append(current)
                args += [delta, ttl_ms]
            elif limit.external is not None and now - reservation.reserved_at >= limit.window_seconds:
                continue  # its counter may have expired and been made again since: see the module docstring
            else:
                keys.append(key)
                args += [delta, ""]
        if keys:
            await self.store.run(ADJUST, keys, args)
        # Only after success: a settle that failed (StoreUnavailable) may be retried.
        reservation.settled = True
