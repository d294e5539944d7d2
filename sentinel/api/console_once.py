"""One key per key-creation form: the console's create-key form carries a one-time nonce.

The form holds a random `nonce` (128 bits, hex) next to its CSRF token, new on every rendering of
the user's page. The first post of a nonce claims it in the app's store (`SET NX`, so with Redis the
claim holds across workers and replicas) and creates the key; the claim then records the key's id,
prefix and user, never the key. A post repeating the nonce (a reload of the answer, a double click,
back and send again) finds the claim and creates nothing. A form refused for its fields (nothing
created) releases its claim, so the same form can be corrected and sent again; one that failed
otherwise (the database, the audit log) keeps it: a key may have been created.

A claim lives as long as a console session (`SESSION_SECONDS`): a form cannot be posted once its
session ended (its CSRF token ends with it), so no form outlives the claim of its nonce.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass

import orjson

from sentinel.errors import StoreUnavailable
from sentinel.governance.keys import ApiKeyInfo
from sentinel.store import Store

log = logging.getLogger("sentinel.console")

NONCE = re.compile(r"[0-9a-f]{32}")
_KEY = "sentinel:console:key-form:"
_PENDING = b"{}"


@dataclass(frozen=True)
class EarlierPost:
    """What an earlier post of the same form created: the key's id, prefix and user, or all None
    while that post is still running (or when it failed after claiming the form)."""

    key_id: str | None = None
    prefix: str | None = None
    external_id: str | None = None


class KeyFormNonces:
    """Claims of key-creation forms by their nonce, in `store`, each for `ttl` seconds."""

    def __init__(self, store: Store, ttl: float) -> None:
        self.store = store
        self.ttl = ttl

    @staticmethod
    def new() -> str:
        """A nonce for a form about to be rendered."""
        return secrets.token_hex(16)

    @staticmethod
    def well_formed(nonce: str) -> bool:
        return NONCE.fullmatch(nonce) is not None

    async def claim(self, nonce: str) -> EarlierPost | None:
        """None when this post is the form's first (the caller creates the key), else what the
        earlier post recorded. StoreUnavailable when the store cannot say (nothing is created)."""
        if await self.store.set(_KEY + nonce, _PENDING, self.ttl, nx=True):
            return None
        raw = await self.store.get(_KEY + nonce)
        try:
            found = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            found = {}
        if not isinstance(found, dict):
            found = {}
        values = [found.get(name) for name in ("id", "prefix", "user")]
        key_id, prefix, user = (v if isinstance(v, str) else None for v in values)
        return EarlierPost(key_id, prefix, user)

    async def record(self, nonce: str, info: ApiKeyInfo) -> None:
        """Note the key the form created (never the key itself) under its claim. A store that fails
        now leaves the claim as it was: a repeated post still creates nothing."""
        value = orjson.dumps({"id": info.id, "prefix": info.prefix, "user": info.external_id})
        try:
            await self.store.set(_KEY + nonce, value, self.ttl)
        except StoreUnavailable:
            log.warning("could not record the key created by a console form: store unavailable")

    async def release(self, nonce: str) -> None:
        """Drop the claim of a form that created nothing (a field was refused)."""
        try:
            await self.store.delete(_KEY + nonce)
        except StoreUnavailable:
            log.warning("could not release a refused console form: store unavailable (it expires)")
