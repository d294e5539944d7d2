"""Who is calling: the identity every authenticated request carries, whatever its source."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sentinel.domain.text import has_control, is_text
from sentinel.native._wire import is_finite_number

# What the ledger stores of a caller: the `external_id` (VARCHAR(255)) and `email` (VARCHAR(320))
# columns; PostgreSQL takes no NUL character in text.
MAX_EXTERNAL_ID = 255
MAX_EMAIL = 320


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller.

    `external_id` is the stable user id quotas, sessions and usage are keyed by; `email` is what
    Zion's usage endpoints are keyed by; `source` says which identity source vouched for it.
    `expires_at` (unix seconds) is when the credential itself stops being valid (a JWT's `exp`, an
    API key's expiry), None for credentials without one: no cache may serve it past that moment.
    """

    external_id: str
    user_id: str
    email: str | None = None
    source: str = "api_key"
    key_id: str | None = None
    plan: str | None = None
    expires_at: float | None = None

    def unrecordable(self) -> str | None:
        """Why a usage record of this caller could not be stored, or None. A source may vouch for
        any string (a JWT's claims, Zion's answer); one the ledger refuses would lose the record of
        a request already served and block the records stored with it."""
        if len(self.external_id) > MAX_EXTERNAL_ID:
            return f"its user id is longer than {MAX_EXTERNAL_ID} characters"
        if self.email is not None and len(self.email) > MAX_EMAIL:
            return f"its email is longer than {MAX_EMAIL} characters"
        if "\x00" in self.external_id or (self.email is not None and "\x00" in self.email):
            return "its user id or email contains a NUL character"
        # What the operator surfaces refuse in every id and email they are given (ESC, a bidi
        # override, a zero-width space: see `sentinel.domain.text`): a user named so would read as
        # another on the console, rewrite an operator's terminal, and could be put on no plan.
        # Blank (whitespace only): refused by the operator surfaces too, so no plan could be set for it.
        if not self.external_id.strip():
            return "its user id is blank"
        if has_control(self.external_id):
            return "its user id contains a control or invisible formatting character"
        if self.email is not None and has_control(self.email):
            return "its email contains a control or invisible formatting character"
        return None

    def unstorable(self) -> str | None:
        """`unrecordable()`, or why this identity cannot be stored at all (cached, recorded): text
        that is not valid Unicode (a JSON claim may hold a lone surrogate). Checked once, where an
        identity comes from its source; a stored one was storable."""
        texts = (self.external_id, self.user_id, self.email, self.source, self.key_id, self.plan)
        if not all(is_text(text) for text in texts if isinstance(text, str)):
            return "a claim is not valid Unicode text (a lone surrogate): it cannot be stored"
        return self.unrecordable()

    def to_json(self) -> dict[str, Any]:
        """A plain dict (JSON-serialisable)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Identity:
        """The inverse of `to_json`; raises ValueError when `data` is not an identity."""
        if not isinstance(data, dict):
            raise ValueError("an identity must be a JSON object")
        external_id, user_id = data.get("external_id"), data.get("user_id")
        if not isinstance(external_id, str) or not external_id or not isinstance(user_id, str):
            raise ValueError("an identity needs string external_id and user_id")
        expires_at = data.get("expires_at")
        if expires_at is not None and not isinstance(expires_at, int | float):
            raise ValueError("expires_at must be a number")
        return cls(
            external_id=external_id,
            user_id=user_id,
            email=_opt_str(data.get("email")),
            source=_opt_str(data.get("source")) or "api_key",
            key_id=_opt_str(data.get("key_id")),
            plan=_opt_str(data.get("plan")),
            expires_at=None if expires_at is None else float(expires_at),
        )


def external_id_of(value: object) -> str | None:
    """A profile's `externalId` (Zion's answer, or a JWT claim standing in for it) as the id a user is
    keyed by: a non-empty string as it is, a number as its text; None for anything else (null, "",
    0, a boolean, a NaN or an infinity: a JWT's JSON may hold `NaN`, which was the id "nan", another
    user's if one is so named), where the profile's own id is the key."""
    if isinstance(value, str):
        return value or None
    if is_finite_number(value) and value:
        return str(value)
    return None


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
