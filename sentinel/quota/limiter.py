"""The atomic quota limiter: reserve before forwarding, reconcile after.

`reserve()` checks every limit of a plan and, only if all of them fit, adds the request's amounts
to all of them, in one atomic script call (Lua on Redis, its Python twin in memory). So concurrent
requests on any number of replicas can never overrun a limit, and a denied request consumes
nothing. `commit()` later replaces the estimated token amounts with the real ones (in the same
windows the reservation used; usage above the reservation settled after a window ended goes to the
window of now), and `release()` gives everything back for a request that was never forwarded.

A settlement (`commit`, `release`) is safe to send again whatever happened to a send that failed
(refused, or its outcome unknown: a reply lost to a timeout or a dropped connection, redis-py's
cluster retry): an admitted reservation writes a marker in its script call,
`{prefix}:{<subject>}:reserved:<token>` (the token made here: a random prefix per limiter and a
count), and a settlement's script adjusts the counters only if it deletes that marker; a second run
finds it gone and changes nothing. The marker lives until then, or `settle_within` (a day) — longer
when one of the reservation's counters does —, so markers a crashed process left expire; a
settlement arriving after that changes nothing. Every admitted reservation is settled by a script
call, even one that changes no counter (its marker goes). A peek writes none. A reservation's script
that finds its marker there already counts nothing (a second run: redis-py's cluster retry).

A reservation whose own reply was lost (its outcome unknown: see `reserve`'s `on_lost`) may have
run, or may run late; its token was made before it was sent, so it can be given back
(`Reservation.lost`, `GIVE_BACK`): only if its marker is there, once; else a tombstone takes the
marker's place (`0`, living as a marker does) and a run arriving after counts nothing.

What a `LocalLimiter` (QUOTA_FAILURE_MODE=local) counted while Redis was away is added to the same
counters once Redis answers (`take`), once: the script that adds it writes the hand-back's marker,
`{prefix}:{<subject>}:handed:<token>` (living as long as the longest counter it added to), and a
hand-back sent again after its reply was lost finds it and adds nothing.

Windows are fixed and aligned to the Unix epoch, one counter per (metric, window):
`{prefix}:{<subject>}:{metric}:{window_seconds}:{window_index}`. The braces are a Redis Cluster
hash tag, so all keys of one script live in one slot; `%`, `{` and `}` in the subject are written
`%25`, `%7B`, `%7D`, or a subject such as `}x` would end the tag early (an empty tag hashes the
whole key: one user's counters in several slots). Each key expires `ttl_margin` seconds after
its window ends. Time comes from the caller's clock, passed to the script (not Redis TIME), so
replicas agree on window indexes and tests can move time.

Limits with `ExternalUsage` (Zion mode) count locally per reading instead of per window: their key
ends in `x<snapshot>`, the script adds `external.used`, and the key lives `window_seconds` +
margin after its last increment. A reading's `used` holds only usage delivered to the source, so
requests still running when it was taken are in neither figure: each running reservation on an
external limit therefore also has an entry in `{base}:inflight` (a hash per subject, metric and
window, in the same slot: field = the reservation's random token, value = `amount:deadline_ms`,
the deadline `window_seconds` after the reservation). The first script call of a reading (its key
missing) starts its count at the sum of the live entries, pruning expired ones; a settlement
removes its entry in the same call as its adjustment. So a request running across a new reading
counts its *reserved* amount in that reading until the next one (its real usage may be less:
against the user). An entry a crashed process left stops counting at its deadline — and so does a
request still running after `window_seconds`, in readings taken after that. Usage settled but not
yet delivered when a reading is taken is in no figure until the next reading. Plans without
external limits run the plain scripts, which touch no hash.

A reservation can outlive its call: a batch's, made when the batch is, is held in the store by the
batch (`hold`: `{prefix}:{<subject>}:held:<batch id>`, in the counters' slot, holding what its
settlement needs) until the first read showing the batch's usage — on any replica — settles it to
that usage (`settle_held`: one script checks the record is still there, puts the call's own mark
in its place — a second run of that call, redis-py's cluster retry, answers as the first did —,
deletes the reservation's marker and adjusts the counters, so two readers racing settle it once).
The record is kept `HOLD_WITHIN` (a week), or longer while one of the reservation's counters lives:
a read after it is gone charges the usage on its own reservation, when the held one counts nothing
any more (but on an external key another reservation kept alive: until the next reading).

A plan change that gives a user a limit over a new window seeds that window's counter (`seed`: the
user's usage in it, read from the ledger by the admin service), raising it to that count, never
lowering it, in one script call per user (`SEED`).

An external key can expire while a reservation on it is still running (a long stream) and be made
again, under the same name, by the next reservation: a refund then would take back that one's
amount, so a reservation older than `window_seconds` gives nothing back on an external key (its
amount stays counted, against the user, until the next reading).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

import orjson

from sentinel.domain.plans import ExternalUsage, Limit, Plan
from sentinel.domain.text import is_text
from sentinel.errors import StoreRefused, StoreUnavailable
from sentinel.quota.decision import Decision, LimitState, refuses
from sentinel.store.base import LocalOps, Script, Store

# A reservation's marker lives at least this long (seconds; longer when one of its counters does): a
# settlement arriving after it is gone changes nothing, so it must outlast the longest request
# (`SENTINEL_STREAM_MAX_SECONDS` and the waits before it: the runtime gives it this much past that)
# and a settlement sent again while Redis is away. Markers a crashed process left go with it.
SETTLE_WITHIN = 86_400.0

# A held reservation (a batch's: `QuotaLimiter.hold`) waits at least this long (seconds) for the read
# that settles it — a batch ends within its completion window (24 h at OpenAI), and its maker polls
# it —, and longer while one of its counters lives: so the record never outlives its use by much
# (Redis under `noeviction` would keep every batch's for ever), and a read after it is gone, which
# charges the usage on its own reservation, counts it once.
HOLD_WITHIN = 7 * 86_400.0

# Whether `amount` more of a limit refuses a request: it would pass the limit (`limit` - `offset`:
# what an outside system counted), and while `amount` is 0, the limit is exhausted — but a limit of
# 0 bans its metric, refusing any amount of it and never a request needing none. Shared by the
# reservation scripts; `decision.refuses` is its Python twin.
_REFUSES_LUA = """
local function refuses(current, amount, limit, offset)
  return (amount > 0 or limit > 0) and current + math.max(amount, 1) > limit - offset
