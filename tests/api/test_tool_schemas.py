"""Tool definitions whose JSON Schema cannot be checked, or that are too large to check, are the
tool-definition 400 on every surface that validates them (native, and translated either way), in
that surface's error shape, costing nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from sentinel.native.responses import ErrorBody
from sentinel.native.types import MAX_TOOL_LIST_ITEMS, MAX_TOOL_NODES, MAX_TYPE_LIST
from tests.api.conftest import Gateway
from tests.api.test_native import tiers_file
from tests.api.test_quotas import set_plan
from tests.support.attack import ledger_rows, openai_error

MINI = "gpt-4o-mini"
HAIKU = "claude-3-5-haiku-20241022"
NATIVE = "/native/v1/chat/completions"
# Patterns `re.compile` refuses with OverflowError (a repetition count over its limit) and
# RecursionError (groups nested too deep), not the re.error the schema check expected; and one it
# warns about as it compiles ("Possible nested set", a 500 wherever warnings are errors).
PATTERNS = ["a{4294967295}", "(" * 2000 + ")" * 2000, "[" * 500]
INVALID_SCHEMA = "Invalid tool definition: Tool 'f' has invalid schema"


def schema(pattern: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"s": {"type": "string", "pattern": pattern}}}


def user() -> list[dict[str, Any]]:
    return [{"role": "user", "content": "hi"}]


def test_a_tool_pattern_the_regex_engine_refuses_is_a_400_that_costs_nothing(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """Native, OpenAI client on an Anthropic model, Anthropic client on an OpenAI model: a 400 (it
    was a 500), and no quota or usage record spent on it."""
    gw = gateway_factory(providers_file=tiers_file(tmp_path, "openai"))
    set_plan(gw.settings.database_url, "alice", "big", "requests=1000/1m")
    with gw.client() as http:
        first = http.post("/v1/chat/completions", json={"model": MINI, "messages": user()})
        for pattern in PATTERNS:
            tools = [{"type": "function", "function": {"name": "f", "description": "a tool",
                                                       "parameters": schema(pattern)}}]
            native = http.post(NATIVE, json={"messages": user(), "tools": tools})
            to_claude = http.post("/v1/chat/completions", json={"model": HAIKU, "messages": user(), "tools": tools})
            to_gpt = http.post("/v1/messages", json={"model": MINI, "max_tokens": 5, "messages": user(), "tools": [
                {"name": "f", "input_schema": schema(pattern)}]})
            for r in (native, to_claude):
                assert r.status_code == 400, (pattern[:20], r.text)
                error = openai_error(r.json())
                assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_request"), error
                assert INVALID_SCHEMA in error["message"], error
            ErrorBody.model_validate_json(native.content)
            assert to_gpt.status_code == 400, (pattern[:20], to_gpt.text)
            body = to_gpt.json()
            assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
            assert INVALID_SCHEMA in body["error"]["message"], body
        last = http.post("/v1/chat/completions", json={"model": MINI, "messages": user()})
    assert first.status_code == last.status_code == 200
    assert int(last.headers["x-ratelimit-remaining"]) == int(first.headers["x-ratelimit-remaining"]) - 1
    assert {r["request_id"] for r in ledger_rows(gw.settings.database_url)} == {
        first.headers["x-request-id"], last.headers["x-request-id"]}


@pytest.mark.parametrize(("huge", "too_large"), [
    ({"type": "object", "allOf": [{}] * 5000}, f"more than {MAX_TOOL_NODES:,} JSON objects, arrays and booleans"),
    ({"type": "object", "allOf": [True] * 5000}, f"more than {MAX_TOOL_NODES:,} JSON objects, arrays and booleans"),
    ({"type": "object", "required": [f"k{i}" for i in range(MAX_TOOL_LIST_ITEMS + 1)]},
     f"more than {MAX_TOOL_LIST_ITEMS:,} strings, numbers and nulls"),
    ({"type": "object", "properties": {"a": {"type": [*range(4000), "string"]}}},
     f"a `type` list holds more than JSON Schema's {MAX_TYPE_LIST} types"),
], ids=["objects", "booleans", "strings", "type-list"])
def test_tools_too_large_to_check_are_a_400_before_any_schema_is_checked(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, huge: dict[str, Any],
    too_large: str,
) -> None:
    """5,000 `allOf` entries (~20 KB) cost ~0.85 s of the event loop in the meta-schema check, before
    any quota was taken: refused on every surface without it. `true` is a schema too, checked like
    `{}`: booleans went uncounted (2,000,000 of them in 10 MB: minutes of the event loop). So were
    strings and numbers in arrays (a `required` name costs ~10 µs: 100,000 in ~1 MB, ~1 s), and a
    `type` list of 4,000 numbers and a string (~20 KB) took ~10 s: its items' uniqueness is checked
    pair by pair."""
    checked: list[Any] = []
    monkeypatch.setattr(Draft202012Validator, "check_schema", lambda schema, *a, **k: checked.append(schema))
    gw = gateway_factory(providers_file=tiers_file(tmp_path, "openai"))
    tools = [{"type": "function", "function": {"name": "f", "description": "a tool", "parameters": huge}}]
    with gw.client() as http:
        native = http.post(NATIVE, json={"messages": user(), "tools": tools})
        to_claude = http.post("/v1/chat/completions", json={"model": HAIKU, "messages": user(), "tools": tools})
        to_gpt = http.post("/v1/messages", json={"model": MINI, "max_tokens": 5, "messages": user(), "tools": [
            {"name": "f", "input_schema": huge}]})
    for r in (native, to_claude):
        assert r.status_code == 400, r.text
        error = openai_error(r.json())
        assert error["code"] == "invalid_request" and too_large in error["message"], error
        assert error["details"]["param"] == "tools", error
    assert to_gpt.status_code == 400 and too_large in to_gpt.json()["error"]["message"], to_gpt.text
    assert checked == []
