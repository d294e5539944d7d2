"""The `anthropic` SDK's structured-output helpers through Sentinel, unchanged: `messages.parse`
(`output_format=<pydantic model>`, sent as `output_config.format`) and `messages.stream` with one,
sync and async, on a Claude model (relayed) — each charged once; on an OpenAI model the translation
cannot carry it: a 400 in Anthropic's shape naming `output_config`, nothing reserved or charged."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anthropic
import pytest
from pydantic import BaseModel

from tests.api.conftest import Gateway

SONNET = "claude-sonnet-4-20250514"
MINI = "gpt-4o-mini"
ASK = [{"role": "user", "content": "who is it?"}]


class Person(BaseModel):
    name: str
    age: int


def test_parse_and_stream_on_a_claude_model(gateway: Gateway) -> None:
    claude = gateway.anthropic()
    parsed = claude.messages.parse(model=SONNET, max_tokens=64, messages=ASK, output_format=Person)
    assert parsed.parsed_output == Person(name="mock-name", age=1)
    with claude.messages.stream(model=SONNET, max_tokens=64, messages=ASK, output_format=Person) as stream:
        streamed = stream.get_final_message()
    assert streamed.parsed_output == Person(name="mock-name", age=1)

    async def parse_async() -> anthropic.types.Usage:
        client = gateway.async_anthropic()
        async with client:
            answer = await client.messages.parse(model=SONNET, max_tokens=64, messages=ASK, output_format=Person)
        assert answer.parsed_output == Person(name="mock-name", age=1)
        return answer.usage

    usages = [parsed.usage, streamed.usage, asyncio.run(parse_async())]
    rows = gateway.settled_rows(3)
    assert sorted((r["input_tokens"], r["output_tokens"]) for r in rows) == sorted(
        (u.input_tokens, u.output_tokens) for u in usages)
    assert all(u.output_tokens == 4 for u in usages)


def test_a_structured_output_for_an_openai_model_is_refused_before_the_quota(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gw = gateway_factory(default_plan="requests=1/1m")
    claude = gw.anthropic()
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.parse(model=MINI, max_tokens=64, messages=ASK, output_format=Person)
    assert caught.value.status_code == 400 and "output_config" in caught.value.message
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "error"
    served = claude.messages.create(model=MINI, max_tokens=64, messages=ASK)
    assert served.content[0].type == "text" and served.content[0].text == "Echo: who is it?"
    assert [r["model"] for r in gw.settled_rows(1)] == [MINI]
