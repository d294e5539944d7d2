"""The Anthropic translator: request bodies the official SDK's types accept, responses built with its models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from anthropic.types import Message, TextBlock, ToolUseBlock
from anthropic.types import Usage as AnthropicUsage

from sentinel.native import ChatRequest, NativeValidationError, TranslationError
from sentinel.native.anthropic import build_anthropic_request, parse_anthropic_response
from sentinel.native.validation import parse_chat_request
from tests.support.payloads import ANTHROPIC_STOP_REASONS, WEATHER_TOOL

Check = Callable[[dict[str, Any]], dict[str, Any]]


def call(cid: str, city: str) -> dict[str, Any]:
    return {"id": cid, "type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}


def request(*messages: dict[str, Any], **fields: Any) -> ChatRequest:
    return parse_chat_request({"messages": list(messages), **fields})


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def message(
    *blocks: TextBlock | ToolUseBlock, stop: str | None = "end_turn", cache_read: int | None = None
) -> dict[str, Any]:
    """A Messages API response exactly as the anthropic SDK models it."""
    return Message(
        id="msg_01",
        type="message",
        role="assistant",
        model="claude-sonnet-4-5",
        content=list(blocks),
        stop_reason=stop,
        stop_sequence=None,
        usage=AnthropicUsage(input_tokens=20, output_tokens=5, cache_read_input_tokens=cache_read),
    ).model_dump(mode="json")


def text(value: str) -> TextBlock:
    return TextBlock(type="text", text=value)


def tool_use(tid: str, city: str) -> ToolUseBlock:
    return ToolUseBlock(type="tool_use", id=tid, name="get_weather", input={"city": city})


def test_minimal_request(anthropic_wire: Check) -> None:
    body = build_anthropic_request(request(user("hi")), "claude-sonnet-4-5", stream=False)
    anthropic_wire(body)
    assert body == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }


def test_parameters_and_stop_sequences(anthropic_wire: Check) -> None:
    body = build_anthropic_request(
        request(user("hi"), max_tokens=50, temperature=0.3, stop="END", stream=True),
        "m",
        stream=True,
        default_max_tokens=999,
    )
    anthropic_wire(body)
    assert (body["max_tokens"], body["temperature"]) == (50, 0.3) and "top_p" not in body
    assert build_anthropic_request(request(user("hi"), top_p=0.9), "m", stream=False)["top_p"] == 0.9
    assert body["stop_sequences"] == ["END"]
    assert body["stream"] is True
    listed = build_anthropic_request(
        request(user("hi"), stop=["a", "b"]), "m", stream=False, default_max_tokens=7
    )
    assert listed["stop_sequences"] == ["a", "b"] and listed["max_tokens"] == 7
    assert "stream" not in listed


@pytest.mark.parametrize(("given", "sent"), [(0.0, 0.0), (1.0, 1.0), (1.7, 1.0), (2.0, 1.0)])
def test_temperature_is_clamped_to_anthropic_range(given: float, sent: float) -> None:
    assert (
        build_anthropic_request(request(user("hi"), temperature=given), "m", stream=False)["temperature"]
        == sent
    )


def test_system_messages_are_lifted_and_joined(anthropic_wire: Check) -> None:
    req = request(
        {"role": "system", "content": "Be brief."},
        {
            "role": "system",
            "content": [{"type": "text", "text": "Answer in "}, {"type": "text", "text": "French."}],
        },
        user("hi"),
    )
    body = build_anthropic_request(req, "m", stream=False)
    anthropic_wire(body)
    assert body["system"] == "Be brief.\nAnswer in French."
    assert [t["role"] for t in body["messages"]] == ["user"]


def test_consecutive_same_role_turns_are_merged(anthropic_wire: Check) -> None:
    req = request(
        user("one"),
        user("two"),
        {"role": "assistant", "content": "three"},
        {"role": "assistant", "content": "four"},
        user("five"),
    )
    body = build_anthropic_request(req, "m", stream=False)
    anthropic_wire(body)
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "three"}, {"type": "text", "text": "four"}],
        },
        {"role": "user", "content": [{"type": "text", "text": "five"}]},
    ]


def test_conversation_must_start_with_user() -> None:
    req = request({"role": "system", "content": "s"}, {"role": "assistant", "content": "hello"}, user("hi"))
    with pytest.raises(NativeValidationError) as info:
        build_anthropic_request(req, "m", stream=False)
    assert info.value.message == "First non-system message must be from user role"
    assert info.value.param == "messages.1.role"


def test_conversation_needs_a_non_system_message() -> None:
    with pytest.raises(NativeValidationError) as info:
        build_anthropic_request(request({"role": "system", "content": "s"}), "m", stream=False)
    assert info.value.message == "Conversation must contain at least one user message"


def test_empty_turn_is_rejected_clearly() -> None:
    req = request(user("hi"), {"role": "assistant", "content": "a"}, user(""))
    with pytest.raises(NativeValidationError) as info:
        build_anthropic_request(req, "m", stream=False)
    assert info.value.param == "messages.2.content"
    assert "empty" in info.value.message


@pytest.mark.parametrize("said", ["", " \n", [{"type": "text", "text": ""}]])
def test_an_empty_assistant_answer_replayed_is_left_out(anthropic_wire: Check, said: Any) -> None:
    """Claude may answer nothing (an `end_turn` with no text: the native answer's content is `""`);
    the client replays it. Refused as an empty message, every later turn of a conversation bound to
    Claude was a 400. The empty assistant turn is left out and the user turns around it merge."""
    req = request(user("hi"), {"role": "assistant", "content": said}, user("again"))
    body = build_anthropic_request(req, "m", stream=False)
    anthropic_wire(body)
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "again"}]}]


def test_whitespace_only_text_is_left_out(anthropic_wire: Check) -> None:
    """Anthropic refuses a text block that is only whitespace ("text content blocks must contain
    non-whitespace text"): a model's "\\n\\n" beside its tool call, replayed by the client, made every
    later turn of the conversation a 400. It is left out, as empty text is; a tool result of only
    whitespace is sent without content."""
    req = request(
        user("weather?"),
        {"role": "assistant", "content": "\n\n", "tool_calls": [call("toolu_1", "Paris")]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": " \n"},
        {"role": "user", "content": [{"type": "text", "text": " "}, {"type": "text", "text": "and Rome?"}]},
        tools=[WEATHER_TOOL],
    )
    body = build_anthropic_request(req, "m", stream=False)
    anthropic_wire(body)
    assert body["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1"}, {"type": "text", "text": "and Rome?"}]},
    ]


def test_a_whitespace_only_turn_is_an_empty_message() -> None:
    """A turn of nothing but whitespace has nothing Anthropic accepts: refused as an empty message (so
    the native service tries the tier's next candidate while the conversation is not bound)."""
    with pytest.raises(NativeValidationError) as info:
        build_anthropic_request(request(user(" \t\n")), "m", stream=False)
    assert info.value.param == "messages.0.content"
    assert "empty" in info.value.message


@pytest.mark.parametrize(
    ("systems", "sent"), [([""], None), ([" \n", ""], None), (["Be brief.", "", "Be kind."], "Be brief.\nBe kind.")]
)
def test_empty_system_messages_are_left_out(anthropic_wire: Check, systems: list[str], sent: str | None) -> None:
    """Anthropic refuses an empty or whitespace-only `system` (400 "system: text content blocks must be
    non-empty"); a client sends an empty system message when no prompt is set, and OpenAI takes it."""
    req = request(*({"role": "system", "content": text} for text in systems), user("hi"))
    body = build_anthropic_request(req, "m", stream=False)
    anthropic_wire(body)
    assert body.get("system") == sent


def test_a_final_assistant_turn_loses_its_trailing_whitespace(anthropic_wire: Check) -> None:
    """A prefill ending in whitespace is refused by Anthropic (400 "final assistant content cannot end
    with trailing whitespace"), taken by OpenAI: its trailing whitespace is left out; an earlier
    assistant turn keeps its own."""
    req = request(user("a"), {"role": "assistant", "content": "one \n"}, user("b"),
                  {"role": "assistant", "content": [{"type": "text", "text": "Sure, "}, {"type": "text", "text": "\n"}]})
    body = build_anthropic_request(req, "m", stream=False)
    anthropic_wire(body)
    assert body["messages"][1]["content"] == [{"type": "text", "text": "one \n"}]
    assert body["messages"][3]["content"] == [{"type": "text", "text": "Sure,"}]


@pytest.mark.parametrize(("stop", "param"), [("\n", "stop"), (["END", " \t"], "stop.1")])
def test_a_whitespace_only_stop_sequence_cannot_be_carried(stop: Any, param: str) -> None:
    """Anthropic refuses a stop sequence of only whitespace (400 "each stop sequence must contain
    non-whitespace"); OpenAI takes `"\\n"`. Refused by the translation (before anything is sent; a tier's
    other candidate may carry it), naming the sequence."""
    with pytest.raises(NativeValidationError) as info:
        build_anthropic_request(request(user("hi"), stop=stop), "m", stream=False)
    assert info.value.param == param
    assert "whitespace" in info.value.message


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
        (None, None),
    ],
)
def test_tools_and_tool_choice(anthropic_wire: Check, choice: Any, wire: Any) -> None:
    fields: dict[str, Any] = {"tools": [WEATHER_TOOL]}
    if choice is not None:
        fields["tool_choice"] = choice
    body = build_anthropic_request(request(user("hi"), **fields), "m", stream=False)
    anthropic_wire(body)
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": WEATHER_TOOL["function"]["description"],
            "input_schema": WEATHER_TOOL["function"]["parameters"],
        }
    ]
    assert body.get("tool_choice") == wire


