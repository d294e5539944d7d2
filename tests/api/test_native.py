"""The Native API over HTTP against the mock upstream speaking real OpenAI and Anthropic wire formats."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sentinel.mock.app import create_mock_app
from sentinel.routing.sessions import SessionStore
from tests.api.conftest import Gateway
from tests.support.attack import recorded_ids, spying
from tests.support.payloads import WEATHER_TOOL

URL = "/native/v1/chat/completions"
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-20241022"}


def tiers_file(tmp_path: Path, provider: str, name: str = "tiers.yaml") -> Path:
    entry = {"provider": provider, "model": MODELS[provider], "relative_cost": 1}
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"tiers": {"simple": [entry], "moderate": [entry], "complex": [entry]}}))
    return path


@pytest.fixture(params=["openai", "anthropic"])
def native_gw(request: pytest.FixtureRequest, gateway_factory: Callable[..., Gateway], tmp_path: Path) -> Gateway:
    gw = gateway_factory(providers_file=tiers_file(tmp_path, request.param))
    gw.provider = request.param  # type: ignore[attr-defined]
    return gw


def sse_events(response: httpx.Response) -> Iterator[Any]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[6:]
            yield payload if payload == "[DONE]" else json.loads(payload)


def stream_chat(http: httpx.Client, body: dict[str, Any]) -> tuple[list[Any], httpx.Response]:
    with http.stream("POST", URL, json={**body, "stream": True}) as r:
        if r.status_code == 200:
            events = list(sse_events(r))
        else:
            events = []
            r.read()
    return events, r


def assemble(events: list[Any]) -> dict[str, Any]:
    """Turn unified chunks into {content, tool_calls, finish_reason} — the same for every provider."""
    content, calls, finish = "", {}, None
    for event in events:
        if event == "[DONE]" or not event.get("choices"):
            continue
        choice = event["choices"][0]
        delta = choice.get("delta", {})
        content += delta.get("content") or ""
        for tc in delta.get("tool_calls") or []:
            slot = calls.setdefault(tc["index"], {"id": None, "name": "", "arguments": ""})
            slot["id"] = tc.get("id") or slot["id"]
            fn = tc.get("function") or {}
            slot["name"] += fn.get("name") or ""
            slot["arguments"] += fn.get("arguments") or ""
        finish = choice.get("finish_reason") or finish
    tool_calls = [
        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": json.loads(c["arguments"])}}
        for _, c in sorted(calls.items())
    ]
    return {"content": content, "tool_calls": tool_calls, "finish_reason": finish}


def test_plain_completion_unified_shape(native_gw: Gateway) -> None:
    with native_gw.client() as http:
        r = http.post(URL, json={"messages": [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "hello native"}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert "hello native" in body["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert r.headers["x-sentinel-provider"] == native_gw.provider  # type: ignore[attr-defined]
    assert r.headers["x-sentinel-model"] == MODELS[native_gw.provider]  # type: ignore[attr-defined]
    assert r.headers["x-sentinel-tier"] == "simple"


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calling_loop(native_gw: Gateway, stream: bool) -> None:
    """The same client code runs the whole loop against either provider."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What is the weather in Paris?"}]
    body = {"messages": messages, "tools": [WEATHER_TOOL], "tool_choice": "auto"}
    with native_gw.client() as http:
        if stream:
            events, r = stream_chat(http, body)
            assert r.status_code == 200
            assert events[0]["choices"][0]["delta"]["role"] == "assistant"
            assert events[-1] == "[DONE]"
            first = assemble(events)
        else:
            r = http.post(URL, json=body)
            assert r.status_code == 200, r.text
            choice = r.json()["choices"][0]
            first = {**choice["message"], "finish_reason": choice["finish_reason"]}
        assert first["finish_reason"] == "tool_calls"
        call = first["tool_calls"][0]
        assert call["function"]["name"] == "get_weather"
        assert isinstance(call["function"]["arguments"], dict) and "city" in call["function"]["arguments"]
        messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21 C"})
        if stream:
            events, r = stream_chat(http, {"messages": messages, "tools": [WEATHER_TOOL]})
            final = assemble(events)
        else:
            r = http.post(URL, json={"messages": messages, "tools": [WEATHER_TOOL]})
            assert r.status_code == 200, r.text
            final = {**r.json()["choices"][0]["message"], "finish_reason": r.json()["choices"][0]["finish_reason"]}
    assert final["finish_reason"] == "stop"
    assert "sunny" in final["content"]


def test_stream_shape(native_gw: Gateway) -> None:
    with native_gw.client() as http:
        events, r = stream_chat(http, {"messages": [{"role": "user", "content": "one two three four"}]})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-sentinel-provider"] == native_gw.provider  # type: ignore[attr-defined]
    chunks = [e for e in events if e != "[DONE]"]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len({c["id"] for c in chunks}) == 1  # one id for the whole stream
    text = assemble(events)
    assert "one two three four" in text["content"] and text["finish_reason"] == "stop"
    assert events[-1] == "[DONE]"
    usage = [c for c in chunks if c.get("usage")]
    assert usage and usage[-1]["usage"]["completion_tokens"] > 0


