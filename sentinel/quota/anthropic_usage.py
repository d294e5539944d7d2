"""Anthropic Messages requests and answers as the meter reads them: the admission estimate, usage, text.

Estimate (before the provider says): the `system` prompt (a string or text blocks), each message's
text, tool uses (name and JSON input) and tool results, 3 tokens of overhead per message, the tool
definitions as compact JSON, and each image by Anthropic's pixel rule (`sentinel.quota.images`).
Counted with the tokenizer Sentinel has for the model (Claude models: `cl100k_base`, an approximation).

Usage: Anthropic's `input_tokens` excludes the prompt-cache writes and reads; Sentinel's input tokens
include them (as OpenAI's `prompt_tokens` do), with the two figures kept on their own as well.
`AnthropicStreamInspector` watches a relayed stream without delaying it, holds back the final
`message_stop` event until the usage record is stored and replaces the message of an `error` event
(`providers.errors.stream_failure`).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from sentinel.domain.numbers import MAX_TOKENS
from sentinel.domain.usage import Usage
from sentinel.providers.errors import stream_failure
from sentinel.quota.images import MAX_IMAGE_TOKENS, base64_image_tokens
from sentinel.quota.tokens import REPLY_PRIMING, TOKENS_PER_MESSAGE, TokenCounter
from sentinel.quota.usage import EventSplitter

_INPUT_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _count(value: Any) -> int | None:
    """A token count a provider can believably report, else None (negative, too large, not an integer)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
        return value
    return None


def estimate_messages(
    counter: TokenCounter, model: str, payload: dict[str, Any], *, user: str | None = None
) -> int:
    """Input tokens of a Messages API body (see the module docstring); wrong types count as absent
    (`user`: whose body it is, see `InputCounts`)."""
    texts: list[str] = []
    images = 0
    system = payload.get("system")
    texts.extend(_texts(system))
    messages = payload.get("messages")
    overhead = REPLY_PRIMING
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            continue
        overhead += TOKENS_PER_MESSAGE
        images += _content(message.get("content"), texts)
    tools = payload.get("tools")
    if isinstance(tools, list) and tools:
        texts.append(json.dumps(tools, separators=(",", ":"), ensure_ascii=False))
    count = sum(counter.count_text(text, model, user=user) for text in texts if text)
    return overhead + count + images


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [b["text"] for b in value if isinstance(b, dict) and isinstance(b.get("text"), str)]
    return []


def _content(content: Any, texts: list[str]) -> int:
    """Append the content's texts; return its image tokens."""
    if isinstance(content, str):
        texts.append(content)
        return 0
    images = 0
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "image":
            source = block.get("source")
            data = source.get("data") if isinstance(source, dict) else None
            images += base64_image_tokens(data) if isinstance(data, str) else MAX_IMAGE_TOKENS
        elif kind == "tool_use":
            name = block.get("name")
            texts.append((name if isinstance(name, str) else "") + json.dumps(block.get("input"), default=str))
        elif kind == "tool_result":
            images += _content(block.get("content"), texts)
        elif kind in ("document", "search_result"):
            # A plain-text document's data, a content document's blocks, a search result's blocks;
            # titles and context too. (A PDF's pages are not estimated: the answer's usage counts them.)
            source = block.get("source")
            if isinstance(source, dict) and source.get("type") == "text" and isinstance(source.get("data"), str):
                texts.append(source["data"])
            elif isinstance(source, dict) and source.get("type") == "content":
                images += _content(source.get("content"), texts)
            images += _content(block.get("content"), texts) if kind == "search_result" else 0
            texts.extend(v for key in ("title", "context") if isinstance(v := block.get(key), str))
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            texts.append(block["thinking"])
    return images


def usage_of(raw: Any) -> Usage | None:
    """Sentinel's usage from an Anthropic `usage` object (None unless it has input and output figures,
    and input figures that sum to at most MAX_TOKENS)."""
    if not isinstance(raw, dict):
        return None
    plain, output = _count(raw.get("input_tokens")), _count(raw.get("output_tokens"))
    if plain is None or output is None:
        return None
    write = _count(raw.get("cache_creation_input_tokens")) or 0
    read = _count(raw.get("cache_read_input_tokens")) or 0
    if plain + write + read > MAX_TOKENS:
        return None
    return Usage(plain + write + read, output, write, read)


