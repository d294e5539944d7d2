"""Provider+model health, shared by every replica through the store.

A failure (5xx, timeout, connection error, provider 429) puts the provider+model in backoff for
`min(30 * 2^(n-1), 300)` seconds after the n-th consecutive failure; a success clears it. A provider
answer (a 429 or a 5xx) with a `Retry-After` (seconds, or an HTTP date) asks for its own wait, which
replaces the doubling: the backoff lasts that long, at least 30 s (shorter, the next request decided
for everyone a second later — there is no limited half-open trial) and at most 300 s (as the
doubling's cap; the next failure then reads a new one). A `Retry-After` that is neither (junk, a
sign, a number over 16 characters, a date that does not parse) is ignored: the doubling applies. A failure
while the pair is in backoff (a request already under way when it began, a conversation kept on its
model, a `/v1` call, which go to it all the same) leaves the backoff as it is — except that one whose
`Retry-After` ends later lengthens it to end then (to at most 300 s from now, with no 30 s floor:
never longer than that answer asked): the n-th failure is
the first after the (n-1)-th backoff ran out, so one burst of failing requests — one user's, at
will — is one failure (30 s), not a run of them (300 s). Client
errors (4xx other than 429) are never a provider failure. State lives under
`sentinel:health:{providers}:<provider>:<model>`, so all replicas agree (the `{providers}` hash tag
puts every pair in one Redis Cluster slot, so one MGET script reads them all); the store being down
means "assume healthy" (never refuse traffic because the health table is unreachable). So does an
entry that cannot be read (not the JSON object the scripts write — set by hand, or by an older
version): the pair counts as healthy, and its next failure overwrites it as a first failure; it
made every request of its tier a 500 (`_state` and the scripts' `read`, which must agree).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from sentinel.errors import StoreUnavailable
from sentinel.observability.logging import Repeated
from sentinel.observability.metrics import Metrics
from sentinel.store import LocalOps, Script, Store
from sentinel.store.base import LUA_FINITE

log = logging.getLogger("sentinel.health")

INITIAL_BACKOFF = 30.0
MAX_BACKOFF = 300.0

_MGET_LUA = "return redis.call('MGET', unpack(KEYS))"


def _mget_local(ops: LocalOps, keys: list[str], args: list[str]) -> list[bytes | None]:
    return [ops.get(k) for k in keys]


MGET = Script(name="health_mget", lua=_MGET_LUA, local=_mget_local)

# ARGV: now, INITIAL_BACKOFF, MAX_BACKOFF, the wait the provider asked for (at most MAX_BACKOFF; "" for none).
# `read`: the stored state, or nil for none or one that cannot be read (`_state` is its twin).
_FAIL_LUA = LUA_FINITE + """local function read(raw)
  if not raw then return nil end
  local ok, state = pcall(cjson.decode, raw)
  if not ok or type(state) ~= 'table' then return nil end
  local n, untl, backoff = state['failures'], state['until_ts'], state['backoff']
  if not (finite(n) and finite(untl) and finite(backoff)) or n < 0 or n ~= math.floor(n) then return nil end
  return {failures = n, until_ts = untl, backoff = backoff}
end
local now = tonumber(ARGV[1])
local asked = tonumber(ARGV[4])
local state = read(redis.call('GET', KEYS[1]))
local n = 0
if state then
  local untl = state['until_ts']
  if now < untl then
    if asked and now + asked > untl then
      state['until_ts'] = now + asked
      state['backoff'] = asked
      redis.call('SET', KEYS[1], cjson.encode(state), 'PX', math.ceil((asked + 3600) * 1000))
    end
    return tostring(state['backoff'])
  end
  n = state['failures']
end
n = n + 1
local backoff
if asked then
  backoff = math.max(asked, tonumber(ARGV[2]))
else
  backoff = math.min(tonumber(ARGV[2]) * math.pow(2, math.min(n - 1, 30)), tonumber(ARGV[3]))
end
redis.call('SET', KEYS[1], cjson.encode({failures = n, until_ts = now + backoff, backoff = backoff}), 'PX', math.ceil((backoff + 3600) * 1000))
return tostring(backoff)
"""


def _state(raw: bytes | None) -> dict[str, Any] | None:
    """A stored entry as the scripts write it (`failures`, `until_ts`, `backoff`), or None for none
    or one that cannot be read (not JSON, not an object, a field missing, not a finite number, a
    failure count not a whole number >= 0): healthy. The Lua script's `read` is its twin."""
    if raw is None:
        return None
    try:
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            return None
        fields = [data.get(name) for name in ("failures", "until_ts", "backoff")]
        numbers = [float(v) for v in fields if isinstance(v, int | float) and not isinstance(v, bool)]
    except (orjson.JSONDecodeError, OverflowError):
        return None
    if len(numbers) != 3 or not all(math.isfinite(v) for v in numbers):
        return None
    failures, until_ts, backoff = numbers
    if failures < 0 or not failures.is_integer():
        return None
    return {"failures": int(failures), "until_ts": until_ts, "backoff": backoff}


