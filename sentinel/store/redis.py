"""Redis Store backend: one redis-py asyncio pool (hiredis parser) shared by the whole app.

Every call has a short socket timeout, and a circuit breaker turns a dead Redis into an immediate
`StoreUnavailable` instead of a hang per request. Redis exceptions are translated here, once.
Scripts are registered on first use and run with EVALSHA (one round trip).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sentinel.errors import StoreUnavailable
from sentinel.store.base import Script, ScriptArg


class CircuitBreaker:
    """Opens after `threshold` consecutive failures; while open, calls fail fast for `cooldown` s.

    After the cooldown one call is let through (half-open); its success closes the breaker.
    """

    def __init__(self, threshold: int = 3, cooldown: float = 2.0) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.failures = 0
        self.opened_at: float | None = None

    @property
    def is_open(self) -> bool:
        if self.opened_at is None:
            return False
        if time.monotonic() - self.opened_at >= self.cooldown:
            # Half-open: let the next call probe; a failure re-opens for another cooldown.
            self.opened_at = None
            self.failures = self.threshold - 1
            return False
        return True

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None

    def failure(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            self.opened_at = time.monotonic()


class RedisStore:
    """Store backed by Redis (standalone; keys of one script share a hash tag for Cluster)."""

    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.25,
        max_connections: int = 512,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.url = url
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            # A burst of new connections (cold start under load) needs more than one command's
            # budget; a dead Redis still costs this only until the breaker opens.
            socket_connect_timeout=max(timeout * 4, 1.0),
            max_connections=max_connections,
            health_check_interval=0,
            retry_on_timeout=False,
        )
        self.breaker = breaker or CircuitBreaker()
        self._shas: dict[str, str] = {}

    @property
    def client(self) -> aioredis.Redis:
        return self._client

    @asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        if self.breaker.is_open:
            raise StoreUnavailable("Redis is unavailable (circuit open)", retry_after=self.breaker.cooldown)
        try:
            yield
        except ResponseError as exc:
            # A command error is a bug or bad data, not an outage: do not trip the breaker.
            raise StoreUnavailable(f"Redis command failed: {exc}") from None
        except (RedisError, OSError, TimeoutError, RedisTimeoutError) as exc:
            self.breaker.failure()
            raise StoreUnavailable(f"Redis is unavailable: {type(exc).__name__}") from None
        except RuntimeError as exc:
            # uvloop: Redis died between connect and the first command ("unable to perform
            # operation on <TCPTransport closed=True>"): an outage, not a bug.
            if "unable to perform operation" not in str(exc):
                raise
            self.breaker.failure()
            raise StoreUnavailable("Redis is unavailable: connection closed") from None
        else:
            self.breaker.success()

    async def get(self, key: str) -> bytes | None:
        async with self.guard():
            value: bytes | None = await self._client.get(key)
        return value

    async def set(self, key: str, value: bytes, ttl: float | None = None, *, nx: bool = False) -> bool:
        px = int(ttl * 1000) if ttl is not None else None
        async with self.guard():
            result = await self._client.set(key, value, px=px, nx=nx)
        return bool(result)

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        async with self.guard():
            count: int = await self._client.delete(*keys)
        return count

    async def expire(self, key: str, ttl: float) -> bool:
        async with self.guard():
            ok = await self._client.pexpire(key, int(ttl * 1000))
        return bool(ok)

    async def ttl(self, key: str) -> float | None:
        async with self.guard():
            ms: int = await self._client.pttl(key)
        if ms == -2:
            return None
        if ms == -1:
            return -1.0
        return ms / 1000

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        async with self.guard():
            if ttl is None:
                value: int = await self._client.incrby(key, amount)
                return value
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.incrby(key, amount)
                pipe.pexpire(key, int(ttl * 1000), nx=True)
                value, _ = await pipe.execute()
        return int(value)

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        async with self.guard():
            sha = self._shas.get(script.name)
            if sha is None:
                sha = await self._client.script_load(script.lua)
                self._shas[script.name] = sha
            try:
                return await self._client.evalsha(sha, len(keys), *keys, *args)
            except NoScriptError:
                # Redis restarted (or SCRIPT FLUSH): load again, once.
                sha = await self._client.script_load(script.lua)
                self._shas[script.name] = sha
                return await self._client.evalsha(sha, len(keys), *keys, *args)

    async def scan(self, pattern: str, limit: int = 100) -> list[str]:
        found: list[str] = []
        async with self.guard():
            async for key in self._client.scan_iter(match=pattern, count=100):
                found.append(key.decode() if isinstance(key, bytes) else key)
                if len(found) >= limit:
                    break
        return found

    async def ping(self) -> float:
        start = time.perf_counter()
        async with self.guard():
            await self._client.ping()
        return time.perf_counter() - start

    async def close(self) -> None:
        await self._client.aclose()
