"""Who may read the native API docs: the ``X-Docs-Key`` header, or a signed sign-in cookie.

With ``DOCS_API_KEY`` unset the docs are open. With it set, a request is let in when

* its ``X-Docs-Key`` header equals the key (for scripts and curl), or
* its ``sentinel_docs`` cookie holds a valid, unexpired token minted by the sign-in form that was
  not signed out.

The key is never taken from the query string (access logs and browser history keep URLs). Keys
are compared as HMAC-SHA256 digests with `hmac.compare_digest`, so neither content nor length
leaks through timing. The cookie never holds the key: its value is ``v2.<expiry>.<nonce>.<mac>``
where ``mac = HMAC-SHA256(key, "sentinel-docs-session|v2|<expiry>|<nonce>")``; changing the key
revokes every cookie. Signing out (``POST /native/docs/signout``) ends that one: its nonce is kept
in the store (``sentinel:docs:signed-out:<nonce>``) until the token would have expired, and a copy
of the cookie dies with it — as the console's sessions (`sentinel.api.admin_auth`), a store that
cannot be read lets a signed-out copy in meanwhile. A ``v1`` token (no nonce: it could not be
signed out) is no longer accepted. The cookie is ``HttpOnly``, ``SameSite=Strict``, scoped to
``/native/docs`` and ``Secure`` when the request came over https. A sign-in form a browser posted
from another site is refused (`from_another_site`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from urllib.parse import parse_qs

from sentinel.domain.numbers import parse_whole
from sentinel.errors import StoreUnavailable
from sentinel.store import Store

log = logging.getLogger("sentinel.docs")

COOKIE = "sentinel_docs"
COOKIE_PATH = "/native/docs"
SESSION_SECONDS = 12 * 3600
MAX_FORM_BYTES = 4096
_CONTEXT = b"sentinel-docs-session|v2|"
SIGNED_OUT = "sentinel:docs:signed-out:"
MAX_EXPIRY = 10**12 - 1  # a cookie's expiry: at most 12 digits of unix seconds


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class DocsGate:
    """Decides whether a docs request is authorised, mints sign-in cookies and signs them out.

    `clock` returns unix seconds (injected so tests can move time without sleeping); `store` keeps
    signed-out tokens (None: signing out only clears the browser's cookie).
    """

    def __init__(self, key: str | None, *, clock: Callable[[], float] = time.time,
                 session_seconds: int = SESSION_SECONDS, store: Store | None = None) -> None:
        if key is not None and not key:
            raise ValueError("the docs key must be non-empty when set")
        self._key = key
        self._key_bytes = key.encode("utf-8", "surrogatepass") if key else b""
        self._key_digest = _digest(key) if key else b""
        self._clock = clock
        self.session_seconds = session_seconds
        self.store = store

    @property
    def open(self) -> bool:
        """True when no key is configured (the docs are public)."""
        return self._key is None

    def key_matches(self, given: str) -> bool:
        """Constant-time comparison of a presented key with the configured one."""
        return self._key is not None and hmac.compare_digest(_digest(given), self._key_digest)

    def _mac(self, expires: str, nonce: str) -> str:
        return hmac.new(self._key_bytes, _CONTEXT + f"{expires}|{nonce}".encode(), hashlib.sha256).hexdigest()

    def mint(self) -> str:
        """A new cookie token valid for `session_seconds` (only with a key configured)."""
        if self._key is None:
            raise RuntimeError("no docs key configured: there is nothing to sign in to")
        expires, nonce = str(int(self._clock()) + self.session_seconds), secrets.token_hex(8)
        return f"v2.{expires}.{nonce}.{self._mac(expires, nonce)}"

    def token_valid(self, token: str) -> bool:
        """True for an unexpired token minted with the current key (signed out or not: `session_of`)."""
        if self._key is None:
            return False
        parts = token.split(".")
        expires = parse_whole(parts[1], MAX_EXPIRY) if len(parts) == 4 and parts[0] == "v2" else None
        if expires is None or expires <= self._clock():
            return False
        return hmac.compare_digest(parts[3].encode(), self._mac(parts[1], parts[2]).encode())

    async def session_of(self, headers: Mapping[str, str]) -> str | None:
        """The first valid token among the request's cookies of that name not signed out, or None."""
        for token in cookie_values(headers.get("cookie", ""), COOKIE):
            if self.token_valid(token) and not await self._signed_out(token):
                return token
        return None

    async def _signed_out(self, token: str) -> bool:
        if self.store is None:
            return False
        try:
            return await self.store.get(SIGNED_OUT + token.split(".")[2]) is not None
        except StoreUnavailable:  # as the console's sessions: the docs stay readable through an outage
            log.debug("could not read signed-out docs sessions: store unavailable")
            return False

    async def sign_out(self, token: str) -> None:
        """End `token` (a valid one) for good, until it would have expired. StoreUnavailable when the
        store cannot keep that: its copies stay valid."""
        _, expires, nonce, _ = token.split(".")
        if self.store is not None:
            await self.store.set(SIGNED_OUT + nonce, b"1", max(1.0, int(expires) - self._clock() + 1))

    async def allows(self, headers: dict[str, str]) -> bool:
        """Whether lower-cased request `headers` carry the key or a valid cookie (always, when open)."""
        if self._key is None:
            return True
        given = headers.get("x-docs-key")
        if given is not None and self.key_matches(given):
            return True
        return await self.session_of(headers) is not None

    def set_cookie(self, secure: bool) -> str:
        """The ``Set-Cookie`` value after a successful sign-in."""
        attributes = f"; Max-Age={self.session_seconds}; Path={COOKIE_PATH}; HttpOnly; SameSite=Strict"
        return f"{COOKIE}={self.mint()}{attributes}{'; Secure' if secure else ''}"

    @staticmethod
    def clear_cookie(secure: bool) -> str:
        """The ``Set-Cookie`` value after signing out."""
        return f"{COOKIE}=; Max-Age=0; Path={COOKIE_PATH}; HttpOnly; SameSite=Strict{'; Secure' if secure else ''}"


# Values of one cookie name looked at. A browser sends one per (domain, path) that set it and matches
# the request: a sibling subdomain can plant one per parent domain for each prefix of the path
# (`/admin/api/users/zoe/plan`, `/admin/api/users/zoe/`, ... `/admin`: nine), all sent before ours.
# Far more than any path here has times the parent domains of a host; a forged value costs one HMAC.
MAX_COOKIES = 64


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


def from_another_site(headers: Mapping[str, str]) -> bool:
    """Whether the browser says (`Sec-Fetch-Site`) that a page of another origin made the request. A
    sign-in form posted from elsewhere is refused, uncounted: any page an operator opened could post
    wrong keys from their browser until their address was throttled (429 for every credential from
    it, the admin key and users' keys too). Clients that are not browsers send no such header."""
    return headers.get("sec-fetch-site", "same-origin").strip().lower() not in ("same-origin", "none")


def form_key(body: bytes) -> str | None:
    """The ``key`` field of an ``application/x-www-form-urlencoded`` body, None when missing."""
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        return None
    values = fields.get("key")
    return values[0] if values else None
