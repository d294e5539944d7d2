"""Cost-weighted selection: P(i) = (1/c_i) / sum_j (1/c_j), checked over many seeded draws."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from sentinel.domain.tiers import TierModelEntry
from sentinel.routing.selection import WeightedSelector, probabilities

ENTRIES = [
    TierModelEntry(provider="openai", model="cheap", relative_cost=1),
    TierModelEntry(provider="anthropic", model="mid", relative_cost=2),
    TierModelEntry(provider="openai", model="dear", relative_cost=5),
]


def test_probabilities_match_the_original_example() -> None:
    assert [round(p * 100, 1) for p in probabilities(ENTRIES)] == [58.8, 29.4, 11.8]


@pytest.mark.parametrize("seed", [1, 2024, 987654321])
def test_ten_thousand_draws_follow_the_cost_weights(seed: int) -> None:
    selector = WeightedSelector(random.Random(seed))
    counts = Counter(selector.choose(ENTRIES).model for _ in range(10_000))
    shares = {model: counts[model] / 10_000 * 100 for model in ("cheap", "mid", "dear")}
    for model, expected in zip(("cheap", "mid", "dear"), (58.8, 29.4, 11.8), strict=True):
        assert abs(shares[model] - expected) <= 2.0, shares


def test_same_seed_same_choices() -> None:
    a, b = WeightedSelector(random.Random(7)), WeightedSelector(random.Random(7))
    assert [a.choose(ENTRIES).model for _ in range(200)] == [b.choose(ENTRIES).model for _ in range(200)]


def test_single_candidate_and_empty() -> None:
    selector = WeightedSelector(random.Random(0))
    assert selector.choose(ENTRIES[:1]) is ENTRIES[0]
    with pytest.raises(ValueError):
        selector.choose([])