def test_tool_round_trip(anthropic_wire: Check) -> None:
    # 1. the client asks with tools
    first = build_anthropic_request(
        request(user("Weather in Paris and Oslo?"), tools=[WEATHER_TOOL]), "m", stream=False
    )
    anthropic_wire(first)
    # 2. the provider answers with two parallel tool_use blocks
    reply = parse_anthropic_response(
        message(
            text("Let me check."), tool_use("toolu_1", "Paris"), tool_use("toolu_2", "Oslo"), stop="tool_use"
        ),
        provider="anthropic",
        tier="complex",
        created=1700000000,
    )
    assert reply.choices[0].finish_reason == "tool_calls"
    client_view = reply.to_response().to_dict()["choices"][0]["message"]
    assert client_view == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            },
            {
                "id": "toolu_2",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Oslo"}},
            },
        ],
    }
    # 3. the client echoes the calls and sends both results: they become ONE user turn of tool_result blocks
    follow_up = request(
        user("Weather in Paris and Oslo?"),
        client_view,
        {"role": "tool", "tool_call_id": "toolu_1", "content": "21C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "5C"}]},
        tools=[WEATHER_TOOL],
    )
    second = build_anthropic_request(follow_up, "m", stream=False)
    anthropic_wire(second)
    assert second["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Oslo"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "21C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "5C"},
            ],
        },
    ]
    # 4. the final answer
    final = parse_anthropic_response(message(text("Warm in Paris.")), provider="anthropic", tier="complex")
    assert final.choices[0].message.content == "Warm in Paris."
    assert final.choices[0].message.tool_calls is None


