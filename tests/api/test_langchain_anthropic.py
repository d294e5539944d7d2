"""`langchain-anthropic`'s ChatAnthropic against Sentinel: invoke, stream and tool calls, on a Claude model
(relayed as it is) and on an OpenAI model (translated)."""

from __future__ import annotations

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool

from tests.api.conftest import Gateway


@tool
def lookup(q: str) -> str:
    """Look something up."""
    return f"found {q}"


def chat(gw: Gateway, model: str) -> ChatAnthropic:
    return ChatAnthropic(model=model, base_url=gw.url, api_key=gw.key, max_tokens=64, max_retries=0)  # type: ignore[call-arg]


@pytest.mark.parametrize("model", ["claude-3-5-haiku-20241022", "gpt-4o-mini"])
def test_invoke_stream_and_tools(gateway: Gateway, model: str) -> None:
    llm = chat(gateway, model)
    answer = llm.invoke("hello langchain")
    assert answer.content == "Echo: hello langchain"
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] == 3
    streamed = "".join(str(piece.content) if isinstance(piece.content, str) else "".join(
        p.get("text", "") for p in piece.content if isinstance(p, dict)) for piece in llm.stream("stream langchain"))
    assert streamed == "Echo: stream langchain"
    with_tools = llm.bind_tools([lookup])
    ask = HumanMessage("find the thing")
    called = with_tools.invoke([ask])
    assert called.tool_calls and called.tool_calls[0]["name"] == "lookup"
    call = called.tool_calls[0]
    result = ToolMessage(lookup.invoke(call["args"]), tool_call_id=call["id"])
    final = with_tools.invoke([ask, called, result])
    assert "Result: found" in str(final.content)
