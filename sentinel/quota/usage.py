"""Reading usage out of OpenAI-format responses and streams (/v1 endpoints; Anthropic's format is read
by `sentinel.quota.anthropic_usage`).

Provider `usage` wins (cached prompt tokens, `cached_tokens`, are recorded as cache reads); when it is missing the caller counts the output text this module gathers.
A Responses answer's hosted-tool items (an MCP server's tool list and call outputs, search results,
code logs) are input: the model reads them in the steps that follow, and only the final usage counts
them. An answer or stream without that usage is charged them as read (`items_read`).
`StreamInspector` watches an SSE byte stream without delaying it: it splits events, pulls usage and
text from their data (`event_data`: as the SDKs read it), (when Sentinel injected
`stream_options.include_usage` on the client's behalf) drops the usage-only chunk the client did
not ask for, and rebuilds a provider's error event of its error's labels (`providers.errors.stream_error`:
the provider's message, and the event's other fields, left out).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from sentinel.domain.numbers import MAX_TOKENS
from sentinel.domain.text import is_text
from sentinel.domain.usage import Usage
from sentinel.errors import UpstreamError
from sentinel.native._wire import as_list, as_str
from sentinel.native.kept import KeptText
from sentinel.native.openai import PLAIN_DELTA, carries_answer, delta_extras, field_text
from sentinel.observability.redaction import redact
from sentinel.providers.errors import stream_error
from sentinel.quota.audio import AUDIO_TOKENS_PER_SECOND
from sentinel.quota.items import NO_FIELDS, item_text
from sentinel.quota.tokens import estimate_tokens


def tool_usage(response: Any) -> Usage | None:
    """What a Responses answer's hosted tools ran on a model of their own, apart from its `usage`:
    `tool_usage.image_gen` (the `image_generation` tool's image model, its input and image output
    tokens, summed over its calls), or None when it shows none (or figures that are no counts)."""
    tools = response.get("tool_usage") if isinstance(response, dict) else None
    used = tools.get("image_gen") if isinstance(tools, dict) else None
    if not isinstance(used, dict):
        return None
    read, wrote = used.get("input_tokens"), used.get("output_tokens")
    counts = [n for n in (read, wrote) if isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_TOKENS]
    return Usage(counts[0], counts[1]) if len(counts) == 2 and any(counts) else None


def usage_from_body(endpoint: str, body: Any) -> Usage | None:
    """Usage reported in a response body (`prompt_tokens`/`completion_tokens` as in chat, or
    `input_tokens`/`output_tokens` as in responses and images, or a transcription's audio length:
    `duration_usage`), or None."""
    if not isinstance(body, dict):
        return None
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None
    if usage.get("type") == "duration":
        return duration_usage(usage.get("seconds"))
    none = 0 if endpoint == "embeddings" else None  # only embeddings have no output to report
    if "prompt_tokens" in usage:
        i, o = usage.get("prompt_tokens"), usage.get("completion_tokens", none)
        details = usage.get("prompt_tokens_details")
    else:
        i, o = usage.get("input_tokens"), usage.get("output_tokens", none)
        details = usage.get("input_tokens_details")
    if not isinstance(i, int) or not isinstance(o, int) or not _count(i) or not _count(o) or (i == 0 and o == 0):
        return None
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(i, o, 0, cached if isinstance(cached, int) and _count(cached) else 0)  # capped at `i` by Usage


def duration_usage(seconds: Any) -> Usage | None:
    """A usage billed by audio length — `{"type": "duration", "seconds": 9.2}`, a `whisper-1`
    transcription's or translation's — as the input tokens of that much audio at OpenAI's rate for
    user audio (`AUDIO_TOKENS_PER_SECOND`, as a chat's `input_audio` is estimated), rounded up; None
    when `seconds` is no believable length (not a number, negative, or more tokens than MAX_TOKENS)
    or none. Read as no usage, an hour transcribed counted no tokens against any plan."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not 0 < seconds <= MAX_AUDIO_SECONDS:
        return None
    return Usage(math.ceil(seconds * AUDIO_TOKENS_PER_SECOND), 0)


# The longest audio a duration usage is believed for: its tokens at most MAX_TOKENS.
MAX_AUDIO_SECONDS = MAX_TOKENS // AUDIO_TOKENS_PER_SECOND


# The most models one eval run's `per_model_usage` is read for (its sampling model and its graders':
# a handful); entries past it are ignored as malformed.
MAX_RUN_MODELS = 32
_MAX_MODEL_NAME = 200  # the ledger's `model` column


def named_model(body: Any) -> str | None:
    """The model an object a provider answered with names (`model`: an Assistants run's, a stored
    response's, a batch's, a fine-tuning job's) as the provider wrote it, when it is a string of 1 to
    200 characters (the ledger's column; a NUL or a lone surrogate is made storable with the record:
    `UsageRecord`); None otherwise."""
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) and 0 < len(model) <= _MAX_MODEL_NAME else None


