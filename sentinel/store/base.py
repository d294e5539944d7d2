"""The Store Protocol: everything Sentinel keeps outside its database.

Two backends implement it: `RedisStore` (shared by every replica) and `MemoryStore` (one process,
the embedded default and unit tests). Both honour TTLs. Atomic check-and-update logic is written
once per backend as a `Script`: Lua for Redis (run with EVALSHA, one round trip) and a Python
function for the memory backend (atomic because it never awaits). A contract test suite runs the
same assertions against both.

Values are bytes; callers serialise (orjson). Keys are plain strings such as
`sentinel:profile:<sha256>`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


class LocalOps(Protocol):
    """Synchronous primitive operations a memory-backend script may use (never awaits)."""

    def now(self) -> float: ...
    def get(self, key: str) -> bytes | None: ...
    def set(self, key: str, value: bytes, ttl: float | None = None) -> None: ...
    def incrby(self, key: str, amount: int) -> int: ...
    def expire(self, key: str, ttl: float) -> None: ...
    def pttl(self, key: str) -> int: ...
    def delete(self, key: str) -> None: ...


ScriptArg = str | int | float | bytes


@dataclass(frozen=True)
class Script:
    """An atomic multi-key operation, in Lua for Redis and in Python for the memory backend.

    Both implementations must return the same result for the same keys/args; the contract tests
    check it. `local(ops, keys, args)` receives args as strings, exactly like Lua's ARGV.
    """

    name: str
    lua: str
    local: Callable[[LocalOps, list[str], list[str]], Any]


@runtime_checkable
class Store(Protocol):
    """Async key-value store with TTLs, atomic counters and atomic scripts."""

    backend: str

    async def get(self, key: str) -> bytes | None:
        """The value, or None when missing or expired."""

    async def set(self, key: str, value: bytes, ttl: float | None = None, *, nx: bool = False) -> bool:
        """Store `value` (optionally only if absent). Returns False when `nx` and the key existed."""

    async def delete(self, *keys: str) -> int:
        """Remove keys; returns how many existed."""

    async def expire(self, key: str, ttl: float) -> bool:
        """Reset the TTL of an existing key; False when the key does not exist."""

    async def ttl(self, key: str) -> float | None:
        """Seconds left; None when the key is missing; -1.0 when it has no TTL."""

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Atomically add `amount`; when `ttl` is given and the key is new, set its TTL."""

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        """Run an atomic script."""

    async def scan(self, pattern: str, limit: int = 100) -> list[str]:
        """Up to `limit` keys matching a glob pattern (for debug views, never on the hot path)."""

    async def ping(self) -> float:
        """Round-trip latency in seconds; raises StoreUnavailable when unreachable."""

    async def close(self) -> None:
        """Release connections."""