def message_usage(body: Any) -> Usage | None:
    """The usage of a (non-streamed) Messages API answer, or None."""
    return usage_of(body.get("usage")) if isinstance(body, dict) else None


def message_text(body: Any) -> str:
    """The generated text (and tool inputs) of a Messages API answer, for counting when usage is missing."""
    blocks = body.get("content") if isinstance(body, dict) else None
    parts: list[str] = []
    for block in blocks if isinstance(blocks, list) else ():
        if isinstance(block, dict) and isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif isinstance(block, dict) and block.get("type") == "tool_use":
            parts.append(str(block.get("name", "")) + json.dumps(block.get("input"), default=str))
    return "".join(parts)


def _rendered(error_event: dict[str, Any], message: str) -> bytes:
    """A redacted error event as JSON. orjson reads deeper nesting than it writes (255 levels): an
    event it cannot write back becomes a generic error event, with the provider's other fields left
    out, instead of an exception that cut the client's connection mid-stream."""
    try:
        return orjson.dumps(error_event)
    except orjson.JSONEncodeError:
        return orjson.dumps({"type": "error", "error": {"type": "api_error", "message": message}})


class AnthropicStreamInspector:
    """Watches an Anthropic SSE stream: `feed(chunk)` returns the complete events to relay now; the
    `message_stop` event is kept in `done` (sent after the usage record is stored); nothing after it
    is relayed."""

    def __init__(self, provider: str = "anthropic") -> None:
        self.provider = provider
        self._events = EventSplitter()
        self._input: dict[str, int] = {}
        self._output: int | None = None
        self._final = False  # a message_delta gave the final output count
        self._text: list[str] = []
        self.parse_errors = 0
        self.done = b""

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def usage(self) -> Usage | None:
        """The reported usage once the final figures arrived; None for a stream cut short."""
        if not self._final or "input_tokens" not in self._input or self._output is None:
            return None
        return usage_of({**self._input, "output_tokens": self._output})

    @property
    def reported_input(self) -> Usage | None:
        """The input figures message_start reported (output 0), kept for a stream that breaks off
        before its final count; None when it reported none."""
        if "input_tokens" not in self._input:
            return None
        return usage_of({**self._input, "output_tokens": 0})

    def feed(self, chunk: bytes) -> bytes:
        return b"".join(self._event(event) for event in self._events.feed(chunk))

    def flush(self) -> bytes:
        """At the end of the stream: the unterminated tail, if any."""
        tail = self._events.flush()
        return self._event(tail) if tail.strip() else b""

    def _event(self, event: bytes) -> bytes:
        if self.done:
            return b""
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                try:
                    obj = orjson.loads(line[5:].strip())
                except orjson.JSONDecodeError:
                    self.parse_errors += 1
                    continue
                if isinstance(obj, dict) and obj.get("type") == "message_stop":
                    self.done = event + b"\n\n"
                    return b""
                if isinstance(obj, dict):
                    self._absorb(obj)
                    error = obj.get("error")
                    if obj.get("type") == "error" and isinstance(error, dict) and "message" in error:
                        error["message"] = stream_failure(self.provider, error["message"])
                        event = event.replace(line, b"data: " + _rendered(obj, error["message"]))
        return event + b"\n\n"

    def _absorb(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind == "message_start":
            message = obj.get("message")
            self._take(message.get("usage") if isinstance(message, dict) else None)
        elif kind == "message_delta":
            usage = obj.get("usage")
            self._take(usage)
            if isinstance(usage, dict) and _count(usage.get("output_tokens")) is not None:
                self._output, self._final = usage["output_tokens"], True
        elif kind == "content_block_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict):
                for key in ("text", "partial_json", "thinking"):
                    if isinstance(delta.get(key), str):
                        self._text.append(delta[key])
        elif kind == "content_block_start":
            block = obj.get("content_block")
            if isinstance(block, dict) and isinstance(block.get("name"), str):
                self._text.append(block["name"])

    def _take(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        for key in _INPUT_KEYS:
            if (value := _count(usage.get(key))) is not None:
                self._input[key] = value
        if (output := _count(usage.get("output_tokens"))) is not None and self._output is None:
            self._output = output
