"""The mock's deterministic "model": what it answers and how it counts tokens.

Rules (shared by every wire format):

* The answer is ``"Echo: <last user text>"`` with ``#mock:`` directives removed; after a tool
  result it is ``"Result: <tool result text>"``.
* Output is counted in **words**: one output token per whitespace-separated word. ``max_tokens``
  keeps the first N words (finish ``length`` / ``max_tokens``), and streams send one word per
  delta (the leading whitespace travels with the word, so joined deltas equal the full text).
* A stop sequence cuts the text just before its first occurrence (finish ``stop`` /
  ``stop_sequence``), unless ``max_tokens`` cuts earlier.
* The embedded mock's answers to one request are at most `EMBEDDED_ANSWER_CHARS` characters, all its
  choices (or prompts) together: each is cut to its share as ``max_tokens`` cuts (finish ``length`` /
  ``max_tokens``). The test mock and ``sentinel mock`` echo the whole prompt.
* Input tokens are ``ceil(chars / 4)`` of each message text plus 3 per message and 3 for the
  reply primer; tool definitions count ``ceil(len(json) / 4)``.
* A tool call's output tokens are ``ceil(len(name + arguments) / 4)``.
* A refusal (the ``refusal`` knob) is `REFUSAL`, counted and streamed as any answer.
* A structured output (OpenAI's ``json_schema`` format) is the answer as JSON text fitting its
  schema (`example_arguments`), keys and values spaced as ``json.dumps`` spaces them (so it has words
  to stream and to count); ``json_object`` is ``{"echo": "<the answer>"}``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from sentinel.mock.faults import strip_directives

_WORD = re.compile(r"\s*\S+")
MESSAGE_OVERHEAD = 3
# What OpenAI's models answer as a refusal (a structured output's too).
REFUSAL = "I'm sorry, but I can't assist with that request."
REPLY_PRIMER = 3
# The most characters the embedded mock's answers to one request hold, all its choices (`n`) or prompts
# together: an echo of the whole prompt, uncapped, made a 2 MB prompt with `n: 128` a 256 MB answer
# (and 51 million output tokens) built in the embedded default's process, the gateway's own.
EMBEDDED_ANSWER_CHARS = 16_384


def count_tokens(text: str) -> int:
    """The char/4 rule, rounded up (0 for empty text)."""
    return (len(text) + 3) // 4


def prompt_tokens(texts: Iterable[str], tools: Any = None) -> int:
    """Input tokens of a list of message texts (+ per-message overhead) and tool definitions."""
    total = REPLY_PRIMER
    for text in texts:
        total += MESSAGE_OVERHEAD + count_tokens(text)
    if tools:
        total += count_tokens(orjson.dumps(tools).decode())
    return total


def new_id(prefix: str) -> str:
    """A unique id in the provider's style, e.g. ``chatcmpl-9f2c…`` (ids are not deterministic)."""
    return prefix + os.urandom(12).hex()


def echo_text(user_text: str) -> str:
    """The reply to a user text: ``Echo: <text without directives>``."""
    cleaned = strip_directives(user_text).strip()
    return f"Echo: {cleaned}" if cleaned else "Echo:"


def result_text(tool_text: str) -> str:
    """The reply after a tool result: ``Result: <tool output>``."""
    cleaned = tool_text.strip()
    return f"Result: {cleaned}" if cleaned else "Result:"


@dataclass(frozen=True, slots=True)
class TextOutput:
    """A shaped answer: the text, its word deltas and why it stopped."""

    text: str
    pieces: list[str]
    reason: str  # "stop" | "length" | "stop_sequence"
    stop_sequence: str | None = None

    @property
    def tokens(self) -> int:
        return len(self.pieces)


def share(answer_chars: int | None, copies: int) -> int | None:
    """The characters each of `copies` answers to one request (its `n`, its prompts) may hold, of the
    `answer_chars` they may hold together (None: any)."""
    return None if answer_chars is None else answer_chars // max(copies, 1)


def shape_text(text: str, max_tokens: int | None, stops: Sequence[str] = (), room: int | None = None) -> TextOutput:
    """Apply stop sequences and the ``max_tokens`` word budget to an answer, first cut to `room`
    characters when given (finish ``length``, as ``max_tokens`` cuts)."""
    clipped = room is not None and len(text) > room
    if clipped:
        text = text[:room]
    matched: str | None = None
    cut = len(text)
    for stop in stops:
        if stop:
            index = text.find(stop)
            if 0 <= index < cut:
                cut, matched = index, stop
    pieces = _WORD.findall(text[:cut])
    if max_tokens is not None and len(pieces) > max_tokens:
        pieces = pieces[:max_tokens]
        return TextOutput("".join(pieces), pieces, "length")
    if matched is not None:
        return TextOutput(text[:cut], pieces, "stop_sequence", matched)
    return TextOutput(text, pieces, "length" if clipped else "stop")


def stop_list(value: Any) -> list[str]:
    """OpenAI's ``stop`` / Anthropic's ``stop_sequences``: a string or a list of strings."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def fragments(text: str, size: int = 8) -> list[str]:
    """Split a JSON argument string into stream fragments of ``size`` characters."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def example_arguments(schema: Any) -> dict[str, Any]:
    """Arguments for a tool call: a value for each *required* property of a JSON schema."""
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = schema.get("required")
    names = [n for n in required if isinstance(n, str)] if isinstance(required, list) else []
    return {name: example_value(name, properties.get(name)) for name in names}


def example_value(name: str, schema: Any) -> Any:
    """A deterministic value fitting a property schema (const, default, enum, then type)."""
    if not isinstance(schema, dict):
        return f"mock-{name}"
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "integer":
        return max(1, int(schema.get("minimum", 1)))
    if kind == "number":
        return float(schema.get("minimum", 1.5))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "array":
        items = schema.get("items")
        return [example_value(name, items)] if isinstance(items, dict) else []
    if kind == "object" or "properties" in schema:
        return example_arguments(schema)
    return f"mock-{name}"


def tool_output_tokens(name: str, arguments: str) -> int:
    """Output tokens charged for one tool call."""
    return count_tokens(name + arguments)


def dumps_arguments(arguments: dict[str, Any]) -> str:
    """Tool arguments as the JSON string the wire formats carry."""
    return orjson.dumps(arguments).decode()


def structured_text(kind: Any, schema: Any, answer: str) -> str | None:
    """The answer to a structured-output request (`kind` is the format's ``type``): JSON text fitting
    `schema` for ``json_schema``, ``{"echo": answer}`` for ``json_object``; None for any other."""
    if kind == "json_schema":
        return json.dumps(example_value("answer", schema if isinstance(schema, dict) else {"type": "object"}))
    if kind == "json_object":
        return json.dumps({"echo": answer})
    return None
