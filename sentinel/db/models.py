"""The built-in SQL schema, as SQLAlchemy 2 typed declarative models.

The schema itself is owned by the Alembic migrations in `sentinel/db/migrations/versions/`; these
models mirror it (a test compares the two) and are what the repositories query with.

    users ──< api_keys                 a user has many keys; only a key's SHA-256 is stored; a key may
                                       expire (`expires_at`, NULL: never)
    plans ──< plan_limits              (metric, window_seconds) -> limit, per plan
    users.plan_name                    names a plan, or NULL: the default plan; no foreign key (SQLite
                                       adds one only by copying `users`, see migration 0006), so
                                       deleting a plan clears its users' names itself
    usage_ledger                       one row per request, request_id unique (exactly-once)
    usage_outbox                       durable queue of usage rows waiting for a remote ledger
    usage_minutes / usage_hours        per-minute and per-hour rollups of the ledger (+ latency histograms)
    usage_hourly_users / _models       per-hour rollups by user and by model
    usage_daily_users / _models        per-day rollups by user and by model
    request_minutes / request_hours    every API answer by kind (refused and failed ones too)
    audit_log                          operator actions (plans, plan assignments, keys, tiers)
    unfinished_plan_changes            plan changes saved whose follow-up (counters seeded, cached plans
                                       dropped) is not done yet: written with the change, deleted once
                                       done, by its process or by a gateway (`services.plan_finisher`)
    applied_settings                   name -> value a start applied (`default_plan`: the DEFAULT_PLAN
                                       last seeded for, see `sentinel.services.startup_seed`)

The rollups are written in the ledger's own transaction, only for rows that were new, so they
hold exactly what the ledger holds (see `sentinel.governance.rollups`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    false,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from sentinel.domain.plans import METRICS
from sentinel.domain.tiers import TIERS
from sentinel.domain.usage import MAX_REQUEST_ID, USAGE_SOURCES


def _one_of(column: str, values: tuple[str, ...]) -> str:
    """`column IN ('a', 'b')`: a CHECK over the names the domain spells once."""
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (what every timestamp column holds)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """`TIMESTAMP WITH TIME ZONE` that always binds UTC and always returns aware UTC datetimes.

    SQLite has no time zone type: without this, values would come back naive there and aware on
    PostgreSQL. Naive values passed in are taken to be UTC already.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _created_at() -> Mapped[datetime]:
    return mapped_column(UTCDateTime(), nullable=False, default=utcnow, server_default=func.now())


# Deterministic constraint names, identical on SQLite and PostgreSQL (the migrations spell them out).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every Sentinel table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: dict[Any, Any] = {datetime: UTCDateTime()}


class User(Base):
    """A caller known to the built-in governance: keys, a plan and usage hang off `external_id`."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    external_id: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    email: Mapped[str | None] = mapped_column(String(320))
    plan_name: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = _created_at()


class ApiKey(Base):
    """An API key; the plaintext is never stored, only its SHA-256 and a display prefix."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str | None] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(32), nullable=False)
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True, index=True)
    created_at: Mapped[datetime] = _created_at()
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # When the key stops working (migration 0007); NULL: never, until it is revoked.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class PlanRow(Base):
    """A named plan; its limits are rows of `plan_limits`."""

    __tablename__ = "plans"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _created_at()


class PlanLimitRow(Base):
    """One limit of a plan: at most `limit` of `metric` per `window_seconds`."""

    __tablename__ = "plan_limits"
    __table_args__ = (
        CheckConstraint(_one_of("metric", METRICS), name="metric"),
        CheckConstraint("window_seconds > 0", name="window"),
        CheckConstraint('"limit" >= 0', name="limit"),
    )

    plan_name: Mapped[str] = mapped_column(
        String(100), ForeignKey("plans.name", ondelete="CASCADE"), primary_key=True
    )
    metric: Mapped[str] = mapped_column(String(32), primary_key=True)
    window_seconds: Mapped[int] = mapped_column(Integer, primary_key=True)
    limit: Mapped[int] = mapped_column("limit", BigInteger, nullable=False)