def per_model_usage(body: Any) -> tuple[dict[str, Usage], int]:
    """(the usage of each model an eval run's `per_model_usage` reports — `model_name`,
    `prompt_tokens` with its `cached_tokens`, `completion_tokens` —, summed by model; how many of
    its entries were malformed and ignored: not an object, a name that is no text of at most 200
    characters, a count that is no believable integer). An entry of no tokens is no usage. Pure:
    the caller says whether the run is done."""
    entries = body.get("per_model_usage") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        return {}, 0 if entries is None else 1
    usages: dict[str, Usage] = {}
    malformed = max(0, len(entries) - MAX_RUN_MODELS)
    for entry in entries[:MAX_RUN_MODELS]:
        name = entry.get("model_name") if isinstance(entry, dict) else None
        counts = [entry.get(key, 0) for key in ("prompt_tokens", "completion_tokens", "cached_tokens")] \
            if isinstance(entry, dict) else []
        if not isinstance(name, str) or not 0 < len(name) <= _MAX_MODEL_NAME or not is_text(name) \
                or not counts or not all(_count(c) for c in counts):
            malformed += 1
            continue
        prompt, completion, cached = counts
        if prompt == completion == 0:
            continue
        seen = usages.get(name, Usage(0, 0))
        usages[name] = Usage(min(MAX_TOKENS, seen.input_tokens + prompt), min(MAX_TOKENS, seen.output_tokens + completion),
                             0, min(MAX_TOKENS, seen.cache_read_tokens + cached))
    return usages, malformed