def _fail_local(ops: LocalOps, keys: list[str], args: list[str]) -> str:
    now = float(args[0])
    asked = float(args[3]) if args[3] else None
    state = _state(ops.get(keys[0]))
    if state is not None and now < state["until_ts"]:  # in backoff: lengthened only to what was asked
        if asked is not None and now + asked > state["until_ts"]:
            state = {**state, "until_ts": now + asked, "backoff": asked}
            ops.set(keys[0], orjson.dumps(state), asked + 3600)
        return repr(float(state["backoff"]))
    n = (state["failures"] if state is not None else 0) + 1
    if asked is not None:
        backoff = max(asked, float(args[1]))
    else:
        backoff = min(float(args[1]) * 2.0 ** min(n - 1, 30), float(args[2]))  # 2.0 ** 1024 overflows
    state = {"failures": n, "until_ts": now + backoff, "backoff": backoff}
    ops.set(keys[0], orjson.dumps(state), backoff + 3600)
    return repr(backoff)


RECORD_FAILURE = Script(name="health_fail", lua=_FAIL_LUA, local=_fail_local)


@dataclass(frozen=True)
class HealthState:
    provider: str
    model: str
    failures: int
    backoff: float
    until: float

    def remaining(self, now: float) -> float:
        return max(0.0, self.until - now)


class ProviderHealth:
    """Backoff bookkeeping for (provider, model) pairs."""

    def __init__(self, store: Store, metrics: Metrics | None = None, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self._unreadable = Repeated(log)

    @staticmethod
    def key(provider: str, model: str) -> str:
        return f"sentinel:health:{{providers}}:{provider}:{model}"

    async def states(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], HealthState | None]:
        """Current backoff state of each pair (None = healthy); all healthy when the store is down."""
        if not pairs:
            return {}
        try:
            raws = await self.store.run(MGET, [self.key(p, m) for p, m in pairs], [])
        except StoreUnavailable:
            return {pair: None for pair in pairs}
        out: dict[tuple[str, str], HealthState | None] = {}
        for (provider, model), raw in zip(pairs, raws, strict=True):
            data = _state(raw)
            if data is None:  # none, or one that cannot be read: healthy (see the module docstring)
                if raw is not None:
                    self._unreadable.warning("ignoring an unreadable provider health entry; it counts as healthy",
                                             extra={"provider": provider, "model": model},
                                             key=self.key(provider, model))
                out[(provider, model)] = None
                continue
            out[(provider, model)] = HealthState(provider, model, data["failures"], data["backoff"], data["until_ts"])
        return out

    async def available(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bool]:
        now = self.clock()
        return {pair: state is None or state.until <= now for pair, state in (await self.states(pairs)).items()}

    async def record_failure(self, provider: str, model: str, retry_after: float | None = None) -> float | None:
        """Start or double the backoff (leave one that still runs as it is); returns its length
        (None when the store is down). `retry_after`: the seconds the provider's answer asked to wait
        (its `Retry-After`), which replace the doubling: a backoff of that long, at least
        INITIAL_BACKOFF and at most MAX_BACKOFF; a running backoff is lengthened to end then (at
        most MAX_BACKOFF from now), never shortened."""
        asked = "" if retry_after is None or not retry_after >= 0 else repr(min(float(retry_after), MAX_BACKOFF))
        try:
            backoff = float(
                await self.store.run(
                    RECORD_FAILURE, [self.key(provider, model)], [self.clock(), INITIAL_BACKOFF, MAX_BACKOFF, asked]
                )
            )
        except StoreUnavailable:
            log.warning("could not record a provider failure (store unavailable)")
            return None
        if self.metrics is not None:
            self.metrics.provider_health.labels(provider, model).set(0)
        log.warning("provider in backoff", extra={"provider": provider, "model": model, "backoff_s": backoff})
        return backoff

    async def record_success(self, provider: str, model: str) -> None:
        try:
            await self.store.delete(self.key(provider, model))
        except StoreUnavailable:
            return
        if self.metrics is not None:
            self.metrics.provider_health.labels(provider, model).set(1)
