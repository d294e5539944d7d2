"""The `anthropic` SDK's structured-output helpers through Sentinel, unchanged: `messages.parse`
(`output_format=<pydantic model>`, sent as `output_config.format`) and `messages.stream` with one,
sync and async, on a Claude model (relayed) and on an OpenAI model (translated to `response_format`
json_schema) — each charged once; what the translation cannot carry is a 400 in Anthropic's shape
naming the field, nothing reserved or charged."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import pytest
from pydantic import BaseModel

from tests.api.conftest import Gateway

SONNET = "claude-sonnet-4-20250514"
MINI = "gpt-4o-mini"
ASK = [{"role": "user", "content": "who is it?"}]


class Person(BaseModel):
    name: str
    age: int


def _async_parse_then_each_charged_once(gateway: Gateway, model: str, usages: list[anthropic.types.Usage]) -> None:
    """`messages.parse` on the async client too, then the three calls (`usages`: the sync parse's and the
    stream's, then the async one's) each in the ledger once, with their own usage."""

    async def parse_async() -> anthropic.types.Usage:
        client = gateway.async_anthropic()
        async with client:
            answer = await client.messages.parse(model=model, max_tokens=64, messages=ASK, output_format=Person)
        assert answer.parsed_output == Person(name="mock-name", age=1)
        return answer.usage

    usages = [*usages, asyncio.run(parse_async())]
    rows = gateway.settled_rows(3)
    assert sorted((r["input_tokens"], r["output_tokens"]) for r in rows) == sorted(
        (u.input_tokens, u.output_tokens) for u in usages)
    assert all(u.output_tokens == 4 for u in usages)


def test_parse_and_stream_on_a_claude_model(gateway: Gateway) -> None:
    claude = gateway.anthropic()
    parsed = claude.messages.parse(model=SONNET, max_tokens=64, messages=ASK, output_format=Person)
    assert parsed.parsed_output == Person(name="mock-name", age=1)
    with claude.messages.stream(model=SONNET, max_tokens=64, messages=ASK, output_format=Person) as stream:
        streamed = stream.get_final_message()
    assert streamed.parsed_output == Person(name="mock-name", age=1)
    _async_parse_then_each_charged_once(gateway, SONNET, [parsed.usage, streamed.usage])


def sent_upstream(gw: Gateway) -> dict[str, Any]:
    """The body the mock OpenAI upstream last received on /v1/chat/completions."""
    return httpx.get(f"{gw.settings.anthropic_api_url}/__mock/last_request",  # (one mock serves both)
                     params={"path": "/v1/chat/completions"}, timeout=5).json()["body"]


def test_a_structured_output_reaches_an_openai_model_translated(gateway: Gateway) -> None:
    """`messages.parse` (sync, async) and `messages.stream(output_format=...)` on an OpenAI model:
    `output_config.format` is sent as `response_format` json_schema — named by the schema's title,
    `strict` as Claude always enforces it (the SDK's schema fits OpenAI's strict mode) — and the JSON
    answer comes back as `parsed_output`, each call charged once."""
    claude = gateway.anthropic()
    parsed = claude.messages.parse(model=MINI, max_tokens=64, messages=ASK, output_format=Person)
    assert parsed.parsed_output == Person(name="mock-name", age=1) and parsed.stop_reason == "end_turn"
    spec = sent_upstream(gateway)["response_format"]
    assert spec["type"] == "json_schema" and spec["json_schema"]["name"] == "Person"
    assert spec["json_schema"]["strict"] is True and spec["json_schema"]["schema"]["required"] == ["name", "age"]
    with claude.messages.stream(model=MINI, max_tokens=64, messages=ASK, output_format=Person) as stream:
        streamed = stream.get_final_message()
    assert streamed.parsed_output == Person(name="mock-name", age=1)
    assert sent_upstream(gateway)["response_format"]["type"] == "json_schema"
    _async_parse_then_each_charged_once(gateway, MINI, [parsed.usage, streamed.usage])


class Card(BaseModel):
    name: str
    age: int = 3


def test_a_schema_openai_cannot_enforce_is_sent_unenforced(gateway: Gateway) -> None:
    """A schema outside OpenAI's strict mode (a property not required: a default) goes without
    `strict` (OpenAI would refuse it), followed, not enforced; the beta's `output_format` is carried
    as `output_config.format` is."""
    claude = gateway.anthropic()
    parsed = claude.messages.parse(model=MINI, max_tokens=64, messages=ASK, output_format=Card)
    assert parsed.parsed_output == Card(name="mock-name")
    spec = sent_upstream(gateway)["response_format"]["json_schema"]
    assert "strict" not in spec and spec["name"] == "Card"
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    beta = claude.messages.create(model=MINI, max_tokens=64, messages=ASK,
                                  extra_body={"output_format": {"type": "json_schema", "schema": schema}})
    assert [b.text for b in beta.content if b.type == "text"] == ['{"n": 1}']
    assert sent_upstream(gateway)["response_format"]["json_schema"] == {"name": "output", "schema": schema, "strict": True}
    assert len(gateway.settled_rows(2)) == 2


def test_a_structured_output_openai_cannot_carry_is_refused_before_the_quota(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """What the translation cannot carry — `output_config.effort`, a format not json_schema, one
    without a schema — is a 400 in Anthropic's shape naming the field, nothing reserved or charged."""
    gw = gateway_factory(default_plan="requests=1/1m")
    claude = gw.anthropic()
    cases = [({"output_config": {"effort": "low"}}, "output_config.effort"),
             ({"output_config": {"format": {"type": "json"}}}, "output_config.format.type"),
             ({"output_format": {"type": "json_schema"}}, "output_format.schema")]
    for body, param in cases:
        with pytest.raises(anthropic.BadRequestError) as caught:
            claude.messages.create(model=MINI, max_tokens=64, messages=ASK, extra_body=body)
        assert caught.value.status_code == 400 and param in caught.value.message, caught.value.message
        assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "error"
    served = claude.messages.create(model=MINI, max_tokens=64, messages=ASK)
    assert served.content[0].type == "text" and served.content[0].text == "Echo: who is it?"
    assert [r["model"] for r in gw.settled_rows(1)] == [MINI]


