"""The OpenAI translator: request bodies the official SDK's types accept, responses built with its models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessage, ChatCompletionMessageFunctionToolCall
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_message_function_tool_call import Function
from openai.types.completion_usage import CompletionUsage

from sentinel.native import ChatRequest, TranslationError, Usage
from sentinel.native.openai import build_openai_request, field_text, parse_openai_response
from sentinel.native.validation import parse_chat_request
from tests.support.payloads import WEATHER_TOOL

Check = Callable[[dict[str, Any]], dict[str, Any]]



def request(**fields: Any) -> ChatRequest:
    return parse_chat_request({"messages": [{"role": "user", "content": "hi"}], **fields})


def completion(
    *,
    content: str | None = "Hello",
    calls: list[tuple[str, str, str]] = (),
    finish: str = "stop",
    usage: bool = True,
) -> dict[str, Any]:
    """A chat.completion body exactly as the openai SDK models it (nulls included)."""
    tool_calls = [
        ChatCompletionMessageFunctionToolCall(
            id=cid, type="function", function=Function(name=name, arguments=args)
        )
        for cid, name, args in calls
    ]
    return ChatCompletion(
        id="chatcmpl-1",
        object="chat.completion",
        created=1732000000,
        model="gpt-4o-mini-2024-07-18",
        choices=[
            Choice(
                index=0,
                finish_reason=finish,
                message=ChatCompletionMessage(
                    role="assistant", content=content, tool_calls=tool_calls or None
                ),
            )
        ],
        usage=CompletionUsage(prompt_tokens=11, completion_tokens=7, total_tokens=18) if usage else None,
    ).model_dump(mode="json")


def test_request_sets_model_and_copies_parameters(openai_wire: Check) -> None:
    body = build_openai_request(
        request(temperature=1.5, max_tokens=100, stop=["END", "##"]), "gpt-4o-mini", stream=False
    )
    openai_wire(body)
    assert body == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 1.5,
        "max_tokens": 100,
        "stop": ["END", "##"],
    }
    assert build_openai_request(request(top_p=0.5), "gpt-4o-mini", stream=False)["top_p"] == 0.5


def test_single_stop_string_is_kept(openai_wire: Check) -> None:
    body = build_openai_request(request(stop="END"), "m", stream=False)
    openai_wire(body)
    assert body["stop"] == "END"


def test_stream_requests_usage(openai_wire: Check) -> None:
    body = build_openai_request(request(), "m", stream=True)
    openai_wire(body)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert "stream" not in build_openai_request(request(), "m", stream=False)


def test_content_parts_and_names_are_forwarded(openai_wire: Check) -> None:
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "high"}},
    ]
    req = parse_chat_request({"messages": [{"role": "user", "content": parts, "name": "ann"}]})
    body = build_openai_request(req, "m", stream=False)
    openai_wire(body)
    assert body["messages"] == [{"role": "user", "content": parts, "name": "ann"}]


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
    ],
)
def test_tools_and_tool_choice(openai_wire: Check, choice: Any, wire: Any) -> None:
    body = build_openai_request(request(tools=[WEATHER_TOOL], tool_choice=choice), "m", stream=False)
    openai_wire(body)
    assert body["tools"] == [WEATHER_TOOL]
    assert body["tool_choice"] == wire


def test_tool_choice_without_tools_is_dropped() -> None:
    assert "tool_choice" not in build_openai_request(request(tool_choice="none"), "m", stream=False)


def test_tool_round_trip(openai_wire: Check) -> None:
    # 1. the client asks with tools
    first = build_openai_request(request(tools=[WEATHER_TOOL]), "gpt-4o", stream=False)
    openai_wire(first)
    # 2. the provider answers with a tool call (arguments are a JSON string on the wire)
    reply = parse_openai_response(
        completion(
            content=None, calls=[("call_abc", "get_weather", '{"city": "Paris"}')], finish="tool_calls"
        ),
        provider="openai",
        tier="simple",
    )
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    assert message.tool_calls is not None
    call = message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == (
        "call_abc",
        "get_weather",
        {"city": "Paris"},
    )
    client_view = reply.to_response().to_dict()["choices"][0]["message"]
    assert client_view["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    # 3. the client echoes the call and sends the result; the provider's id goes back unchanged
    follow_up = parse_chat_request(
        {
            "tools": [WEATHER_TOOL],
            "messages": [
                {"role": "user", "content": "hi"},
                client_view,
                {"role": "tool", "tool_call_id": "call_abc", "content": '{"temp": 21}'},
            ],
        }
    )
    second = build_openai_request(follow_up, "gpt-4o", stream=False)
    openai_wire(second)
    assistant, tool = second["messages"][1], second["messages"][2]
    assert assistant["tool_calls"][0]["id"] == "call_abc"
    assert isinstance(assistant["tool_calls"][0]["function"]["arguments"], str)
    assert orjson.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert tool == {"role": "tool", "tool_call_id": "call_abc", "content": '{"temp": 21}'}
    # 4. the final answer
    final = parse_openai_response(completion(content="21 degrees"), provider="openai", tier="simple")
    assert final.choices[0].message.content == "21 degrees"


def test_openai_wire_check_catches_object_arguments(openai_wire: Check) -> None:
    """The SDK check is strict enough to have caught the original's object-arguments bug."""
    bad = {
        "model": "m",
        "messages": [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}
                ],
            }
        ],
    }
    with pytest.raises(ValueError):
        openai_wire(bad)