def test_a_stream_whose_provider_gave_no_usage_still_ends_with_the_usage_recorded(native_gw: Gateway) -> None:
    """The README's stream: a final chunk, a usage chunk, `[DONE]`. A provider that sends no usage
    (an OpenAI-compatible server ignoring `stream_options`) ended it at its finish chunk: the client
    was told nothing of what it was charged, where an unstreamed answer shows the estimate."""
    with native_gw.client() as http:
        events, r = stream_chat(http, {"messages": [{"role": "user", "content": "one two three #mock:no_usage"}]})
    assert r.status_code == 200 and events[-1] == "[DONE]"
    chunks = [e for e in events if e != "[DONE]"]
    assert assemble(events)["finish_reason"] == "stop"
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["id"] == chunks[0]["id"], usage
    row = native_gw.settled_rows(1)[0]
    assert row["usage_source"] == "estimated" and row["output_tokens"] > 0
    assert usage["usage"] == {"prompt_tokens": row["input_tokens"], "completion_tokens": row["output_tokens"],
                              "total_tokens": row["input_tokens"] + row["output_tokens"]}


def test_validation_errors_name_the_field(gateway: Gateway) -> None:
    with gateway.client() as http:
        model = http.post(URL, json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})
        role = http.post(URL, json={"messages": [{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}]})
        tier = http.post(URL, json={"tier": "ultra", "messages": [{"role": "user", "content": "x"}]})
        conv = http.post(URL, json={"conversation_id": "", "messages": [{"role": "user", "content": "x"}]})
        bad_json = http.post(URL, content=b"{", headers={"content-type": "application/json"})
    for r in (model, role, tier, conv, bad_json):
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert "model" in model.json()["error"]["message"]
    assert "messages.1.role" in role.json()["error"]["message"]
    assert "tier" in tier.json()["error"]["message"]


def test_a_request_the_models_wire_format_cannot_carry_names_the_field_in_details_param(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """A 400 for what the tier's model cannot be sent (Claude refuses an empty message) names its field in
    `details.param`, as every other validation error does (README: Errors); it named it in the message only."""
    gw = gateway_factory(providers_file=tiers_file(tmp_path, "anthropic"))
    with gw.client() as http:
        r = http.post(URL, json={"messages": [{"role": "user", "content": []}]})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["provider"] == "anthropic"
    assert error["details"] == {"param": "messages.0.content"}, error


def test_a_tool_name_with_a_final_newline_is_refused_before_anything_is_sent(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """Tool names must match `^[a-zA-Z0-9_-]{1,64}$`, checked with `re.match`: its `$` matches before a
    final newline, so `"get_weather\n"` passed, went upstream, and came back a provider's 400 charged
    as a call the provider refused (on the native API and every translated `/v1` request)."""
    with spying(create_mock_app()) as (_, spy):
        gw = gateway_factory(openai_api_url=spy.url + "/v1", providers_file=tiers_file(tmp_path, "openai"))
        tool = {**WEATHER_TOOL, "function": {**WEATHER_TOOL["function"], "name": "get_weather\n"}}
        with gw.client() as http:
            r = http.post(URL, json={"messages": [{"role": "user", "content": "x"}], "tools": [tool]})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert (error["code"], error["details"]["param"]) == ("invalid_request", "tools.0.function.name"), error
        assert spy.seen == [] and recorded_ids(gw.settings.database_url) == set()


@pytest.mark.parametrize("name", ["John Doe", "a<b>", "x|y", "a/b", "a\\b", "ann\n", "\u00e9", "n" * 65])
def test_a_message_name_an_openai_model_refuses_is_sentinels_400_before_anything_is_sent(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, name: str
) -> None:
    """OpenAI refuses a message `name` outside `^[a-zA-Z0-9_-]+$` (its 400), Anthropic has no place for
    one: on a tier holding both, the same request succeeded or failed by the model drawn. The name is
    checked before any candidate is chosen: Sentinel's own 400 naming it, nothing sent or recorded."""
    with spying(create_mock_app()) as (_, spy):
        gw = gateway_factory(openai_api_url=spy.url + "/v1", providers_file=tiers_file(tmp_path, "openai"))
        messages = [{"role": "user", "content": "x"}, {"role": "user", "content": "y", "name": name}]
        with gw.client() as http:
            r = http.post(URL, json={"messages": messages})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert (error["type"], error["code"], error["details"]["param"]) == (
            "invalid_request_error", "invalid_request", "messages.1.name"), error
        assert "messages.1.name" in error["message"]
        assert spy.seen == [] and recorded_ids(gw.settings.database_url) == set()


def test_a_message_name_reaches_an_openai_model_and_is_left_out_for_claude(native_gw: Gateway) -> None:
    """A name every model takes is sent to an OpenAI model as it is; Anthropic's format has no field
    for it, so Claude is sent the turn without it (not folded into the text)."""
    messages = [{"role": "user", "content": "hi there", "name": "Ann_1-b"}]
    with native_gw.client() as http:
        r = http.post(URL, json={"messages": messages})
    assert r.status_code == 200, r.text
    if native_gw.provider == "openai":  # type: ignore[attr-defined]
        path, url = "/v1/chat/completions", native_gw.settings.openai_api_url.removesuffix("/v1")
    else:
        path, url = "/v1/messages", native_gw.settings.anthropic_api_url
    sent = httpx.get(f"{url}/__mock/last_request", params={"path": path}, timeout=5).json()["body"]
    if native_gw.provider == "openai":  # type: ignore[attr-defined]
        assert sent["messages"] == [{"role": "user", "content": "hi there", "name": "Ann_1-b"}]
    else:
        assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}]


