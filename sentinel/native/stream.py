"""Normalise upstream streams (OpenAI chunks, Anthropic events) into unified OpenAI-style chunks.

A normaliser is fed the SSE events of one upstream response and returns the chunks to send, as dicts
(render them with `render_chunk`). Whatever the upstream does, the client sees: one id/created/model on
every chunk; `delta.role == "assistant"` on the first chunk; each tool call with its own stable `index`
(0, 1, ... in order of appearance) and its id in its first fragment; and, from `finish()`, one last
chunk with the finish_reason. That chunk is held back until the upstream has finished, so a stream that
breaks off (no `[DONE]` / `message_stop`) or whose tool arguments are not valid JSON ends with an error
event instead of a finish_reason that would claim success.

Usage is captured, never forwarded as the upstream sent it: OpenAI's include_usage chunk (empty choices)
and Anthropic's message_start input tokens plus message_delta output tokens.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from sentinel.native._wire import as_count, as_list, as_object
from sentinel.native.anthropic import anthropic_cache_tokens, anthropic_prompt_tokens, map_stop_reason
from sentinel.native.errors import StreamError, TranslationError
from sentinel.native.kept import HeldBudget, KeptText
from sentinel.native.openai import (
    PLAIN_DELTA,
    carries_answer,
    cut_arguments,
    delta_extras,
    map_finish_reason,
    new_call_id,
    openai_cache_tokens,
    parse_openai_usage,
)
from sentinel.native.responses import CacheTokens, FinishReason, Usage
from sentinel.native.sse import SSEEvent
from sentinel.native.types import ToolCall

log = logging.getLogger("sentinel.upstream")
MAX_LOGGED_CHARS = 256  # a provider's message in a log line: as `sentinel.observability.logging`'s

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"


def render_chunk(chunk: dict[str, Any]) -> bytes:
    """One chunk as an SSE event: `data: <json>\\n\\n`."""
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def answering(chunk: dict[str, Any]) -> bool:
    """Whether a unified chunk carries some of the answer — text, a tool call, or how it ended — and
    not only the opening `role` a stream begins with (Anthropic's `message_start`, sent before the
    model generates anything: its `overloaded_error` may come next)."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or choice.get("finish_reason") is not None:
            return True
    return False


def render_error_event(message: str, type: str = "stream_error", code: str | None = None) -> bytes:
    """An in-stream error: `data: {"error": {"message", "type", "code"?}}\\n\\n` (sent instead of DONE)."""
    error: dict[str, str] = {"message": message, "type": type}
    if code is not None:
        error["code"] = code
    return render_chunk({"error": error})


@dataclass(frozen=True, slots=True)
class StreamResult:
    """How a stream ended. Send `chunks` then DONE, or, when `error` is set, only an error event."""

    chunks: list[dict[str, Any]]
    usage: Usage | None  # as the provider reported it; None: estimate from `text` and `tool_calls`
    tool_calls: list[ToolCall]
    text: str
    finish_reason: FinishReason | None
    error: StreamError | None
    refused: bool = False  # the answer was a refusal (OpenAI's `refusal` deltas): not in `chunks`


@dataclass(slots=True)
class _PendingCall:
    index: int
    id: str
    name: str
    fragments: list[str] = field(default_factory=list)


