"""Who owns each object created upstream through Sentinel (responses, files, batches, ...).

Every user shares the company's provider account, so the provider itself cannot tell user A's
stored response from user B's. Sentinel records the owner of every object id it sees created, in
the store (shared by replicas) under `sentinel:owner:<id>`, and a reference to an object that is
not the caller's — unknown, expired or someone else's — is answered as if it did not exist.
Ownership never outlives what it guards by less than the provider's retention (`ttl` None = kept
until the object is deleted through Sentinel). A store outage fails closed (`StoreUnavailable`).
"""

from __future__ import annotations

from collections.abc import Iterable

from sentinel.errors import NotFound
from sentinel.store import Store

_PREFIX = "sentinel:owner:"
_MAX_ID = 200


class Ownership:
    """Owner records over the store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def claim(self, object_id: str, owner: str, ttl: float | None) -> None:
        """Record `owner` as the owner of `object_id` (a new object, or one the owner's object names)."""
        if 0 < len(object_id) <= _MAX_ID:
            await self.store.set(_PREFIX + object_id, owner.encode(), ttl)

    async def owner_of(self, object_id: str) -> str | None:
        """The owner's external id, or None when the object is unknown to Sentinel."""
        if not object_id or len(object_id) > _MAX_ID:
            return None
        raw = await self.store.get(_PREFIX + object_id)
        return None if raw is None else raw.decode()

    async def require(self, object_ids: Iterable[str], owner: str) -> None:
        """NotFound (404) unless every id belongs to `owner` — the same answer whether the object is
        someone else's or does not exist at all."""
        for object_id in object_ids:
            if await self.owner_of(object_id) != owner:
                raise NotFound(f"No such object: '{object_id[:_MAX_ID]}'", code="object_not_found")

    async def forget(self, object_id: str) -> None:
        """Drop the record of a deleted object."""
        if 0 < len(object_id) <= _MAX_ID:
            await self.store.delete(_PREFIX + object_id)
