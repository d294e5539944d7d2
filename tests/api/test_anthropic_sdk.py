"""The Anthropic-compatible surface through the official `anthropic` SDK (sync and async), against a real
Sentinel and the mock upstream: a Claude model is relayed as it is (the same-format fast path)."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable

import anthropic
import httpx
import orjson
import pytest

from sentinel.routing.health import ProviderHealth
from tests.api.conftest import Gateway
from tests.support.attack import ledger_rows
from tests.support.payloads import resent_blocks

HAIKU = "claude-3-5-haiku-20241022"
IMAGE = base64.b64encode(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10" + bytes(32)).decode()
LOOKUP = {
    "name": "lookup",
    "description": "Look something up",
    "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
}


def upstream_requests(gw: Gateway, path: str = "/v1/messages") -> list[dict]:
    base = gw.settings.anthropic_api_url
    return httpx.get(f"{base}/__mock/requests", params={"path": path}, timeout=5).json()["data"]


def in_backoff(gw: Gateway, model: str) -> None:
    """`model`'s provider in a hard backoff for it: count_tokens answers Sentinel's estimate."""
    gw.write_stored(ProviderHealth.key("anthropic", model),
                    orjson.dumps({"failures": 1, "until_ts": time.time() + 300, "backoff": 30.0}), 600)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_plain_message_with_system_prompts(gateway: Gateway) -> None:
    claude = gateway.anthropic()
    as_string = claude.messages.create(model=HAIKU, max_tokens=30, system="be terse", messages=user("hello there"))
    assert as_string.content[0].text == "Echo: hello there"  # type: ignore[union-attr]
    assert as_string.stop_reason == "end_turn" and as_string.usage.output_tokens == 3
    as_blocks = claude.messages.create(
        model=HAIKU, max_tokens=30, system=[{"type": "text", "text": "be "}, {"type": "text", "text": "terse"}],
        messages=user("hello there"),
    )
    assert as_blocks.usage.input_tokens == as_string.usage.input_tokens
    raw = claude.messages.with_raw_response.create(model=HAIKU, max_tokens=5, messages=user("ids"))
    assert raw.headers["request-id"] == raw.headers["x-request-id"]
    assert raw.headers["x-sentinel-provider"] == "anthropic" and raw.headers["x-ratelimit-limit"]


def test_same_format_is_relayed_as_sent(gateway: Gateway) -> None:
    """The body goes upstream as the client wrote it (key order, fields Sentinel does not know) but for
    the end user (`metadata.user_id`: Sentinel's pseudonym of the caller), with the provider key instead
    of the client's, and the client's anthropic-version and anthropic-beta."""
    body = b'{"messages":[{"role":"user","content":"as is"}],"model":"' + HAIKU.encode() + b'","max_tokens":9,"x_unknown":{"kept":true}}'
    headers = {"x-api-key": gateway.key, "anthropic-version": "2023-06-01", "anthropic-beta": "beta-one,beta-two",
               "content-type": "application/json"}
    r = httpx.post(gateway.url + "/v1/messages", content=body, headers=headers)
    assert r.status_code == 200, r.text
    seen = upstream_requests(gateway)[-1]
    assert list(seen["body"]) == ["messages", "model", "max_tokens", "x_unknown", "metadata"]
    assert seen["body"]["x_unknown"] == {"kept": True}
    sent = {k.lower(): v for k, v in seen["headers"].items()}
    assert sent["x-api-key"] == "sk-ant-upstream-secret" and gateway.key not in str(sent)
    assert "authorization" not in sent
    assert sent["anthropic-version"] == "2023-06-01" and sent["anthropic-beta"] == "beta-one,beta-two"


def test_auth_token_and_x_api_key_are_both_accepted(gateway: Gateway) -> None:
    bearer = gateway.anthropic(auth_token=gateway.key)  # Claude Code's ANTHROPIC_AUTH_TOKEN
    assert bearer.messages.create(model=HAIKU, max_tokens=5, messages=user("token")).content
    r = httpx.post(gateway.url + "/v1/messages", headers={"x-api-key": gateway.key},
                   json={"model": HAIKU, "max_tokens": 5, "messages": user("key header")})
    assert r.status_code == 200, r.text
    assert upstream_requests(gateway)[-1]["headers"].get("anthropic-version") == "2023-06-01"  # added when absent


def test_an_empty_anthropic_version_is_taken_as_none(gateway_factory: Callable[..., Gateway]) -> None:
    """`anthropic-version: ""` (or blanks) went upstream as sent: Anthropic's 400 for it was relayed and
    charged to the user as a refused request. It gets the version a request without one gets."""
    gw = gateway_factory(default_plan="requests=2/1m")
    for path, extra in (("/v1/messages", {"max_tokens": 5}), ("/v1/messages/count_tokens", {})):
        r = httpx.post(gw.url + path, headers={"x-api-key": gw.key, "anthropic-version": ""},
                       json={"model": HAIKU, "messages": user("empty version"), **extra})
        assert r.status_code == 200, r.text
        assert upstream_requests(gw, path)[-1]["headers"].get("anthropic-version") == "2023-06-01"


@pytest.mark.parametrize("versions", [("", "2023-06-01"), ("2023-06-01", "2023-06-01"), ("2023-01-01", "2023-06-01")])
def test_anthropic_version_on_two_lines_is_refused(
    gateway_factory: Callable[..., Gateway], versions: tuple[str, str],
) -> None:
    """`anthropic-version` on two lines (one empty: `", 2023-06-01"`) was joined and sent to Anthropic,
    whose 400 for it was relayed and charged to the user. One version is one line: 400
    `duplicate_header` in Anthropic's shape, as a credential sent twice is, before anything is
    reserved or sent; the route's own requests and count_tokens alike."""
    gw = gateway_factory(default_plan="requests=5/1m")
    for path, extra in (("/v1/messages", {"max_tokens": 5}), ("/v1/messages/count_tokens", {})):
        sent = len(upstream_requests(gw, path))
        r = httpx.post(gw.url + path, headers=[("x-api-key", gw.key), *(("anthropic-version", v) for v in versions)],
                       json={"model": HAIKU, "messages": user("two versions"), **extra})
        assert r.status_code == 400, r.text
        error = r.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error", error
        assert "more than one anthropic-version header" in error["error"]["message"]
        assert len(upstream_requests(gw, path)) == sent
    assert ledger_rows(gw.settings.database_url) == []
    assert gw.anthropic().messages.create(model=HAIKU, max_tokens=5, messages=user("one version")).content


def test_max_tokens_out_of_range_says_the_bound(gateway_factory: Callable[..., Gateway]) -> None:
    """A `max_tokens` too large (`10**30`, read as a float; `10**13`, past what Sentinel believes of any
    count) was "required and must be an integer >= 1" or went to the provider: a 400 naming the bound,
    before anything is reserved."""
    gw = gateway_factory(default_plan="requests=1/1m")
    with gw.client() as http:  # (the SDK itself refuses a max_tokens this large without streaming)
        for too_many in (b"1" + b"0" * 30, b"10000000000000", b"0"):
            body = b'{"model":"' + HAIKU.encode() + b'","max_tokens":' + too_many + b',"messages":[{"role":"user","content":"x"}]}'
            r = http.post("/v1/messages", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400, r.text
            assert r.json()["error"] == {
                "type": "invalid_request_error",
                "message": "max_tokens: is required and must be an integer from 1 to 1000000000000",
            }, r.json()
    assert gw.anthropic().messages.create(model=HAIKU, max_tokens=5, messages=user("within")).content  # none reserved


def test_streaming_events_and_final_message(gateway: Gateway) -> None:
    claude = gateway.anthropic()
    with claude.messages.stream(model=HAIKU, max_tokens=30, messages=user("stream these words")) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.content[0].text == "Echo: stream these words"  # type: ignore[union-attr]
    assert final.usage.output_tokens == 4 and final.usage.input_tokens > 0


def test_tools_round_trip(gateway: Gateway) -> None:
    claude = gateway.anthropic()
    first = claude.messages.create(model=HAIKU, max_tokens=50, tools=[LOOKUP], messages=user("find the answer"))
    assert first.stop_reason == "tool_use"
    call = first.content[0]
    assert call.type == "tool_use" and call.name == "lookup" and "q" in call.input  # type: ignore[union-attr]
    second = claude.messages.create(
        model=HAIKU, max_tokens=50, tools=[LOOKUP],
        messages=[
            {"role": "user", "content": "find the answer"},
            {"role": "assistant", "content": first.content},  # type: ignore[typeddict-item]
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "42"}]},  # type: ignore[union-attr]
        ],
    )
    assert second.content[0].text == "Result: 42"  # type: ignore[union-attr]


