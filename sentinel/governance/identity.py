"""Identity sources: what turns a bearer token into an `Identity` (the type is `sentinel.domain.identity`)."""

from __future__ import annotations

from typing import Any, Protocol

from sentinel.domain.identity import Identity
from sentinel.errors import AuthenticationError, GovernanceUnavailable


class IdentitySource(Protocol):
    """Turns a bearer token into an Identity.

    Returns None when the token is not valid for this source (-> 401); raises
    `GovernanceUnavailable` when the source cannot be asked (-> 503 unless cached), or `StandIn`
    when it cannot be asked but the token names its identity itself, or `Refused` when the source
    that vouches for identities refused a token that names its identity itself (-> 401), or
    `Expired` for a token it knows that has expired for good (an API key: -> 401 `token_expired`,
    remembered as long as an identity would be, and said again at each use), or `NotYetValid` for a
    validly signed token whose `nbf` is still ahead (-> 401, not remembered).
    """

    name: str

    async def authenticate(self, token: str) -> Identity | None:
        """The token's identity, None when invalid; GovernanceUnavailable when the source is down."""
        ...


class StandIn(GovernanceUnavailable):
    """The source that vouches for identities could not be asked (an outage, and a 503 to whoever
    does not know better), but the token names its identity itself: a locally verified JWT's claims.
    `identity` may be served while the outage lasts; it is not the source's answer, so it is never
    cached as one (fresh): the first lookup once the source answers again asks it."""

    def __init__(self, message: str, identity: Identity, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.identity = identity


class Refused(Exception):  # noqa: N818 - a verdict, like StandIn, not an error of Sentinel's
    """The source that vouches for identities refused a token that names its identity itself (Zion
    refused a locally verified JWT: a deactivated or deleted user). No identity (401), and no
    `StandIn` may be served for this token during a later outage, until `expires_at` (unix seconds,
    the token's own expiry): the source's verdict is known, an outage does not undo it."""

    def __init__(self, expires_at: float) -> None:
        super().__init__("the identity source refused the token")
        self.expires_at = expires_at


class Expired(AuthenticationError):
    """A credential the source knows, past its expiry for good (an API key's cannot be extended):
    401 `token_expired`. Its refusal is cached (with its reason) like any refusal, so each later
    use is refused with `token_expired` again without asking the source."""

    code = "token_expired"

    def __init__(self, message: str = "This API key has expired", **kw: Any) -> None:
        super().__init__(message, **kw)


class NotYetValid(AuthenticationError):
    """A validly signed JWT whose `nbf` is still ahead of Sentinel's clock (beyond the leeway): 401,
    and not remembered as refused — it becomes valid at its `nbf`, and the 30 s refusal cache kept
    refusing it past that. Only the token's signer can make one (the signature is checked first),
    and each use is a failed authentication for the throttle, so not caching it costs one local
    check per use, never a JWKS fetch or an identity-source lookup."""

    def __init__(self, message: str = "The token is not yet valid (nbf)", **kw: Any) -> None:
        super().__init__(message, **kw)
