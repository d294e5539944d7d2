"""The model catalogue (resolution, aliases, consistency, the default catalogue) and serving a name's
targets in order with shared provider health."""

from __future__ import annotations

import math

import pytest

from sentinel.domain.catalogue import MAX_PRICE, CatalogueModel, ModelTarget, Prices
from sentinel.domain.numbers import MAX_TOKENS
from sentinel.domain.tiers import TierModelEntry
from sentinel.errors import InvalidRequest, NotFound, UpstreamConnectionError, UpstreamStatusError
from sentinel.observability.metrics import Metrics
from sentinel.providers.catalog import WELL_KNOWN_MODELS
from sentinel.routing.catalogue import CatalogueError, ModelCatalogue, default_models
from sentinel.routing.health import ProviderHealth
from sentinel.routing.model_routes import ModelRoutes
from sentinel.store import MemoryStore
from tests.support.clock import FakeClock

KINDS = {"openai": "openai", "anthropic": "anthropic", "groq": "openai"}
MODELS = [
    CatalogueModel(name="gpt-4o-mini", provider="openai", input_price_per_million=0.15, output_price_per_million=0.6),
    CatalogueModel(name="claude", provider="anthropic", upstream_name="claude-3-5-haiku-20241022"),
    CatalogueModel(name="llama", provider="groq"),
]


def catalogue(aliases: dict[str, list[str]] | None = None) -> ModelCatalogue:
    return ModelCatalogue(MODELS, aliases or {}, KINDS)


def test_resolve_models_and_aliases() -> None:
    cat = catalogue({"fast": ["gpt-4o-mini"], "smart": ["claude", "llama", "claude"]})
    (mini,) = cat.resolve("gpt-4o-mini")
    assert mini == ModelTarget("gpt-4o-mini", "openai", "openai", "gpt-4o-mini", Prices(0.15, 0.6))
    assert cat.resolve("claude")[0].upstream_model == "claude-3-5-haiku-20241022"
    assert cat.resolve("claude")[0].kind == "anthropic"
    assert [t.name for t in cat.resolve("smart")] == ["claude", "llama"]  # repeated targets dropped
    assert [m.id for m in cat.listing()] == ["gpt-4o-mini", "claude", "llama", "fast", "smart"]
    assert cat.listing()[-1].alias_of == ("claude", "llama")
    assert "claude-3-5-haiku-20241022" in cat.names() and "smart" in cat.names()
    for bad in ("gpt-4o", "", None, 3, ["gpt-4o-mini"]):
        with pytest.raises(NotFound) as caught:
            cat.resolve(bad)
        assert caught.value.code == "model_not_found" and caught.value.status == 404


@pytest.mark.parametrize(("name", "reasons"), [
    *[(name, True) for name in ("o1", "o1-mini", "o1-pro", "o3", "o3-mini", "o3-pro", "o3-deep-research",
                                "o4-mini", "o4-mini-2025-04-16", "codex-mini-latest", "gpt-5", "gpt-5-mini",
                                "gpt-5-nano", "gpt-5-pro", "gpt-5-codex", "gpt-5.1", "gpt-5.1-chat-latest",
                                "gpt-5.2", "GPT-5", "openai/o3", "openai/gpt-5-mini")],
    *[(name, False) for name in ("gpt-5-chat-latest", "gpt-5-chat", "openai/gpt-5-chat-latest", "gpt-4o",
                                 "gpt-4o-mini", "gpt-4.1", "gpt-50", "o2", "o3x", "omni-moderation-latest",
                                 "claude-sonnet-4-20250514", "text-embedding-3-small", "llama-3.3-70b", "gpt-oss-120b")],
])
def test_which_models_reason_unasked_by_name(name: str, reasons: bool) -> None:
    from sentinel.domain.catalogue import reasons_by_name

    assert reasons_by_name(name) is reasons


def test_the_providers_files_reasons_overrides_the_name_both_ways() -> None:
    """A model's `reasons` says whether it reasons without being asked; unset, its upstream name does
    (`reasons_by_name`), also for a tier's model the catalogue lists."""
    models = [
        CatalogueModel(name="thinker", provider="openai", upstream_name="o4-mini"),
        CatalogueModel(name="quiet", provider="groq", upstream_name="o3", reasons=False),
        CatalogueModel(name="house", provider="groq", upstream_name="house-ft", reasons=True),
        CatalogueModel(name="plain", provider="openai", upstream_name="gpt-4o-mini"),
    ]
    cat = ModelCatalogue(models, {"both": ["plain", "thinker"]}, KINDS)
    assert {m.name: cat.resolve(m.name)[0].reasons for m in models} == {
        "thinker": True, "quiet": False, "house": True, "plain": False}
    assert [t.reasons for t in cat.resolve("both")] == [False, True]
    assert cat.reasons("groq", "o3") is False and cat.reasons("groq", "house-ft") is True
    assert cat.reasons("openai", "o3") is True and cat.reasons("openai", "gpt-4o") is False  # not listed: by name
    with pytest.raises(ValueError):
        CatalogueModel.model_validate({"name": "x", "provider": "openai", "reasons": "sometimes"})