class StreamNormalizer:
    """What both normalisers share: chunk metadata, the role rule, text and tool-call accumulation.
    `scrub` cleans what a provider's in-stream error says before it is logged or its code sent on
    (the provider's key taken out: `observability.redaction.redact`)."""

    def __init__(
        self, *, provider: str, created: int | None = None, scrub: Callable[[str], str] | None = None
    ) -> None:
        self.provider = provider
        self._scrub = scrub if scrub is not None else str
        self.id = "chatcmpl-" + os.urandom(16).hex()
        self.model = ""
        self.created = int(time.time()) if created is None else created
        self._started = False  # a chunk was emitted: metadata is frozen and the role was sent
        self._done = False
        self._finish: FinishReason | None = None
        self._text = KeptText()  # the output, to count when the usage never came (bounded)
        self._extras = KeptText()  # output sent beside the text (reasoning, a refusal): counted only
        self._refused = False  # a refusal was streamed (OpenAI's `refusal` deltas)
        self._calls: dict[int | None, _PendingCall] = {}  # keyed by the upstream's own index
        self._held = HeldBudget("its tool calls", provider=provider)  # their ids, names and arguments
        self._prompt_tokens: int | None = None
        self._completion_tokens: int | None = None
        self.cache = CacheTokens()  # the prompt-cache part of the prompt tokens, as reported

    @property
    def usage(self) -> Usage | None:
        """The usage reported so far, or None (readable even after `feed` raised)."""
        if self._prompt_tokens is None or self._completion_tokens is None:
            return None
        return Usage.of(self._prompt_tokens, self._completion_tokens)

    @property
    def unserved(self) -> bool:
        """The stream ended with the provider's error before any of its answer came (no output to
        charge, hidden reasoning included): each format's normaliser tells."""
        return False

    @property
    def done(self) -> bool:
        """The upstream's final event (`[DONE]`, `message_stop`) arrived: nothing after it is read."""
        return self._done

    @property
    def prompt_tokens(self) -> int | None:
        """The input the provider reported so far (Anthropic's message_start), or None."""
        return self._prompt_tokens

    @property
    def text(self) -> str:
        """The output streamed so far, for counting usage: the text, the reasoning and refusals the
        provider streamed beside it (billed like the text) and the tool-call argument fragments (each
        part up to KEPT_CHARS: see `counted`)."""
        return self._text.text + self._extras.text + self._arguments().text

    @property
    def counted(self) -> int:
        """The tokens of the output streamed past what `text` keeps, counted as they came
        (`sentinel.native.kept`) — the calls' arguments past KEPT_CHARS too, a token per 4 bytes. (A
        call's argument fragments are kept, up to HELD_CHARS: the call is made of them; a stream
        whose calls pass that ends with an error.)"""
        return self._text.counted + self._extras.counted + self._arguments().counted

    @property
    def held_chars(self) -> int:
        """The characters the tool calls hold (their ids, names and argument fragments)."""
        return sum(len(call.id) + len(call.name) + sum(map(len, call.fragments)) for call in self._calls.values())

    def _arguments(self) -> KeptText:
        """The calls' argument fragments as output to count: tiktoken counts KEPT_CHARS of them at
        most, as it does of the text (encoding the 8 M characters a stream may hold took seconds)."""
        kept = KeptText()
        for call in self._calls.values():
            for fragment in call.fragments:
                kept.append(fragment)
        return kept

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        """The chunks to send for one upstream event; raise `StreamError` on an error or a bad event."""
        raise NotImplementedError

    def finish(self) -> StreamResult:
        """Call once the upstream body has ended: the closing chunk, or the reason there is none."""
        calls: list[ToolCall] = []
        error: StreamError | None = None
        if not self._done:
            error = StreamError("Upstream stream ended before completion", code="connection_closed")
        else:
            try:
                calls = [self._finalize(call) for call in sorted(self._calls.values(), key=lambda c: c.index)]
            except TranslationError as exc:
                error = StreamError(exc.message, code="parse_error", provider=self.provider)
        reason = self._finish or ("tool_calls" if self._calls else "stop")
        chunks = [] if error else [self._chunk({}, reason)]
        return StreamResult(
            chunks, self.usage, calls, self._text.text, reason if self._done else None, error, self._refused
        )

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        """An OpenAI-style usage chunk (empty choices), for callers that report usage in the stream."""
        return {**self._chunk({}), "choices": [], "usage": usage.to_dict()}

    def _finalize(self, call: _PendingCall) -> ToolCall:
        # Its fragments were relayed as text: the object is not written again. A stream its output
        # cap ended (`length`) may have cut the call it was writing: no arguments, not an error.
        arguments = cut_arguments("".join(call.fragments), tool=call.name, provider=self.provider,
                                  cut=self._finish == "length", written=False)
        return ToolCall.model_validate(
            {"id": call.id, "function": {"name": call.name, "arguments": arguments}}
        )

    def _adopt(self, id: Any, model: Any, created: Any = None) -> None:
        """Take the upstream's metadata, until the first chunk has gone out."""
        if self._started:
            return
        if isinstance(id, str) and id:
            self.id = id
        if isinstance(model, str):
            self.model = model
        if isinstance(created, int) and not isinstance(created, bool):
            self.created = created

    def _chunk(self, delta: dict[str, Any], finish_reason: FinishReason | None = None) -> dict[str, Any]:
        if not self._started:
            self._started = True
            delta = {"role": "assistant", **delta}
        choice: dict[str, Any] = {"index": 0, "delta": delta}
        if finish_reason is not None:
            choice["finish_reason"] = finish_reason
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def _add_text(self, delta: dict[str, Any], text: str) -> None:
        self._text.append(text)
        delta["content"] = delta.get("content", "") + text

    def _start_call(self, key: int | None, call_id: Any, name: Any) -> dict[str, Any]:
        if not isinstance(name, str) or not name:
            raise StreamError("Upstream tool call has no name", code="parse_error", provider=self.provider)
        call = _PendingCall(
            len(self._calls), call_id if isinstance(call_id, str) and call_id else new_call_id(), name
        )
        self._held.take(call.id)
        self._held.take(name)
        self._calls[key] = call
        return {
            "index": call.index,
            "id": call.id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }

    def _arguments_text(self, arguments: Any) -> str:
        """A call's first arguments as JSON text: some OpenAI-compatible servers send the object itself."""
        if isinstance(arguments, str):
            return arguments
        try:
            return orjson.dumps(arguments).decode()
        except orjson.JSONEncodeError:  # nested deeper than orjson writes
            raise StreamError(
                "Upstream tool call arguments cannot be read", code="parse_error", provider=self.provider
            ) from None

    def _index(self, value: Any) -> int | None:
        """An upstream's block or tool-call index, its key here: an integer (not a bool), or None when
        it sent none. Anything else (a list, an object) is a malformed event, not a key to look up
        (an unhashable one raised a TypeError that cut the client's connection without an error event)."""
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise StreamError(
            "Malformed upstream event: index is not an integer", code="parse_error", provider=self.provider
        )

    def _add_arguments(self, key: int | None, fragment: Any) -> dict[str, Any]:
        call = self._calls.get(key)
        if call is None or not isinstance(fragment, str):
            raise StreamError(
                "Upstream tool call fragment out of order", code="parse_error", provider=self.provider
            )
        self._keep(call, fragment)
        return {"index": call.index, "function": {"arguments": fragment}}

    def _keep(self, call: _PendingCall, fragment: str) -> None:
        """Keep a fragment of `call`'s arguments, within the stream's `HeldBudget` (else StreamError)."""
        self._held.take(fragment)
        call.fragments.append(fragment)

    def _decode(self, data: str) -> dict[str, Any]:
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise StreamError(
                f"Malformed upstream event: {exc}", code="parse_error", provider=self.provider
            ) from None
        if not isinstance(value, dict):
            raise StreamError(
                "Malformed upstream event: not an object", code="parse_error", provider=self.provider
            )
        return value

    def _upstream_error(self, error: Any) -> StreamError:
        """The provider's in-stream error, with its code and a generic message.

        Like a 429 or a 5xx before the stream (`providers/errors.py`), a provider's mid-stream failure
        is about its own or the company's account (an organisation id, the account's limits): its
        message is logged for operators (`sentinel.upstream`, info), never sent to the client.
        """
        error = as_object(error)
        code = self._scrub(str(error.get("code") or error.get("type") or "upstream_error"))[:100]
        message = self._scrub(str(error.get("message") or ""))
        if len(message) > MAX_LOGGED_CHARS:  # cut as `observability.logging.clipped` cuts (native imports none of ours)
            message = message[:MAX_LOGGED_CHARS] + "…"
        log.info("provider stream failed", extra={"provider": self.provider, "code": code, "error": message})
        return StreamError(f"Provider {self.provider} failed during the stream", code=code, provider=self.provider,
                           providers_code=True)


