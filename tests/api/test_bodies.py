"""Request bodies: a JSON object of at most MAX_JSON_CONTAINERS objects and arrays, nested at most
MAX_JSON_DEPTH levels, whatever its brackets inside strings."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sentinel.api.bodies import parse_json_object
from sentinel.errors import InvalidRequest
from sentinel.native.openai_checks import MAX_JSON_CONTAINERS, MAX_JSON_DEPTH, json_containers_exceed


def nested(levels: int) -> dict[str, Any]:
    """An object `levels` deep: objects and arrays alternating inside the outer object."""
    value: Any = 1
    for level in range(levels - 1):
        value = [value] if level % 2 else {"k": value}
    return {"v": value}


@pytest.mark.parametrize("levels", [1, 2, MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH])
def test_up_to_the_limit_is_accepted(levels: int) -> None:
    assert parse_json_object(json.dumps(nested(levels)).encode()) == nested(levels)


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, MAX_JSON_DEPTH + 2, 500, 1025, 5000])
def test_deeper_is_refused(levels: int) -> None:
    """Past orjson's own limit (1,024 levels: it refuses the text) as below it: the depth is named."""
    body = b'{"v":' + b"[" * levels + b"]" * levels + b"}"
    with pytest.raises(InvalidRequest, match="nested deeper") as refused:
        parse_json_object(body)
    assert refused.value.code == "invalid_json"


def test_many_brackets_are_not_depth() -> None:
    """Brackets side by side, and brackets inside strings, do not nest."""
    wide = {"messages": [{"role": "user", "content": "[{" * 200} for _ in range(300)]}
    assert parse_json_object(json.dumps(wide).encode()) == wide
    deep_among_many = {**wide, "x": nested(MAX_JSON_DEPTH + 1)}
    with pytest.raises(InvalidRequest, match="nested deeper"):
        parse_json_object(json.dumps(deep_among_many).encode())


def test_up_to_the_container_limit_is_accepted_and_one_more_is_refused_before_the_parse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The outer object and `MAX_JSON_CONTAINERS - 1` inside it are the limit."""
    at_limit = {"x": [{} for _ in range(MAX_JSON_CONTAINERS - 2)]}
    assert parse_json_object(json.dumps(at_limit).encode()) == at_limit
    parsed: list[bytes] = []
    monkeypatch.setattr("sentinel.domain.json_body.orjson.loads", lambda body: parsed.append(body))
    with pytest.raises(InvalidRequest, match=f"more than {MAX_JSON_CONTAINERS:,} objects and arrays") as refused:
        parse_json_object(json.dumps({"x": [{} for _ in range(MAX_JSON_CONTAINERS - 1)]}).encode())
    assert refused.value.code == "invalid_json"
    assert parsed == []  # refused before orjson built any of them


def test_brackets_inside_strings_are_not_containers() -> None:
    """Source code in a prompt: brackets, escaped quotes and backslashes, far past the limit in all."""
    code = 'if (x) { a["k"] = [1, "\\"]; } // \\" {[ \n' * (MAX_JSON_CONTAINERS // 3)
    body = {"messages": [{"role": "user", "content": code}, {"role": "user", "content": [{"type": "text", "text": code}]}]}
    raw = json.dumps(body).encode()
    assert raw.count(b"{") + raw.count(b"[") > 3 * MAX_JSON_CONTAINERS
    assert parse_json_object(raw) == body


@pytest.mark.parametrize("limit", [0, 1, 2, 3, 5, 8])
def test_containers_are_counted_exactly_whatever_the_strings_hold(limit: int) -> None:
    strings = ["", "{", "[[", '"{"', "\\", '\\"[', "a{b", "]}"]
    for value in ({"k": strings}, [strings, {"{": ["["]}], {s: {s: [s]} for s in strings}, [[], {}, [[{}]]]):
        for indent in (None, 1):
            raw = json.dumps(value, indent=indent).encode()
            assert json_containers_exceed(raw, limit) is (_containers(value) > limit), (raw, limit)


def _containers(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + sum(_containers(item) for item in value.values())
    if isinstance(value, list):
        return 1 + sum(_containers(item) for item in value)
    return 0
