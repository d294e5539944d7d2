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
outbox. A consumer name doubles as a *batch*: `stream_read` hands new entries to one consumer,
where they stay pending until settled; `stream_idle` lists pending entries nobody touched for a
while, with their consumer; `stream_reclaim` takes such entries over (atomically, only from the
consumer named, only when still idle); `stream_settle` acknowledges and deletes entries, hands
others to another consumer and forgets the consumer once it holds nothing.
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
    # Hashes (HSET/HGETALL/HDEL): a hash is one key, with one TTL for all its fields; it disappears
    # with its last field. A string operation on a hash key (or the reverse) is an error, as in Redis.
    def hgetall(self, key: str) -> dict[str, bytes]: ...
    def hset(self, key: str, field: str, value: bytes) -> None: ...
    def hdel(self, key: str, *fields: str) -> int: ...


ScriptArg = str | int | float | bytes


def seconds_left(pttl_ms: int) -> float | None:
    """A PTTL answer as `Store.ttl` reports it: None when the key is missing (-2), -1.0 without a TTL."""
    if pttl_ms == -2:
        return None
    if pttl_ms == -1:
        return -1.0
    return pttl_ms / 1000


# Lua for scripts that read back JSON they wrote (`cjson.decode` under `pcall`): whether a decoded
# value is a finite number (not NaN, not ±inf — cjson reads `1e999` as inf). Put before a script's body.
LUA_FINITE = """
local function finite(v)
  return type(v) == 'number' and v == v and v > -math.huge and v < math.huge
end
"""


@dataclass(frozen=True)
class Script:
    """An atomic multi-key operation, in Lua for Redis and in Python for the memory backend.

    Both implementations must return the same result for the same keys/args; the contract tests
    check it. `local(ops, keys, args)` receives args as strings, exactly like Lua's ARGV.

    `once`: a script that must not run twice for one call, and cannot tell a second run from a new
    call (a counter's INCR): sent once, never again by the client (`RedisStore._command_once`), so a
    reply lost after it ran is StoreUnavailable for the caller, not a second run. Others are resent
    by redis-py's cluster client after a lost reply, and must give the same outcome run twice.
    """

    name: str
    lua: str
    local: Callable[[LocalOps, list[str], list[str]], Any]
    once: bool = False


_DELETE_IF_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


def _delete_if_local(ops: LocalOps, keys: list[str], args: list[str]) -> int:
    if ops.get(keys[0]) != args[0].encode():
        return 0
    ops.delete(keys[0])
    return 1


# Delete KEYS[1] only if it still holds ARGV[1] (its bytes): 1 when deleted, else 0 — a value another
# caller wrote meanwhile stays (the session a first turn created and no model answered:
# `SessionStore.delete_if`; a charge claim made after its object was deleted: `Ownership.claim_charge`).
DELETE_IF = Script(name="delete_if", lua=_DELETE_IF_LUA, local=_delete_if_local)