def test_a_replayed_whitespace_only_text_beside_a_tool_call_reaches_claude_without_it(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """A model's answer may carry whitespace-only text beside its tool call; the client replays it.
    Anthropic refuses a whitespace-only text block (400), so every later turn of that conversation
    failed: the block is left out of what Claude is sent, the rest of the turn kept."""
    gw = gateway_factory(providers_file=tiers_file(tmp_path, "anthropic"))
    call = {"id": "toolu_ws", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    messages = [
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": "\n\n", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "toolu_ws", "content": "sunny"},
    ]
    with gw.client() as http:
        r = http.post(URL, json={"messages": messages, "tools": [WEATHER_TOOL]})
    assert r.status_code == 200, r.text
    sent = httpx.get(f"{gw.settings.anthropic_api_url}/__mock/last_request", params={"path": "/v1/messages"},
                     timeout=5).json()["body"]
    assert sent["messages"][1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_ws", "name": "get_weather", "input": {"city": "Oslo"}}]}


def test_an_empty_system_message_is_not_sent_to_claude(gateway_factory: Callable[..., Gateway], tmp_path: Path) -> None:
    """A client with no system prompt set often sends an empty system message; Anthropic refuses an
    empty `system` (400 "system: text content blocks must be non-empty"). Claude is sent none."""
    gw = gateway_factory(providers_file=tiers_file(tmp_path, "anthropic"))
    with gw.client() as http:
        r = http.post(URL, json={"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    sent = httpx.get(f"{gw.settings.anthropic_api_url}/__mock/last_request", params={"path": "/v1/messages"},
                     timeout=5).json()["body"]
    assert "system" not in sent and sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


def test_a_turn_of_no_content_parts_reaches_an_openai_model_as_no_content(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """`content: []` went to an OpenAI model as given, which refuses an empty array (a 400 charged as
    its refusal), while Claude's translation reads it as the empty message `""` is: sent as that."""
    gw = gateway_factory(providers_file=tiers_file(tmp_path, "openai"))
    messages = [{"role": "user", "content": "weather in Oslo?"},
                {"role": "assistant", "content": [], "tool_calls": [_call("c1")]},
                {"role": "tool", "tool_call_id": "c1", "content": []},
                {"role": "user", "content": []}]
    with gw.client() as http:
        r = http.post(URL, json={"messages": messages, "tools": [WEATHER_TOOL]})
    assert r.status_code == 200, r.text
    sent = httpx.get(f"{gw.settings.openai_api_url.removesuffix('/v1')}/__mock/last_request",
                     params={"path": "/v1/chat/completions"}, timeout=5).json()["body"]
    assert [m["content"] for m in sent["messages"]] == ["weather in Oslo?", None, "", ""]


def test_a_sampling_value_openais_reasoning_models_refuse_is_carried_by_another_model_or_refused(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """o-series and gpt-5 models take `temperature` and `top_p` only as 1: another went to them as
    given, refused there (a 400 charged as its refusal) while the tier's gpt-4o-mini served it. A model
    that cannot carry it: the tier's other candidate serves it; on such a model alone it is Sentinel's
    400 naming the field, nothing sent. The default, 1, is the same request without it."""
    entries = {"o3-only": [{"provider": "openai", "model": "o3-mini", "relative_cost": 1}],
               "mixed": [{"provider": "openai", "model": "o3-mini", "relative_cost": 1},
                         {"provider": "openai", "model": "gpt-4o-mini", "relative_cost": 1}]}
    for name, tier in entries.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"tiers": {"simple": tier, "moderate": tier, "complex": tier}}))
    ask = [{"role": "user", "content": "hi"}]
    with spying(create_mock_app()) as (_, spy):
        gw = gateway_factory(openai_api_url=spy.url + "/v1", providers_file=tmp_path / "o3-only.yaml")
        for field in ("temperature", "top_p"):
            recorded = recorded_ids(gw.settings.database_url)
            with gw.client() as http:
                r = http.post(URL, json={"messages": ask, field: 0.5})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["details"] == {"param": field} and field in r.json()["error"]["message"]
            assert spy.seen == [] and recorded_ids(gw.settings.database_url) == recorded
            with gw.client() as http:
                r = http.post(URL, json={"messages": ask, field: 1})
            assert r.status_code == 200, r.text
            sent = httpx.get(f"{spy.url}/__mock/last_request", params={"path": "/v1/chat/completions"},
                             timeout=5).json()["body"]
            assert sent["model"] == "o3-mini" and field not in sent
            spy.clear()
        mixed = gateway_factory(openai_api_url=spy.url + "/v1", providers_file=tmp_path / "mixed.yaml")
        with mixed.client() as http:
            served = {http.post(URL, json={"messages": ask, "temperature": 0.5}).headers["x-sentinel-model"]
                      for _ in range(8)}
        assert served == {"gpt-4o-mini"}
        # gpt-5.1 and later reason only when asked, and then take them
        tier = [{"provider": "openai", "model": "gpt-5.1", "relative_cost": 1}]
        (tmp_path / "gpt-5.1.yaml").write_text(yaml.safe_dump({"tiers": {"simple": tier, "moderate": tier,
                                                                          "complex": tier}}))
        later = gateway_factory(openai_api_url=spy.url + "/v1", providers_file=tmp_path / "gpt-5.1.yaml")
        with later.client() as http:
            r = http.post(URL, json={"messages": ask, "temperature": 0.5})
        assert r.status_code == 200, r.text
        assert httpx.get(f"{spy.url}/__mock/last_request", params={"path": "/v1/chat/completions"},
                         timeout=5).json()["body"]["temperature"] == 0.5


def test_native_requires_auth(gateway: Gateway) -> None:
    r = httpx.post(gateway.url + URL, json={"messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("directive", "status", "code"),
    [
        ("#mock:status=429", 429, "provider_rate_limited"),
        ("#mock:status=500", 502, "provider_error"),
        ("#mock:status=401", 502, "provider_auth_error"),
        ("#mock:status=400", 400, "provider_rejected_request"),
    ],
)
def test_provider_error_mapping(native_gw: Gateway, directive: str, status: int, code: str) -> None:
    with native_gw.client() as http:
        r = http.post(URL, json={"messages": [{"role": "user", "content": f"fail please {directive}"}]})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["provider"] == native_gw.provider  # type: ignore[attr-defined]
    assert "sk-" not in r.text
    if status == 429:
        assert "retry-after" in r.headers


def test_provider_timeout_is_504(gateway_factory: Callable[..., Gateway], tmp_path: Path) -> None:
    gw = gateway_factory(providers_file=tiers_file(tmp_path, "openai"), upstream_timeout_seconds=0.3)
    with gw.client() as http:
        r = http.post(URL, json={"messages": [{"role": "user", "content": "slow #mock:latency_ms=1500"}]})
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"


def test_broken_stream_ends_with_error_event(native_gw: Gateway) -> None:
    with native_gw.client() as http:
        events, r = stream_chat(
            http, {"messages": [{"role": "user", "content": "a b c d e f g h #mock:disconnect_after=4"}]}
        )
    assert r.status_code == 200
    assert events and "[DONE]" not in events
    assert events[-1]["error"]["type"] == "stream_error"


def test_docs_protected_by_key(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(docs_api_key="docs-secret-for-tests-0123")
    with httpx.Client(base_url=gw.url) as http:
        assert http.get("/native/docs/openapi.json").status_code == 401
        assert http.get("/native/docs/openapi.json", headers={"X-Docs-Key": "wrong"}).status_code == 401
        assert http.get("/native/docs", headers={"X-Docs-Key": "docs-secret-for-tests-0123"}).status_code == 200
        doc = http.get("/native/docs/openapi.json", headers={"X-Docs-Key": "docs-secret-for-tests-0123"}).json()
    from openapi_spec_validator import validate

    validate(doc)
    assert doc["openapi"].startswith("3.1")
    assert {"ChatRequest", "ChatResponse", "ChatChunk", "ErrorBody"} <= set(doc["components"]["schemas"])


def test_cost_recorded_from_tier_prices(gateway_factory: Callable[..., Gateway], tmp_path: Path) -> None:
    entry = {"provider": "openai", "model": "gpt-4o-mini", "relative_cost": 1,
             "input_price_per_million": 1000.0, "output_price_per_million": 2000.0}
    path = tmp_path / "priced.yaml"
    path.write_text(yaml.safe_dump({"tiers": {"simple": [entry], "moderate": [entry], "complex": [entry]}}))
    gw = gateway_factory(providers_file=path)
    with gw.client() as http:
        usage = http.post(URL, json={"messages": [{"role": "user", "content": "price me"}]}).json()["usage"]
        metrics = http.get("/metrics").text
    expected = (usage["prompt_tokens"] * 1000.0 + usage["completion_tokens"] * 2000.0) / 1_000_000
    line = next(x for x in metrics.splitlines() if x.startswith('sentinel_cost_usd_total{model="gpt-4o-mini"'))
    assert abs(float(line.rsplit(" ", 1)[1]) - expected) < 1e-9


def test_native_requests_are_metered_and_recorded(gateway_factory: Callable[..., Gateway], tmp_path: Path) -> None:
    from tests.api.test_quotas import ledger_totals, set_plan, wait_for

    gw = gateway_factory(providers_file=tiers_file(tmp_path, "anthropic"), usage_flush_interval_seconds=0.1)
    set_plan(gw.settings.database_url, "alice", "native-tiny", "requests=3/1h")
    with gw.client() as http:
        ok = http.post(URL, json={"messages": [{"role": "user", "content": "count me"}]})
        events, broken = stream_chat(http, {"messages": [{"role": "user", "content": "a b c d #mock:disconnect_after=3"}]})
        third = http.post(URL, json={"messages": [{"role": "user", "content": "and me"}]})
        denied = http.post(URL, json={"messages": [{"role": "user", "content": "not me"}]})
    assert ok.status_code == 200 and third.status_code == 200 and broken.status_code == 200
    assert events[-1]["error"]["type"] == "stream_error"
    assert denied.status_code == 429 and denied.json()["error"]["code"] == "quota_exceeded"
    assert ok.headers["x-ratelimit-limit"] == "3"
    expected_input = ok.json()["usage"]["prompt_tokens"] + third.json()["usage"]["prompt_tokens"]
    # Three served requests (the broken stream too, with what it streamed), the denied one not.
    assert wait_for(lambda: ledger_totals(gw.settings.database_url, "alice")["requests"] == 3)
    assert ledger_totals(gw.settings.database_url, "alice")["input_tokens"] >= expected_input


def test_an_answer_of_tool_calls_only_costs_output_tokens_without_provider_usage(native_gw: Gateway) -> None:
    """A provider that reports no usage: the output was estimated from the message text only, so an
    answer of tool calls (any size of arguments) cost 0 output tokens."""
    body = {"messages": [{"role": "user", "content": "What is the weather in Paris? #mock:no_usage"}],
            "tools": [WEATHER_TOOL], "tool_choice": "auto"}
    with native_gw.client() as http:
        r = http.post(URL, json=body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and not choice["message"].get("content")
    assert r.json()["usage"]["completion_tokens"] > 0, r.json()["usage"]


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://host/x.png", "/local.png", "gopher://10.0.0.1/x"])
def test_an_image_url_is_http_s_or_a_data_url(native_gw: Gateway, url: str) -> None:
    """An image URL of another scheme went to an OpenAI-format server as it was (`file://`, which
    vLLM reads from disk under its allowed media path), though the Native API takes http(s) and data
    URLs alone (what both providers' APIs take), as a translated Messages request now refuses it."""
    image = {"type": "image_url", "image_url": {"url": url}}
    with native_gw.client() as http:
        r = http.post(URL, json={"max_tokens": 20, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "what is it?"}, image]}]})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and "messages.0.content.1.image_url.url" in error["message"], error


@pytest.mark.parametrize("url", ["HTTPS://example.com/cat.png", "Http://example.com/cat.png",
                                 "DATA:image/png;base64,iVBORw0KGgo="])
def test_an_image_urls_scheme_is_read_in_any_case(native_gw: Gateway, url: str) -> None:
    """The request's check reads a scheme in any case (RFC 3986), the Anthropic translation did
    not: a conversation on Claude was refused with a 400 saying the URL must be http(s)."""
    image = {"type": "image_url", "image_url": {"url": url}}
    with native_gw.client() as http:
        r = http.post(URL, json={"max_tokens": 20, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "what is it?"}, image]}]})
    assert r.status_code == 200, r.text


