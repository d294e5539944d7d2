"""Redis Cluster Store backend: `RedisStore`'s semantics over redis-py's asyncio `RedisCluster`.

Selected by the URL scheme `redis+cluster://` (`rediss+cluster://` for TLS), listing one or more
seed nodes: `redis+cluster://[user:password@]host:port[,host:port...]`. The client discovers the
rest of the cluster from any seed that answers, routes each command to the primary serving its
key's hash slot, follows MOVED/ASK redirections, and reloads the slot map when a node fails (so
after a failover the same store keeps working with the promoted replica).

What differs from a single server:
- every key of one script must hash to one slot (share a `{hash tag}`): `run()` refuses keys in
  different slots with a ValueError before sending anything;
- `stream_add(..., replicas=n)` sends XADD and WAIT together on one connection to the stream's
  primary, bypassing redis-py's cluster retries (which could send the WAIT elsewhere);
- the stream commands that must not run twice (XADD, XREADGROUP) go to their slot's primary
  without redis-py's retry (`_command_once`): run again after a reply lost to a timeout, XADD stored
  a record twice and XREADGROUP read the next entries under the same batch key; so does a script
  marked `Script.once` (the failed-authentication counter: run twice, one failure counted twice; a
  conversation's count after a turn: run twice, the turn's growth counted twice);
- `scan()` walks every primary; `ping()` asks every primary, each under its own breaker: it fails
  only when none answers, and otherwise names the primaries that did not (`Ping.unreachable`: the
  store is degraded, not down, as the other primaries' users are served);
- **a circuit breaker per primary**: a command on a key counts against (and is refused by) the
  breaker of the primary its slot maps to now, so a dead primary refuses only the keys it served
  (its users' quotas, or the usage stream) while every other primary goes on serving; after a
  failover the slot maps to the promoted replica, which has a breaker of its own. Commands without
  one key (`scan`, a multi-key delete) and commands issued before the slot map is known use the
  store-wide `breaker`.

Timeouts and the breaker itself are `RedisStore`'s; so is the error translation (`guard()`).
redis-py's own retry is cut to one immediate retry after a topology reload, so a call never takes
much more than two timeouts; XADD and XREADGROUP get none (above). The scripts keep it: a stream
script (reclaim, settle) run twice leaves the stream as one run does, and so do the quota scripts
(a settlement deletes its reservation's marker; a reservation finds its own and counts nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, RedisClusterException, RedisError, SlotNotCoveredError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sentinel.breaker import CircuitBreaker
from sentinel.errors import StoreUnavailable
from sentinel.store.base import Ping, Script, evicting_policy
from sentinel.store.connection import graced
from sentinel.store.redis import RedisClient, RedisStore, flat_fields

SCHEMES = ("redis+cluster", "rediss+cluster")
DEFAULT_PORT = 6379
SHARD_KEY_TRIES = 1 << 17  # tags `shard_keys` tries (~0.1 s): a primary serving one slot is missed 1 time in 3,000


@dataclass(frozen=True)
class ClusterAddress:
    """What a `redis+cluster://` URL says: seed nodes, credentials, TLS."""

    nodes: list[tuple[str, int]]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False


def _primary(slots: Mapping[int, list[ClusterNode]], key: str) -> str | None:
    """The name of the primary serving `key`'s slot in `slots` (redis-py's slot map), if any."""
    serving = slots.get(key_slot(key.encode()))
    return serving[0].name if serving else None


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].lower() in SCHEMES


def parse_cluster_url(url: str) -> ClusterAddress:
    """Parse `redis+cluster://[user:pass@]host[:port][,host[:port]...][/0]`; ValueError otherwise."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise ValueError(f"not a Redis Cluster URL (expected {SCHEMES[0]}://host:port[,host:port...])")
    userinfo, _, location = rest.rpartition("@")
    hosts, _, path = location.partition("/")
    if path not in ("", "0") or "?" in location:
        raise ValueError("a Redis Cluster URL takes no database number (other than 0) and no options")
    nodes: list[tuple[str, int]] = []
    for part in hosts.split(","):
        host, port = part, DEFAULT_PORT
        if part.rpartition(":")[2].isdigit() and not part.endswith("]"):
            host, _, raw_port = part.rpartition(":")
            port = int(raw_port)
        host = host.strip("[]")
        if not host:
            raise ValueError(f"missing host in Redis Cluster URL: {part!r}")
        nodes.append((host, port))
    username, password = None, None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    return ClusterAddress(nodes, username, password, ssl=scheme.lower() == "rediss+cluster")


class RedisClusterStore(RedisStore):
    """Store backed by a Redis Cluster (primaries with replicas); see the module docstring."""

    backend = "redis-cluster"

    def __init__(self, url: str, **options: Any) -> None:
        """`RedisStore`'s options (`timeout`, `max_connections`, `breaker`: the store-wide one)."""
        super().__init__(url, **options)
        self._node_breakers: dict[str, CircuitBreaker] = {}  # by node name (host:port)
        self._shard_keys: dict[str, list[str]] = {}  # `shard_keys`' last answer, by the key asked for

    def _connect(self, url: str, *, timeout: float, max_connections: int) -> RedisClient:
        address = parse_cluster_url(url)
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in address.nodes],
            username=address.username,
            password=address.password,
            ssl=address.ssl,
            socket_timeout=timeout,
            socket_connect_timeout=max(timeout * 4, 1.0),
            max_connections=max_connections,  # per node
            health_check_interval=0,
            # redis-py retries a command up to 10 times (reloading the slot map, sleeping 0.25 s
            # on CLUSTERDOWN): far beyond our timeouts. One retry after a reload is enough to
            # follow a completed failover; anything longer is the breaker's business.
            retry=Retry(NoBackoff(), 1),
            # By default every fifth MOVED reply makes redis-py close *all* its connections,
            # those of commands in flight included (they fail). Patch the moved slot instead;
            # connection errors still reload the whole map.
            reinitialize_steps=0,
        )
        # Every node's connections have the stall grace (`connection.py`: a reply read late is not
        # a timeout). redis-py takes no connection class for a cluster: it picks one by `ssl`, into
        # the keyword arguments every node is made of (the node manager's are the same dict) — the
        # startup nodes already, before any connection.
        connection_class = graced(cluster.connection_kwargs["connection_class"])
        cluster.connection_kwargs["connection_class"] = connection_class
        for node in cluster.nodes_manager.startup_nodes.values():
            node.connection_class = connection_class
        return cluster

    @property
    def cluster(self) -> RedisCluster:
        assert isinstance(self._client, RedisCluster)
        return self._client

    def refused(self, message: str) -> StoreUnavailable:
        return StoreUnavailable(message)  # an earlier try of redis-py's retry may have run: see `RedisStore.refused`

    def breaker_for(self, key: str | None) -> CircuitBreaker:
        """The breaker of the primary `key`'s slot maps to (created on first use, with the settings
        of the store-wide one); the store-wide breaker without a key or a slot map."""
        if key is None:
            return self.breaker
        try:
            node = self.cluster.get_node_from_key(key)
        except RedisClusterException:  # SlotNotCoveredError: no slot map yet, or a hole in it
            return self.breaker
        if node is None:
            return self.breaker
        return self._node_breaker(node.name)

    def _node_breaker(self, name: str) -> CircuitBreaker:
        breaker = self._node_breakers.get(name)
        if breaker is None:
            breaker = CircuitBreaker(self.breaker.threshold, self.breaker.cooldown, clock=self.breaker.clock)
            self._node_breakers[name] = breaker
        return breaker

    def routing_unknown(self) -> bool:
        # redis-py picks a command's target before loading the slot map: without one (a new
        # client, or after it dropped its connections) a keyed command goes to a random primary.
        return self.cluster.get_default_node() is None

    async def load_routing(self) -> None:
        await self.cluster.initialize()  # one load, however many commands wait for it

    def check_script_keys(self, script: Script, keys: Sequence[str]) -> None:
        """A cluster runs a script on one node: all its keys must hash to one slot."""
        slots = {key_slot(key.encode()) for key in keys}
        if len(slots) > 1:
            raise ValueError(
                f"script {script.name!r}: keys in {len(slots)} hash slots ({', '.join(keys)}); on a "
                "Redis Cluster every key of one script must share a hash tag, e.g. prefix:{tag}:rest"
            )

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The keys grouped by the primary serving their slot, each group read at once under that
        primary's breaker (`mget_nonatomic`: one pipeline of an MGET per slot, one round trip per
        primary), the groups side by side: a dead primary fails the read (StoreUnavailable, once
        every group ended) and counts against its own breaker only, as a `get` of its key does."""
        if not keys:
            return []
        if len(keys) == 1:
            return [await self.get(keys[0])]
        async with self.guard():  # loads the slot map if needed
            cluster = self.cluster
            groups: dict[str, list[str]] = {}
            for key in dict.fromkeys(keys):
                try:
                    node = cluster.get_node_from_key(key)
                except RedisClusterException:  # a slot no primary serves now: its read fails below
                    node = None
                groups.setdefault("" if node is None else node.name, []).append(key)
        found = await asyncio.gather(*(self._get_on(name, group) for name, group in groups.items()),
                                     return_exceptions=True)
        failed = [result for result in found if isinstance(result, BaseException)]
        if failed:
            found.clear()  # (no cycle through the traceback: see `sentinel.governance.ownership._together`)
            raise failed.pop(0)
        values: dict[str, bytes | None] = {}
        for group, read in zip(groups.values(), found, strict=True):
            assert not isinstance(read, BaseException)
            values.update(zip(group, read, strict=True))
        return [values[key] for key in keys]

    async def shard_keys(self, key: str) -> list[str]:
        """One key a primary of the slot map as it stands: `key:{n}` for the smallest n whose slot
        that primary serves. The last answer stands while its keys still fall one on each primary
        (a failover keeps them: the promoted replica serves the same slots); a reshard that breaks
        that picks again (keys new to whoever reads them). A primary serving so few slots that none
        of the first `SHARD_KEY_TRIES` tags lands on it, and slots no primary serves, get none."""
        async with self.guard():  # loads the slot map if needed
            slots = self.cluster.nodes_manager.slots_cache
        primaries = {nodes[0].name for nodes in slots.values() if nodes}
        last = self._shard_keys.get(key, [])
        if {_primary(slots, k) for k in last} == primaries and len(last) == len(primaries):
            return last
        keys: dict[str, str] = {}
        n = 0
        while len(keys) < len(primaries) and n < SHARD_KEY_TRIES:
            candidate = f"{key}:{{{n}}}"
            keys.setdefault(_primary(slots, candidate) or "", candidate)
            n += 1
        keys.pop("", None)
        self._shard_keys[key] = found = list(keys.values())
        return found

    async def _get_on(self, node: str, keys: list[str]) -> list[bytes | None]:
        async with self.guard(breaker=self._node_breaker(node) if node else self.breaker):
            values: Any = await self.cluster.mget_nonatomic(keys)
        return list(values)

    async def _command_once(self, key: str, *command: Any) -> Any:
        """Straight to the primary of `key`'s slot, without redis-py's retry (naming the target
        node turns it off; a MOVED or ASK reply, which means the command did not run, is still
        followed). That retry, after a read timeout or a dropped connection, ran the command again
        when the first run had happened and only its reply was lost (`RedisStore._command_once`)."""
        cluster = self.cluster
        await cluster.initialize()  # a no-op unless a reload of the slot map is due
        node = cluster.get_node_from_key(key)
        if node is None:
            raise SlotNotCoveredError(f"no primary serves the slot of {key!r}")
        return await cluster.execute_command(*command, target_nodes=node)

    async def _add_and_wait(
        self, key: str, fields: Mapping[str, bytes], replicas: int, timeout_ms: int
    ) -> list[Any]:
        # WAIT counts the writes of the connection it arrives on, so XADD and WAIT must share one
        # connection to the stream's primary. redis-py's cluster pipeline cannot promise that: on
        # a retry it sends the WAIT to its "default node", where it may count some older write
        # and report a confirmation that never happened. So the pair goes straight to the node,
        # without redis-py's retries or redirections.
        args = ["XADD", key, "*", *flat_fields(fields)]
        added, confirmed = await self._send_to_primary(key, args, ["WAIT", replicas, timeout_ms])
        if isinstance(added, MovedError):
            # The slot has a new owner (failover or resharding) and nothing was written: learn
            # the new owner and try once more there.
            await self._repair_route(key)
            added, confirmed = await self._send_to_primary(key, args, ["WAIT", replicas, timeout_ms])
        return [added, confirmed]

    async def _send_to_primary(self, key: str, *commands: list[Any]) -> list[Any]:
        """Send `commands` on one connection to the primary of `key`'s slot; their results (or
        errors). A connection failure raises, after letting redis-py reload its slot map."""
        cluster = self.cluster
        await cluster.initialize()  # a no-op unless a reload of the slot map is due
        node = cluster.get_node_from_key(key)
        if node is None:
            raise SlotNotCoveredError(f"no primary serves the slot of {key!r}")
        queue = [PipelineCommand(position, *args) for position, args in enumerate(commands)]
        try:
            await node.execute_pipeline(queue)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await self._repair_route(key)
            raise
        results = [command.result for command in queue]
        lost = next((r for r in results if isinstance(r, RedisConnectionError | RedisTimeoutError)), None)
        if lost is not None:
            await self._repair_route(key)
            raise lost
        return results

    async def _repair_route(self, key: str) -> None:
        """Let redis-py see `key`'s slot fail or move through its own path, so it reloads the slot
        map (the pinned XADD + WAIT bypasses that path). Errors here belong to the caller's failure."""
        with contextlib.suppress(RedisError, RedisClusterException):
            await self.cluster.exists(key)

    async def ping(self) -> Ping:
        """Every primary of the slot map at once, each under its own breaker. StoreUnavailable
        when none answers (or no slot map can be had); else the primaries that did not answer."""
        start = time.perf_counter()
        async with self.guard():
            primaries = self.cluster.get_primaries()  # guard() loaded the slot map if needed
        answered = await asyncio.gather(*(self._ping_node(node) for node in primaries))
        unreachable = tuple(sorted(node.name for node, ok in zip(primaries, answered, strict=True) if not ok))
        if len(unreachable) == len(primaries):
            raise StoreUnavailable("Redis is unavailable: no primary of the cluster answered")
        return Ping(time.perf_counter() - start, unreachable)

    async def eviction(self) -> str | None:
        """The policy of the first primary that may evict keys (each primary has its own settings);
        StoreUnavailable unless every primary answered."""
        async with self.guard():
            primaries = self.cluster.get_primaries()
        for node in primaries:
            async with self.guard(breaker=self._node_breaker(node.name)):
                info: Any = await self.cluster.info("memory", target_nodes=node)
            policy = evicting_policy(info)
            if policy is not None:
                return policy
        return None

    async def _ping_node(self, node: ClusterNode) -> bool:
        try:
            async with self.guard(breaker=self._node_breaker(node.name)):
                await self.cluster.ping(target_nodes=node)
        except StoreUnavailable:
            return False
        return True
