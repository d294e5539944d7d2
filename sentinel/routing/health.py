"""Provider+model health, shared by every replica through the store.

A failure (5xx, timeout, connection error, provider 429) puts the provider+model in backoff for
`min(30 * 2^(n-1), 300)` seconds after the n-th consecutive failure; a success clears it. A provider
answer (a 429 or a 5xx) with a `Retry-After` (seconds, or an HTTP date) asks for its own wait, which
replaces the doubling: the backoff lasts that long, at least 30 s (a trial, below, could otherwise
come a second later) and at most 300 s (as the doubling's cap; the next failure then reads a new
one). A `Retry-After` that is neither (junk, a sign, a number over 16 characters, a date that does
not parse) is ignored: the doubling applies. A failure while the pair is in backoff (a request already under way when it began, a conversation kept on its
model, a `/v1` call, which go to it all the same) leaves the backoff as it is — except that one whose
`Retry-After` ends later lengthens it to end then (to at most 300 s from now, with no 30 s floor:
never longer than that answer asked): the n-th failure is
the first after the (n-1)-th backoff ran out, so one burst of failing requests — one user's, at
will — is one failure (30 s), not a run of them (300 s). Client
errors (4xx other than 429) are never a provider failure.

When the backoff runs out the pair is half-open (`HealthState.recovering`): one request at a time is
its trial, claimed atomically in the store (`claim_trial`, the CLAIM_TRIAL script: one claim across
every replica), while the others keep to the other healthy candidates. The trial's success clears
the entry (`record_success`); its failure starts the next, doubled, backoff (and drops the claim).
A request that ends with neither verdict (refused before it was sent — its quota, say —, sent to
another model, a client's 4xx, a stream cut after its first byte) releases its claim by its token
(`release_trial`): the next request is a trial at once. One that never reports (its process died,
its request hung, a stream still running) holds the claim TRIAL_SECONDS (30 s) at most: then the
next request is a trial. The claim is taken only where a
choice is made — the native API's tier selection (`TierRouter._select`, its retries too) and a `/v1`
alias's first target (`ModelRoutes.order`); a conversation kept on its model claims it when it is
free, but goes to its model either way. A request with no other candidate (a single-model tier, every
other candidate in backoff, a conversation bound to the model, a `/v1` call naming one model) is
never refused because of a trial under way: it goes to the pair as before, and its own answer counts
as any other (a success clears the entry, a failure starts the next backoff). State lives under
`sentinel:health:{providers}:<provider>:<model>`, so all replicas agree (the `{providers}` hash tag
puts every pair in one Redis Cluster slot, so one MGET script reads them all); the store being down
means "assume healthy" (never refuse traffic because the health table is unreachable). So does an
entry that cannot be read (not the JSON object the scripts write — set by hand, or by an older
version): the pair counts as healthy, and its next failure overwrites it as a first failure; it
made every request of its tier a 500 (`_state` and the scripts' `read`, which must agree).

A failure a client can cause with its request's content (a 5xx other than 503 or 529: a backend
that answers 500 for an `image_url` it cannot fetch, a proxy's 504 for a long call; a connection
dropped at once after the request was sent: a proxy resetting an oversized body; see
`sentinel.routing.failover.client_may_cause`) is recorded with its `caller` and counts only when
another user saw one from the pair within WITNESS_SECONDS (60 s): the first user's is remembered
under `sentinel:health-witness:{providers}:<provider>:<model>` (a digest of the user's id, not the
id), a second user's counts (and clears the witness). One user's failing requests alone, at will and
for free (the reservation is given back), no longer put the model in backoff for everyone; a
provider that is really failing fails every user's requests, so it is backed off at the second user's.

A backoff such failures alone started is **soft** (`HealthState.soft`, `"soft": true` in the entry):
one person holding two keys meets the witness rule alone, two free requests a backoff, so a soft
backoff may steer traffic but never refuse it. Tier selection (`TierRouter._select`) avoids a
soft-backed-off candidate while a healthy or recovering one remains, and with none it is used as a
recovering one would be (rather than 503 `tier_unavailable`: a one-model tier went out of service
for everyone, 30 s doubling to 300 s while the attacker repeated); a conversation on it is not
migrated under SESSION_FAILOVER=migrate; a `/v1` alias sends to it after its other targets, but
before those in a hard backoff. A failure without a caller (a 503, a 529, a 429, a timeout, a refused connection: the
provider's own state, which no request's content causes) makes the backoff hard, also one landing
during a soft backoff (its end and length kept); a soft failure during a hard backoff leaves it
hard. The trial scripts keep the flag as they claim and release. An entry without it (written by a
version before it) is hard, as it was then.

A pair whose provider answered 404 that it no longer serves the model (`ModelRetired`) is marked
retired (`mark_retired`) under `sentinel:health-retired:{providers}:<provider>:<model>` for
RETIRED_SECONDS (1 h): every routing that picks among pairs leaves it out (`usable`, the one home of
that rule), read in the same MGET as the health entries (`standing`) — the native API's tier
selection (`TierRouter._select`), a conversation already on it (`TierRouter._sticky`: it moves at
once), the `/v1` surfaces' alias targets (`ModelRoutes.order`) — so that no request keeps paying the
404's round trip and a warning. It is no provider failure (no backoff, no half-open trial): once the
mark expires the pair is drawn again, and marked again if it still answers so. A tier or alias
whose every candidate is marked is served as before (the request goes to them, and their 404 is
answered as it was).

A process reuses the entries it read for routing (`standing`) for READ_REUSE_SECONDS (1 s), so a
native request or a `/v1` alias call makes no store round trip for them while one was made within
the second (on Redis, a native request's third round trip beside the reservation and the
settlement). Each entry holds its own times (a backoff's end, a trial claim's end), read against
the clock at every use: what the reuse delays is only another replica's write, seen up to a second
later (a pair it put in backoff still gets this process's requests that second; their failures are
this process's own). Every write this process makes (a failure, a success, a trial claimed or
released, a retired mark) drops what it read, so its own verdicts count at once; a trial's claim is
atomic in the store whatever was read. Reading when the store is down (all healthy) is not kept.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from sentinel.errors import StoreUnavailable
from sentinel.native._wire import is_finite_number, is_number
from sentinel.observability.logging import Repeated
from sentinel.observability.metrics import Metrics
from sentinel.store import LocalOps, Script, Store
from sentinel.store.base import LUA_FINITE

log = logging.getLogger("sentinel.health")

INITIAL_BACKOFF = 30.0
MAX_BACKOFF = 300.0
TRIAL_SECONDS = 30.0  # how long a trial claim keeps other trials away when its request never reports
RETIRED_SECONDS = 3600.0  # how long a model its provider answered as retired is left out (module docstring)
WITNESS_SECONDS = 60.0  # how long one user's client-causable failure waits for another user's (module docstring)
READ_REUSE_SECONDS = 1.0  # how long a process reuses the entries it read for routing (module docstring)
_MAX_READS_KEPT = 256  # distinct lists of pairs read (tiers, aliases: the configuration bounds them)

T = TypeVar("T")


def usable(
    items: Sequence[T], pair: Callable[[T], tuple[str, str]], retired: set[tuple[str, str]], *, or_all: bool = True
) -> list[T]:
    """`items` but those whose provider+model `pair` is marked retired (`standing`); when every one
    is: all of them (`or_all`: served as before, their 404 answered as it was), else none."""
    kept = [item for item in items if pair(item) not in retired]
    return kept if kept or not or_all else list(items)


_MGET_LUA = "return redis.call('MGET', unpack(KEYS))"


def _mget_local(ops: LocalOps, keys: list[str], args: list[str]) -> list[bytes | None]:
    return [ops.get(k) for k in keys]


MGET = Script(name="health_mget", lua=_MGET_LUA, local=_mget_local)

# `read`: the stored state, or nil for none or one that cannot be read; a `trial_until` that is not
# a number, or a `trial_id` not a string, is left out; an infinite `trial_until` (JSON's 1e999, which
# orjson refuses) makes the entry unreadable; `soft` is kept only when it is `true` (`_state` is its twin).
_READ_LUA = LUA_FINITE + """local function read(raw)
  if not raw then return nil end
  local ok, state = pcall(cjson.decode, raw)
  if not ok or type(state) ~= 'table' then return nil end
  local n, untl, backoff = state['failures'], state['until_ts'], state['backoff']
  if not (finite(n) and finite(untl) and finite(backoff)) or n < 0 or n ~= math.floor(n) then return nil end
  local trial, id = state['trial_until'], state['trial_id']
  if type(trial) == 'number' and not finite(trial) then return nil end  -- 1e999: orjson refuses it all
  if not finite(trial) then trial = nil end
  if type(id) ~= 'string' then id = nil end
  local soft = nil
  if state['soft'] == true then soft = true end  -- else (none: an older version's entry) hard
  return {failures = n, until_ts = untl, backoff = backoff, trial_until = trial, trial_id = id, soft = soft}
end
-- `state` without its trial claim (its `soft` flag kept), with `extra` fields, written with the entry's TTL kept.
local function rewrite(key, state, extra)
  local entry = {failures = state['failures'], until_ts = state['until_ts'], backoff = state['backoff']}
  if state['soft'] then entry['soft'] = true end
  for name, value in pairs(extra) do entry[name] = value end
  local ttl = redis.call('PTTL', key)
  if ttl == -1 then
    redis.call('SET', key, cjson.encode(entry))
  else
    redis.call('SET', key, cjson.encode(entry), 'PX', math.max(ttl, 1))
  end
end
"""

# ARGV: now, INITIAL_BACKOFF, MAX_BACKOFF, the wait the provider asked for (at most MAX_BACKOFF; "" for none),
# "1" for a soft failure (one a client may have caused, witnessed: module docstring; "" for a hard one).
# A new backoff drops any trial claim (`trial_until`): the trial's verdict is in, or another's was. A
# backoff is soft only while every failure it met was: a hard one during a soft backoff makes it hard
# (its end and length kept), a soft one during a hard backoff leaves it hard.
_FAIL_LUA = _READ_LUA + """
local now = tonumber(ARGV[1])
local asked = tonumber(ARGV[4])
local soft = ARGV[5] == '1'
local state = read(redis.call('GET', KEYS[1]))
local n = 0
if state then
  local untl = state['until_ts']
  if now < untl then
    local kept = soft and state['soft']
    if asked and now + asked > untl then
      local lengthened = {failures = state['failures'], until_ts = now + asked, backoff = asked}
      if kept then lengthened['soft'] = true end
      redis.call('SET', KEYS[1], cjson.encode(lengthened), 'PX', math.ceil((asked + 3600) * 1000))
      return tostring(asked)
    end
    if state['soft'] and not kept then
      state['soft'] = nil
      rewrite(KEYS[1], state, {})
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
local entry = {failures = n, until_ts = now + backoff, backoff = backoff}
if soft then entry['soft'] = true end
redis.call('SET', KEYS[1], cjson.encode(entry), 'PX', math.ceil((backoff + 3600) * 1000))
return tostring(backoff)
"""


def _state(raw: bytes | None) -> dict[str, Any] | None:
    """A stored entry as the scripts write it (`failures`, `until_ts`, `backoff`, `soft` for a soft
    backoff, and `trial_until` and `trial_id` once a trial is claimed), or None for none or one that cannot be read (not JSON, not an object,
    a field missing, not a finite number, a failure count not a whole number >= 0): healthy. A
    `trial_until` that is not a finite number, or a `trial_id` not a string, is left out; `soft` is
    kept only when it is `true` (an older version's entry, without it, is hard). The Lua scripts'
    `read` is its twin."""
    if raw is None:
        return None
    try:
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            return None
        fields = [data.get(name) for name in ("failures", "until_ts", "backoff")]
        numbers = [float(v) for v in fields if is_number(v)]
    except (orjson.JSONDecodeError, OverflowError):
        return None
    if len(numbers) != 3 or not all(math.isfinite(v) for v in numbers):
        return None
    failures, until_ts, backoff = numbers
    if failures < 0 or not failures.is_integer():
        return None
    state: dict[str, Any] = {"failures": int(failures), "until_ts": until_ts, "backoff": backoff}
    trial = data.get("trial_until")
    if is_finite_number(trial):
        state["trial_until"] = float(trial)  # else left out: no trial claimed
    if isinstance(trial_id := data.get("trial_id"), str):
        state["trial_id"] = trial_id
    if data.get("soft") is True:
        state["soft"] = True
    return state


def _fail_local(ops: LocalOps, keys: list[str], args: list[str]) -> str:
    now = float(args[0])
    asked = float(args[3]) if args[3] else None
    soft = args[4] == "1"
    state = _state(ops.get(keys[0]))
    if state is not None and now < state["until_ts"]:  # in backoff: lengthened only to what was asked
        kept = soft and state.get("soft", False)  # soft only while every failure it met was
        if asked is not None and now + asked > state["until_ts"]:
            lengthened = {"failures": state["failures"], "until_ts": now + asked, "backoff": asked}
            if kept:
                lengthened["soft"] = True
            ops.set(keys[0], orjson.dumps(lengthened), asked + 3600)
            return repr(asked)
        if state.get("soft") and not kept:  # a hard failure: the backoff is hard, its end kept
            state.pop("soft")
            _rewrite(ops, keys[0], state)
        return repr(float(state["backoff"]))
    n = (state["failures"] if state is not None else 0) + 1
    if asked is not None:
        backoff = max(asked, float(args[1]))
    else:
        backoff = min(float(args[1]) * 2.0 ** min(n - 1, 30), float(args[2]))  # 2.0 ** 1024 overflows
    state = {"failures": n, "until_ts": now + backoff, "backoff": backoff}
    if soft:
        state["soft"] = True
    ops.set(keys[0], orjson.dumps(state), backoff + 3600)
    return repr(backoff)


RECORD_FAILURE = Script(name="health_fail", lua=_FAIL_LUA, local=_fail_local)

# ARGV: now, TRIAL_SECONDS, the claim's token. 1: this caller's request is the pair's trial (claimed
# until now + TRIAL_SECONDS, under its token — or found claimed under it: a second run of the same
# call, redis-py's cluster client sending it again after its reply was lost), or the pair is healthy
# (no entry, or one that cannot be read: left as it is); 0: in backoff, or another request's trial
# still runs. The TTL is kept.
_TRIAL_LUA = _READ_LUA + """
local now = tonumber(ARGV[1])
local state = read(redis.call('GET', KEYS[1]))
if not state then return 1 end
if now < state['until_ts'] then return 0 end
if state['trial_until'] and now < state['trial_until'] then
  if state['trial_id'] == ARGV[3] then return 1 end
  return 0
end
rewrite(KEYS[1], state, {trial_until = now + tonumber(ARGV[2]), trial_id = ARGV[3]})
return 1
"""


def _rewrite(ops: LocalOps, key: str, state: dict[str, Any], **extra: Any) -> None:
    """`state` without its trial claim (its `soft` flag kept), with `extra` fields, written with the
    entry's TTL kept (the Lua scripts' `rewrite`)."""
    entry = {"failures": state["failures"], "until_ts": state["until_ts"], "backoff": state["backoff"]}
    if state.get("soft"):
        entry["soft"] = True
    entry.update(extra)
    ttl = ops.pttl(key)
    ops.set(key, orjson.dumps(entry), None if ttl == -1 else max(ttl, 1) / 1000)


def _trial_local(ops: LocalOps, keys: list[str], args: list[str]) -> int:
    now = float(args[0])
    state = _state(ops.get(keys[0]))
    if state is None:
        return 1
    if now < state["until_ts"]:
        return 0
    if now < state.get("trial_until", -math.inf):
        return 1 if state.get("trial_id") == args[2] else 0
    _rewrite(ops, keys[0], state, trial_until=now + float(args[1]), trial_id=args[2])
    return 1


CLAIM_TRIAL = Script(name="health_trial", lua=_TRIAL_LUA, local=_trial_local)

# ARGV: the claim's token. Drops the pair's trial claim if it is still that one (1), else leaves the
# entry as it is (0): a success deleted it, a failure replaced it, or the claim lapsed and is another's.
_RELEASE_LUA = _READ_LUA + """
local state = read(redis.call('GET', KEYS[1]))
if not state or state['trial_id'] ~= ARGV[1] then return 0 end
rewrite(KEYS[1], state, {})
return 1
"""


def _release_local(ops: LocalOps, keys: list[str], args: list[str]) -> int:
    state = _state(ops.get(keys[0]))
    if state is None or state.get("trial_id") != args[0]:
        return 0
    _rewrite(ops, keys[0], state)
    return 1


RELEASE_TRIAL = Script(name="health_trial_release", lua=_RELEASE_LUA, local=_release_local)


# ARGV: the caller's digest, WITNESS_SECONDS, the call's token. 1: another caller's failure is on
# record (cleared: this one counts; `counted:<token>` is left in its place, which only a second run of
# this call — redis-py's cluster client sending it again after its reply was lost — reads as counted,
# and any other as no witness); 0: none, or this caller's own — this caller's is remembered (for
# WITNESS_SECONDS).
_WITNESS_LUA = """local seen = redis.call('GET', KEYS[1])
local px = math.ceil(tonumber(ARGV[2]) * 1000)
if seen == 'counted:' .. ARGV[3] then return 1 end
if seen and seen ~= ARGV[1] and string.sub(seen, 1, 8) ~= 'counted:' then
  redis.call('SET', KEYS[1], 'counted:' .. ARGV[3], 'PX', px)
  return 1
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', px)
return 0
"""
_COUNTED = b"counted:"


def _witness_local(ops: LocalOps, keys: list[str], args: list[str]) -> int:
    seen = ops.get(keys[0])
    if seen == _COUNTED + args[2].encode():
        return 1
    if seen is not None and seen != args[0].encode() and not seen.startswith(_COUNTED):
        ops.set(keys[0], _COUNTED + args[2].encode(), float(args[1]))
        return 1
    ops.set(keys[0], args[0].encode(), float(args[1]))
    return 0


SECOND_WITNESS = Script(name="health_witness", lua=_WITNESS_LUA, local=_witness_local)


@dataclass(frozen=True)
class HealthState:
    provider: str
    model: str
    failures: int
    backoff: float
    until: float
    trial_until: float | None = None  # a trial claimed until then (`ProviderHealth.claim_trial`)
    trial_id: str | None = None  # that claim's token
    # Started by client-causable failures alone (module docstring): avoided while another candidate
    # may serve, never a reason to refuse a request.
    soft: bool = False

    def remaining(self, now: float) -> float:
        return max(0.0, self.until - now)

    def in_backoff(self, now: float) -> bool:
        return now < self.until

    def recovering(self, now: float) -> bool:
        """The backoff ran out, no success since: half-open, a trial may go to the pair."""
        return not self.in_backoff(now)

    def trial_running(self, now: float) -> bool:
        """Another request's trial is under way (claimed, not reported, not expired)."""
        return self.trial_until is not None and now < self.trial_until


# What operators are shown of a pair (`phase`): the four states of its breaker.
PHASES = ("healthy", "backoff", "half_open", "trial")


def phase(state: HealthState | None, now: float) -> str:
    """`healthy` (no failure on record), `backoff` (left out), `half_open` (its backoff ran out: the
    next request is its trial) or `trial` (a trial request is under way; the others keep away)."""
    if state is None:
        return "healthy"
    if state.in_backoff(now):
        return "backoff"
    return "trial" if state.trial_running(now) else "half_open"


class ProviderHealth:
    """Backoff bookkeeping for (provider, model) pairs."""

    def __init__(
        self, store: Store, metrics: Metrics | None = None, clock: Callable[[], float] = time.time,
        *, reuse_seconds: float = 0.0,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.clock = clock
        # `standing`'s reads by their pairs: (when read, the raw entries), reused for `reuse_seconds`
        # (READ_REUSE_SECONDS as `serve` wires it; 0: every call reads the store).
        self.reuse_seconds = reuse_seconds
        self._reads: dict[tuple[tuple[str, str], ...], tuple[float, list[bytes | None]]] = {}
        self._writes = 0  # `forget_reads` calls so far: a read begun before one is not kept
        # Written when first met, then once a minute with the count: an unreadable entry, a store outage.
        self._repeated = Repeated(log)

    @staticmethod
    def key(provider: str, model: str) -> str:
        return f"sentinel:health:{{providers}}:{provider}:{model}"

    @staticmethod
    def witness_key(provider: str, model: str) -> str:
        return f"sentinel:health-witness:{{providers}}:{provider}:{model}"

    @staticmethod
    def retired_key(provider: str, model: str) -> str:
        return f"sentinel:health-retired:{{providers}}:{provider}:{model}"

    async def states(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], HealthState | None]:
        """Current backoff state of each pair (None = healthy); all healthy when the store is down."""
        if not pairs:
            return {}
        try:
            raws = await self.store.run(MGET, [self.key(p, m) for p, m in pairs], [])
        except StoreUnavailable:
            return {pair: None for pair in pairs}
        return self._states(pairs, raws)

    async def standing(
        self, pairs: Sequence[tuple[str, str]]
    ) -> tuple[dict[tuple[str, str], HealthState | None], set[tuple[str, str]]]:
        """`states`, and the pairs marked retired (`mark_retired`), read in one MGET (one slot: the
        `{providers}` hash tag); all healthy and none retired when the store is down."""
        if not pairs:
            return {}, set()
        read = tuple(pairs)
        kept = self._reads.get(read) if self.reuse_seconds > 0 else None
        if kept is not None and 0 <= self.clock() - kept[0] < self.reuse_seconds:
            raws = kept[1]
        else:
            keys = [self.key(p, m) for p, m in pairs] + [self.retired_key(p, m) for p, m in pairs]
            read_at, writes = self.clock(), self._writes
            try:
                raws = await self.store.run(MGET, keys, [])
            except StoreUnavailable:
                return {pair: None for pair in pairs}, set()
            if self.reuse_seconds > 0 and writes == self._writes:
                if len(self._reads) >= _MAX_READS_KEPT:
                    self._reads.clear()
                self._reads[read] = (read_at, raws)
        marks = raws[len(pairs):]
        return self._states(pairs, raws[:len(pairs)]), {
            pair for pair, mark in zip(pairs, marks, strict=True) if mark is not None}

    def forget_reads(self) -> None:
        """Drop the entries read for routing (module docstring): the next `standing` reads the store.
        Every write of this process calls it; so does whoever knows the store changed otherwise. A
        read still under way is not kept either."""
        self._writes += 1
        self._reads.clear()

    async def mark_retired(self, provider: str, model: str) -> None:
        """The provider answered 404 that it no longer serves the model (`ModelRetired`): leave the
        pair out of tier selection for RETIRED_SECONDS (module docstring). Never raises."""
        self.forget_reads()
        try:
            await self.store.set(self.retired_key(provider, model), b"1", ttl=RETIRED_SECONDS)
        except StoreUnavailable:
            self._repeated.warning("could not mark a retired model (store unavailable)")

    def _states(
        self, pairs: Sequence[tuple[str, str]], raws: Sequence[bytes | None]
    ) -> dict[tuple[str, str], HealthState | None]:
        out: dict[tuple[str, str], HealthState | None] = {}
        for (provider, model), raw in zip(pairs, raws, strict=True):
            data = _state(raw)
            if data is None:  # none, or one that cannot be read: healthy (see the module docstring)
                if raw is not None:
                    self._repeated.warning("ignoring an unreadable provider health entry; it counts as healthy",
                                             extra={"provider": provider, "model": model},
                                             key=self.key(provider, model))
                out[(provider, model)] = None
                continue
            out[(provider, model)] = HealthState(
                provider, model, data["failures"], data["backoff"], data["until_ts"], data.get("trial_until"),
                data.get("trial_id"), data.get("soft", False))
        return out

    async def available(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bool]:
        now = self.clock()
        return {pair: state is None or state.until <= now for pair, state in (await self.states(pairs)).items()}

    async def claim_trial(self, provider: str, model: str, token: str | None = None) -> bool:
        """Claim the trial of a pair whose backoff ran out (half-open): True when this request is
        it — or the pair is healthy now (a success cleared it meanwhile), or the store is down
        (assume healthy); False while the pair is in backoff or another request's trial, claimed
        less than TRIAL_SECONDS ago, has not reported (`record_success` / `record_failure` end it,
        as does `release_trial` with the claim's `token`). One claim at a time across every
        replica: the script reads and writes atomically. A claim found under `token` is this call's
        (a second run of it: redis-py's cluster client sends it again after a lost reply): True."""
        token = token or uuid.uuid4().hex
        self.forget_reads()
        try:
            won = await self.store.run(
                CLAIM_TRIAL, [self.key(provider, model)], [self.clock(), TRIAL_SECONDS, token])
        except StoreUnavailable:
            return True
        if won:
            log.info("provider trial", extra={"provider": provider, "model": model})
        return bool(won)

    async def release_trial(self, provider: str, model: str, token: str) -> None:
        """End a trial claimed with `token` that had no verdict (its request was refused before it
        was sent, sent elsewhere, or ended with neither a success nor a provider failure), so that
        the next request is a trial at once. Leaves the entry as it is when the claim is no longer
        that one. Never raises."""
        self.forget_reads()
        try:
            await self.store.run(RELEASE_TRIAL, [self.key(provider, model)], [token])
        except StoreUnavailable:
            log.debug("could not release a provider trial (store unavailable)")

    async def record_failure(
        self, provider: str, model: str, retry_after: float | None = None, caller: str | None = None
    ) -> float | None:
        """Start or double the backoff (leave one that still runs as it is); returns its length
        (None when the store is down, or the failure does not count yet). `retry_after`: the seconds
        the provider's answer asked to wait (its `Retry-After`), which replace the doubling: a backoff
        of that long, at least INITIAL_BACKOFF and at most MAX_BACKOFF; a running backoff is
        lengthened to end then (at most MAX_BACKOFF from now), never shortened. `caller`: the user
        whose request met a failure a client can cause (module docstring): it counts only when
        another user met one within WITNESS_SECONDS, and the backoff it starts is soft (a failure
        without a caller makes it hard; one with a caller leaves a hard backoff hard)."""
        if caller is not None and not await self._second_witness(provider, model, caller):
            log.info("provider failure not counted: no other user's within the window",
                     extra={"provider": provider, "model": model})
            return None
        asked = "" if retry_after is None or not retry_after >= 0 else repr(min(float(retry_after), MAX_BACKOFF))
        soft = "1" if caller is not None else ""  # witnessed, yet a client's content may still be the cause
        self.forget_reads()
        try:
            backoff = float(
                await self.store.run(
                    RECORD_FAILURE, [self.key(provider, model)],
                    [self.clock(), INITIAL_BACKOFF, MAX_BACKOFF, asked, soft],
                )
            )
        except StoreUnavailable:
            self._repeated.warning("could not record a provider failure (store unavailable)")
            return None
        if self.metrics is not None:
            self.metrics.provider_health.labels(provider, model).set(0)
        log.warning("provider in backoff", extra={"provider": provider, "model": model, "backoff_s": backoff})
        return backoff

    async def _second_witness(self, provider: str, model: str, caller: str) -> bool:
        """Whether another user's client-causable failure of the pair is on record (then cleared);
        else `caller`'s is remembered. False when the store is down (nothing could be recorded)."""
        digest = hashlib.sha256(caller.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        try:
            return bool(await self.store.run(
                SECOND_WITNESS, [self.witness_key(provider, model)], [digest, WITNESS_SECONDS, uuid.uuid4().hex]))
        except StoreUnavailable:
            return False

    async def record_success(self, provider: str, model: str) -> None:
        self.forget_reads()
        try:
            await self.store.delete(self.key(provider, model))
        except StoreUnavailable:
            return
        if self.metrics is not None:
            self.metrics.provider_health.labels(provider, model).set(1)
