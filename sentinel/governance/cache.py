"""A store-backed cache of governance answers (identities, plans) with a stale-while-down grace.

An entry is *fresh* until `fresh_until`; after that it is kept `grace` seconds longer and served
only while its source is unreachable, so a governance outage does not log everyone out or lift
their limits. An entry never outlives `not_after` when the value carries one (a JWT's `exp`).

Each process also keeps a copy of fresh entries for at most `local_ttl` seconds (never past the
stored freshness), sparing a store round trip per request under load; and decoded values are
memoised by their stored bytes. An entry that cannot be decoded (another version's format,
corruption) is a miss: logged, counted, and overwritten by the next answer, never an error.

A remembered "no such thing" (a refused token, a revoked key's tombstone, a changed plan's `hold`) is
never replaced by a value: only a lookup that began before the refusal can bring one (a key read as
active just before its revocation, a plan read just before an operator changed it), and it must not
bring it back. The refusal expires or is `forget`-ten. A refusal may carry its writer's reason (`put`'s
`reason`, stored as `why`), handed back with it (`Cached.reason`): an expired key's `token_expired`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson

from sentinel.errors import StoreUnavailable
from sentinel.native._wire import is_finite_number
from sentinel.observability.logging import Repeated
from sentinel.observability.metrics import Metrics
from sentinel.store import Store
from sentinel.store.base import DELETE_IF, LUA_FINITE, LocalOps, Script

log = logging.getLogger("sentinel.cache")

# Set KEYS[1] to ARGV[1] for ARGV[2] ms unless it holds a refusal (an entry whose value is null) —
# but a change's hold (`held_at`) when the lookup began after it: ARGV[3], that lookup's start less
# HOLD_MARGIN ("" for none), later than `held_at`. `read`: the stored entry, or nil for none or one
# that cannot be read (decoded under pcall): that is a miss to readers, and this value replaces it
# (it made every put fail: a 500 on the in-process store, nothing cached again on Redis until it
# expired). `_entry` is its twin, and the readers' (`GovernanceCache._decode`).
_PUT_VALUE_LUA = LUA_FINITE + """local function read(raw)
  if not raw then return nil end
  local ok, entry = pcall(cjson.decode, raw)
  if not ok or type(entry) ~= 'table' or entry['v'] == nil or not finite(entry['fresh_until']) then return nil end
  local held = entry['held_at']
  if type(held) == 'number' and not finite(held) then return nil end
  return entry
end
local current = read(redis.call('GET', KEYS[1]))
if current and current['v'] == cjson.null then
  if ARGV[3] == '' then return 0 end
  local held = current['held_at']
  if type(held) ~= 'number' or tonumber(ARGV[3]) <= held then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# How much later than a change's hold a lookup must have begun to cache what it read: the clocks of
# the process that made the change and of the one that looked up may differ by this much.
HOLD_MARGIN = 2.0


def _entry(raw: bytes) -> dict[str, Any]:
    """A stored entry as `put` and `hold` write it: a JSON object with `v` (null for a refusal) and a
    finite number `fresh_until`, and a hold's `held_at`; ValueError for anything else (another
    version's format, corruption, set by hand), which readers count as a miss and `put` replaces.
    The Lua script's `read` is its twin: both must call the same entries unreadable."""
    data = orjson.loads(raw)  # orjson.JSONDecodeError is a ValueError
    if not isinstance(data, dict) or "v" not in data or not is_finite_number(data.get("fresh_until")):
        raise ValueError("not a cache entry: an object with `v` and a number `fresh_until`")
    return data


def _put_value_local(ops: LocalOps, keys: list[str], args: list[str]) -> int:
    raw = ops.get(keys[0])
    try:
        current = None if raw is None else _entry(raw)
    except ValueError:
        current = None  # unreadable: replaced, as a miss
    if current is not None and current["v"] is None:
        if not args[2]:
            return 0
        held = current.get("held_at")
        if not isinstance(held, int | float) or isinstance(held, bool) or float(args[2]) <= held:
            return 0  # a hold with a time (finite: orjson reads none other) lets in a later lookup's value
    ops.set(keys[0], args[0].encode(), int(args[1]) / 1000)
    return 1


PUT_VALUE = Script("sentinel_cache_put_value", _PUT_VALUE_LUA, _put_value_local)

T = TypeVar("T")
D = TypeVar("D")
_MAX_LOCAL = 10_000


@dataclass(frozen=True, slots=True)
class Cached(Generic[T]):
    """A cache hit: the value (None for a remembered "no such thing"), whether it is fresh, and a
    refusal's reason (`put`'s `reason`; None for none, or one that is not a string)."""

    value: T | None
    fresh: bool
    reason: str | None = None


def count_lookup(metrics: Metrics | None, cache: str, result: str) -> None:
    """Count one lookup of `cache` in `sentinel_cache_lookups_total`."""
    if metrics is not None:
        metrics.add(metrics.child(metrics.cache_lookups, cache, result))


async def read_entry(
    store: Store, key: str, decode: Callable[[bytes], D], cache: str, metrics: Metrics | None
) -> D | None:
    """The decoded entry under `key`; None — counted, and logged when undecodable — when it is absent,
    the store is unreachable, or `decode` refuses it (ValueError, TypeError or KeyError)."""
    try:
        raw = await store.get(key)
    except StoreUnavailable:
        count_lookup(metrics, cache, "store_error")
        return None
    if raw is None:
        count_lookup(metrics, cache, "miss")
        return None
    try:
        return decode(raw)
    except (ValueError, TypeError, KeyError) as exc:  # orjson.JSONDecodeError is a ValueError
        count_lookup(metrics, cache, "undecodable")
        log.warning("ignoring an undecodable %s cache entry", cache, extra={"error": str(exc)[:200]})
        return None