def test_a_tools_model_is_resolved_on_the_provider_of_the_requests_model() -> None:
    """A tool that runs a model (`tools[].model`) runs it on the provider the request is sent to: the
    request's targets are those whose provider serves every tool's model (as a model, or an alias)."""
    cat = catalogue({"smart": ["claude", "llama"], "quick": ["llama"]})
    smart = cat.resolve("smart")
    assert cat.with_tools(smart, []) == smart
    assert [t.name for t in cat.with_tools(smart, [("tools.0.model", "quick")])] == ["llama"]
    assert cat.on_provider("claude", "anthropic") == cat.resolve("claude")[0]
    assert cat.on_provider("claude", "groq") is None and cat.on_provider("nothing", "groq") is None
    with pytest.raises(NotFound) as unknown:
        cat.with_tools(smart, [("tools.0.model", "gpt-image-1")])
    assert (unknown.value.code, unknown.value.details) == ("model_not_found", {"param": "tools.0.model"})
    with pytest.raises(InvalidRequest) as elsewhere:
        cat.with_tools(smart, [("tools.0.model", "llama"), ("tools.3.model", "gpt-4o-mini")])
    assert (elsewhere.value.code, elsewhere.value.details) == ("model_not_supported", {"param": "tools.3.model"})
    for bad in (None, 3, ["llama"]):
        with pytest.raises(InvalidRequest) as caught:
            cat.with_tools(smart, [("tools.0.model", bad)])
        assert caught.value.status == 400 and caught.value.details == {"param": "tools.0.model"}


@pytest.mark.parametrize("models, aliases, problem", [
    ([*MODELS, MODELS[0]], {}, "listed twice"),
    ([CatalogueModel(name="x", provider="nowhere")], {}, "not configured"),
    (MODELS, {"llama": ["claude"]}, "name of a model"),
    (MODELS, {"a": ["claude", "missing"]}, "unknown model"),
])
def test_inconsistent_catalogues_are_refused(models: list[CatalogueModel], aliases: dict[str, list[str]],
                                             problem: str) -> None:
    with pytest.raises(CatalogueError, match=problem):
        ModelCatalogue(models, aliases, KINDS)


def test_default_catalogue() -> None:
    extra = [TierModelEntry(provider="groq", model="llama-3"), TierModelEntry(provider="openai", model="gpt-4o"),
             TierModelEntry(provider="gone", model="x"), TierModelEntry(provider="groq", model="bad name!")]
    models = default_models(WELL_KNOWN_MODELS, ["openai", "groq"], extra)
    names = [m.name for m in models]
    assert "gpt-4o-mini" in names and "text-embedding-3-small" in names and "llama-3" in names
    assert not any(n.startswith("claude") for n in names)  # anthropic is not configured
    assert names.count("gpt-4o") == 1 and "x" not in names and "bad name!" not in names
    haiku = next(m for m in WELL_KNOWN_MODELS["anthropic"] if m.name == "claude-3-5-haiku-20241022")
    assert haiku.prices == Prices(0.8, 4.0, 1.0, 0.08)


@pytest.mark.parametrize("price", [float("inf"), float("nan"), 1e400, -1.0, 1e308, MAX_PRICE * 1.000001])
@pytest.mark.parametrize("field", ["input_price_per_million", "output_price_per_million",
                                   "cache_write_price_per_million", "cache_read_price_per_million"])
def test_catalogue_prices_are_finite_not_negative_and_bounded(price: float, field: str) -> None:
    """The providers file's models, its `tiers:`, Zion's tier config and every tier edit are these
    two types: a price of 1e308 made a cost of `inf`, which broke the console's charts."""
    with pytest.raises(ValueError, match=field):
        CatalogueModel.model_validate({"name": "m", "provider": "openai", field: price})
    if not field.startswith("cache"):
        with pytest.raises(ValueError, match=field):
            TierModelEntry.model_validate({"provider": "openai", "model": "m", field: price})


