"""Built-in API keys: issue, authenticate, list and revoke `sk-sentinel-...` keys.

Only the SHA-256 of a key is stored (plus a short display prefix); a presented token is looked up
by its hash, so the plaintext exists only in the caller's hands and in the one `create_key` answer.
A 240-bit random key makes a fast unsalted hash safe here: there is nothing to brute-force.

A key may be issued with an expiry (`expires_at`, at most MAX_KEY_LIFETIME ahead): from that moment,
read on the service's clock, it is refused with 401 `token_expired`; the identity it authenticates
carries the moment (`Identity.expires_at`), so no cache serves it past it.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.db.engine import database_errors
from sentinel.db.models import ApiKey, AuditLogRow, User, utcnow
from sentinel.db.queries import ensure_user, ensure_user_email
from sentinel.domain.identity import Identity
from sentinel.errors import InvalidRequest
from sentinel.governance.identity import Expired
from sentinel.observability.logging import Repeated
from sentinel.observability.redaction import is_key_body

log = logging.getLogger(__name__)

KEY_PREFIX = "sk-sentinel-"
KEY_RANDOM_CHARS = 40
# The fixed "sk-sentinel-" is itself 12 characters, so show 8 random ones after it to tell keys apart.
DISPLAY_PREFIX_CHARS = len(KEY_PREFIX) + 8
LAST_USED_RESOLUTION = timedelta(minutes=1)
# The longest lifetime a key may be given (an expiry further ahead is refused as a mistake: `30000d`).
MAX_KEY_LIFETIME = timedelta(days=3660)
_MAX_TOKEN_CHARS = 256
# Said where a key id (`key_...`) was expected and the key itself was given; the key is never repeated
# (an error ends up in scrollback, CI logs, tickets and an admin client's logs).
PASTED_KEY = (
    f"that is an API key, not a key id (key_...): the key list shows each key's id beside its first "
    f"characters ({KEY_PREFIX}...); the key is not repeated here"
)


def generate_key() -> str:
    """A new plaintext key: `sk-sentinel-` followed by 40 URL-safe random characters (240 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_CHARS * 3 // 4)


def is_api_key(value: str) -> bool:
    """Whether `value`, given where a key id goes, is an API key itself (pasted for its id): the CLI,
    the admin API and the console refuse it without quoting it back (`PASTED_KEY`). Its body alone
    (the public prefix dropped: `is_key_body`) is the key too; a key id (`key_` and 12 hex digits)
    never has that shape."""
    value = value.strip()
    return value.startswith(KEY_PREFIX) or is_key_body(value)


def hash_key(token: str) -> str:
    """The lowercase hex SHA-256 of a key: what is stored and looked up."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """What may be shown about a key: never the key itself."""

    id: str
    external_id: str
    name: str | None
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    expires_at: datetime | None = None  # None: never (until revoked)

    def status(self, now: datetime) -> str:
        """`revoked`, `expired` (at `now`) or `active`."""
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at is not None and self.expires_at <= now else "active"


@dataclass(frozen=True, slots=True)
class Revocation:
    """A revoked key's hash, whether this revocation revoked it (False: it was revoked before) and
    when it was revoked (the database's column, as the key list shows it)."""

    token_hash: str
    new: bool
    revoked_at: datetime | None


_INFO_COLUMNS = (
    ApiKey.id,
    User.external_id,
    ApiKey.name,
    ApiKey.prefix,
    ApiKey.created_at,
    ApiKey.revoked_at,
    ApiKey.last_used_at,
    ApiKey.expires_at,
)


class KeyService:
    """API keys in the built-in SQL database; also an `IdentitySource` (name `api_key`).

    With `require_email` (GOVERNANCE=zion: usage is reported to Zion by email) a key is issued only
    to a user with an email, given now or stored before; otherwise `create_key` raises InvalidRequest.
    """

    name = "api_key"

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        clock: Callable[[], datetime] = utcnow,
        require_email: bool = False,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._repeated = Repeated(log)  # a database outage's line: once a minute, not once a request
        self.require_email = require_email

    async def ensure_user(self, external_id: str, email: str | None = None) -> str:
        """The user id for `external_id`, creating the user if missing."""
        with database_errors("user store unavailable"):
            async with self._sessions() as session:
                user_id = await ensure_user(session, external_id, email)
                await session.commit()
                return user_id

    async def create_key(
        self, external_id: str, name: str | None = None, email: str | None = None,
        expires_at: datetime | None = None,
        audit: Callable[[ApiKeyInfo, str | None], AuditLogRow] | None = None,
    ) -> tuple[ApiKeyInfo, str]:
        """Issue a key for `external_id` (created if missing); returns (info, plaintext shown once).
        A non-empty `email` different from the user's replaces it. `expires_at`: when it stops
        working (None: never; the operator surfaces check it first,
        `sentinel.services.admin_forms.key_expiry`). `audit`: the issue's audit entry, given the
        user's email before this call (None: none), written in its transaction (not written, no key
        is issued).

        InvalidRequest (nothing written) when `require_email` and the user has no email."""
        token = generate_key()
        row = ApiKey(
            id=f"key_{secrets.token_hex(6)}",
            name=name,
            prefix=token[:DISPLAY_PREFIX_CHARS],
            key_hash=hash_key(token),
            created_at=self._clock(),
            expires_at=expires_at,
        )
        with database_errors("API key store unavailable"):
            async with self._sessions() as session:
                row.user_id, email_before = await ensure_user_email(session, external_id, email)
                if self.require_email and not email and not email_before:
                    await session.rollback()
                    raise InvalidRequest(
                        f"user {external_id!r} has no email: with GOVERNANCE=zion usage is reported to "
                        "Zion by email, so a key needs one (add --email ADDRESS)",
                        code="usage_unreportable",
                    )
                session.add(row)
                info = ApiKeyInfo(row.id, external_id, name, row.prefix, row.created_at, None, None, expires_at)
                if audit is not None:
                    session.add(audit(info, email_before))
                await session.commit()
        return info, token

    async def authenticate(self, token: str) -> Identity | None:
        """The identity owning `token`, or None when the key is unknown, malformed or revoked;
        `Expired` (401 `token_expired`) when it has expired (its use is then not recorded). The
        identity of a key with an expiry carries it (`expires_at`): no cache serves it later."""
        if not token.startswith(KEY_PREFIX) or len(token) > _MAX_TOKEN_CHARS:
            return None
        query = (
            select(
                ApiKey.id,
                ApiKey.revoked_at,
                ApiKey.last_used_at,
                ApiKey.expires_at,
                User.id,
                User.external_id,
                User.email,
                User.plan_name,
            )
            .join(User, ApiKey.user_id == User.id)
            .where(ApiKey.key_hash == hash_key(token))
        )
        with database_errors("API key store unavailable"):
            async with self._sessions() as session:
                found = (await session.execute(query)).one_or_none()
                if found is None:
                    return None
                key_id, revoked_at, last_used_at, expires_at, user_id, external_id, email, plan = found
                if revoked_at is not None:
                    return None
                now = self._clock()
                if expires_at is not None and expires_at <= now:
                    raise Expired()
                if last_used_at is None or now - last_used_at >= LAST_USED_RESOLUTION:
                    await self._touch(session, key_id, now)
        return Identity(
            external_id=external_id, user_id=user_id, email=email, source=self.name, key_id=key_id, plan=plan,
            expires_at=None if expires_at is None else expires_at.timestamp(),
        )

    async def _touch(self, session: AsyncSession, key_id: str, now: datetime) -> None:
        """Record use at most once per LAST_USED_RESOLUTION, across processes; never fails auth."""
        stale = now - LAST_USED_RESOLUTION
        try:
            await session.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id)
                .where(or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= stale))
                .values(last_used_at=now)
            )
            await session.commit()
        except SQLAlchemyError as exc:  # a busy database must not turn a valid key into a 503
            self._repeated.warning("could not record last use of API key %s: %s", key_id, type(exc).__name__)

    async def list_keys(
        self, external_id: str | None = None, *, limit: int | None = None, offset: int = 0,
        newest_first: bool = False,
    ) -> list[ApiKeyInfo]:
        """Every key (revoked ones too), oldest first (`newest_first`: the other way); only
        `external_id`'s when given; a page of `limit` (None: all) from `offset` on. Oldest first, a key
        issued meanwhile comes last, so paging through by offset sees every key once."""
        query = select(*_INFO_COLUMNS).join(User, ApiKey.user_id == User.id)
        if external_id is not None:
            query = query.where(User.external_id == external_id)
        order = (ApiKey.created_at.desc(), ApiKey.id.desc()) if newest_first else (ApiKey.created_at, ApiKey.id)
        query = query.order_by(*order).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        with database_errors("API key store unavailable"):
            async with self._sessions() as session:
                rows = (await session.execute(query)).all()
        return [ApiKeyInfo(*row) for row in rows]

    async def key_hashes(self, external_id: str) -> list[str]:
        """The hashes (what caches are keyed by) of `external_id`'s keys not revoked."""
        query = (
            select(ApiKey.key_hash).join(User, ApiKey.user_id == User.id)
            .where(User.external_id == external_id, ApiKey.revoked_at.is_(None))
        )
        with database_errors("API key store unavailable"):
            async with self._sessions() as session:
                return list((await session.scalars(query)).all())

    async def get_key(self, key_id: str) -> ApiKeyInfo | None:
        """One key's information, or None when there is no such key."""
        query = select(*_INFO_COLUMNS).join(User, ApiKey.user_id == User.id).where(ApiKey.id == key_id)
        with database_errors("API key store unavailable"):
            async with self._sessions() as session:
                row = (await session.execute(query)).one_or_none()
        return None if row is None else ApiKeyInfo(*row)

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key for good; False when it is unknown or was already revoked."""
        revocation = await self.revoke_with_hash(key_id)
        return revocation is not None and revocation.new

    async def revoke_with_hash(
        self, key_id: str, audit: Callable[[], AuditLogRow] | None = None
    ) -> Revocation | None:
        """Revoke a key for good (a revoked key stays revoked): its hash (what caches are keyed by)
        and whether this call revoked it; None when there is no such key. `audit`: the revocation's
        audit entry, written in its transaction when this call revokes the key (not written, the
        key is not revoked)."""
        with database_errors("API key store unavailable"):
            async with self._sessions() as session:
                result = await session.execute(
                    update(ApiKey)
                    .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                    .values(revoked_at=self._clock())
                    .returning(ApiKey.key_hash, ApiKey.revoked_at)
                )
                found = result.one_or_none()
                earlier = None
                if found is None:
                    earlier = (await session.execute(
                        select(ApiKey.key_hash, ApiKey.revoked_at).where(ApiKey.id == key_id)
                    )).one_or_none()
                elif audit is not None:
                    session.add(audit())
                await session.commit()
        if found is not None:
            return Revocation(found[0], True, found[1])
        return None if earlier is None else Revocation(earlier[0], False, earlier[1])
