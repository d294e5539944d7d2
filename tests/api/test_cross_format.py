"""Any catalogue model on either surface: the `openai` SDK calling a Claude model through
`/v1/chat/completions`, and the `anthropic` SDK calling an OpenAI model through `/v1/messages` —
plain, streamed and with tool calls, round trip — plus what cannot be translated (a 400 naming it)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import yaml

from tests.api.conftest import Gateway
from tests.api.test_anthropic_sdk import in_backoff
from tests.api.test_usage_both_surfaces import ledger_rows
from tests.support.servers import serving
from tests.support.upstream import ScriptedUpstream

HAIKU = "claude-3-5-haiku-20241022"
MINI = "gpt-4o-mini"
IMAGE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
OA_TOOLS = [
    {"type": "function", "function": {"name": "lookup", "description": "Look up",
                                      "parameters": {"type": "object", "properties": {"q": {"type": "string"}},
                                                     "required": ["q"]}}},
    {"type": "function", "function": {"name": "clock", "parameters": {"type": "object", "properties": {}}}},
]
AN_TOOLS = [
    {"name": "lookup", "description": "Look up",
     "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}},
    {"name": "clock", "input_schema": {"type": "object", "properties": {}}},
]


def upstream(gw: Gateway, path: str) -> dict:
    base = gw.settings.anthropic_api_url
    return httpx.get(f"{base}/__mock/last_request", params={"path": path}, timeout=5).json()


# --- OpenAI client, Anthropic model ---------------------------------------------------------------
def test_openai_sdk_plain_completion_on_claude(gateway: Gateway) -> None:
    client = gateway.openai()
    raw = client.chat.completions.with_raw_response.create(
        model=HAIKU, max_tokens=40, stop=["never"], user="end-user-7",
        messages=[{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hello claude"}],
    )
    result = raw.parse()
    assert result.choices[0].message.content == "Echo: hello claude"
    assert result.choices[0].finish_reason == "stop" and result.model == HAIKU
    assert result.usage is not None and result.usage.prompt_tokens > 0 and result.usage.completion_tokens == 3
    assert raw.headers["x-sentinel-provider"] == "anthropic"
    sent = upstream(gateway, "/v1/messages")["body"]
    assert sent["system"] == "be brief" and sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hello claude"}]}]
    assert (sent["max_tokens"], sent["stop_sequences"]) == (40, ["never"])
    assert sent["metadata"]["user_id"] != "end-user-7"  # Sentinel's pseudonym of the caller (tests/api/test_end_user.py)


def test_openai_sdk_stream_on_claude(gateway: Gateway) -> None:
    client = gateway.openai()
    chunks = list(client.chat.completions.create(
        model=HAIKU, messages=[{"role": "user", "content": "stream from claude"}], stream=True
    ))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: stream from claude"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop" and all(c.usage is None for c in chunks)
    with_usage = list(client.chat.completions.create(
        model=HAIKU, messages=[{"role": "user", "content": "count it"}], stream=True,
        stream_options={"include_usage": True},
    ))
    assert with_usage[-1].choices == [] and with_usage[-1].usage is not None
    assert with_usage[-1].usage.completion_tokens == 3


def test_openai_sdk_tools_round_trip_on_claude(gateway: Gateway) -> None:
    client = gateway.openai()
    ask = [{"role": "user", "content": "use both tools in parallel"}]
    first = client.chat.completions.create(model=HAIKU, messages=ask, tools=OA_TOOLS)
    calls = first.choices[0].message.tool_calls
    assert first.choices[0].finish_reason == "tool_calls"
    assert calls is not None and [c.function.name for c in calls] == ["lookup", "clock"]
    assert json.loads(calls[0].function.arguments) == {"q": "mock-q"} or "q" in json.loads(calls[0].function.arguments)
    history = [*ask, first.choices[0].message.model_dump(exclude_none=True)]
    history += [{"role": "tool", "tool_call_id": c.id, "content": f"answer {i}"} for i, c in enumerate(calls)]
    second = client.chat.completions.create(model=HAIKU, messages=history, tools=OA_TOOLS)
    assert second.choices[0].message.content == "Result: answer 0 | answer 1"
    streamed = list(client.chat.completions.create(model=HAIKU, messages=ask, tools=OA_TOOLS, stream=True))
    fragments: dict[int, dict[str, str]] = {}
    for chunk in streamed:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = fragments.setdefault(call.index, {"name": "", "arguments": "", "id": ""})
            entry["name"] += call.function.name or "" if call.function else ""
            entry["arguments"] += call.function.arguments or "" if call.function else ""
            entry["id"] += call.id or ""
    assert [fragments[i]["name"] for i in sorted(fragments)] == ["lookup", "clock"]
    assert all(json.loads(f["arguments"]) is not None and f["id"] for f in fragments.values())
    assert streamed[-1].choices[0].finish_reason == "tool_calls"


def test_openai_fields_that_cannot_reach_claude_are_400(gateway: Gateway) -> None:
    client = gateway.openai()
    ask = [{"role": "user", "content": "x"}]
    for extra, param in [({"n": 2}, "n"), ({"logprobs": True}, "logprobs"),
                         ({"response_format": {"type": "json_object"}}, "response_format"),
                         ({"temperature": 1.5}, "temperature")]:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=HAIKU, messages=ask, **extra)
        assert caught.value.status_code == 400 and param in caught.value.message
    harmless = client.chat.completions.create(model=HAIKU, messages=ask, n=1, logprobs=False, presence_penalty=0)
    assert harmless.choices[0].message.content == "Echo: x"


def test_claude_errors_reach_openai_clients_in_their_shape(gateway: Gateway) -> None:
    with gateway.client() as http:
        limited = http.post("/v1/chat/completions", json={"model": HAIKU, "messages": [
            {"role": "user", "content": "#mock:status=429"}]})
        broken = http.post("/v1/chat/completions", json={"model": HAIKU, "messages": [
            {"role": "user", "content": "#mock:status=500"}]})
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "provider_rate_limited"
    assert broken.status_code == 502 and broken.json()["error"]["type"] == "upstream_error"


# --- Anthropic client, OpenAI model ---------------------------------------------------------------
def test_anthropic_sdk_plain_message_on_gpt(gateway: Gateway) -> None:
    claude = gateway.anthropic()
    message = claude.messages.create(
        model=MINI, max_tokens=30, system=[{"type": "text", "text": "be kind", "cache_control": {"type": "ephemeral"}}],
        stop_sequences=["never"], metadata={"user_id": "end-user-9"},
        messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": IMAGE}},
            {"type": "text", "text": "hello gpt"},
        ]}],
    )
    assert message.content[0].text == "Echo: hello gpt"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.model == MINI
    assert message.usage.input_tokens > 0 and message.usage.output_tokens == 3
    sent = upstream(gateway, "/v1/chat/completions")["body"]
    assert sent["messages"][0] == {"role": "system", "content": [{"type": "text", "text": "be kind"}]}
    assert sent["messages"][1]["content"][0] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMAGE}"}}
    assert (sent["max_tokens"], sent["stop"]) == (30, ["never"])
    # Not carried: the mock is no OpenAI host, told of no end user the client did not name in its
    # own format (tests/api/test_end_user.py).
    assert "user" not in sent and "end-user-9" not in str(sent)


def test_anthropic_sdk_stream_on_gpt(gateway: Gateway) -> None:
    claude = gateway.anthropic()
    with claude.messages.stream(model=MINI, max_tokens=30, messages=[{"role": "user", "content": "stream gpt"}]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 1
    assert final.content[0].text == "Echo: stream gpt"  # type: ignore[union-attr]
    assert final.usage.output_tokens == 3 and final.usage.input_tokens > 0
    assert upstream(gateway, "/v1/chat/completions")["body"]["stream_options"] == {"include_usage": True}


def test_anthropic_sdk_tools_round_trip_on_gpt(gateway: Gateway) -> None:
    claude = gateway.anthropic()
    ask = [{"role": "user", "content": "call both in parallel please"}]
    first = claude.messages.create(model=MINI, max_tokens=50, tools=AN_TOOLS, messages=ask)
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert [u.name for u in uses] == ["lookup", "clock"]  # type: ignore[union-attr]
    results = [{"type": "tool_result", "tool_use_id": u.id, "content": f"r{i}"} for i, u in enumerate(uses)]  # type: ignore[union-attr]
    results[1]["is_error"] = True
    second = claude.messages.create(
        model=MINI, max_tokens=50, tools=AN_TOOLS,
        messages=[*ask, {"role": "assistant", "content": first.content}, {"role": "user", "content": results}],  # type: ignore[list-item]
    )
    assert second.content[0].text == "Result: r0 | Error: r1"  # type: ignore[union-attr]
    with claude.messages.stream(model=MINI, max_tokens=50, tools=AN_TOOLS, messages=ask) as stream:
        final = stream.get_final_message()
    streamed = [b for b in final.content if b.type == "tool_use"]
    assert [(u.name, u.input) for u in streamed] == [(u.name, u.input) for u in uses]  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"
    forced = claude.messages.create(model=MINI, max_tokens=50, tools=AN_TOOLS, messages=ask,
                                    tool_choice={"type": "tool", "name": "clock", "disable_parallel_tool_use": True})
    assert [b.name for b in forced.content if b.type == "tool_use"] == ["clock"]  # type: ignore[union-attr]
    sent = upstream(gateway, "/v1/chat/completions")["body"]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "clock"}}
    assert sent["parallel_tool_calls"] is False


def test_anthropic_fields_that_cannot_reach_gpt_are_400(gateway: Gateway) -> None:
    claude = gateway.anthropic()
    ask = [{"role": "user", "content": "x"}]
    cases = [
        ({"extra_body": {"top_k": 5}}, "top_k"),
        ({"extra_body": {"thinking": {"type": "enabled", "budget_tokens": 1024}}}, "thinking"),
        ({"messages": [*ask, {"role": "assistant", "content": "prefill"}]}, "messages.1"),
        ({"messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc"}}]}]},
         "messages.0.content.0.type"),
        ({"tools": AN_TOOLS, "tool_choice": {"type": "auto", "disable_parallel_tool_use": "true"}},
         "tool_choice.disable_parallel_tool_use"),  # was read as false: parallel calls left on
    ]
    for extra, param in cases:
        kwargs = {"model": MINI, "max_tokens": 5, "messages": ask, **extra}
        with pytest.raises(anthropic.BadRequestError) as caught:
            claude.messages.create(**kwargs)  # type: ignore[arg-type]
        assert param in caught.value.message, caught.value.message
    count = claude.messages.count_tokens(model=MINI, messages=[{"role": "user", "content": "estimate me"}])
    assert count.input_tokens > 0


def test_gpt_errors_reach_anthropic_clients_in_their_shape(gateway: Gateway) -> None:
    claude = gateway.anthropic()
    with pytest.raises(anthropic.RateLimitError):
        claude.messages.create(model=MINI, max_tokens=5, messages=[{"role": "user", "content": "#mock:status=429"}])
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model=MINI, max_tokens=5, messages=[{"role": "user", "content": "#mock:status=400"}])
    with pytest.raises(anthropic.InternalServerError):
        claude.messages.create(model=MINI, max_tokens=5, messages=[{"role": "user", "content": "#mock:status=503"}])
    # OpenAI's type for its 404s and 413s is `invalid_request_error`: relayed, it named the wrong error
    for status, error, kind in ((404, anthropic.NotFoundError, "not_found_error"),
                                (413, anthropic.APIStatusError, "request_too_large")):
        with pytest.raises(error) as caught:
            claude.messages.create(model=MINI, max_tokens=5, messages=[{"role": "user", "content": f"#mock:status={status}"}])
        assert caught.value.status_code == status and caught.value.body["error"]["type"] == kind  # type: ignore[index]


def test_broken_stream_ends_with_an_error_event(gateway: Gateway) -> None:
    with gateway.client() as http:
        anthropic_side = http.post("/v1/messages", json={
            "model": MINI, "max_tokens": 30, "stream": True,
            "messages": [{"role": "user", "content": "cut me off now please #mock:disconnect_after=3"}]})
        openai_side = http.post("/v1/chat/completions", json={
            "model": HAIKU, "stream": True,
            "messages": [{"role": "user", "content": "cut me off now please #mock:disconnect_after=3"}]})
    assert "event: error" in anthropic_side.text and "message_stop" not in anthropic_side.text
    assert '"stream_error"' in openai_side.text and "[DONE]" not in openai_side.text


def test_the_callers_trace_headers_are_not_relayed(gateway: Gateway) -> None:
    """The client's `traceparent`, `tracestate` and `baggage` went to the provider as they were
    (untraced here; traced, Sentinel's own traceparent goes: tests/observability/test_tracing.py)."""
    sent = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "baggage": "user=victim", "tracestate": "vendor=client"}
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    for path, body in (("/v1/chat/completions", chat),
                       ("/v1/messages", {"model": HAIKU, "max_tokens": 20,
                                         "messages": [{"role": "user", "content": "hi"}]})):
        with gateway.client() as client:
            assert client.post(path, json=body, headers=sent).status_code == 200, path
        base = gateway.settings.anthropic_api_url if path == "/v1/messages" else gateway.settings.openai_api_url
        base = base.removesuffix("/v1")
        recorded = httpx.get(f"{base}/__mock/last_request", params={"path": path}, timeout=5).json()
        relayed = {k.lower() for k in recorded["headers"]}
        assert not relayed & {"traceparent", "baggage", "tracestate"}, (path, relayed)


