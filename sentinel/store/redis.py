"""Redis Store backend: one redis-py asyncio pool (hiredis parser) shared by the whole app.

Every call has a short socket timeout, and a circuit breaker turns a dead Redis into an immediate
`StoreUnavailable` instead of a hang per request (one breaker per server; on a cluster, one per
primary: `cluster.py`). Redis exceptions are translated here, once, by `guard()` (for the cluster
variant too): an outage (connection refused or reset, timeout, a cluster slot without a serving
primary, a failover in progress) trips the breaker; a command error (a bug or bad data) does not.
A command that surely did not run (refused by Redis — out of memory, a read-only replica, a
redirection — or never sent) is `StoreRefused`, which a caller may send again. A READONLY answer
means the server behind the URL was demoted by a failover: the pooled connections are dropped, so
the next command connects afresh — to the new primary when the address moved with the failover
(DNS, a virtual IP or a proxy in front of managed Redis).
Scripts run with EVALSHA; a node that does not know a script yet gets its body once with EVAL.

On a single server, the hot-path commands (scripts and stream appends without a replica wait) go
through an `AutoPipeline`: those issued while another is on the wire are sent together, one
pipeline for many requests (`autopipeline.py`). The cluster variant sends them one by one
through redis-py's cluster client, which routes each to its slot's primary.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, ConnectionPool
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    CrossSlotTransactionError,
    InvalidPipelineStack,
    MaxConnectionsError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from sentinel.breaker import CircuitBreaker
from sentinel.errors import StoreRefused, StoreUnavailable
from sentinel.store import redis_streams as lua
from sentinel.store.autopipeline import AutoPipeline, NotSent
from sentinel.store.base import (
    PendingEntry,
    Ping,
    Script,
    ScriptArg,
    StreamEntry,
    check_replica_wait,
    check_settle,
    check_stream_fields,
    check_stream_ids,
    evicting_policy,
    seconds_left,
)
from sentinel.store.connection import graced
from sentinel.store.redis_streams import entries as _entries
from sentinel.store.redis_streams import is_nogroup, read_reply
from sentinel.store.redis_streams import text as _text

__all__ = ["CircuitBreaker", "RedisStore"]

RedisClient = aioredis.Redis | RedisCluster

# Replies meaning "this node cannot serve that slot right now" (a failover is under way, or the node
# was demoted to replica): outages, although redis-py raises them as ResponseError.
_UNAVAILABLE_REPLIES = (ClusterDownError, AskError, ReadOnlyError)
# A slot being resharded: its primary answered TRYAGAIN (a script over keys some of which have moved
# and some not; nothing ran), or redirections went on until redis-py gave up (`ClusterError`, "TTL
# exhausted"; its subclass ClusterDownError is an outage, above). Refused, but the primary answered:
# counted against its breaker, the keys of one slot on the move refused every other key it serves.
_SLOT_MOVING = (TryAgainError, ClusterError)
# Client-side cluster errors that are bugs in the caller, not outages.
_CLUSTER_MISUSE = (CrossSlotTransactionError, InvalidPipelineStack)


def flat_fields(fields: Mapping[str, bytes]) -> list[str | bytes]:
    """XADD's field-value arguments (`stream_add` has checked there is at least one)."""
    return [item for name_value in fields.items() for item in name_value]


def _raised_inside_redis_py(exc: BaseException) -> bool:
    """Whether the innermost frame of `exc`'s traceback is redis-py's code."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", "")).startswith("redis.")


# Withdraw a stream entry unless consumer group ARGV[1] has read it (its last delivered id is at or
# past the entry's): 1 withdrawn, 0 kept. One script: a read cannot fall between the check and XDEL.
_WITHDRAW_UNREAD = """
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if ok then
  local em, es = string.match(ARGV[2], '^(%d+)-(%d+)$')
  for _, g in ipairs(groups) do
    local name, last
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
    end
    if name == ARGV[1] and last and em then
      local lm, ls = string.match(last, '^(%d+)-(%d+)$')
      lm, ls, em, es = tonumber(lm), tonumber(ls), tonumber(em), tonumber(es)
      if lm > em or (lm == em and ls >= es) then
        return 0
      end
    end
  end