def test_user_text_after_tool_results_joins_their_turn_after_them(anthropic_wire: Check) -> None:
    req = request(
        user("hi"),
        {"role": "assistant", "content": None, "tool_calls": [call("t1", "Paris")]},
        {"role": "tool", "tool_call_id": "t1", "content": ""},
        user("and now?"),
        tools=[WEATHER_TOOL],
    )
    body = build_anthropic_request(req, "m", stream=False)
    anthropic_wire(body)
    assert body["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "t1"}, {"type": "text", "text": "and now?"}],
    }


def test_tool_turns_without_tools_are_not_carried() -> None:
    """Anthropic refuses tool_use/tool_result blocks in a request without `tools` ("Requests which
    include `tool_use` or `tool_result` blocks must define tools"); OpenAI takes them: a
    NativeValidationError naming `tools`, so a tier candidate that can carry it is tried."""
    req = request(
        user("hi"),
        {"role": "assistant", "content": None, "tool_calls": [call("t1", "Paris")]},
        {"role": "tool", "tool_call_id": "t1", "content": "21C"},
        user("sum it up"),
    )
    with pytest.raises(NativeValidationError) as raised:
        build_anthropic_request(req, "m", stream=False)
    assert raised.value.param == "tools"


def test_images_become_image_blocks(anthropic_wire: Check) -> None:
    req = request(
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                {"type": "text", "text": "compare"},
            ],
        }
    )
    body = build_anthropic_request(req, "m", stream=False)
    anthropic_wire(body)
    assert body["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "compare"},
    ]


