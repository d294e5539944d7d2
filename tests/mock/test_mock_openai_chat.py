"""The mock's OpenAI chat and completions endpoints, driven by the official `openai` SDK over HTTP."""

from __future__ import annotations

import json

import httpx
import openai
import orjson
import pytest

from tests.mock.mockwire import OPENAI_AUTH, expected_prompt_tokens, sse_data

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 2},
                "where": {"type": "object", "properties": {"lat": {"type": "number"}}, "required": ["lat"]},
                "optional": {"type": "string"},
            },
            "required": ["city", "unit", "days", "where"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"tz": {"type": "string", "default": "UTC"}},
            "required": ["tz"],
        },
    },
}
WEATHER_ARGS = {"city": "mock-city", "unit": "celsius", "days": 2, "where": {"lat": 1.5}}


def test_chat_plain_echoes_and_counts(oai: openai.OpenAI) -> None:
    out = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello big world"}],
    )
    assert out.object == "chat.completion" and out.model == "gpt-4o-mini"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == "Echo: hello big world"
    assert out.choices[0].finish_reason == "stop"
    assert out.usage is not None
    assert out.usage.prompt_tokens == expected_prompt_tokens("be brief", "hello big world")
    assert out.usage.completion_tokens == 4  # one token per word: Echo: hello big world
    assert out.usage.total_tokens == out.usage.prompt_tokens + 4


def test_chat_array_content_and_n(oai: openai.OpenAI) -> None:
    out = oai.chat.completions.create(
        model="m", n=2, messages=[{"role": "user", "content": [{"type": "text", "text": "parts work"}]}]
    )
    assert [c.message.content for c in out.choices] == ["Echo: parts work"] * 2
    assert [c.index for c in out.choices] == [0, 1]


def test_chat_stream_with_usage(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "one two three four"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert contents == ["Echo:", " one", " two", " three", " four"]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 5
    assert last.usage.prompt_tokens == expected_prompt_tokens("one two three four")
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_without_include_usage_has_no_usage_chunk(http: httpx.Client) -> None:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    r = http.post("/v1/chat/completions", json=body, headers=OPENAI_AUTH)
    assert r.headers["content-type"].startswith("text/event-stream")
    data = sse_data(r.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all("usage" not in c for c in chunks)
    assert all(c["choices"] for c in chunks)


def test_chat_max_tokens_and_stop(oai: openai.OpenAI) -> None:
    cut = oai.chat.completions.create(
        model="m", max_tokens=3, messages=[{"role": "user", "content": "a b c d e f"}]
    )
    assert cut.choices[0].message.content == "Echo: a b"
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None and cut.usage.completion_tokens == 3
    stopped = oai.chat.completions.create(
        model="m", stop=["STOP"], messages=[{"role": "user", "content": "keep this STOP drop that"}]
    )
    assert stopped.choices[0].message.content == "Echo: keep this "
    assert stopped.choices[0].finish_reason == "stop"


def test_chat_tool_call_then_result(oai: openai.OpenAI) -> None:
    messages: list[dict] = [{"role": "user", "content": "weather in Paris?"}]
    out = oai.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL, TIME_TOOL])
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].type == "function"
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == WEATHER_ARGS
    assert calls[0].id.startswith("call_")
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [calls[0].model_dump()]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny, 21C"},
    ]
    follow = oai.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL])
    assert follow.choices[0].finish_reason == "stop"
    assert follow.choices[0].message.content == "Result: sunny, 21C"


def test_chat_tool_choice(oai: openai.OpenAI) -> None:
    named = oai.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "x"}],
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    calls = named.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_time"]
    assert json.loads(calls[0].function.arguments) == {"tz": "UTC"}
    none = oai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], tools=[WEATHER_TOOL], tool_choice="none"
    )
    assert none.choices[0].message.content == "Echo: x" and not none.choices[0].message.tool_calls


