"""Pure quota data: plan specs, decisions and the headers they produce."""

from __future__ import annotations

import pytest

from sentinel.domain.plans import ExternalUsage, Limit, Plan, parse_plan_spec
from sentinel.errors import RateLimited
from sentinel.quota.decision import Decision, LimitState


def test_parse_plan_spec_units() -> None:
    plan = parse_plan_spec(
        "requests=100/60s, input_tokens=100000/1d,output_tokens=50000/30d,requests=5/2m", "free"
    )
    assert plan.name == "free"
    assert plan.limits == (
        Limit("requests", 60, 100),
        Limit("input_tokens", 86400, 100000),
        Limit("output_tokens", 30 * 86400, 50000),
        Limit("requests", 120, 5),
    )
    assert parse_plan_spec("requests=1/1h").limits == (Limit("requests", 3600, 1),)
    assert parse_plan_spec("requests=1/30").limits == (Limit("requests", 30, 1),)
    assert parse_plan_spec("").limits == ()
    # One window grammar for the CLI and DEFAULT_PLAN: weeks too.
    assert parse_plan_spec("requests=10/2w").limits == (Limit("requests", 14 * 86400, 10),)


@pytest.mark.parametrize(
    "spec",
    [
        "requests=100",
        "tokens=5/60s",
        "requests=-1/60s",
        "requests=10/0s",
        "requests=10/5y",
        "requests=1/60s,,x",
    ],
)
def test_parse_plan_spec_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_plan_spec(spec)


def test_plan_rejects_duplicate_windows() -> None:
    with pytest.raises(ValueError, match="same window"):
        parse_plan_spec("requests=1/60s,requests=2/1m")


def test_limit_validation() -> None:
    with pytest.raises(ValueError):
        Limit("bytes", 60, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Limit("requests", 60, 1, ExternalUsage(0, "has space"))
    assert Limit("requests", 60, 10, ExternalUsage(4, "abc")).offset == 4
    assert Limit("input_tokens", 86400, 5).describe() == "5 input tokens per 1d"


def state(limit: int, used: int, reset_at: float, metric: str = "requests", window: int = 60) -> LimitState:
    return LimitState(Limit(metric, window, limit), used, 1, reset_at)  # type: ignore[arg-type]


def test_allowed_decision_shows_tightest_limit() -> None:
    states = (state(100, 10, 1060.0), state(1000, 900, 2000.0, "input_tokens", 3600))
    decision = Decision.from_states(states, None, now=1000.0)
    assert decision.allowed and decision.limited_by is None and decision.retry_after is None
    # 90% left of the request limit vs 10% of the token limit: the token limit is the tightest.
    assert decision.headers() == {
        "X-RateLimit-Limit": "1000",
        "X-RateLimit-Remaining": "100",
        "X-RateLimit-Reset": "2000",
    }


def test_denied_decision_shows_the_limit_hit() -> None:
    states = (state(100, 100, 1060.5), state(1000, 1, 2000.0, "input_tokens", 3600))
    decision = Decision.from_states(states, 0, now=1000.0)
    assert not decision.allowed and decision.limited_by == states[0].limit
    assert decision.retry_after == pytest.approx(60.5)
    assert decision.headers() == {
        "X-RateLimit-Limit": "100",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "1061",
        "Retry-After": "61",
    }
    error = decision.to_error()
    assert isinstance(error, RateLimited) and error.status == 429 and error.code == "quota_exceeded"
    assert error.headers["Retry-After"] == "61"
    assert "100 requests per 1m" in error.message
    # The original's 429 details (limit, used, remaining, reset_at) plus which limit it was.
    assert error.details == {
        "metric": "requests", "window_seconds": 60, "limit": 100, "used": 100, "requested": 1, "remaining": 0,
        "reset_at": "1970-01-01T00:17:40+00:00",
    }


def test_oversized_request_is_said_so_and_has_no_retry() -> None:
    big = LimitState(Limit("input_tokens", 60, 1000), 0, 5000, 1060.0)
    decision = Decision.from_states((big,), 0, now=1000.0)
    assert decision.oversized and decision.retry_after is None
    assert "Retry-After" not in decision.headers()
    assert "alone needs 5000 input tokens" in decision.message


def test_a_denial_no_wait_of_a_minute_can_serve_tells_the_sdks_not_to_retry() -> None:
    """The official SDKs retry a 429 twice; the anthropic SDK first sleeps for whatever Retry-After
    says (hours, for a day's quota). A reset more than a minute away, or none (a request larger
    than its limit), says `x-should-retry: false`, which both obey; a nearer one leaves them be."""
    day = state(100, 100, 1000.0 + 7200, window=86400)
    oversized = LimitState(Limit("input_tokens", 60, 1000), 0, 5000, 1060.0)
    for states in ((day,), (oversized,)):
        assert Decision.from_states(states, 0, now=1000.0).to_error().headers["x-should-retry"] == "false"
    soon = Decision.from_states((state(100, 100, 1030.0),), 0, now=1000.0).to_error()
    assert soon.headers["Retry-After"] == "30" and "x-should-retry" not in soon.headers


def test_empty_plan_decision_has_no_headers() -> None:
    decision = Decision.from_states((), None, now=0.0)
    assert decision.allowed and decision.headers() == {}


def test_plan_allows_same_metric_over_several_windows() -> None:
    plan = Plan("p", (Limit("requests", 60, 10), Limit("requests", 86400, 1000)))
    assert len(plan.limits) == 2