def test_response_fields_and_usage() -> None:
    reply = parse_openai_response(completion(), provider="openai", tier="moderate")
    response = reply.to_response()
    assert response.to_dict() == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1732000000,
        "model": "gpt-4o-mini-2024-07-18",
        "provider": "openai",
        "tier": "moderate",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": "many"}, {"prompt_tokens": -1, "completion_tokens": 2},
    {"prompt_tokens": 1, "completion_tokens": 10**12 + 1}, {"prompt_tokens": True, "completion_tokens": 2}, [],
])
def test_malformed_usage_is_left_to_the_caller_like_missing_usage(usage: Any) -> None:
    """The answer stays servable; the caller estimates its usage (a 502 would lose the record)."""
    body = completion()
    body["usage"] = usage
    assert parse_openai_response(body, provider="openai", tier="simple").usage is None


def test_missing_usage_is_left_to_the_caller() -> None:
    reply = parse_openai_response(completion(usage=False), provider="openai", tier="simple")
    assert reply.usage is None
    assert reply.text() == "Hello"
    with pytest.raises(ValueError):
        reply.to_response()
    assert reply.to_response(Usage.of(3, 2)).usage.total_tokens == 5


@pytest.mark.parametrize(
    "extra",
    [
        {"reasoning_content": "Let me think."},
        {"reasoning": "Let me think."},
        {"reasoning_content": "Let me think.", "reasoning": "Let me think."},  # the same text twice: once
        {"refusal": "Let me think."},
        {"function_call": {"name": "Let me", "arguments": " think."}},
        {"audio": {"id": "a1", "transcript": "Let me think."}},
    ],
)
def test_output_beside_the_content_is_counted_as_a_stream_counts_it(extra: dict[str, Any]) -> None:
    """Only `content` and tool calls were counted: a provider answering without usage had a refusal or
    its reasoning left out of the estimate, though the relay and the stream normaliser count them."""
    body = completion(content="ok", usage=False)
    body["choices"][0]["message"].update(extra)
    assert parse_openai_response(body, provider="openai", tier="simple").text() == "ok" + "Let me think."


def test_a_refusal_is_shown_and_reasoning_only_counted() -> None:
    """The refusal was dropped: a native client got an answer of nothing (content null)."""
    body = completion(content=None, usage=False)
    body["choices"][0]["message"].update(refusal="I can't help with that.", reasoning_content=" Harmful.")
    reply = parse_openai_response(body, provider="openai", tier="simple")
    assert reply.text() == "I can't help with that. Harmful."
    message = reply.to_response(Usage.of(3, 9)).to_dict()["choices"][0]["message"]
    assert message == {"role": "assistant", "refusal": "I can't help with that."}


@pytest.mark.parametrize(
    ("upstream", "unified"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("tool_calls", "tool_calls"),
        ("content_filter", "content_filter"),
        ("function_call", "tool_calls"),
    ],
)
def test_finish_reason_mapping(upstream: str, unified: str) -> None:
    reply = parse_openai_response(completion(finish=upstream), provider="openai", tier="simple")
    assert reply.choices[0].finish_reason == unified


