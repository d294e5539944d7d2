"""Cost-weighted model choice.

A candidate's weight is `1 / relative_cost` (cost 1..10), so P(i) = (1/c_i) / sum_j (1/c_j): costs
1, 2 and 5 give 58.8 %, 29.4 % and 11.8 %. The random source is injectable (seeded in tests).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from sentinel.domain.tiers import TierModelEntry


def weight(entry: TierModelEntry) -> float:
    return 1.0 / max(1, entry.relative_cost)


def probabilities(entries: Sequence[TierModelEntry]) -> list[float]:
    total = sum(weight(e) for e in entries)
    return [weight(e) / total for e in entries]


class WeightedSelector:
    """Picks one entry with probability proportional to its weight."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def choose(self, entries: Sequence[TierModelEntry]) -> TierModelEntry:
        if not entries:
            raise ValueError("no candidates")
        if len(entries) == 1:
            return entries[0]
        return self.rng.choices(list(entries), weights=[weight(e) for e in entries], k=1)[0]
