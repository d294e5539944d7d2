"""Unified (OpenAI-style) stream chunks as Anthropic's Messages stream, for Anthropic clients of another
provider's model.

The sequence is Anthropic's: `message_start` (sent with the first chunk), then per block
`content_block_start` / `content_block_delta` (`text_delta`, or `input_json_delta` for a tool
call's argument fragments) / `content_block_stop`, then `message_delta` (stop reason and usage) and
`message_stop`. Each tool call is its own `tool_use` block, in the order the calls began. Blocks
never overlap and a block gets no delta after its `content_block_stop`, whatever order the upstream's
fragments come in: text streams as it comes until the first tool call, which streams as it comes
until the end; what begins after it (another call, more text) is held and sent whole, as a block
each, when the stream finishes (OpenAI-compatible servers may interleave the fragments of parallel
calls, and a block closed early would have lost its later arguments). What is held is bounded
(`sentinel.native.kept.HELD_CHARS`): past it `feed` raises a `stream_too_large` StreamError, and the
stream ends with an `error` event. The closing events are returned by `finish()` so the caller can
send them after the usage record is stored. A broken stream ends with an `error` event instead.
"""

from __future__ import annotations

from typing import Any

import orjson

from sentinel.native._wire import as_object
from sentinel.native.anthropic_inbound import anthropic_usage, stop_reason
from sentinel.native.kept import HeldBudget
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
    real figure only at the end, and `message_delta` carries it then). `provider` names the upstream
    in the error `feed` raises when the stream holds too much.
    """

    def __init__(self, *, input_tokens: int, provider: str | None = None) -> None:
        self.input_tokens = input_tokens
        self.started = False
        self.called = False  # a tool call began
        self._next_block = 0
        self._open: tuple[str, Any] | None = None  # ("text", None) or ("tool", unified index): streaming
        self._held: list[tuple[dict[str, Any], list[str]]] = []  # blocks begun after the first call
        self._held_calls: dict[Any, list[str]] = {}  # unified tool-call index -> its held fragments
        self._budget = HeldBudget("what it streamed after its first tool call", provider=provider)

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """The events for one unified chunk (possibly none); StreamError (`stream_too_large`) when
        what it holds to send at the end passes `HELD_CHARS`."""
        out = [] if self.started else [self._start(chunk)]
        for choice in chunk.get("choices") or ():
            delta = as_object(as_object(choice).get("delta"))
            text = delta.get("content")
            if isinstance(text, str) and text:
                out.extend(self._text(text))
            for call in delta.get("tool_calls") or ():
                out.extend(self._tool(as_object(call)))
        return b"".join(out)

    @property
    def held_chars(self) -> int:
        """The characters held to send at the end (what began after the first call)."""
        return sum(len(piece) for _, pieces in self._held for piece in pieces) + sum(
            len(str(block.get("id") or "")) + len(str(block.get("name") or "")) for block, _ in self._held)

    def finish(self, reason: FinishReason | None, usage: Usage, cache: CacheTokens,
               refused: bool = False) -> tuple[bytes, bytes]:
        """(the events that close the message, the final `message_stop`); `refused`: the provider's
        answer was a refusal it streamed apart (OpenAI's `refusal`), the message ends `refusal`."""
        closing = [self._start({})] if not self.started else []
        closing.extend(self._close())
        for block, pieces in self._held:  # each whole: start, one delta, stop
            kind = "text_delta" if block["type"] == "text" else "input_json_delta"
            closing.extend(self._begin(("held", None), block))
            if "".join(pieces):
                closing.append(self._delta(kind, "".join(pieces)))
            closing.extend(self._close())
        self._held, self._held_calls = [], {}
        delta = {"stop_reason": stop_reason(reason, self.called, refused), "stop_sequence": None}
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
        out.append(render_event("content_block_start", {"type": "content_block_start", "index": index,
                                                        "content_block": block}))
        return out

    def _delta(self, kind: str, piece: str) -> bytes:
        """A delta of the open block (`text_delta` or `input_json_delta`)."""
        delta = {"type": kind, "text" if kind == "text_delta" else "partial_json": piece}
        return render_event("content_block_delta", {"type": "content_block_delta",
                                                    "index": self._next_block - 1, "delta": delta})

    def _text(self, text: str) -> list[bytes]:
        if self.called:  # after a call began: held, one block per run of text
            self._budget.take(text)
            if not self._held or self._held[-1][0]["type"] != "text":
                self._held.append(({"type": "text", "text": ""}, []))
            self._held[-1][1].append(text)
            return []
        out = [] if self._open == ("text", None) else self._begin(("text", None), {"type": "text", "text": ""})
        out.append(self._delta("text_delta", text))
        return out

    def _tool(self, call: dict[str, Any]) -> list[bytes]:
        key = call.get("index", 0)
        fragment = as_object(call.get("function")).get("arguments")
        fragment = fragment if isinstance(fragment, str) else ""
        if self._open == ("tool", key):  # the first call: streamed
            return [self._delta("input_json_delta", fragment)] if fragment else []
        if key in self._held_calls:
            self._budget.take(fragment)
            self._held_calls[key].append(fragment)
            return []
        function = as_object(call.get("function"))
        block: dict[str, Any] = {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": {}}
        if self.called:  # a later call: held until the end
            for text in (block["id"], block["name"], fragment):
                self._budget.take(text if isinstance(text, str) else "")
            self._held_calls[key] = [fragment]
            self._held.append((block, self._held_calls[key]))
            return []
        self.called = True
        out = self._begin(("tool", key), block)
        if fragment:
            out.append(self._delta("input_json_delta", fragment))
        return out