def hashed_part(key: str) -> str:
    """What a Redis Cluster hashes of `key` to place it in a slot: its hash tag — the text between
    its first `{` and the first `}` after it, when not empty —, else the whole key."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def beside(key: str, suffix: str) -> str | None:
    """A key in the hash slot of `key` (whatever `key` is: a key written before hash tags, such as
    an owner record), naming `suffix` apart: `key` itself as the hash tag — `{<key>}<suffix>` —, or
    `key` followed by `suffix` when `key` has a hash tag of its own. None when no key can share its
    slot so (the part of `key` hashed holds a `}`: never an id a provider makes)."""
    hashed = hashed_part(key)
    if hashed != key:
        return key + suffix
    return None if "}" in key else "{" + key + "}" + suffix


class StreamEntry(NamedTuple):
    """One stream entry: its id (`"<ms>-<seq>"`, increasing within a stream) and its fields."""

    id: str
    fields: dict[str, bytes]


class Ping(NamedTuple):
    """A store's answer to `ping()`: the round trip, and the nodes that did not answer (on a Redis
    Cluster, primaries that are down while the others serve; empty everywhere else)."""

    latency: float
    unreachable: tuple[str, ...] = ()


class PendingEntry(NamedTuple):
    """An entry read by a consumer of a group and not yet settled: its id and that consumer."""

    id: str
    consumer: str


def parse_stream_id(entry_id: str) -> tuple[int, int]:
    """`"<ms>-<seq>"` as a sortable pair; ValueError for anything else (a caller bug)."""
    ms, sep, seq = entry_id.partition("-")
    if not (sep and ms.isdigit() and seq.isdigit()):
        raise ValueError(f"not a stream entry id: {entry_id!r}")
    return int(ms), int(seq)


def check_stream_ids(ids: Sequence[str]) -> list[tuple[int, int]]:
    """Every id parsed (ValueError for a malformed one, before anything is sent)."""
    return [parse_stream_id(entry_id) for entry_id in ids]


def check_settle(done: Sequence[str], retry: Sequence[str], retry_to: str | None) -> None:
    """Validate `stream_settle`'s arguments (the same on every backend)."""
    check_stream_ids([*done, *retry])
    if retry and not retry_to:
        raise ValueError("retry entries need a consumer to go to (retry_to)")


def check_stream_fields(fields: Mapping[str, bytes]) -> None:
    """A stream entry needs at least one field (Redis refuses an empty XADD): the same on every backend."""
    if not fields:
        raise ValueError("a stream entry needs at least one field")


def check_replica_wait(replicas: int, replica_timeout_ms: int) -> None:
    """Validate `stream_add`'s replication arguments (the same on every backend)."""
    if replicas < 0:
        raise ValueError("replicas cannot be negative")
    if replicas and replica_timeout_ms <= 0:
        # WAIT 0 would block forever.
        raise ValueError("replica_timeout_ms must be positive when waiting for replicas")


def evicting_policy(info: Mapping[str, Any]) -> str | None:
    """The `maxmemory-policy` of a Redis whose `INFO memory` is `info`, when that Redis drops keys
    before their TTL ends to make room (it has a `maxmemory` and a policy other than `noeviction`);
    None otherwise. `volatile-*` policies evict keys *with* a TTL: every quota counter, revoked key's
    tombstone and console sign-out is one."""
    policy = info.get("maxmemory_policy")
    if isinstance(policy, bytes):
        policy = policy.decode()
    if not policy or policy == "noeviction" or not int(info.get("maxmemory", 0) or 0):
        return None
    return str(policy)