def test_images_and_cache_control(gateway: Gateway) -> None:
    claude = gateway.anthropic()
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": IMAGE}}
    seen = claude.messages.create(
        model=HAIKU, max_tokens=20, messages=[{"role": "user", "content": [image, {"type": "text", "text": "what"}]}]
    )
    assert seen.content[0].text == "Echo: what"  # type: ignore[union-attr]
    system = [{"type": "text", "text": f"cached prompt {uuid.uuid4().hex} " * 8, "cache_control": {"type": "ephemeral"}}]
    first = claude.messages.create(model=HAIKU, max_tokens=10, system=system, messages=user("q"))
    again = claude.messages.create(model=HAIKU, max_tokens=10, system=system, messages=user("q"))
    assert first.usage.cache_creation_input_tokens > 0 and first.usage.cache_read_input_tokens == 0
    assert again.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens


def test_count_tokens(gateway: Gateway) -> None:
    claude = gateway.anthropic()
    counted = claude.messages.count_tokens(model=HAIKU, system="sys", messages=user("count me"))
    sent = claude.messages.create(model=HAIKU, max_tokens=5, system="sys", messages=user("count me"))
    assert counted.input_tokens == sent.usage.input_tokens > 0
    assert upstream_requests(gateway, "/v1/messages/count_tokens")[-1]["body"]["model"] == HAIKU


