"""`langchain-openai`'s ChatOpenAI against Sentinel: invoke, stream (`stream_usage=True`: the usage
metadata as the provider reported it), tool calls and `with_structured_output`, on an OpenAI model
(relayed as it is) and on a Claude model (translated) — each call charged once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, SecretStr

from tests.api.conftest import Gateway

MINI = "gpt-4o-mini"
HAIKU = "claude-3-5-haiku-20241022"


class Person(BaseModel):
    name: str
    age: int


@tool
def lookup(q: str) -> str:
    """Look something up."""
    return f"found {q}"


def chat(gw: Gateway, model: str) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=gw.url + "/v1", api_key=SecretStr(gw.key), max_retries=0,
                      stream_usage=True)


def sum_chunks(pieces: list[Any]) -> AIMessageChunk:
    """A stream's chunks added up, as LangChain joins them (usage summed: once if sent once)."""
    total = pieces[0]
    assert isinstance(total, AIMessageChunk)
    for piece in pieces[1:]:
        total += piece
    return total


@pytest.mark.parametrize("model", [MINI, HAIKU])
def test_invoke_stream_tools_and_structured_output(gateway: Gateway, model: str) -> None:
    llm = chat(gateway, model)
    answer = llm.invoke("hello langchain")
    assert answer.content == "Echo: hello langchain"
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] == 3
    charges = [(answer.usage_metadata["input_tokens"], 3)]

    streamed = sum_chunks(list(llm.stream("stream langchain")))
    assert streamed.content == "Echo: stream langchain"
    usage = streamed.usage_metadata  # one usage chunk, summed once: not doubled, not missing
    assert usage is not None and usage["output_tokens"] == 3
    assert usage["total_tokens"] == usage["input_tokens"] + 3
    charges.append((usage["input_tokens"], 3))

    with_tools = llm.bind_tools([lookup])
    ask = HumanMessage("find the thing")
    called = with_tools.invoke([ask])
    assert called.tool_calls and called.tool_calls[0]["name"] == "lookup"
    assert called.tool_calls[0]["args"] == {"q": "mock-q"}
    call = called.tool_calls[0]
    final = with_tools.invoke([ask, called, ToolMessage(lookup.invoke(call["args"]), tool_call_id=call["id"])])
    assert final.content == "Result: found mock-q"
    for message in (called, final):
        assert message.usage_metadata is not None
        charges.append((message.usage_metadata["input_tokens"], message.usage_metadata["output_tokens"]))

    streamed_call = sum_chunks(list(with_tools.stream([ask])))
    assert [c["args"] for c in streamed_call.tool_calls] == [{"q": "mock-q"}]
    assert streamed_call.usage_metadata is not None
    charges.append((streamed_call.usage_metadata["input_tokens"], streamed_call.usage_metadata["output_tokens"]))

    async def on_the_async_client() -> list[tuple[int, int]]:
        fresh = chat(gateway, model)
        answer = await fresh.ainvoke("hello async")
        streamed = sum_chunks([piece async for piece in fresh.astream("stream async")])
        assert (answer.content, streamed.content) == ("Echo: hello async", "Echo: stream async")
        assert answer.usage_metadata is not None and streamed.usage_metadata is not None
        return [(m["input_tokens"], m["output_tokens"]) for m in (answer.usage_metadata, streamed.usage_metadata)]

    charges.extend(asyncio.run(on_the_async_client()))
    by_tool = llm.with_structured_output(Person, method="function_calling")
    assert by_tool.invoke("who is it?") == Person(name="mock-name", age=1)
    rows = gateway.settled_rows(len(charges) + 1)
    assert sorted((r["input_tokens"], r["output_tokens"]) for r in rows[:-1]) == sorted(charges)


# langchain-openai's stream of a json_schema structured output dumps the SDK's `parsed` message, and
# pydantic warns of the model it holds — on the client, whichever server answered.
@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
def test_structured_output_by_json_schema(gateway: Gateway) -> None:
    """`with_structured_output`'s default (`json_schema`: the SDK's `parse`, streamed by its stream
    helper) on an OpenAI model and on a Claude model (translated to its `output_config`), each charged once."""
    structured = chat(gateway, MINI).with_structured_output(Person)
    assert structured.invoke("who is it?") == Person(name="mock-name", age=1)
    streamed = list(structured.stream("who is it?"))
    assert streamed[-1] == Person(name="mock-name", age=1)
    assert chat(gateway, HAIKU).with_structured_output(Person).invoke("who is it?") == Person(name="mock-name", age=1)
    assert list(chat(gateway, HAIKU).with_structured_output(Person).stream("who is it?"))[-1] == Person(
        name="mock-name", age=1)
    assert sorted(r["model"] for r in gateway.settled_rows(4)) == [HAIKU, HAIKU, MINI, MINI]


def test_on_the_responses_api(gateway: Gateway) -> None:
    """`use_responses_api=True` (what ChatOpenAI picks for built-in tools and reasoning): invoke, stream
    with its usage, a tool call and a structured output through `/v1/responses`, each charged once."""
    llm = ChatOpenAI(model=MINI, base_url=gateway.url + "/v1", api_key=SecretStr(gateway.key), max_retries=0,
                     stream_usage=True, use_responses_api=True)
    answer = llm.invoke("hello responses")
    assert answer.text == "Echo: hello responses"
    streamed = sum_chunks(list(llm.stream("stream responses")))
    assert streamed.text == "Echo: stream responses"
    called = llm.bind_tools([lookup]).invoke("find the thing")
    assert [call["args"] for call in called.tool_calls] == [{"q": "mock-q"}]
    assert llm.with_structured_output(Person).invoke("who is it?") == Person(name="mock-name", age=1)
    charges = []
    for message in (answer, streamed, called):
        assert message.usage_metadata is not None
        charges.append((message.usage_metadata["input_tokens"], message.usage_metadata["output_tokens"]))
    rows = gateway.settled_rows(4)
    assert {r["endpoint"] for r in rows} == {"responses"}
    assert sorted((r["input_tokens"], r["output_tokens"]) for r in rows[:3]) == sorted(charges)