def test_unknown_or_missing_finish_reason_means_stop() -> None:
    body = completion()
    body["choices"][0]["finish_reason"] = None
    assert parse_openai_response(body, provider="openai", tier="simple").choices[0].finish_reason == "stop"
    body["choices"][0]["finish_reason"] = "weird"
    assert parse_openai_response(body, provider="openai", tier="simple").choices[0].finish_reason == "stop"


def test_parallel_tool_calls_keep_their_ids_and_order() -> None:
    body = completion(
        content=None,
        calls=[("call_1", "get_weather", '{"city":"Paris"}'), ("call_2", "get_weather", '{"city":"Oslo"}')],
        finish="tool_calls",
    )
    calls = parse_openai_response(body, provider="openai", tier="simple").choices[0].message.tool_calls
    assert calls is not None
    assert [(c.id, c.function.arguments["city"]) for c in calls] == [("call_1", "Paris"), ("call_2", "Oslo")]


def test_empty_arguments_mean_no_arguments_and_missing_ids_are_invented() -> None:
    body = completion(content=None, calls=[("x", "now", "")], finish="tool_calls")
    del body["choices"][0]["message"]["tool_calls"][0]["id"]
    calls = parse_openai_response(body, provider="openai", tier="simple").choices[0].message.tool_calls
    assert calls is not None
    assert calls[0].function.arguments == {}
    assert calls[0].id.startswith("call_") and len(calls[0].id) > 10


@pytest.mark.parametrize(
    ("mutate", "text"),
    [
        (
            lambda b: b["choices"][0]["message"]["tool_calls"][0]["function"].update(arguments="{not json"),
            "Malformed tool call arguments for 'f'",
        ),
        (
            lambda b: b["choices"][0]["message"]["tool_calls"][0]["function"].update(arguments="[1, 2]"),
            "expected a JSON object",
        ),
        (
            lambda b: b["choices"][0]["message"]["tool_calls"][0]["function"].update(name=""),
            "no function name",
        ),
        (lambda b: b.pop("id"), "'id'"),
        (lambda b: b.pop("model"), "'model'"),
        (lambda b: b.update(created="now"), "'created'"),
        (lambda b: b.update(choices=[]), "no choices"),
        (lambda b: b["choices"][0]["message"].update(role="user"), "not from the assistant"),
    ],
)
def test_malformed_responses_raise(mutate: Any, text: str) -> None:
    body = completion(content=None, calls=[("c1", "f", '{"a": 1}')], finish="tool_calls")
    mutate(body)
    with pytest.raises(TranslationError) as info:
        parse_openai_response(body, provider="openai", tier="simple")
    assert text in info.value.message
    assert info.value.provider == "openai"



@pytest.mark.parametrize("arguments", ['{"a": "cu', "[1, 2", "{not json"])
def test_a_call_cut_by_the_output_cap_has_no_arguments(arguments: str) -> None:
    """Arguments that are not a whole object are an error (above) unless the answer ended at its
    output cap (`length`): the call it was writing was cut, and the answer stands (finish `length`)."""
    body = completion(content=None, calls=[("c1", "f", arguments)], finish="length")
    choice = parse_openai_response(body, provider="openai", tier="simple").choices[0]
    assert choice.finish_reason == "length"
    assert [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls or ()] == [("c1", "f", {})]

def test_non_object_body_raises() -> None:
    with pytest.raises(TranslationError):
        parse_openai_response(["not", "a", "dict"], provider="openai", tier="simple")


@pytest.mark.parametrize("value", [
    "é\"", 1.5, [], {}, [[[]], {}], {"a": [1, {"b": None, "c": True}], "d": "x"},
])
def test_field_text_is_compact_json_at_any_depth(value: object) -> None:
    """orjson writes 254 levels of the 1,024 it reads: a field nested deeper (an answer's arguments
    sent as an object) was counted as no text; it is orjson's compact text written without recursion."""
    assert field_text(value) == (value if isinstance(value, str) else orjson.dumps(value).decode())
    deep: object = value
    for _ in range(600):
        deep = {"k": [deep]}
    assert field_text(deep) == '{"k":[' * 600 + orjson.dumps(value).decode() + "]}" * 600