def test_typed_errors(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(default_plan="requests=3/1d")
    with pytest.raises(anthropic.AuthenticationError):
        gw.anthropic(api_key="sk-sentinel-wrong").messages.create(model=HAIKU, max_tokens=5, messages=user("x"))
    claude = gw.anthropic()
    with pytest.raises(anthropic.NotFoundError, match="model"):
        claude.messages.create(model="claude-nonexistent", max_tokens=5, messages=user("x"))
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        claude.messages.create(model=HAIKU, max_tokens=0, messages=user("x"))
    for _ in range(3):
        claude.messages.create(model=HAIKU, max_tokens=5, messages=user("spend"))
    with pytest.raises(anthropic.RateLimitError) as caught:
        claude.messages.create(model=HAIKU, max_tokens=5, messages=user("one too many"))
    assert int(caught.value.response.headers["retry-after"]) >= 1
    body = orjson.loads(caught.value.response.content)
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert caught.value.response.headers["x-ratelimit-remaining"] == "0"


def test_upstream_errors_keep_anthropic_types(gateway: Gateway) -> None:
    claude = gateway.anthropic()
    with pytest.raises(anthropic.OverloadedError):
        claude.messages.create(model=HAIKU, max_tokens=5, messages=user("#mock:status=529"))
    with pytest.raises(anthropic.BadRequestError, match="temperature"):
        claude.messages.create(model=HAIKU, max_tokens=5, messages=user("too hot"), extra_body={"temperature": 1.5})
    with pytest.raises(anthropic.InternalServerError) as caught:
        claude.messages.create(model=HAIKU, max_tokens=5, messages=user("#mock:status=500"))
    assert caught.value.status_code == 502


RESENT = " ".join(f"word{i}" for i in range(8000))  # ~23,000 tokens


@pytest.mark.parametrize("kind", list(resent_blocks("")))
def test_text_sent_back_in_any_block_counts_against_the_input_limit(
    gateway_factory: Callable[..., Gateway], kind: str
) -> None:
    """A client sending back a previous server-tool turn (code output, a fetched page, an MCP
    result, redacted thinking, a block type Sentinel does not know) put ~23,000 tokens of its own
    text where the estimate did not look: admitted at ~14 tokens under a 5,000-token input limit
    (and charged that if the stream was cut) where the same text as a message is refused as
    never admissible. Refused alike now; the same block with a short text is served."""
    gw = gateway_factory(default_plan="requests=100/1m,input_tokens=5000/1m")
    claude = gw.anthropic()

    def resending(block: dict) -> list[dict]:
        return [{"role": "user", "content": "run it"}, {"role": "assistant", "content": [block]},
                {"role": "user", "content": "go on"}]

    with pytest.raises(anthropic.RateLimitError, match="can never be admitted"):
        claude.messages.create(model=HAIKU, max_tokens=5, messages=user(RESENT))
    with pytest.raises(anthropic.RateLimitError, match="can never be admitted") as caught:
        claude.messages.create(model=HAIKU, max_tokens=5, messages=resending(resent_blocks(RESENT)[kind]))
    assert orjson.loads(caught.value.response.content)["error"]["type"] == "rate_limit_error"
    served = claude.messages.create(model=HAIKU, max_tokens=5, messages=resending(resent_blocks("a short one")[kind]))
    assert served.content and served.usage.input_tokens > 0



@pytest.mark.parametrize("where", ["output_config", "output_format"])
def test_a_structured_output_schema_counts_against_the_input_limit(
    gateway_factory: Callable[..., Gateway], where: str
) -> None:
    """A structured output's JSON schema (`output_config.format`, the beta's `output_format`) reaches
    the model as text, as a tool's `input_schema` does (and chat's `response_format`, which the
    estimate counts): ~23,000 tokens of descriptions in it were admitted at a few tokens under a
    5,000-token input limit. Refused alike now, relayed or counted (for another model too); a
    short schema is served."""
    gw = gateway_factory(default_plan="requests=100/1m,input_tokens=5000/1m")
    claude = gw.anthropic()

    def asking(description: str) -> dict:
        schema = {"type": "json_schema", "schema": {"type": "object", "description": description,
                                                    "properties": {"a": {"type": "string"}}}}
        return {"output_config": {"format": schema}} if where == "output_config" else {"output_format": schema}

    with pytest.raises(anthropic.RateLimitError, match="can never be admitted"):
        claude.messages.create(model=HAIKU, max_tokens=5, messages=user("fill it"), extra_body=asking(RESENT))
    served = claude.messages.create(model=HAIKU, max_tokens=5, messages=user("fill it"), extra_body=asking("a short one"))
    assert served.content and served.usage.input_tokens > 0
    # Sentinel's own count (for Claude in a hard backoff, not asked) counts it too
    in_backoff(gw, HAIKU)
    counted = claude.messages.with_raw_response.count_tokens(model=HAIKU, messages=user("fill it"),
                                                             extra_body=asking(RESENT))
    assert counted.headers["x-sentinel-estimate"] == "true" and counted.parse().input_tokens > 20_000
    # for a model off Anthropic (translated to `response_format`) it is counted too
    off = claude.messages.count_tokens(model="gpt-4o-mini", messages=user("fill it"), extra_body=asking(RESENT))
    assert off.input_tokens > 20_000

@pytest.mark.parametrize("where", ["compaction", "context_management"])
def test_a_compaction_prompt_counts_against_the_input_limit(
    gateway_factory: Callable[..., Gateway], where: str
) -> None:
    """A compaction's own summarisation prompt (`compaction.instructions` on a compaction request,
    `instructions` of a `compact_20260112` edit) is text the compaction step reads, of any length:
    ~23,000 tokens of it were admitted at a few tokens under a 5,000-token input limit. Refused
    alike now; a short one is served."""
    gw = gateway_factory(default_plan="requests=100/1m,input_tokens=5000/1m")
    claude = gw.anthropic()

    def asking(instructions: str) -> dict:
        if where == "compaction":
            return {"compaction": {"type": "summarize", "instructions": instructions}}
        return {"context_management": {"edits": [{"type": "compact_20260112", "instructions": instructions}]}}

    with pytest.raises(anthropic.RateLimitError, match="can never be admitted"):
        claude.messages.create(model=HAIKU, max_tokens=5, messages=user("sum up"), extra_body=asking(RESENT))
    served = claude.messages.create(model=HAIKU, max_tokens=5, messages=user("sum up"), extra_body=asking("brief"))
    assert served.content and served.usage.input_tokens > 0


FILE_ID = "file_011CNha8iCJcU1wXNR6q4V8w"
FILE_REFERENCES = [  # (a block naming a file of the provider account, where the refusal points)
    ({"type": "document", "source": {"type": "file", "file_id": FILE_ID}}, "messages.0.content.1.source"),
    ({"type": "image", "source": {"type": "file", "file_id": FILE_ID}}, "messages.0.content.1.source"),
    ({"type": "container_upload", "file_id": FILE_ID}, "messages.0.content.1"),
    ({"type": "tool_result", "tool_use_id": "toolu_1", "content": [
        {"type": "document", "source": {"type": "file", "file_id": FILE_ID}}]}, "messages.0.content.1.content.0.source"),
]


def test_files_and_containers_of_the_provider_account_are_refused(gateway_factory: Callable[..., Gateway]) -> None:
    """Sentinel does not serve Anthropic's Files API nor its containers, so a file or container a
    Messages body names was never created through Sentinel: it is the company account's, not the
    caller's. 400 in Anthropic's shape, relayed or translated, before anything is reserved or sent."""
    from sentinel.mock.app import create_mock_app
    from tests.support.attack import recorded_ids, spying

    with spying(create_mock_app()) as (_, spy):
        gw = gateway_factory(anthropic_api_url=spy.url, openai_api_url=spy.url + "/v1")
        claude = gw.anthropic()
        for model in (HAIKU, "gpt-4o-mini"):  # relayed as sent, translated
            for block, param in FILE_REFERENCES:
                turn = [{"role": "user", "content": [{"type": "text", "text": "what does it say?"}, block]}]
                for send, extra in ((claude.messages.create, {"max_tokens": 5}), (claude.messages.count_tokens, {})):
                    with pytest.raises(anthropic.BadRequestError, match=param) as caught:
                        send(model=model, messages=turn, **extra)
                    assert orjson.loads(caught.value.response.content)["error"]["type"] == "invalid_request_error"
            for container in ("container_011CPR5CNjB747bTd36fQLFk", {"id": None, "skills": [
                    {"type": "custom", "skill_id": "skill_01AbCdEf", "version": "latest"}]}):
                with pytest.raises(anthropic.BadRequestError, match="container"):
                    claude.messages.create(model=model, max_tokens=5, messages=user("run it"),
                                           extra_body={"container": container})
        assert spy.seen == []
        assert recorded_ids(gw.settings.database_url) == set()
        claude.messages.create(model=HAIKU, max_tokens=5, messages=user("no file"))  # the spy sees what goes through
        assert spy.paths() == ["/v1/messages"]


def test_messages_the_provider_holds_are_never_named(gateway_factory: Callable[..., Gateway]) -> None:
    """A server-held thread (`thread: {"type": "continue", "previous_message_id": ...}`) resumes the
    conversation of an earlier message the provider keeps, and `diagnostics.previous_message_id`
    compares an earlier message's prompt with the request's: Bob could name Alice's message and
    read her conversation, or learn what her prompt began with. Sentinel records no owner of a
    message, so naming one is 400 in Anthropic's shape, relayed or translated, before anything is
    reserved or sent (a thread made, `{"type": "create"}`, could never be continued: 400 too); a
    `diagnostics` asking for no comparison (`previous_message_id: null`) goes through."""
    import asyncio

    from sentinel.mock.app import create_mock_app
    from tests.support.accounts import create_key
    from tests.support.attack import recorded_ids, spying

    with spying(create_mock_app()) as (_, spy):
        gw = gateway_factory(anthropic_api_url=spy.url, openai_api_url=spy.url + "/v1")
        alices = gw.anthropic().messages.create(model=HAIKU, max_tokens=5, messages=user("my secret plan")).id
        bob = gw.anthropic(api_key=asyncio.run(create_key(gw.settings.database_url, "bob"))[1])
        spy.clear()
        for model in (HAIKU, "gpt-4o-mini"):
            for extra, param in (({"thread": {"type": "continue", "previous_message_id": alices}}, "thread"),
                                 ({"thread": {"type": "create"}}, "thread"),
                                 ({"diagnostics": {"previous_message_id": alices}}, "diagnostics.previous_message_id")):
                for send, more in ((bob.messages.create, {"max_tokens": 5}), (bob.messages.count_tokens, {})):
                    with pytest.raises(anthropic.BadRequestError, match=param) as caught:
                        send(model=model, messages=user("go on"), extra_body=extra, **more)
                    error = orjson.loads(caught.value.response.content)
                    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error", error
        assert spy.seen == []
        assert recorded_ids(gw.settings.database_url, external_id="bob") == set()
        bob.messages.create(model=HAIKU, max_tokens=5, messages=user("hi"), extra_body={"diagnostics": {
            "previous_message_id": None}})
        assert spy.paths() == ["/v1/messages"]


@pytest.mark.parametrize("model", [HAIKU, "gpt-4o-mini"])
@pytest.mark.parametrize("stream", [False, True])
def test_the_sdks_tool_runner_runs_unchanged(gateway_factory: Callable[..., Gateway], model: str, stream: bool) -> None:
    """The SDK's tool runner threads its conversation by default (`thread: {"type": "create"}`), which
    Sentinel refuses (above). Its 400 named no `error.details.error_code`, so the runner raised on its
    first turn, relayed or translated; with Anthropic's `thread_unsupported_request` the SDK sends the
    turn again without `thread` (the whole conversation) and the loop runs — one request a turn, the
    refused one reserving nothing — and a threaded call is the SDK's typed refusal."""
    gw = gateway_factory(default_plan="requests=2/1d")
    claude = gw.anthropic()

    @anthropic.beta_tool
    def lookup(q: str) -> str:
        """Look something up."""
        return f"found {q}"

    runner = claude.beta.messages.tool_runner(model=model, max_tokens=50, tools=[lookup], messages=user("look it up"),
                                              stream=stream)
    turns = [turn.get_final_message() for turn in runner] if stream else list(runner)  # type: ignore[union-attr]
    assert [turn.stop_reason for turn in turns] == ["tool_use", "end_turn"]
    assert turns[-1].content[0].text.startswith("Result: found mock")  # type: ignore[union-attr]
    assert len(gw.settled_rows(2)) == 2  # (the plan's two requests)
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.beta.messages.create(model=model, max_tokens=5, messages=user("x"), thread={"type": "create"})
    assert caught.value.error_code == "thread_unsupported_request"  # (past the plan's two: reserved nothing)


def test_server_side_fallback_models_are_refused(gateway_factory: Callable[..., Gateway]) -> None:
    """Anthropic's server-side fallback (`fallbacks`) serves a request its model declines on the
    models the client names, each with its own `max_tokens`: relayed as sent, a caller offered only
    Haiku, reserved 5 output tokens, got a model the catalogue never offered writing 32,000 (a
    refusal is easy to provoke), priced as Haiku. 400 in Anthropic's shape, relayed, translated or
    counted, before anything is reserved or sent; `fallbacks: null` goes through."""
    from sentinel.mock.app import create_mock_app
    from tests.support.attack import recorded_ids, spying

    with spying(create_mock_app()) as (_, spy):
        gw = gateway_factory(anthropic_api_url=spy.url, openai_api_url=spy.url + "/v1")
        claude = gw.anthropic()
        for model in (HAIKU, "gpt-4o-mini"):
            for fallbacks in ([{"model": "claude-opus-4-1-20250805", "max_tokens": 32000}], "default"):
                for send, extra in ((claude.beta.messages.create, {"max_tokens": 5}),
                                    (claude.beta.messages.count_tokens, {})):
                    with pytest.raises(anthropic.BadRequestError, match="fallbacks") as caught:
                        send(model=model, messages=user("decline this"), extra_body={"fallbacks": fallbacks},
                             betas=["server-side-fallback-2026-07-01"], **extra)
                    error = orjson.loads(caught.value.response.content)
                    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error", error
        assert spy.seen == []
        assert recorded_ids(gw.settings.database_url) == set()
        claude.messages.create(model=HAIKU, max_tokens=5, messages=user("hi"), extra_body={"fallbacks": None})
        assert spy.paths() == ["/v1/messages"]


def test_metadata_keys_other_than_user_id_are_refused(gateway_factory: Callable[..., Gateway]) -> None:
    """Anthropic's `metadata` takes `user_id` alone. Relayed, another key went to Anthropic as written
    and was its 400 after Sentinel had admitted the request (translated it was already Sentinel's
    400): 400 in Anthropic's shape, relayed or translated, created or counted, before anything is
    reserved, sent or charged; `user_id` alone goes through."""
    from sentinel.mock.app import create_mock_app
    from tests.support.attack import recorded_ids, spying

    with spying(create_mock_app()) as (_, spy):
        gw = gateway_factory(anthropic_api_url=spy.url, openai_api_url=spy.url + "/v1")
        claude = gw.anthropic()
        for model in (HAIKU, "gpt-4o-mini"):
            for metadata in ({"user_id": "u1", "session_id": "s"}, {"trace": "t"}, []):
                for send, extra in ((claude.messages.create, {"max_tokens": 5}),
                                    (claude.messages.count_tokens, {})):
                    with pytest.raises(anthropic.BadRequestError, match="metadata") as caught:
                        send(model=model, messages=user("hi"), extra_body={"metadata": metadata}, **extra)
                    error = orjson.loads(caught.value.response.content)
                    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error", error
        assert spy.seen == []
        assert recorded_ids(gw.settings.database_url) == set()
        served = claude.messages.with_raw_response.create(model=HAIKU, max_tokens=5, messages=user("hi"),
                                                          metadata={"user_id": "u1"})
        assert int(served.headers["x-ratelimit-limit"]) - int(served.headers["x-ratelimit-remaining"]) == 1
        assert spy.paths() == ["/v1/messages"]


COMPACT = {"context_management": {"edits": [{"type": "compact_20260112",
                                             "trigger": {"type": "input_tokens", "value": 1000}}]}}


def test_a_compacted_context_is_charged_the_compaction_step(gateway_factory: Callable[..., Gateway]) -> None:
    """With compaction (`context_management` edit `compact_20260112`), a prompt past its trigger is
    summarised in a step of its own whose tokens Anthropic leaves out of the top-level usage (they
    are in `usage.iterations`), and bills. Sentinel read the top-level figures alone: a ~23,000-token
    conversation was charged the few tokens of the summary the answer read, streamed or not, again
    and again. A stream cut after the compaction block was charged message_start's input (the
    summary's): it is charged the estimate of the whole prompt now."""
    from tests.support.attack import ledger_rows, wait_for

    gw = gateway_factory(usage_flush_interval_seconds=0.1)
    claude = gw.anthropic()
    conversation = [{"role": "user", "content": RESENT}, {"role": "assistant", "content": "noted"},
                    {"role": "user", "content": "go on"}]
    answer = claude.beta.messages.create(model=HAIKU, max_tokens=20, messages=conversation, extra_body=COMPACT,
                                         betas=["compact-2026-01-12"])
    assert answer.content[0].type == "compaction" and answer.usage.iterations[0].type == "compaction"
    with claude.beta.messages.stream(model=HAIKU, max_tokens=20, messages=conversation, extra_body=COMPACT,
                                     betas=["compact-2026-01-12"]) as stream:
        streamed = stream.get_final_message()
    billed = answer.usage.iterations[0].input_tokens + answer.usage.input_tokens
    assert billed > 15_000 and streamed.usage.iterations[0].input_tokens == answer.usage.iterations[0].input_tokens
    cut = [*conversation[:-1], {"role": "user", "content": "go on #mock:disconnect_after=2"}]
    with claude.beta.messages.stream(model=HAIKU, max_tokens=20, messages=cut, extra_body=COMPACT,
                                     betas=["compact-2026-01-12"]) as stream, \
            pytest.raises(anthropic.APIStatusError):
        stream.get_final_message()  # the provider's connection broke after the compaction block
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 3)
    whole, relayed, broken = ledger_rows(gw.settings.database_url)
    for row in (whole, relayed):
        assert row["usage_source"] == "measured" and row["input_tokens"] == billed, row
        assert row["output_tokens"] == answer.usage.iterations[0].output_tokens + answer.usage.output_tokens, row
    assert broken["usage_source"] == "estimated" and broken["input_tokens"] > 15_000, broken


