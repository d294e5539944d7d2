"""The `openai` SDK's helpers through Sentinel, unchanged: structured outputs
(`chat.completions.parse`, `responses.parse`), the chat stream helper (`chat.completions.stream`: its
events, `get_final_completion`, `stream_options`), sync and async — each charged once, as the provider
reported it; a structured output asked of a Claude model is translated to Claude's (`output_config`),
its JSON mode (`json_object`, which Claude has not) a 400 in OpenAI's shape before anything is reserved."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.api.conftest import Gateway

MINI = "gpt-4o-mini"
HAIKU = "claude-3-5-haiku-20241022"
ASK = [{"role": "user", "content": "who is it?"}]


class Person(BaseModel):
    name: str
    age: int


def charged(gw: Gateway, usages: list[tuple[int, int]]) -> None:
    """The ledger holds one row per call, each with the (input, output) tokens the provider reported."""
    rows = gw.settled_rows(len(usages))
    assert sorted((r["input_tokens"], r["output_tokens"]) for r in rows) == sorted(usages)


def test_chat_parse_and_stream_helper(gateway: Gateway) -> None:
    client = gateway.openai()
    parsed = client.chat.completions.parse(model=MINI, messages=ASK, response_format=Person)
    message = parsed.choices[0].message
    assert message.parsed == Person(name="mock-name", age=1) and message.refusal is None
    assert parsed.usage is not None
    usages = [(parsed.usage.prompt_tokens, parsed.usage.completion_tokens)]
    with client.chat.completions.stream(model=MINI, messages=ASK, response_format=Person,
                                        stream_options={"include_usage": True}) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    kinds = [event.type for event in events]
    assert "".join(e.delta for e in events if e.type == "content.delta") == '{"name": "mock-name", "age": 1}'
    assert "content.done" in kinds and "chunk" in kinds
    assert final.choices[0].message.parsed == Person(name="mock-name", age=1)
    assert final.choices[0].finish_reason == "stop" and final.usage is not None
    assert final.usage.completion_tokens == 4
    usages.append((final.usage.prompt_tokens, final.usage.completion_tokens))
    with client.chat.completions.stream(model=MINI, messages=ASK) as plain:  # no usage asked: still charged
        text = "".join(event.delta for event in plain if event.type == "content.delta")
    assert text == "Echo: who is it?" and plain.get_final_completion().usage is None
    charged_before = gateway.settled_rows(3)
    assert charged_before[-1]["output_tokens"] == 4
    charged(gateway, [*usages, (charged_before[-1]["input_tokens"], 4)])


def test_strict_function_tools_through_the_stream_helper(gateway: Gateway) -> None:
    """`pydantic_function_tool` (a strict schema): the stream helper's argument events and the parsed
    call on an OpenAI model; on a Claude model too, its `strict` sent as the Anthropic tool's `strict`
    (it was a 400 naming `tools.0.function.strict`) — `strict: false` sends nothing."""
    client = gateway.openai()
    with client.chat.completions.stream(model=MINI, messages=ASK, tools=[openai.pydantic_function_tool(Person)],
                                        stream_options={"include_usage": True}) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.delta" in kinds and "tool_calls.function.arguments.done" in kinds
    calls = final.choices[0].message.tool_calls or []
    assert [call.function.parsed_arguments for call in calls] == [Person(name="mock-name", age=1)]
    on_claude = client.chat.completions.parse(model=HAIKU, messages=ASK, tools=[openai.pydantic_function_tool(Person)])
    called = on_claude.choices[0].message.tool_calls or []
    assert [call.function.parsed_arguments for call in called] == [Person(name="mock-name", age=1)]
    sent = claude_received(gateway)["tools"]
    assert [(tool["name"], tool.get("strict")) for tool in sent] == [("Person", True)]
    loose = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}, "strict": False}}
    plain = client.chat.completions.create(model=HAIKU, messages=ASK, tools=[loose])  # type: ignore[list-item]
    assert "strict" not in claude_received(gateway)["tools"][0]
    assert final.usage is not None and on_claude.usage is not None and plain.usage is not None
    charged(gateway, [(u.prompt_tokens, u.completion_tokens) for u in (final.usage, on_claude.usage, plain.usage)])


def claude_received(gw: Gateway) -> dict[str, Any]:
    """The body the mock Anthropic upstream last received on /v1/messages."""
    return httpx.get(f"{gw.settings.anthropic_api_url}/__mock/last_request",
                     params={"path": "/v1/messages"}, timeout=5).json()["body"]


def test_responses_parse_and_stream(gateway: Gateway) -> None:
    client = gateway.openai()
    parsed = client.responses.parse(model=MINI, input="who is it?", text_format=Person)
    assert parsed.output_parsed == Person(name="mock-name", age=1) and parsed.usage is not None
    usages = [(parsed.usage.input_tokens, parsed.usage.output_tokens)]
    with client.responses.stream(model=MINI, input="who is it?", text_format=Person) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.output_text.delta" in kinds and kinds[-1] == "response.completed"
    assert final.output_parsed == Person(name="mock-name", age=1) and final.usage is not None
    usages.append((final.usage.input_tokens, final.usage.output_tokens))
    charged(gateway, usages)


def test_the_async_client_helpers(gateway: Gateway) -> None:
    async def go() -> list[tuple[int, int]]:
        async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0) as client:
            parsed = await client.chat.completions.parse(model=MINI, messages=ASK, response_format=Person)
            assert parsed.choices[0].message.parsed == Person(name="mock-name", age=1)
            async with client.chat.completions.stream(model=MINI, messages=ASK, response_format=Person,
                                                      stream_options={"include_usage": True}) as stream:
                kinds = [event.type async for event in stream]
                final = await stream.get_final_completion()
            assert "content.done" in kinds and final.choices[0].message.parsed == Person(name="mock-name", age=1)
            answer = await client.responses.parse(model=MINI, input="who is it?", text_format=Person)
            assert answer.output_parsed == Person(name="mock-name", age=1)
            assert parsed.usage is not None and final.usage is not None and answer.usage is not None
            return [(parsed.usage.prompt_tokens, parsed.usage.completion_tokens),
                    (final.usage.prompt_tokens, final.usage.completion_tokens),
                    (answer.usage.input_tokens, answer.usage.output_tokens)]

    charged(gateway, asyncio.run(go()))


def last_upstream_body(gw: Gateway, path: str) -> dict[str, Any]:
    """The body the mock upstream last received on `path`."""
    base = gw.settings.anthropic_api_url
    return httpx.get(f"{base}/__mock/last_request", params={"path": path}, timeout=5).json()["body"]


def test_a_structured_output_reaches_claude_translated(gateway: Gateway) -> None:
    """`parse` (sync, async, the stream helper) on a Claude model: `response_format` json_schema is
    sent as Claude's `output_config.format` (the schema as the SDK made it; `name` and `strict` have
    no place there) and the JSON answer comes back `parsed` — each call charged once."""
    client = gateway.openai()
    parsed = client.chat.completions.parse(model=HAIKU, messages=ASK, response_format=Person)
    assert parsed.choices[0].message.parsed == Person(name="mock-name", age=1)
    assert parsed.choices[0].finish_reason == "stop" and parsed.usage is not None
    sent = last_upstream_body(gateway, "/v1/messages")
    fmt = sent["output_config"]["format"]
    assert set(sent["output_config"]) == {"format"} and set(fmt) == {"type", "schema"} and fmt["type"] == "json_schema"
    assert fmt["schema"]["title"] == "Person" and fmt["schema"]["required"] == ["name", "age"]
    assert "response_format" not in sent
    usages = [(parsed.usage.prompt_tokens, parsed.usage.completion_tokens)]
    with client.chat.completions.stream(model=HAIKU, messages=ASK, response_format=Person,
                                        stream_options={"include_usage": True}) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    assert "".join(e.delta for e in events if e.type == "content.delta") == '{"name": "mock-name", "age": 1}'
    assert final.choices[0].message.parsed == Person(name="mock-name", age=1) and final.usage is not None
    assert last_upstream_body(gateway, "/v1/messages")["output_config"]["format"]["type"] == "json_schema"
    usages.append((final.usage.prompt_tokens, final.usage.completion_tokens))

    async def parse_async() -> tuple[int, int]:
        async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0) as aclient:
            answer = await aclient.chat.completions.parse(model=HAIKU, messages=ASK, response_format=Person)
        assert answer.choices[0].message.parsed == Person(name="mock-name", age=1) and answer.usage is not None
        return answer.usage.prompt_tokens, answer.usage.completion_tokens

    usages.append(asyncio.run(parse_async()))
    assert all(output == 4 for _, output in usages)
    charged(gateway, usages)


def test_a_json_mode_for_claude_is_refused_before_the_quota(gateway_factory: Callable[..., Gateway]) -> None:
    """`json_object` (JSON of no schema): Claude has no such mode — a 400 in OpenAI's shape naming
    `response_format`, plain or streamed, nothing reserved (a plan of one request still serves one
    after) and nothing charged; so is a `json_schema` without a schema."""
    gw = gateway_factory(default_plan="requests=1/1m")
    client = gw.openai()
    ask = [{"role": "user", "content": "answer in json"}]
    refused: list[Any] = []
    for extra in ({}, {"stream": True}):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=HAIKU, messages=ask, response_format={"type": "json_object"},
                                           **extra)  # type: ignore[call-overload]
        refused.append(caught.value)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=HAIKU, messages=ask,
                                       response_format={"type": "json_schema", "json_schema": {"name": "x"}})
    refused.append(caught.value)
    for error in refused:
        assert error.status_code == 400 and "response_format" in error.message
        assert isinstance(error.body, dict) and error.body["type"] == "invalid_request_error"
    assert "json_object" in refused[0].message and "json_schema.schema" in refused[2].message
    served = client.chat.completions.create(model=HAIKU, messages=ASK)
    assert served.choices[0].message.content == "Echo: who is it?" and served.usage is not None
    charged(gw, [(served.usage.prompt_tokens, served.usage.completion_tokens)])


REFUSED = "I'm sorry, but I can't assist with that request."


def test_a_refusal_reaches_the_helpers_as_one(gateway: Gateway) -> None:
    """A structured output the model refuses (OpenAI's `refusal`, content null): `parse` and the stream
    helpers give the refusal and no `parsed` — no parse error —, and its words are charged, measured
    or, with no usage reported, counted from what streamed."""
    client = gateway.openai()
    ask = [{"role": "user", "content": "who is it? #mock:refusal"}]
    parsed = client.chat.completions.parse(model=MINI, messages=ask, response_format=Person)
    message = parsed.choices[0].message
    assert (message.content, message.refusal, message.parsed) == (None, REFUSED, None)
    with client.chat.completions.stream(model=MINI, messages=ask, response_format=Person) as stream:
        refusal = "".join(event.delta for event in stream if event.type == "refusal.delta")
        final = stream.get_final_completion().choices[0].message
    assert refusal == REFUSED and (final.refusal, final.parsed) == (REFUSED, None)
    with client.responses.stream(model=MINI, input="who is it? #mock:refusal #mock:no_usage",
                                 text_format=Person) as answer:
        kinds = [event.type for event in answer]
        response = answer.get_final_response()
    assert "response.refusal.done" in kinds and response.output_parsed is None
    assert [part.type for item in response.output if item.type == "message" for part in item.content] == ["refusal"]
    rows = gateway.settled_rows(3)
    assert [r["output_tokens"] for r in rows[:2]] == [9, 9]  # the provider's count: 9 words
    assert rows[2]["usage_source"] == "estimated" and rows[2]["output_tokens"] > 0
