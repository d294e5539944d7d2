"""The one backoff policy: exponential from `base`, capped, the upper half of each delay jittered."""

from __future__ import annotations

import pytest

from sentinel.backoff import Backoff


@pytest.mark.parametrize(("retry", "ceiling"), [(0, 0.5), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (7, 30.0), (50, 30.0)])
def test_each_delay_lies_in_the_upper_half_of_its_ceiling(retry: int, ceiling: float) -> None:
    policy = Backoff(base=0.5, cap=30.0)
    delays = [policy.delay(retry) for _ in range(200)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert len(set(delays)) > 1  # jittered: replicas retrying together spread out


def test_defaults_suit_a_short_bounded_retry_loop() -> None:
    policy = Backoff()
    assert policy.attempts == 3
    assert max(policy.delay(n) for n in range(1, 10) for _ in range(50)) <= policy.cap