# --- what a translation refuses, before anything is reserved; aliases over both formats ----------
def test_a_translation_refusal_comes_before_the_quota(gateway_factory: Callable[..., Gateway]) -> None:
    """A request Claude's translation refuses (a temperature above 1, a conversation opened by the
    assistant) is a 400 before admission, as every other translation check: it was checked only once
    admitted, so a caller out of quota got 429 for it, and one within quota had a request reserved."""
    gw = gateway_factory(default_plan="requests=1/1m")
    ask = [{"role": "user", "content": "x"}]
    with gw.client() as http:
        assert http.post("/v1/chat/completions", json={"model": HAIKU, "messages": ask}).status_code == 200
        for extra, param in [({"temperature": 1.5}, "temperature"),
                             ({"messages": [{"role": "assistant", "content": "Hi!"}, *ask]}, "messages.0.role")]:
            r = http.post("/v1/chat/completions", json={"model": HAIKU, "messages": ask, **extra})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["details"]["param"] == param


def test_a_tool_history_without_tools_is_refused_for_claude_before_the_quota(
    gateway_factory: Callable[..., Gateway]
) -> None:
    """Claude refuses a conversation holding tool calls or tool results without `tools` ("Requests which
    include `tool_use` or `tool_result` blocks must define tools"): an OpenAI client's such request
    (a history of tool turns asked to be summed up) was sent and refused, the caller paying a request.
    It is a 400 naming `tools` before admission; with its tools it is served."""
    gw = gateway_factory(default_plan="requests=1/1m")
    history = [
        {"role": "user", "content": "look up x"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "found"},
        {"role": "user", "content": "sum it up"},
    ]
    with gw.client() as http:
        r = http.post("/v1/chat/completions", json={"model": HAIKU, "messages": history})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["details"]["param"] == "tools"
        served = http.post("/v1/chat/completions", json={"model": HAIKU, "messages": history, "tools": OA_TOOLS,
                                                         "tool_choice": "none"})
        assert served.status_code == 200, served.text