class GovernanceCache(Generic[T]):
    """Entries under `<prefix><key>`, encoded as `{"v": <encoded value or null>, "fresh_until": ts}`."""

    def __init__(
        self,
        store: Store,
        *,
        name: str,
        prefix: str,
        encode: Callable[[T], Any],
        decode: Callable[[Any], T],
        ttl: float,
        grace: float,
        clock: Callable[[], float] = time.time,
        local_ttl: float = 0.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.name = name
        self.prefix = prefix
        self.encode = encode
        self.decode = decode
        self.ttl = ttl
        self.grace = grace
        self.clock = clock
        self._repeated = Repeated(log, clock=clock)  # outage lines: once a minute, not once a request
        self.local_ttl = local_ttl
        self.metrics = metrics
        self._local: dict[str, tuple[Cached[T], float]] = {}
        self._decoded: dict[bytes, tuple[T | None, float, str | None]] = {}

    def _count(self, result: str) -> None:
        count_lookup(self.metrics, self.name, result)

    async def get(self, key: str) -> Cached[T] | None:
        """The entry for `key` (fresh or stale), or None when there is none (or it is unreadable)."""
        now = self.clock()
        local = self._local.get(key)
        if local is not None and now < local[1]:
            self._count("local_hit")
            return local[0]
        found = await read_entry(self.store, self.prefix + key, self._decode, self.name, self.metrics)
        if found is None:
            return None
        value, fresh_until, reason = found
        fresh = now < fresh_until
        self._count("hit" if fresh else "stale")
        entry = Cached(value, fresh, reason)
        if fresh and self.local_ttl > 0:
            if len(self._local) >= _MAX_LOCAL:
                self._local.clear()
            self._local[key] = (entry, min(fresh_until, now + self.local_ttl))
        return entry

    def _decode(self, raw: bytes) -> tuple[T | None, float, str | None]:
        hit = self._decoded.get(raw)
        if hit is None:
            data = _entry(raw)
            encoded, why = data["v"], data.get("why")
            reason = why if encoded is None and isinstance(why, str) else None
            hit = (None if encoded is None else self.decode(encoded), float(data["fresh_until"]), reason)
            if len(self._decoded) >= _MAX_LOCAL:
                self._decoded.clear()
            self._decoded[raw] = hit
        return hit

    async def put(
        self, key: str, value: T | None, *, ttl: float | None = None, not_after: float | None = None,
        stale: bool = False, began: float | None = None, reason: str | None = None,
    ) -> None:
        """Remember `value` (None: "there is no such thing", for `reason` when given: handed back in
        `Cached.reason`) fresh for `ttl` (default: the cache's),
        kept `grace` longer for outages, and never past `not_after`; with `stale`, never fresh (for
        any process, whatever its clock: fresh until the epoch) and kept for `grace` — for outages
        only. `began`: when the lookup that found `value` began (`clock`), which may then replace a
        change's `hold` it began HOLD_MARGIN after. A store outage is logged only."""
        now = self.clock()
        if stale:
            fresh_until, keep_until = 0.0, now + self.grace
        else:
            fresh_until = now + (self.ttl if ttl is None else ttl)
            keep_until = fresh_until + (self.grace if value is not None else 0.0)
        if not_after is not None:
            fresh_until, keep_until = min(fresh_until, not_after), min(keep_until, not_after)
        self._local.pop(key, None)
        if keep_until <= now:
            return
        entry = {"v": None if value is None else self.encode(value), "fresh_until": fresh_until}
        if value is None and reason is not None:
            entry["why"] = reason
        try:
            if value is None:
                await self.store.set(self.prefix + key, orjson.dumps(entry), keep_until - now)
            else:  # never over a refusal (see the module docstring)
                keep_ms = max(1, round((keep_until - now) * 1000))
                after = "" if began is None else repr(began - HOLD_MARGIN)
                await self.store.run(PUT_VALUE, [self.prefix + key], [orjson.dumps(entry).decode(), keep_ms, after])
        except StoreUnavailable:
            self._repeated.warning("could not cache a %s entry: store unavailable", self.name, key=self.name)

    async def forget(self, key: str) -> None:
        """Drop the entry for `key` (the next lookup asks the source); raises StoreUnavailable."""
        self._local.pop(key, None)
        await self.store.delete(self.prefix + key)

    async def drop_value(self, key: str) -> None:
        """Drop the value cached for `key`, which changed at its source (the next lookup asks it), but
        never a refusal (a revoked key's tombstone, an expiry): compared and deleted in one step
        (DELETE_IF), so a refusal written after it was read here stays. Raises StoreUnavailable."""
        self._local.pop(key, None)
        raw = await self.store.get(self.prefix + key)
        if raw is None:
            return
        try:
            if _entry(raw)["v"] is None:
                return
        except ValueError:
            pass  # unreadable: a miss to readers anyway
        await self.store.run(DELETE_IF, [self.prefix + key], [raw])

    async def hold(self, key: str, seconds: float, *, reopens: bool = False) -> None:
        """Drop the entry for `key` and keep values out of it for `seconds` (a refusal): a lookup that
        read the source before a change and answers after it cannot cache what it read (see the
        module docstring). With `reopens` (a plan changed: lookups meanwhile ask the source), a
        value found by a lookup that began HOLD_MARGIN after the hold may replace it (`put`'s
        `began`); without (a revoked key's tombstone, identities' lookups refused), none may.
        Raises StoreUnavailable."""
        self._local.pop(key, None)
        now = self.clock()
        entry: dict[str, Any] = {"v": None, "fresh_until": now + seconds}
        if reopens:
            entry["held_at"] = now
        await self.store.set(self.prefix + key, orjson.dumps(entry), seconds)
