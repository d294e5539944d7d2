"""In-process Store backend: a dict with lazy TTL expiry, plus streams. One process only (the embedded default)."""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sentinel.store.base import (
    PendingEntry,
    Ping,
    Script,
    ScriptArg,
    StreamEntry,
    check_replica_wait,
    check_settle,
    check_stream_fields,
    seconds_left,
)
from sentinel.store.memory_streams import MemoryStreams

_WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"


class _Ops:
    """The synchronous primitives, shared by the async API and by scripts.

    Strings live in `data`, hashes in `hashes` (a key is in at most one of them, as a Redis key has
    one type); `expiry` holds the deadline of either kind.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.data: dict[str, bytes] = {}
        self.hashes: dict[str, dict[str, bytes]] = {}
        self.expiry: dict[str, float] = {}

    def now(self) -> float:
        return self._clock()

    def _expired(self, key: str) -> bool:
        """Whether `key` has expired (then it is dropped now)."""
        deadline = self.expiry.get(key)
        if deadline is not None and deadline <= self._clock():
            self.delete(key)
            return True
        return False

    def _alive(self, key: str) -> bool:
        return not self._expired(key) and (key in self.data or key in self.hashes)

    def _hash(self, key: str) -> dict[str, bytes] | None:
        """The live hash at `key`, None when missing; a live string there is an error, as in Redis."""
        if self._expired(key):
            return None
        if key in self.data:
            raise TypeError(_WRONGTYPE)
        return self.hashes.get(key)

    def exists(self, key: str) -> bool:
        return self._alive(key)

    def get(self, key: str) -> bytes | None:
        """The live string at `key`, None when missing; a live hash there is an error, as in Redis.
        (`_expired`'s check written out: the scripts' reads, ~14 a request, make one call, not three.)"""
        deadline = self.expiry.get(key)
        if deadline is not None and deadline <= self._clock():
            self.delete(key)
            return None
        value = self.data.get(key)
        if value is None and key in self.hashes:
            raise TypeError(_WRONGTYPE)
        return value

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self.hashes.pop(key, None)  # SET replaces a value of any type
        self.data[key] = value
        if ttl is None:
            self.expiry.pop(key, None)
        else:
            self.expiry[key] = self._clock() + ttl

    def incrby(self, key: str, amount: int) -> int:
        found = self.get(key)
        current = 0 if found is None else int(found)
        current += amount
        self.data[key] = str(current).encode()
        return current

    def expire(self, key: str, ttl: float) -> None:
        if self._alive(key):
            self.expiry[key] = self._clock() + ttl

    def pttl(self, key: str) -> int:
        if not self._alive(key):
            return -2
        deadline = self.expiry.get(key)
        if deadline is None:
            return -1
        return max(0, int((deadline - self._clock()) * 1000))

    def delete(self, key: str) -> None:
        self.data.pop(key, None)
        self.hashes.pop(key, None)
        self.expiry.pop(key, None)

    def hgetall(self, key: str) -> dict[str, bytes]:
        return dict(self._hash(key) or {})

    def hset(self, key: str, field: str, value: bytes) -> None:
        found = self._hash(key)
        if found is None:
            found = self.hashes[key] = {}
            self.expiry.pop(key, None)  # a new key has no TTL
        found[field] = value

    def hdel(self, key: str, *fields: str) -> int:
        found = self._hash(key)
        if found is None:
            return 0
        removed = sum(found.pop(name, None) is not None for name in fields)
        if not found:
            self.delete(key)  # a hash disappears with its last field
        return removed

    def keys(self) -> list[str]:
        return [*self.data, *self.hashes]

    def sweep(self) -> None:
        now = self._clock()
        for key in [k for k, d in self.expiry.items() if d <= now]:
            self.delete(key)


class MemoryStore:
    """Store backed by process memory. `clock` is injectable for TTL and stream idle-time tests."""

    backend = "memory"
    shared = False

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._ops = _Ops(clock)
        self._streams = MemoryStreams(clock)
        self._writes = 0

    def _maybe_sweep(self) -> None:
        # Expired keys are dropped on read; a periodic sweep bounds memory for keys never read again.
        self._writes += 1
        if self._writes % 1024 == 0:
            self._ops.sweep()

    async def get(self, key: str) -> bytes | None:
        return self._ops.get(key)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self._ops.get(key) for key in keys]

    async def shard_keys(self, key: str) -> list[str]:
        return [key]

    async def set(
        self, key: str, value: bytes, ttl: float | None = None, *, nx: bool = False, xx: bool = False
    ) -> bool:
        if (nx or xx) and (self._ops.exists(key) if nx else not self._ops.exists(key)):
            return False
        self._ops.set(key, value, ttl)
        self._maybe_sweep()
        return True

    async def delete(self, *keys: str) -> int:
        count = 0
        for key in keys:
            if self._ops.exists(key) or self._streams.delete(key):
                count += 1
            self._ops.delete(key)
        return count

    async def expire(self, key: str, ttl: float) -> bool:
        if not self._ops.exists(key):
            return False
        self._ops.expire(key, ttl)
        return True

    async def ttl(self, key: str) -> float | None:
        return seconds_left(self._ops.pttl(key))

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        is_new = not self._ops.exists(key)
        value = self._ops.incrby(key, amount)
        if ttl is not None and is_new:
            self._ops.expire(key, ttl)
        self._maybe_sweep()
        return value

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        # Lua's ARGV holds strings, and so do the local twins' `args`: a script that forgets to
        # convert a number fails here as it would on Redis (and the annotation `list[str]` is true).
        plain = [a.decode() if isinstance(a, bytes) else str(a) for a in args]
        result = script.local(self._ops, list(keys), plain)
        self._maybe_sweep()
        return result

    async def stream_add(
        self, key: str, fields: Mapping[str, bytes], *, replicas: int = 0, replica_timeout_ms: int = 100,
        group: str | None = None,
    ) -> str:
        check_replica_wait(replicas, replica_timeout_ms)
        check_stream_fields(fields)
        # One process has no replica to wait for: `replicas` is accepted and has nothing to do.
        return self._streams.add(key, fields)

    async def stream_read(self, key: str, group: str, consumer: str, count: int) -> list[StreamEntry]:
        if count <= 0:
            return []
        return self._streams.read(key, group, consumer, count)

    async def stream_idle(
        self, key: str, group: str, *, min_idle_ms: int, count: int, consumer: str | None = None,
        after: str | None = None,
    ) -> list[PendingEntry]:
        if count <= 0:
            return []
        return self._streams.idle(key, group, min_idle_ms, count, consumer, after)

    async def stream_reclaim(
        self, key: str, group: str, owner: str, ids: Sequence[str], *, min_idle_ms: int, to: str | None = None
    ) -> list[StreamEntry]:
        return self._streams.reclaim(key, group, owner, ids, min_idle_ms, to or owner)

    async def stream_settle(
        self,
        key: str,
        group: str,
        consumer: str,
        *,
        done: Sequence[str] = (),
        retry: Sequence[str] = (),
        retry_to: str | None = None,
    ) -> int:
        check_settle(done, retry, retry_to)
        return self._streams.settle(key, group, consumer, done, retry, retry_to)

    async def stream_range(self, key: str, *, after: str | None = None, count: int = 100) -> list[StreamEntry]:
        if count <= 0:
            return []
        return self._streams.range(key, after, count)

    async def stream_len(self, key: str) -> int:
        return self._streams.length(key)

    async def scan(self, pattern: str, limit: int = 100) -> list[str]:
        self._ops.sweep()
        keys = [*self._ops.keys(), *self._streams.keys()]
        return [k for k in keys if fnmatch.fnmatchcase(k, pattern)][:limit]

    async def ping(self) -> Ping:
        return Ping(0.0)

    async def eviction(self) -> str | None:
        return None  # keys go only when their TTL ends (or are deleted)

    async def close(self) -> None:
        return None
