"""Store backends behind one Protocol."""

from sentinel.store.base import LocalOps, PendingEntry, Ping, Script, Store, StreamEntry
from sentinel.store.memory import MemoryStore

__all__ = [
    "REDIS_URL_SCHEMES", "LocalOps", "MemoryStore", "PendingEntry", "Ping", "Script", "Store", "StreamEntry",
    "create_store",
]

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
