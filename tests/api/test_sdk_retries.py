"""The official SDKs' own retries (`max_retries`, two by default) against Sentinel's refusals: what
they wait for and whether they retry at all, read off the answers they were given (their sleep is
replaced by a recorder: nothing waits)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest

from tests.api.conftest import Gateway

HAIKU = "claude-3-5-haiku-20241022"
MINI = "gpt-4o-mini"
LONG = " ".join(f"word{i}" for i in range(8000))  # ~23,000 tokens: more than a 5,000-token input limit


def retrying(client: Any) -> tuple[Any, list[str | None]]:
    """`client` retrying twice, as by default, with its sleep replaced by a recorder of each wait's
    answer `Retry-After` (None: none was given): the list of retries it made."""
    client = client.with_options(max_retries=2)
    waits: list[str | None] = []

    def sleep(*, retries_taken: int, max_retries: int, options: Any, response: Any) -> None:
        waits.append(response.headers.get("retry-after") if response is not None else None)

    client._sleep_for_retry = sleep
    return client, waits


def test_a_request_no_quota_window_can_admit_is_not_retried(gateway_factory: Callable[..., Gateway]) -> None:
    """A request larger than its plan's limit is refused without a Retry-After (no reset helps it):
    both SDKs retried it twice all the same, refused each time. It says `x-should-retry: false` now,
    which they obey: the caller has its error at once, its message readable."""
    gw = gateway_factory(default_plan="requests=100/1m,input_tokens=5000/1m")
    claude, claude_waits = retrying(gw.anthropic())
    with pytest.raises(anthropic.RateLimitError, match="can never be admitted") as refused:
        claude.messages.create(model=HAIKU, max_tokens=5, messages=[{"role": "user", "content": LONG}])
    assert refused.value.response.headers["x-should-retry"] == "false"
    chat, chat_waits = retrying(gw.openai())
    with pytest.raises(openai.RateLimitError, match="can never be admitted") as caught:
        chat.chat.completions.create(model=MINI, messages=[{"role": "user", "content": LONG}])
    assert caught.value.code == "quota_exceeded"
    assert (claude_waits, chat_waits) == ([], [])
    served = claude.messages.create(model=HAIKU, max_tokens=5, messages=[{"role": "user", "content": "short"}])
    assert served.content


@pytest.mark.parametrize("model", [HAIKU, MINI])
def test_a_wait_longer_than_a_minute_is_not_slept_through(gateway: Gateway, model: str) -> None:
    """A provider 429 asking for two hours (`Retry-After: 7200`) was passed on as it was: the anthropic
    SDK sleeps for whatever Retry-After says, so its caller's call was held two hours, then two more.
    Such a wait now comes with `x-should-retry: false` and the SDK raises at once; a short one is
    still waited for and retried, on both SDKs."""
    claude, waits = retrying(gateway.anthropic())
    with pytest.raises(anthropic.RateLimitError) as refused:
        claude.messages.create(model=model, max_tokens=5, messages=[
            {"role": "user", "content": "hi #mock:status=429 #mock:retry_after=7200"}])
    assert refused.value.response.headers["retry-after"] == "7200"
    assert waits == []
    with pytest.raises(anthropic.RateLimitError):
        claude.messages.create(model=model, max_tokens=5, messages=[
            {"role": "user", "content": "hi #mock:status=429 #mock:retry_after=2"}])
    assert waits == ["2", "2"]
    chat, chat_waits = retrying(gateway.openai())
    with pytest.raises(openai.RateLimitError):
        chat.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi #mock:status=429 #mock:retry_after=2"}])
    assert chat_waits == ["2", "2"]
