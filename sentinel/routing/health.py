"""Provider+model health, shared by every replica through the store.

A failure (5xx, timeout, connection error, provider 429) puts the provider+model in backoff for
`min(30 * 2^(n-1), 300)` seconds after the n-th consecutive failure; a success clears it. A failure
while the pair is in backoff (a request already under way when it began, a conversation kept on its
model, a `/v1` call, which go to it all the same) leaves the backoff as it is: the n-th failure is
the first after the (n-1)-th backoff ran out, so one burst of failing requests — one user's, at
will — is one failure (30 s), not a run of them (300 s). Client
errors (4xx other than 429) are never a provider failure. State lives under
`sentinel:health:{providers}:<provider>:<model>`, so all replicas agree (the `{providers}` hash tag
puts every pair in one Redis Cluster slot, so one MGET script reads them all); the store being down
means "assume healthy" (never refuse traffic because the health table is unreachable).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson

from sentinel.errors import StoreUnavailable
from sentinel.observability.metrics import Metrics
from sentinel.store import LocalOps, Script, Store

log = logging.getLogger("sentinel.health")

INITIAL_BACKOFF = 30.0
MAX_BACKOFF = 300.0

_MGET_LUA = "return redis.call('MGET', unpack(KEYS))"


def _mget_local(ops: LocalOps, keys: list[str], args: list[str]) -> list[bytes | None]:
    return [ops.get(k) for k in keys]


MGET = Script(name="health_mget", lua=_MGET_LUA, local=_mget_local)

_FAIL_LUA = """
local raw = redis.call('GET', KEYS[1])
local n = 0
if raw then
  local state = cjson.decode(raw)
  if tonumber(ARGV[1]) < tonumber(state['until_ts']) then return tostring(state['backoff']) end
  n = state['failures']
end
n = n + 1
local backoff = math.min(tonumber(ARGV[2]) * math.pow(2, math.min(n - 1, 30)), tonumber(ARGV[3]))
local untl = tonumber(ARGV[1]) + backoff
redis.call('SET', KEYS[1], cjson.encode({failures = n, until_ts = untl, backoff = backoff}), 'PX', math.ceil((backoff + 3600) * 1000))
return tostring(backoff)
"""


def _fail_local(ops: LocalOps, keys: list[str], args: list[str]) -> str:
    raw = ops.get(keys[0])
    state = orjson.loads(raw) if raw else None
    if state is not None and float(args[0]) < state["until_ts"]:  # in backoff: left as it is
        return repr(float(state["backoff"]))
    n = (state["failures"] if state is not None else 0) + 1
    backoff = min(float(args[1]) * 2.0 ** min(n - 1, 30), float(args[2]))  # 2.0 ** 1024 overflows
    state = {"failures": n, "until_ts": float(args[0]) + backoff, "backoff": backoff}
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
            if raw is None:
                out[(provider, model)] = None
                continue
            data = orjson.loads(raw)
            out[(provider, model)] = HealthState(
                provider, model, int(data["failures"]), float(data["backoff"]), float(data["until_ts"])
            )
        return out

    async def available(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bool]:
        now = self.clock()
        return {pair: state is None or state.until <= now for pair, state in (await self.states(pairs)).items()}

    async def record_failure(self, provider: str, model: str) -> float | None:
        """Start or double the backoff (leave one that still runs as it is); returns its length
        (None when the store is down)."""
        try:
            backoff = float(
                await self.store.run(
                    RECORD_FAILURE, [self.key(provider, model)], [self.clock(), INITIAL_BACKOFF, MAX_BACKOFF]
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
