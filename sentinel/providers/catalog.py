"""Which upstream providers exist, their well-known models, and the tier table (built by `sentinel.wiring`).

Built-in providers: `openai` (OPENAI_API_URL/KEY, any OpenAI-compatible base URL) and `anthropic`
(ANTHROPIC_API_URL/KEY); more named providers come from the SENTINEL_CONFIG YAML file, where an
entry of a built-in's name replaces it on every surface (one name, one upstream). When no
tier table is configured, every configured provider contributes its cheap model to `simple` and
its mid model to `moderate` and `complex` (see DEFAULT_MODELS). When the file lists no `models:`,
the model catalogue of the `/v1` surfaces is each built-in provider's WELL_KNOWN_MODELS.
"""

from __future__ import annotations

from dataclasses import dataclass

from sentinel.domain.catalogue import CatalogueModel
from sentinel.domain.tiers import TierModelEntry, TierTable

# (provider, model, created, input and output USD per million tokens, the most output tokens one
# answer may have — its provider's documented maximum, None for an embedding model). Anthropic's
# prompt cache costs 1.25x the input price to write and 0.1x to read (their published multipliers).
_ROWS: tuple[tuple[str, str, int, float, float, int | None], ...] = (
    ("openai", "gpt-4o", 1706745600, 2.50, 10.00, 16_384),
    ("openai", "gpt-4o-mini", 1706745600, 0.15, 0.60, 16_384),
    ("openai", "gpt-4-turbo", 1706745600, 10.00, 30.00, 4_096),
    ("openai", "gpt-4", 1687882411, 30.00, 60.00, 8_192),
    ("openai", "gpt-3.5-turbo", 1677610602, 0.50, 1.50, 4_096),
    ("openai", "gpt-3.5-turbo-instruct", 1692901427, 1.50, 2.00, 4_096),
    ("openai", "text-embedding-3-small", 1705948997, 0.02, 0.0, None),
    ("openai", "text-embedding-3-large", 1705953180, 0.13, 0.0, None),
    ("openai", "text-embedding-ada-002", 1671217299, 0.10, 0.0, None),
    ("anthropic", "claude-sonnet-4-20250514", 1747872000, 3.00, 15.00, 64_000),
    ("anthropic", "claude-3-5-sonnet-20241022", 1729555200, 3.00, 15.00, 8_192),
    ("anthropic", "claude-3-5-haiku-20241022", 1729555200, 0.80, 4.00, 8_192),
    ("anthropic", "claude-3-opus-20240229", 1709164800, 15.00, 75.00, 4_096),
)
ANTHROPIC_CACHE_WRITE = 1.25
ANTHROPIC_CACHE_READ = 0.10


def _model(
    provider: str, name: str, created: int, price_in: float, price_out: float, most: int | None
) -> CatalogueModel:
    cached = provider == "anthropic"
    return CatalogueModel(
        name=name, provider=provider, created=created, max_output_tokens=most,
        input_price_per_million=price_in, output_price_per_million=price_out,
        cache_write_price_per_million=round(price_in * ANTHROPIC_CACHE_WRITE, 6) if cached else None,
        cache_read_price_per_million=round(price_in * ANTHROPIC_CACHE_READ, 6) if cached else None,
    )


WELL_KNOWN_MODELS: dict[str, tuple[CatalogueModel, ...]] = {
    provider: tuple(_model(*row) for row in _ROWS if row[0] == provider) for provider in ("openai", "anthropic")
}


def _tier_entry(provider: str, name: str, relative_cost: int) -> TierModelEntry:
    model = next(m for m in WELL_KNOWN_MODELS[provider] if m.name == name)
    return TierModelEntry(
        provider=provider, model=name, relative_cost=relative_cost,
        input_price_per_million=model.input_price_per_million,
        output_price_per_million=model.output_price_per_million,
    )


# (cheap model, mid model) per built-in provider, for the default tier table.
DEFAULT_MODELS: dict[str, tuple[TierModelEntry, TierModelEntry]] = {
    "openai": (_tier_entry("openai", "gpt-4o-mini", 1), _tier_entry("openai", "gpt-4o", 5)),
    "anthropic": (
        _tier_entry("anthropic", "claude-3-5-haiku-20241022", 2),
        _tier_entry("anthropic", "claude-sonnet-4-20250514", 6),
    ),
}


@dataclass(frozen=True)
class ProviderSpec:
    """A configured upstream. `kind` is its wire format: `openai` or `anthropic`; `end_user_field`
    the field an OpenAI-format one is told the end user in, when the operator chose it
    (`sentinel.native.end_user`)."""

    name: str
    kind: str
    base_url: str
    api_key: str | None
    end_user_field: str | None = None


@dataclass(frozen=True)
class Catalog:
    """The configured providers by name and the tier table they serve."""

    providers: dict[str, ProviderSpec]
    tiers: TierTable
