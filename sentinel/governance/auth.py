"""Bearer-token authentication with a store-backed cache of validated identities.

The cache key is `sentinel:profile:<sha256(token)>` (the original's key format): the token itself
is never stored. A positive entry is *fresh* for `ttl` seconds; it is kept `grace` seconds longer
and used only while the identity source is unreachable (so a governance outage does not log
everyone out). Invalid tokens are cached briefly too, so a flood of bad tokens cannot hammer the
source. Revoking a key therefore takes effect within `ttl` seconds.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

import orjson

from sentinel.errors import AuthenticationError, GovernanceUnavailable, StoreUnavailable
from sentinel.governance.identity import Identity, IdentitySource
from sentinel.observability.metrics import Metrics
from sentinel.store import Store

log = logging.getLogger("sentinel.auth")

API_KEY_PREFIX = "sk-sentinel-"
_NEGATIVE = b"-"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_bearer(header: str | None) -> str:
    """The token from an `Authorization: Bearer <token>` header, or AuthenticationError."""
    if not header:
        raise AuthenticationError("Authentication required: send Authorization: Bearer <key>", code="missing_api_key")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("Authorization header must be 'Bearer <key>'", code="invalid_authorization")
    return token


class Authenticator:
    """Resolves a bearer token to an Identity: Sentinel API keys first, then JWT sources."""

    def __init__(
        self,
        store: Store,
        *,
        api_keys: IdentitySource | None,
        jwt: IdentitySource | None = None,
        ttl: float = 300,
        grace: float = 900,
        negative_ttl: float = 30,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        local_ttl: float = 0.0,
    ) -> None:
        self.store = store
        self.api_keys = api_keys
        self.jwt = jwt
        self.ttl = ttl
        self.grace = grace
        self.negative_ttl = min(negative_ttl, ttl)
        self.metrics = metrics
        self.clock = clock
        # Decoded cache entries by their stored bytes: the store stays the source of truth (TTL,
        # revocation), this only skips re-parsing identical bytes on every request.
        self._decoded: dict[bytes, tuple[Identity, float]] = {}
        # A per-process copy of fresh entries for at most `local_ttl` seconds (and never past the
        # store entry's own freshness), sparing a Redis round trip per request under load.
        self.local_ttl = local_ttl
        self._local: dict[str, tuple[Identity, float]] = {}

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.child(self.metrics.auth_cache, result).inc()

    def _source_for(self, token: str) -> IdentitySource | None:
        if token.startswith(API_KEY_PREFIX):
            return self.api_keys
        return self.jwt

    async def authenticate(self, token: str) -> Identity:
        """Identity for `token`; AuthenticationError (401) or GovernanceUnavailable (503)."""
        key = "sentinel:profile:" + token_hash(token)
        now = self.clock()
        local = self._local.get(key)
        if local is not None and now < local[1]:
            self._count("hit")
            return local[0]
        stale: Identity | None = None
        try:
            cached = await self.store.get(key)
        except StoreUnavailable:
            cached = None
            self._count("store_error")
        if cached is not None:
            if cached == _NEGATIVE:
                self._count("negative_hit")
                raise AuthenticationError()
            identity, fresh_until = self._decode(cached)
            if now < fresh_until:
                self._count("hit")
                if self.local_ttl > 0:
                    if len(self._local) >= 10_000:
                        self._local.clear()
                    self._local[key] = (identity, min(fresh_until, now + self.local_ttl))
                return identity
            stale = identity
        self._count("miss")
        source = self._source_for(token)
        if source is None:
            raise AuthenticationError()
        try:
            found = await source.authenticate(token)
        except GovernanceUnavailable:
            if stale is not None:
                log.warning("identity source unavailable; serving a cached identity", extra={"source": source.name})
                return stale
            raise
        await self._remember(key, found)
        if found is None:
            raise AuthenticationError()
        return found

    def _decode(self, raw: bytes) -> tuple[Identity, float]:
        hit = self._decoded.get(raw)
        if hit is None:
            entry = orjson.loads(raw)
            hit = (Identity.from_json(entry["identity"]), float(entry["fresh_until"]))
            if len(self._decoded) >= 10_000:
                self._decoded.clear()
            self._decoded[raw] = hit
        return hit

    async def _remember(self, key: str, identity: Identity | None) -> None:
        try:
            if identity is None:
                await self.store.set(key, _NEGATIVE, self.negative_ttl)
            else:
                entry = {"identity": identity.to_json(), "fresh_until": self.clock() + self.ttl}
                await self.store.set(key, orjson.dumps(entry), self.ttl + self.grace)
        except StoreUnavailable:
            log.warning("could not cache identity: store unavailable")

    async def forget(self, token: str) -> None:
        """Drop a token's cache entry (used after revocation in the same process)."""
        await self.store.delete("sentinel:profile:" + token_hash(token))
