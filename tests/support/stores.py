"""A Store for unit tests: the in-memory backend, counting its calls, able to fail like a lost Redis."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from sentinel.errors import StoreUnavailable
from sentinel.store import MemoryStore, Script
from sentinel.store.base import ScriptArg

_OPS = ("get", "get_many", "set", "delete", "expire", "ttl", "incr", "run", "scan")


class FlakyStore(MemoryStore):
    """`MemoryStore` plus `calls` (a Counter per operation) and `fail(*ops)` / `recover()`.

    While failing, the named operations (every operation when none is named) raise
    StoreUnavailable before touching the data, as the Redis backend does when Redis is away.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.calls: Counter[str] = Counter()
        self._failing: frozenset[str] = frozenset()

    def fail(self, *ops: str) -> None:
        unknown = set(ops) - set(_OPS)
        if unknown:
            raise ValueError(f"unknown store operations {unknown}")
        self._failing = frozenset(ops or _OPS)

    def recover(self) -> None:
        self._failing = frozenset()

    def _enter(self, op: str) -> None:
        self.calls[op] += 1
        if op in self._failing:
            raise StoreUnavailable(f"store unavailable ({op})")

    async def get(self, key: str) -> bytes | None:
        self._enter("get")
        return await super().get(key)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self._enter("get_many")
        return await super().get_many(keys)

    async def set(
        self, key: str, value: bytes, ttl: float | None = None, *, nx: bool = False, xx: bool = False
    ) -> bool:
        self._enter("set")
        return await super().set(key, value, ttl, nx=nx, xx=xx)

    async def delete(self, *keys: str) -> int:
        self._enter("delete")
        return await super().delete(*keys)

    async def expire(self, key: str, ttl: float) -> bool:
        self._enter("expire")
        return await super().expire(key, ttl)

    async def ttl(self, key: str) -> float | None:
        self._enter("ttl")
        return await super().ttl(key)

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        self._enter("incr")
        return await super().incr(key, amount, ttl)

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        self._enter("run")
        return await super().run(script, keys, args)

    async def scan(self, pattern: str, limit: int = 100) -> list[str]:
        self._enter("scan")
        return await super().scan(pattern, limit)
