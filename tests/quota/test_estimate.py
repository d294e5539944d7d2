"""Pre-request estimates: which part of each endpoint's body is counted, and the output cap."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from sentinel.quota.estimate import (
    MAX_MCP_SERVERS,
    MAX_RESERVED_OUTPUT,
    REFERENCE_TOKENS,
    Rereads,
    estimate_input,
    max_output,
    references,
    rereads_reserved,
)
from sentinel.quota.images import OPENAI_MAX_IMAGE_TOKENS, ImageRule
from tests.support.payloads import WEATHER_TOOL


class RecordingCounter:
    """Counts one token per character and records what it was asked to count."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, Any]] = []
        self.users: set[str | None] = set()  # whose input each count was said to be

    def count_text(self, text: str, model: str, *, user: str | None = None) -> int:
        self.asked.append(("text", text))
        self.users.add(user)
        return len(text)

    def count_prompt(self, prompt: Any, model: str, *, user: str | None = None) -> int:
        self.asked.append(("prompt", prompt))
        self.users.add(user)
        return 100 if prompt is not None else 0

    def count_chat(
        self, messages: Sequence[Mapping[str, Any]], model: str, tools: Sequence[Any] | None = None, *,
        user: str | None = None, images: ImageRule | None = None, files: Any = None,
    ) -> int:
        self.asked.append(("chat", (list(messages), tools)))
        self.users.add(user)
        return 10 * len(messages) + (1000 if tools else 0)


USER = {"role": "user", "content": "hi"}


def estimate(endpoint: str, payload: dict[str, Any]) -> tuple[int, list[tuple[str, Any]]]:
    counter = RecordingCounter()
    total = estimate_input(counter, endpoint, "gpt-4o", payload, user="alice")  # type: ignore[arg-type]
    assert counter.users <= {"alice"}  # every count is told whose input it is (remembered counts)
    return total, counter.asked


@pytest.mark.parametrize("endpoint", ["chat", "native"])
def test_chat_counts_messages_and_tools(endpoint: str) -> None:
    assert estimate(endpoint, {"messages": [USER, USER], "tools": [WEATHER_TOOL]}) == (
        1020, [("chat", ([USER, USER], [WEATHER_TOOL]))]
    )
    assert estimate(endpoint, {"messages": "not a list", "tools": "nor this"}) == (0, [("chat", ([], None))])


def test_completions_count_the_prompt_and_embeddings_the_input() -> None:
    assert estimate("completions", {"prompt": ["a", "b"]}) == (100, [("prompt", ["a", "b"])])
    assert estimate("embeddings", {"input": "text"}) == (100, [("prompt", "text")])


def test_responses_count_instructions_input_and_tool_items() -> None:
    assert estimate("responses", {"instructions": "be brief", "input": "hello"}) == (
        len("be brief") + len("hello") + 3, [("text", "be brief"), ("text", "hello")]
    )
    items = [USER, {"type": "function_call_output", "output": "sunny"}, {"type": "function_call", "arguments": "{}"}]
    total, asked = estimate("responses", {"input": items})
    # Every string of an item counts, keys too (its short bookkeeping fields aside: `type`, ids).
    read = "output\nsunny\narguments\n{}"
    assert (total, asked) == (10 + len(read), [("chat", ([USER], None)), ("text", read)])
    screenshot = {"type": "computer_call_output", "call_id": "c1", "output": {
        "type": "computer_screenshot", "image_url": "data:image/png;base64," + "A" * 50_000}}
    reasoning = {"type": "reasoning", "encrypted_content": "B" * 50_000, "summary": [{"type": "summary_text", "text": "why"}]}
    total, asked = estimate("responses", {"input": [screenshot, reasoning]})
    # The screenshot and the encrypted content are not text; a part's kind (its nested `type`) is
    # counted like any string below the item (a token or two). The screenshot, whose size cannot be
    # read (its data is no image format), is estimated at an image's maximum.
    read = ["output", "type", "computer_screenshot", "summary", "type", "summary_text", "text", "why"]
    assert total == len("\n".join(read)) + OPENAI_MAX_IMAGE_TOKENS


TEXT = "x" * 5_000


