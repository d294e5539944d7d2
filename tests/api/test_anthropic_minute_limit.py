"""A `/v1/messages` request that alone asks more than the Anthropic account's per-minute limit (a
`max_tokens` over its output tokens a minute) is refused by Anthropic with a 429 reading as the minute's
traffic does. It is the request's refusal: counted as one request, answered without a wait to make,
and no model's failure — it put the model in backoff for everyone, at will and for free."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import anthropic
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sentinel.routing.health import ProviderHealth
from tests.api.conftest import Gateway
from tests.support.servers import serving

HAIKU = "claude-3-5-haiku-20241022"
OUTPUT_PER_MINUTE = 8_000
LIMITED = {"type": "error", "error": {"type": "rate_limit_error", "message": (
    "This request would exceed the rate limit for your organization (0f2c-org) of 8,000 output tokens per "
    "minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. Please reduce the prompt "
    "length or the maximum tokens requested, or try again later.")}}


def minute_limited() -> Starlette:
    """An Anthropic-format upstream whose account takes 8,000 output tokens a minute, reckoned from each
    request's `max_tokens` as Anthropic does: a larger cap is refused (429), any other is answered."""

    async def messages(request: Request) -> JSONResponse:
        body = await request.json()
        if body["max_tokens"] > OUTPUT_PER_MINUTE:
            return JSONResponse(LIMITED, status_code=429, headers={"retry-after": "30"})
        return JSONResponse({
            "id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
            "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 1}})

    return Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])


@pytest.fixture
def gw(gateway_factory: Callable[..., Gateway]) -> Iterator[Gateway]:
    with serving(minute_limited()) as upstream:
        yield gateway_factory(anthropic_api_url=upstream.url, default_plan="requests=100/1m")


@pytest.mark.parametrize("stream", [False, True])
def test_a_max_tokens_over_the_accounts_minute_is_refused_alone_and_puts_no_model_in_backoff(
    gw: Gateway, stream: bool,
) -> None:
    claude = gw.anthropic()
    with pytest.raises(anthropic.RateLimitError) as refused:
        claude.messages.create(model=HAIKU, max_tokens=20_000, stream=stream,
                               messages=[{"role": "user", "content": "write a long story"}])
    headers = refused.value.response.headers
    assert headers["x-should-retry"] == "false" and "retry-after" not in headers  # no wait lets it through
    assert "0f2c-org" not in refused.value.response.text
    assert gw.read_stored(ProviderHealth.key("anthropic", HAIKU)) is None  # (was in backoff: a provider 429)
    row = gw.settled_rows(1)[0]  # one request, no tokens (a 429 given back was free, repeatable at will)
    assert (row["status"], row["input_tokens"], row["output_tokens"]) == (429, 0, 0)
    answer = claude.messages.create(model=HAIKU, max_tokens=1024, messages=[{"role": "user", "content": "hi"}])
    assert answer.content[0].text == "ok"
