"""Identity sources: what turns a bearer token into an `Identity` (the type is `sentinel.domain.identity`)."""

from __future__ import annotations

from typing import Protocol

from sentinel.domain.identity import Identity


class IdentitySource(Protocol):
    """Turns a bearer token into an Identity.

    Returns None when the token is not valid for this source (-> 401); raises
    `GovernanceUnavailable` when the source cannot be asked (-> 503 unless cached).
    """

    name: str

    async def authenticate(self, token: str) -> Identity | None:
        """The token's identity, None when invalid; GovernanceUnavailable when the source is down."""
        ...
