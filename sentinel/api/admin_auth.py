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
  (The docs' sessions work alike: both are `sentinel.api.cookie_sessions.CookieSessions`.)
* **CSRF** (synchronizer token, stateless): every state-changing request made with the cookie must
  carry `csrf = HMAC-SHA256(key, "sentinel-admin-csrf|" + <session token>)`, as the `csrf` form
  field (console forms) or the `X-CSRF-Token` header (scripts in the page). Another site can
  neither read the page's token nor compute it; a missing or wrong token is 403. A cookie request a
  page of another site embeds or fetches (`embedded_by_another_site`: a sibling subdomain's page is
  same-site, so the cookie goes with it) is 403 whatever its method: a read runs its reports.
* Failed sign-ins and failed admin keys count in the app's `FailedAuthThrottle` (429 beyond it).
  A sign-in form a browser posted from another site is refused (403) and not counted
  (`sentinel.api.docs_auth.from_another_site`).

Keys, tokens and CSRF values are compared with `hmac.compare_digest` on digests, so nothing leaks
through timing.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sentinel.api.cookie_sessions import CookieSessions, key_digest
from sentinel.api.docs_auth import embedded_by_another_site
from sentinel.api.throttle import FailedAuthThrottle
from sentinel.errors import AuthenticationError, PermissionDenied
from sentinel.store import Store

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


class AdminGate(CookieSessions):
    """Checks admin credentials and mints sessions; `clock` is unix seconds (injected in tests)."""

    def __init__(self, key: str, *, throttle: FailedAuthThrottle, store: Store | None = None,
                 clock: Callable[[], float] = time.time, session_seconds: int = SESSION_SECONDS) -> None:
        if not key:
            raise ValueError("the admin key must be non-empty")
        super().__init__(key, version="v1", context=_SESSION, csrf=_CSRF, cookie=COOKIE, path=COOKIE_PATH,
                         session_seconds=session_seconds, signed_out=SIGNED_OUT, clock=clock, store=store)
        self._key_digest = key_digest(key)
        self.throttle = throttle

    def key_matches(self, given: str) -> bool:
        return hmac.compare_digest(key_digest(given), self._key_digest)

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
        if embedded_by_another_site(headers):  # a sibling subdomain's `<img>`: its requests carry the cookie
            raise PermissionDenied("A page of another site may not embed or fetch the admin API with the console's "
                                   "session", code="cross_site_request")
        csrf = self.csrf_for(session)
        if method not in SAFE_METHODS and not self.csrf_matches(session, headers.get(CSRF_HEADER)):
            raise PermissionDenied("Missing or wrong CSRF token (X-CSRF-Token)", code="csrf_failed")
        return AdminAccess(session, csrf)


def _unauthenticated(message: str) -> AuthenticationError:
    err = AuthenticationError(message, code="admin_auth_required")
    err.headers.pop("WWW-Authenticate", None)
    return err