@pytest.fixture(params=["openai", "anthropic"])
def spied_native(
    request: pytest.FixtureRequest, gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> Iterator[tuple[Gateway, Any]]:
    """A gateway whose tier holds one model of `request.param`, its upstream a spy: what was sent."""
    with spying(create_mock_app()) as (_, spy):
        gw = gateway_factory(openai_api_url=spy.url + "/v1", anthropic_api_url=spy.url,
                             providers_file=tiers_file(tmp_path, request.param))
        yield gw, spy


def _call(call_id: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": call_id, "type": "function",
            "function": {"name": "get_weather", "arguments": arguments if arguments is not None else {"city": "Oslo"}}}


def _refused_before_anything(gw: Gateway, spy: Any, body: dict[str, Any], param: str) -> dict[str, Any]:
    """POST `body` (streamed and not): a 400 in the native shape naming `param`, nothing sent upstream
    nor recorded. The error, for its message."""
    for stream in (False, True):
        with gw.client() as http:
            r = http.post(URL, json={**body, "stream": stream})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert (error["type"], error["code"], error["details"]) == (
            "invalid_request_error", "invalid_request", {"param": param}), error
    assert spy.seen == [] and recorded_ids(gw.settings.database_url) == set()
    return error  # type: ignore[no-any-return]


_ASK = {"role": "user", "content": "weather in Oslo?"}
_TOOL_TURN_CASES = {
    # a call never answered, the user speaking next: both providers refuse it
    "unanswered": ([_ASK, {"role": "assistant", "content": None, "tool_calls": [_call("c1")]},
                    {"role": "user", "content": "well?"}], "messages.1.tool_calls.0.id"),
    "one of two unanswered": ([_ASK, {"role": "assistant", "content": None, "tool_calls": [_call("c1"), _call("c2")]},
                               {"role": "tool", "tool_call_id": "c2", "content": "sunny"},
                               {"role": "user", "content": "well?"}], "messages.1.tool_calls.0.id"),
    "unanswered at the end": ([_ASK, {"role": "assistant", "content": None, "tool_calls": [_call("c1")]}],
                              "messages.1.tool_calls.0.id"),
    # a result naming a call of an earlier turn, not the one just made
    "result of an earlier turn": ([_ASK, {"role": "assistant", "content": None, "tool_calls": [_call("c1")]},
                                   {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                                   {"role": "user", "content": "and now?"},
                                   {"role": "tool", "tool_call_id": "c1", "content": "rain"}],
                                  "messages.4.tool_call_id"),
    "answered twice": ([_ASK, {"role": "assistant", "content": None, "tool_calls": [_call("c1")]},
                        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                        {"role": "tool", "tool_call_id": "c1", "content": "rain"}], "messages.3.tool_call_id"),
    # one id for two calls: Anthropic refuses, OpenAI may not
    "duplicate id in one message": ([_ASK, {"role": "assistant", "content": None,
                                            "tool_calls": [_call("c1"), _call("c1", {"city": "Bergen"})]},
                                     {"role": "tool", "tool_call_id": "c1", "content": "sunny"}],
                                    "messages.1.tool_calls.1.id"),
    "duplicate id across the conversation": (
        [_ASK, {"role": "assistant", "content": None, "tool_calls": [_call("c1")]},
         {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
         {"role": "user", "content": "and Bergen?"},
         {"role": "assistant", "content": None, "tool_calls": [_call("c1", {"city": "Bergen"})]},
         {"role": "tool", "tool_call_id": "c1", "content": "rain"}], "messages.4.tool_calls.0.id"),
}


@pytest.mark.parametrize("case", list(_TOOL_TURN_CASES))
def test_tool_turns_a_provider_would_refuse_are_sentinels_400_whatever_the_model(
    spied_native: tuple[Gateway, Any], case: str
) -> None:
    """A tool call left unanswered, a result naming no call just made, an id used twice: OpenAI or
    Anthropic refuses them (the duplicate, Anthropic only), so on a tier holding both the same request
    succeeded or failed by the model drawn, and a refused one was sent, charged and the provider's 400
    relayed. One rule for every model, before anything is reserved or sent."""
    gw, spy = spied_native
    messages, param = _TOOL_TURN_CASES[case]
    error = _refused_before_anything(gw, spy, {"messages": messages, "tools": [WEATHER_TOOL]}, param)
    assert param in error["message"]


def test_tool_turns_answered_in_order_still_reach_the_model(spied_native: tuple[Gateway, Any]) -> None:
    """Parallel calls answered in any order, then a later turn with calls of new ids: sent as before."""
    gw, spy = spied_native
    messages = [_ASK, {"role": "assistant", "content": None, "tool_calls": [_call("c1"), _call("c2")]},
                {"role": "tool", "tool_call_id": "c2", "content": "sunny"},
                {"role": "tool", "tool_call_id": "c1", "content": "rain"},
                {"role": "user", "content": "and Bergen?"},
                {"role": "assistant", "content": "checking", "tool_calls": [_call("c3", {"city": "Bergen"})]},
                {"role": "tool", "tool_call_id": "c3", "content": "fog"}]
    with gw.client() as http:
        r = http.post(URL, json={"messages": messages, "tools": [WEATHER_TOOL]})
    assert r.status_code == 200, r.text
    assert len(spy.seen) == 1


def test_temperature_and_top_p_together_are_refused_for_every_model(spied_native: tuple[Gateway, Any]) -> None:
    """Anthropic's newer models refuse `temperature` and `top_p` together ("cannot both be specified for
    this model"), OpenAI's take them: the translation sent both, so the request's fate hung on the model
    drawn. The native format takes one of them, for every model; each alone still reaches the model."""
    gw, spy = spied_native
    ask = {"messages": [{"role": "user", "content": "hi"}]}
    error = _refused_before_anything(gw, spy, {**ask, "temperature": 0.2, "top_p": 0.9}, "top_p")
    assert "temperature" in error["message"] and "top_p" in error["message"]
    with gw.client() as http:
        for knob in ({"temperature": 0.2}, {"top_p": 0.9}):
            r = http.post(URL, json={**ask, **knob})
            assert r.status_code == 200, r.text


@pytest.mark.parametrize("where", ["arguments", "tools"])
@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**30])
def test_an_integer_json_cannot_carry_exactly_is_refused_not_rounded(
    spied_native: tuple[Gateway, Any], where: str, number: int
) -> None:
    """orjson reads an integer outside -2**63..2**64-1 as the nearest float: a user's id in a tool call's
    `arguments`, or a tool schema's `maximum`, reached the model as another number. A 400 naming it."""
    gw, spy = spied_native
    tool = json.loads(json.dumps(WEATHER_TOOL))
    messages: list[dict[str, Any]] = [_ASK]
    if where == "arguments":
        messages += [{"role": "assistant", "content": None, "tool_calls": [_call("c1", {"city": "Oslo", "id": number})]},
                     {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
        param = "messages.1.tool_calls.0.function.arguments.id"
    else:
        tool["function"]["parameters"]["properties"]["id"] = {"type": "integer", "maximum": number}
        param = "tools.0.function.parameters.properties.id.maximum"
    for stream in (False, True):
        body = json.dumps({"messages": messages, "tools": [tool], "stream": stream})  # (exact integers)
        with gw.client() as http:
            r = http.post(URL, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["details"] == {"param": param}, r.text
    assert spy.seen == [] and recorded_ids(gw.settings.database_url) == set()


def test_numbers_json_carries_exactly_reach_the_model_unchanged(spied_native: tuple[Gateway, Any]) -> None:
    """2**63 (within orjson's unsigned 64 bits) and a float written as one (`1e19`) pass as they are."""
    gw, spy = spied_native
    messages = [_ASK, {"role": "assistant", "content": None,
                       "tool_calls": [_call("c1", {"city": "Oslo", "id": 2**63, "big": 1e19})]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    with gw.client() as http:
        r = http.post(URL, json={"messages": messages, "tools": [WEATHER_TOOL]})
    assert r.status_code == 200, r.text
    assert len(spy.seen) == 1
    path = spy.seen[0].path
    sent = httpx.get(f"{spy.url}/__mock/last_request", params={"path": path}, timeout=5).json()["body"]
    if path.endswith("/chat/completions"):
        arguments = json.loads(sent["messages"][1]["tool_calls"][0]["function"]["arguments"])
    else:
        arguments = sent["messages"][1]["content"][0]["input"]
    assert arguments == {"city": "Oslo", "id": 2**63, "big": 1e19}


@pytest.mark.parametrize("name", ["get weather", "get_weather\n", "a.b", "\u00e9t\u00e9", "n" * 65])
def test_a_tool_calls_name_in_the_history_is_held_to_the_tool_name_rule_before_anything_is_sent(
    spied_native: tuple[Gateway, Any], name: str
) -> None:
    """A tool definition's name must match `^[a-zA-Z0-9_-]{1,64}$`; a call in the history naming a tool
    was not checked: a history replayed with a name a provider refuses was admitted, sent and refused
    upstream (charged as a call it refused). Sentinel's 400 naming it, for every model alike."""
    gw, spy = spied_native
    call = {"id": "c1", "type": "function", "function": {"name": name, "arguments": {"city": "Oslo"}}}
    messages = [_ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    param = "messages.1.tool_calls.0.function.name"
    error = _refused_before_anything(gw, spy, {"messages": messages, "tools": [WEATHER_TOOL]}, param)
    assert param in error["message"] and "^[a-zA-Z0-9_-]{1,64}$" in error["message"]
    call["function"]["name"] = "n" * 64  # the longest name a definition may have: sent as before
    with gw.client() as http:
        r = http.post(URL, json={"messages": messages, "tools": [WEATHER_TOOL]})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("stop", ["s" * 257, ["</answer>", "x" * 1_000_000]])
def test_a_stop_sequence_longer_than_256_characters_is_refused_before_anything_is_sent(
    spied_native: tuple[Gateway, Any], stop: str | list[str]
) -> None:
    """A stop sequence of up to a whole body's size (~1 MB) reached the provider (which refuses or
    reads it) while no estimate counted it: the reservation held nothing of it. A stop sequence is a
    delimiter: one of at most 256 characters is taken, a longer one is a 400 naming it."""
    gw, spy = spied_native
    ask = {"messages": [{"role": "user", "content": "hi"}]}
    param = "stop" if isinstance(stop, str) else "stop.1"
    error = _refused_before_anything(gw, spy, {**ask, "stop": stop}, param)
    assert "256" in error["message"]
    with gw.client() as http:
        r = http.post(URL, json={**ask, "stop": ["</answer>", "s" * 256]})
    assert r.status_code == 200, r.text


_PNG = "iVBORw0KGgo="  # a PNG's signature, base64


def _image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


@pytest.fixture(params=["openai", "anthropic"])
def metered_native(
    request: pytest.FixtureRequest, gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> Iterator[tuple[Gateway, Any]]:
    """`spied_native` on a plan whose counters the admin API shows, read on a still window clock."""
    with spying(create_mock_app()) as (_, spy):
        gw = gateway_factory(openai_api_url=spy.url + "/v1", anthropic_api_url=spy.url,
                             providers_file=tiers_file(tmp_path, request.param), default_plan="requests=100/1h",
                             admin_key="native-images-admin-key-0123", window_clock=lambda: 1_700_000_000.0)
        yield gw, spy


def _refused_touching_nothing(gw: Gateway, spy: Any, content: list[dict[str, Any]], param: str) -> str:
    """A conversation's first turn of `content` is refused naming `param` (`_refused_before_anything`),
    no session bound, nothing counted; then a well-formed one is served. The error's message."""
    body = {"max_tokens": 20, "conversation_id": "conv-images", "messages": [{"role": "user", "content": content}]}
    error = _refused_before_anything(gw, spy, body, param)
    assert gw.read_stored(SessionStore.key("alice", "conv-images")) is None
    assert gw.quota_used()["requests"] == 0
    with gw.client() as http:
        r = http.post(URL, json={**body, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is it?"}, _image(f"data:image/png;base64,{_PNG}")]}]})
    assert r.status_code == 200, r.text
    return error["message"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("url", [
    "data:text/plain,hello", "data:text/plain;base64,aGVsbG8=", "data:image/png,raw", "data:,hi",
    "data:image/png;charset=utf-8;base64," + _PNG, "data:;base64," + _PNG,
])
def test_a_data_url_of_no_base64_image_is_refused_before_anything(metered_native: tuple[Gateway, Any], url: str) -> None:
    """A data URL was checked for its scheme alone: `data:text/plain,…` went to an OpenAI-format model as
    given (refused there, charged as its refusal) while Claude's translation refused it, though the
    error message said the URL must be `data:image/<type>;base64,...`. It is held to that rule now."""
    gw, spy = metered_native
    message = _refused_touching_nothing(gw, spy, [{"type": "text", "text": "what is it?"}, _image(url)],
                                        "messages.0.content.1.image_url.url")
    assert "data:image/<type>;base64" in message


@pytest.mark.parametrize("data", ["", "not base64!", "iVBORw0KGgo", "iVBORw0K\nGgo=", "iVBORw0K Ggo=",
                                  "iVBORw0KGgo=====", "iVBORw0KGgo_", "=iVBORw0KGgo", "iVBORw0KGgo=\u00e9"])
def test_a_data_url_of_invalid_base64_is_refused_before_anything(metered_native: tuple[Gateway, Any], data: str) -> None:
    """An image's base64 is standard, padded, with nothing else in it (no line breaks), as the providers
    decode it: invalid base64 reached the drawn model, which refused it, charged as its refusal."""
    gw, spy = metered_native
    message = _refused_touching_nothing(gw, spy, [_image(f"Data:image/png;base64,{data}")],
                                        "messages.0.content.0.image_url.url")
    assert "base64" in message


def test_more_than_100_images_in_a_request_are_refused_before_anything(metered_native: tuple[Gateway, Any]) -> None:
    """The images of a request were not counted: 500 reached a Claude model (Anthropic's documented
    maximum is 100 a request). At most 100 in all its messages; the 101st is named."""
    gw, spy = metered_native
    # 60 + 40 in two user turns is the most; one more, the third turn's second part, is refused.
    turn = [_image(f"data:image/png;base64,{_PNG}")]
    history = [{"role": "user", "content": turn * 60}, {"role": "assistant", "content": "two cats"},
               {"role": "user", "content": turn * 40}, {"role": "assistant", "content": "more cats"}]
    body = {"max_tokens": 20, "conversation_id": "conv-images",
            "messages": [*history, {"role": "user", "content": [{"type": "text", "text": "and?"}, *turn]}]}
    error = _refused_before_anything(gw, spy, body, "messages.4.content.1.image_url")
    assert "at most 100 images" in error["message"]
    assert gw.read_stored(SessionStore.key("alice", "conv-images")) is None
    assert gw.quota_used()["requests"] == 0
    with gw.client() as http:
        r = http.post(URL, json={**body, "messages": [*history, {"role": "user", "content": "and?"}]})
    assert r.status_code == 200, r.text
