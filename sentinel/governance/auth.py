"""Bearer-token authentication with a store-backed cache of validated identities.

The cache key is `sentinel:profile:<sha256(token)>` (the original's key format): the token itself
is never stored. A validated identity is fresh for `ttl` seconds and kept `grace` seconds longer
for identity-source outages (see `GovernanceCache`); an identity whose credential expires (a
JWT's `exp` plus the leeway) is never served past that moment, grace period included: a JWT whose
own `exp` has passed is refused with 401 before any source is asked, so an outage cannot revive it.
An API key issued with an expiry is the same: its identity is cached until that moment at most, and
then the key service refuses it (401 `token_expired`, an `Expired`); that refusal is remembered as long
as an identity (`ttl`: an expiry is for good) with its reason, so each use says `token_expired` and
none asks the database. Invalid tokens are remembered for `negative_ttl` seconds — but for a JWT
not yet valid (`NotYetValid`: validly signed, its `nbf` ahead), refused uncached so that it is
accepted once valid, not up to `negative_ttl` later. Revoking a key therefore takes effect
within `ttl` seconds. An identity served while its source is down from the token's own claims (a
`StandIn`) is cached for the outage only, never fresh: the next use asks the source again, so a
user it refuses once it answers is refused then, not a TTL later. A token the source refused (a
`Refused`: a deactivated user's verified JWT) is remembered under `sentinel:refused:<refusal_key>` —
the SHA-256 of what its signature covers, the same for each encoding of the token — until it expires,
so no later outage serves it from its claims once the 30 s refusal is over.

A locally verified JWT's cached identity is served by a process only once its own verifier has
verified the token (`_verified_here`; once per token and process): one cached by a process of another
configuration (before JWT_SECRET was rotated) is not served on that process's word.

Concurrent requests with one token share one source lookup (`SingleFlight`, per process): the
first runs it, the others await its outcome (the same identity or error) and take no lookup turn;
while a stale identity is being refreshed, the others are served it at once.

A Sentinel key behind other text (`Bearer Bearer <key>`, quotes), or its prefix in other case
(`SK-SENTINEL-`), is refused before any source is asked: it is no key, and the JWT source would
have sent it to Zion as a token.

With `require_email` (GOVERNANCE=zion, where usage is reported to Zion by email) an identity
without an email is refused with 403 `usage_unreportable`: it would be served unmetered. An identity
whose usage the ledger cannot store (`Identity.unstorable`) is refused with 403
`identity_unrecordable`, and that verdict of its source is remembered as a refusal for `negative_ttl`
(never the identity itself): each use of the token asked the source again, uncounted by the throttle.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from contextlib import AbstractAsyncContextManager, nullcontext

from sentinel.domain.identity import Identity
from sentinel.errors import AuthenticationError, GovernanceUnavailable, PermissionDenied, StoreUnavailable
from sentinel.flight import SingleFlight
from sentinel.governance.cache import GovernanceCache
from sentinel.governance.identity import Expired, IdentitySource, Refused, StandIn
from sentinel.governance.jwt import LocalJwtIdentitySource, canonical_encoding, unverified_expiry
from sentinel.governance.keys import KEY_PREFIX, hash_key
from sentinel.observability.logging import Repeated
from sentinel.observability.metrics import Metrics
from sentinel.store import Store

log = logging.getLogger("sentinel.auth")

# `<prefix><refusal_key(token)>`: a token its source refused although it names its identity itself
# (Zion refused a locally verified JWT), kept until the token expires: no stand-in is served for it.
REFUSED_PREFIX = "sentinel:refused:"
# Tokens a process remembers having verified itself (`Authenticator._verified_here`); past it, the
# memory starts afresh.
MAX_VERIFIED = 10_000

UNREPORTABLE = (
    "Usage of this account cannot be reported: it has no email address, and Zion records usage by "
    "email. Ask an operator to give the user an email (for a Sentinel key: `sentinel keys create "
    "<external_id> --email ...`)."
)

# The code of a 403 for an identity whose usage the ledger could not store (`Identity.unstorable`). The
# refusal is remembered under the token for `negative_ttl` with this reason and the problem after a
# `:` (fixed texts, nothing of the identity's), so each use is refused again without asking the source.
UNRECORDABLE = "identity_unrecordable"

# Said of a credential holding a Sentinel key after other text (the key is never repeated).
KEY_BEHIND_TEXT = (
    f"The credential has something before its {KEY_PREFIX} key (a second 'Bearer', quotes): send the key "
    "alone, as Authorization: Bearer <key> or x-api-key: <key>"
)
# Said of a credential holding a Sentinel key whose prefix is written in other case (never repeated either).
KEY_IN_OTHER_CASE = (
    f"The credential holds a {KEY_PREFIX} key written in other case (`SK-SENTINEL-`, `Sk-sentinel-`): keys "
    "are case-sensitive, send it exactly as it was issued"
)


def refusal_key(token: str) -> str:
    """What a refused token is remembered by: the SHA-256 of the part its signature covers (a compact
    JWS's `header.payload`; a token without a `.`, whole). Only a verified JWT is refused so
    (`Refused`), and one signed token has several encodings that verify — its signature segment padded
    with `=` (PyJWT takes it), an ECDSA signature (r, n-s) as well as (r, s) —: keyed by the token as
    sent, a fired employee added a `=` and was served from the claims at the next outage."""
    return hash_key(token.rpartition(".")[0] or token)


def parse_bearer(header: str | None) -> str:
    """The token from an `Authorization: Bearer <token>` header, or AuthenticationError."""
    if not header:
        raise AuthenticationError("Authentication required: send Authorization: Bearer <key>", code="missing_api_key")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("Authorization header must be 'Bearer <key>'", code="invalid_authorization")
    return token


def parse_credential(authorization: str | None, api_key: str | None) -> str:
    """The caller's token from `Authorization: Bearer <token>` or `x-api-key: <token>` (Anthropic's
    header); when both are sent they must name the same token. AuthenticationError otherwise."""
    key = (api_key or "").strip() or None
    if authorization:
        token = parse_bearer(authorization)
        if key is not None and key != token:
            raise AuthenticationError(
                "Authorization and x-api-key carry different credentials: send one", code="conflicting_credentials"
            )
        return token
    if key is not None:
        return key
    raise AuthenticationError(
        "Authentication required: send Authorization: Bearer <key> (or x-api-key: <key>)", code="missing_api_key"
    )


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
        require_email: bool = False,
        withheld: Collection[str] = (),
        operator_keys: Collection[str] = (),
    ) -> None:
        self.api_keys = api_keys
        # Digests (`hash_key`) of the configuration's secrets (admin, docs and metrics keys, provider
        # and Zion keys, ...): refused here before any source is asked, so a mistaken one is never
        # sent to Zion or cached as anyone's identity.
        self.withheld = frozenset(withheld) | frozenset(operator_keys)
        # Of those, the keys an operator holds to sign in with (admin, docs, metrics): refused saying
        # so (each can be tried on its own route anyway). The others (provider keys, the JWT and
        # end-user secrets, ...) get the answer any wrong token gets: no oracle for guessing them.
        self.operator_keys = frozenset(operator_keys)
        self.require_email = require_email
        self.jwt = jwt
        self.negative_ttl = min(negative_ttl, ttl)
        self.clock = clock
        self._repeated = Repeated(log, clock=clock)  # outage lines: once a minute, not once a request
        # Lookups under way, by token key: concurrent requests with one token share one source lookup.
        self._flights: SingleFlight[str, Identity] = SingleFlight()
        # Token keys whose JWT this process's verifier has verified itself (`_verified_here`).
        self._verified: set[str] = set()
        self.cache: GovernanceCache[Identity] = GovernanceCache(
            store,
            name="identity",
            prefix="sentinel:profile:",
            encode=Identity.to_json,
            decode=Identity.from_json,
            ttl=ttl,
            grace=grace,
            clock=clock,
            local_ttl=local_ttl,
            metrics=metrics,
        )

    def _source_for(self, token: str) -> IdentitySource | None:
        return self.api_keys if token.startswith(KEY_PREFIX) else self.jwt

    async def authenticate(
        self, token: str, *, lookup: Callable[[], AbstractAsyncContextManager[None]] | None = None,
        unknown: Callable[[], Awaitable[None]] | None = None,
    ) -> Identity:
        """Identity for `token`; AuthenticationError (401), PermissionDenied (403, an identity whose
        usage cannot be reported) or GovernanceUnavailable (503). `lookup()`, when given, is entered
        around the identity source's lookup (not for a cached identity) until its outcome is known:
        the failed-authentication throttle counts the lookups a client has in flight with it. A caller
        that joins this token's lookup under way asks no source and does not enter it. `unknown()`,
        when given, is called (and may raise: the throttle's 429) before anything else is done for a
        token whose identity is not cached (fresh, or stale and not expired): a token already known
        good is served without it, so a client throttled for failures still uses the keys it holds
        — and so do the other users behind its address (one NAT, an unnamed proxy)."""
        key = hash_key(token)
        cached = None if key in self.withheld else await self.cache.get(key)
        if (cached is not None and cached.value is not None and not self._expired(cached.value)
                and not await self._verified_here(token, key)):
            # Not remembered in the shared cache: a process whose key set is older than the one that
            # cached it (a JWKS key published since) would refuse it for every process.
            raise AuthenticationError()
        stale: Identity | None = None
        if cached is not None and cached.value is not None and not self._expired(cached.value):
            if cached.fresh:
                return self._admit(cached.value)
            stale = cached.value
        elif unknown is not None:
            await unknown()
        if key in self.operator_keys:
            raise AuthenticationError("An operator key is not a user credential: use an API key or a JWT")
        if key in self.withheld:
            raise AuthenticationError()
        if cached is not None and cached.value is None:
            if cached.reason is not None and cached.reason.startswith(UNRECORDABLE + ":"):
                raise _unrecordable(cached.reason[len(UNRECORDABLE) + 1:])
            raise Expired() if cached.reason == Expired.code else AuthenticationError()
        if not token.startswith(KEY_PREFIX) and KEY_PREFIX in token.lower():
            # A key behind other text (`Bearer Bearer <key>`, `x-api-key: Bearer <key>`, quotes) or with
            # its prefix in other case (`Sk-sentinel-<key>`, a capitalising keyboard) is no key, and would
            # go to the JWT source as a token: to Zion's `/users/me`, into its logs, the key's body whole.
            raise AuthenticationError(KEY_BEHIND_TEXT if KEY_PREFIX in token else KEY_IN_OTHER_CASE)
        source = self._source_for(token)
        if source is None:
            raise AuthenticationError()
        if source is not self.api_keys:
            if not canonical_encoding(token):  # one token's other spellings: no lookup, no cache entry each
                raise AuthenticationError("The token is not a JWT in canonical base64url (no '=' padding, '-' and '_')")
            expiry = unverified_expiry(token)
            if expiry is not None and expiry <= self.clock():
                raise AuthenticationError("The token has expired", code="token_expired")
        work = functools.partial(self._look_up, token, key, source, stale)
        if key in self._flights:  # this token's lookup is under way: no lookup (nor lookup turn) of our own
            return self._admit(stale) if stale is not None else await self._flights.run(key, work)
        # A stale identity (known good, being refreshed) does not queue behind unknown tokens for a
        # lookup turn. A caller cancelled meanwhile gives its turn back; its lookup goes on for the others.
        async with lookup() if lookup is not None and stale is None else nullcontext():
            return await self._flights.run(key, work)

    async def _verified_here(self, token: str, key: str) -> bool:
        """Whether this process may serve a cached identity of `token`: always for an API key or a
        token no local verifier judges (Zion's); for a locally verified JWT, once this process's
        verifier has verified it (remembered per process, so once per token and process): an
        identity cached by another configuration's process — before JWT_SECRET was rotated (say it
        leaked), or a JWKS key was withdrawn — was served on that process's word for up to
        JWT_CACHE_TTL_SECONDS after the restart, the forged tokens of the old secret with it. While
        the key set cannot be had (GovernanceUnavailable) the cached identity is served, as before.
        A token this process does not verify is refused here, at each use (a local check), and left
        cached for the processes that do."""
        if (key in self._verified or token.startswith(KEY_PREFIX)
                or not isinstance(self.jwt, LocalJwtIdentitySource)):
            return True
        try:
            claims = await self.jwt.verifier.verify(token)
        except GovernanceUnavailable:
            return True
        if claims is None:
            return False
        self._remember_verified(key)
        return True

    def _remember_verified(self, key: str) -> None:
        if len(self._verified) >= MAX_VERIFIED:
            self._verified.clear()  # each is verified again at its next use: a local check, no lookup
        self._verified.add(key)

    async def _look_up(self, token: str, key: str, source: IdentitySource, stale: Identity | None) -> Identity:
        """Ask `source` about `token`, and remember its answer: run once per token at a time (`_flights`)."""
        confirmed = True
        try:
            found = await source.authenticate(token)
        except Refused as refusal:  # refused as any unknown token is (below), and remembered longer
            await self._remember_refusal(token, refusal.expires_at)
            found = None
        except Expired:  # for good: remembered as long as an identity, and said again at each use
            await self.cache.put(key, None, reason=Expired.code)
            raise
        except GovernanceUnavailable as exc:
            if stale is not None:
                self._repeated.warning("identity source unavailable; serving a cached identity",
                                       extra={"source": source.name}, key=source.name)
                return self._admit(stale)
            if not isinstance(exc, StandIn):
                raise
            if await self._refused_before(token, exc):
                raise AuthenticationError() from None
            self._repeated.warning("identity source unavailable; serving a token from its claims",
                                   extra={"source": source.name}, key=source.name)
            found, confirmed = exc.identity, False
        if found is None or self._expired(found):
            await self.cache.put(key, None, ttl=self.negative_ttl)
            raise AuthenticationError()
        if source is self.jwt:
            self._remember_verified(key)  # its source verified it here: not again at its next use
        if (problem := found.unstorable()) is not None:  # refused: the identity itself cannot be stored
            if confirmed:
                # The source's verdict, remembered as a refusal (never the identity) for `negative_ttl`:
                # each use of the token asked the source again — with Zion one `/users/me` call per
                # request, uncounted by the failed-authentication throttle (the credential is valid).
                # A stand-in's claims are not the source's word: the next use asks it again.
                await self.cache.put(key, None, ttl=self.negative_ttl, not_after=found.expires_at,
                                     reason=f"{UNRECORDABLE}:{problem}")
            raise _unrecordable(problem)
        # A stand-in is kept for the outage only (stale from the start, as a confirmed identity past
        # its TTL): every later use asks the source again — at once when the breaker is open — and
        # is served it only while the source still cannot answer.
        await self.cache.put(key, found, stale=not confirmed, not_after=found.expires_at)
        return self._admit(found)

    async def _remember_refusal(self, token: str, expires_at: float) -> None:
        """Remember, until the token expires, that its source refused it: no stand-in for it then."""
        seconds = expires_at - self.clock()
        if seconds <= 0:
            return
        try:
            await self.cache.store.set(REFUSED_PREFIX + refusal_key(token), b"1", seconds)
        except StoreUnavailable:
            self._repeated.warning("could not remember a refused token: store unavailable")

    async def _refused_before(self, token: str, outage: GovernanceUnavailable) -> bool:
        """Whether the source refused this token before (then no stand-in is served for it); the
        outage itself (503) when that cannot be read: a stand-in is never served unchecked."""
        try:
            return await self.cache.store.get(REFUSED_PREFIX + refusal_key(token)) is not None
        except StoreUnavailable:
            raise outage from None

    def _expired(self, identity: Identity) -> bool:
        return identity.expires_at is not None and identity.expires_at <= self.clock()

    def _admit(self, identity: Identity) -> Identity:
        if self.require_email and not identity.email:
            raise PermissionDenied(UNREPORTABLE, code="usage_unreportable")
        if (problem := identity.unrecordable()) is not None:
            raise _unrecordable(problem)
        return identity

    async def revoke(self, token_hash: str) -> None:
        """Remember the token whose SHA-256 is `token_hash` as refused, for as long as any cached
        identity of it could live (`ttl` + `grace`): unlike `forget`, a lookup that read the key as
        active just before its revocation cannot cache it again afterwards (a value never replaces
        a refusal). Raises StoreUnavailable when the store cannot take it: a cached identity then
        lives on until its TTL, so the caller must say so (and may call again once the store answers)."""
        await self.cache.hold(token_hash, self.cache.ttl + self.cache.grace)

    async def forget(self, token_hash: str) -> None:
        """Drop the cached identity of the token whose SHA-256 is `token_hash` (a revoked key then
        fails at its next use; other processes' local copies live at most `local_ttl` longer)."""
        await self.cache.forget(token_hash)

    async def user_changed(self, token_hash: str) -> None:
        """Drop the cached identity of the token whose SHA-256 is `token_hash`, as its user changed
        (an email set or replaced): its next use reads the source again, not JWT_CACHE_TTL_SECONDS
        later (other processes' local copies live at most `local_ttl` longer). A refusal (a revoked
        key's tombstone, an expiry) stays. Raises StoreUnavailable."""
        await self.cache.drop_value(token_hash)


def _unrecordable(problem: str) -> PermissionDenied:
    """The 403 for an identity whose usage cannot be recorded, saying why (`Identity.unstorable`)."""
    return PermissionDenied(f"This identity's usage cannot be recorded: {problem}", code=UNRECORDABLE)
