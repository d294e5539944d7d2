"""The Store Protocol: everything Sentinel keeps outside its database.

Three backends implement it: `RedisStore` (a standalone Redis shared by every replica),
`RedisClusterStore` (a Redis Cluster, same semantics) and `MemoryStore` (one process, the embedded
default and unit tests). All honour TTLs. Atomic check-and-update logic is written once per backend
as a `Script`: Lua for Redis (run with EVALSHA, one round trip) and a Python function for the
memory backend (atomic because it never awaits). A contract test suite runs the same assertions
against every backend.

Values are bytes; callers serialise (orjson). Keys are plain strings such as
`sentinel:profile:<sha256>`. On a cluster every key of one script must hash to one slot: give them
a common hash tag (`sentinel:quota:{<subject>}:...`); the cluster store refuses a script whose keys
span slots (ValueError) before sending it.

Streams (append-only logs read through consumer groups, the Redis stream model) carry the usage
outbox: `stream_add` appends, `stream_claim` hands entries to one consumer of a group (taking over
entries another consumer claimed and left idle), `stream_ack` acknowledges and deletes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable


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


def seconds_left(pttl_ms: int) -> float | None:
    """A PTTL answer as `Store.ttl` reports it: None when the key is missing (-2), -1.0 without a TTL."""
    if pttl_ms == -2:
        return None
    if pttl_ms == -1:
        return -1.0
    return pttl_ms / 1000


@dataclass(frozen=True)
class Script:
    """An atomic multi-key operation, in Lua for Redis and in Python for the memory backend.

    Both implementations must return the same result for the same keys/args; the contract tests
    check it. `local(ops, keys, args)` receives args as strings, exactly like Lua's ARGV.
    """

    name: str
    lua: str
    local: Callable[[LocalOps, list[str], list[str]], Any]


class StreamEntry(NamedTuple):
    """One stream entry: its id (`"<ms>-<seq>"`, increasing within a stream) and its fields."""

    id: str
    fields: dict[str, bytes]


def parse_stream_id(entry_id: str) -> tuple[int, int]:
    """`"<ms>-<seq>"` as a sortable pair; ValueError for anything else (a caller bug)."""
    ms, sep, seq = entry_id.partition("-")
    if not (sep and ms.isdigit() and seq.isdigit()):
        raise ValueError(f"not a stream entry id: {entry_id!r}")
    return int(ms), int(seq)


def check_replica_wait(replicas: int, replica_timeout_ms: int) -> None:
    """Validate `stream_add`'s replication arguments (the same on every backend)."""
    if replicas < 0:
        raise ValueError("replicas cannot be negative")
    if replicas and replica_timeout_ms <= 0:
        # WAIT 0 would block forever.
        raise ValueError("replica_timeout_ms must be positive when waiting for replicas")


@runtime_checkable
class Store(Protocol):
    """Async key-value store with TTLs, atomic counters, atomic scripts and streams."""

    backend: str
    shared: bool
    """True when every Sentinel replica sees the same data (Redis, Redis Cluster); False in memory."""

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

    async def stream_add(
        self, key: str, fields: Mapping[str, bytes], *, replicas: int = 0, replica_timeout_ms: int = 100
    ) -> str:
        """Append an entry (creating the stream if needed); returns its id.

        With `replicas > 0` the call returns only after that many replicas of the node holding the
        stream confirmed the entry (Redis WAIT, waiting at most `replica_timeout_ms`, which must be
        below the store's timeout), so the entry survives a crash of that node and the promotion of
        a replica. Raises StoreUnavailable when the entry could not be written, or was written but
        not confirmed in time; in the latter case it is withdrawn again (best effort: a consumer
        may have read it meanwhile, so delivery stays at-least-once and consumers must be
        idempotent). A backend without replicas (memory) ignores `replicas`.
        """

    async def stream_claim(
        self, key: str, group: str, consumer: str, count: int, *, min_idle_ms: int
    ) -> list[StreamEntry]:
        """Up to `count` entries for `consumer`, oldest first; each stays pending until acknowledged.

        Creates the group (and the stream) when missing, reading from the beginning of the stream;
        a group that vanished (Redis lost its data) is created again, so entries added since are
        not stranded. First takes over pending entries idle for at least `min_idle_ms` (claimed
        by any consumer of the group, this one included, and not acknowledged: a crashed
        consumer's entries), then adds entries no consumer of the group has seen yet.
        """

    async def stream_ack(self, key: str, group: str, ids: Sequence[str]) -> int:
        """Acknowledge entries and delete them from the stream, atomically; returns how many of
        them were still in the stream. Unknown or already deleted ids are ignored."""

    async def stream_len(self, key: str) -> int:
        """Entries in the stream (pending or not yet read); 0 when it does not exist."""

    async def scan(self, pattern: str, limit: int = 100) -> list[str]:
        """Up to `limit` keys matching a glob pattern (for debug views, never on the hot path)."""

    async def ping(self) -> float:
        """Round-trip latency in seconds; raises StoreUnavailable when unreachable."""

    async def close(self) -> None:
        """Release connections."""