def test_an_alias_is_served_by_a_target_that_can_carry_the_request(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """An alias over both wire formats: a target whose translation refuses the request is passed
    over, before admission. With Claude in backoff, `top_k` (which only Claude takes) was a 400
    from gpt-4o-mini's translation, though Claude serves it; and gpt-4o-mini's 503 reached an
    OpenAI client as Claude's refusal of `temperature: 1.5`, not as the provider failure it was."""
    providers = tmp_path / "aliases.yaml"
    providers.write_text(yaml.safe_dump({"aliases": {"smart": [HAIKU, MINI], "quick": [MINI, HAIKU]}}))
    gw = gateway_factory(providers_file=providers)
    with gw.client() as http:
        down = http.post("/v1/messages", json={"model": HAIKU, "max_tokens": 5,
                                               "messages": [{"role": "user", "content": "#mock:status=503"}]})
        assert down.status_code == 502, down.text  # Claude now in backoff
        r = http.post("/v1/messages", json={"model": "smart", "max_tokens": 5, "top_k": 5,
                                            "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 200, r.text
        assert r.headers["x-sentinel-model"] == HAIKU and r.json()["content"][0]["text"] == "Echo: x"
        failed = http.post("/v1/chat/completions", json={"model": "quick", "temperature": 1.5, "messages": [
            {"role": "user", "content": "x #mock:status=503"}]})
        assert failed.status_code == 502, failed.text
        assert failed.json()["error"]["code"] == "provider_error" and failed.json()["error"]["provider"] == "openai"


def test_temperature_and_top_p_together_are_refused_for_claude_before_the_quota(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """Claude 4.5 and later refuse `temperature` and `top_p` together (400): an OpenAI client's request
    translated for Claude sent the pair, and the caller paid a request for a call that could never
    work. A 400 in OpenAI's shape naming `top_p`, before anything is reserved; an alias's OpenAI target
    (which takes the pair) serves it; an Anthropic client's own request is relayed as written."""
    providers = tmp_path / "aliases.yaml"
    providers.write_text(yaml.safe_dump({"aliases": {"quick": [HAIKU, MINI]}}))
    gw = gateway_factory(default_plan="requests=2/1m", providers_file=providers)
    client = gw.openai()
    ask = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=HAIKU, messages=ask, temperature=0.5, top_p=0.9)
    assert caught.value.status_code == 400
    assert caught.value.body["details"]["param"] == "top_p" and "not both" in caught.value.message  # type: ignore[index]
    served = client.chat.completions.with_raw_response.create(model="quick", messages=ask, temperature=0.5, top_p=0.9)
    assert served.headers["x-sentinel-model"] == MINI and served.parse().choices[0].message.content
    sent = httpx.get(f"{gw.settings.openai_api_url.removesuffix('/v1')}/__mock/last_request",
                     params={"path": "/v1/chat/completions"}, timeout=5).json()["body"]
    assert (sent["temperature"], sent["top_p"]) == (0.5, 0.9)
    # Each alone goes as before, the plan's second request: the refusal reserved nothing.
    one = client.chat.completions.create(model=HAIKU, messages=ask, top_p=0.9)
    assert one.choices[0].message.content == "Echo: x" and upstream(gw, "/v1/messages")["body"]["top_p"] == 0.9


def test_an_openai_reasoning_models_cap_is_max_completion_tokens(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """OpenAI's reasoning models (o-series, gpt-5) refuse `max_tokens` (400 "Unsupported parameter:
    'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."): every
    Anthropic client's request for one (its `max_tokens` is required) and every native request naming a
    cap went as `max_tokens`, refused after it was charged. Their cap goes as `max_completion_tokens`;
    another model's, and a router's name for one (`openai/o3`), as `max_tokens`, as before."""
    providers = tmp_path / "reasoning.yaml"
    providers.write_text(yaml.safe_dump({
        "models": [{"name": "o4-mini", "provider": "openai"}, {"name": MINI, "provider": "openai"},
                   {"name": "routed-o3", "provider": "openai", "upstream_name": "openai/o3"}],
        "tiers": {"simple": [{"provider": "openai", "model": "o4-mini"}],
                  "moderate": [{"provider": "openai", "model": MINI}],
                  "complex": [{"provider": "openai", "model": MINI}]},
    }))
    gw = gateway_factory(providers_file=providers)
    claude = gw.anthropic()

    def sent() -> dict:
        base = gw.settings.openai_api_url.removesuffix("/v1")
        return httpx.get(f"{base}/__mock/last_request", params={"path": "/v1/chat/completions"}, timeout=5).json()["body"]

    caps = {"max_completion_tokens": "max_tokens", "max_tokens": "max_completion_tokens"}  # the field, the other
    for model, field in (("o4-mini", "max_completion_tokens"), ("routed-o3", "max_tokens"), (MINI, "max_tokens")):
        answer = claude.messages.create(model=model, max_tokens=7, messages=[{"role": "user", "content": "x"}])
        assert answer.content[0].type == "text"
        body = sent()
        assert body[field] == 7 and caps[field] not in body, (model, body)
    with gw.client() as http:
        for tier, field in (("simple", "max_completion_tokens"), ("moderate", "max_tokens")):
            r = http.post("/native/v1/chat/completions", json={
                "tier": tier, "max_tokens": 9, "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 200, r.text
            body = sent()
            assert body[field] == 9 and caps[field] not in body, (tier, body)


def test_parallel_tool_calls_off_with_tool_choice_none_reaches_claude(gateway: Gateway) -> None:
    """`parallel_tool_calls: false` went to Claude as `disable_parallel_tool_use` beside any
    `tool_choice`, but Anthropic's `none` takes no other field (400 "Extra inputs are not permitted"):
    an OpenAI client turning tools off for a turn, with parallel calls off as its framework sends
    them, was refused after it was charged. A choice of no tool needs no word on parallel calls."""
    client = gateway.openai()
    ask = [{"role": "user", "content": "x"}]
    answer = client.chat.completions.create(model=HAIKU, messages=ask, tools=OA_TOOLS, tool_choice="none",
                                            parallel_tool_calls=False)
    assert answer.choices[0].message.content == "Echo: x"
    assert upstream(gateway, "/v1/messages")["body"]["tool_choice"] == {"type": "none"}
    client.chat.completions.create(model=HAIKU, messages=ask, tools=OA_TOOLS, parallel_tool_calls=False)
    assert upstream(gateway, "/v1/messages")["body"]["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


def test_an_image_type_claude_refuses_is_a_400_before_the_quota(gateway_factory: Callable[..., Gateway]) -> None:
    """Claude takes inline images of four types, named in lower case: an OpenAI client's
    `data:image/bmp` (or `svg+xml`) went as it was and was refused after it was charged, and so was
    `data:image/PNG` or `image/jpg`, which name a type it takes. Those are sent as Claude names them;
    another type is a 400 naming the part, before anything is reserved."""
    gw = gateway_factory(default_plan="requests=2/1m")
    client = gw.openai()

    def ask(media: str) -> list:
        return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:{media};base64,{IMAGE}"}}]}]

    for media in ("image/bmp", "image/svg+xml"):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=HAIKU, messages=ask(media))
        assert caught.value.body["details"]["param"] == "messages.0.content.0.image_url.url"  # type: ignore[index]
    for media, sent in (("image/PNG", "image/png"), ("image/jpg", "image/jpeg")):  # the plan's 2 requests
        client.chat.completions.create(model=HAIKU, messages=ask(media))
        block = upstream(gw, "/v1/messages")["body"]["messages"][0]["content"][0]
        assert block["source"]["media_type"] == sent


def test_an_answer_cut_by_the_context_window_is_length_for_an_openai_client(
    gateway_factory: Callable[..., Gateway]
) -> None:
    """Claude's `model_context_window_exceeded` (the output cut by the context window) was read as an
    unknown stop reason, `stop`: an OpenAI client was told a cut answer was whole. It is `length`,
    streamed or not, as `max_tokens` is."""
    scripted = ScriptedUpstream()
    usage = {"input_tokens": 5, "output_tokens": 2}
    whole = {"id": "msg_1", "type": "message", "role": "assistant", "model": HAIKU, "stop_sequence": None,
             "content": [{"type": "text", "text": "cut"}], "stop_reason": "model_context_window_exceeded",
             "usage": usage}
    events = [
        {"type": "message_start", "message": {**whole, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "cut"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "model_context_window_exceeded", "stop_sequence": None},
         "usage": {"output_tokens": 2}},
        {"type": "message_stop"},
    ]
    with serving(scripted) as srv:
        client = gateway_factory(anthropic_api_url=srv.url).openai()
        scripted.json(whole)
        answer = client.chat.completions.create(model=HAIKU, messages=[{"role": "user", "content": "hi"}])
        scripted.sse(*events)
        chunks = list(client.chat.completions.create(model=HAIKU, messages=[{"role": "user", "content": "hi"}],
                                                     stream=True))
    assert answer.choices[0].finish_reason == "length"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]


def test_an_anthropic_clients_refusal_names_the_field_it_wrote(gateway: Gateway) -> None:
    """A Messages body is read into other messages (`system` the first, a turn's tool results
    messages of their own, tool_use blocks tool calls, a tool's `input_schema` its `parameters`):
    the 400 named the field in those, so a client was pointed at `messages.2.tool_calls.0.function.arguments`
    for its `messages.1.content.1.input`, and at `messages.0` for its `system`."""
    history = [{"role": "user", "content": "hi"},
               {"role": "assistant", "content": [{"type": "text", "text": "a"},
                                                 {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": []}]},
               {"role": "user", "content": [{"type": "text", "text": "and"},
                                            {"type": "tool_result", "tool_use_id": "toolu_9", "content": "r"}]}]
    cases = [
        ({"system": [{"type": "text", "text": 7}]}, "system.0.text"),
        ({"system": "be brief", "messages": history}, "messages.1.content.1.input"),
        ({"system": "be brief", "messages": [history[0], {**history[1], "content": history[1]["content"][:1]}, history[2]]},
         "messages.2.content.1.tool_use_id"),
        ({"tools": [{"name": "lookup", "input_schema": {"type": "object"}}], "tool_choice": {"type": "tool", "name": "other"}},
         "tool_choice.name"),
        ({"tools": [{"name": "lookup", "input_schema": {"type": "object"}}, {"name": "bad name", "input_schema": {"type": "object"}}]},
         "tools.1.name"),
        ({"tools": [{"name": "lookup\n", "input_schema": {"type": "object"}}]}, "tools.0.name"),  # (`$` passed it)
        ({"stop_sequences": ["ok", ""]}, "stop_sequences.1"),
    ]
    with gateway.client() as http:
        for extra, param in cases:
            r = http.post("/v1/messages", json={"model": MINI, "max_tokens": 5,
                                                "messages": [{"role": "user", "content": "x"}], **extra})
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["type"] == "invalid_request_error" and error["message"].startswith(param + ":"), (param, error)


def test_tool_call_ids_claude_forbids_are_renamed_for_it(gateway: Gateway) -> None:
    """Anthropic takes tool_use ids of `[a-zA-Z0-9_-]` only; other providers' ids need not be (Kimi's
    `functions.lookup:0`), and a conversation that moves to Claude (an alias's other target, a
    tier's failover) carries them in its history: they went as they were, and Claude refused the
    request. They go renamed, each call and its result alike, distinct ids still distinct; an id
    that fits goes as it is."""
    ids = ["functions.lookup:0", "functions.lookup:1", "call_plain-1", "tail\n"]
    calls = [{"id": i, "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}} for i in ids]
    history = [{"role": "user", "content": "look it up"}, {"role": "assistant", "content": None, "tool_calls": calls},
               *({"role": "tool", "tool_call_id": i, "content": f"found {n}"} for n, i in enumerate(ids))]
    answer = gateway.openai().chat.completions.create(model=HAIKU, messages=history, tools=OA_TOOLS)
    assert answer.choices[0].message.content == "Result: found 0 | found 1 | found 2 | found 3"
    sent = upstream(gateway, "/v1/messages")["body"]["messages"]
    uses = [b["id"] for b in sent[1]["content"]]
    results = [b["tool_use_id"] for b in sent[2]["content"]]
    assert uses == results and len(set(uses)) == 4 and uses[2] == "call_plain-1"
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]+", i) for i in uses), uses


def test_a_text_block_that_is_not_text_is_refused_not_emptied(gateway: Gateway) -> None:
    """An earlier answer's text block, or a tool result's, whose `text` is not a string (a number,
    null) was sent to the OpenAI model as empty text, silently; it is a 400 naming it, as Anthropic's
    own API answers it."""
    use = {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x"}}
    cases = [
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "text", "text": 5}, use]},
          {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "r"}]}],
         "messages.1.content.0.text"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": [use]},
          {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                        "content": [{"type": "text", "text": None}]}]}],
         "messages.2.content.0.content.0.text"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": [use]},
          {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "r", "is_error": "yes"}]}],
         "messages.2.content.0.is_error"),
    ]
    with gateway.client() as http:
        for messages, param in cases:
            r = http.post("/v1/messages", json={"model": MINI, "max_tokens": 5, "tools": AN_TOOLS, "messages": messages})
            assert r.status_code == 400, (param, r.text)
            assert r.json()["error"]["message"].startswith(param + ":"), r.json()


