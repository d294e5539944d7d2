"""The mock's OpenAI chat surface through the official SDK's fuller paths: n>1, parallel tool calls
and their results, logprobs, stream_options, a configured key, request ids and the async client."""

from __future__ import annotations

import base64
import json
from typing import Any

import openai
import pytest

from sentinel.mock.openai_runs import ACTION_USAGE, TOOL_ARGUMENTS
from tests.mock.conftest import KEY

LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    },
}
CLOCK = {"type": "function", "function": {"name": "clock", "parameters": {"type": "object", "properties": {}}}}


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_n_choices_streamed_with_usage(oai: openai.OpenAI) -> None:
    single = oai.chat.completions.create(model="m", messages=user("three word answer"))
    assert single.usage is not None
    stream = oai.chat.completions.create(
        model="m", n=3, messages=user("three word answer"), stream=True, stream_options={"include_usage": True}
    )
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == {i: "Echo: three word answer" for i in range(3)}
    assert finishes == {0: "stop", 1: "stop", 2: "stop"}
    assert usage is not None
    assert usage.completion_tokens == 3 * single.usage.completion_tokens
    assert usage.prompt_tokens == single.usage.prompt_tokens


def test_parallel_tool_calls_and_their_results(oai: openai.OpenAI) -> None:
    first = oai.chat.completions.create(model="m", tools=[LOOKUP, CLOCK], messages=user("do both in parallel"))
    calls = first.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["lookup", "clock"]  # type: ignore[union-attr]
    assert first.choices[0].finish_reason == "tool_calls"
    assert json.loads(calls[0].function.arguments) == {"q": "mock-q"}  # type: ignore[union-attr]
    serial = oai.chat.completions.create(
        model="m", tools=[LOOKUP, CLOCK], parallel_tool_calls=False, messages=user("do both in parallel")
    )
    assert len(serial.choices[0].message.tool_calls or []) == 1
    follow = oai.chat.completions.create(
        model="m",
        tools=[LOOKUP, CLOCK],
        messages=[
            *user("do both in parallel"),
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": calls[0].id, "content": "found"},
            {"role": "tool", "tool_call_id": calls[1].id, "content": "noon"},
        ],
    )
    assert follow.choices[0].message.content == "Result: found | noon"


def test_logprobs_plain_and_streamed(oai: openai.OpenAI) -> None:
    out = oai.chat.completions.create(model="m", messages=user("a b"), logprobs=True, top_logprobs=3)
    content = out.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None
    assert "".join(t.token for t in content) == out.choices[0].message.content
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token for t in content)
    assert all(bytes(t.bytes or []).decode() == t.token for t in content)
    plain = oai.chat.completions.create(model="m", messages=user("a b"))
    assert plain.choices[0].logprobs is None
    streamed = oai.chat.completions.create(model="m", messages=user("a b"), logprobs=True, stream=True)
    tokens = [
        t.token for c in streamed for ch in c.choices if ch.logprobs and ch.logprobs.content for t in ch.logprobs.content
    ]
    assert "".join(tokens) == "Echo: a b"
    with pytest.raises(openai.BadRequestError) as without:
        oai.chat.completions.create(model="m", messages=user("x"), top_logprobs=2)
    assert without.value.param == "top_logprobs"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError, match="maximum"):
        oai.chat.completions.create(model="m", messages=user("x"), logprobs=True, top_logprobs=21)


def test_stream_options_need_stream(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model="m", messages=user("x"), stream_options={"include_usage": True})
    assert caught.value.param == "stream_options"  # type: ignore[attr-defined]


def test_request_id_is_exposed(oai: openai.OpenAI) -> None:
    raw = oai.chat.completions.with_raw_response.create(model="m", messages=user("x"))
    assert raw.headers["x-request-id"] == raw.headers["request-id"]
    assert raw.parse()._request_id == raw.headers["x-request-id"]


