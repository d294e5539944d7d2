"""The mock's Anthropic Messages API, driven by the official `anthropic` SDK over HTTP."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from tests.mock.mockwire import ANTHROPIC_AUTH, expected_prompt_tokens, sse_data

WEATHER = {
    "name": "get_weather",
    "description": "Weather",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
}
TIME = {
    "name": "get_time",
    "input_schema": {
        "type": "object",
        "properties": {"tz": {"type": "string", "enum": ["UTC", "CET"]}},
        "required": ["tz"],
    },
}


def test_messages_plain(claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(
        model="claude-3-5-haiku-20241022",
        max_tokens=100,
        system="sys prompt",
        messages=[{"role": "user", "content": "hello there"}],
    )
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.model == "claude-3-5-haiku-20241022"
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "Echo: hello there"  # type: ignore[union-attr]
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    assert msg.usage.input_tokens == expected_prompt_tokens("sys prompt", "hello there")
    assert msg.usage.output_tokens == 3


def test_messages_max_tokens_and_stop_sequences(claude: anthropic.Anthropic) -> None:
    cut = claude.messages.create(model="m", max_tokens=2, messages=[{"role": "user", "content": "a b c"}])
    assert cut.stop_reason == "max_tokens" and cut.content[0].text == "Echo: a"  # type: ignore[union-attr]
    stopped = claude.messages.create(
        model="m",
        max_tokens=50,
        stop_sequences=["END", "b"],
        messages=[{"role": "user", "content": "a b END c"}],
    )
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "b"
    assert stopped.content[0].text == "Echo: a "  # type: ignore[union-attr]
    assert stopped.usage.output_tokens == 2


def test_messages_stream_text(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="m", max_tokens=50, messages=[{"role": "user", "content": "stream these words"}]
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert pieces == ["Echo:", " stream", " these", " words"]
    assert final.content[0].text == "Echo: stream these words"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 4
    assert final.usage.input_tokens == expected_prompt_tokens("stream these words")


def test_messages_raw_event_sequence(http: httpx.Client) -> None:
    body = {
        "model": "m",
        "max_tokens": 10,
        "stream": True,
        "messages": [{"role": "user", "content": "hi you"}],
    }
    r = http.post("/v1/messages", headers=ANTHROPIC_AUTH, json=body)
    names = [line[7:] for line in r.text.split("\n") if line.startswith("event: ")]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    payloads = [json.loads(d) for d in sse_data(r.text)]
    assert [p["type"] for p in payloads] == names
    assert payloads[-2]["usage"]["output_tokens"] == 3 and payloads[-2]["delta"]["stop_reason"] == "end_turn"


def test_messages_tool_use_then_result(claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(
        model="m", max_tokens=100, tools=[WEATHER, TIME], messages=[{"role": "user", "content": "weather?"}]
    )
    assert msg.stop_reason == "tool_use"
    assert len(msg.content) == 1 and msg.content[0].type == "tool_use"
    use = msg.content[0]
    assert use.name == "get_weather" and use.input == {"city": "mock-city", "days": 1}
    assert use.id.startswith("toolu_")
    follow = claude.messages.create(
        model="m",
        max_tokens=100,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [use.model_dump()]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "rainy"}]},
        ],
    )
    assert follow.stop_reason == "end_turn"
    assert follow.content[0].text == "Result: rainy"  # type: ignore[union-attr]


def test_messages_stream_tool_use(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="m", max_tokens=100, tools=[WEATHER], messages=[{"role": "user", "content": "weather?"}]
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    partials = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert len(partials) > 1
    assert json.loads("".join(partials)) == {"city": "mock-city", "days": 1}
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use" and final.content[0].input == {"city": "mock-city", "days": 1}


@pytest.mark.parametrize("text", ["do it in parallel", "both #mock:parallel_tools"])
def test_messages_parallel_tool_use(claude: anthropic.Anthropic, text: str) -> None:
    with claude.messages.stream(
        model="m", max_tokens=100, tools=[WEATHER, TIME], messages=[{"role": "user", "content": text}]
    ) as stream:
        final = stream.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    assert [u.name for u in uses] == ["get_weather", "get_time"]
    assert uses[1].input == {"tz": "UTC"} and uses[0].id != uses[1].id
    single = claude.messages.create(
        model="m",
        max_tokens=100,
        tools=[WEATHER, TIME],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        messages=[{"role": "user", "content": text}],
    )
    assert len(single.content) == 1


def test_messages_validation_and_auth(http: httpx.Client) -> None:
    good = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    no_max = {k: v for k, v in good.items() if k != "max_tokens"}
    r = http.post("/v1/messages", headers=ANTHROPIC_AUTH, json=no_max)
    assert r.status_code == 400
    assert r.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
        "request_id": r.headers["request-id"],
    }
    no_key = http.post("/v1/messages", headers={"anthropic-version": "2023-06-01"}, json=good)
    assert no_key.status_code == 401 and no_key.json()["error"]["type"] == "authentication_error"
    no_version = http.post("/v1/messages", headers={"x-api-key": "k"}, json=good)
    assert no_version.status_code == 400 and "anthropic-version" in no_version.json()["error"]["message"]
    bad_role = http.post(
        "/v1/messages",
        headers=ANTHROPIC_AUTH,
        json={**good, "messages": [{"role": "system", "content": "x"}]},
    )
    assert bad_role.status_code == 400
    assert http.post("/v1/messages", headers=ANTHROPIC_AUTH, json=good).status_code == 200


@pytest.mark.parametrize(("extra", "field"), [
    ({"tool_choice": {"type": ["auto"]}}, "tool_choice.type"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": ["image/png"], "data": "iVBORw0KGgo="}}]}]}, "source.media_type"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "cache_control": {
        "type": "ephemeral", "ttl": {"m": 5}}}]}]}, "cache_control.ttl"),
], ids=["tool-choice", "media-type", "cache-ttl"])
def test_a_list_or_object_where_a_name_goes_is_a_400(http: httpx.Client, extra: dict, field: str) -> None:
    """Looked up in a set of names, a list or an object (unhashable) was a 500."""
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], **extra}
    r = http.post("/v1/messages", headers=ANTHROPIC_AUTH, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error" and field in r.json()["error"]["message"]


def test_models_and_count_tokens_anthropic_flavour(claude: anthropic.Anthropic) -> None:
    ids = [m.id for m in claude.models.list()]
    assert "claude-3-5-haiku-20241022" in ids
    assert claude.models.retrieve("claude-3-opus-20240229").display_name == "Claude Opus 3"
    with pytest.raises(anthropic.NotFoundError):
        claude.models.retrieve("nope")
    counted = claude.messages.count_tokens(model="m", messages=[{"role": "user", "content": "12345678"}])
    assert counted.input_tokens == expected_prompt_tokens("12345678")
