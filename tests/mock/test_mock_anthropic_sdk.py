"""The mock's Anthropic surface through the official SDK's full paths: system blocks, images,
prompt caching, tool conversations, stop reasons, typed errors and the async client."""

from __future__ import annotations

import base64
import uuid

import anthropic
import httpx
import pytest

from tests.mock.conftest import KEY
from tests.mock.mockwire import ANTHROPIC_AUTH, expected_prompt_tokens

IMAGE = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(64))).decode()
LOOKUP = {
    "name": "lookup",
    "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
}
CLOCK = {"name": "clock", "input_schema": {"type": "object", "properties": {}}}


def ceil4(text: str) -> int:
    return -(-len(text) // 4)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_system_string_and_blocks_are_the_same_prompt(claude: anthropic.Anthropic) -> None:
    as_string = claude.messages.create(model="m", max_tokens=20, system="be terse", messages=user("hi"))
    as_blocks = claude.messages.create(
        model="m",
        max_tokens=20,
        system=[{"type": "text", "text": "be "}, {"type": "text", "text": "terse"}],
        messages=user("hi"),
    )
    assert as_string.usage.input_tokens == as_blocks.usage.input_tokens == expected_prompt_tokens("be terse", "hi")
    counted = claude.messages.count_tokens(
        model="m", system=[{"type": "text", "text": "be terse"}], messages=user("hi")
    )
    assert counted.input_tokens == as_blocks.usage.input_tokens
    with pytest.raises(anthropic.BadRequestError, match=r"system\.0"):
        claude.messages.create(model="m", max_tokens=5, system=[{"type": "image"}], messages=user("x"))  # type: ignore[list-item]


def test_image_blocks_are_accepted_and_counted(claude: anthropic.Anthropic) -> None:
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": IMAGE}},
        {"type": "text", "text": "what is this"},
    ]
    msg = claude.messages.create(model="m", max_tokens=20, messages=[{"role": "user", "content": content}])
    assert msg.content[0].text == "Echo: what is this"  # type: ignore[union-attr]
    assert msg.usage.input_tokens == expected_prompt_tokens("what is this") + 100
    counted = claude.messages.count_tokens(model="m", messages=[{"role": "user", "content": content}])
    assert counted.input_tokens == msg.usage.input_tokens
    bad_data = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "%%%"}}
    with pytest.raises(anthropic.BadRequestError, match=r"messages\.0\.content\.0\.source\.data"):
        claude.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": [bad_data]}])
    bad_type = {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": IMAGE}}
    with pytest.raises(anthropic.BadRequestError, match="media_type"):
        claude.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": [bad_type]}])


def test_cache_control_creates_then_reads(claude: anthropic.Anthropic) -> None:
    system_text = f"You are a careful assistant {uuid.uuid4().hex}. " * 4
    system = [{"type": "text", "text": system_text, "cache_control": {"type": "ephemeral"}}]
    prefix = 3 + ceil4(system_text)
    total = expected_prompt_tokens(system_text, "first question")
    first = claude.messages.create(model="m", max_tokens=20, system=system, messages=user("first question"))
    assert first.usage.cache_creation_input_tokens == prefix
    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.input_tokens == total - prefix
    assert first.usage.cache_creation is not None
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == prefix
    again = claude.messages.create(model="m", max_tokens=20, system=system, messages=user("first question"))
    assert (again.usage.cache_read_input_tokens, again.usage.cache_creation_input_tokens) == (prefix, 0)
    assert again.usage.input_tokens == total - prefix
    other_model = claude.messages.create(model="m2", max_tokens=20, system=system, messages=user("x"))
    assert other_model.usage.cache_read_input_tokens == 0  # the cache is per model

    turn = [{"type": "text", "text": "second question", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    longer = claude.messages.create(
        model="m", max_tokens=20, system=system, messages=[{"role": "user", "content": turn}]
    )
    grown = prefix + 3 + ceil4("second question")
    assert longer.usage.cache_read_input_tokens == prefix
    assert longer.usage.cache_creation_input_tokens == grown - prefix
    assert longer.usage.cache_creation is not None
    assert longer.usage.cache_creation.ephemeral_1h_input_tokens == grown - prefix
    assert longer.usage.input_tokens == expected_prompt_tokens(system_text, "second question") - grown


def test_cache_usage_in_the_stream(claude: anthropic.Anthropic) -> None:
    system = [{"type": "text", "text": f"stream cache {uuid.uuid4().hex}", "cache_control": {"type": "ephemeral"}}]
    for expect_read in (False, True):
        with claude.messages.stream(model="m", max_tokens=20, system=system, messages=user("go")) as stream:
            final = stream.get_final_message()
        assert (final.usage.cache_read_input_tokens > 0) is expect_read
        assert (final.usage.cache_creation_input_tokens > 0) is not expect_read


def test_failed_requests_and_count_tokens_do_not_fill_the_cache(claude: anthropic.Anthropic) -> None:
    system = [{"type": "text", "text": f"never cached {uuid.uuid4().hex}", "cache_control": {"type": "ephemeral"}}]
    with pytest.raises(anthropic.OverloadedError):
        claude.messages.create(model="m", max_tokens=5, system=system, messages=user("#mock:status=529"))
    claude.messages.count_tokens(model="m", system=system, messages=user("x"))
    after = claude.messages.create(model="m", max_tokens=5, system=system, messages=user("x"))
    assert after.usage.cache_read_input_tokens == 0 and after.usage.cache_creation_input_tokens > 0


def test_cache_control_limits(claude: anthropic.Anthropic) -> None:
    marked = {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}
    with pytest.raises(anthropic.BadRequestError, match="maximum of 4"):
        claude.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": [marked] * 5}])
    odd = {"type": "text", "text": "x", "cache_control": {"type": "persistent"}}
    with pytest.raises(anthropic.BadRequestError, match="ephemeral"):
        claude.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": [odd]}])


def test_tool_choice_variants(claude: anthropic.Anthropic) -> None:
    forced = claude.messages.create(
        model="m", max_tokens=50, tools=[LOOKUP, CLOCK], tool_choice={"type": "tool", "name": "clock"},
        messages=user("what time"),
    )
    assert [b.name for b in forced.content if b.type == "tool_use"] == ["clock"]
    anyone = claude.messages.create(
        model="m", max_tokens=50, tools=[LOOKUP], tool_choice={"type": "any"}, messages=user("find")
    )
    assert anyone.stop_reason == "tool_use" and anyone.content[0].input == {"q": "mock-q"}  # type: ignore[union-attr]
    none = claude.messages.create(
        model="m", max_tokens=50, tools=[LOOKUP], tool_choice={"type": "none"}, messages=user("find")
    )
    assert none.stop_reason == "end_turn"
    with pytest.raises(anthropic.BadRequestError, match="tool_choice may only be specified"):
        claude.messages.create(model="m", max_tokens=5, tool_choice={"type": "any"}, messages=user("x"))
    with pytest.raises(anthropic.BadRequestError, match="input_schema"):
        claude.messages.create(model="m", max_tokens=5, tools=[{"name": "t"}], messages=user("x"))  # type: ignore[list-item]


def test_parallel_tool_results_round_trip(claude: anthropic.Anthropic) -> None:
    first = claude.messages.create(
        model="m", max_tokens=100, tools=[LOOKUP, CLOCK], messages=user("both in parallel please")
    )
    uses = [b for b in first.content if b.type == "tool_use"]
    assert [u.name for u in uses] == ["lookup", "clock"] and first.stop_reason == "tool_use"
    history = [*user("both in parallel please"), {"role": "assistant", "content": [u.model_dump() for u in uses]}]
    results = [
        {"type": "tool_result", "tool_use_id": uses[0].id, "content": "found it"},
        {"type": "tool_result", "tool_use_id": uses[1].id, "content": [{"type": "text", "text": "noon"}]},
    ]
    done = claude.messages.create(
        model="m", max_tokens=100, tools=[LOOKUP, CLOCK], messages=[*history, {"role": "user", "content": results}]
    )
    assert done.content[0].text == "Result: found it | noon"  # type: ignore[union-attr]
    assert done.stop_reason == "end_turn"
    with pytest.raises(anthropic.BadRequestError, match=uses[1].id):
        claude.messages.create(
            model="m", max_tokens=100, tools=[LOOKUP, CLOCK],
            messages=[*history, {"role": "user", "content": results[:1]}],
        )
    stray = {"type": "tool_result", "tool_use_id": "toolu_unknown", "content": "x"}
    with pytest.raises(anthropic.BadRequestError, match="toolu_unknown"):
        claude.messages.create(
            model="m", max_tokens=100, messages=[*history, {"role": "user", "content": [*results, stray]}]
        )


@pytest.mark.parametrize(
    ("kwargs", "reason", "sequence"),
    [
        ({"messages": user("a b c")}, "end_turn", None),
        ({"messages": user("a b c"), "max_tokens": 2}, "max_tokens", None),
        ({"messages": user("a b STOP c"), "stop_sequences": ["STOP"]}, "stop_sequence", "STOP"),
        ({"messages": user("a"), "tools": [LOOKUP]}, "tool_use", None),
    ],
)
def test_stop_reasons_plain_and_streamed(
    claude: anthropic.Anthropic, kwargs: dict, reason: str, sequence: str | None
) -> None:
    args = {"model": "m", "max_tokens": 50, **kwargs}
    plain = claude.messages.create(**args)
    assert (plain.stop_reason, plain.stop_sequence) == (reason, sequence)
    with claude.messages.stream(**args) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == (reason, sequence)
    assert final.usage.output_tokens == plain.usage.output_tokens


def test_raw_stream_event_sequence_with_two_tool_uses(claude: anthropic.Anthropic) -> None:
    events = list(
        claude.messages.create(
            model="m", max_tokens=100, stream=True, tools=[LOOKUP, CLOCK], messages=user("#mock:parallel_tools")
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    starts = [e for e in events if e.type == "content_block_start"]
    assert [(s.index, s.content_block.type) for s in starts] == [(0, "tool_use"), (1, "tool_use")]
    for index in (0, 1):
        mine = [e.type for e in events if getattr(e, "index", None) == index]
        assert mine[0] == "content_block_start" and mine[-1] == "content_block_stop"
        assert set(mine[1:-1]) == {"content_block_delta"}
    deltas = [e.delta.type for e in events if e.type == "content_block_delta"]
    assert set(deltas) == {"input_json_delta"}
    final = events[-2]
    assert final.type == "message_delta" and final.delta.stop_reason == "tool_use"
    start = events[0]
    assert start.type == "message_start" and final.usage.input_tokens == start.message.usage.input_tokens


def test_typed_errors_and_request_id(claude: anthropic.Anthropic, http: httpx.Client) -> None:
    raw = claude.messages.with_raw_response.create(model="m", max_tokens=5, messages=user("x"))
    assert raw.headers["request-id"].startswith("req_") and raw.parse()._request_id == raw.headers["request-id"]
    with pytest.raises(anthropic.RateLimitError) as limited:
        claude.messages.create(model="m", max_tokens=5, messages=user("x"), extra_headers={"X-Mock-Status": "429"})
    assert limited.value.response.headers["retry-after"] == "1"
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    with pytest.raises(anthropic.OverloadedError):
        claude.messages.create(model="m", max_tokens=5, messages=user("x"), extra_query={"mock_status": "529"})
    with pytest.raises(anthropic.InternalServerError) as broken:
        claude.messages.create(model="m", max_tokens=5, messages=user("x"), extra_headers={"X-Mock-Status": "500"})
    assert broken.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="m", max_tokens=5, messages=user("x"), extra_body={"temperature": 1.5})
    r = http.post("/v1/messages", headers=ANTHROPIC_AUTH, content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_configured_key_is_enforced(keyed_mock_url: str) -> None:
    for kwargs in ({"api_key": "sk-wrong"}, {"auth_token": "sk-wrong"}):
        with anthropic.Anthropic(base_url=keyed_mock_url, max_retries=0, **kwargs) as wrong:  # type: ignore[arg-type]
            with pytest.raises(anthropic.AuthenticationError) as denied:
                wrong.messages.create(model="m", max_tokens=5, messages=user("x"))
            assert denied.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    for kwargs in ({"api_key": KEY}, {"auth_token": KEY}):
        with anthropic.Anthropic(base_url=keyed_mock_url, max_retries=0, **kwargs) as right:  # type: ignore[arg-type]
            assert right.messages.create(model="m", max_tokens=5, messages=user("x")).stop_reason == "end_turn"
    r = httpx.post(
        keyed_mock_url + "/v1/messages",
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        json={"model": "m", "max_tokens": 5, "messages": user("x")},
    )
    assert r.status_code == 200


async def test_async_client_full_path(mock_url: str) -> None:
    async with anthropic.AsyncAnthropic(api_key="k", base_url=mock_url, max_retries=0) as client:
        msg = await client.messages.create(model="m", max_tokens=20, messages=user("async hello"))
        assert msg.content[0].text == "Echo: async hello"  # type: ignore[union-attr]
        async with client.messages.stream(
            model="m", max_tokens=50, tools=[LOOKUP], messages=user("stream a tool")
        ) as stream:
            final = await stream.get_final_message()
        assert final.stop_reason == "tool_use" and final.content[0].input == {"q": "mock-q"}  # type: ignore[union-attr]
        counted = await client.messages.count_tokens(model="m", messages=user("async hello"))
        assert counted.input_tokens == msg.usage.input_tokens
        with pytest.raises(anthropic.RateLimitError):
            await client.messages.create(model="m", max_tokens=5, messages=user("#mock:status=429"))


def test_compaction_past_its_trigger(claude: anthropic.Anthropic) -> None:
    """A `compact_20260112` edit: a prompt at or past its trigger opens the answer with a `compaction`
    block, its step's tokens in `usage.iterations` only (the top-level counts the summary read after);
    below the trigger, or without the edit, nothing changes. The stream gives `iterations` in its
    message_delta."""
    from sentinel.mock.anthropic_wire import COMPACTION_OUTPUT_TOKENS

    def edit(trigger: int) -> dict:
        return {"context_management": {"edits": [{"type": "compact_20260112",
                                                  "trigger": {"type": "input_tokens", "value": trigger}}]}}

    text = "word " * 400
    plain = claude.messages.create(model="m", max_tokens=20, messages=user(text))
    below = claude.beta.messages.create(model="m", max_tokens=20, messages=user(text), extra_body=edit(10**6))
    assert below.usage.input_tokens == plain.usage.input_tokens and below.usage.iterations is None
    past = claude.beta.messages.create(model="m", max_tokens=20, messages=user(text), extra_body=edit(10))
    assert [block.type for block in past.content] == ["compaction", "text"]
    compaction, answer = past.usage.iterations
    assert compaction.type == "compaction" and compaction.input_tokens == plain.usage.input_tokens
    assert compaction.output_tokens == COMPACTION_OUTPUT_TOKENS == past.usage.input_tokens == answer.input_tokens
    with claude.beta.messages.stream(model="m", max_tokens=20, messages=user(text), extra_body=edit(10)) as stream:
        streamed = stream.get_final_message()
    assert streamed.usage.iterations is not None and streamed.usage.iterations[0].input_tokens == plain.usage.input_tokens


def test_a_structured_output_is_json_fitting_its_schema(claude: anthropic.Anthropic) -> None:
    """`output_config.format` (what `messages.parse` sends) and the beta's `output_format`: the text is
    JSON fitting the schema, plain and streamed."""
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    fmt = {"type": "json_schema", "schema": schema}
    ask = [{"role": "user", "content": "who?"}]
    plain = claude.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=ask,
                                   output_config={"format": fmt})  # type: ignore[typeddict-item]
    assert [b.text for b in plain.content if b.type == "text"] == ['{"name": "mock-name", "age": 1}']
    assert plain.usage.output_tokens == 4
    with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=ask,
                                extra_body={"output_format": fmt}) as stream:
        assert stream.get_final_text() == '{"name": "mock-name", "age": 1}'
    for body, param in [({"output_config": {"format": {"type": "json_schema"}}}, "output_config.format.schema"),
                        ({"output_format": {"type": "json", "schema": schema}}, "output_format.type")]:
        with pytest.raises(anthropic.BadRequestError) as caught:
            claude.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=ask,  # type: ignore[call-overload]
                                   extra_body=body)
        assert param in caught.value.message
