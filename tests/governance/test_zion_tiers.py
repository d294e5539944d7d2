"""Zion's tier config: parsed as the spec defines it, a bad value never replaces a good table, and
an undecodable stored entry is a miss (logged, counted), never an error. Injected clock, no sleeps."""

from __future__ import annotations

import copy
import logging
from typing import Any

import orjson
import pytest

from sentinel.domain.catalogue import Prices
from sentinel.domain.tiers import TierModelEntry
from sentinel.errors import GovernanceUnavailable, ServiceUnavailable
from sentinel.governance.zion_sources import ZionTiers, parse_tier_config
from sentinel.observability.metrics import Metrics
from sentinel.store import MemoryStore
from tests.support.fake_zion import DEFAULT_TIERS
from tests.support.metrics import counted


def config(**entry_changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(DEFAULT_TIERS)
    data["tiers"]["simple"][0].update(entry_changes)
    return data


def test_extra_keys_are_ignored_and_the_full_cost_range_is_accepted() -> None:
    data = config(enabled=True, maxTokens=4096, contextWindow=128000, relativeCost=0)
    data["tiers"]["complex"][0] = {**data["tiers"]["complex"][0], "relativeCost": 255, "notes": {"x": 1}}
    data["tiers"]["experimental"] = [{"anything": "goes"}]  # an unknown tier is ignored
    data["extra"] = "ignored"
    table = parse_tier_config(data)
    assert table["simple"] == [
        TierModelEntry(provider="openai", model="gpt-4o-mini", relative_cost=0,
                       input_price_per_million=0.15, output_price_per_million=0.6)
    ]
    assert table["complex"][0].relative_cost == 255
    assert set(table) == {"simple", "moderate", "complex"}


def test_prices_are_optional_and_an_absent_tier_has_no_models() -> None:
    data = {"tiers": {"simple": [{"provider": "openai", "model": "m", "relativeCost": 3}]}}
    table = parse_tier_config(data)
    assert table["simple"][0].prices == Prices(0.0, 0.0) and table["moderate"] == [] and table["complex"] == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (config(relativeCost=256), "relativeCost must be an integer from 0 to 255"),
        (config(relativeCost=-1), "relativeCost must be an integer from 0 to 255"),
        (config(relativeCost="1"), "relativeCost must be an integer from 0 to 255"),
        (config(relativeCost=1.5), "relativeCost must be an integer from 0 to 255"),
        (config(relativeCost=True), "relativeCost must be an integer from 0 to 255"),
        (config(model=None), "tiers.simple[0] lacks model"),
        (config(provider=7), "tiers.simple[0].provider"),
        (config(model="gpt-4o\r\nX-Injected: 1"), "tiers.simple[0].model"),  # (`X-Sentinel-Model`)
        (config(inputPricePerMillion=-1), "tiers.simple[0].input_price_per_million"),
        ({"tiers": {"simple": "gpt-4o"}}, "tiers.simple is not a list"),
        ({"tiers": {"simple": ["gpt-4o"]}}, "tiers.simple[0] is not an object"),
        ({"tiers": {"simple": [], "moderate": [], "complex": []}}, "no model in any tier"),
        ({"version": "2"}, "no 'tiers' object"),
        (["not", "an", "object"], "not an object"),
    ],
)
def test_unusable_configs_are_refused_with_the_reason(data: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        parse_tier_config(data)


class Source:
    def __init__(self) -> None:
        self.data: Any = copy.deepcopy(DEFAULT_TIERS)
        self.calls = 0
        self.down = False

    async def fetch(self) -> dict[str, Any]:
        self.calls += 1
        if self.down:
            raise GovernanceUnavailable("Zion is down")
        return copy.deepcopy(self.data)


@pytest.fixture
def now() -> list[float]:
    return [1000.0]


def tiers(now: list[float], source: Source, store: MemoryStore, **kw: Any) -> ZionTiers:
    return ZionTiers(source.fetch, store, ttl=60, clock=lambda: now[0], **kw)


async def test_a_broken_table_never_replaces_the_good_one(now: list[float], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sentinel.tiers")
    source, store = Source(), MemoryStore(clock=lambda: now[0])
    zt = tiers(now, source, store)
    assert (await zt.table())["simple"][0].model == "gpt-4o-mini"
    source.data = config(model="gpt-5-nano", relativeCost=300)  # Zion now sends an unusable table
    now[0] += 61  # the cached copy has expired everywhere
    assert (await zt.table())["simple"][0].model == "gpt-4o-mini"
    assert source.calls == 2
    assert "relativeCost must be an integer from 0 to 255" in caplog.text
    assert "the last good tier table stays in force" in caplog.text
    assert (await zt.table())["simple"][0].model == "gpt-4o-mini"
    assert source.calls == 2  # not asked again on every request
    # Another replica starting now finds the last good table in the store.
    fresh = tiers(now, source, store)
    assert (await fresh.table())["simple"][0].model == "gpt-4o-mini"
    source.data = config(model="gpt-5-nano")  # fixed at the source
    now[0] += 31
    assert (await zt.table())["simple"][0].model == "gpt-5-nano"


async def test_while_zion_is_down_the_last_good_table_is_served_and_zion_left_alone(now: list[float]) -> None:
    source, store = Source(), MemoryStore(clock=lambda: now[0])
    zt = tiers(now, source, store)
    await zt.table()
    source.down = True
    now[0] += 61
    for _ in range(10):
        assert (await zt.table())["simple"][0].model == "gpt-4o-mini"
    assert source.calls == 2


async def test_no_table_at_all_is_503_or_the_configured_fallback(now: list[float]) -> None:
    source = Source()
    source.down = True
    with pytest.raises(ServiceUnavailable):
        await tiers(now, source, MemoryStore()).table()
    fallback = {"simple": [TierModelEntry(provider="openai", model="fallback-mini")], "moderate": [], "complex": []}
    assert (await tiers(now, source, MemoryStore(), fallback=fallback).table())["simple"][0].model == "fallback-mini"


@pytest.mark.parametrize(
    "garbage",
    [b"\x00\xffnot json", b'"a string"', b"[1,2,3]", orjson.dumps({"v": {"tiers": {}}, "fresh_until": 1})],
)
async def test_an_undecodable_stored_table_is_a_counted_miss(
    now: list[float], garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sentinel.tiers")
    source, store, metrics = Source(), MemoryStore(clock=lambda: now[0]), Metrics()
    await store.set(ZionTiers.KEY, garbage, 600)
    await store.set(ZionTiers.LAST_GOOD, garbage)
    zt = tiers(now, source, store, metrics=metrics)
    assert (await zt.table())["simple"][0].model == "gpt-4o-mini"
    assert source.calls == 1  # the garbage was a miss: Zion was asked
    assert parse_tier_config(orjson.loads(await store.get(ZionTiers.KEY) or b"")) == await zt.table()  # replaced
    assert counted(metrics, "sentinel_cache_lookups_total", cache="tiers", result="undecodable") == 1
    assert "undecodable tiers cache entry" in caplog.text
    # A corrupted last-good copy with Zion down: the fallback, not a 500.
    source.down = True
    other = MemoryStore(clock=lambda: now[0])
    await other.set(ZionTiers.LAST_GOOD, garbage)
    fallback = {"simple": [TierModelEntry(provider="openai", model="fallback-mini")], "moderate": [], "complex": []}
    assert (await tiers(now, source, other, fallback=fallback).table())["simple"][0].model == "fallback-mini"