def test_tool_calls_of_the_wrong_type_are_refused_for_claude(gateway: Gateway) -> None:
    """`tool_calls: false` (or `{}`, `0`, `""`) on a message was read as no tool calls and the request
    served; it is a 400 naming it, as OpenAI answers it. An empty list is still no tool calls."""
    with gateway.client() as http:
        for value in (False, {}, 0, ""):
            r = http.post("/v1/chat/completions", json={"model": HAIKU, "messages": [
                {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes", "tool_calls": value},
                {"role": "user", "content": "again"}]})
            assert r.status_code == 400, (value, r.text)
            assert r.json()["error"]["details"]["param"] == "messages.1.tool_calls", r.json()
        empty = http.post("/v1/chat/completions", json={"model": HAIKU, "messages": [
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes", "tool_calls": []},
            {"role": "user", "content": "again"}]})
        assert empty.status_code == 200, empty.text


def test_an_image_url_source_must_be_http_for_an_openai_model(gateway: Gateway) -> None:
    """An image `url` source is fetched by Anthropic over http(s) alone; translated, any string went
    to the OpenAI-format server as the image's URL — `file:///etc/passwd` to a server that reads local
    files (vLLM's allowed media path), a data URL of any type. It is a 400 naming the source."""
    with gateway.client() as http:
        for url in ("file:///etc/passwd", "data:text/plain;base64,aGk=", "ftp://host/x.png", "/local.png"):
            r = http.post("/v1/messages", json={"model": MINI, "max_tokens": 5, "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "url", "url": url}}, {"type": "text", "text": "see"}]}]})
            assert r.status_code == 400, (url, r.text)
            assert r.json()["error"]["message"].startswith("messages.0.content.0.source:"), r.json()
        ok = http.post("/v1/messages", json={"model": MINI, "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "HTTPS://example.com/a.png"}}, {"type": "text", "text": "see"}]}]})
        assert ok.status_code == 200, ok.text


def test_a_tool_type_that_is_not_a_string_is_a_400_not_a_500(gateway: Gateway) -> None:
    """A tool whose `type` is a list or an object was looked up among the tools that run a model of
    their own (a set: unhashable, a TypeError): a 500 on every metered endpoint with tools, on both
    surfaces, whatever the model's wire format."""
    with gateway.client() as http:
        for value in ([], {"a": 1}, [1]):
            for model in (HAIKU, MINI):
                chat = http.post("/v1/chat/completions", json={
                    "model": model, "messages": [{"role": "user", "content": "hi"}],
                    "tools": [{"type": value, "function": {"name": "f", "parameters": {"type": "object"}}}]})
                assert chat.status_code == 400 or (model == MINI and chat.status_code < 500), (model, value, chat.text)
                messages = http.post("/v1/messages", json={
                    "model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
                    "tools": [{"type": value, "name": "f", "input_schema": {"type": "object"}}]})
                assert messages.status_code < 500, (model, value, messages.text)
            responses = http.post("/v1/responses", json={"model": MINI, "input": "hi", "tools": [{"type": value}]})
            assert responses.status_code < 500, (value, responses.text)


def test_a_forced_tool_call_is_tool_use_for_an_anthropic_client(gateway_factory: Callable[..., Gateway]) -> None:
    """OpenAI ends an answer whose `tool_choice` named the function with `finish_reason: "stop"`,
    tool calls and all; an Anthropic client was told `end_turn`, and its tool loop (which runs the
    tools on `tool_use`) stopped with the calls unrun. An answer with tool calls that stopped is
    `tool_use`, streamed or not; one cut by its cap is still `max_tokens`."""
    call = {"id": "call_1", "type": "function", "function": {"name": "clock", "arguments": "{}"}}
    whole = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MINI,
             "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                          "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MINI}
    events = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [{**call, "index": 0}]}}]},
              {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
              {**head, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}, "[DONE]"]
    scripted = ScriptedUpstream()
    ask = {"model": MINI, "max_tokens": 20, "tools": AN_TOOLS, "tool_choice": {"type": "tool", "name": "clock"},
           "messages": [{"role": "user", "content": "what time is it"}]}
    with serving(scripted) as srv:
        claude = gateway_factory(openai_api_url=srv.url + "/v1").anthropic()
        scripted.json(whole)
        answer = claude.messages.create(**ask)
        scripted.sse(*events)
        with claude.messages.stream(**ask) as stream:
            final = stream.get_final_message()
        scripted.json({**whole, "choices": [{**whole["choices"][0], "finish_reason": "length"}]})
        cut = claude.messages.create(**ask)
    assert answer.stop_reason == "tool_use" and [b.type for b in answer.content] == ["tool_use"]
    assert final.stop_reason == "tool_use" and [b.type for b in final.content] == ["tool_use"]
    assert cut.stop_reason == "max_tokens"


