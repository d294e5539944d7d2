"""Who may read the native API docs: the ``X-Docs-Key`` header, or a signed sign-in cookie.

With ``DOCS_API_KEY`` unset the docs are open. With it set, a request is let in when

* its ``X-Docs-Key`` header equals the key (for scripts and curl), or
* its ``sentinel_docs`` cookie holds a valid, unexpired token minted by the sign-in form.

The key is never taken from the query string (access logs and browser history keep URLs). Keys
are compared as HMAC-SHA256 digests with `hmac.compare_digest`, so neither content nor length
leaks through timing. The cookie never holds the key: its value is ``v1.<expiry>.<mac>`` where
``mac = HMAC-SHA256(key, "sentinel-docs-session|v1|<expiry>")``; changing the key revokes every
cookie. The cookie is ``HttpOnly``, ``SameSite=Strict``, scoped to ``/native/docs`` and ``Secure``
when the request came over https. A sign-in form a browser posted from another site is refused
(`from_another_site`).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from urllib.parse import parse_qs

from sentinel.domain.numbers import parse_whole

COOKIE = "sentinel_docs"
COOKIE_PATH = "/native/docs"
SESSION_SECONDS = 12 * 3600
MAX_FORM_BYTES = 4096
_CONTEXT = b"sentinel-docs-session|v1|"
MAX_EXPIRY = 10**12 - 1  # a cookie's expiry: at most 12 digits of unix seconds


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class DocsGate:
    """Decides whether a docs request is authorised and mints sign-in cookies.

    `clock` returns unix seconds (injected so tests can move time without sleeping).
    """

    def __init__(self, key: str | None, *, clock: Callable[[], float] = time.time,
                 session_seconds: int = SESSION_SECONDS) -> None:
        if key is not None and not key:
            raise ValueError("the docs key must be non-empty when set")
        self._key = key
        self._key_bytes = key.encode("utf-8", "surrogatepass") if key else b""
        self._key_digest = _digest(key) if key else b""
        self._clock = clock
        self.session_seconds = session_seconds

    @property
    def open(self) -> bool:
        """True when no key is configured (the docs are public)."""
        return self._key is None

    def key_matches(self, given: str) -> bool:
        """Constant-time comparison of a presented key with the configured one."""
        return self._key is not None and hmac.compare_digest(_digest(given), self._key_digest)

    def _mac(self, expires: int) -> str:
        return hmac.new(self._key_bytes, _CONTEXT + str(expires).encode(), hashlib.sha256).hexdigest()

    def mint(self) -> str:
        """A new cookie token valid for `session_seconds` (only with a key configured)."""
        if self._key is None:
            raise RuntimeError("no docs key configured: there is nothing to sign in to")
        expires = int(self._clock()) + self.session_seconds
        return f"v1.{expires}.{self._mac(expires)}"

    def token_valid(self, token: str) -> bool:
        """True for an unexpired token minted with the current key."""
        if self._key is None:
            return False
        version, _, rest = token.partition(".")
        expires_text, _, mac = rest.partition(".")
        expires = parse_whole(expires_text, MAX_EXPIRY) if version == "v1" else None
        if expires is None or expires <= self._clock():
            return False
        return hmac.compare_digest(mac.encode(), self._mac(expires).encode())

    def allows(self, headers: dict[str, str]) -> bool:
        """Whether lower-cased request `headers` carry the key or a valid cookie (always, when open)."""
        if self._key is None:
            return True
        given = headers.get("x-docs-key")
        if given is not None and self.key_matches(given):
            return True
        return any(self.token_valid(token) for token in cookie_values(headers.get("cookie", ""), COOKIE))

    def set_cookie(self, secure: bool) -> str:
        """The ``Set-Cookie`` value after a successful sign-in."""
        attributes = f"; Max-Age={self.session_seconds}; Path={COOKIE_PATH}; HttpOnly; SameSite=Strict"
        return f"{COOKIE}={self.mint()}{attributes}{'; Secure' if secure else ''}"


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