def test_configured_key_is_enforced(keyed_mock_url: str) -> None:
    with openai.OpenAI(api_key="sk-wrong-key-000000", base_url=keyed_mock_url + "/v1", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as denied:
            wrong.chat.completions.create(model="m", messages=user("x"))
    assert denied.value.code == "invalid_api_key"  # type: ignore[attr-defined]
    assert "sk-wrong-key-000000" not in str(denied.value)  # the key is masked like the real API does
    with openai.OpenAI(api_key=KEY, base_url=keyed_mock_url + "/v1", max_retries=0) as right:
        assert right.chat.completions.create(model="m", messages=user("x")).choices[0].message.content == "Echo: x"
        assert right.embeddings.create(model="text-embedding-3-small", input="x").data


async def test_async_client(mock_url: str) -> None:
    async with openai.AsyncOpenAI(api_key="k", base_url=mock_url + "/v1", max_retries=0) as client:
        out = await client.chat.completions.create(model="m", n=2, messages=user("async"))
        assert [c.message.content for c in out.choices] == ["Echo: async"] * 2
        stream = await client.chat.completions.create(
            model="m", messages=user("async stream"), stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: async stream"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="m", messages=user("#mock:status=429"))


def test_an_image_generation_tool_draws_an_image_as_large_as_the_providers(oai: openai.OpenAI) -> None:
    """A response with an `image_generation` tool opens its output with an `image_generation_call`
    whose base64 PNG makes the answer over 1 MiB (the answers Sentinel relays as they arrive),
    plain and streamed."""
    tools: Any = [{"type": "image_generation", "model": "gpt-image-1"}]
    plain = oai.responses.create(model="gpt-4o-mini", input="draw a cat", tools=tools)
    events = list(oai.responses.create(model="gpt-4o-mini", input="draw a cat", tools=tools, stream=True))
    done = [e.item for e in events if e.type == "response.output_item.done"]
    for output in (plain.output, done):
        image = output[0]
        assert image.type == "image_generation_call" and image.id.startswith("ig_")
        assert image.result is not None and len(image.result) > 1024 * 1024
        assert base64.b64decode(image.result).startswith(b"\x89PNG\r\n\x1a\n")
        assert output[1].type == "message"
    assert events[-1].type == "response.completed"


def test_an_assistants_run_with_a_function_tool_stops_in_requires_action_and_cancels_with_usage(
    oai: openai.OpenAI,
) -> None:
    """The flow pass-through metering of a cancelled run relies on: `requires_action` shows the tool
    call and no usage; the cancel answers `cancelling`, the next read `cancelled` with its usage; a
    run that ended cannot be cancelled (400, as the real API)."""
    assistant = oai.beta.assistants.create(model="gpt-4o-mini")
    thread = oai.beta.threads.create(messages=[{"role": "user", "content": "weather?"}])
    run = oai.beta.threads.runs.create(thread.id, assistant_id=assistant.id, tools=[CLOCK])
    shown = oai.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    assert shown.status == "requires_action" and shown.usage is None and shown.required_action is not None
    call = shown.required_action.submit_tool_outputs.tool_calls[0]
    assert (call.function.name, call.function.arguments) == ("clock", TOOL_ARGUMENTS)
    cancelling = oai.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert cancelling.status == "cancelling" and cancelling.usage is None
    ended = oai.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    assert ended.status == "cancelled" and ended.usage is not None
    assert (ended.usage.prompt_tokens, ended.usage.completion_tokens) == (70, 12) == (
        ACTION_USAGE["prompt_tokens"], ACTION_USAGE["completion_tokens"])
    with pytest.raises(openai.BadRequestError, match="Cannot cancel run with status 'cancelled'"):
        oai.beta.threads.runs.cancel(run.id, thread_id=thread.id)


def test_a_batch_runs_at_its_first_read_and_writes_its_output_file(oai: openai.OpenAI) -> None:
    """The Batch API as the SDK drives it: made over an uploaded input, done at its first read with
    its usage and an output file holding one result a line (by `custom_id`); a batch cancelled
    before that ends `cancelled` having run nothing; an ended one cannot be cancelled; the account's
    list is newest first, paged by `after`."""
    lines = [json.dumps({"custom_id": f"c{n}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": "gpt-4o-mini", "messages": user(f"question {n}")}}) for n in range(3)]
    file_id = oai.files.create(file=("in.jsonl", "\n".join(lines).encode()), purpose="batch").id
    batch = oai.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status == "validating"
    done = oai.batches.retrieve(batch.id)
    assert done.status == "completed" and done.usage is not None and done.usage.output_tokens == 15
    assert done.request_counts is not None and done.request_counts.completed == 3 and done.output_file_id
    results = [json.loads(line) for line in oai.files.content(done.output_file_id).text.splitlines()]
    assert [r["custom_id"] for r in results] == ["c0", "c1", "c2"]
    assert all(r["response"]["status_code"] == 200 for r in results)
    with pytest.raises(openai.BadRequestError):
        oai.batches.cancel(batch.id)

    stopped = oai.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert oai.batches.cancel(stopped.id).status == "cancelling"
    cancelled = oai.batches.retrieve(stopped.id)
    assert cancelled.status == "cancelled" and cancelled.output_file_id is None
    assert cancelled.request_counts is not None and cancelled.request_counts.completed == 0
    assert [b.id for b in oai.batches.list(limit=1).data] == [stopped.id]
    assert batch.id in [b.id for b in oai.batches.list(after=stopped.id).data]

    repeated = oai.files.create(file=("in.jsonl", "\n".join([lines[0], lines[1], lines[0]]).encode()), purpose="batch")
    failed = oai.batches.retrieve(oai.batches.create(input_file_id=repeated.id, endpoint="/v1/chat/completions",
                                                     completion_window="24h").id)
    assert failed.status == "failed" and failed.usage is None and failed.errors is not None
    assert [(e.code, e.line) for e in failed.errors.data or []] == [("duplicate_custom_id", 3)]


def test_structured_outputs_are_json_fitting_their_schema(oai: openai.OpenAI, http: Any) -> None:
    """`response_format` json_schema / json_object on chat, `text.format` on Responses: JSON text, as
    the real API answers; a malformed format is its 400."""
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}
    answer = oai.chat.completions.create(model="m", messages=user("who?"), response_format=fmt)
    assert json.loads(answer.choices[0].message.content or "") == {"name": "mock-name", "age": 1}
    assert answer.usage is not None and answer.usage.completion_tokens == 4
    as_object = oai.chat.completions.create(model="m", messages=user("answer in json"),
                                            response_format={"type": "json_object"})
    assert json.loads(as_object.choices[0].message.content or "") == {"echo": "Echo: answer in json"}
    response = oai.responses.create(model="m", input="who?",
                                    text={"format": {"type": "json_schema", "name": "person", "schema": schema}})
    assert json.loads(response.output_text) == {"name": "mock-name", "age": 1}
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"
    for body, param in [({"response_format": {"type": "json_object"}}, "messages"),
                        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
                        ({"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}},
                         "response_format.json_schema.name"),
                        ({"response_format": {"type": "json_schema", "json_schema": {"name": "a person"}}},
                         "response_format.json_schema.name"),
                        ({"response_format": {"type": "json_schema", "json_schema": {"name": "person"}}},
                         "response_format.json_schema.schema")]:
        refused = http.post("/v1/chat/completions", json={"model": "m", "messages": user("who?"), **body},
                            headers={"Authorization": "Bearer k"})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param


def test_a_refusal_is_openais_refusal_field(oai: openai.OpenAI) -> None:
    """`#mock:refusal`: content null and `refusal` set (streamed as `refusal` deltas); Responses: a
    `refusal` part, streamed as `response.refusal.delta` events."""
    answer = oai.chat.completions.create(model="m", messages=user("who? #mock:refusal"))
    message = answer.choices[0].message
    assert message.content is None and message.refusal == "I'm sorry, but I can't assist with that request."
    assert answer.choices[0].finish_reason == "stop" and answer.usage is not None
    assert answer.usage.completion_tokens == 9
    chunks = list(oai.chat.completions.create(model="m", messages=user("who? #mock:refusal"), stream=True))
    assert "".join(c.choices[0].delta.refusal or "" for c in chunks if c.choices) == message.refusal
    assert all(not c.choices or not c.choices[0].delta.content for c in chunks)
    events = list(oai.responses.create(model="m", input="who? #mock:refusal", stream=True))
    refused = "".join(e.delta for e in events if e.type == "response.refusal.delta")
    assert refused == message.refusal and events[-1].type == "response.completed"
    assert [p.type for p in events[-1].response.output[0].content] == ["refusal"]  # type: ignore[union-attr]