class AppliedSettingRow(Base):
    """A setting as the last start applied it (migration 0009): `default_plan`, the DEFAULT_PLAN the
    gateway last seeded for, so a start under another one learns which of its windows are new."""

    __tablename__ = "applied_settings"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)
    updated_at: Mapped[datetime] = _created_at()


class UsageLedgerRow(Base):
    """One finished request's usage. `request_id` is unique: recording twice is a no-op."""

    __tablename__ = "usage_ledger"
    __table_args__ = (
        CheckConstraint(_one_of("usage_source", USAGE_SOURCES), name="usage_source"),
        Index("ix_usage_ledger_external_id_finished_at", "external_id", "finished_at"),
        Index("ix_usage_ledger_finished_at", "finished_at"),
        Index(
            "ix_usage_ledger_pending_rollup", "id",
            postgresql_where=text("NOT rolled_up"), sqlite_where=text("NOT rolled_up"),
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(MAX_REQUEST_ID), nullable=False, unique=True)
    external_id: Mapped[str] = mapped_column(String(255), nullable=False)
    email: Mapped[str | None] = mapped_column(String(320))
    model: Mapped[str | None] = mapped_column(String(200))
    provider: Mapped[str | None] = mapped_column(String(100))
    endpoint: Mapped[str] = mapped_column(String(200), nullable=False)
    input_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    usage_source: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[int] = mapped_column(Integer, nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    # Of `input_tokens`: written to / read from the provider's prompt cache (migration 0004).
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0, server_default=text("0"))
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0, server_default=text("0"))
    # Not yet added to the rollups (migration 0006): the rollup worker takes these in id order.
    rolled_up: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=false())


class UsageOutboxRow(Base):
    """A usage record waiting to be delivered to a remote ledger (JSON `payload`).

    `batch_key` names the delivery batch the row belongs to once claimed (NULL while waiting);
    `next_attempt_at` is the end of that batch's lease, or when a refused row may be batched again.
    """

    __tablename__ = "usage_outbox"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(MAX_REQUEST_ID), nullable=False, unique=True)
    payload: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _created_at()
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default=text("0"))
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    batch_key: Mapped[str | None] = mapped_column(String(64), index=True)


class TierModelRow(Base):
    """One candidate of a tier, in order (`sentinel tiers set`)."""

    __tablename__ = "tier_models"
    __table_args__ = (
        CheckConstraint(_one_of("tier", TIERS), name="tier"),
        CheckConstraint("relative_cost BETWEEN 1 AND 10", name="relative_cost"),
    )

    tier: Mapped[str] = mapped_column(String(16), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(40), nullable=False)
    model: Mapped[str] = mapped_column(String(200), nullable=False)
    relative_cost: Mapped[int] = mapped_column(Integer, nullable=False)
    input_price_per_million: Mapped[float] = mapped_column(Float, nullable=False, server_default=text("0"))
    output_price_per_million: Mapped[float] = mapped_column(Float, nullable=False, server_default=text("0"))


# Upper bounds (ms) of the rollups' latency histogram; the last bucket is everything slower.
LATENCY_BOUNDS_MS: tuple[int, ...] = (
    5, 10, 25, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500, 10000, 20000, 30000, 60000,
)
LATENCY_COLUMNS: tuple[str, ...] = tuple(f"lat_{i:02d}" for i in range(len(LATENCY_BOUNDS_MS) + 1))


def _count() -> Mapped[int]:
    return mapped_column(BigInteger, nullable=False, default=0, server_default=text("0"))


def _cost() -> Mapped[float]:
    return mapped_column(Float, nullable=False, default=0.0, server_default=text("0"))


class _Measures:
    """What every rollup row sums: requests, errors (status >= 400), tokens and cost."""

    requests: Mapped[int] = _count()
    errors: Mapped[int] = _count()
    input_tokens: Mapped[int] = _count()
    output_tokens: Mapped[int] = _count()
    cost_usd: Mapped[float] = _cost()