def test_an_image_urls_scheme_in_another_case_is_sent_in_lower_case(anthropic_wire: Check) -> None:
    req = request({"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "Data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "HTTPS://example.com/Cat.JPG"}},
    ]})
    body = build_anthropic_request(req, "m", stream=False)
    anthropic_wire(body)
    assert body["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/Cat.JPG"}},
    ]


def test_unsupported_image_url_is_a_validation_error() -> None:
    with pytest.raises(NativeValidationError) as info:  # (refused by the request model itself now)
        req = request({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]})
        build_anthropic_request(req, "m", stream=False)
    assert info.value.param == "messages.0.content.0.image_url.url"


def test_response_with_usage_including_cache() -> None:
    reply = parse_anthropic_response(
        message(text("Hello "), text("world")), provider="anthropic", tier="simple", created=5
    )
    assert reply.to_response().to_dict() == {
        "id": "msg_01",
        "object": "chat.completion",
        "created": 5,
        "model": "claude-sonnet-4-5",
        "provider": "anthropic",
        "tier": "simple",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello world"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
    }
    cached = parse_anthropic_response(message(text("x"), cache_read=100), provider="anthropic", tier="simple")
    assert cached.usage is not None
    assert (cached.usage.prompt_tokens, cached.usage.total_tokens) == (120, 125)


@pytest.mark.parametrize(("stop", "finish"), [*ANTHROPIC_STOP_REASONS, (None, "stop")])
def test_stop_reason_mapping(stop: str | None, finish: str) -> None:
    reply = parse_anthropic_response(message(text("x"), stop=stop), provider="anthropic", tier="simple")
    assert reply.choices[0].finish_reason == finish


def test_thinking_blocks_are_not_part_of_the_answer() -> None:
    body = message(text("answer"))
    body["content"].insert(0, {"type": "thinking", "thinking": "hmm", "signature": "sig"})
    assert parse_anthropic_response(body, provider="anthropic", tier="simple").text() == "answer"


def test_missing_usage_is_left_to_the_caller() -> None:
    body = message(text("x"))
    del body["usage"]
    assert parse_anthropic_response(body, provider="anthropic", tier="simple").usage is None


@pytest.mark.parametrize("usage", [
    {"input_tokens": 1}, {"input_tokens": -1, "output_tokens": 2}, {"input_tokens": 1, "output_tokens": 10**12 + 1},
    {"input_tokens": 1.5, "output_tokens": 2}, "many",
])
def test_malformed_usage_is_left_to_the_caller_like_missing_usage(usage: Any) -> None:
    """The answer stays servable; the caller estimates its usage (a 502 would lose the record)."""
    body = message(text("x"))
    body["usage"] = usage
    assert parse_anthropic_response(body, provider="anthropic", tier="simple").usage is None


@pytest.mark.parametrize(
    ("mutate", "text_"),
    [
        (lambda b: b.update(type="error"), "not a message"),
        (lambda b: b.update(content=None), "no content list"),
        (lambda b: b.pop("id"), "'id'"),
        (
            lambda b: b["content"].append({"type": "tool_use", "id": "t", "name": "f", "input": "{}"}),
            "Malformed",
        ),
        (lambda b: b["content"].append({"type": "tool_use", "name": "f", "input": {}}), "no id or name"),
    ],
)
def test_malformed_responses_raise(mutate: Any, text_: str) -> None:
    body = message(text("x"))
    mutate(body)
    with pytest.raises(TranslationError) as info:
        parse_anthropic_response(body, provider="anthropic", tier="simple")
    assert text_ in info.value.message