def test_the_highest_price_on_the_most_tokens_costs_a_finite_sum() -> None:
    top = CatalogueModel(name="m", provider="openai", input_price_per_million=MAX_PRICE,
                         output_price_per_million=MAX_PRICE)
    cost = top.prices.cost(MAX_TOKENS, MAX_TOKENS)
    assert cost is not None and math.isfinite(cost * 1_000_000)  # and a million such calls summed


def test_prices_cost_cache_tokens_on_their_own() -> None:
    prices = Prices(input=1.0, output=2.0, cache_write=1.25, cache_read=0.1)
    assert prices.cost(1_000_000, 1_000_000) == 3.0
    assert prices.cost(1_000_000, 0, cache_write=400_000, cache_read=500_000) == pytest.approx(0.1 + 0.5 + 0.05)
    assert Prices(1.0, 2.0).cost(1_000_000, 0, cache_read=1_000_000) == 1.0  # unpriced: the input price
    assert Prices().cost(10, 10) is None


class Flaky:
    """A send function: fails with the given errors for the named targets, answers for the others."""

    def __init__(self, failing: dict[str, Exception]) -> None:
        self.failing = failing
        self.calls: list[str] = []

    async def __call__(self, target: ModelTarget) -> str:
        self.calls.append(target.name)
        if target.name in self.failing:
            raise self.failing[target.name]
        return target.name


async def test_routes_fail_over_only_on_provider_failures() -> None:
    clock = FakeClock()
    health = ProviderHealth(MemoryStore(), Metrics(), clock=clock)
    routes = ModelRoutes(health)
    cat = catalogue({"smart": ["claude", "llama"]})
    down = Flaky({"claude": UpstreamConnectionError("refused", sent=False)})
    assert await routes.call(cat.resolve("smart"), down) == "llama"
    assert down.calls == ["claude", "llama"]
    assert not (await health.available([("anthropic", "claude-3-5-haiku-20241022")]))[("anthropic", "claude-3-5-haiku-20241022")]
    again = Flaky({})
    assert await routes.call(cat.resolve("smart"), again) == "llama"  # the healthy target first now
    assert again.calls == ["llama"]
    refused = Flaky({"claude": InvalidRequest("bad")})
    clock.advance(31)
    with pytest.raises(InvalidRequest):  # a client error is not retried elsewhere
        await routes.call(cat.resolve("smart"), refused)
    assert refused.calls == ["claude"]
    single = Flaky({"claude": UpstreamStatusError("boom", upstream_status=500)})
    with pytest.raises(UpstreamStatusError):
        await routes.call(cat.resolve("claude"), single)
    assert single.calls == ["claude"]
    healed = Flaky({})
    assert await routes.call(cat.resolve("claude"), healed) == "claude"
    assert (await health.available([("anthropic", "claude-3-5-haiku-20241022")]))[("anthropic", "claude-3-5-haiku-20241022")]


async def test_a_connection_dropped_after_the_request_was_sent_is_not_sent_to_the_next_target() -> None:
    """The provider may have served (and billed) a request whose connection it dropped afterwards:
    moving on to the alias's next target billed it twice and recorded it once."""
    health = ProviderHealth(MemoryStore(), Metrics(), clock=FakeClock())
    dropped = Flaky({"claude": UpstreamConnectionError("dropped", sent=True)})
    with pytest.raises(UpstreamConnectionError):
        await ModelRoutes(health).call(catalogue({"smart": ["claude", "llama"]}).resolve("smart"), dropped)
    assert dropped.calls == ["claude"]


async def test_only_the_providers_overload_after_a_stream_began_counts_against_its_health() -> None:
    health = ProviderHealth(MemoryStore(), Metrics(), clock=FakeClock())
    routes = ModelRoutes(health)
    target = catalogue({}).resolve("claude")[0]
    pair = ("anthropic", "claude-3-5-haiku-20241022")
    for code in ("api_error", "invalid_request_error", "connection_closed", None):  # a client may cause these
        await routes.failed_mid_stream(target, code)
        assert (await health.available([pair]))[pair], code
    openai_target = catalogue({}).resolve("gpt-4o-mini")[0]
    await routes.failed_mid_stream(openai_target, "overloaded_error")  # an OpenAI-format server's chosen text
    assert (await health.available([("openai", "gpt-4o-mini")]))[("openai", "gpt-4o-mini")]
    await routes.failed_mid_stream(target, "overloaded_error")
    assert not (await health.available([pair]))[pair]
