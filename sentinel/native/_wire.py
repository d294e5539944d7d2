"""Readers for untrusted upstream JSON: a wrong type reads as absent instead of raising a TypeError."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeGuard

import orjson


def as_object(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def as_str(value: Any) -> str:
    """`value` if it is a JSON string, else an empty one."""
    return value if isinstance(value, str) else ""


def as_list(value: Any) -> list[Any]:
    """`value` if it is a JSON array, else an empty one."""
    return value if isinstance(value, list) else []


def is_number(value: object) -> TypeGuard[int | float]:
    """Whether `value` is a JSON number: an int or a float, not a boolean (which Python counts as an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_finite_number(value: object) -> TypeGuard[int | float]:
    """Whether `value` is a JSON number (`is_number`) and finite: orjson reads `1e400` as infinity."""
    return is_number(value) and math.isfinite(value)


# The most tokens a provider is believed to report for one call (`sentinel.domain.numbers.MAX_TOKENS`
# is this figure; native imports nothing of ours): sums of larger ones could overflow a ledger's or a counter's
# 64-bit integers, so a larger count reads as malformed, like a negative one.
MAX_COUNT = 10**12


def as_count(value: Any) -> int | None:
    """`value` if it is an integer (not a bool) from 0 to MAX_COUNT, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT:
        return value
    return None


def field_text(value: Any) -> str:
    """A field of an answer as text to count: a string as it is, null as nothing, anything else as
    compact JSON (some OpenAI-compatible servers send tool-call `arguments` as an object)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (254 levels; it reads 1,024)
        return flat_json(value, leaf=_orjson_leaf, comma=",", colon=":")


def flat_json(value: Any, *, leaf: Callable[[Any], str], comma: str, colon: str) -> str:
    """`value` as JSON text at any depth, written with a stack of its own instead of recursion:
    `leaf(x)` for each string, number, boolean and null (and each key, as a string), `comma` between
    items, `colon` after a key. An answer may nest as deep as orjson reads (1,024 levels), past what
    orjson writes (254) and what the interpreter recurses (~1,000 frames, fewer inside a request)."""
    out: list[str] = []
    stack: list[tuple[bool, Any]] = [(False, value)]  # (already text, node)
    while stack:
        text, node = stack.pop()
        if text:
            out.append(node)
        elif isinstance(node, dict):
            stack.append((True, "}"))
            for i, (key, item) in reversed(list(enumerate(node.items()))):
                stack += [(False, item), (True, leaf(str(key)) + colon)] + ([(True, comma)] if i else [])
            stack.append((True, "{"))
        elif isinstance(node, list):
            stack.append((True, "]"))
            for i, item in reversed(list(enumerate(node))):
                stack += [(False, item)] + ([(True, comma)] if i else [])
            stack.append((True, "["))
        else:
            out.append(leaf(node))
    return "".join(out)


def _orjson_leaf(node: Any) -> str:
    try:
        return orjson.dumps(node).decode()
    except orjson.JSONEncodeError:  # not a JSON value (nothing an answer read as JSON holds)
        return str(node)