def _accumulate_tool_calls(chunks: list) -> dict[int, dict]:
    calls: dict[int, dict] = {}
    for chunk in chunks:
        if not chunk.choices:
            continue
        for tc in chunk.choices[0].delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": "", "fragments": 0})
            if tc.id:
                slot["id"] = tc.id
            if tc.function and tc.function.name:
                slot["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                slot["arguments"] += tc.function.arguments
                slot["fragments"] += 1
    return calls


def test_chat_stream_tool_calls_fragmented(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "weather"}], tools=[WEATHER_TOOL], stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    calls = _accumulate_tool_calls(chunks)
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["arguments"]) == WEATHER_ARGS
    assert calls[0]["fragments"] > 1  # the arguments arrive in several pieces
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("how", ["text", "directive"])
def test_chat_parallel_tool_calls(oai: openai.OpenAI, how: str) -> None:
    text = "call them in parallel" if how == "text" else "both please #mock:parallel_tools"
    chunks = list(
        oai.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": text}],
            tools=[WEATHER_TOOL, TIME_TOOL],
            stream=True,
        )
    )
    calls = _accumulate_tool_calls(chunks)
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "get_time"]
    assert json.loads(calls[1]["arguments"]) == {"tz": "UTC"}
    assert calls[0]["id"] != calls[1]["id"]
    single = oai.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": text}],
        tools=[WEATHER_TOOL, TIME_TOOL],
        parallel_tool_calls=False,
    )
    assert len(single.choices[0].message.tool_calls or []) == 1


def test_completions_plain_and_stream(oai: openai.OpenAI) -> None:
    out = oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="say this", max_tokens=10)
    assert out.object == "text_completion"
    assert out.choices[0].text == "Echo: say this" and out.choices[0].finish_reason == "stop"
    assert out.usage is not None and out.usage.prompt_tokens == 2 and out.usage.completion_tokens == 3
    default_cut = oai.completions.create(model="m", prompt=" ".join(["w"] * 40))
    assert default_cut.choices[0].finish_reason == "length"  # max_tokens defaults to 16
    assert default_cut.usage is not None and default_cut.usage.completion_tokens == 16
    chunks = list(
        oai.completions.create(
            model="m", prompt="stream me", stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "Echo: stream me"
    assert len([c for c in chunks if c.choices and c.choices[0].text]) == 3
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_completions_list_prompt(oai: openai.OpenAI) -> None:
    out = oai.completions.create(model="m", prompt=["first", "second"])
    assert [(c.index, c.text) for c in out.choices] == [(0, "Echo: first"), (1, "Echo: second")]
    # Each prompt is completed on its own, followed by the suffix: it is read once a prompt.
    suffixed = oai.completions.create(model="m", prompt=["first", "second"], suffix="x" * 40)
    assert suffixed.usage is not None and suffixed.usage.prompt_tokens == 2 + 2 + 2 * 10


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),  # was a 500
        # OpenAI's rule for a message's name: no spaces, no `<|\\/>`
        ({"model": "m", "messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y", "name": "Jo Do"}]},
         "messages[1].name"),
        ({"model": "m", "messages": [{"role": "user", "content": "x", "name": "a<b>"}]}, "messages[0].name"),
        ({"model": "m", "messages": [{"role": "user", "content": "x", "name": 7}]}, "messages[0].name"),
    ],
)
def test_chat_validation_errors(http: httpx.Client, body: dict, param: str) -> None:
    r = http.post("/v1/chat/completions", json=body, headers=OPENAI_AUTH)
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param


def test_invalid_json_and_auth(http: httpx.Client, oai: openai.OpenAI) -> None:
    bad = http.post("/v1/chat/completions", content=b"{nope", headers=OPENAI_AUTH)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}):
        r = http.post("/v1/chat/completions", json={"model": "m", "messages": []}, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        oai.models.list(extra_headers={"Authorization": "Basic abc"})


def test_unknown_path_is_openai_404(http: httpx.Client) -> None:
    r = http.post("/v1/nope", json={}, headers=OPENAI_AUTH)
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "Invalid URL (POST /v1/nope)"
    wrong_method = http.get("/v1/chat/completions", headers=OPENAI_AUTH)
    assert wrong_method.status_code == 404


def test_last_request_records_what_upstream_saw(oai: openai.OpenAI, http: httpx.Client) -> None:
    oai.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "recorded"}],
        extra_headers={"X-Trace": "abc"},
        extra_query={"q": "1"},
    )
    oai.models.list()
    seen = http.get("/__mock/last_request", params={"path": "/v1/chat/completions"}).json()
    assert seen["method"] == "POST" and seen["path"] == "/v1/chat/completions"
    assert seen["headers"]["authorization"] == "Bearer sk-test"
    assert seen["headers"]["x-trace"] == "abc"
    assert seen["query"] == {"q": "1"}
    assert seen["body"]["messages"] == [{"role": "user", "content": "recorded"}]
    latest = http.get("/__mock/last_request").json()
    assert latest["path"] == "/v1/models" and latest["method"] == "GET"
    assert orjson.loads(http.get("/__mock/requests").content)["data"][-1]["path"] == "/v1/models"
