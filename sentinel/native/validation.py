"""Parse a Native API request body into a `ChatRequest`, or fail with one precise `NativeValidationError`.

pydantic reports one error per union member and puts member labels (`str`, `list[...]`, the tag of a
tagged union, a model's class name) into error locations. The client should see one error at the path
it wrote, e.g. `messages.2.role: Input should be 'system', 'user', 'assistant' or 'tool'`, so the
labels are dropped and, among the errors of one union, the deepest one (the member the input matched
best) is reported.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from sentinel.native.errors import NativeValidationError, invalid
from sentinel.native.types import ChatRequest

_TYPE_LABELS = frozenset({"str", "int", "float", "bool", "none"})


def parse_chat_request(raw: bytes | str | dict[str, Any], *, text: bytes | str | None = None) -> ChatRequest:
    """Decode (when given bytes or text) and validate a request body; raise `NativeValidationError`.
    `text` is the JSON text a given object was read from (orjson), to tell integers it could not
    read exactly (`inexact_integer`)."""
    if isinstance(raw, bytes | str):
        text = raw
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise NativeValidationError(f"Invalid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise NativeValidationError("Request body must be a JSON object")
    try:
        request = ChatRequest.model_validate(raw)
    except ValidationError as exc:
        raise to_native_error(exc) from None
    param = inexact_integer(raw, text) if text is not None else None
    if param is not None:
        raise invalid(
            param,
            f"an integer beyond the 64-bit range ({-_EXACT}..{2 * _EXACT - 1}) cannot be carried exactly"
            " (it would reach the model as a rounded number): send it as a string",
        )
    return request


# orjson reads an integer outside -2**63..2**64-1 as the nearest float, without a word: a tool call's
# `arguments` or a tool's schema (`maximum`, `enum`, `const`) then reached the model with another value.
_EXACT = 2**63


class _Digits(str):
    """An integer's text, as the standard library's parser hands it over (never converted)."""


def inexact_integer(payload: dict[str, Any], text: bytes | str) -> str | None:
    """The dotted path of the first integer of a validated request's tool-call `arguments` and `tools`
    that orjson, reading `text` into `payload`, turned into a float, or None. Only a float that is whole
    and outside the exact range can be one; the text is read again (standard library, integers kept as
    their digits) only when the request holds such a float — a float written as one (`1e19`) is not."""
    suspects = [path for path, value in _tool_numbers(payload)
                if isinstance(value, float) and value.is_integer() and abs(value) >= _EXACT]
    if not suspects:
        return None
    exact = json.loads(text, parse_int=_Digits)
    for path in suspects:
        node = exact
        try:
            for segment in path:
                node = node[segment]
        except (KeyError, IndexError, TypeError):  # not the text `payload` was read from
            continue
        if isinstance(node, _Digits):
            return ".".join(map(str, path))
    return None


def _tool_numbers(payload: dict[str, Any]) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """(path, value) of every scalar in the tool calls' `arguments` and in `tools` (of a request
    `ChatRequest` validated: the shapes are known)."""
    roots: list[tuple[tuple[str | int, ...], Any]] = [(("tools",), payload.get("tools"))]
    for i, message in enumerate(payload["messages"]):
        for j, call in enumerate(message.get("tool_calls") or ()):
            roots.append((("messages", i, "tool_calls", j, "function", "arguments"), call["function"]["arguments"]))
    stack = roots
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            stack.extend(((*path, key), value) for key, value in node.items())
        elif isinstance(node, list):
            stack.extend(((*path, k), value) for k, value in enumerate(node))
        else:
            yield path, node


def to_native_error(exc: ValidationError) -> NativeValidationError:
    """The single most useful error of a pydantic failure, with its path as `param`."""
    error = _pick(exc.errors(include_url=False))
    path = ".".join(str(segment) for segment in _clean(_structural(error)))
    if error["type"] == "extra_forbidden":
        path = ".".join(filter(None, (path, str(error["loc"][-1]))))
        message = f"Unknown field '{path}'"
        if path == "model":
            message += ": the client names a tier ('simple', 'moderate' or 'complex'), never a model"
        return NativeValidationError(message, path)
    param = (error.get("ctx") or {}).get("param") or path or None
    text = error["msg"]
    return NativeValidationError(f"{param}: {text}" if param else text, param)


def _structural(error: ErrorDetails) -> tuple[str | int, ...]:
    """The part of the location pydantic built; an unknown key (always last) is the client's own text."""
    return error["loc"][:-1] if error["type"] == "extra_forbidden" else error["loc"]


def _is_label(segment: str | int) -> bool:
    """Whether a location segment names a union member rather than a field."""
    if not isinstance(segment, str):
        return False
    # field names are snake_case; labels look like `str`, `constrained-str`, `list[...]`, `ToolChoiceFunction`
    return "[" in segment or "-" in segment or segment in _TYPE_LABELS or segment[:1].isupper()


def _clean(loc: tuple[str | int, ...]) -> list[str | int]:
    """The location as the client wrote it: union member labels and tagged-union tags removed."""
    out: list[str | int] = []
    skip_tag = False
    for segment in loc:
        if skip_tag and isinstance(segment, str):
            skip_tag = False  # the discriminator value pydantic inserts after a tagged union
            continue
        if _is_label(segment):
            skip_tag = skip_tag or "tagged-union[" in str(segment)
            continue
        out.append(segment)
    return out


def _union_site(loc: tuple[str | int, ...]) -> tuple[str | int, ...] | None:
    """The location of the first union a failure went through, or None."""
    for i, segment in enumerate(loc):
        if _is_label(segment):
            return loc[:i]
    return None


def _pick(errors: list[ErrorDetails]) -> ErrorDetails:
    """The first error; if it comes from a union, the deepest error of that same union instead
    (at equal depth, a broken constraint beats a plain type mismatch)."""
    first = errors[0]
    site = _union_site(_structural(first))
    if site is None:
        return first
    siblings = [e for e in errors if _union_site(_structural(e)) == site]
    return max(siblings, key=lambda e: (len(e["loc"]), not e["type"].endswith("_type")))
