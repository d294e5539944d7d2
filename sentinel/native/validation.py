"""Parse a Native API request body into a `ChatRequest`, or fail with one precise `NativeValidationError`.

pydantic reports one error per union member and puts member labels (`str`, `list[...]`, the tag of a
tagged union, a model's class name) into error locations. The client should see one error at the path
it wrote, e.g. `messages.2.role: Input should be 'system', 'user', 'assistant' or 'tool'`, so the
labels are dropped and, among the errors of one union, the deepest one (the member the input matched
best) is reported.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from sentinel.native.errors import NativeValidationError
from sentinel.native.types import ChatRequest

_TYPE_LABELS = frozenset({"str", "int", "float", "bool", "none"})


def parse_chat_request(raw: bytes | str | dict[str, Any]) -> ChatRequest:
    """Decode (when given bytes or text) and validate a request body; raise `NativeValidationError`."""
    if isinstance(raw, bytes | str):
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise NativeValidationError(f"Invalid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise NativeValidationError("Request body must be a JSON object")
    try:
        return ChatRequest.model_validate(raw)
    except ValidationError as exc:
        raise to_native_error(exc) from None


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
