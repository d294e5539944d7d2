"""Request bodies: a JSON object nested at most MAX_JSON_DEPTH levels, whatever its brackets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sentinel.api.bodies import parse_json_object
from sentinel.errors import InvalidRequest
from sentinel.native.openai_checks import MAX_JSON_DEPTH


def nested(levels: int) -> dict[str, Any]:
    """An object `levels` deep: objects and arrays alternating inside the outer object."""
    value: Any = 1
    for level in range(levels - 1):
        value = [value] if level % 2 else {"k": value}
    return {"v": value}


@pytest.mark.parametrize("levels", [1, 2, MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH])
def test_up_to_the_limit_is_accepted(levels: int) -> None:
    assert parse_json_object(json.dumps(nested(levels)).encode()) == nested(levels)


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, MAX_JSON_DEPTH + 2, 500])
def test_deeper_is_refused(levels: int) -> None:
    with pytest.raises(InvalidRequest, match="nested deeper"):
        parse_json_object(json.dumps(nested(levels)).encode())


def test_many_brackets_are_not_depth() -> None:
    """Brackets side by side, and brackets inside strings, do not nest."""
    wide = {"messages": [{"role": "user", "content": "[{" * 200} for _ in range(300)]}
    assert parse_json_object(json.dumps(wide).encode()) == wide
    deep_among_many = {**wide, "x": nested(MAX_JSON_DEPTH + 1)}
    with pytest.raises(InvalidRequest, match="nested deeper"):
        parse_json_object(json.dumps(deep_among_many).encode())
