"""The request contract: strict parsing, one precise error per bad body, and the published schema."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from sentinel.native import ChatChunk, ChatRequest, ChatResponse, ErrorBody, NativeValidationError
from sentinel.native.model_request import ModelChatRequest
from sentinel.native.types import (
    MAX_TOOL_LIST_ITEMS,
    MAX_TOOL_NODES,
    MAX_TOOL_PATTERN_CHARS,
    MAX_TYPE_LIST,
    ImagePart,
    TextPart,
    ToolChoiceFunction,
)
from sentinel.native.validation import parse_chat_request
from tests.support.payloads import WEATHER_TOOL

USER = {"role": "user", "content": "hi"}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
}


def body(**fields: Any) -> dict[str, Any]:
    return {"messages": [USER], **fields}


def error_of(raw: Any) -> NativeValidationError:
    with pytest.raises(NativeValidationError) as info:
        parse_chat_request(raw)
    return info.value


def test_minimal_request_gets_defaults() -> None:
    req = parse_chat_request(orjson.dumps(body()))
    assert req.tier == "simple"
    assert req.stream is False
    assert req.messages[0].text() == "hi"
    assert req.tools is None and req.tool_choice is None


def test_full_request_parses() -> None:
    req = parse_chat_request(
        body(
            tier="complex",
            temperature=2,
            max_tokens=1,
            stop=["a", "b", "c", "d"],
            stream=True,
            conversation_id="c" * 256,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        )
    )
    assert req.temperature == 2.0 and req.max_tokens == 1 and req.stop == ["a", "b", "c", "d"]
    assert isinstance(req.tool_choice, ToolChoiceFunction)
    assert req.tools is not None and req.tools[0].function.name == "get_weather"
    assert parse_chat_request(body(top_p=0)).top_p == 0  # (with no temperature: one or the other)


def test_tool_round_trip_history_parses() -> None:
    req = parse_chat_request(
        body(
            messages=[
                USER,
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
            ],
            tools=[WEATHER_TOOL],
        )
    )
    assert req.messages[1].tool_calls is not None
    assert req.messages[1].tool_calls[0].function.arguments == {"city": "Paris"}


def test_content_parts_are_discriminated() -> None:
    req = parse_chat_request(
        body(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a"},
                        {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
                        {"type": "text", "text": "b"},
                    ],
                }
            ]
        )
    )
    parts = req.messages[0].content
    assert isinstance(parts, list)
    assert [type(p) for p in parts] == [TextPart, ImagePart, TextPart]
    assert req.messages[0].text() == "ab"


def test_empty_tools_are_absent() -> None:
    assert parse_chat_request(body(tools=[])).tools is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("model", "gpt-4o"), ("stream_options", {"include_usage": True}), ("n", 2), ("Tier", "simple")],
)
def test_unknown_top_level_field_is_named(field: str, value: Any) -> None:
    err = error_of(body(**{field: value}))
    assert err.message.startswith(f"Unknown field '{field}'")
    assert err.param == field


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (body(messages=[{**USER, "foo": 1}]), "messages.0.foo"),
        (
            body(messages=[{"role": "user", "content": [{"type": "text", "text": "a", "x": 1}]}]),
            "messages.0.content.0.x",
        ),
        (
            body(tools=[{**WEATHER_TOOL, "function": {**WEATHER_TOOL["function"], "strict": True}}]),
            "tools.0.function.strict",
        ),
        (
            body(messages=[USER, {"role": "assistant", "content": "", "tool_calls": [{**CALL, "extra": 1}]}]),
            "messages.1.tool_calls.0.extra",
        ),
    ],
)
def test_unknown_nested_field_is_rejected_with_its_path(raw: dict[str, Any], path: str) -> None:
    err = error_of(raw)
    assert err.message == f"Unknown field '{path}'"
    assert err.param == path


def test_model_field_explains_tiers() -> None:
    err = error_of(body(model="gpt-4o"))
    assert "tier" in err.message


@pytest.mark.parametrize(
    ("raw", "param", "text"),
    [
        (
            body(messages=[USER, USER, {"role": "bot", "content": "x"}]),
            "messages.2.role",
            "Input should be 'system', 'user', 'assistant' or 'tool'",
        ),
        (body(messages=[]), "messages", "at least 1 item"),
        (
            body(messages=[{"role": "user", "content": 5}]),
            "messages.0.content",
            "a string, a list of content parts or null",
        ),
        (
            body(messages=[{"role": "user", "content": [{"type": "text"}]}]),
            "messages.0.content.0.text",
            "Field required",
        ),
        (
            body(messages=[{"role": "user", "content": [{"type": "audio"}]}]),
            "messages.0.content.0",
            "'audio'",
        ),
        (
            body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]}]),
            "messages.0.content.0.image_url.url",
            "at least 1 character",
        ),
        (body(temperature=2.5), "temperature", "less than or equal to 2"),
        (body(temperature=-0.1), "temperature", "greater than or equal to 0"),
        (body(temperature="1"), "temperature", "valid number"),
        (body(top_p=1.5), "top_p", "less than or equal to 1"),
        (body(max_tokens=0), "max_tokens", "greater than or equal to 1"),
        (body(max_tokens=1.5), "max_tokens", "valid integer"),
        (body(stream="true"), "stream", "valid boolean"),
        (body(tier="huge"), "tier", "'simple', 'moderate' or 'complex'"),
        (body(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4 items"),
        (body(stop=[""]), "stop.0", "at least 1 character"),
        (body(stop=5), "stop", "a string or a list"),
        (body(tool_choice="sometimes"), "tool_choice", "'auto', 'none' or 'required'"),
        (body(tool_choice=3), "tool_choice", "'auto', 'none', 'required' or an object"),
        (
            body(tools=[WEATHER_TOOL], tool_choice={"type": "function"}),
            "tool_choice.function",
            "Field required",
        ),
        (
            body(
                messages=[
                    USER,
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "{}"}}],
                    },
                ]
            ),
            "messages.1.tool_calls.0.function.arguments",
            "valid dictionary",
        ),
    ],
)
def test_field_errors_name_their_path(raw: dict[str, Any], param: str, text: str) -> None:
    err = error_of(raw)
    assert err.param == param
    assert err.message.startswith(f"{param}: ")
    assert text in err.message


@pytest.mark.parametrize(
    ("raw", "param", "text"),
    [
        (
            body(messages=[USER, {"role": "system", "content": "late"}]),
            "messages.1.role",
            "System messages must appear before any non-system messages",
        ),
        (
            body(messages=[USER, {"role": "tool", "content": "x"}]),
            "messages.1",
            "Missing required field: tool_call_id is required for tool messages",
        ),
        (
            body(messages=[USER, {"role": "tool", "content": "x", "tool_call_id": "call_9"}]),
            "messages.1.tool_call_id",
            "No tool call found in history for tool_call_id: call_9",
        ),
        (
            # the matching call must come from an *earlier* assistant message
            body(
                messages=[
                    USER,
                    {"role": "tool", "content": "x", "tool_call_id": "call_1"},
                    {"role": "assistant", "content": None, "tool_calls": [CALL]},
                ]
            ),
            "messages.1.tool_call_id",
            "No tool call found in history for tool_call_id: call_1",
        ),
        (
            body(messages=[{"role": "user", "content": "x", "tool_calls": [CALL]}]),
            "messages.0",
            "only allowed on assistant",
        ),
        (
            body(messages=[{"role": "user", "content": "x", "tool_call_id": "c"}]),
            "messages.0",
            "only allowed on tool messages",
        ),
        (body(messages=[{"role": "user", "content": None}]), "messages.0", "content is required"),
        (body(messages=[{"role": "user"}]), "messages.0", "content is required"),
        (body(messages=[USER, {"role": "assistant", "content": None}]), "messages.1", "content is required"),
        (
            body(
                messages=[
                    {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x"}}]}
                ]
            ),
            "messages.0",
            "image_url parts are only allowed in user messages",
        ),
    ],
)
def test_semantic_errors(raw: dict[str, Any], param: str, text: str) -> None:
    err = error_of(raw)
    assert err.param == param
    assert text in err.message


def test_empty_string_content_is_allowed_on_assistant_tool_call_turn() -> None:
    req = parse_chat_request(
        body(messages=[USER, {"role": "assistant", "content": "", "tool_calls": [CALL]},
                       {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}])
    )
    assert req.messages[1].content == ""


@pytest.mark.parametrize("value", ["a", "conv-1_2.3:x", "ü" * 256, "x y"])
def test_conversation_id_accepted(value: str) -> None:
    assert parse_chat_request(body(conversation_id=value)).conversation_id == value


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("", "at least 1 character"),
        ("c" * 257, "at most 256 characters"),
        ("a\nb", "control characters"),
        ("a\x00", "control characters"),
        ("a\x7f", "control characters"),
        ("a\x85", "control characters"),
        (42, "valid string"),
    ],
)
def test_conversation_id_rejected(value: Any, text: str) -> None:
    err = error_of(body(conversation_id=value))
    assert err.param == "conversation_id"
    assert text in err.message


@pytest.mark.parametrize("name", ["a", "Ann_1-b", "x" * 64])
def test_message_names_every_provider_takes_are_accepted(name: str) -> None:
    req = parse_chat_request({"messages": [USER, {"role": "user", "content": "x", "name": name}]})
    assert req.messages[1].name == name


@pytest.mark.parametrize("name", ["John Doe", "a<b", "a|b", "a\\b", "a/b", "a>b", "ann\n", "\u00e9", "x" * 65])
def test_a_message_name_openai_refuses_is_refused_for_every_tier(name: str) -> None:
    with pytest.raises(NativeValidationError) as exc:
        parse_chat_request({"messages": [USER, {"role": "user", "content": "x", "name": name}]})
    assert exc.value.param == "messages.1.name"
    assert exc.value.message.startswith("messages.1.name: a message name must match ^[a-zA-Z0-9_-]{1,64}$")


def test_a_v1_request_for_one_model_keeps_its_message_name_for_that_provider() -> None:
    """Only a tier mixes providers: a `/v1` request names its model, whose provider judges the name
    (OpenAI's own 400 reaches an OpenAI client; Claude is sent the turn without it)."""
    req = ModelChatRequest.model_validate(
        {"model": "claude-3-5-haiku-20241022", "messages": [{"role": "user", "content": "x", "name": "John Doe"}]})
    assert req.messages[0].name == "John Doe"


def tool(**function: Any) -> dict[str, Any]:
    return {"type": "function", "function": {**WEATHER_TOOL["function"], **function}}


@pytest.mark.parametrize("name", ["a", "get-weather", "A_1", "x" * 64])
def test_tool_names_accepted(name: str) -> None:
    req = parse_chat_request(body(tools=[tool(name=name)]))
    assert req.tools is not None and req.tools[0].function.name == name


def test_tool_parameters_default_to_an_empty_object() -> None:
    raw = {"type": "function", "function": {"name": "now", "description": "The time"}}
    req = parse_chat_request(body(tools=[raw]))
    assert req.tools is not None and req.tools[0].function.parameters == {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("tools", "param", "text"),
    [
        ([tool(name="a b")], "tools.0.function.name", "Invalid tool definition: Invalid tool name 'a b'"),
        ([tool(name="x" * 65)], "tools.0.function.name", "Invalid tool name"),
        ([tool(name="")], "tools.0.function.name", "Invalid tool name"),
        ([tool(name="get_weather\n")], "tools.0.function.name", "Invalid tool name"),  # (`$` passes a final newline)
        ([tool(description="  ")], "tools.0.function", "Tool 'get_weather' has empty description"),
        ([tool(parameters={"type": "array"})], "tools.0.function", "Tool 'get_weather' has invalid schema"),
        ([tool(parameters={"properties": {}})], "tools.0.function", "has invalid schema"),
        (
            [tool(parameters={"type": "object", "properties": {"a": {"type": "strange"}}})],
            "tools.0.function",
            "has invalid schema",
        ),
        ([tool(parameters={"type": "object", "required": "city"})], "tools.0.function", "has invalid schema"),
        ([WEATHER_TOOL, WEATHER_TOOL], "tools.1.function.name", "duplicate tool name 'get_weather'"),
        ([{**WEATHER_TOOL, "type": "retrieval"}], "tools.0.type", "'function'"),
    ],
)
def test_tool_definition_errors(tools: list[Any], param: str, text: str) -> None:
    err = error_of(body(tools=tools))
    assert err.param == param
    assert text in err.message


def schema_checks(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The schemas `Draft202012Validator.check_schema` is called with from now on (it still checks)."""
    seen: list[dict[str, Any]] = []
    check = Draft202012Validator.check_schema

    def recording(schema: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        seen.append(schema)
        check(schema, *args, **kwargs)

    monkeypatch.setattr(Draft202012Validator, "check_schema", recording)
    return seen


def fresh_tool(i: int = 0, **properties: Any) -> dict[str, Any]:
    """A tool whose schema no earlier test sent (checked schemas are remembered process-wide)."""
    schema = {"type": "object", "properties": {uuid.uuid4().hex: {"type": "string"}, **properties}}
    return tool(name=f"f{i}", parameters=schema)


def test_tools_past_the_node_limit_are_refused_before_any_schema_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """One tool of 5,000 `allOf` entries (~20 KB) cost ~0.85 s of the event loop in the meta-schema check."""
    checked = schema_checks(monkeypatch)
    huge = tool(parameters={"type": "object", "allOf": [{}] * 5000})
    err = error_of(body(tools=[fresh_tool(), huge]))
    assert err.param == "tools"
    assert f"more than {MAX_TOOL_NODES:,} JSON objects, arrays and booleans" in err.message
    assert checked == []


def test_tools_up_to_the_node_limit_are_checked() -> None:
    """The limit counts every object and array of `tools` (the list, each tool and its `function`
    too): 128 tools (the most a request may have) of 14 each, more than an agent's tools hold, fit."""
    tools = [fresh_tool(i, a={"type": "array", "items": {"type": "string", "enum": ["x", "y"]}},
                        b={"type": "object", "properties": {"c": {"type": "integer"}}, "required": ["c"]},
                        d={"type": "array", "items": {"type": "number"}})
             for i in range(128)]
    nodes = containers(tools)
    assert nodes == 1 + 128 * 14 <= MAX_TOOL_NODES
    assert parse_chat_request(body(tools=tools)).tools is not None
    padding = {f"p{i}": {} for i in range(MAX_TOOL_NODES - nodes)}  # exactly the limit, then one more
    tools[0]["function"]["parameters"]["properties"].update(padding)
    assert parse_chat_request(body(tools=tools)).tools is not None
    tools[0]["function"]["parameters"]["properties"]["one_more"] = {}
    assert error_of(body(tools=tools)).param == "tools"


def test_tools_past_the_pattern_limit_are_refused_before_any_schema_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check compiles every `pattern` and `patternProperties` key: one of 1 MB cost ~0.9 s."""
    checked = schema_checks(monkeypatch)
    half = MAX_TOOL_PATTERN_CHARS // 2
    at_limit = [fresh_tool(0, s={"type": "string", "pattern": "a" * half}),
                fresh_tool(1, o={"type": "object", "patternProperties": {"b" * (half - 1): {}, "c": {}}})]
    assert parse_chat_request(body(tools=at_limit)).tools is not None
    assert len(checked) == 2
    at_limit[1]["function"]["parameters"]["properties"]["o"]["patternProperties"]["d"] = {}
    err = error_of(body(tools=at_limit))
    assert err.param == "tools"
    assert f"patterns hold more than {MAX_TOOL_PATTERN_CHARS:,} characters" in err.message
    assert len(checked) == 2


def test_tools_past_the_list_item_limit_are_refused_before_any_schema_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check reads each `required` name on its own (~10 µs): 100,000 (~1 MB, no object or array
    counted) took ~1 s. Strings, numbers and nulls in the tools' arrays are counted, every array's."""
    checked = schema_checks(monkeypatch)
    names = [f"k{i}" for i in range(MAX_TOOL_LIST_ITEMS - 2)]
    at_limit = [fresh_tool(0, s={"type": "string", "enum": ["a", None]}),
                tool(name="f1", parameters={"type": "object", "required": names})]
    assert parse_chat_request(body(tools=at_limit)).tools is not None
    assert len(checked) == 2
    at_limit[0]["function"]["parameters"]["properties"]["s"]["enum"].append(3)
    err = error_of(body(tools=at_limit))
    assert err.param == "tools"
    assert f"arrays hold more than {MAX_TOOL_LIST_ITEMS:,} strings, numbers and nulls" in err.message
    assert len(checked) == 2


@pytest.mark.parametrize("kind", [["string"] * (MAX_TYPE_LIST + 1), [*range(4000), "string"]], ids=["strings", "mixed"])
def test_a_type_list_longer_than_the_json_types_is_refused_before_any_schema_is_checked(
    monkeypatch: pytest.MonkeyPatch, kind: list[Any],
) -> None:
    """The meta-schema checks that a `type` list's items are unique by comparing every pair when they
    do not sort: 4,000 numbers and a string (~20 KB) took ~10 s of a walk thread, holding the lock
    every schema check takes. No list of more than JSON Schema's 7 types is valid."""
    checked = schema_checks(monkeypatch)
    every = ["string", "number", "integer", "boolean", "object", "array", "null"]
    assert len(every) == MAX_TYPE_LIST
    assert parse_chat_request(body(tools=[fresh_tool(0, a={"type": every})])).tools is not None
    assert len(checked) == 1
    err = error_of(body(tools=[fresh_tool(1, a={"type": kind})]))
    assert err.param == "tools"
    assert f"a `type` list holds more than JSON Schema's {MAX_TYPE_LIST} types" in err.message
    assert len(checked) == 1


def containers(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + sum(containers(item) for item in value.values())
    if isinstance(value, list):
        return 1 + sum(containers(item) for item in value)
    return 0


def test_a_schema_that_passed_is_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client sends its tools on every turn: each distinct schema is checked once, whatever the
    order of its keys; one that failed is checked again (and still fails)."""
    checked = schema_checks(monkeypatch)
    tools = [fresh_tool(0), fresh_tool(1)]
    for _ in range(3):
        assert parse_chat_request(body(tools=tools)).tools is not None
    reordered = dict(reversed(tools[0]["function"]["parameters"].items()))
    parse_chat_request(body(tools=[tool(name="f0", parameters=reordered)]))
    assert checked == [tools[0]["function"]["parameters"], tools[1]["function"]["parameters"]]
    bad = fresh_tool(2, a={"type": "strange"})
    for _ in range(2):
        assert "has invalid schema" in error_of(body(tools=[bad])).message
    assert len(checked) == 4


@pytest.mark.parametrize(
    ("fields", "param", "text"),
    [
        ({"tool_choice": "required"}, "tool_choice", "tool_choice requires tools"),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice", "requires tools"),
        (
            {"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function.name",
            "tool_choice names unknown tool 'nope'",
        ),
    ],
)
def test_tool_choice_must_match_tools(fields: dict[str, Any], param: str, text: str) -> None:
    err = error_of(body(**fields))
    assert err.param == param
    assert text in err.message


@pytest.mark.parametrize("choice", ["auto", "none"])
def test_harmless_tool_choice_without_tools_is_accepted(choice: str) -> None:
    assert parse_chat_request(body(tool_choice=choice)).tool_choice == choice


@pytest.mark.parametrize(
    ("raw", "text"),
    [(b"{", "Invalid JSON"), (b"\xff\xfe", "Invalid JSON"), (b"[1]", "JSON object"), ("null", "JSON object")],
)
def test_body_must_be_a_json_object(raw: bytes | str, text: str) -> None:
    err = error_of(raw)
    assert text in err.message
    assert err.param is None


@pytest.mark.parametrize("model", [ChatRequest, ChatResponse, ChatChunk, ErrorBody])
def test_json_schema_is_valid_and_its_examples_validate(model: Any) -> None:
    schema = model.model_json_schema()
    Draft202012Validator.check_schema(schema)
    examples = schema["examples"]
    assert examples
    for example in examples:
        Draft202012Validator(schema).validate(example)
        model.model_validate(example)


def test_request_schema_forbids_model_and_unknown_fields() -> None:
    schema = ChatRequest.model_json_schema()
    assert "model" not in schema["properties"]
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["messages"]
    message = schema["$defs"]["Message"]
    assert message["additionalProperties"] is False
