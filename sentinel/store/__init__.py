"""Store backends behind one Protocol."""

import logging

from sentinel.errors import StoreUnavailable
from sentinel.store.base import DELETE_IF, LocalOps, PendingEntry, Ping, Script, Store, StreamEntry
from sentinel.store.memory import MemoryStore

__all__ = [
    "DELETE_IF", "REDIS_URL_SCHEMES", "LocalOps", "MemoryStore", "PendingEntry", "Ping", "Script", "Store", "StreamEntry",
    "check_eviction", "create_store",
]

log = logging.getLogger("sentinel.store")

# What `create_store` accepts (config validation uses the same list).
REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")


def create_store(redis_url: str | None, *, timeout: float = 0.25) -> Store:
    """The in-process store without a URL; a Redis Cluster for `redis+cluster://` (or
    `rediss+cluster://`) seed lists; a single Redis for `redis://`, `rediss://`, `unix://`."""
    if not redis_url:
        return MemoryStore()
    from sentinel.store.cluster import RedisClusterStore, is_cluster_url
    from sentinel.store.redis import RedisStore

    if is_cluster_url(redis_url):
        return RedisClusterStore(redis_url, timeout=timeout)
    return RedisStore(redis_url, timeout=timeout)


async def check_eviction(store: Store) -> str | None:
    """Warn (once, at start-up) when the store may drop keys before their TTL ends; returns its
    eviction policy, None when it never evicts or cannot be asked now (a store that is down is the
    failure mode's business, not start-up's).

    Such a Redis, once full, silently forgets what Sentinel keeps there to refuse things: quota
    counters (users admitted beyond their plan), revoked keys' tombstones and refused tokens' marks
    (see `sentinel.governance.auth`), console sign-outs (a signed-out session valid again), and
    under `allkeys-*` the usage stream and object owners too. With `noeviction` a full Redis refuses the
    write instead, which `QUOTA_FAILURE_MODE` and the outbox handle."""
    try:
        policy = await store.eviction()
    except StoreUnavailable as exc:
        log.debug("could not read the store's eviction policy", extra={"error": exc.message})
        return None
    if policy is not None:
        log.warning(
            "Redis may evict keys before they expire (maxmemory-policy %s): once it is full, quota counters, "
            "revoked keys' tombstones and console sign-outs can vanish and users be admitted beyond their plan; "
            "set maxmemory-policy noeviction", policy, extra={"maxmemory_policy": policy},
        )
    return policy