def test_tool_calls_said_but_none_made_is_end_turn_for_an_anthropic_client(gateway_factory: Callable[..., Gateway]) -> None:
    """A server may end an answer with `finish_reason: "tool_calls"` and no tool call in it (vLLM,
    for a `required` choice whose call it could not read): an Anthropic client was told `tool_use`,
    and its tool loop found nothing to run. It ended its turn (`end_turn`), streamed or not."""
    whole = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MINI,
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "I cannot call it."},
                          "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 5, "completion_tokens": 4}}
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MINI}
    events = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "I cannot call it."}}]},
              {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
              {**head, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 4}}, "[DONE]"]
    scripted = ScriptedUpstream()
    ask = {"model": MINI, "max_tokens": 20, "tools": AN_TOOLS, "tool_choice": {"type": "any"},
           "messages": [{"role": "user", "content": "what time is it"}]}
    with serving(scripted) as srv:
        claude = gateway_factory(openai_api_url=srv.url + "/v1").anthropic()
        scripted.json(whole)
        answer = claude.messages.create(**ask)
        scripted.sse(*events)
        with claude.messages.stream(**ask) as stream:
            final = stream.get_final_message()
    for message in (answer, final):
        assert message.stop_reason == "end_turn" and [b.type for b in message.content] == ["text"]