end
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""

class _Pool(ConnectionPool):
    """redis-py's connection pool, able to make every connection connect afresh (`reconnect`), of
    connections with the stall grace (`connection.py`: a reply read late is not a timeout)."""

    def __init__(self, connection_class: type[AbstractConnection] = Connection, **kwargs: Any) -> None:
        super().__init__(graced(connection_class), **kwargs)

    async def reconnect(self) -> None:
        """Close the idle connections now and those in use once released: each connects again
        before its next command. Under the pool's lock, so no caller takes an idle one meanwhile
        (closed under a command, it failed that command)."""
        async with self._lock:
            for connection in self._available_connections:
                await connection.disconnect(nowait=True)
            for connection in self._in_use_connections:
                connection.mark_for_reconnect()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped


class _Guarded:
    """`RedisStore.guard()`: a class rather than the `asynccontextmanager` generator it was (entered
    three times a request on Redis; a generator's frames and its `asend`/`athrow` cost more)."""

    __slots__ = ("_store", "_breaker")

    def __init__(self, store: RedisStore, breaker: CircuitBreaker) -> None:
        self._store = store
        self._breaker = breaker

    async def __aenter__(self) -> None:
        breaker = self._breaker
        if breaker.is_open:
            raise StoreRefused("Redis is unavailable (circuit open)", retry_after=breaker.cooldown)
        if self._store.routing_unknown():
            try:
                await self._store.load_routing()
            except Exception as exc:  # noqa: BLE001 - translated as the command's own errors are
                translated = await self._store.translated(exc, breaker)
                if translated is None:
                    raise
                raise translated from None

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self._breaker.success()
            return
        if not isinstance(exc, Exception):  # (cancelled: not Redis's, not counted)
            return
        translated = await self._store.translated(exc, self._breaker)
        if translated is not None:
            raise translated from None


