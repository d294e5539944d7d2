"""CircuitBreaker (sentinel.breaker): threshold, cooldown, one half-open probe; an injected clock."""

from __future__ import annotations

import pytest

from sentinel.breaker import CircuitBreaker


@pytest.fixture
def now() -> list[float]:
    return [100.0]


def breaker(now: list[float], changes: list[tuple[str, str]] | None = None) -> CircuitBreaker:
    on_change = None if changes is None else (lambda old, new: changes.append((old, new)))
    return CircuitBreaker(threshold=3, cooldown=10.0, clock=lambda: now[0], on_change=on_change)


def test_opens_after_threshold_consecutive_failures_only(now: list[float]) -> None:
    b = breaker(now)
    b.failure()
    b.failure()
    b.success()  # not consecutive any more
    b.failure()
    b.failure()
    assert b.allow() and b.state == "closed"
    b.failure()
    assert b.state == "open"
    assert not b.allow() and not b.allow()
    assert b.rejected == 2
    assert b.retry_after() == 10.0


def test_after_the_cooldown_exactly_one_probe_goes_through(now: list[float]) -> None:
    changes: list[tuple[str, str]] = []
    b = breaker(now, changes)
    for _ in range(3):
        b.failure()
    now[0] += 9.9
    assert not b.allow()
    now[0] += 0.1
    assert b.allow()  # the probe
    assert b.state == "half_open"
    assert not b.allow() and not b.allow()  # everyone else still fails fast
    b.success()
    assert b.state == "closed" and b.allow() and b.allow()
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_a_failed_probe_opens_it_for_another_cooldown(now: list[float]) -> None:
    b = breaker(now)
    for _ in range(3):
        b.failure()
    now[0] += 10
    assert b.allow()
    b.failure()  # one failure is enough while half-open
    assert b.state == "open" and not b.allow()
    now[0] += 9
    assert not b.allow()
    now[0] += 1
    assert b.allow()


def test_a_probe_that_never_reports_is_replaced_after_a_cooldown(now: list[float]) -> None:
    b = breaker(now)
    for _ in range(3):
        b.failure()
    now[0] += 10
    assert b.allow()  # this probe's caller is cancelled: neither success nor failure
    now[0] += 5
    assert not b.allow()
    now[0] += 5
    assert b.allow()


def test_is_open_is_the_stores_spelling_of_not_allow(now: list[float]) -> None:
    b = breaker(now)
    assert not b.is_open
    for _ in range(3):
        b.failure()
    assert b.is_open
    now[0] += 10
    assert not b.is_open  # the probe
    assert b.is_open


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker(cooldown=0)
