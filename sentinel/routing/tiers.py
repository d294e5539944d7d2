"""Tier sources that need nothing but the table itself (the built-in catalog's defaults or the
providers file). The database-backed source is `sentinel.governance.tier_store.DbTiers`, the
Zion-backed one `sentinel.governance.zion_sources.ZionTiers`; the types are `sentinel.domain.tiers`.
"""

from __future__ import annotations

from sentinel.domain.tiers import TierTable


class StaticTiers:
    """A fixed table (the built-in catalog: defaults or the providers file)."""

    def __init__(self, table: TierTable) -> None:
        self._table = table

    async def table(self) -> TierTable:
        return self._table