class RedisStore:
    """Store backed by a standalone Redis (see `RedisClusterStore` for a cluster)."""

    backend = "redis"
    shared = True

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.25,
        max_connections: int = 512,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self._client: RedisClient = self._connect(url, timeout=timeout, max_connections=max_connections)
        self._pipeline = (
            AutoPipeline(self._client.connection_pool) if isinstance(self._client, aioredis.Redis) else None
        )
        self.breaker = breaker or CircuitBreaker()
        self._shas: dict[str, str] = {}
        self._groups: set[tuple[str, str]] = set()

    def _connect(self, url: str, *, timeout: float, max_connections: int) -> RedisClient:
        pool = _Pool.from_url(
            url,
            socket_timeout=timeout,
            # A burst of new connections (cold start under load) needs more than one command's
            # budget; a dead Redis still costs this only until the breaker opens.
            socket_connect_timeout=max(timeout * 4, 1.0),
            max_connections=max_connections,
            health_check_interval=0,
            retry_on_timeout=False,
        )
        return aioredis.Redis.from_pool(pool)

    @property
    def client(self) -> RedisClient:
        return self._client

    def routing_unknown(self) -> bool:
        """Hook: True when the client must learn where keys live before a command (cluster)."""
        return False

    async def load_routing(self) -> None:
        """Hook: learn where keys live (the cluster's slot map); nothing to learn on one server."""

    def refused(self, message: str) -> StoreUnavailable:
        """The error for a command Redis refused, or that found no free connection: `StoreRefused`
        (it did not run). The cluster store overrides it: redis-py's cluster client may have sent the
        command before (a retry after a timeout), so a refusal of its last try — or a full pool
        meeting it — does not say the first did not run."""
        return StoreRefused(message)

    async def demoted(self) -> None:
        """Hook: the server a command reached answered READONLY (a failover demoted it): drop the
        pooled connections — the idle ones now, those in use once released (their commands are
        left to finish) — so the next command connects again. A cluster client follows failovers
        by its slot map instead."""
        if isinstance(self._client, aioredis.Redis) and isinstance(self._client.connection_pool, _Pool):
            await self._client.connection_pool.reconnect()

    def breaker_for(self, key: str | None) -> CircuitBreaker:
        """Hook: the breaker of the server a command on `key` goes to (None: no one key); one
        server, one breaker."""
        return self.breaker

    def guard(self, key: str | None = None, *, breaker: CircuitBreaker | None = None) -> _Guarded:
        """Translate Redis errors into StoreUnavailable (`translated`) and keep the count of the
        breaker of the server `key` lives on (`breaker_for`), or of `breaker` when given: `async
        with store.guard(key): ...`."""
        return _Guarded(self, self.breaker_for(key) if breaker is None else breaker)

    async def translated(self, exc: Exception, breaker: CircuitBreaker) -> StoreUnavailable | None:
        """What `exc`, raised under `guard()` (by the command, or by learning where keys live),
        becomes, `breaker` counting it; None when it is not Redis's (a bug: it goes on as it is)."""
        if isinstance(exc, _UNAVAILABLE_REPLIES):
            breaker.failure()
            if isinstance(exc, ReadOnlyError):
                await self.demoted()
            return self.refused(f"Redis is unavailable: {type(exc).__name__}")
        if isinstance(exc, _SLOT_MOVING):
            breaker.success()
            return self.refused(f"Redis is unavailable: {type(exc).__name__} (a slot is being resharded)")
        if isinstance(exc, OutOfMemoryError):
            # Redis answered (as for any command error) but refused the write: out of memory under
            # `maxmemory` with `noeviction`, as recommended (README, Deployment).
            breaker.success()
            return self.refused(f"Redis command failed: {exc}")
        if isinstance(exc, ResponseError):
            # A command error is a bug or bad data, not an outage: do not trip the breaker. Redis
            # answered, so it counts as the dependency answering (a probe that met one left the
            # breaker half-open, every other caller refused for another cooldown).
            breaker.success()
            return StoreUnavailable(f"Redis command failed: {exc}")
        if isinstance(exc, _CLUSTER_MISUSE):
            return StoreUnavailable(f"Redis command failed: {exc}")
        if isinstance(exc, MaxConnectionsError):
            # Every connection of the pool is busy (more commands at once than `max_connections`):
            # this process's load, not an outage of a Redis that is answering them. Counted against
            # the breaker, a burst of requests opened it and refused everyone for its cooldown.
            # Not sent — but on a cluster it may be the retry of a try that ran (`refused`).
            return self.refused("Redis is busy: every connection of the pool is in use")
        if isinstance(exc, NotSent):
            breaker.failure()
            return StoreRefused("Redis is unavailable: no connection")
        if isinstance(exc, (RedisError, RedisClusterException, OSError, TimeoutError, RedisTimeoutError)):
            # RedisClusterException: no node reachable, or slots not covered.
            breaker.failure()
            return StoreUnavailable(f"Redis is unavailable: {type(exc).__name__}")
        if isinstance(exc, RuntimeError):
            # uvloop: Redis died between connect and the first command ("unable to perform
            # operation on <TCPTransport closed=True>"): an outage, not a bug.
            if "unable to perform operation" not in str(exc):
                return None
            breaker.failure()
            return StoreUnavailable("Redis is unavailable: connection closed")
        if isinstance(exc, AttributeError):
            # redis-py's cluster client closed a connection while a command was using it (it
            # drops connections after errors and topology changes): the command met
            # `None.writelines`. An outage of that node; the same error from our code is a bug.
            if not _raised_inside_redis_py(exc):
                return None
            breaker.failure()
            return StoreUnavailable("Redis is unavailable: connection closed under the command")
        return None

    async def get(self, key: str) -> bytes | None:
        async with self.guard(key):
            value: Any = await self._client.get(key)
        return cast(bytes | None, value)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        async with self.guard(keys[0] if len(keys) == 1 else None):
            values: Any = await self._command("MGET", *keys)  # one command, auto-pipelined with others
        return cast(list[bytes | None], values)

    async def shard_keys(self, key: str) -> list[str]:
        return [key]  # one server: one shard (the cluster store overrides it)

    async def set(
        self, key: str, value: bytes, ttl: float | None = None, *, nx: bool = False, xx: bool = False
    ) -> bool:
        # Whole milliseconds, at least one: `PX 0` is an error (a TTL under 1 ms, a JWT's last instant)
        px = max(1, math.ceil(ttl * 1000)) if ttl is not None else None
        async with self.guard(key):
            result = await self._client.set(key, value, px=px, nx=nx, xx=xx)
        return bool(result)

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        async with self.guard(keys[0] if len(keys) == 1 else None):
            count: int = await self._client.delete(*keys)
        return count

    async def expire(self, key: str, ttl: float) -> bool:
        async with self.guard(key):
            ok = await self._client.pexpire(key, int(ttl * 1000))
        return bool(ok)

    async def ttl(self, key: str) -> float | None:
        async with self.guard(key):
            ms: int = await self._client.pttl(key)
        return seconds_left(ms)

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        async with self.guard(key):
            if ttl is None:
                value: int = await self._client.incrby(key, amount)
                return value
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.incrby(key, amount)
                pipe.pexpire(key, int(ttl * 1000), nx=True)
                value, _ = await pipe.execute()
        return int(value)

    def check_script_keys(self, script: Script, keys: Sequence[str]) -> None:
        """Hook for the cluster store (all keys in one slot); any keys will do on one server."""

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        self.check_script_keys(script, keys)
        async with self.guard(keys[0] if keys else None):
            return await self._eval(script.name, script.lua, keys, args, once=script.once)

    async def _eval(
        self, name: str, body: str, keys: Sequence[str], args: Sequence[ScriptArg], *, once: bool = False
    ) -> Any:
        """EVALSHA, or EVAL once on a node that does not know the script yet (inside `guard()`);
        `once` (`Script.once`, a script with keys): each sent with `_command_once`, never resent."""
        sha = self._shas.get(name)
        if sha is None:
            sha = self._shas[name] = hashlib.sha1(body.encode()).hexdigest()
        send = functools.partial(self._command_once, keys[0]) if once and keys else self._command
        try:
            return await send("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            # First use on this node (or it restarted, or a replica was promoted): send the
            # body once; Redis caches it under the same sha.
            return await send("EVAL", body, len(keys), *keys, *args)

    async def _command(self, *command: Any) -> Any:
        """A hot-path command: auto-pipelined on one server, routed by redis-py on a cluster."""
        if self._pipeline is not None:
            return await self._pipeline.execute(*command)
        return await self._client.execute_command(*command)

    async def _command_once(self, key: str, *command: Any) -> Any:
        """A command on `key` that must not run twice: sent once, never again by the client, so a
        reply lost after it ran is an error (outcome unknown) for the caller to handle. XADD run
        twice stores one record twice; XREADGROUP run twice reads the next entries under the same
        consumer, so one batch key would stand for two sets of records. On one server that is
        `_command` (neither redis-py's connections here nor the auto-pipeline retry); the cluster
        store overrides it (redis-py's cluster client retries)."""
        return await self._command(*command)

    # --- streams ---------------------------------------------------------------------------------
    async def stream_add(
        self, key: str, fields: Mapping[str, bytes], *, replicas: int = 0, replica_timeout_ms: int = 100,
        group: str | None = None,
    ) -> str:
        check_replica_wait(replicas, replica_timeout_ms)
        check_stream_fields(fields)
        if replicas and replica_timeout_ms >= self.timeout * 1000:
            raise ValueError("replica_timeout_ms must be below the store timeout (the WAIT runs inside it)")
        async with self.guard(key):
            if not replicas:
                return _text(await self._command_once(key, "XADD", key, "*", *flat_fields(fields)))
            added, confirmed = await self._add_and_wait(key, fields, replicas, replica_timeout_ms)
            if isinstance(added, BaseException):
                raise added
            entry_id = _text(added)
            if isinstance(confirmed, BaseException) and not isinstance(confirmed, ResponseError):
                raise confirmed  # the connection failed: an outage (the entry may or may not be there)
            if isinstance(confirmed, BaseException) or int(confirmed) < replicas:
                # Not durable: withdraw it, so the caller can store it elsewhere without the record
                # also being delivered from here — unless `group` read it meanwhile: its reader
                # delivers it, and a copy stored elsewhere would be delivered twice.
                if int(await self._client.eval(_WITHDRAW_UNREAD, 1, key, group or "", entry_id)):
                    raise StoreUnavailable(
                        f"stream entry not confirmed by {replicas} replica(s) within {replica_timeout_ms} ms"
                    )
        return entry_id

    async def _add_and_wait(
        self, key: str, fields: Mapping[str, bytes], replicas: int, timeout_ms: int
    ) -> list[Any]:
        """XADD then WAIT on the same connection (WAIT counts that connection's writes)."""
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.execute_command("XADD", key, "*", *flat_fields(fields))
            pipe.wait(replicas, timeout_ms)
            return list(await pipe.execute(raise_on_error=False))

    async def stream_read(self, key: str, group: str, consumer: str, count: int) -> list[StreamEntry]:
        if count <= 0:
            return []
        async with self.guard(key):
            try:
                return await self._read(key, group, consumer, count)
            except ResponseError as exc:
                if not is_nogroup(exc):
                    raise
                # Redis lost the group (restarted without its data, or the key was deleted).
                self._groups.discard((key, group))
                return await self._read(key, group, consumer, count)

    async def _read(self, key: str, group: str, consumer: str, count: int) -> list[StreamEntry]:
        if (key, group) not in self._groups:
            try:
                await self._client.xgroup_create(key, group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._groups.add((key, group))
        fresh: Any = await self._command_once(
            key, "XREADGROUP", "GROUP", group, consumer, "COUNT", count, "STREAMS", key, ">"
        )
        return read_reply(fresh)

    async def stream_idle(
        self, key: str, group: str, *, min_idle_ms: int, count: int, consumer: str | None = None,
        after: str | None = None,
    ) -> list[PendingEntry]:
        if count <= 0:
            return []
        check_stream_ids([after] if after is not None else [])
        async with self.guard(key):
            try:
                found: Any = await self._client.xpending_range(
                    key, group, "-" if after is None else f"({after}", "+", count, consumername=consumer,
                    idle=min_idle_ms,
                )
            except ResponseError as exc:
                if not is_nogroup(exc):
                    raise
                return []
        return [PendingEntry(_text(p["message_id"]), _text(p["consumer"])) for p in found]

    async def stream_reclaim(
        self, key: str, group: str, owner: str, ids: Sequence[str], *, min_idle_ms: int, to: str | None = None
    ) -> list[StreamEntry]:
        check_stream_ids(ids)
        if not ids:
            return []
        async with self.guard(key):
            try:
                args: list[ScriptArg] = [group, owner, to or owner, min_idle_ms, *ids]
                raw = await self._eval("stream-reclaim", lua.RECLAIM, [key], args)
            except ResponseError as exc:
                if not is_nogroup(exc):
                    raise
                return []
        return _entries(raw)

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
        args: list[ScriptArg] = [group, consumer, retry_to or "", len(done), *done, *retry]
        async with self.guard(key):
            return int(await self._eval("stream-settle", lua.SETTLE, [key], args))

    async def stream_range(self, key: str, *, after: str | None = None, count: int = 100) -> list[StreamEntry]:
        if count <= 0:
            return []
        check_stream_ids([after] if after is not None else [])
        async with self.guard(key):
            found: Any = await self._client.xrange(key, "-" if after is None else f"({after}", "+", count=count)
        return _entries(found)

    async def stream_len(self, key: str) -> int:
        async with self.guard(key):
            return int(await self._client.xlen(key))

    # --- the rest --------------------------------------------------------------------------------
    async def scan(self, pattern: str, limit: int = 100) -> list[str]:
        found: list[str] = []
        async with self.guard():
            async for key in self._client.scan_iter(match=pattern, count=100):
                found.append(_text(key))
                if len(found) >= limit:
                    break
        return found

    async def ping(self) -> Ping:
        start = time.perf_counter()
        async with self.guard():
            await self._client.ping()
        return Ping(time.perf_counter() - start)

    async def eviction(self) -> str | None:
        async with self.guard():
            info: Any = await self._client.info("memory")
        return evicting_policy(info)

    async def close(self) -> None:
        await self._client.aclose()