class OpenAIStreamNormalizer(StreamNormalizer):
    """Normalises an OpenAI chat-completions stream (requested with include_usage)."""

    def __init__(
        self, *, provider: str, created: int | None = None, scrub: Callable[[str], str] | None = None
    ) -> None:
        super().__init__(provider=provider, created=created, scrub=scrub)
        self._began = False  # a choice carried some of the answer (`carries_answer`)
        self._failed = False  # the provider's error chunk ended the stream

    @property
    def unserved(self) -> bool:
        """The provider ended the stream with its error chunk before any choice carried some of its
        answer (`carries_answer`: the opening role alone is none): the client got no output, and none
        is charged without the provider's usage, hidden reasoning included — as the relayed
        `/v1` stream's `StreamInspector.unserved` tells. A stream broken otherwise is charged as before."""
        return self._failed and not self._began

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        if self._done:
            return []
        if event.data.strip() == "[DONE]":
            self._done = True
            return []
        obj = self._decode(event.data)
        if "error" in obj:
            self._failed = True
            raise self._upstream_error(obj["error"])
        if not self._began and any(isinstance(c, dict) and carries_answer(c) for c in as_list(obj.get("choices"))):
            self._began = True
        self._adopt(obj.get("id"), obj.get("model"), obj.get("created"))
        if obj.get("usage") is not None:
            usage = parse_openai_usage(obj["usage"])  # None when malformed: the stream's usage is estimated
            if usage is not None:
                self._prompt_tokens, self._completion_tokens = usage.prompt_tokens, usage.completion_tokens
                self.cache = openai_cache_tokens(obj["usage"])
        out: list[dict[str, Any]] = []
        for choice in as_list(obj.get("choices")):  # a number here raised a TypeError
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                out.extend(self._choice(choice))
        return out

    def _choice(self, choice: dict[str, Any]) -> list[dict[str, Any]]:
        raw = as_object(choice.get("delta"))
        delta: dict[str, Any] = {}
        content = raw.get("content")
        if isinstance(content, str) and (content or not self._started):
            self._add_text(delta, content)
        if not raw.keys() <= PLAIN_DELTA:
            self._extras.append(delta_extras(raw))  # counted as the relay counts it, not relayed
            refusal = raw.get("refusal")
            self._refused = self._refused or (isinstance(refusal, str) and bool(refusal))
        calls = []
        for position, item in enumerate(as_list(raw.get("tool_calls"))):
            tc = as_object(item)
            index, function = self._index(tc.get("index")), as_object(tc.get("function"))
            key = position if index is None else index
            fragment = function.get("arguments") or ""
            if key not in self._calls:
                calls.append(self._start_call(key, tc.get("id"), function.get("name")))
                if fragment:
                    fragment = self._arguments_text(fragment)
                    calls[-1]["function"]["arguments"] = fragment
                    self._keep(self._calls[key], fragment)
            elif fragment:
                calls.append(self._add_arguments(key, fragment))
        if calls:
            delta["tool_calls"] = calls
        if choice.get("finish_reason") is not None:
            self._finish = map_finish_reason(choice["finish_reason"])
        return [self._chunk(delta)] if delta else []