end
"""


# A reservation's marker (`{prefix}:{<subject>}:reserved:<token>`), written when it is admitted.
_MARK_LUA = """
local function mark(key, ttl)
  redis.call('SET', key, '1', 'PX', ttl)
end
"""

# What every reservation script does (`_reserve_tail_local` is its twin): `n` counters (KEYS[1..n]),
# their ARGV in runs of `stride` after ARGV[at] (amount, limit, offset, TTL in ms first); `current(i, a)`
# reads counter i's count (a: where its run begins), `added(i, a)` (when given) runs after counter i is
# added to. Only if every counter fits (`refuses`) are the amounts added; a marker, when ARGV has one
# more (the marker's shortest TTL, the last ARGV), is the last KEY. Answers {denied (0: admitted; else
# the first refusing counter, from 1), the count of each counter}.
_RESERVE_TAIL_LUA = _REFUSES_LUA + _MARK_LUA + """
local function reserve(n, at, stride, current, added)
  local marked = #ARGV > at + stride * n
  local ran = marked and redis.call('EXISTS', KEYS[#KEYS]) == 1
  local used = {}
  local denied = 0
  for i = 1, n do
    local a = at + (i - 1) * stride
    local count = current(i, a)
    used[i] = count
    if denied == 0 and refuses(count, tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])) then
      denied = i
    end
  end
  if ran then
    denied = 0
  elseif denied == 0 then
    local ttl = 0
    for i = 1, n do
      local a = at + (i - 1) * stride
      local amount = tonumber(ARGV[a + 1])
      ttl = math.max(ttl, tonumber(ARGV[a + 4]))
      if amount > 0 then
        used[i] = redis.call('INCRBY', KEYS[i], amount)
        redis.call('PEXPIRE', KEYS[i], ARGV[a + 4])
        if added then
          added(i, a)
        end
      end
    end
    if marked then
      mark(KEYS[#KEYS], math.max(ttl, tonumber(ARGV[#ARGV])))
    end
  end
  table.insert(used, 1, denied)
  return used
end
"""

# KEYS are the counters, ARGV 4 per counter: amount, limit, offset, TTL in ms. A reservation that
# will be settled (not a peek) adds its marker (`_MARK_LUA`): one more KEY and one more ARGV, the
# marker's shortest TTL. A marker already there means this reservation ran before (this is redis-py's
# cluster retry after its reply was lost) or was given back unanswered (`_GIVE_BACK_LUA`): it counts
# nothing again, and answers as admitted.
_RESERVE_LUA = _RESERVE_TAIL_LUA + """
return reserve(math.floor(#ARGV / 4), 0, 4, function(i)
  return tonumber(redis.call('GET', KEYS[i]) or '0')
end)
"""


def _mark_local(ops: LocalOps, key: str, ttl_ms: int) -> None:
    ops.set(key, b"1", ttl_ms / 1000)


def _reserve_tail_local(
    ops: LocalOps, keys: list[str], args: list[str], n: int, at: int, stride: int,
    current: Callable[[int, int], int], added: Callable[[int, int], None] | None = None,
) -> list[int]:
    """`_RESERVE_TAIL_LUA`'s `reserve`, indexes from 0: counter i's run begins at `args[at + stride * i]`."""
    marked = len(args) > at + stride * n
    ran = marked and ops.get(keys[-1]) is not None
    used: list[int] = []
    denied = 0
    for i in range(n):
        a = at + stride * i
        count = current(i, a)
        used.append(count)
        if denied == 0 and refuses(count, int(args[a]), int(args[a + 1]), int(args[a + 2])):
            denied = i + 1
    if ran:
        denied = 0
    elif denied == 0:
        ttl = 0
        for i in range(n):
            a = at + stride * i
            amount = int(args[a])
            ttl = max(ttl, int(args[a + 3]))
            if amount > 0:
                used[i] = ops.incrby(keys[i], amount)
                ops.expire(keys[i], int(args[a + 3]) / 1000)
                if added is not None:
                    added(i, a)
        if marked:
            _mark_local(ops, keys[-1], max(ttl, int(args[-1])))
    return [denied, *used]


def _reserve_local(ops: LocalOps, keys: list[str], args: list[str]) -> list[int]:
    return _reserve_tail_local(ops, keys, args, len(args) // 4, 0, 4, lambda i, _: int(ops.get(keys[i]) or 0))


# A plan with external (Zion) limits: KEYS are the counters, then the in-flight hashes of the
# external ones; ARGV[1] is now (ms), ARGV[2] the reservation's token, then 6 per counter: amount,
# limit, offset, TTL in ms, the index of its hash among those KEYS (0: not external) and the
# deadline (ms) of its entry there. The check is `_RESERVE_LUA`'s; a missing external counter (a new
# reading) starts at what is still running (live entries of its hash, expired ones pruned), and an
# admitted reservation puts its entry in the hash of each external counter it adds to. A reservation
# that will be settled adds its marker as `_RESERVE_LUA` does: the last KEY, the last ARGV (one
# already there: it counts nothing).
_RESERVE_EXTERNAL_LUA = _RESERVE_TAIL_LUA + """
local now = tonumber(ARGV[1])
local n = math.floor((#ARGV - 2) / 6)
local function in_flight(key)
  local total = 0
  local entries = redis.call('HGETALL', key)
  for j = 1, #entries, 2 do
    local amount, deadline = string.match(entries[j + 1], '^(%d+):(%d+)$')
    if amount and tonumber(deadline) > now then
      total = total + tonumber(amount)
    else
      redis.call('HDEL', key, entries[j])
    end
  end
  return total
end
local running = {}
local function current(i, a)
  local h = tonumber(ARGV[a + 5])
  local count = redis.call('GET', KEYS[i])
  if count then
    return tonumber(count)
  elseif h > 0 then
    if running[h] == nil then
      running[h] = in_flight(KEYS[n + h])
    end
    count = running[h]
    if count > 0 then
      redis.call('SET', KEYS[i], count, 'PX', ARGV[a + 4])
    end
    return count
  end
  return 0
end
local function added(i, a)
  local h = tonumber(ARGV[a + 5])
  if h > 0 then
    redis.call('HSET', KEYS[n + h], ARGV[2], ARGV[a + 1] .. ':' .. ARGV[a + 6])
    redis.call('PEXPIRE', KEYS[n + h], ARGV[a + 4])
  end
end
return reserve(n, 2, 6, current, added)
"""

_ENTRY = re.compile(r"([0-9]+):([0-9]+)")


def _in_flight(ops: LocalOps, key: str, now: int) -> int:
    total = 0
    for token, value in ops.hgetall(key).items():
        entry = _ENTRY.fullmatch(value.decode())
        if entry and int(entry[2]) > now:
            total += int(entry[1])
        else:
            ops.hdel(key, token)
    return total


def _reserve_external_local(ops: LocalOps, keys: list[str], args: list[str]) -> list[int]:
    now, token = int(args[0]), args[1]
    n = (len(args) - 2) // 6
    running: dict[int, int] = {}

    def current(i: int, a: int) -> int:
        h = int(args[a + 4])
        raw = ops.get(keys[i])
        if raw is not None:
            return int(raw)
        if h > 0:
            if h not in running:
                running[h] = _in_flight(ops, keys[n + h - 1], now)
            count = running[h]
            if count > 0:
                ops.set(keys[i], str(count).encode(), int(args[a + 3]) / 1000)
            return count
        return 0

    def added(i: int, a: int) -> None:
        h = int(args[a + 4])
        if h > 0:
            ops.hset(keys[n + h - 1], token, f"{args[a]}:{args[a + 5]}".encode())
            ops.expire(keys[n + h - 1], int(args[a + 3]) / 1000)

    return _reserve_tail_local(ops, keys, args, n, 2, 6, current, added)


# A delta per key (ARGV[2i-1]) and how to apply it (ARGV[2i]): "" adjusts a window that still exists
# (an expired window no longer limits anything: a refund there is moot); a TTL in ms adds to the
# window, creating it if needed (usage above a reservation, settled after its window ended, lands
# in the window current at the settlement). A counter never goes below 0.
_ADJUST_ONE_LUA = """
local function adjust(key, delta, ttl)
  if delta ~= 0 and (ttl ~= '' or redis.call('EXISTS', key) == 1) then
    local value = redis.call('INCRBY', key, delta)
    if value < 0 then
      redis.call('INCRBY', key, -value)
    end
    if ttl ~= '' and redis.call('PTTL', key) < 0 then
      redis.call('PEXPIRE', key, ttl)
    end
  end
end
"""
# What every settlement script does once it knows it applies (`_settle_tail_local` is its twin): the
# `m` KEYS after KEYS[first] are counters, adjusted by the pairs that begin at ARGV[at]; the KEYS
# after those are in-flight hashes, from which the reservation's entry (`token`) is removed.
_SETTLE_LUA = _ADJUST_ONE_LUA + """
local function settle(first, m, at, token)
  for i = 1, m do
    adjust(KEYS[first + i], tonumber(ARGV[at + 2 * i - 2]), ARGV[at + 2 * i - 1])
  end
  for i = first + m + 1, #KEYS do
    redis.call('HDEL', KEYS[i], token)
  end
end
"""
# The settlement of a reservation, once: KEYS[1] is its marker (`_MARK_LUA`), the others counters
# with their pairs in ARGV. Only a call that deletes the marker adjusts anything (1); a settlement
# sent again after one that ran (its reply lost) finds it gone and changes nothing (0).
_ADJUST_LUA = _SETTLE_LUA + """
if redis.call('DEL', KEYS[1]) == 0 then
  return 0
end
settle(1, #KEYS - 1, 1, '')
return 1
"""


def _unmark_local(ops: LocalOps, key: str) -> bool:
    """Delete the marker `key`; whether it was there (Redis's `DEL` answering 1)."""
    if ops.get(key) is None:
        return False
    ops.delete(key)
    return True


def _settle_local(ops: LocalOps, keys: list[str], args: list[str]) -> int:
    if not _unmark_local(ops, keys[0]):
        return 0
    _settle_tail_local(ops, keys, args, 1, len(keys) - 1, 0, "")
    return 1


def _settle_tail_local(
    ops: LocalOps, keys: list[str], args: list[str], first: int, m: int, at: int, token: str,
) -> None:
    """`_SETTLE_LUA`'s `settle`, indexes from 0: the `m` counters from `keys[first]` adjusted by the
    pairs from `args[at]`, then `token`'s entry removed from the in-flight hashes after them."""
    for n, key in enumerate(keys[first : first + m]):
        _adjust_local(ops, key, int(args[at + 2 * n]), args[at + 2 * n + 1])
    for key in keys[first + m :]:
        ops.hdel(key, token)


def _adjust_local(ops: LocalOps, key: str, delta: int, ttl: str) -> None:
    """`_ADJUST_ONE_LUA`'s `adjust`."""
    if delta != 0 and (ttl != "" or ops.get(key) is not None):
        value = ops.incrby(key, delta)
        if value < 0:
            ops.incrby(key, -value)  # incrby keeps the key's TTL, unlike set
        if ttl != "" and ops.pttl(key) < 0:
            ops.expire(key, int(ttl) / 1000)


# The settlement of a reservation on external limits, once (`_ADJUST_LUA`'s marker, KEYS[1]):
# `_ADJUST_LUA` on the next (#ARGV - 1) / 2 KEYS (their pairs from ARGV[2]), then the reservation's
# entry (token ARGV[1]) removed from the in-flight hashes that are the remaining KEYS.
_ADJUST_EXTERNAL_LUA = _SETTLE_LUA + """
if redis.call('DEL', KEYS[1]) == 0 then
  return 0
end
settle(1, (#ARGV - 1) / 2, 2, ARGV[1])
return 1
"""


def _adjust_external_local(ops: LocalOps, keys: list[str], args: list[str]) -> int:
    if not _unmark_local(ops, keys[0]):
        return 0
    _settle_tail_local(ops, keys, args, 1, (len(args) - 1) // 2, 1, args[0])
    return 1


# The settlement of a reservation whose script call went unanswered (`Reservation.lost`: it may have
# run, or may still run, late), once: KEYS[1] is its marker, the next (#ARGV - 2) / 2 KEYS counters
# with their pairs from ARGV[3], the remaining KEYS its in-flight hashes (token ARGV[1]). A marker
# there (the reservation ran) goes, and its changes are made; none there (it never ran, or not yet)
# leaves a tombstone in its place for ARGV[2] ms, so that a run arriving later counts nothing
# (`_RESERVE_LUA`); a tombstone there (this ran already) changes nothing. 1 when it applied.
_GIVE_BACK_LUA = _SETTLE_LUA + """
local mark = redis.call('GET', KEYS[1])
if not mark then
  redis.call('SET', KEYS[1], '0', 'PX', ARGV[2])
  return 0
elseif mark ~= '1' then
  return 0
end
redis.call('DEL', KEYS[1])
settle(1, (#ARGV - 2) / 2, 3, ARGV[1])
return 1
"""


def _give_back_local(ops: LocalOps, keys: list[str], args: list[str]) -> int:
    mark = ops.get(keys[0])
    if mark is None:
        ops.set(keys[0], b"0", int(args[1]) / 1000)
        return 0
    if mark != b"1":
        return 0
    ops.delete(keys[0])
    _settle_tail_local(ops, keys, args, 1, (len(args) - 2) // 2, 2, args[0])
    return 1


# The settlement of a held reservation (`QuotaLimiter.settle_held`), once: KEYS[1] is where it is
# held, which must still hold ARGV[1] (what the settler read: a second settler finds it gone and
# changes nothing); this call's own mark (ARGV[4], not JSON) takes its place for ARGV[5] ms, so a
# second run of this call (redis-py's cluster retry after a lost reply) answers as the first did —
# answering 0, the read charged the usage on its own reservation too. The reservation's marker
# (KEYS[2]) is deleted (this record is what says it is unsettled now), `_ADJUST_LUA`'s pairs (from
# ARGV[6]) applied to the next ARGV[3] KEYS, and the reservation's entry (token ARGV[2]) removed from
# the in-flight hashes that are the remaining KEYS. 1 when this call settled it, else 0.
_SETTLE_HELD_LUA = _SETTLE_LUA + """
local held = redis.call('GET', KEYS[1])
if held == ARGV[4] then
  return 1
elseif held ~= ARGV[1] then
  return 0
end
-- (a write first that is no DENYOOM one: under `maxmemory` a script already writing may go on, so
-- a settlement, which frees memory, still runs on a full Redis)
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
settle(2, tonumber(ARGV[3]), 6, ARGV[2])
return 1
"""


def _settle_held_local(ops: LocalOps, keys: list[str], args: list[str]) -> int:
    raw = ops.get(keys[0])
    if raw is not None and raw.decode() == args[3]:
        return 1
    if raw is None or raw.decode() != args[0]:
        return 0
    ops.delete(keys[1])
    ops.set(keys[0], args[3].encode(), int(args[4]) / 1000)
    _settle_tail_local(ops, keys, args, 2, int(args[2]), 5, args[1])
    return 1


# What a local limiter counted while Redis was away, handed back to Redis's counters once
# (`QuotaLimiter.take`): KEYS[1] is the hand-back's marker (`{prefix}:{<subject>}:handed:<token>`), the
# others counters with `_ADJUST_LUA`'s pairs from ARGV[2] (each a TTL: created if need be). Only the call
# that writes the marker (for ARGV[1] ms) adds anything (1); sent again after a reply was lost, it finds
# the marker and changes nothing (0).
_HAND_BACK_LUA = _SETTLE_LUA + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
settle(1, #KEYS - 1, 2, '')
return 1
"""


# A plan change's seed of counters (`QuotaLimiter.seed`): KEYS are counters, ARGV 2 per counter: the
# count it must at least hold, and the TTL in ms a counter made here gets. A counter below its count
# is raised to it (INCRBY: a live one keeps its TTL), never lowered; run twice (redis-py's cluster
# retry), the second run finds each at its count and changes nothing.
_SEED_LUA = """
for i = 1, #KEYS do
  local amount = tonumber(ARGV[2 * i - 1])
  local count = tonumber(redis.call('GET', KEYS[i]) or '0')
  if amount > count then
    redis.call('INCRBY', KEYS[i], amount - count)
    if redis.call('PTTL', KEYS[i]) < 0 then
      redis.call('PEXPIRE', KEYS[i], ARGV[2 * i])
    end
  end
end
return 1
"""


def _hand_back_local(ops: LocalOps, keys: list[str], args: list[str]) -> int:
    if ops.get(keys[0]) is not None:
        return 0
    ops.set(keys[0], b"1", int(args[0]) / 1000)
    _settle_tail_local(ops, keys, args, 1, len(keys) - 1, 1, "")
    return 1


def _seed_local(ops: LocalOps, keys: list[str], args: list[str]) -> int:
    for i, key in enumerate(keys):
        amount, count = int(args[2 * i]), int(ops.get(key) or 0)
        if amount > count:
            ops.incrby(key, amount - count)
            if ops.pttl(key) < 0:
                ops.expire(key, int(args[2 * i + 1]) / 1000)
    return 1


RESERVE = Script("sentinel_quota_reserve", _RESERVE_LUA, _reserve_local)
HAND_BACK = Script("sentinel_quota_hand_back", _HAND_BACK_LUA, _hand_back_local)
SEED = Script("sentinel_quota_seed", _SEED_LUA, _seed_local)
SETTLE_HELD = Script("sentinel_quota_settle_held", _SETTLE_HELD_LUA, _settle_held_local)
ADJUST = Script("sentinel_quota_adjust", _ADJUST_LUA, _settle_local)
RESERVE_EXTERNAL = Script("sentinel_quota_reserve_external", _RESERVE_EXTERNAL_LUA, _reserve_external_local)
ADJUST_EXTERNAL = Script("sentinel_quota_adjust_external", _ADJUST_EXTERNAL_LUA, _adjust_external_local)
GIVE_BACK = Script("sentinel_quota_give_back", _GIVE_BACK_LUA, _give_back_local)


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
    # On external limits: the in-flight hashes holding this reservation's entry, under `token`.
    in_flight: tuple[str, ...] = ()
    token: str = field(default="", repr=False)
    # The key whose presence says this reservation is still to settle (`{prefix}:{<subject>}:reserved:<token>`;
    # "" when nothing was counted): its settlement runs only in the call that deletes it.
    marker: str = field(default="", repr=False)
    # Made by a script call whose outcome is unknown (`reserve`'s `on_lost`): it may have run, or run
    # later; its settlement (`GIVE_BACK`) applies only if it did, and stops a later run from counting.
    lost: bool = False

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
        settle_within: float = SETTLE_WITHIN,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.clock = clock
        self.ttl_margin = ttl_margin
        self._settle_within_ms = math.ceil(settle_within * 1000)  # a marker's shortest life
        self._bases: dict[tuple[str, str, int], str] = {}  # key prefixes, built once per user and limit
        # Reservation tokens: this limiter's random prefix and a count, unique across processes.
        self._token_prefix = os.urandom(8).hex()
        self._tokens = itertools.count()

    def _base(self, subject: str, limit: Limit) -> str:
        key = (subject, limit.metric, limit.window_seconds)
        base = self._bases.get(key)
        if base is None:
            base = f"{self.prefix}:{{{hash_tag(subject)}}}:{limit.metric}:{limit.window_seconds}"
            if len(self._bases) >= 50_000:
                self._bases.clear()
            self._bases[key] = base
        return base

    def _new_token(self) -> str:
        """A token no other call of any process makes (this limiter's random prefix and a count)."""
        return f"{self._token_prefix}{next(self._tokens):x}"

    def _marker(self, subject: str, token: str) -> str:
        """The key marking the reservation `token` of `subject` unsettled (in its counters' slot)."""
        key = (subject, "", 0)  # (no limit's metric is "")
        base = self._bases.get(key)
        if base is None:
            base = f"{self.prefix}:{{{hash_tag(subject)}}}:reserved:"
            if len(self._bases) >= 50_000:
                self._bases.clear()
            self._bases[key] = base
        return base + token

    def _slot(self, subject: str, limit: Limit, now: float) -> tuple[str, float, int]:
        """(key, reset_at, ttl_ms) of the counter `limit` uses at time `now`."""
        base = self._base(subject, limit)
        if limit.external is not None:
            reset_at = limit.external.reset_after(now, limit.window_seconds)
            ttl = limit.window_seconds + self.ttl_margin
            return f"{base}:x{limit.external.snapshot}", reset_at, math.ceil(ttl * 1000)
        index = math.floor(now / limit.window_seconds)
        reset_at = float((index + 1) * limit.window_seconds)
        return f"{base}:{index}", reset_at, self._ttl_ms(reset_at, now)

    def _ttl_ms(self, reset_at: float, now: float) -> int:
        """The TTL (ms) of a counter whose window ends at `reset_at`, at `now`: `ttl_margin` past its end."""
        return math.ceil((reset_at - now + self.ttl_margin) * 1000)

    def _handed_key(self, subject: str, token: str) -> str:
        """The marker of the hand-back `token` of `subject` (`take`), in its counters' slot."""
        return f"{self.prefix}:{{{hash_tag(subject)}}}:handed:{token}"

    async def take(self, subject: str, token: str, counts: Sequence[tuple[str, int, float]]) -> None:
        """Add to this store's counters of `subject` what another limiter with the same key names counted
        (a `LocalLimiter`'s, handed back once the store answers): `counts` of (counter key, amount, the
        end of its window), each with its window's TTL, as a settlement's usage above its reservation
        is (`_ADJUST_LUA`). Once however often sent: the one call that writes the marker of `token`
        adds them (`HAND_BACK`). Windows ended by now are left out (they limit nothing any more)."""
        now = self.clock()
        keys = [self._handed_key(subject, token)]
        args: list[str | int] = [0]
        for key, amount, reset_at in counts:
            if reset_at > now and amount > 0:
                keys.append(key)
                args += [amount, self._ttl_ms(reset_at, now)]
        if len(keys) == 1:
            return
        # The marker outlives every counter it added to: a send after it is gone finds their windows
        # ended, and sends nothing.
        args[0] = max(int(ttl) for ttl in args[2::2])
        await self.store.run(HAND_BACK, keys, args)

    def window_start(self, limit: Limit, now: float) -> float:
        """When the window of `limit` current at `now` began (Unix seconds; its counter's `_slot`)."""
        return math.floor(now / limit.window_seconds) * float(limit.window_seconds)

    async def seed(self, subject: str, counts: Sequence[tuple[Limit, int]], now: float) -> None:
        """Raise each counter `subject` has at `now` for a limit of `counts` to at least its count,
        never lowering one (a plan change's seed from the ledger: `AdminService`), in one atomic
        call; a counter made here lives as a reservation's would (`_slot`). External (Zion) limits
        and counts of 0 are left alone. StoreUnavailable when the store does not take it (sent
        again, it changes nothing more)."""
        keys: list[str] = []
        args: list[int] = []
        for limit, count in counts:
            if limit.external is None and count > 0:
                key, _, ttl_ms = self._slot(subject, limit, now)
                keys.append(key)
                args += [count, ttl_ms]
        if keys:
            await self.store.run(SEED, keys, args)

    async def reserve(
        self, subject: str, plan: Plan, *, requests: int = 1, input_tokens: int, output_tokens: int,
        tokens_later: bool = False, on_lost: Callable[[Reservation], None] | None = None,
    ) -> Reservation:
        """Check every limit of `plan` and, only if all fit, count the request against all of them.

        `tokens_later`: a call that reserves no tokens but may be charged some once answered (a
        pass-through call: a batch, a run, an image): it needs every token metric, so a token
        limit of 0 (a banned metric) refuses it outright, the store untouched.

        Raises StoreUnavailable when the store cannot be reached (the caller applies the failure
        mode); a denial is not an exception: see `reservation.decision` / `decision.to_error()`.
        When the script call's outcome is unknown (StoreUnavailable other than StoreRefused: a reply
        lost to a timeout or a cut connection; or the call cancelled), it may have run, or may run
        late: `on_lost` then gets the reservation it would have made (`lost`), which `release`
        gives back if it ran — once, however often sent — and keeps from counting if it runs after.
        """
        if min(requests, input_tokens, output_tokens) < 0:
            raise ValueError("reserved amounts cannot be negative")
        return await self._reserve(subject, plan, requests, input_tokens, output_tokens, tokens_later, marked=True,
                                   on_lost=on_lost)

    async def _reserve(
        self, subject: str, plan: Plan, requests: int, input_tokens: int, output_tokens: int, tokens_later: bool,
        *, marked: bool, on_lost: Callable[[Reservation], None] | None = None,
    ) -> Reservation:
        """`reserve`; `marked`: an admitted reservation is to be settled (not a peek), so it is marked."""
        wanted = {"requests": requests, "input_tokens": input_tokens, "output_tokens": output_tokens}
        now = self.clock()
        slots = [self._slot(subject, limit, now) for limit in plan.limits]
        amounts = tuple(wanted[limit.metric] for limit in plan.limits)
        keys = tuple(key for key, _, _ in slots)
        denied = 0
        used: list[int] = []
        in_flight: tuple[str, ...] = ()
        token = marker = ""
        if marked and plan.limits:
            token = self._new_token()
            marker = self._marker(subject, token)
        banned = next((i for i, limit in enumerate(plan.limits) if limit.limit == 0 and limit.metric != "requests"),
                      None) if tokens_later else None
        if banned is not None:
            # Refused as needing a token of the banned metric (`Decision.oversized`: no Retry-After).
            amounts = tuple(1 if i == banned else amount for i, amount in enumerate(amounts))
            denied, used = banned + 1, [0] * len(plan.limits)
        elif plan.limits:
            script, call_keys, args, in_flight = self._reserve_call(subject, plan, amounts, slots, now, token, marker)
            try:
                denied, *used = (int(v) for v in await self.store.run(script, call_keys, args))
            except StoreRefused:
                raise  # it did not run
            except (StoreUnavailable, asyncio.CancelledError):
                if marker and on_lost is not None:
                    on_lost(Reservation(
                        subject, Decision(True, None, None, None, None, None), keys, plan.limits, amounts, requests,
                        input_tokens, output_tokens, owner=self, reserved_at=now, in_flight=in_flight, token=token,
                        marker=marker, lost=True,
                    ))
                raise
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
            in_flight=in_flight if decision.allowed else (),
            token=token,
            marker=marker if decision.allowed else "",
        )

    def _reserve_call(
        self, subject: str, plan: Plan, amounts: tuple[int, ...], slots: list[tuple[str, float, int]], now: float,
        token: str, marker: str,
    ) -> tuple[Script, list[str], list[int | str], tuple[str, ...]]:
        """`reserve`'s script call: (script, keys, args, the in-flight hashes an admitted reservation
        has its entry in, under `token`: external limits only)."""
        if plan.external:
            return self._reserve_external_call(subject, plan, amounts, slots, now, token, marker)
        args: list[int | str] = []
        for limit, amount, (_, _, ttl_ms) in zip(plan.limits, amounts, slots, strict=True):
            args += [amount, limit.limit, limit.offset, ttl_ms]
        keys = [key for key, _, _ in slots]
        if marker:
            keys.append(marker)
            args.append(self._settle_within_ms)
        return RESERVE, keys, args, ()

    def _reserve_external_call(
        self, subject: str, plan: Plan, amounts: tuple[int, ...], slots: list[tuple[str, float, int]], now: float,
        token: str, marker: str,
    ) -> tuple[Script, list[str], list[int | str], tuple[str, ...]]:
        """`_reserve_call` for a plan with external limits. A peek (no `marker`) has no token and
        puts no entry anywhere (it reserves nothing)."""
        now_ms = math.floor(now * 1000)
        hashes: dict[str, int] = {}  # in-flight hash -> its index among the script's extra KEYS (from 1)
        held: list[str] = []  # those this reservation puts an entry in (when admitted)
        args: list[int | str] = [now_ms, token]
        for limit, amount, (_, _, ttl_ms) in zip(plan.limits, amounts, slots, strict=True):
            index, deadline = 0, 0
            if limit.external is not None:
                hash_key = f"{self._base(subject, limit)}:inflight"
                index = hashes.setdefault(hash_key, len(hashes) + 1)
                deadline = now_ms + limit.window_seconds * 1000
                if amount > 0 and hash_key not in held:
                    held.append(hash_key)
            args += [amount, limit.limit, limit.offset, ttl_ms, index, deadline]
        keys = [key for key, _, _ in slots] + list(hashes)
        if marker:
            keys.append(marker)
            args.append(self._settle_within_ms)
        return RESERVE_EXTERNAL, keys, args, tuple(held)

    async def peek(self, subject: str, plan: Plan) -> Decision:
        """Every limit's state, counting nothing; `allowed` says whether a request would fit now."""
        reservation = await self._reserve(subject, plan, 0, 0, 0, False, marked=False)
        return reservation.decision

    async def commit(
        self, reservation: Reservation, *, input_tokens: int, output_tokens: int, requests: int | None = None,
    ) -> None:
        """Replace the reserved token estimates with the actual amounts (up or down, floored at 0).

        The request count stays, unless `requests` replaces it (a batch the provider refused ran none
        of its lines). Applies to the windows the reservation used, even if time has
        moved on since — but usage above the reservation, when that window has ended, is added to
        the window of now (it would limit nothing in the one that ended). One atomic call; no-op for
        a denied or already settled reservation.
        """
        await self._settle(reservation, _deltas(reservation, input_tokens, output_tokens, requests))

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
        # Sent even when nothing changes (exact usage, a plan of request limits alone): it deletes the marker.
        keys, args = self._adjustments(reservation, deltas)
        if reservation.lost:
            await self.store.run(GIVE_BACK, [reservation.marker, *keys, *reservation.in_flight],
                                 [reservation.token, self._settle_within_ms, *args])
        elif reservation.in_flight:
            # The same call takes the reservation's entry out of the in-flight hashes (no longer running).
            await self.store.run(
                ADJUST_EXTERNAL, [reservation.marker, *keys, *reservation.in_flight], [reservation.token, *args])
        elif reservation.marker:
            await self.store.run(ADJUST, [reservation.marker, *keys], args)
        # Only after success: a settle that failed (StoreUnavailable), whatever its outcome, may be sent
        # again — it runs once (the marker).
        reservation.settled = True

    def _adjustments(self, reservation: Reservation, deltas: list[int]) -> tuple[list[str], list[str | int]]:
        """The counters `deltas` (one a limit of `reservation`) change, and `ADJUST`'s pairs for them."""
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
        return keys, args

    # --- reservations held by an object (a batch), settled by whichever replica reads its usage ----
    def _held_key(self, subject: str, name: str) -> str:
        return f"{self.prefix}:{{{hash_tag(subject)}}}:held:{name}"

    async def hold(self, reservation: Reservation, name: str, ttl: float | None) -> bool:
        """Keep an admitted reservation counted past its call, stored under `name` (the object it
        reserved for: a batch's id) so that any replica can settle it (`settle_held`) when a read
        first shows the object's usage; the reservation is no longer this call's to settle. Kept for
        `ttl` seconds (None: 0), HOLD_WITHIN or until its last counter expires, whichever is longest.
        False (and nothing stored: it stays as it is, counted until its windows end) for a settled
        reservation or a name no key can hold."""
        if reservation.owner is not self:
            raise ValueError("a reservation must be held by the limiter that made it")
        if reservation.settled or not 0 < len(name) <= MAX_HELD_NAME or not is_text(name):
            return False
        try:
            held = _dump(reservation)
        except orjson.JSONEncodeError:  # a subject that is no text (a lone surrogate): no key holds it
            return False
        await self.store.set(self._held_key(reservation.subject, name), held, self._held_life(reservation, ttl))
        reservation.settled = True
        return True

    def _held_life(self, reservation: Reservation, ttl: float | None) -> float:
        """How long `hold` keeps `reservation` (seconds from now): `ttl`, HOLD_WITHIN or until the last
        of its counters expires (as it was when reserved), whichever is longest."""
        at = reservation.reserved_at
        ends = [at + self._slot(reservation.subject, limit, at)[2] / 1000 for limit in reservation.limits]
        return max(HOLD_WITHIN, ttl or 0.0, *(end - self.clock() for end in ends))

    async def beside_held(self, subject: str, name: str, plan: Plan) -> Plan | None:
        """The limits a call on the object `subject` holds a reservation for under `name` (`hold`,
        not settled yet: a batch it reads or cancels) is checked against, or None when none is held:
        `plan`'s request limits alone — its token estimate is the held reservation's, settled by
        that read — each raised by the requests the held reservation counted in the window now
        current, so that the batch's own lines (they run) never lock its maker out of it: a batch
        of as many lines as a request limit left could be neither read nor cancelled until that
        window ended. A Zion limit is not raised (its count is Zion's and this process's reading)."""
        if not 0 < len(name) <= MAX_HELD_NAME or not is_text(name):
            return None
        raw = await self.store.get(self._held_key(subject, name))
        held = None if raw is None else self._load(raw)
        if held is None:
            return None
        counted = dict(zip(held.keys, held.amounts, strict=False))
        now = self.clock()
        limits: list[Limit] = []
        for limit in plan.limits:
            if limit.metric != "requests":
                continue
            room = 0 if limit.external is not None else counted.get(self._slot(subject, limit, now)[0], 0)
            limits.append(replace(limit, limit=limit.limit + room) if room > 0 else limit)
        return Plan(plan.name, tuple(limits))

    async def settle_held(
        self, subject: str, name: str, *, input_tokens: int, output_tokens: int, requests: int | None = None,
        again: Callable[[Callable[[], Awaitable[None]]], None] | None = None,
    ) -> bool:
        """Settle the reservation `subject` holds under `name` (`hold`) to the actual token amounts, as
        `commit` does (its request count stays — the lines ran — unless `requests` is given), once
        whichever replicas race to it (one atomic call, `SETTLE_HELD`; run again by redis-py's cluster
        retry, it answers as it did). False when none is held (never held, settled already, or
        kept past its life: `hold`): the caller charges the usage on its own reservation. When the store did
        not take that call (refused, or its outcome unknown) `again` gets it, to send again (it runs
        once: the held record it replaces is what it checks), and the answer is True: the usage is the
        held reservation's to count, never charged on top; without `again`, StoreUnavailable."""
        if not 0 < len(name) <= MAX_HELD_NAME or not is_text(name):
            return False
        key = self._held_key(subject, name)
        raw = await self.store.get(key)
        reservation = None if raw is None else self._load(raw)
        if raw is None or reservation is None:
            return False
        keys, args = self._adjustments(reservation, _deltas(reservation, input_tokens, output_tokens, requests))
        marker = self._marker(reservation.subject, reservation.token)  # (held before markers: none, deleting is moot)
        call_keys = [key, marker, *keys, *reservation.in_flight]
        # This call's own mark in the record's place (`_SETTLE_HELD_LUA`): a token no JSON record is.
        settled_as = f"settled:{self._new_token()}"
        call_args: list[str | int] = [raw.decode(), reservation.token, len(keys), settled_as, self._settle_within_ms,
                                      *args]
        try:
            settled = await self.store.run(SETTLE_HELD, call_keys, call_args)
        except StoreUnavailable:
            if again is None:
                raise

            async def send_again() -> None:
                await self.store.run(SETTLE_HELD, call_keys, call_args)

            again(send_again)
            return True
        return bool(int(settled))

    def _load(self, raw: bytes) -> Reservation | None:
        """A held reservation as `_dump` wrote it, this limiter's; None when it cannot be read."""
        try:
            held = orjson.loads(raw)
            limits = tuple(
                Limit(metric, window, cap, None if used is None else ExternalUsage(used, snapshot, resets_at))
                for metric, window, cap, used, snapshot, resets_at in held["limits"]
            )
            return Reservation(
                held["subject"], Decision(True, None, None, None, None, None), tuple(held["keys"]), limits,
                tuple(held["amounts"]), held["requests"], held["input_tokens"], held["output_tokens"], owner=self,
                reserved_at=held["reserved_at"], in_flight=tuple(held["in_flight"]), token=held["token"],
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


# A held reservation's name is an object's id: at most this long (an owner record's bound).
MAX_HELD_NAME = 200


def _dump(reservation: Reservation) -> bytes:
    """What `hold` stores of a reservation: all its settlement needs (`QuotaLimiter._load`)."""
    limits = [
        [lim.metric, lim.window_seconds, lim.limit, *(
            (None, None, None) if lim.external is None else
            (lim.external.used, lim.external.snapshot, lim.external.resets_at))]
        for lim in reservation.limits
    ]
    return orjson.dumps({
        "subject": reservation.subject, "keys": reservation.keys, "limits": limits, "amounts": reservation.amounts,
        "requests": reservation.requests, "input_tokens": reservation.input_tokens,
        "output_tokens": reservation.output_tokens, "reserved_at": reservation.reserved_at,
        "in_flight": reservation.in_flight, "token": reservation.token,
    })


def _deltas(reservation: Reservation, input_tokens: int, output_tokens: int, requests: int | None) -> list[int]:
    """What `reservation`'s counters change by when its amounts become the actual ones (`requests`
    None: its request count stays)."""
    if min(input_tokens, output_tokens, 0 if requests is None else requests) < 0:
        raise ValueError("token counts cannot be negative")
    actual = {"input_tokens": input_tokens - reservation.input_tokens,
              "output_tokens": output_tokens - reservation.output_tokens,
              "requests": 0 if requests is None else requests - reservation.requests}
    return [actual[limit.metric] for limit in reservation.limits]
