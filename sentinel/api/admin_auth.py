"""Who may use the console and the admin API: the admin key, or a signed session cookie + CSRF token.

* **Scripts** send `Authorization: Bearer <SENTINEL_ADMIN_KEY>` on `/admin/api/*`. Not a cookie,
  so no CSRF token is needed. A user's API key there is refused like any wrong key (401), and the
  admin key is never accepted on user routes (it is not an API key).
* **Browsers** sign in with the key once (`POST /admin/signin`); the answer sets the
  `sentinel_admin` cookie: `v1.<expiry>.<nonce>.<mac>`, `mac = HMAC-SHA256(key,
  "sentinel-admin-session|v1|<expiry>|<nonce>")` — never the key. `HttpOnly`, `SameSite=Strict`,
  `Path=/admin`, `Max-Age` = 8 hours, `Secure` when the request came over https. Changing the key
  ends every session; signing out ends that one: its nonce is kept in the store
  (`sentinel:console:signed-out:<nonce>`) until the token would have expired, and a token whose
  nonce is there is no session — a copy of the cookie dies with the sign-out. A store that cannot
  be read does not refuse sessions (the console stays usable through a store outage, when its
  "revoke again" matters most), so a signed-out copy works again only while the store is down.
* **CSRF** (synchronizer token, stateless): every state-changing request made with the cookie must
  carry `csrf = HMAC-SHA256(key, "sentinel-admin-csrf|" + <session token>)`, as the `csrf` form
  field (console forms) or the `X-CSRF-Token` header (scripts in the page). Another site can
  neither read the page's token nor compute it; a missing or wrong token is 403.
* Failed sign-ins and failed admin keys count in the app's `FailedAuthThrottle` (429 beyond it).
  A sign-in form a browser posted from another site is refused (403) and not counted
  (`sentinel.api.docs_auth.from_another_site`).

Keys, tokens and CSRF values are compared with `hmac.compare_digest` on digests, so nothing leaks
through timing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sentinel.api.docs_auth import MAX_EXPIRY, cookie_values
from sentinel.api.throttle import FailedAuthThrottle
from sentinel.domain.numbers import parse_whole
from sentinel.errors import AuthenticationError, PermissionDenied, StoreUnavailable
from sentinel.store import Store

log = logging.getLogger("sentinel.console")

COOKIE = "sentinel_admin"
COOKIE_PATH = "/admin"
SESSION_SECONDS = 8 * 3600
CSRF_HEADER = "x-csrf-token"
_SESSION = b"sentinel-admin-session|v1|"
_CSRF = b"sentinel-admin-csrf|"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SIGNED_OUT = "sentinel:console:signed-out:"


@dataclass(frozen=True)
class AdminAccess:
    """An authorised admin request: by key (`session` None) or by cookie (its session token)."""

    session: str | None
    csrf: str | None


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class AdminGate:
    """Checks admin credentials and mints sessions; `clock` is unix seconds (injected in tests)."""

    def __init__(self, key: str, *, throttle: FailedAuthThrottle, store: Store | None = None,
                 clock: Callable[[], float] = time.time, session_seconds: int = SESSION_SECONDS) -> None:
        if not key:
            raise ValueError("the admin key must be non-empty")
        self._key = key.encode("utf-8", "surrogatepass")
        self._key_digest = _digest(key)
        self.throttle = throttle
        self.store = store  # where signed-out sessions are kept (None: signing out only clears the cookie)
        self.clock = clock
        self.session_seconds = session_seconds

    def key_matches(self, given: str) -> bool:
        return hmac.compare_digest(_digest(given), self._key_digest)

    def _mac(self, context: bytes, value: str) -> str:
        return hmac.new(self._key, context + value.encode(), hashlib.sha256).hexdigest()

    def mint(self) -> str:
        """A new session token valid for `session_seconds`."""
        body = f"{int(self.clock()) + self.session_seconds}|{secrets.token_hex(8)}"
        expires, nonce = body.split("|")
        return f"v1.{expires}.{nonce}.{self._mac(_SESSION, body)}"

    def session_valid(self, token: str) -> bool:
        """True for an unexpired token minted with the current key."""
        parts = token.split(".")
        expires = parse_whole(parts[1], MAX_EXPIRY) if len(parts) == 4 and parts[0] == "v1" else None
        if expires is None or expires <= self.clock():
            return False
        return hmac.compare_digest(parts[3].encode(), self._mac(_SESSION, f"{parts[1]}|{parts[2]}").encode())

    def csrf_for(self, session: str) -> str:
        """The CSRF token bound to a session token."""
        return self._mac(_CSRF, session)

    def set_cookie(self, token: str, secure: bool) -> str:
        attributes = f"; Max-Age={self.session_seconds}; Path={COOKIE_PATH}; HttpOnly; SameSite=Strict"
        return f"{COOKIE}={token}{attributes}{'; Secure' if secure else ''}"

    @staticmethod
    def clear_cookie(secure: bool) -> str:
        return f"{COOKIE}=; Max-Age=0; Path={COOKIE_PATH}; HttpOnly; SameSite=Strict{'; Secure' if secure else ''}"

    async def session_of(self, headers: Mapping[str, str]) -> str | None:
        """The first valid session token among the request's cookies of that name that was not
        signed out, or None."""
        for token in cookie_values(headers.get("cookie", ""), COOKIE):
            if self.session_valid(token) and not await self._signed_out(token):
                return token
        return None

    async def _signed_out(self, token: str) -> bool:
        if self.store is None:
            return False
        try:
            return await self.store.get(SIGNED_OUT + token.split(".")[2]) is not None
        except StoreUnavailable:  # see the module docstring: the session stands
            log.debug("could not read signed-out console sessions: store unavailable")
            return False

    async def sign_out(self, session: str) -> None:
        """End `session` (a valid token) for good, until it would have expired. StoreUnavailable when
        the store cannot keep that: the session's copies stay valid."""
        _, expires, nonce, _ = session.split(".")
        if self.store is not None:
            await self.store.set(SIGNED_OUT + nonce, b"1", max(1.0, int(expires) - self.clock() + 1))

    async def authorize(self, method: str, headers: Mapping[str, str], address: str | None) -> AdminAccess:
        """The admin access of a request (lower-cased `headers`): AuthenticationError (401) without a
        valid key or session, PermissionDenied (403) for a cookie request that changes state without
        its CSRF header, RateLimited (429) for an address that failed too often."""
        await self.throttle.check(address)
        bearer = headers.get("authorization")
        if bearer is not None:
            scheme, _, given = bearer.partition(" ")
            if scheme.lower() == "bearer" and given.strip() and self.key_matches(given.strip()):
                return AdminAccess(None, None)
            await self.throttle.failed(address)
            raise _unauthenticated("The admin API takes the admin key (SENTINEL_ADMIN_KEY), not a user's key")
        session = await self.session_of(headers)
        if session is None:
            raise _unauthenticated("Sign in at /admin/signin, or send Authorization: Bearer <admin key>")
        csrf = self.csrf_for(session)
        if method not in SAFE_METHODS and not self.csrf_matches(session, headers.get(CSRF_HEADER)):
            raise PermissionDenied("Missing or wrong CSRF token (X-CSRF-Token)", code="csrf_failed")
        return AdminAccess(session, csrf)

    def csrf_matches(self, session: str, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(_digest(given), _digest(self.csrf_for(session)))


def _unauthenticated(message: str) -> AuthenticationError:
    err = AuthenticationError(message, code="admin_auth_required")
    err.headers.pop("WWW-Authenticate", None)
    return err
