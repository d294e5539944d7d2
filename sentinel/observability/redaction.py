"""Secrets taken out of text before it is logged, traced or relayed: the one home of redaction.

`redact(text, secret)` replaces one known secret (the provider key a request was sent with) in an
error answer or event, str or bytes. `Redactor` is for what a client sends that Sentinel logs (a
request path, an error message quoting it): it replaces every Sentinel API key (`sk-sentinel-` and
its body, whatever key it is; the body alone too, 40 characters of its alphabet mixing upper and
lower case) and every configured secret (provider keys, the admin, docs and Zion keys, ...) with
`***`. A client that puts its key in a URL, or an operator who pastes a key where a key id goes (`POST /admin/api/keys/sk-sentinel-.../revoke`), leaves no key in the logs. A JWT (three
base64url segments joined by dots, the first starting `eyJ`: a signed header's `{"`) is taken out
whole too: a bearer credential wherever it is found (a client's X-Request-Id, a URL's query).

It runs on every access-log line, so the common case costs a few substring checks (C speed, no
regex): a pattern is applied only when `sk-sentinel-` (or `eyJ`) is in the text, the key body's only
to text of at least 40 characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TypeVar

from sentinel.observability.logging import MAX_LOGGED_CHARS, clipped

MIN_REDACTED = 8  # a configured key shorter than this is not looked for (it would blank ordinary words)
REDACTED = "***"
# `sentinel.governance.keys.KEY_PREFIX` and its body (`secrets.token_urlsafe`: A-Z a-z 0-9 _ -); that
# module is above this one, so the shape is said here too (tests/observability/test_redaction.py
# keeps the two the same).
SENTINEL_KEY_PREFIX = "sk-sentinel-"
_SENTINEL_KEY = re.compile(r"sk-sentinel-[A-Za-z0-9_\-]*")
# Its body alone (the prefix dropped) is the key too: 40 characters of that alphabet standing alone
# (no such character either side). Found without the prefix only when it mixes upper and lower case,
# as a random body all but always does (a 40-character body without either: about 2 in 10^9), and as
# a model name, a hex digest (SHA-1's 40 digits) or a `key_...` id of the same length does not.
SENTINEL_KEY_BODY_CHARS = 40
_KEY_BODY = re.compile(rf"(?<![A-Za-z0-9_\-])[A-Za-z0-9_\-]{{{SENTINEL_KEY_BODY_CHARS}}}(?![A-Za-z0-9_\-])")
JWT_PREFIX = "eyJ"  # base64url of `{"`, how every JWT's header starts
# A JWT: header, payload and signature (empty when unsigned, `alg: none`), base64url each.
_JWT = re.compile(r"eyJ[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")

Text = TypeVar("Text", str, bytes)


def is_key_body(text: str) -> bool:
    """Whether `text` is, whole, what a Sentinel key's body looks like (see `_KEY_BODY`)."""
    return _KEY_BODY.fullmatch(text) is not None and _mixed_case(text)


def _mixed_case(text: str) -> bool:
    return text != text.lower() and text != text.upper()


def _key_body(match: re.Match[str]) -> str:
    return REDACTED if _mixed_case(match.group()) else match.group()


def redact(text: Text, secret: str | None) -> Text:
    """`text` (an error answer's body, an error event or its fields) with every occurrence of `secret`
    (the provider key the request was sent with) replaced by `***`; keys shorter than MIN_REDACTED
    characters are left alone."""
    if not secret or len(secret) < MIN_REDACTED:
        return text
    if isinstance(text, str):
        return text.replace(secret, REDACTED)
    return text.replace(secret.encode(), REDACTED.encode())


class Redactor:
    """Takes Sentinel API keys, JWTs and the configured `secrets` out of text (see the module docstring)."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        # Longest first: a secret holding another is replaced whole.
        self.secrets = tuple(sorted({s for s in secrets if s and len(s) >= MIN_REDACTED}, key=len, reverse=True))

    def __call__(self, text: str, also: tuple[str, ...] = ()) -> str:
        """`text` without the keys, JWTs and configured secrets, nor `also` (a request's own credential,
        of any shape: `sentinel.api.context.caller_credentials`; a Sentinel key's body even without its
        prefix), each one at least MIN_REDACTED long looked for with one substring check. The patterns first: a Sentinel key stays `sk-sentinel-***`."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if SENTINEL_KEY_PREFIX in text:
            text = _SENTINEL_KEY.sub(SENTINEL_KEY_PREFIX + REDACTED, text)
        if JWT_PREFIX in text:
            text = _JWT.sub(REDACTED, text)
        if len(text) >= SENTINEL_KEY_BODY_CHARS:  # (most paths are shorter: no regex for them)
            text = _KEY_BODY.sub(_key_body, text)
        for secret in also:
            # A Sentinel key's body alone is the key (its prefix is public): a client that put it in a
            # path, its X-Request-Id or a model name without the prefix had it logged, so the body is
            # what is looked for (the key whole is the pattern's already).
            secret = secret.removeprefix(SENTINEL_KEY_PREFIX)
            if len(secret) >= MIN_REDACTED and secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def clipped(self, text: str, limit: int = MAX_LOGGED_CHARS, also: tuple[str, ...] = ()) -> str:
        """`text` redacted (`also` too), then cut to `limit` characters (`clipped`): a key across the
        cut is still found whole."""
        return clipped(self(text, also), limit)


SENTINEL_KEYS_ONLY = Redactor()  # where no configured secret is known: Sentinel API keys still go
