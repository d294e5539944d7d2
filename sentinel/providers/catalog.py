"""Which upstream providers exist and the tier table (built from the settings by `sentinel.wiring`).

Built-in providers: `openai` (OPENAI_API_URL/KEY, any OpenAI-compatible base URL) and `anthropic`
(ANTHROPIC_API_URL/KEY); more named providers come from the SENTINEL_CONFIG YAML file. When no
tier table is configured, every configured provider contributes its cheap model to `simple` and
its mid model to `moderate` and `complex` (see DEFAULT_MODELS).
"""

from __future__ import annotations

from dataclasses import dataclass

from sentinel.domain.tiers import TierModelEntry, TierTable

# (cheap model, cost, mid model, cost, input/output prices per million for each)
DEFAULT_MODELS: dict[str, tuple[TierModelEntry, TierModelEntry]] = {
    "openai": (
        TierModelEntry(provider="openai", model="gpt-4o-mini", relative_cost=1,
                       input_price_per_million=0.15, output_price_per_million=0.60),
        TierModelEntry(provider="openai", model="gpt-4o", relative_cost=5,
                       input_price_per_million=2.50, output_price_per_million=10.00),
    ),
    "anthropic": (
        TierModelEntry(provider="anthropic", model="claude-3-5-haiku-20241022", relative_cost=2,
                       input_price_per_million=0.80, output_price_per_million=4.00),
        TierModelEntry(provider="anthropic", model="claude-sonnet-4-20250514", relative_cost=6,
                       input_price_per_million=3.00, output_price_per_million=15.00),
    ),
}


@dataclass(frozen=True)
class ProviderSpec:
    """A configured upstream. `kind` is its wire format: `openai` or `anthropic`."""

    name: str
    kind: str
    base_url: str
    api_key: str | None


@dataclass(frozen=True)
class Catalog:
    """The configured providers by name and the tier table they serve."""

    providers: dict[str, ProviderSpec]
    tiers: TierTable
