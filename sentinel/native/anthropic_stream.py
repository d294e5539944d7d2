"""Unified (OpenAI-style) stream chunks as Anthropic's Messages stream, for Anthropic clients of another
provider's model.

The sequence is Anthropic's: `message_start` (sent with the first chunk), then per block
`content_block_start` / `content_block_delta` (`text_delta`, or `input_json_delta` for a tool
call's argument fragments) / `content_block_stop`, then `message_delta` (stop reason and usage) and
`message_stop`. Each tool call is its own `tool_use` block, in the order the calls began; a block is
closed when the next one starts. The closing events are returned by `finish()` so the caller can
send them after the usage record is stored. A broken stream ends with an `error` event instead.
"""

from __future__ import annotations

from typing import Any

import orjson

from sentinel.native._wire import as_object
from sentinel.native.anthropic_inbound import anthropic_usage, stop_reason
from sentinel.native.responses import CacheTokens, FinishReason, Usage


def render_event(kind: str, data: dict[str, Any]) -> bytes:
    """One Anthropic SSE event: `event: <kind>` and its JSON `data`."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def render_error_event(message: str, kind: str = "api_error") -> bytes:
    """Anthropic's in-stream error event (sent instead of `message_stop`)."""
    return render_event("error", {"type": "error", "error": {"type": kind, "message": message}})


class AnthropicStreamEncoder:
    """Feed it unified chunks; it returns the Anthropic events to send (see the module docstring).

    `input_tokens` is what `message_start` reports (the admission estimate: the provider reports the
    real figure only at the end, and `message_delta` carries it then).
    """

    def __init__(self, *, input_tokens: int) -> None:
        self.input_tokens = input_tokens
        self.started = False
        self._next_block = 0
        self._open: tuple[str, Any] | None = None  # ("text", None) or ("tool", unified index)
        self._blocks: dict[Any, int] = {}  # unified tool-call index -> block index

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """The events for one unified chunk (possibly none)."""
        out = [] if self.started else [self._start(chunk)]
        for choice in chunk.get("choices") or ():
            delta = as_object(as_object(choice).get("delta"))
            text = delta.get("content")
            if isinstance(text, str) and text:
                out.extend(self._text(text))
            for call in delta.get("tool_calls") or ():
                out.extend(self._tool(as_object(call)))
        return b"".join(out)

    def finish(self, reason: FinishReason | None, usage: Usage, cache: CacheTokens) -> tuple[bytes, bytes]:
        """(the events that close the message, the final `message_stop`)."""
        closing = [self._start({})] if not self.started else []
        closing.extend(self._close())
        delta = {"stop_reason": stop_reason(reason, bool(self._blocks)), "stop_sequence": None}
        closing.append(render_event("message_delta", {"type": "message_delta", "delta": delta,
                                                      "usage": anthropic_usage(usage, cache)}))
        return b"".join(closing), render_event("message_stop", {"type": "message_stop"})

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self.started = True
        message: dict[str, Any] = {
            "id": str(chunk.get("id") or "msg_sentinel"),
            "type": "message",
            "role": "assistant",
            "model": str(chunk.get("model") or ""),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
        }
        return render_event("message_start", {"type": "message_start", "message": message})

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        index = self._next_block - 1
        self._open = None
        return [render_event("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _begin(self, key: tuple[str, Any], block: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self._open = key
        index = self._next_block
        self._next_block += 1
        if key[0] == "tool":
            self._blocks[key[1]] = index
        out.append(render_event("content_block_start", {"type": "content_block_start", "index": index,
                                                        "content_block": block}))
        return out

    def _text(self, text: str) -> list[bytes]:
        out = [] if self._open == ("text", None) else self._begin(("text", None), {"type": "text", "text": ""})
        delta = {"type": "text_delta", "text": text}
        out.append(render_event("content_block_delta", {"type": "content_block_delta",
                                                        "index": self._next_block - 1, "delta": delta}))
        return out

    def _tool(self, call: dict[str, Any]) -> list[bytes]:
        key = call.get("index", 0)
        function = as_object(call.get("function"))
        out: list[bytes] = []
        if key not in self._blocks:
            block: dict[str, Any] = {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": {}}
            out.extend(self._begin(("tool", key), block))
        fragment = function.get("arguments")
        if isinstance(fragment, str) and fragment:
            delta = {"type": "input_json_delta", "partial_json": fragment}
            out.append(render_event("content_block_delta", {"type": "content_block_delta",
                                                            "index": self._blocks[key], "delta": delta}))
        return out