@pytest.mark.parametrize("item", [
    # A string is text however it starts: once, any string beginning `data:` was skipped.
    {"type": "function_call_output", "call_id": "c", "output": "data:" + TEXT},
    {"type": "reasoning", "summary": [{"type": "summary_text", "text": "data:" + TEXT}]},
    {"type": "function_call", "call_id": "c", "name": "f", "arguments": "data:" + TEXT},
    # Keys named like an item's fields or a media part's below the item are the client's: once, a
    # schema property called `id` (or `image_url`) hid its whole subtree.
    {"type": "mcp_list_tools", "server_label": "s", "tools": [
        {"name": "t", "input_schema": {"properties": {"id": {"description": TEXT}}}}]},
    {"type": "mcp_list_tools", "server_label": "s", "tools": [
        {"name": "t", "input_schema": {"properties": {"image_url": {"description": TEXT}}}}]},
    {"type": "function_call_output", "call_id": "c", "output": [{"type": "input_text", "text": TEXT}]},
    # An item's id is a label while short; a long one is the client's text (the model reads it).
    {"type": "function_call_output", "call_id": "c" + TEXT, "output": "ok"},
    # A role on a non-message item does not make it a message (whose count reads no `output`).
    {"type": "function_call_output", "role": "user", "call_id": "c", "output": TEXT},
    # Keys are text too: a tool list's schema property named with a long string (keys were left out).
    {"type": "mcp_list_tools", "server_label": "s", "tools": [
        {"name": "t", "input_schema": {"properties": {TEXT: {"type": "string"}}}}]},
    {"type": "function_call_output", "call_id": "c", "output": [{"type": "input_text", "text": "ok", TEXT: 1}]},
])
def test_every_string_of_an_input_item_that_is_text_is_counted(item: dict[str, Any]) -> None:
    total, _ = estimate("responses", {"input": [item]})
    assert total >= len(TEXT)


def test_only_media_parts_data_is_skipped() -> None:
    """A media part's data is not text; the image is estimated by its own rule (unreadable here: the
    maximum), a text file by its text (the request's count, not its base64)."""
    image = "data:image/png;base64," + "A" * 50_000
    notes = "data:text/plain;base64," + base64.b64encode(b"notes " * 1000).decode()
    output = [{"type": "input_image", "image_url": image}, {"type": "input_file", "file_data": notes},
              {"type": "input_text", "text": "caption"}]
    total, asked = estimate("responses", {"input": [{"type": "function_call_output", "call_id": "c", "output": output}]})
    read = ["output", "type", "input_image", "type", "input_file", "type", "input_text", "text", "caption"]
    assert total == len("\n".join(read)) + OPENAI_MAX_IMAGE_TOKENS + len("notes " * 1000)
    assert ("text", "notes " * 1000) in asked


def test_definitions_that_reach_the_model_as_text_are_counted() -> None:
    """Tool-like definitions and schemas are prompt text (once, the estimate left them out: a
    Responses request with 60 long tools was admitted against a 1,000-token plan at 4 tokens)."""
    schema = {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}}
    functions = [{"name": "f", "parameters": {"type": "object"}}]
    total, asked = estimate("chat", {"messages": [USER], "functions": functions, "response_format": schema})
    assert asked[1:] == [("text", '[{"name":"f","parameters":{"type":"object"}}]'),
                         ("text", '{"type":"json_schema","json_schema":{"name":"w","schema":{"type":"object"}}}')]
    assert total == 10 + sum(len(text) for _, text in asked[1:])
    tools = [{"type": "function", "name": "f", "description": "d" * 50}]
    text = {"format": {"type": "json_schema", "schema": {"type": "object"}}}
    total, asked = estimate("responses", {"input": "hi", "tools": tools, "text": text})
    assert [kind for kind, _ in asked] == ["text", "text", "text"] and total > 50 + 3
    assert estimate("completions", {"prompt": "a", "suffix": "after"}) == (100 + 5, [("prompt", "a"), ("text", "after")])


def test_a_suffix_is_counted_once_a_prompt() -> None:
    """Each prompt of a legacy completion's list is completed on its own, followed by the `suffix`:
    counted once for the request, 2,048 prompts with a long suffix reserved 1/2,048th of what they read."""
    assert estimate("completions", {"prompt": ["a", "b", "c"], "suffix": "after"})[0] == 100 + 3 * 5
    assert estimate("completions", {"prompt": [[1, 2], [3]], "suffix": "after"})[0] == 100 + 2 * 5
    assert estimate("completions", {"prompt": [1, 2, 3], "suffix": "after"})[0] == 100 + 5  # one tokenised prompt
    assert estimate("completions", {"prompt": [], "suffix": "after"})[0] == 100 + 5