def test_a_strict_tool_reaches_an_openai_model_strict_when_openai_can_enforce_it(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """An Anthropic tool's `strict: true` (strict tool use) is sent to an OpenAI model as
    `function.strict: true` when the schema fits OpenAI's strict mode, else without it (OpenAI would
    refuse it), as a structured output is; `strict: false` sends nothing. A `strict` that is no boolean
    is a 400 naming `tools.0.strict` for an OpenAI model (nothing reserved) and the Claude API's own 400
    for a Claude model."""
    gw = gateway_factory(default_plan="requests=3/1m")
    claude = gw.anthropic()
    fits = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
            "additionalProperties": False}
    loose = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools: list[anthropic.types.ToolParam] = [
        {"name": "fits", "input_schema": fits, "strict": True},
        {"name": "loose", "input_schema": loose, "strict": True},
        {"name": "unasked", "input_schema": fits, "strict": False},
    ]
    answer = claude.messages.create(model=MINI, max_tokens=64, messages=ASK, tools=tools)
    assert answer.stop_reason == "tool_use"
    sent = {tool["function"]["name"]: tool["function"].get("strict") for tool in sent_upstream(gw)["tools"]}
    assert sent == {"fits": True, "loose": None, "unasked": None}
    wrong: Any = [{"name": "fits", "input_schema": fits, "strict": "yes"}]
    for model, param in ((MINI, "tools.0.strict"), (SONNET, "tools.0.custom.strict")):
        with pytest.raises(anthropic.BadRequestError) as caught:
            claude.messages.create(model=model, max_tokens=64, messages=ASK, tools=wrong)
        assert caught.value.message.startswith("Error code: 400") and param in caught.value.message, caught.value.message
    on_claude = claude.messages.create(model=SONNET, max_tokens=64, messages=ASK, tools=tools[:1])
    assert on_claude.stop_reason == "tool_use"
    rows = gw.settled_rows(3)  # (the Claude API's 400 is a request it answered: recorded, no tokens)
    assert [(r["model"], r["status"]) for r in rows] == [(MINI, 200), (SONNET, 400), (SONNET, 200)]