def test_tool_call_ids_longer_than_openai_takes_are_renamed_for_it(gateway: Gateway) -> None:
    """OpenAI takes tool-call ids of at most 40 characters; an Anthropic client's history (its own
    ids, another provider's) may hold longer ones, and they went as they were: OpenAI refused the
    request. They go renamed, each call and its result alike, distinct ids still distinct; an id
    that fits goes as it is."""
    ids = ["toolu_" + "a" * 60, "toolu_" + "a" * 59 + "b", "toolu_01A09q90qw90lq917835lq9"]
    uses = [{"type": "tool_use", "id": i, "name": "lookup", "input": {"q": "x"}} for i in ids]
    results = [{"type": "tool_result", "tool_use_id": i, "content": f"r{n}"} for n, i in enumerate(ids)]
    answer = gateway.anthropic().messages.create(model=MINI, max_tokens=50, tools=AN_TOOLS, messages=[  # type: ignore[arg-type]
        {"role": "user", "content": "look"}, {"role": "assistant", "content": uses}, {"role": "user", "content": results}])
    assert answer.content[0].text == "Result: r0 | r1 | r2"  # type: ignore[union-attr]
    sent = upstream(gateway, "/v1/chat/completions")["body"]["messages"]
    calls = [c["id"] for c in sent[1]["tool_calls"]]
    assert calls == [m["tool_call_id"] for m in sent[2:5]] and len(set(calls)) == 3
    assert all(len(i) <= 40 for i in calls) and calls[2] == ids[2], calls


def anthropic_grammar(raw: str) -> list[dict]:
    """The events of an Anthropic stream, checked against its grammar: `message_start` first, blocks
    indexed 0, 1, ... that never overlap, each delta and stop for the open block, then
    `message_delta` and `message_stop` last."""
    events = [json.loads(line[len("data: "):]) for line in raw.splitlines() if line.startswith("data: ")]
    assert events[0]["type"] == "message_start" and [e["type"] for e in events[-2:]] == ["message_delta", "message_stop"]
    open_block, started = None, 0
    for event in events[1:-2]:
        kind = event["type"]
        if kind == "content_block_start":
            assert open_block is None and event["index"] == started, event
            open_block, started = event["index"], started + 1
        elif kind in ("content_block_delta", "content_block_stop"):
            assert event["index"] == open_block, (event, open_block)
            open_block = None if kind == "content_block_stop" else open_block
        else:
            assert kind == "ping", event
    assert open_block is None
    return events


def test_interleaved_parallel_tool_calls_stream_as_well_formed_blocks(gateway_factory: Callable[..., Gateway]) -> None:
    """An OpenAI-compatible server may interleave the argument fragments of parallel tool calls (the
    first call's arguments after the second call began), and send text after them. Each call was
    its own block, but a block was closed when the next began: the first call's later arguments
    came as deltas of a block already stopped (the SDK's `content_block_stop` showed its input empty,
    and clients that take a tool call at its stop ran it without arguments). The first call streams
    as it comes; what begins after it is held and sent whole, a block each, at the end."""
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MINI}

    def chunk(**delta: object) -> dict:
        return {**head, "choices": [{"index": 0, "delta": delta}]}

    events = [chunk(role="assistant", content="Let me check. "),
              chunk(tool_calls=[{"index": 0, "id": "call_a", "type": "function",
                                 "function": {"name": "lookup", "arguments": '{"q":'}}]),
              chunk(tool_calls=[{"index": 1, "id": "call_b", "type": "function", "function": {"name": "clock", "arguments": "{"}}]),
              chunk(tool_calls=[{"index": 0, "function": {"arguments": ' "tides"}'}}]),
              chunk(content="Both asked."),
              chunk(tool_calls=[{"index": 1, "function": {"arguments": "}"}}]),
              {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
              {**head, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 12}}, "[DONE]"]
    scripted = ScriptedUpstream()
    ask = {"model": MINI, "max_tokens": 50, "tools": AN_TOOLS, "messages": [{"role": "user", "content": "tides and time"}]}
    with serving(scripted) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1")
        scripted.sse(*events)
        with gw.client() as http:
            raw = http.post("/v1/messages", json={**ask, "stream": True}).text
        scripted.sse(*events)
        with gw.anthropic().messages.stream(**ask) as stream:
            stopped = [e.content_block for e in stream if e.type == "content_block_stop"]  # type: ignore[union-attr]
            final = stream.get_final_message()
    streamed = anthropic_grammar(raw)
    starts = [e["content_block"] for e in streamed if e["type"] == "content_block_start"]
    assert [(b["type"], b.get("id")) for b in starts] == [("text", None), ("tool_use", "call_a"), ("tool_use", "call_b"),
                                                          ("text", None)]
    expected = [("text", "Let me check. "), ("tool_use", {"q": "tides"}), ("tool_use", {}), ("text", "Both asked.")]
    for blocks in (stopped, final.content):
        assert [(b.type, b.text if b.type == "text" else b.input) for b in blocks] == expected  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use" and final.usage.output_tokens == 12


