"""Who is calling: the identity every authenticated request carries, whatever its source."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller.

    `external_id` is the stable user id quotas, sessions and usage are keyed by; `email` is what
    Zion's usage endpoints are keyed by; `source` says which identity source vouched for it.
    """

    external_id: str
    user_id: str
    email: str | None = None
    source: str = "api_key"
    key_id: str | None = None
    plan: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Identity:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})  # type: ignore[arg-type]


class IdentitySource(Protocol):
    """Turns a bearer token into an Identity.

    Returns None when the token is not valid for this source (-> 401); raises
    `GovernanceUnavailable` when the source cannot be asked (-> 503 unless cached).
    """

    name: str

    async def authenticate(self, token: str) -> Identity | None: ...