def test_unknown_endpoints_estimate_nothing() -> None:
    assert estimate("images", {"prompt": "a cat"}) == (0, [])


@pytest.mark.parametrize(
    ("endpoint", "payload", "expected"),
    [
        # Both caps: the larger (a server reading `max_tokens` alone generates up to it).
        ("chat", {"max_completion_tokens": 40, "max_tokens": 90}, 90),
        ("chat", {"max_completion_tokens": 90, "max_tokens": 40}, 90),
        ("chat", {"max_completion_tokens": None, "max_tokens": 9}, 9),  # null is not set
        ("chat", {"max_tokens": 90}, 90),
        ("chat", {}, 300),
        ("native", {"max_tokens": 12}, 12),
        ("completions", {}, 16),  # the legacy API's own default
        ("completions", {"max_tokens": 64}, 64),
        ("responses", {"max_output_tokens": 77}, 77),
        ("embeddings", {"max_tokens": 5}, 0),
        ("chat", {"max_tokens": 0}, 300),
        ("chat", {"max_tokens": True}, 300),
        ("chat", {"max_tokens": "50"}, 300),
    ],
)
def test_max_output(endpoint: str, payload: dict[str, Any], expected: int) -> None:
    assert max_output(endpoint, payload, 300) == expected


def test_requests_for_reasoning_the_provider_does_not_show_are_known() -> None:
    from sentinel.quota.estimate import hides_output

    assert hides_output("messages", {"thinking": {"type": "enabled", "budget_tokens": 2000}})
    assert hides_output("messages", {"thinking": {"type": "adaptive"}})
    assert not hides_output("messages", {"thinking": {"type": "disabled"}})
    assert not hides_output("messages", {})
    assert hides_output("chat", {"reasoning_effort": "high"})
    assert not hides_output("chat", {"reasoning_effort": None})
    assert not hides_output("chat", {"reasoning_effort": "none"})
    # The reasoning an OpenAI-compatible server streams, turned off (vLLM, OpenRouter): billed, unshown.
    assert hides_output("chat", {"include_reasoning": False})
    assert hides_output("chat", {"reasoning": {"effort": "high", "exclude": True}})
    assert not hides_output("chat", {"include_reasoning": True}) and not hides_output("chat", {"reasoning": {}})
    assert hides_output("responses", {"reasoning": {"effort": "low"}})
    assert not hides_output("responses", {"input": "hi"}) and not hides_output("embeddings", {"reasoning": {}})
    assert hides_output("completions", {"best_of": 3}) and hides_output("completions", {"n": 2, "best_of": 3})
    assert not hides_output("completions", {"n": 3, "best_of": 3}) and not hides_output("completions", {"n": 5})
    assert not hides_output("completions", {"best_of": True}) and not hides_output("completions", {"best_of": 1})


def test_a_model_that_reasons_unasked_hides_output_unless_the_request_turns_it_off() -> None:
    """o1/o3/o4-mini and gpt-5 reason on every request and bill it as output, streaming none of it:
    a request to one (`reasons`) hides output unless it turns reasoning off where the API it reaches
    lets it — `"minimal"` still reasons; a translation carries no way to."""
    from sentinel.quota.estimate import hides_output

    for endpoint in ("chat", "responses", "completions", "messages", "native"):
        assert hides_output(endpoint, {}, reasons=True), endpoint
        assert not hides_output(endpoint, {}), endpoint
    assert not hides_output("embeddings", {"input": "hi"}, reasons=True)
    assert not hides_output("chat", {"reasoning_effort": "none"}, reasons=True)
    assert hides_output("chat", {"reasoning_effort": "minimal"}, reasons=True)
    assert hides_output("chat", {"reasoning_effort": "none", "include_reasoning": False}, reasons=True)
    assert not hides_output("responses", {"reasoning": {"effort": "none"}}, reasons=True)
    assert not hides_output("responses", {"reasoning": {"effort": "none"}})
    assert hides_output("responses", {"reasoning": {"effort": "minimal"}}, reasons=True)
    assert hides_output("responses", {"reasoning": {}}) and hides_output("responses", {"reasoning": "none"}, reasons=True)
    # `thinking: disabled` turns off an Anthropic-format model's; translated to OpenAI it is dropped.
    disabled = {"thinking": {"type": "disabled"}}
    assert not hides_output("messages", disabled, reasons=True, kind="anthropic")
    assert hides_output("messages", disabled, reasons=True, kind="openai")