_INPUT_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


class AnthropicStreamNormalizer(StreamNormalizer):
    """Normalises an Anthropic Messages stream (message_start ... message_stop).

    Input figures come with message_start; a message_delta may repeat them as cumulative totals,
    and a figure it leaves out keeps its message_start value (as the official SDKs read it).
    """

    def __init__(
        self, *, provider: str, created: int | None = None, scrub: Callable[[str], str] | None = None
    ) -> None:
        super().__init__(provider=provider, created=created, scrub=scrub)
        self._input: dict[str, int] = {}
        self._began = False  # a block of the answer (thinking included) started
        self._failed = False  # the provider's error event ended the stream

    @property
    def unserved(self) -> bool:
        """The provider ended the stream with its error event before any block of its answer (an
        `overloaded_error` right after message_start): it generated no output, hidden reasoning
        included — as `AnthropicStreamInspector.unserved` tells of a relayed stream."""
        return self._failed and not self._began

    def _take_input(self, usage: dict[str, Any]) -> None:
        for key in _INPUT_KEYS:
            if (value := as_count(usage.get(key))) is not None:
                self._input[key] = value
        if "input_tokens" in self._input:
            self._prompt_tokens = anthropic_prompt_tokens(self._input)  # None (estimate) when too large
            self.cache = anthropic_cache_tokens(self._input)

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        if self._done:
            return []
        obj = self._decode(event.data)
        kind = obj.get("type") or event.event
        if kind == "message_start":
            message = as_object(obj.get("message"))
            self._adopt(message.get("id"), message.get("model"))
            self._take_input(as_object(message.get("usage")))
            return [self._chunk({"content": ""})]
        if kind == "content_block_start":
            self._began = True
            return self._block_start(self._index(obj.get("index")), obj.get("content_block"))
        if kind == "content_block_delta":
            return self._block_delta(self._index(obj.get("index")), obj.get("delta"))
        if kind == "message_delta":
            delta, usage = as_object(obj.get("delta")), as_object(obj.get("usage"))
            if delta.get("stop_reason") is not None:
                self._finish = map_stop_reason(delta["stop_reason"])
            if (output := as_count(usage.get("output_tokens"))) is not None:
                self._completion_tokens = output
            self._take_input(usage)  # newer API versions repeat the input totals here
            return []
        if kind == "message_stop":
            self._done = True
        elif kind == "error":
            self._failed = True
            raise self._upstream_error(obj.get("error"))
        return []  # ping, content_block_stop and event types added later

    def _block_start(self, index: int | None, block: Any) -> list[dict[str, Any]]:
        if not isinstance(block, dict):
            return []
        if block.get("type") == "tool_use":
            call = self._start_call(index, block.get("id"), block.get("name"))
            initial = block.get("input")
            if isinstance(initial, dict) and initial:  # normally {} with the input streamed as JSON deltas
                call["function"]["arguments"] = self._arguments_text(initial)
                self._keep(self._calls[index], call["function"]["arguments"])
            return [self._chunk({"tool_calls": [call]})]
        if block.get("type") == "text" and isinstance(block.get("text"), str) and block["text"]:
            delta: dict[str, Any] = {}
            self._add_text(delta, block["text"])
            return [self._chunk(delta)]
        return []  # thinking and server-tool blocks are not part of the unified answer

    def _block_delta(self, index: int | None, raw: Any) -> list[dict[str, Any]]:
        if not isinstance(raw, dict):
            return []
        if raw.get("type") == "text_delta" and isinstance(raw.get("text"), str):
            delta: dict[str, Any] = {}
            self._add_text(delta, raw["text"])
            return [self._chunk(delta)]
        if raw.get("type") == "input_json_delta":
            fragment = raw.get("partial_json")
            if not fragment or index not in self._calls:  # server-tool blocks stream their input too
                return []
            return [self._chunk({"tool_calls": [self._add_arguments(index, fragment)]})]
        return []  # thinking, signature and citation deltas