async def test_async_client(gateway: Gateway) -> None:
    claude = gateway.async_anthropic()
    message = await claude.messages.create(model=HAIKU, max_tokens=20, messages=user("async hello"))
    assert message.content[0].text == "Echo: async hello"  # type: ignore[union-attr]
    async with claude.messages.stream(model=HAIKU, max_tokens=20, messages=user("async stream")) as stream:
        text = "".join([piece async for piece in stream.text_stream])
    assert text == "Echo: async stream"
    counted = await claude.messages.count_tokens(model=HAIKU, messages=user("async count"))
    assert counted.input_tokens > 0
    with pytest.raises(anthropic.AuthenticationError):
        await gateway.async_anthropic(api_key="sk-sentinel-bad").messages.create(
            model=HAIKU, max_tokens=5, messages=user("x")
        )
    await claude.close()


def test_refused_provider_key_is_a_generic_502(gateway_factory: Callable[..., Gateway]) -> None:
    """The provider's answer to Sentinel's own key (it may quote the key) never reaches the client."""
    from sentinel.mock.app import create_mock_app
    from tests.support.servers import serving

    with serving(create_mock_app(api_key="the-right-key")) as strict:
        gw = gateway_factory(anthropic_api_url=strict.url, anthropic_api_key="sk-ant-wrong-key-1234")
        with pytest.raises(anthropic.InternalServerError) as caught:
            gw.anthropic().messages.create(model=HAIKU, max_tokens=5, messages=user("x"))
        with gw.client() as http:
            cross = http.post("/v1/chat/completions", json={"model": HAIKU, "messages": user("x")})
    assert caught.value.status_code == 502 and "1234" not in caught.value.response.text
    assert orjson.loads(caught.value.response.content)["error"]["type"] == "api_error"
    assert cross.status_code == 502 and cross.json()["error"]["code"] == "provider_auth_error"
    assert "1234" not in cross.text