def test_spoken_output_is_output_the_text_does_not_show() -> None:
    """An audio answer is billed as audio tokens: its transcript is no count of them."""
    from sentinel.quota.estimate import hides_output

    assert hides_output("chat", {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}})
    assert not hides_output("chat", {"modalities": ["text"]})


def test_a_predicted_output_is_counted_as_input() -> None:
    """`prediction.content` is billed as input (a string or text parts); it counted as nothing."""
    total, asked = estimate("chat", {"messages": [USER], "prediction": {"type": "content", "content": "x = 1"}})
    assert (total, asked[1:]) == (10 + 5, [("text", "x = 1")])
    parts = [{"type": "text", "text": "a = 1"}, {"type": "text", "text": "bb"}, {"type": "image"}, "odd"]
    total, asked = estimate("chat", {"messages": [USER], "prediction": {"type": "content", "content": parts}})
    assert (total, asked[1:]) == (10 + 7, [("text", "a = 1"), ("text", "bb")])
    assert estimate("chat", {"messages": [USER], "prediction": "not an object"})[0] == 10


def test_a_prediction_is_output_the_stream_does_not_show() -> None:
    """A prediction's rejected tokens are billed as output and never streamed: a stream cut before
    its usage is charged the reserved output."""
    from sentinel.quota.estimate import hides_output

    assert hides_output("chat", {"prediction": {"type": "content", "content": "x = 1"}})
    assert not hides_output("chat", {"prediction": None})
    assert hides_output("chat", {"prediction": {"type": "content", "content": [{"type": "text", "text": "x"}]}})
    for empty in ({}, {"type": "content", "content": ""}, {"content": []}, {"content": 5}):  # predicts nothing
        assert not hides_output("chat", {"prediction": empty}), empty


def test_a_reusable_prompts_variables_are_counted() -> None:
    """`prompt.variables` are filled into the prompt (strings, input_text and input_image parts);
    they were never read. The prompt's own text lives at the provider (`prompt.id`): a reference
    (REFERENCE_TOKENS). An image by URL cannot be read: its detail's maximum."""
    variables = {"city": "Paris", "notes": {"type": "input_text", "text": "long notes"},
                 "photo": {"type": "input_image", "image_url": "https://x/y.png"}, "n": 3}
    total, asked = estimate("responses", {"prompt": {"id": "pmpt_1", "variables": variables}})
    assert sorted(asked) == [("text", "Paris"), ("text", "long notes")]
    assert total == len("Paris") + len("long notes") + OPENAI_MAX_IMAGE_TOKENS + REFERENCE_TOKENS
    assert estimate("responses", {"prompt": {"id": "pmpt_1", "variables": ["x"]}}) == (REFERENCE_TOKENS, [])
    assert estimate("responses", {"prompt": "pmpt_1"}) == (0, [])  # no object: nothing named


def test_what_a_request_names_that_the_provider_holds_is_reserved_per_reference() -> None:
    """A Responses `item_reference`, a reusable prompt's own text (`prompt.id`) and a chat message's
    earlier audio answer (`audio.id`) are text Sentinel cannot read: each was estimated at nothing,
    so one short id standing for a long stored item passed any input limit. Each reserves the
    configured figure (`SENTINEL_REFERENCE_INPUT_TOKENS`)."""
    refs = [{"type": "item_reference", "id": f"msg_{i}"} for i in range(3)]
    body = {"input": [USER, *refs], "prompt": {"id": "pmpt_1"}}
    plain = estimate_input(RecordingCounter(), "responses", "gpt-4o", {"input": [USER]})  # type: ignore[arg-type]
    assert estimate_input(RecordingCounter(), "responses", "gpt-4o", body) == plain + 4 * REFERENCE_TOKENS  # type: ignore[arg-type]
    assert estimate_input(RecordingCounter(), "responses", "gpt-4o", body, referenced=100) == plain + 400  # type: ignore[arg-type]
    # A reference's type is optional (left out or null: `{"id": ...}` is one to the API).
    for untyped in ({"id": "msg_1"}, {"type": None, "id": "msg_1"}):
        estimated = estimate_input(RecordingCounter(), "responses", "gpt-4o", {"input": [USER, untyped]})  # type: ignore[arg-type]
        assert plain + REFERENCE_TOKENS <= estimated < plain + REFERENCE_TOKENS + 10, untyped  # (and its JSON)
    # Not a reference: an item of another type, a message without its type, a prompt without an id.
    for other in ({"input": [USER, {"type": "message", "id": "msg_1", "role": "user", "content": "x"}]},
                  {"input": [USER, {"id": "msg_1", "role": "user", "content": "x"}]},
                  {"input": [USER, {"id": ""}]}, {"input": [USER], "prompt": {"id": ""}},
                  {"input": [USER], "prompt": {"variables": {}}}):
        assert estimate_input(RecordingCounter(), "responses", "gpt-4o", other) < REFERENCE_TOKENS  # type: ignore[arg-type]
    heard = {"messages": [USER, {"role": "assistant", "audio": {"id": "audio_1"}}, USER]}
    for endpoint in ("chat", "native"):
        assert estimate(endpoint, heard)[0] == 30 + REFERENCE_TOKENS
        assert estimate(endpoint, {"messages": [USER, {"role": "assistant", "audio": None}]})[0] == 20