class _Latencies:
    """Request durations as a histogram: `lat_NN` counts requests that took at most
    LATENCY_BOUNDS_MS[NN] ms (the last one: longer); `latency_ms_sum` is their total."""

    latency_ms_sum: Mapped[int] = _count()
    lat_00: Mapped[int] = _count()
    lat_01: Mapped[int] = _count()
    lat_02: Mapped[int] = _count()
    lat_03: Mapped[int] = _count()
    lat_04: Mapped[int] = _count()
    lat_05: Mapped[int] = _count()
    lat_06: Mapped[int] = _count()
    lat_07: Mapped[int] = _count()
    lat_08: Mapped[int] = _count()
    lat_09: Mapped[int] = _count()
    lat_10: Mapped[int] = _count()
    lat_11: Mapped[int] = _count()
    lat_12: Mapped[int] = _count()
    lat_13: Mapped[int] = _count()
    lat_14: Mapped[int] = _count()
    lat_15: Mapped[int] = _count()
    lat_16: Mapped[int] = _count()
    lat_17: Mapped[int] = _count()
    lat_18: Mapped[int] = _count()
    lat_19: Mapped[int] = _count()


class UsageMinuteRow(_Measures, _Latencies, Base):
    """The ledger per minute (`minute` = unix seconds // 60)."""

    __tablename__ = "usage_minutes"

    minute: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)


class UsageHourRow(_Measures, _Latencies, Base):
    """The ledger per hour (`hour` = unix seconds // 3600)."""

    __tablename__ = "usage_hours"

    hour: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)


class UsageHourlyUserRow(_Measures, Base):
    """The ledger per hour and user."""

    __tablename__ = "usage_hourly_users"

    hour: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    external_id: Mapped[str] = mapped_column(String(255), primary_key=True)


class UsageHourlyModelRow(_Measures, Base):
    """The ledger per hour and model ('' for requests without a model or provider)."""

    __tablename__ = "usage_hourly_models"

    hour: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    provider: Mapped[str] = mapped_column(String(100), primary_key=True)


class UsageDailyUserRow(_Measures, Base):
    """The ledger per UTC day (`day` = unix seconds // 86400) and user."""

    __tablename__ = "usage_daily_users"
    __table_args__ = (Index("ix_usage_daily_users_external_id_day", "external_id", "day"),)

    day: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    external_id: Mapped[str] = mapped_column(String(255), primary_key=True)


class UsageDailyModelRow(_Measures, Base):
    """The ledger per UTC day and model ('' for requests without a model or provider)."""

    __tablename__ = "usage_daily_models"

    day: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    provider: Mapped[str] = mapped_column(String(100), primary_key=True)


class _Answers:
    """API answers (every `/v1` and `/native/v1` request, served or not) by kind."""

    requests: Mapped[int] = _count()
    client_errors: Mapped[int] = _count()
    rate_limited: Mapped[int] = _count()
    server_errors: Mapped[int] = _count()


class RequestMinuteRow(_Answers, Base):
    """API answers per minute, counted by every process (`sentinel.observability.outcomes`)."""

    __tablename__ = "request_minutes"

    minute: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)


class RequestHourRow(_Answers, Base):
    """API answers per hour."""

    __tablename__ = "request_hours"

    hour: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)


class AuditLogRow(Base):
    """One operator action: who (`actor`: `admin` for the console/API, `cli`), what, on what."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    actor: Mapped[str] = mapped_column(String(64), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    target: Mapped[str] = mapped_column(String(255), nullable=False)
    details: Mapped[str | None] = mapped_column(Text)
    address: Mapped[str | None] = mapped_column(String(64))


class UnfinishedPlanChangeRow(Base):
    """A plan change saved in the database whose follow-up is not done yet (migration 0008), written in
    the change's transaction: its users' cached plans still to drop, its new windows' counters still
    to seed. `users`: a JSON list of external ids; `plan_before`/`plan_after`: the plans' limits
    (`Plan.spec`) — `plan_before` NULL: every window of the plan after is seeded; `plan_after` is
    never NULL but in rows the first version of 0008's code wrote, which are not read."""

    __tablename__ = "unfinished_plan_changes"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = _created_at()
    users: Mapped[str] = mapped_column(Text, nullable=False)
    plan_before: Mapped[str | None] = mapped_column(Text)
    plan_after: Mapped[str | None] = mapped_column(Text)
