"""The built-in tier table, edited with `sentinel tiers set` and read by `DbTiers`.

A tier with rows in `tier_models` uses them; a tier without rows falls back to the catalog's table
(the providers file or the defaults). Each replica re-reads the table every
TIER_CONFIG_TTL_SECONDS; when the database is down the last table read stays in use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pydantic import ValidationError
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sentinel.db.engine import database_errors
from sentinel.db.models import AuditLogRow, TierModelRow
from sentinel.domain.catalogue import stored_price
from sentinel.domain.numbers import parse_decimal, parse_whole
from sentinel.domain.text import has_control
from sentinel.domain.tiers import TIERS, TierModelEntry, TierTable
from sentinel.errors import GovernanceUnavailable

log = logging.getLogger("sentinel.tiers")


def parse_entry(text: str) -> TierModelEntry:
    """`provider/model:cost[:input_price:output_price]`, e.g. `openai/gpt-4o-mini:1:0.15:0.6`: the
    cost in ASCII digits, the prices as decimals (`parse_decimal`); ValueError naming the field that
    is not, pydantic's ValidationError for a value out of range."""
    head, *numbers = text.split(":")
    provider, sep, model = head.partition("/")
    if not sep or not provider or not model or len(numbers) not in (1, 3):
        raise ValueError(f"invalid tier entry {text!r}: expected provider/model:cost[:input_price:output_price]")
    if has_control(provider):  # stored, `tiers show` and the console's table showed it raw
        raise ValueError(f"invalid tier entry {text!r}: no control characters in the provider")
    cost = parse_whole(numbers[0])
    if cost is None:
        raise ValueError("relative_cost: a whole number in the digits 0-9")
    prices: list[float] = []
    for field, number in zip(("input_price_per_million", "output_price_per_million"), numbers[1:], strict=False):
        price = parse_decimal(number)
        if price is None:
            raise ValueError(f"{field}: a number such as 0.15 or 1e-3 (the digits 0-9, one '.', an exponent)")
        prices.append(price)
    prices = prices or [0.0, 0.0]
    return TierModelEntry(
        provider=provider, model=model, relative_cost=cost,
        input_price_per_million=prices[0], output_price_per_million=prices[1],
    )


Replaced = dict[str, list[str]]  # a tier's rows as `entry_text` writes them, by tier


def entry_text(provider: str, model: str, cost: int, input_price: float, output_price: float) -> str:
    """A candidate as `parse_entry` reads it back, prices included (`provider/model:cost:in:out`): what
    the audit log records of a tier edit, where a change of prices alone must show."""
    return f"{provider}/{model}:{cost}:{float(input_price)!r}:{float(output_price)!r}"


async def _delete(session: AsyncSession, tier: str | None) -> Replaced:
    """Delete `tier`'s rows (None: every tier's) and return them (`RETURNING`: exactly the rows this
    transaction replaced, however another edit of the tier raced it)."""
    query = delete(TierModelRow)
    if tier is not None:
        query = query.where(TierModelRow.tier == tier)
    columns = (TierModelRow.tier, TierModelRow.position, TierModelRow.provider, TierModelRow.model,
               TierModelRow.relative_cost, TierModelRow.input_price_per_million, TierModelRow.output_price_per_million)
    rows = sorted((await session.execute(query.returning(*columns))).all(), key=lambda row: (row[0], row[1]))
    out: Replaced = {}
    for name, _, provider, model, cost, input_price, output_price in rows:
        out.setdefault(name, []).append(
            entry_text(provider, model, cost, stored_price(input_price), stored_price(output_price))
        )
    return out


class TierRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def set_tier(
        self, tier: str, entries: list[TierModelEntry], audit: Callable[[Replaced], AuditLogRow] | None = None
    ) -> None:
        """Replace `tier`'s rows with `entries`; `audit`: the edit's audit entry, in its transaction,
        given the rows it replaced (`_delete`)."""
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {', '.join(TIERS)}")
        with database_errors("tier store unavailable"):
            async with self._sessions() as session:
                replaced = await _delete(session, tier)
                session.add_all(
                    TierModelRow(
                        tier=tier, position=i, provider=e.provider, model=e.model, relative_cost=e.relative_cost,
                        input_price_per_million=e.input_price_per_million,
                        output_price_per_million=e.output_price_per_million,
                    )
                    for i, e in enumerate(entries)
                )
                if audit is not None:
                    session.add(audit(replaced))
                await session.commit()

    async def clear(self, tier: str | None = None, audit: Callable[[Replaced], AuditLogRow] | None = None) -> None:
        """Drop `tier`'s rows (None: every tier's); `audit`: the reset's audit entry, in its transaction,
        given the rows dropped."""
        with database_errors("tier store unavailable"):
            async with self._sessions() as session:
                dropped = await _delete(session, tier)
                if audit is not None:
                    session.add(audit(dropped))
                await session.commit()

    async def table(self) -> TierTable:
        with database_errors("tier store unavailable"):
            async with self._sessions() as session:
                rows = (await session.execute(select(TierModelRow).order_by(TierModelRow.tier, TierModelRow.position))).scalars()
                out: TierTable = {}
                for row in rows:
                    try:
                        entry = TierModelEntry(
                            provider=row.provider, model=row.model, relative_cost=row.relative_cost,
                            input_price_per_million=stored_price(row.input_price_per_million),
                            output_price_per_million=stored_price(row.output_price_per_million),
                        )
                    except ValidationError:
                        # Written before its rule (a model name outside UPSTREAM_MODEL_PATTERN): it
                        # could never be served (its answers were 500s), and refusing it would make
                        # the whole table unreadable. Left out, as if deleted.
                        log.warning("ignoring a tier_models row the tier table no longer accepts",
                                    extra={"tier": row.tier, "position": row.position})
                        continue
                    out.setdefault(row.tier, []).append(entry)
        return out


class DbTiers:
    """TierSource: the database's tiers over the catalog's, re-read every `ttl` seconds."""

    def __init__(
        self, repo: TierRepository, fallback: TierTable, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.repo = repo
        self.fallback = fallback
        self.ttl = ttl
        self.clock = clock
        self._cached: TierTable | None = None
        self._until = 0.0

    async def table(self) -> TierTable:
        if self._cached is not None and self.clock() < self._until:
            return self._cached
        try:
            stored = await self.repo.table()
        except GovernanceUnavailable as exc:
            if self._cached is not None:
                log.warning("tier store unavailable; using the last table", extra={"error": exc.message})
                self._until = self.clock() + min(self.ttl, 30)
                return self._cached
            stored = {}
        self._cached = {tier: stored.get(tier) or list(self.fallback.get(tier, [])) for tier in TIERS}
        self._until = self.clock() + self.ttl
        return self._cached

    def invalidate(self) -> None:
        """Re-read the table at the next lookup (after an edit in this process)."""
        self._until = 0.0