def test_each_mcp_server_named_is_reserved_as_a_reference() -> None:
    """An MCP server's tool list is fetched by the provider and added to the input: a Messages
    request's `mcp_servers` entries and a Responses request's `mcp` tools (by `server_url` or
    `connector_id`; their `allowed_tools` are names, never the definitions) each reserve the
    configured figure, up to MAX_MCP_SERVERS of them; a count was never reserved before."""
    server = {"type": "url", "url": "https://mcp.example.com/sse", "name": "docs"}
    messages = {"messages": [USER], "max_tokens": 5}
    plain = estimate_input(RecordingCounter(), "messages", "claude", messages)  # type: ignore[arg-type]
    named = {**messages, "mcp_servers": [server, server, "junk"]}
    assert estimate_input(RecordingCounter(), "messages", "claude", named) == plain + 2 * REFERENCE_TOKENS  # type: ignore[arg-type]
    # count_tokens answers its figure to the client: a count, not a reservation
    assert estimate_input(RecordingCounter(), "messages/count_tokens", "claude", named) == plain  # type: ignore[arg-type]
    assert estimate_input(RecordingCounter(), "messages", "claude", named, referenced=7) == plain + 14  # type: ignore[arg-type]
    many = {**messages, "mcp_servers": [server] * (MAX_MCP_SERVERS * 10)}
    assert estimate_input(RecordingCounter(), "messages", "claude", many) == plain + MAX_MCP_SERVERS * REFERENCE_TOKENS  # type: ignore[arg-type]
    for absent in (None, {"docs": server}, []):
        assert estimate_input(RecordingCounter(), "messages", "claude", {**messages, "mcp_servers": absent}) == plain  # type: ignore[arg-type]
    tools = [{"type": "mcp", "server_label": "docs", "server_url": "https://mcp.example.com/sse",
              "allowed_tools": ["search"]},
             {"type": "mcp", "server_label": "mail", "connector_id": "connector_gmail"},
             {"type": "function", "name": "f", "parameters": {}}]
    without = estimate_input(RecordingCounter(), "responses", "gpt-4o", {"input": [USER], "tools": tools[2:]})  # type: ignore[arg-type]
    with_mcp = estimate_input(RecordingCounter(), "responses", "gpt-4o", {"input": [USER], "tools": tools})  # type: ignore[arg-type]
    assert with_mcp >= without + 2 * REFERENCE_TOKENS  # (and the mcp tools' own JSON)
    assert with_mcp < without + 2 * REFERENCE_TOKENS + 500
    assert references("chat", {"messages": [USER], "tools": tools}) == 0  # chat has no MCP tools


def test_rereads_reserve_the_estimate_again_and_each_cap_per_use_within_range() -> None:
    """An advisor tool's calls: each reads the estimated input again and writes its cap (the default
    when unknown); the sums stay within MAX_RESERVED_OUTPUT whatever the figures."""
    assert rereads_reserved([], 1_000, 4_096) == (0, 0)
    assert rereads_reserved([Rereads(3, None), Rereads(2, 500)], 1_000, 4_096) == (5_000, 3 * 4_096 + 1_000)
    assert rereads_reserved([Rereads(100, 10**12)], 10**12, 4_096) == (MAX_RESERVED_OUTPUT, MAX_RESERVED_OUTPUT)
