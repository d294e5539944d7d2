"""Which upstream providers exist and the tier table, from Settings (and the providers file).

Built-in providers: `openai` (OPENAI_API_URL/KEY, any OpenAI-compatible base URL) and `anthropic`
(ANTHROPIC_API_URL/KEY); more named providers come from the SENTINEL_CONFIG YAML file. When no
tier table is configured, every configured provider contributes its cheap model to `simple` and
its mid model to `moderate` and `complex` (see DEFAULT_MODELS).
"""

from __future__ import annotations

from dataclasses import dataclass

from sentinel.config import ProviderEntry, Settings, TierModelEntry, load_providers_file

TIERS = ("simple", "moderate", "complex")

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
    providers: dict[str, ProviderSpec]
    tiers: dict[str, list[TierModelEntry]]


def build_catalog(settings: Settings) -> Catalog:
    """The providers and the (default or configured) tier table."""
    providers: dict[str, ProviderSpec] = {}
    defaults: dict[str, tuple[TierModelEntry, TierModelEntry]] = {}
    if settings.openai_api_key or settings.openai_api_url:
        providers["openai"] = ProviderSpec("openai", "openai", settings.effective_openai_url, settings.openai_api_key)
        defaults["openai"] = DEFAULT_MODELS["openai"]
    if settings.anthropic_api_key or settings.anthropic_api_url:
        providers["anthropic"] = ProviderSpec(
            "anthropic", "anthropic", settings.effective_anthropic_url, settings.anthropic_api_key
        )
        defaults["anthropic"] = DEFAULT_MODELS["anthropic"]
    configured = None
    if settings.providers_file is not None:
        file = load_providers_file(settings.providers_file)
        for entry in file.providers:
            providers[entry.name] = _spec(entry)
            if entry.cheap_model:
                cheap = TierModelEntry(provider=entry.name, model=entry.cheap_model, relative_cost=1)
                mid = TierModelEntry(provider=entry.name, model=entry.mid_model or entry.cheap_model, relative_cost=5)
                defaults[entry.name] = (cheap, mid)
        configured = file.tiers
    if configured is not None:
        tiers = {tier: list(configured.get(tier, [])) for tier in TIERS}  # type: ignore[call-overload]
    else:
        tiers = {
            "simple": [cheap for cheap, _ in defaults.values()],
            "moderate": [mid for _, mid in defaults.values()],
            "complex": [mid for _, mid in defaults.values()],
        }
    return Catalog(providers=providers, tiers=tiers)


def _spec(entry: ProviderEntry) -> ProviderSpec:
    return ProviderSpec(entry.name, entry.kind, entry.base_url.rstrip("/"), entry.api_key)
