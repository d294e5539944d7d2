"""Tiers: the names a native client picks from, and the tier table's candidates.

The tier names are spelled once, in `sentinel.native.types.Tier` (the native request type); every
other part of Sentinel takes them from here.
"""

from __future__ import annotations

from typing import Protocol, get_args

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from sentinel.domain.catalogue import Price, Prices, ProviderName, UpstreamModelName
from sentinel.native.types import Tier

__all__ = ["TIERS", "TIER_ORDER", "Tier", "TierModelEntry", "TierSource", "TierTable", "is_tier"]

TIERS: tuple[Tier, ...] = get_args(Tier)
TIER_ORDER: dict[str, int] = {tier: rank for rank, tier in enumerate(TIERS)}


class TierModelEntry(BaseModel):
    """One candidate of a tier (field names as in Zion's tier config, snake_case here)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    provider: ProviderName  # the tier table's columns (VARCHAR(40), VARCHAR(200))
    model: UpstreamModelName
    relative_cost: int = Field(1, ge=0, le=255, validation_alias=AliasChoices("relative_cost", "relativeCost"))
    input_price_per_million: Price = Field(
        0.0, validation_alias=AliasChoices("input_price_per_million", "inputPricePerMillion")
    )
    output_price_per_million: Price = Field(
        0.0, validation_alias=AliasChoices("output_price_per_million", "outputPricePerMillion")
    )

    @property
    def prices(self) -> Prices:
        """USD per million input and output tokens (cache writes and reads at the input price)."""
        return Prices(self.input_price_per_million, self.output_price_per_million)


TierTable = dict[str, list[TierModelEntry]]


class TierSource(Protocol):
    """Where the tier table comes from (static, the database, Zion)."""

    async def table(self) -> TierTable:
        """The table in force now; raises ServiceUnavailable when there is none at all."""
        ...


def is_tier(name: str) -> bool:
    """Whether `name` is one of the tier names."""
    return name in TIER_ORDER