@runtime_checkable
class Store(Protocol):
    """Async key-value store with TTLs, atomic counters, atomic scripts and streams."""

    backend: str
    shared: bool
    """True when every Sentinel replica sees the same data (Redis, Redis Cluster); False in memory."""

    async def get(self, key: str) -> bytes | None:
        """The value, or None when missing or expired."""

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Each key's value (None when missing or expired), in the order of `keys`, read in one batch:
        one MGET on a single Redis, one pipeline of an MGET per hash slot to each primary of a Cluster
        (keys in different slots are fine; the read is not atomic across them). StoreUnavailable when
        any could not be read. Callers bound how many keys they pass."""

    async def set(
        self, key: str, value: bytes, ttl: float | None = None, *, nx: bool = False, xx: bool = False
    ) -> bool:
        """Store `value` (`nx`: only if absent; `xx`: only if present). Returns False when `nx` and
        the key existed, or `xx` and it did not."""

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
        self, key: str, fields: Mapping[str, bytes], *, replicas: int = 0, replica_timeout_ms: int = 100,
        group: str | None = None,
    ) -> str:
        """Append an entry (creating the stream if needed); returns its id. An entry without
        fields is a ValueError.

        With `replicas > 0` the call returns only after that many replicas of the node holding the
        stream confirmed the entry (Redis WAIT, waiting at most `replica_timeout_ms`, which must be
        below the store's timeout), so the entry survives a crash of that node and the promotion of
        a replica. Raises StoreUnavailable when the entry could not be written, or was written but
        not confirmed in time; in the latter case it is withdrawn again — unless consumer `group`
        has read it meanwhile: then it is kept and its id returned, as stored (its reader delivers
        it; a copy the caller stored elsewhere would be delivered twice). A backend without
        replicas (memory) ignores `replicas`.
        """

    async def stream_read(self, key: str, group: str, consumer: str, count: int) -> list[StreamEntry]:
        """Up to `count` entries no consumer of `group` has read yet, oldest first, now pending for
        `consumer` until settled. Creates the group (and the stream) when missing, reading from the
        beginning of the stream; a group that vanished (Redis lost its data) is created again, so
        entries added since are not stranded. `count <= 0` reads nothing."""

    async def stream_idle(
        self, key: str, group: str, *, min_idle_ms: int, count: int, consumer: str | None = None,
        after: str | None = None,
    ) -> list[PendingEntry]:
        """Up to `count` pending entries (of `consumer` only, when given; with ids above `after` only,
        when given: the next page) that have been pending without being read or reclaimed for at
        least `min_idle_ms`, oldest first. A missing stream or group has none."""

    async def stream_reclaim(
        self, key: str, group: str, owner: str, ids: Sequence[str], *, min_idle_ms: int, to: str | None = None
    ) -> list[StreamEntry]:
        """Atomically take over those of `ids` still pending for `owner` and idle for at least
        `min_idle_ms`: they become pending for `to` (default: `owner` itself) with their idle time
        reset. Returns them, oldest first, with their fields. Entries another caller reclaimed
        first (their idle time was reset), settled, or deleted are left out, so two callers racing
        for the same idle entries never both get one. `min_idle_ms=0` renews a lease."""

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
        """Finish (part of) `consumer`'s work in one atomic step: acknowledge and delete the `done`
        entries; hand the `retry` entries still pending for `consumer` to `retry_to`; then, if
        `consumer` holds nothing any more, forget it. Returns how many `done` entries were still in
        the stream. Unknown ids are ignored; malformed ids raise ValueError before anything is
        sent; `retry` without `retry_to` is a ValueError."""

    async def stream_range(self, key: str, *, after: str | None = None, count: int = 100) -> list[StreamEntry]:
        """Up to `count` entries of the stream with ids above `after` (None: from its first), oldest
        first, read or not by any group (XRANGE): a look at what waits, changing nothing. A missing
        stream has none; `count <= 0` reads nothing; a malformed `after` is a ValueError."""

    async def stream_len(self, key: str) -> int:
        """Entries in the stream (pending or not yet read); 0 when it does not exist."""

    async def scan(self, pattern: str, limit: int = 100) -> list[str]:
        """Up to `limit` keys matching a glob pattern (for debug views, never on the hot path)."""

    async def shard_keys(self, key: str) -> list[str]:
        """Keys named after `key`, one on each part of the store that can lose its data alone: `key`
        itself on one server and in memory; on a Redis Cluster one a primary (`key:{n}`, the
        smallest n whose slot that primary serves). For a marker every shard holds. Raises
        StoreUnavailable when a Cluster's slot map cannot be read."""

    async def ping(self) -> Ping:
        """Round-trip latency in seconds (and the nodes that did not answer, when some did);
        raises StoreUnavailable when the store cannot be reached at all."""

    async def eviction(self) -> str | None:
        """How this store may drop keys before their TTL ends: Redis's `maxmemory-policy` when it
        is not `noeviction` and a `maxmemory` is set (on a Cluster, the first such primary's), None
        when it never does. Raises StoreUnavailable when it cannot be asked."""

    async def close(self) -> None:
        """Release connections."""