def test_a_tool_call_cut_by_max_tokens_is_max_tokens_not_an_error(gateway_factory: Callable[..., Gateway]) -> None:
    """An OpenAI-format model whose output cap (`length`) cut the tool call it was writing sends its
    arguments as JSON that is not whole. Translated for an Anthropic client, the whole answer became
    a 502 (`Malformed tool call arguments`) though the provider served and billed it — and the
    Anthropic SDK retries a 502, so one request was sent, and charged, three times; a stream ended
    with an error event. It is Anthropic's answer to the same cut: `stop_reason: max_tokens` with
    the tool use it was writing (its input empty: what was cut is not an object), recorded once as served."""
    cut = '{"q": "tid'
    whole = {"id": "chatcmpl-cut", "object": "chat.completion", "created": 1, "model": MINI,
             "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": None,
                          "tool_calls": [{"id": "call_a", "type": "function",
                                          "function": {"name": "lookup", "arguments": cut}}]}}],
             "usage": {"prompt_tokens": 40, "completion_tokens": 12}}
    head = {"id": "chatcmpl-cut", "object": "chat.completion.chunk", "created": 1, "model": MINI}
    events = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [
                  {"index": 0, "id": "call_a", "type": "function", "function": {"name": "lookup", "arguments": cut}}]}}]},
              {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
              {**head, "choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 12}}, "[DONE]"]
    ask = {"model": MINI, "max_tokens": 12, "tools": AN_TOOLS, "messages": [{"role": "user", "content": "tides"}]}
    scripted = ScriptedUpstream()
    with serving(scripted) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1")
        claude = anthropic.Anthropic(base_url=gw.url, api_key=gw.key, max_retries=2)  # the SDK's default retries
        scripted.json(whole)
        answer = claude.messages.create(**ask)
        assert len(scripted.received) == 1  # answered, not retried
        scripted.sse(*events)
        with gw.client() as http:
            raw = http.post("/v1/messages", json={**ask, "stream": True}).text
        scripted.sse(*events)
        with claude.messages.stream(**ask) as stream:
            final = stream.get_final_message()
    assert answer.stop_reason == "max_tokens" == final.stop_reason
    for message in (answer, final):
        assert [(b.type, b.id, b.name) for b in message.content] == [("tool_use", "call_a", "lookup")]  # type: ignore[union-attr]
    assert answer.content[0].input == {}  # type: ignore[union-attr]
    streamed = anthropic_grammar(raw)
    assert streamed[-2]["delta"]["stop_reason"] == "max_tokens" and streamed[-2]["usage"]["output_tokens"] == 12
    rows = ledger_rows(gw.settings.database_url)
    assert [(r["status"], r["usage_source"], r["input_tokens"], r["output_tokens"]) for r in rows] == [
        (200, "measured", 40, 12)] * 3


def test_a_tool_use_cut_by_max_tokens_is_length_for_an_openai_client(gateway_factory: Callable[..., Gateway]) -> None:
    """The same on the way back: Claude's stream cut by `max_tokens` inside a tool use streams input
    JSON that is not whole; an OpenAI client streaming it got an error chunk at the end (and a 502
    record) for an answer Anthropic served and billed. Its last chunk says `length`."""
    usage = {"input_tokens": 30, "output_tokens": 1}
    message = {"id": "msg_cut", "type": "message", "role": "assistant", "model": HAIKU, "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": usage}
    events = [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "tool_use", "id": "toolu_a", "name": "lookup", "input": {}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"q": "ti'}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": None}, "usage": {"output_tokens": 9}},
        {"type": "message_stop"},
    ]
    scripted = ScriptedUpstream()
    with serving(scripted) as srv:
        gw = gateway_factory(anthropic_api_url=srv.url)
        scripted.sse(*events)
        chunks = list(gw.openai().chat.completions.create(
            model=HAIKU, max_tokens=9, tools=OA_TOOLS, messages=[{"role": "user", "content": "tides"}], stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
    assert calls[0].id == "toolu_a" and "".join(call.function.arguments or "" for call in calls) == '{"q": "ti'


def test_count_tokens_estimated_answers_a_count_not_the_mcp_reservation(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """Sentinel's count of a Messages body (a Claude model in a hard backoff, not asked) is its
    estimate of the body's tokens: an `mcp_servers` entry reserves SENTINEL_REFERENCE_INPUT_TOKENS on
    `/v1/messages` (a guess at a tool list Sentinel never sees), but that guess is no count — it was
    added to the answer, 4,096 per server whatever the setting. For a model elsewhere the body is
    refused, as `/v1/messages` refuses it there."""
    gw = gateway_factory()
    in_backoff(gw, HAIKU)
    claude = gw.anthropic()
    ask = [{"role": "user", "content": "estimate me"}]
    server = {"type": "url", "url": "https://mcp.example.com/sse", "name": "docs"}
    plain = claude.messages.with_raw_response.count_tokens(model=HAIKU, messages=ask)  # type: ignore[arg-type]
    named = claude.messages.with_raw_response.count_tokens(
        model=HAIKU, messages=ask, extra_body={"mcp_servers": [server, server]},  # type: ignore[arg-type]
    )
    assert plain.headers["x-sentinel-estimate"] == named.headers["x-sentinel-estimate"] == "true"
    assert plain.parse().input_tokens > 0 and named.parse().input_tokens == plain.parse().input_tokens
    with pytest.raises(anthropic.BadRequestError, match="mcp_servers"):
        claude.messages.count_tokens(model=MINI, messages=ask, extra_body={"mcp_servers": [server]})  # type: ignore[arg-type]


def test_a_malformed_cache_mark_is_refused_for_gpt_as_claude_refuses_it(gateway_factory: Callable[..., Gateway]) -> None:
    """The translation drops `cache_control` (the OpenAI provider caches by itself), and dropped a
    malformed one unseen: a body a Claude target refuses (a mark that is no object, of another type,
    a `ttl` Anthropic has not) was served on an OpenAI one. It is a 400 naming it, before anything is
    reserved; a well-formed mark (`ttl` "1h" included) is still dropped and served."""
    gw = gateway_factory(default_plan="requests=1/1m")
    text = {"type": "text", "text": "x"}
    cases = [
        ({"system": [{**text, "cache_control": 5}]}, "system.0.cache_control"),
        ({"messages": [{"role": "user", "content": [{**text, "cache_control": {"type": "persistent"}}]}]},
         "messages.0.content.0.cache_control"),
        ({"messages": [{"role": "user", "content": [{**text, "cache_control": {"type": "ephemeral", "ttl": "99h"}}]}]},
         "messages.0.content.0.cache_control"),
        ({"tools": [{**AN_TOOLS[0], "cache_control": {"type": "ephemeral", "scope": "global"}}]},
         "tools.0.cache_control"),
    ]
    ask = [{"role": "user", "content": "x"}]
    with gw.client() as http:
        for extra, param in cases:
            r = http.post("/v1/messages", json={"model": MINI, "max_tokens": 5, "messages": ask, **extra})
            assert r.status_code == 400, (param, r.text)
            assert r.json()["type"] == "error" and r.json()["error"]["message"].startswith(param + ":"), r.json()
    served = gw.anthropic().messages.create(
        model=MINI, max_tokens=5, system=[{**text, "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        messages=ask, tools=[{**AN_TOOLS[0], "cache_control": {"type": "ephemeral"}}],  # type: ignore[list-item]
    )
    assert served.model == MINI  # (the plan's one request: the refusals above reserved none)


def test_the_bodys_own_cache_mark_is_dropped_for_gpt_as_a_blocks_is(gateway_factory: Callable[..., Gateway]) -> None:
    """The body's own `cache_control` (automatic caching: the SDK's `messages.create(cache_control=...)`)
    was a 400 "unknown parameter" for an OpenAI model while a block's mark is dropped: it steers Claude's
    cache alone. It is checked as a block's (a malformed one a 400 naming `cache_control`, before
    anything is reserved) and dropped, on messages and count_tokens."""
    gw = gateway_factory(default_plan="requests=2/1d")
    claude = gw.anthropic()
    ask = [{"role": "user", "content": "x"}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model=MINI, max_tokens=5, messages=ask,  # type: ignore[arg-type]
                               cache_control={"type": "persistent"})  # type: ignore[typeddict-item]
    assert caught.value.response.json()["error"]["message"].startswith("cache_control:")
    mark = {"type": "ephemeral", "ttl": "1h"}
    served = claude.messages.create(model=MINI, max_tokens=5, messages=ask, cache_control=mark)  # type: ignore[arg-type]
    assert served.model == MINI and "cache_control" not in upstream(gw, "/v1/chat/completions")["body"]
    assert claude.messages.count_tokens(model=MINI, messages=ask, cache_control=mark).input_tokens > 0  # type: ignore[arg-type]


def test_a_temperature_past_the_messages_apis_range_is_refused_for_gpt(gateway_factory: Callable[..., Gateway]) -> None:
    """The Messages API's temperature is 0 to 1 (a Claude target refuses 1.5); translated for an
    OpenAI model, whose range reaches 2, 1.5 was sent as written and served — an alias served or
    refused the same body by the target it drew. It is a 400 naming `temperature` in Anthropic's
    shape before anything is reserved; 1 is still served."""
    gw = gateway_factory(default_plan="requests=1/1m")
    claude = gw.anthropic()
    ask = [{"role": "user", "content": "x"}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model=MINI, max_tokens=5, messages=ask, extra_body={"temperature": 1.5})  # type: ignore[arg-type]
    body = caught.value.response.json()
    assert body["type"] == "error" and body["error"]["message"].startswith("temperature:"), body
    served = claude.messages.create(model=MINI, max_tokens=5, messages=ask, extra_body={"temperature": 1})  # type: ignore[arg-type]
    assert served.model == MINI  # (the plan's one request: the refusal reserved none)
    assert upstream(gw, "/v1/chat/completions")["body"]["temperature"] == 1


def test_a_temperature_openais_reasoning_models_refuse_is_refused_for_them(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """o-series and gpt-5 models take `temperature` only as 1: an Anthropic client's 0.5 for one was
    sent as written, refused by OpenAI and charged as its refusal. A 400 naming it in Anthropic's shape
    before anything is reserved; 1, their default, is served and sent without it."""
    providers = tmp_path / "reasoning.yaml"
    providers.write_text(yaml.safe_dump({"models": [{"name": "o4-mini", "provider": "openai"}]}))
    gw = gateway_factory(providers_file=providers, default_plan="requests=1/1m")
    claude = gw.anthropic()
    ask = [{"role": "user", "content": "x"}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model="o4-mini", max_tokens=5, messages=ask, extra_body={"temperature": 0.5})  # type: ignore[arg-type]
    body = caught.value.response.json()
    assert body["type"] == "error" and body["error"]["message"].startswith("temperature:"), body
    served = claude.messages.create(model="o4-mini", max_tokens=5, messages=ask, extra_body={"temperature": 1})  # type: ignore[arg-type]
    assert served.model == "o4-mini"  # (the plan's one request: the refusal reserved none)
    assert "temperature" not in upstream(gw, "/v1/chat/completions")["body"]


def test_a_stop_sequence_of_only_whitespace_is_refused_for_gpt(gateway_factory: Callable[..., Gateway]) -> None:
    """The Messages API refuses a stop sequence of only whitespace (as the translation for Claude does an
    OpenAI client's `"\\n"`); translated for an OpenAI model, which takes it, it was sent and served. It
    is a 400 naming it in Anthropic's shape before anything is reserved; one with text is still sent."""
    gw = gateway_factory(default_plan="requests=1/1d")
    claude = gw.anthropic()
    ask = [{"role": "user", "content": "x"}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model=MINI, max_tokens=5, messages=ask, stop_sequences=["END", "\n"])
    assert caught.value.response.json()["error"]["message"].startswith("stop_sequences.1:")
    served = claude.messages.create(model=MINI, max_tokens=5, messages=ask, stop_sequences=["END", "\nEND"])
    assert served.model == MINI  # (the plan's one request: the refusal reserved none)
    assert upstream(gw, "/v1/chat/completions")["body"]["stop"] == ["END", "\nEND"]


def test_count_tokens_for_gpt_refuses_what_messages_refuses(gateway_factory: Callable[..., Gateway]) -> None:
    """`/v1/messages/count_tokens` for a model on another wire format answered Sentinel's estimate for
    a body `/v1/messages` refuses for it (thinking, a malformed cache mark, a parameter that does not
    translate): it is the same 400 naming the field, in Anthropic's shape, before anything is reserved."""
    gw = gateway_factory(default_plan="requests=1/1m")
    text = {"type": "text", "text": "x"}
    ask = [{"role": "user", "content": "x"}]
    cases = [
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ({"system": [{**text, "cache_control": {"type": "ephemeral", "ttl": "99h"}}]}, "system.0.cache_control"),
        ({"tools": [{**AN_TOOLS[0], "cache_control": {"type": "persistent"}}]}, "tools.0.cache_control"),
        ({"top_k": 5}, "top_k"),
    ]
    with gw.client() as http:
        for extra, param in cases:
            for path, more in (("/v1/messages", {"max_tokens": 5}), ("/v1/messages/count_tokens", {})):
                r = http.post(path, json={"model": MINI, "messages": ask, **more, **extra})
                assert r.status_code == 400, (path, param, r.text)
                error = r.json()
                assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error", error
                assert error["error"]["message"].startswith(param + ":"), (path, error)
    counted = gw.anthropic().messages.count_tokens(model=MINI, messages=ask)  # type: ignore[arg-type]
    assert counted.input_tokens > 0  # (the plan's one request: the refusals above reserved none)


def test_an_openai_refusal_ends_an_anthropic_clients_message_as_a_refusal(gateway: Gateway) -> None:
    """OpenAI's refusal (`message.refusal`, content null, `finish_reason: stop`) is not shown to an
    Anthropic client — it has no field for it — but the message ends `stop_reason: refusal`, as Claude's
    own refusal ends, streamed or not: it ended `end_turn`, an empty answer said to be a whole one — and
    has no content block, plain as streamed (the plain one had an empty text block)."""
    claude = gateway.anthropic()
    ask = [{"role": "user", "content": "who is it? #mock:refusal"}]
    message = claude.messages.create(model=MINI, max_tokens=64, messages=ask)
    assert message.stop_reason == "refusal" and message.usage.output_tokens == 9
    with claude.messages.stream(model=MINI, max_tokens=64, messages=ask) as stream:
        streamed = stream.get_final_message()
    assert streamed.stop_reason == "refusal" and streamed.usage.output_tokens == 9
    assert message.content == [] == streamed.content  # (not an empty text block, plain or streamed)
    answered = claude.messages.create(model=MINI, max_tokens=64, messages=[{"role": "user", "content": "who?"}])
    assert answered.stop_reason == "end_turn"
