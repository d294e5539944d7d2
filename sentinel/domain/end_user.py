"""The pseudonym a provider knows a caller by: stable, opaque, and never the caller's id or email.

A provider's abuse monitoring keys on an end-user id (`sentinel.native.end_user` puts it in every
body sent upstream). It is derived from the authenticated `Identity.external_id` alone, so the same
user has the same pseudonym on every request, replica and restart, and two users have different ones:

- with a secret (`SENTINEL_END_USER_SECRET`): `HMAC-SHA256(secret, "sentinel-end-user:v1:" + id)`,
  its first 32 hex digits (128 bits). Without the secret nobody, the provider included, can tell
  whose pseudonym it is, nor compute a given user's;
- without one: `SHA-256("sentinel-end-user:v1:" + id)`, the same length. It does not show the id,
  but whoever guesses an id (an email, a sequential number) can check the guess against it.

A pseudonym is computed once per user id and remembered (the last `CACHED` ids): the request path
pays a dictionary lookup.
"""

from __future__ import annotations

import functools
import hashlib
import hmac

PREFIX = b"sentinel-end-user:v1:"
LENGTH = 32  # hex digits: 128 bits; OpenAI takes up to 64 characters, Anthropic 256
CACHED = 16_384


class EndUsers:
    """Pseudonyms of callers (see the module docstring); `secret` None: the keyless form."""

    def __init__(self, secret: bytes | None, *, cached: int = CACHED) -> None:
        self.keyed = bool(secret)
        self.of = functools.lru_cache(maxsize=cached)(functools.partial(_pseudonym, secret or None))


def _pseudonym(secret: bytes | None, external_id: str) -> str:
    """The pseudonym of the user `external_id` (see the module docstring)."""
    message = PREFIX + external_id.encode("utf-8", "surrogatepass")
    digest = hmac.digest(secret, message, "sha256") if secret else hashlib.sha256(message).digest()
    return digest.hex()[:LENGTH]