def test_models_errors_are_in_anthropics_shape_for_the_anthropic_sdk(gateway: Gateway) -> None:
    """`models.list` and `models.retrieve` ask `/v1/models`, both surfaces' list: an Anthropic client's
    errors there come in Anthropic's shape (what its SDK reads), an OpenAI client's in OpenAI's."""
    claude = gateway.anthropic()
    assert HAIKU in [model.id for model in claude.models.list()]
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.models.retrieve("no-such-model")
    body = missing.value.body
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error", body  # type: ignore[index]
    assert "no-such-model" in body["error"]["message"] and body["request_id"], body  # type: ignore[index]
    assert missing.value.response.headers["request-id"] == body["request_id"]  # type: ignore[index]
    with pytest.raises(anthropic.AuthenticationError) as refused:
        gateway.anthropic(api_key="sk-sentinel-not-a-key").models.list()
    assert refused.value.body["error"]["type"] == "authentication_error", refused.value.body  # type: ignore[index]
    wrong_method = httpx.delete(gateway.url + f"/v1/models/{HAIKU}",
                                headers={"x-api-key": gateway.key, "anthropic-version": "2023-06-01"})
    assert wrong_method.status_code == 405 and wrong_method.json()["type"] == "error", wrong_method.text
    with gateway.client() as http:  # no anthropic-version: an OpenAI client
        plain = http.get("/v1/models/no-such-model")
    assert plain.status_code == 404 and plain.json()["error"]["code"] == "model_not_found", plain.text
