"""Signed browser sessions behind an operator key — the console's (`sentinel.api.admin_auth`) and the
native docs' (`sentinel.api.docs_auth`) — and the reading of their cookies.

A session token never holds the key: it is ``<version>.<expiry>.<nonce>.<mac>`` with ``mac =
HMAC-SHA256(key, <context><expiry>|<nonce>)``, so changing the key ends every session. Signing out
ends one: its nonce is kept in the store (``<signed-out prefix><nonce>``) until the token would have
expired, and a copy of the cookie dies with it. A store that cannot be read does not refuse sessions
(the surface stays usable through a store outage), so a signed-out copy works again only while the
store is down. A state-changing form posted with the cookie carries the session's CSRF token
(`csrf_for`). Keys and tokens are compared with `hmac.compare_digest` on digests.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Mapping

from sentinel.domain.numbers import parse_whole
from sentinel.errors import StoreUnavailable
from sentinel.store import Store

log = logging.getLogger("sentinel.sessions")

MAX_EXPIRY = 10**12 - 1  # a cookie's expiry: at most 12 digits of unix seconds
# Values of one cookie name looked at. A browser sends one per (domain, path) that set it and matches
# the request: a sibling subdomain can plant one per parent domain for each prefix of the path
# (`/admin/api/users/zoe/plan`, `/admin/api/users/zoe/`, ... `/admin`: nine), all sent before ours.
# Far more than any path here has times the parent domains of a host; a forged value costs one HMAC.
MAX_COOKIES = 64


def key_digest(value: str) -> bytes:
    """What keys and tokens are compared as (`hmac.compare_digest`: neither content nor length leaks)."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def cookie_values(header: str, name: str) -> list[str]:
    """The values of cookie `name` in a ``Cookie`` header (``a=1; b=2``), in order, at most MAX_COOKIES.
    All of them, not the first: a page of a sibling subdomain can set one of the same name for the
    parent domain (and a longer path), which browsers send first — read alone, it signed the operator
    out for good."""
    found = []
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            found.append(value.strip())
            if len(found) == MAX_COOKIES:
                break
    return found


class CookieSessions:
    """Mints, checks and signs out the session tokens of one surface (see the module docstring).

    `key` None: no key guards the surface (nothing is minted, no token is valid). `clock` is unix
    seconds (injected in tests); `store` keeps signed-out tokens (None: signing out only clears the
    browser's cookie)."""

    def __init__(
        self, key: str | None, *, version: str, context: bytes, csrf: bytes, cookie: str, path: str,
        session_seconds: int, signed_out: str, clock: Callable[[], float], store: Store | None,
    ) -> None:
        self._key_bytes = key.encode("utf-8", "surrogatepass") if key else b""
        self._keyed = key is not None
        self.version = version
        self.context = context
        self.csrf = csrf
        self.cookie = cookie
        self.path = path
        self.session_seconds = session_seconds
        self.signed_out = signed_out
        self.clock = clock
        self.store = store

    def _mac(self, expires: str, nonce: str) -> str:
        return hmac.new(self._key_bytes, self.context + f"{expires}|{nonce}".encode(), hashlib.sha256).hexdigest()

    def csrf_for(self, session: str) -> str:
        """The CSRF token bound to a session token: `HMAC-SHA256(key, <csrf context> + session)`, which
        a page of another site can neither read nor compute (a sibling subdomain's is same-site: the
        SameSite=Strict cookie goes with its form posts, and over http no `Sec-Fetch-Site` tells it)."""
        return hmac.new(self._key_bytes, self.csrf + session.encode(), hashlib.sha256).hexdigest()

    def csrf_matches(self, session: str, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(key_digest(given), key_digest(self.csrf_for(session)))

    def mint(self) -> str:
        """A new session token valid for `session_seconds` (only with a key configured)."""
        if not self._keyed:
            raise RuntimeError("no key configured: there is nothing to sign in to")
        expires, nonce = str(int(self.clock()) + self.session_seconds), secrets.token_hex(8)
        return f"{self.version}.{expires}.{nonce}.{self._mac(expires, nonce)}"

    def session_valid(self, token: str) -> bool:
        """True for an unexpired token minted with the current key (signed out or not: `session_of`)."""
        if not self._keyed:
            return False
        parts = token.split(".")
        expires = parse_whole(parts[1], MAX_EXPIRY) if len(parts) == 4 and parts[0] == self.version else None
        if expires is None or expires <= self.clock():
            return False
        return hmac.compare_digest(parts[3].encode(), self._mac(parts[1], parts[2]).encode())

    async def session_of(self, headers: Mapping[str, str]) -> str | None:
        """The first valid session token among the request's cookies of that name (lower-cased
        `headers`) that was not signed out, or None."""
        for token in cookie_values(headers.get("cookie", ""), self.cookie):
            if self.session_valid(token) and not await self._is_signed_out(token):
                return token
        return None

    async def _is_signed_out(self, token: str) -> bool:
        if self.store is None:
            return False
        try:
            return await self.store.get(self.signed_out + token.split(".")[2]) is not None
        except StoreUnavailable:  # see the module docstring: the session stands
            log.debug("could not read signed-out sessions (%s): store unavailable", self.cookie)
            return False

    async def sign_out(self, token: str) -> None:
        """End `token` (a valid one) for good, until it would have expired. StoreUnavailable when the
        store cannot keep that: its copies stay valid."""
        _, expires, nonce, _ = token.split(".")
        if self.store is not None:
            await self.store.set(self.signed_out + nonce, b"1", max(1.0, int(expires) - self.clock() + 1))

    def _attributes(self, max_age: int, secure: bool) -> str:
        return f"; Max-Age={max_age}; Path={self.path}; HttpOnly; SameSite=Strict{'; Secure' if secure else ''}"

    def set_cookie(self, token: str, secure: bool) -> str:
        """The ``Set-Cookie`` value of a signed-in session (``Secure`` when the request came over https)."""
        return f"{self.cookie}={token}{self._attributes(self.session_seconds, secure)}"

    def clear_cookie(self, secure: bool) -> str:
        """The ``Set-Cookie`` value after signing out."""
        return f"{self.cookie}={self._attributes(0, secure)}"