def _count(value: Any) -> bool:
    """A token count a provider can believably report (a larger one is as malformed as a negative one)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS


def text_from_body(endpoint: str, body: Any) -> str:
    """The generated text of a non-streaming response (for counting when usage is missing)."""
    if not isinstance(body, dict):
        return ""
    parts: list[str] = []
    if endpoint == "responses":
        for item in as_list(body.get("output")):
            if not isinstance(item, dict):
                continue
            content = item.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                # An output_text part's text, a refusal part's refusal (streamed as deltas either way).
                parts.extend(field_text(c.get("text")) + field_text(c.get("refusal")) for c in content
                             if isinstance(c, dict))
            if isinstance(item.get("arguments"), str):
                parts.append(item["arguments"])
            parts.append(_tool_input(item))
        return "".join(parts)
    for choice in as_list(body.get("choices")):
        if not isinstance(choice, dict):
            continue
        if endpoint == "completions":
            parts.append(field_text(choice.get("text")))
            continue
        message = choice.get("message")
        if not isinstance(message, dict):
            continue
        if isinstance(message.get("content"), str):
            parts.append(message["content"])
        parts.append(delta_extras(message))  # a message holds the same kinds of output as a delta
        parts.extend(_call_text(call) for call in as_list(message.get("tool_calls")))
    return "".join(parts)


def _tool_input(item: dict[str, Any]) -> str:
    """What the model wrote in a Responses answer's call of a custom or coding tool, all streamed as
    deltas: a custom tool's `input`, a patch's `operation.diff`, a shell call's `action.commands`
    (a local shell's `action.command`). In a whole answer they were read neither as output nor as
    input (the model's own items are not what it read): without usage, a long patch was free."""
    kind = item.get("type")
    if kind == "custom_tool_call":
        return as_str(item.get("input"))
    if kind == "apply_patch_call":
        operation = item.get("operation")
        return as_str(operation.get("diff")) if isinstance(operation, dict) else ""
    action = item.get("action")
    if kind in ("shell_call", "local_shell_call") and isinstance(action, dict):
        lines = action.get("commands" if kind == "shell_call" else "command")
        return "\n".join(line for line in as_list(lines) if isinstance(line, str))
    return ""


# The output items of a Responses answer whose text the model writes and the stream carries as deltas
# (output: `StreamInspector` counts them, `text_from_body` when not streamed). Every other item is a
# hosted tool's (a tool list, a call and its output, search results, code and its logs, a type added
# later): what the provider gave the model to read, input (`items_read`).
_WRITTEN_ITEMS = frozenset({
    "message", "reasoning", "function_call", "custom_tool_call", "shell_call", "local_shell_call",
    "apply_patch_call", "computer_call",  # (a patch's diff streams as deltas; a computer action is short)
})
# What a hosted tool's item leaves out of what the model read: what the model wrote there, output (a
# call's `arguments`, streamed as deltas — an approval request's are not — and counted by
# `text_from_body`; the interpreter's `code`, streamed as deltas), and a generated image's base64
# (image data, not text).
_NOT_READ = {
    "mcp_call": frozenset({"arguments"}),
    "mcp_approval_request": frozenset({"arguments"}),
    "code_interpreter_call": frozenset({"code"}),
    "image_generation_call": frozenset({"result"}),
}


def _written_item(item: dict[str, Any]) -> bool:
    return isinstance(kind := item.get("type"), str) and kind in _WRITTEN_ITEMS


def items_read(items: Any) -> tuple[str, int]:
    """What the model read of a Responses answer's output items: each hosted tool's item (every one
    but those it writes, `_WRITTEN_ITEMS`) as (text to count, tokens counted already), see `item_read`."""
    texts: list[str] = []
    tokens = 0
    for item in as_list(items):
        if isinstance(item, dict) and not _written_item(item):
            text, counted = item_read(item)
            texts.append(text)
            tokens += counted
    return "\n".join(texts), tokens


def item_read(item: dict[str, Any]) -> tuple[str, int]:
    """A hosted tool's item as the model reads it (`items.item_text`), but what `_NOT_READ` leaves
    out: (its text, the tokens counted already)."""
    kind = item.get("type")
    parts, tokens = item_text(item, _NOT_READ.get(kind, NO_FIELDS) if isinstance(kind, str) else NO_FIELDS)
    return "\n".join(parts), tokens


def output_read(endpoint: str, body: Any) -> tuple[str, int]:
    """What the model read of a (non-streamed) answer, for when its usage is missing: a Responses
    answer's hosted-tool items (`items_read`); nothing on the other endpoints."""
    if endpoint != "responses" or not isinstance(body, dict):
        return "", 0
    return items_read(body.get("output"))


def _call_text(call: Any) -> str:
    """A tool call's name and arguments (a custom tool's call: its name and free-text `input`, which
    the model writes as it writes arguments), as text to count."""
    if not isinstance(call, dict):
        return ""
    fn, custom = call.get("function"), call.get("custom")
    text = field_text(fn.get("name")) + field_text(fn.get("arguments")) if isinstance(fn, dict) else ""
    return text + field_text(custom.get("name")) + field_text(custom.get("input")) if isinstance(custom, dict) else text


MAX_EVENT_BYTES = 16 * 1024 * 1024  # as the native API's SSE parser (`sentinel.native.sse`)
# The hosted-tool text a stream inspector keeps to count when the stream is settled; past it an item's
# text is counted as it arrives, a token per 4 bytes (`estimate_tokens`), and not kept.
READ_KEPT_CHARS = 1024 * 1024


class ReadKept:
    """What a stream's model read (hosted or server tools' results), as a stream inspector's
    `read_input`: up to READ_KEPT_CHARS of the text kept to count at settlement; past it a result's
    text is counted as it arrives, a token per 4 bytes, and not kept — kept whole, every fetched page
    and document (its base64 data too) of a long stream was held until its end."""

    def __init__(self) -> None:
        self._texts: list[str] = []
        self._chars = 0
        self._tokens = 0  # counted already: images and scalars, and the text past READ_KEPT_CHARS

    def add(self, text: str, tokens: int) -> None:
        """One result read: its `text` to count and the `tokens` counted already (`items_read`, `blocks_read`)."""
        if not text:
            pass
        elif self._chars + len(text) <= READ_KEPT_CHARS:
            self._texts.append(text)
            self._chars += len(text)
        else:
            tokens += estimate_tokens(text)
        self._tokens += tokens

    @property
    def read_input(self) -> tuple[str, int]:
        """(the text kept to count, the tokens counted already)."""
        return "\n".join(self._texts), self._tokens


# A Responses stream ends with one of these (no `[DONE]`): held back like `[DONE]`.
RESPONSES_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_ITEM_EVENTS = frozenset({"response.output_item.added", "response.output_item.done"})


class EventSplitter:
    """Splits a relayed SSE byte stream into its events: the bytes between blank lines, line ends
    (`\\n`, `\\r\\n` or a lone `\\r`, as the standard and the SDKs read them) normalised to LF, the
    separator dropped. Linear in the stream (a chunk without a blank line is set aside, not searched
    again) and bounded: an event past `max_event_bytes` is an upstream failure (UpstreamError
    `stream_event_too_large`), never a buffer without end. (Read by `\\n` alone, a stream framed by
    `\\r` was one event without end: held back from the client and its usage and text unread —
    charged no output — while the SDKs read it whole.)"""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self._pending: list[bytes] = []
        self._size = 0
        self._last = b""  # the last two bytes set aside: a blank line may straddle two chunks
        self._skip_lf = False  # the bytes split last ended in `\r`: a leading `\n` is the rest of its `\r\n`

    def feed(self, chunk: bytes) -> list[bytes]:
        """The events `chunk` completes (possibly none)."""
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        window = self._last + chunk
        # Two line ends in a row (the first not the `\r` of a `\r\n`): `\n\n`, `\n\r`, `\r\r`.
        if b"\n\n" not in window and b"\n\r" not in window and b"\r\r" not in window:
            self._pending.append(chunk)
            self._size += len(chunk)
            self._last = window[-2:]
            events: list[bytes] = []
        else:
            data = b"".join(self._pending) + chunk if self._pending else chunk
            self._skip_lf = data[-1:] == b"\r"
            events = _lf(data).split(b"\n\n")
            tail = events.pop()  # the unfinished one
            self._pending, self._size, self._last = ([tail], len(tail), tail[-2:]) if tail else ([], 0, b"")
        if self._size > self.max_event_bytes:
            raise UpstreamError(f"Provider stream event larger than {self.max_event_bytes} bytes",
                                code="stream_event_too_large")
        return events

    def flush(self) -> bytes:
        """What is left at the end of the stream (an event without its blank line)."""
        tail = _lf(b"".join(self._pending))
        self._pending, self._size, self._last, self._skip_lf = [], 0, b"", False
        return tail


def _lf(data: bytes) -> bytes:
    """`data` with its line ends (`\\r\\n`, a lone `\\r`) as `\\n`."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n") if b"\r" in data else data


def event_data(event: bytes) -> bytes | None:
    """The data of one event (`EventSplitter`'s) as an SSE reader — the SDKs — reads it: the values of
    its `data` lines, one leading space dropped, joined by line feeds; None when it has none (a
    comment, a ping). Read line by line, a JSON value split over two `data` lines was read as none:
    its usage went unread, and an error's message reached the client unreplaced."""
    values = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if _is_data(line)]
    return b"\n".join(values) if values else None


# The audio answers a chat stream names, kept to record as the caller's (`answers.claim_created`): one
# per choice (`n` is at most 128), each id one Sentinel can own (`governance.ownership`: 200 characters).
# A stream naming more, or a longer id, names nothing kept: unowned, unreachable through Sentinel (a
# provider naming a new id per chunk grew the map, and the store writes after it, without end).
MAX_AUDIO_ANSWERS = 128
MAX_AUDIO_ID = 200
# The Responses API items an answer shows, kept to record as the caller's (`answers.claim_created`):
# an item may be named by id later (an `item_reference`) only when it is its caller's. Past these,
# an item stays unowned — unreachable by id, even to its caller —, as an id over MAX_AUDIO_ID
# characters (a provider naming items without end grew the store writes after it).
MAX_ANSWER_ITEMS = 128
LENIENT_MAX_BYTES = 64 * 1024  # an event orjson refuses is read as the SDKs read it up to this size


def read_as_sdks(payload: bytes) -> Any:
    """An event's data that orjson refuses, read as the SDKs read it (Python's `json`): a lone
    surrogate escape (`\\ud83d`: a character cut between two chunks), `NaN` or `Infinity` (what
    Python's own encoder writes for a float such as a logprob), invalid UTF-8 replaced (the SDKs
    refuse that; a client reading the bytes does not). Returned as orjson reads JSON: a lone
    surrogate as `?`, a constant as null. None when it still cannot be read, or is over
    LENIENT_MAX_BYTES (the slow reader is not run on large events). Left unread, such an event's
    text reached the client and was never counted (a stream cut before its usage: free), and a
    usage chunk so written went unread and, asked for on the client's behalf, unstripped."""
    if len(payload) > LENIENT_MAX_BYTES:
        return None
    try:
        value = json.loads(payload.decode("utf-8", "replace"), parse_constant=lambda _: None)
        return orjson.loads(json.dumps(value, ensure_ascii=False).encode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return None


def with_data(event: bytes, data: bytes) -> bytes:
    """`event` with its data replaced by `data` (one line: JSON as orjson writes it): one `data:` line
    where its first was, its other fields (`event:`, `id:`) kept."""
    lines: list[bytes] = []
    for line in event.split(b"\n"):
        if not _is_data(line):
            lines.append(line)
        elif data:
            lines.append(b"data: " + data)
            data = b""
    return b"\n".join(lines)


def _is_data(line: bytes) -> bool:
    return line.startswith(b"data:") or line == b"data"  # (a field without a colon has an empty value)


# What a Responses event carrying a failed response keeps of its top level: what the openai SDK's
# event types read (`ResponseFailedEvent`: type, sequence_number, response; a pydantic model that keeps
# any other field as an extra, which the client then read).
_ERROR_EVENT_KEPT = frozenset({"type", "sequence_number", "response"})


class StreamInspector:
    """Incrementally parse an OpenAI-style SSE stream for usage and text.

    `feed(chunk)` returns the complete events to relay to the client now (an unfinished event is
    held until its end arrives). The final `data: [DONE]` event — on the Responses API the terminal
    `response.completed` / `.incomplete` / `.failed` event, which carries the usage — is never
    returned: it is kept in `done` for the caller to send after the usage record is stored (and the
    response's owner recorded). In stripping mode the usage-only chunk Sentinel asked for on the
    client's behalf is dropped too. A Responses stream's hosted-tool items are kept as read
    (`read_input`), each once: from its `response.output_item.done`.
    """

    DONE = b"data: [DONE]\n\n"

    def __init__(
        self, endpoint: str, *, strip_usage_chunk: bool = False, provider: str = "openai", secret: str | None = None
    ) -> None:
        self.endpoint = endpoint
        self.provider = provider
        self.secret = secret  # the provider key the stream was asked with: never relayed nor logged
        self.strip = strip_usage_chunk
        self._events = EventSplitter()
        self._final = b""  # the held-back terminal event of a Responses stream
        self._terminal = False
        self._usage: Usage | None = None
        self._usage_whole = False  # `_usage` came without choices: the provider's count of the whole answer
        self._text = KeptText()  # the output, to count when the usage never came (bounded)
        self._read = ReadKept()  # the hosted-tool items (`read_input`)
        self.parse_errors = 0
        self.failed = False  # the provider's error event came (chat's `error`, the Responses API's `error`)
        self._response_failed = False  # a Responses stream ended by `response.failed`
        self._began = False  # any of the answer came (`unserved`)
        self.saw_done = False
        self.object_id: str | None = None  # the answer's own id (a stored response or chat completion)
        self.audio: dict[str, Any] = {}  # a chat answer's audio answers: id -> `expires_at` (None until given)
        self.items: dict[str, None] = {}  # a response's output items' ids, in order (MAX_ANSWER_ITEMS)
        self.model: str | None = None  # the model the upstream named in its chunks
        self.tool_usage: Usage | None = None  # a Responses answer's hosted tools' own model's (`tool_usage`)

    @property
    def text(self) -> str:
        """The output text kept to count (see `KeptText`; `counted`: the tokens of what came past it)."""
        return self._text.text

    @property
    def counted(self) -> int:
        """The tokens of the output streamed past what `text` keeps, counted as it came (`KeptText`)."""
        return self._text.counted

    @property
    def usage(self) -> Usage | None:
        """The provider's count: the last `usage` shown, when it came in an event without choices (the
        usage-only chunk, a Responses event's response) and no output came after it, or the stream
        reached its end (a count shown before output that followed — an early usage-only chunk, a
        `response.created` with a usage — was taken as the whole answer's: a stream cut after it
        was charged that count, whatever it streamed since). A `usage` riding
        on a content chunk of a stream cut before its end counts no more than that chunk's choice:
        vLLM's `continuous_usage_stats` (a client's stream option) gives each chunk its own choice's
        tokens so far, and `n: 64` left before the final sum was charged one choice. Then the text
        streamed is counted instead (every choice's)."""
        return self._usage if self._usage_whole or self.saw_done else None

    @property
    def unserved(self) -> bool:
        """The provider ended the stream as failed — its error event (chat's `error` chunk, the
        Responses API's `error`), a `response.failed` — before any of its answer came: no content,
        tool call, refusal or finish reason in a choice, no output item, part or delta of a response
        (events other than `response.created`/`.queued`/`.in_progress`). The client got no output,
        and none is charged without the provider's usage — hidden reasoning included
        (`Admission.hidden_output` is not charged as reserved then), as an Anthropic stream's error
        before any block is not (`AnthropicStreamInspector.unserved`). A stream cut otherwise (the
        connection broken, a read timeout, Sentinel's time limit, the client gone) tells nothing of
        what the provider generated unseen: charged as before."""
        return (self.failed or self._response_failed) and not self._began

    @property
    def read_input(self) -> tuple[str, int]:
        """What the model read that the admission estimate leaves out: a Responses stream's hosted-tool
        items (`items_read`), charged when the final usage never came (`ReadKept`)."""
        return self._read.read_input

    @property
    def done(self) -> bytes:
        """The final event to send last (`[DONE]`, a Responses stream's terminal event), or b"" when
        the upstream never sent one."""
        if not self.saw_done:
            return b""
        return self._final or self.DONE

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for event in self._events.feed(chunk):
            if self.saw_done:
                continue  # nothing is relayed after the final event
            event = self._inspect(event)
            if self._terminal and not self.saw_done:
                self._final, self.saw_done = event + b"\n\n", True
            elif event and not self.saw_done:
                out.append(event + b"\n\n")
        return b"".join(out)

    def flush(self) -> bytes:
        """At end of stream: inspect and return any unterminated tail."""
        tail = self._events.flush()
        if tail.strip() and not self.saw_done:
            tail = self._inspect(tail)
            if self._terminal and not self.saw_done:
                self._final, self.saw_done = tail + b"\n\n", True
            return b"" if self.saw_done else tail
        return b""

    def _inspect(self, event: bytes) -> bytes:
        """Record what the event says; the event to relay (b"" for the usage-only chunk to strip)."""
        payload = event_data(event)
        if payload is None:
            return event  # a comment, a ping
        if payload.strip() == b"[DONE]":
            self.saw_done = True
            return event
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.parse_errors += 1
            obj = read_as_sdks(payload)
            if obj is None:
                return event
        if not isinstance(obj, dict):
            return event
        if not self._absorb(obj):
            return b""
        if (message := self._redact(obj)) is not None:
            event = with_data(event, redact(self._rendered(obj, message), self.secret))
        return event

    def _redact(self, obj: dict[str, Any]) -> str | None:
        """Replace the provider's error in an error event (chat's `error`, the Responses API's `error`
        event and a response's `error`) by `stream_error`'s; the message put in its place, or None
        when `obj` was not one. Any `error` an SDK raises on (one that is not empty) is one, whatever
        its shape: a string error carried the provider's message whole. The event is rebuilt of what
        the SDKs read of it alone (chat's `error`; a Responses event's `_ERROR_EVENT_KEPT`): its other fields (the provider's `request_id`,
        what a proxy in front of it adds) are the provider's, as its message is."""
        if self.endpoint != "responses":
            if not obj.get("error"):
                return None
            error = stream_error(self.provider, obj["error"], "upstream_error", self.secret)
            obj.clear()
            obj["error"] = error  # (the openai SDK raises `APIError` of `error` alone)
            self.failed = True
            return str(error["message"])
        response = obj.get("response")
        if obj.get("type") == "error":  # the event is the error: rebuilt of its labels
            sequence = obj.get("sequence_number")
            kept = stream_error(self.provider, obj, None, self.secret)
            obj.clear()
            obj.update({**kept, "type": "error"})
            if isinstance(sequence, int):
                obj["sequence_number"] = sequence
            self.failed = True
            return str(kept["message"])
        if isinstance(response, dict) and response.get("error"):  # a failed response: an answer (not `failed`)
            response["error"] = stream_error(self.provider, response["error"], None, self.secret)
            for key in obj.keys() - _ERROR_EVENT_KEPT:
                del obj[key]  # (the response itself is the answer, kept as the provider wrote it)
            return str(response["error"]["message"])
        return None

    def _rendered(self, obj: dict[str, Any], message: str) -> bytes:
        """A redacted error event as JSON. orjson reads deeper nesting than it writes (255 levels): a
        failed response it cannot write back becomes a generic one, with the provider's other fields
        left out, instead of an exception that cut the client's connection mid-stream. (Chat's and
        completions' error chunk and a Responses `error` event are rebuilt of their labels alone:
        they are always written back.)"""
        try:
            return orjson.dumps(obj)
        except orjson.JSONEncodeError:
            return orjson.dumps(self._generic_error(obj.get("type"), message))

    @staticmethod
    def _generic_error(kind: Any, message: str) -> dict[str, Any]:
        error = {"code": "server_error", "message": message}
        return {"type": kind if isinstance(kind, str) else "response.failed",
                "response": {"object": "response", "status": "failed", "error": error}}

    def _absorb(self, obj: dict[str, Any]) -> bool:
        if self.model is None and isinstance(obj.get("model"), str):
            self.model = obj["model"]
        if self.endpoint == "responses":
            return self._absorb_responses(obj)
        if self.object_id is None and isinstance(obj.get("id"), str) and obj["id"]:
            self.object_id = obj["id"]  # a chat completion's chunks carry its id (stored with `store: true`)
        usage = usage_from_body(self.endpoint, obj)
        choices = obj.get("choices")
        if usage is not None:
            self._usage, self._usage_whole = usage, not (isinstance(choices, list) and choices)
        elif isinstance(choices, list) and choices:
            self._usage_whole = False  # output after the count: it was not the whole answer's
        if isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                if not self._began and carries_answer(choice, "text" if self.endpoint == "completions" else "delta"):
                    self._began = True
                if self.endpoint == "completions":
                    self._text.append(field_text(choice.get("text")))
                    continue
                delta = choice.get("delta")
                if not isinstance(delta, dict):
                    continue
                if isinstance(delta.get("content"), str):
                    self._text.append(delta["content"])
                audio = delta.get("audio")
                if isinstance(audio, dict) and isinstance(audio.get("id"), str) and audio["id"]:
                    self._note_audio(audio["id"], audio.get("expires_at"))
                if not delta.keys() <= PLAIN_DELTA:
                    self._text.append(delta_extras(delta))
                for call in as_list(delta.get("tool_calls")):
                    self._text.append(_call_text(call))
        # The usage-only chunk has an empty choices list (null or none, from some servers); stripped
        # whatever its figures (malformed ones are not usage, but the chunk is still the one the
        # client did not ask for: without choices, code reading `chunk.choices[0]` fails on it).
        # (Never an error chunk: the client is told of the error.)
        return not (self.strip and isinstance(obj.get("usage"), dict) and (choices is None or choices == [])
                    and not obj.get("error"))

    def _note_audio(self, audio_id: str, expires_at: Any) -> None:
        """Keep an audio answer's id (and its `expires_at` once given), within MAX_AUDIO_ANSWERS."""
        if audio_id in self.audio or (len(self.audio) < MAX_AUDIO_ANSWERS and len(audio_id) <= MAX_AUDIO_ID):
            self.audio[audio_id] = expires_at or self.audio.get(audio_id)

    def _note_item(self, item: Any) -> None:
        """Keep an output item's id (`items`), within MAX_ANSWER_ITEMS."""
        item_id = item.get("id") if isinstance(item, dict) else None
        if isinstance(item_id, str) and item_id and item_id not in self.items and len(self.items) < MAX_ANSWER_ITEMS \
                and len(item_id) <= MAX_AUDIO_ID:
            self.items[item_id] = None

    def _absorb_responses(self, obj: dict[str, Any]) -> bool:
        # (a `type` that is not a string — a provider's list — is no event's: looked up in a set, it raised)
        kind = obj.get("type") if isinstance(obj.get("type"), str) else None
        if kind in RESPONSES_TERMINAL:
            self._terminal = True
        response = obj.get("response")
        if kind == "response.failed":
            self._response_failed = True
        if kind not in _NO_OUTPUT_EVENTS or (isinstance(response, dict) and response.get("output")):
            self._began = True  # (an event of the answer, or a response holding output)
        if isinstance(response, dict) and self.object_id is None and isinstance(response.get("id"), str):
            self.object_id = response["id"]  # `response.created` names the stored response
        if isinstance(response, dict):
            usage = usage_from_body("responses", response)
            if usage is not None:
                self._usage, self._usage_whole = usage, True
        elif isinstance(obj.get("usage"), dict):
            usage = usage_from_body("responses", obj)
            if usage is not None:
                self._usage, self._usage_whole = usage, True
        delta = obj.get("delta")
        if isinstance(delta, str | dict):
            self._usage_whole = False  # output after a count (an early event's): not the whole answer's
        if isinstance(delta, str):
            self._text.append(delta)
        elif isinstance(delta, dict):
            self._text.append(str(delta.get("text") or delta.get("content") or ""))
        if kind in _ITEM_EVENTS:
            self._note_item(obj.get("item"))
        if isinstance(response, dict) and kind in RESPONSES_TERMINAL:
            self.tool_usage = tool_usage(response)
            output = response.get("output")
            for item in output if isinstance(output, list) else ():
                self._note_item(item)
        if kind == "response.output_item.done":  # (`.added` came before, without results)
            item = obj.get("item")
            if isinstance(item, dict) and not _written_item(item):
                self._read.add(*item_read(item))
        return True


# Responses stream events that carry none of the answer: its lifecycle, and its failure.
_NO_OUTPUT_EVENTS = frozenset({"response.created", "response.queued", "response.in_progress", "error",
                               "response.failed"})


class TailInspector:
    """Keeps the last `keep` bytes of a large JSON answer relayed as it arrives, to read its usage
    (OpenAI puts `usage` at the end, followed at most by `user` and `metadata`) without holding or
    parsing the whole body."""

    def __init__(self, keep: int = 64 * 1024) -> None:
        self.keep = keep
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        self._tail = (self._tail + chunk)[-self.keep :]

    def usage(self, endpoint: str) -> Usage | None:
        """The answer's own (top-level) `usage` object, or None when the tail holds none."""
        value = top_level_value(self._tail, b"usage")
        return None if value is None else usage_from_body(endpoint, {"usage": value})

    def tool_usage(self) -> Usage | None:
        """A Responses answer's hosted tools' own model's usage (`tool_usage`), when the tail holds it."""
        value = top_level_value(self._tail, b"tool_usage")
        return None if value is None else tool_usage({"tool_usage": value})


_STRUCTURE = re.compile(rb'[{}\[\]"]')
_KEY_END = re.compile(rb'\s*:\s*')


def top_level_value(tail: bytes, key: bytes) -> Any:
    """The value of `key` in the top-level object whose last bytes are `tail`, or None.

    Read backwards from the closing brace, where the nesting and the string boundaries are known,
    so only the answer's own key counts: never a `"usage"` inside a string or inside an object the
    client sent and the provider echoes after it (a Responses answer ends with the request's
    `metadata`; its `tools` carry any JSON schema).
    """
    depth = 0
    closing = -1  # the closing quote of the string being read backwards, -1 outside strings
    for match in reversed(list(_STRUCTURE.finditer(tail.rstrip()))):
        at = match.start()
        char = tail[at]
        if closing >= 0:
            if char != 0x22 or _escaped(tail, at):
                continue
            if depth == 1 and tail[at + 1 : closing] == key and (colon := _KEY_END.match(tail, closing + 1)):
                try:
                    return json.JSONDecoder().raw_decode(tail[colon.end() :].decode())[0]
                except (ValueError, UnicodeDecodeError):
                    return None
            closing = -1
        elif char == 0x22:
            closing = at
        else:
            depth += 1 if char in b"}]" else -1
            if depth <= 0:
                return None  # back at the top-level object's opening brace
    return None


def _escaped(text: bytes, at: int) -> bool:
    """Whether the quote at `at` is escaped: an odd run of backslashes before it."""
    run = 0
    while at - run - 1 >= 0 and text[at - run - 1] == 0x5C:
        run += 1
    return run % 2 == 1
