"""Store backends behind one Protocol."""

from sentinel.store.base import LocalOps, Script, Store
from sentinel.store.memory import MemoryStore

__all__ = ["LocalOps", "MemoryStore", "Script", "Store", "create_store"]


def create_store(redis_url: str | None, *, timeout: float = 0.25) -> Store:
    """Redis when a URL is configured, else the in-process store."""
    if redis_url:
        from sentinel.store.redis import RedisStore

        return RedisStore(redis_url, timeout=timeout)
    return MemoryStore()
