"""Who may read the native API docs: the ``X-Docs-Key`` header, or a signed sign-in cookie.

With ``DOCS_API_KEY`` unset the docs are open. With it set, a request is let in when

* its ``X-Docs-Key`` header equals the key (for scripts and curl), or
* its ``sentinel_docs`` cookie holds a valid, unexpired token minted by the sign-in form that was
  not signed out.

The key is never taken from the query string (access logs and browser history keep URLs). Keys
are compared as HMAC-SHA256 digests with `hmac.compare_digest`, so neither content nor length
leaks through timing. The cookie never holds the key: its value is ``v2.<expiry>.<nonce>.<mac>``
where ``mac = HMAC-SHA256(key, "sentinel-docs-session|v2|<expiry>|<nonce>")``; changing the key
revokes every cookie. Signing out (``POST /native/docs/signout``, with the session's CSRF token in its
form's ``csrf`` field, as the console's forms) ends that one: its nonce is kept
in the store (``sentinel:docs:signed-out:<nonce>``) until the token would have expired, and a copy
of the cookie dies with it — as the console's sessions (both are
`sentinel.api.cookie_sessions.CookieSessions`), a store that cannot be read lets a signed-out copy
in meanwhile. A ``v1`` token (no nonce: it could not be
signed out) is no longer accepted. The cookie is ``HttpOnly``, ``SameSite=Strict``, scoped to
``/native/docs`` and ``Secure`` when the request came over https. A sign-in form a browser posted
from another site is refused (`from_another_site`).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping
from urllib.parse import parse_qs

from sentinel.api.cookie_sessions import CookieSessions, key_digest
from sentinel.store import Store

COOKIE = "sentinel_docs"
COOKIE_PATH = "/native/docs"
SESSION_SECONDS = 12 * 3600
MAX_FORM_BYTES = 4096
_CONTEXT = b"sentinel-docs-session|v2|"
_CSRF = b"sentinel-docs-csrf|"
SIGNED_OUT = "sentinel:docs:signed-out:"


class DocsGate(CookieSessions):
    """Decides whether a docs request is authorised, mints sign-in cookies and signs them out.

    `clock` returns unix seconds (injected so tests can move time without sleeping); `store` keeps
    signed-out tokens (None: signing out only clears the browser's cookie).
    """

    def __init__(self, key: str | None, *, clock: Callable[[], float] = time.time,
                 session_seconds: int = SESSION_SECONDS, store: Store | None = None) -> None:
        if key is not None and not key:
            raise ValueError("the docs key must be non-empty when set")
        super().__init__(key, version="v2", context=_CONTEXT, csrf=_CSRF, cookie=COOKIE, path=COOKIE_PATH,
                         session_seconds=session_seconds, signed_out=SIGNED_OUT, clock=clock, store=store)
        self._key = key
        self._key_digest = key_digest(key) if key else b""

    @property
    def open(self) -> bool:
        """True when no key is configured (the docs are public)."""
        return self._key is None

    def key_matches(self, given: str) -> bool:
        """Constant-time comparison of a presented key with the configured one."""
        return self._key is not None and hmac.compare_digest(key_digest(given), self._key_digest)

    async def allows(self, headers: dict[str, str]) -> bool:
        """Whether lower-cased request `headers` carry the key or a valid cookie (always, when open)."""
        if self._key is None:
            return True
        given = headers.get("x-docs-key")
        if given is not None and self.key_matches(given):
            return True
        return await self.session_of(headers) is not None


def from_another_site(headers: Mapping[str, str]) -> bool:
    """Whether the browser says (`Sec-Fetch-Site`) that a page of another origin made the request. A
    sign-in form posted from elsewhere is refused, uncounted: any page an operator opened could post
    wrong keys from their browser until their address was throttled (429 for every credential from
    it, the admin key and users' keys too). Clients that are not browsers send no such header."""
    return headers.get("sec-fetch-site", "same-origin").strip().lower() not in ("same-origin", "none")


def embedded_by_another_site(headers: Mapping[str, str]) -> bool:
    """Whether the browser says (`from_another_site`, `Sec-Fetch-Dest`) that a page of another origin
    made the request as anything but a navigation of a whole window (`document`): an image, a frame,
    a script, a fetch. A sibling subdomain's page is `same-site`, so its requests carry a SameSite=Strict
    cookie: an `<img>` of a console page had the operator who opened it run the page's reports."""
    return from_another_site(headers) and headers.get("sec-fetch-dest", "document").strip().lower() != "document"


def form_key(body: bytes, name: str = "key") -> str | None:
    """The ``key`` field (or `name`'s) of an ``application/x-www-form-urlencoded`` body, None when missing."""
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        return None
    values = fields.get(name)
    return values[0] if values else None
