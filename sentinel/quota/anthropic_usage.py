"""Anthropic Messages requests and answers as the meter reads them: the admission estimate, usage, text.

Estimate (before the provider says): the `system` prompt (a string or text blocks), each message's
text, tool uses (name and JSON input) and tool results, 3 tokens of overhead per message, the tool
definitions as compact JSON, and each image (and each page of a base64 PDF document, as an image of a
letter page: `sentinel.quota.media`) by Anthropic's pixel rule (`sentinel.quota.images`) — or,
when the request may be served by a model of another wire format (translated), by the dearest of
that model's rule and Anthropic's (`images.image_rule_for`).
A structured output's format (`output_config.format`, the beta's `output_format`) is counted as
compact JSON, as the tools are.
Counted with the tokenizer Sentinel has for the model (Claude models: `cl100k_base`, an approximation).
Every other block (a server tool's use and result, MCP's, redacted thinking, a type added later) has
every string in it counted (`_walk`): a block type Sentinel does not know is never a free channel.

Usage: Anthropic's `input_tokens` excludes the prompt-cache writes and reads; Sentinel's input tokens
include them (as OpenAI's `prompt_tokens` do), with the two figures kept on their own as well, and
the steps of `usage.iterations` the top-level figures leave out (a context compaction's, the advisor
tool's: `usage_of`).
A server tool's result (a fetched page, a search, code output) is part of the answer but is input: the
model reads it in the step that follows, and only the final usage counts it. An answer or stream
without that usage is charged it as read (`blocks_read`), counted as the estimate counts the same block.
`AnthropicStreamInspector` watches a relayed stream without delaying it, holds back the final
`message_stop` event until the usage record is stored and rebuilds an `error` event of its error's labels
alone (`providers.errors.stream_error`: the provider's message, and the event's other fields, left out).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from sentinel.domain.numbers import MAX_TOKENS
from sentinel.domain.usage import Usage
from sentinel.native._wire import flat_json
from sentinel.native.kept import KeptText
from sentinel.native.openai_checks import MAX_JSON_DEPTH, MAX_MODEL_CHARS
from sentinel.observability.redaction import redact
from sentinel.providers.errors import stream_error
from sentinel.quota.images import ANTHROPIC, ImageRule, base64_image_tokens
from sentinel.quota.media import NO_FILES, Files, RequestFiles, file_tokens, unread_bound
from sentinel.quota.tokens import (
    MAX_PLAIN_ID_CHARS,
    REPLY_PRIMING,
    TOKENS_PER_MESSAGE,
    TokenCounter,
)
from sentinel.quota.usage import EventSplitter, ReadKept, event_data, with_data

_INPUT_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _count(value: Any) -> int | None:
    """A token count a provider can believably report, else None (negative, too large, not an integer)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
        return value
    return None


def estimate_messages(
    counter: TokenCounter, model: str, payload: dict[str, Any], *, user: str | None = None,
    images: ImageRule = ANTHROPIC,
) -> int:
    """Input tokens of a Messages API body (see the module docstring); wrong types count as absent
    (`user`: whose body it is, see `InputCounts`; `images`: the image rule of the models that may
    serve it)."""
    texts: list[str] = []
    media = 0
    files = RequestFiles()  # (PDFs by URL reserve the bound once per request: `media.unread_bound`)
    system = payload.get("system")
    texts.extend(content_texts(system))
    messages = payload.get("messages")
    overhead = REPLY_PRIMING
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            continue
        overhead += TOKENS_PER_MESSAGE
        media += _content(message.get("content"), texts, rule=images, files=files)
    tools = payload.get("tools")
    if isinstance(tools, list) and tools:
        texts.append(json.dumps(tools, separators=(",", ":"), ensure_ascii=False))
    texts.extend(json.dumps(schema, separators=(",", ":"), ensure_ascii=False) for schema in _output_formats(payload))
    texts.extend(_compaction_instructions(payload))
    count = sum(counter.count_text(text, model, user=user) for text in texts if text)
    return overhead + count + media


def _output_formats(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The structured-output formats a body asks for (`output_config.format`, and the beta's
    `output_format`): their JSON schema reaches the model as text, as a tool's `input_schema` does
    and as `response_format` does on chat (its descriptions were text the admission never counted)."""
    config = payload.get("output_config")
    formats = [payload.get("output_format"), config.get("format") if isinstance(config, dict) else None]
    return [value for value in formats if isinstance(value, dict) and value]


def _compaction_instructions(payload: dict[str, Any]) -> list[str]:
    """The summarisation prompts a body gives (a compaction request's `compaction.instructions`, a
    compaction edit's `context_management.edits[].instructions`): text the compaction step reads
    besides the conversation, of any length — free in the estimate before."""
    compaction, management = payload.get("compaction"), payload.get("context_management")
    edits = management.get("edits") if isinstance(management, dict) else None
    holders = [compaction, *(edits if isinstance(edits, list) else ())]
    return [text for holder in holders
            if isinstance(holder, dict) and isinstance(text := holder.get("instructions"), str)]


def content_texts(value: Any) -> list[str]:
    """A string, or the `text` of each part of a list of content parts (both APIs' shape)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [b["text"] for b in value if isinstance(b, dict) and isinstance(b.get("text"), str)]
    return []


def _content(
    content: Any, texts: list[str], depth: int = 0, *, rule: ImageRule = ANTHROPIC, pdfs: bool = True,
    files: Files = NO_FILES,
) -> int:
    """Append the content's texts; return the tokens counted without the tokenizer (images and, with
    `pdfs`, the pages of a PDF sent as base64 data, by `rule`, and a PDF by URL as the bound, once
    per request when `files` is its `RequestFiles`; the scalars of `_walk`). `depth`: how deep
    `content` lies (nothing below MAX_JSON_DEPTH is read)."""
    if isinstance(content, str):
        texts.append(content)
        return 0
    if depth >= MAX_JSON_DEPTH:
        return 0
    tokens = 0
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            if isinstance(text := block.get("text"), str):  # its `citations` are not billed (`_UNBILLED`)
                texts.append(text)
        elif kind == "image":
            # The data of a base64 source only: a URL source's stray `data` is never read by the
            # provider (nor sent by a translation), and priced a fetched image as its tiny decoy.
            source = block.get("source")
            data = source.get("data") if isinstance(source, dict) and source.get("type") == "base64" else None
            tokens += base64_image_tokens(data, rule) if isinstance(data, str) else rule.most()
        elif kind == "tool_use":
            texts.append(_call_text(block))
            texts.extend(_long_labels(block))
        elif kind == "tool_result":
            texts.extend(_long_labels(block))
            tokens += _content(block.get("content"), texts, depth + 2, rule=rule, pdfs=pdfs, files=files)
        elif kind in ("document", "search_result"):
            # A plain-text document's data, a content document's blocks, a search result's blocks;
            # titles and context too, and a search result's source. A PDF sent as base64 data is an
            # image of each page (`media.file_tokens`: Anthropic puts each page's image and text
            # before the model; a 100-page PDF was admitted at a few tokens). A PDF by URL, its bytes
            # elsewhere, is reserved as the longest PDF a request may hold — the provider's 100 pages
            # are per request, so once however many it names (`media.unread_bound`; a file id is
            # refused before: `services.objects.anthropic_object_reference`).
            source = block.get("source")
            if isinstance(source, dict) and source.get("type") == "text" and isinstance(source.get("data"), str):
                texts.append(source["data"])
            elif isinstance(source, dict) and source.get("type") == "content":
                tokens += _content(source.get("content"), texts, depth + 3, rule=rule, pdfs=pdfs, files=files)
            elif pdfs and isinstance(source, dict) and source.get("type") == "base64":
                tokens += file_tokens(source.get("data"), rule)
            elif pdfs and isinstance(source, dict) and source.get("type") == "url":
                tokens += unread_bound(rule, files)
            if kind == "search_result":
                tokens += _content(block.get("content"), texts, depth + 2, rule=rule, pdfs=pdfs, files=files)
            texts.extend(_strings(block, "title", "context", "source"))
        elif kind == "thinking":
            # The thinking, not its `signature`: the provider checks that the signature is its own
            # (a made-up one is refused) and it stands for the thinking counted here.
            if isinstance(thinking := block.get("thinking"), str):
                texts.append(thinking)
        else:
            tokens += _walk(block, texts, depth + 1, rule, pdfs, files)
    return tokens


def _long_labels(block: dict[str, Any]) -> list[str]:
    """A tool use's `id` and a tool result's `tool_use_id` when longer than a real one (`_LABELS`):
    text the provider reads (a translation sends them as the call's and the result's ids), as the
    walk counts a long label of any other block — they carried text of any length free."""
    return [value for key in ("id", "tool_use_id")
            if isinstance(value := block.get(key), str) and len(value) > MAX_PLAIN_ID_CHARS]


def _call_text(block: dict[str, Any]) -> str:
    """A tool use's name and its `input` as JSON text, the text the model wrote (or reads)."""
    name = block.get("name")
    return (name if isinstance(name, str) else "") + json_text(block.get("input"))


def json_text(value: Any) -> str:
    """`value` as `json.dumps` writes it, at any depth. An answer's tool input may be nested as deep
    as orjson reads (1,024 levels), past the interpreter's recursion limit (~1,000 frames, fewer
    inside a request): `json.dumps` then raises RecursionError, which turned a served answer into
    a 500 with its reservation given back and no record. Such a value is written without recursion."""
    try:
        return json.dumps(value, default=str)
    except RecursionError:
        return flat_json(value, leaf=_json_leaf, comma=", ", colon=": ")


def _json_leaf(node: Any) -> str:
    return json.dumps(node, default=str)


def _strings(block: dict[str, Any], *keys: str) -> list[str]:
    return [value for key in keys if isinstance(value := block.get(key), str)]


# What `_walk` leaves out, at the block's own top level only (deeper, a key of that name may be
# anything, a tool input's property called `id` say, and is counted): the labels of the structure
# (its `type`, a tool use's `id`, a result's `tool_use_id`) while short, as real ones are (a long one
# is counted), and what Anthropic does not bill as input (`cache_control`; `citations`, whose
# `cited_text` "does not count towards input tokens" when sent back).
_LABELS = frozenset({"type", "id", "tool_use_id"})
_UNBILLED = frozenset({"cache_control", "citations"})


def _walk(
    block: dict[str, Any], texts: list[str], depth: int, rule: ImageRule, pdfs: bool = True, files: Files = NO_FILES,
) -> int:
    """Count a block with no rule of its own (`server_tool_use`, `web_search_tool_result`,
    `web_fetch_tool_result`, `code_execution_tool_result`, `mcp_tool_result`, `redacted_thinking`, a
    type added later): every string in it, keys too, appended as one text, but its own `_LABELS` and
    `_UNBILLED`; a number, `true`, `false` or `null` one token each (returned, with the images').
    An image or a document inside (a result's content) is counted by its own rule (`_content`),
    except under an `input`: a tool use's input is JSON the model reads as text, whatever its shape
    (as the `tool_use` rule counts it), so a made-up image there is not capped at an image's
    tokens. Opaque strings (a `redacted_thinking`'s `data`, a search result's `encrypted_content`)
    are counted as text: the provider bills what they decrypt to, of about their size. Iterative,
    nothing below MAX_JSON_DEPTH (a request body has no more levels; an upstream event may)."""
    parts: list[str] = []
    tokens = 0
    stack: list[tuple[Any, int, bool]] = []  # (node, its depth, whether media rules apply there)
    for key, value in block.items():
        if key in _UNBILLED or (key in _LABELS and isinstance(value, str) and len(value) <= MAX_PLAIN_ID_CHARS):
            continue
        stack += [(key, depth, False), (value, depth + 1, key != "input")]
    stack.reverse()
    while stack:
        node, depth, media = stack.pop()
        if isinstance(node, str):
            parts.append(node)
        elif media and isinstance(node, dict) and node.get("type") in ("image", "document"):
            tokens += _content([node], texts, depth, rule=rule, pdfs=pdfs, files=files)
        elif isinstance(node, list) and depth < MAX_JSON_DEPTH:
            stack.extend((item, depth + 1, media) for item in reversed(node))
        elif isinstance(node, dict) and depth < MAX_JSON_DEPTH:
            for key, value in reversed(node.items()):
                stack += [(value, depth + 1, media and key != "input"), (key, depth, False)]
        elif not isinstance(node, dict | list):
            tokens += 1
    if parts:
        texts.append("\n".join(parts))
    return tokens


# The blocks of an answer the model writes (their text, streamed as deltas, is output); any other is
# one the provider added for the model to read (a server tool's result): input, see `blocks_read`.
_WRITTEN = frozenset({"text", "thinking", "redacted_thinking", "tool_use", "server_tool_use", "mcp_tool_use"})
_CALLS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})


def _written(block: Any) -> bool:
    return isinstance(block, dict) and isinstance(kind := block.get("type"), str) and kind in _WRITTEN


def blocks_read(blocks: list[Any]) -> tuple[str, int]:
    """What the model read of an answer's blocks: the server tools' results (every block but those it
    writes, `_WRITTEN`), counted as the estimate counts them in a request: (text to count, tokens
    counted already)."""
    texts: list[str] = []
    # (A PDF among them is not estimated: this runs on the event loop, at settlement.)
    tokens = _content([b for b in blocks if isinstance(b, dict) and not _written(b)], texts, pdfs=False)
    return "\n".join(texts), tokens


# The `usage.iterations` entries the top-level figures already sum: the model's own sampling steps
# (a server-tool loop's turns), the last one served by a fallback model included. Any other entry —
# a `compaction` (the summary of a context past its trigger: Anthropic's docs say its tokens "are not
# included in the top-level usage fields"), an `advisor_message` (the advisor tool's model reading
# the whole transcript), a kind added later — is billed besides them.
_SUMMED_ITERATIONS = frozenset({"message", "fallback_message"})


def usage_of(raw: Any) -> Usage | None:
    """Sentinel's usage from an Anthropic `usage` object (None unless it has input and output figures,
    and input figures that sum to at most MAX_TOKENS): the top-level figures plus those of each
    `iterations` entry they leave out (`_SUMMED_ITERATIONS`)."""
    if not isinstance(raw, dict):
        return None
    plain, output = _count(raw.get("input_tokens")), _count(raw.get("output_tokens"))
    if plain is None or output is None:
        return None
    write = _count(raw.get("cache_creation_input_tokens")) or 0
    read = _count(raw.get("cache_read_input_tokens")) or 0
    for step in _steps_apart(raw):
        plain, output, write, read = (a + b for a, b in zip((plain, output, write, read), _figures(step), strict=True))
    if plain + write + read > MAX_TOKENS or output > MAX_TOKENS:
        return None
    return Usage(plain + write + read, output, write, read)


def _steps_apart(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The entries of `raw`'s `iterations` the top-level figures leave out (`_SUMMED_ITERATIONS`)."""
    iterations = raw.get("iterations")
    return [step for step in iterations if isinstance(step, dict) and step.get("type") not in _SUMMED_ITERATIONS] \
        if isinstance(iterations, list) else []


def _figures(step: dict[str, Any]) -> tuple[int, int, int, int]:
    """A step's plain input, output, cache-write and cache-read tokens (0 for one not believable)."""
    return (_count(step.get("input_tokens")) or 0, _count(step.get("output_tokens")) or 0,
            _count(step.get("cache_creation_input_tokens")) or 0, _count(step.get("cache_read_input_tokens")) or 0)


def model_steps(raw: Any) -> list[tuple[str, Usage]]:
    """The steps `usage_of` adds to an Anthropic `usage` object's figures that name the model that ran
    them (`advisor_message`: the advisor tool's `model`, which may be dearer than the request's),
    each with its usage: to be priced at that model's prices (`QuotaMeter.settle`'s `within`). Empty
    when `usage_of` reads no usage from `raw`; a step naming no model (a compaction: the request's
    model) is not one."""
    if not isinstance(raw, dict) or usage_of(raw) is None:
        return []
    steps = []
    for step in _steps_apart(raw):
        model = step.get("model")
        if isinstance(model, str) and model:
            plain, output, write, read = _figures(step)
            steps.append((model[:MAX_MODEL_CHARS], Usage(plain + write + read, output, write, read)))
    return steps


def message_usage(body: Any) -> Usage | None:
    """The usage of a (non-streamed) Messages API answer, or None."""
    return usage_of(body.get("usage")) if isinstance(body, dict) else None


def message_steps(body: Any) -> list[tuple[str, Usage]]:
    """The steps of another model in a (non-streamed) Messages API answer's usage (`model_steps`)."""
    return model_steps(body.get("usage")) if isinstance(body, dict) else []


def message_text(body: Any) -> str:
    """The generated text (and tool inputs) of a Messages API answer, for counting when usage is missing."""
    parts: list[str] = []
    for block in _blocks(body):
        if not _written(block):
            continue  # a server tool's result: read, not written (`message_read`)
        if isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif block.get("type") in _CALLS:
            parts.append(_call_text(block))
    return "".join(parts)


def message_read(body: Any) -> tuple[str, int]:
    """What the model read of a (non-streamed) Messages API answer, for when usage is missing (`blocks_read`)."""
    return blocks_read(_blocks(body))


def _blocks(body: Any) -> list[Any]:
    blocks = body.get("content") if isinstance(body, dict) else None
    return blocks if isinstance(blocks, list) else []


class AnthropicStreamInspector:
    """Watches an Anthropic SSE stream: `feed(chunk)` returns the complete events to relay now; the
    `message_stop` event is kept in `done` (sent after the usage record is stored); nothing after it
    is relayed."""

    def __init__(self, provider: str = "anthropic", secret: str | None = None) -> None:
        self.provider = provider
        self.secret = secret  # the provider key the stream was asked with: never relayed nor logged
        self._events = EventSplitter()
        self._input: dict[str, int] = {}
        self._iterations: list[Any] = []  # the latest `usage.iterations` (`usage_of`)
        # A `compaction` block came: the context was summarised in a step message_start's input
        # leaves out (it counts the summary read after), so a stream cut before the final usage is
        # charged the estimate of the whole prompt instead (`reported_input`).
        self._compacted = False
        self._output: int | None = None
        self._final = False  # a message_delta gave the final output count
        self._text = KeptText()  # the output, to count when the final usage never came (bounded)
        self._read = ReadKept()  # the server tools' results (`read_input`)
        self.parse_errors = 0
        self.failed = False  # the provider's `error` event came
        self.error_type: str | None = None  # its `type` (`overloaded_error`, ...), as relayed
        self._began = False  # a block of the answer (or its final delta) came
        self.done = b""

    @property
    def text(self) -> str:
        """The output text kept to count (see `KeptText`; `counted`: the tokens of what came past it)."""
        return self._text.text

    @property
    def counted(self) -> int:
        """The tokens of the output streamed past what `text` keeps, counted as it came (`KeptText`)."""
        return self._text.counted

    @property
    def read_input(self) -> tuple[str, int]:
        """What the model read that message_start's input leaves out: the server tools' results
        streamed (`blocks_read`, each as it arrives), charged when the final usage never came; kept as
        a Responses stream's hosted-tool items are (`ReadKept`)."""
        return self._read.read_input

    @property
    def usage(self) -> Usage | None:
        """The reported usage once the final figures arrived; None for a stream cut short."""
        if not self._final or "input_tokens" not in self._input or self._output is None:
            return None
        return usage_of({**self._input, "output_tokens": self._output, "iterations": self._iterations})

    @property
    def steps(self) -> list[tuple[str, Usage]]:
        """The steps of another model in the final usage (`model_steps`); none without it."""
        if self.usage is None:
            return []
        return model_steps({**self._input, "output_tokens": self._output, "iterations": self._iterations})

    @property
    def reported_input(self) -> Usage | None:
        """The input figures message_start reported (output 0), kept for a stream that breaks off
        before its final count; None when it reported none, or when the context was compacted
        (they leave out the compaction's step: the estimate is charged)."""
        if "input_tokens" not in self._input or self._compacted:
            return None
        return usage_of({**self._input, "output_tokens": 0, "iterations": self._iterations})

    @property
    def unserved(self) -> bool:
        """The provider ended the stream with its error event before any block of its answer (an
        `overloaded_error` right after message_start): it generated no output, hidden reasoning
        included (`Admission.hidden_output` is not charged as reserved then)."""
        return self.failed and not self._began

    def feed(self, chunk: bytes) -> bytes:
        return b"".join(self._event(event) for event in self._events.feed(chunk))

    def flush(self) -> bytes:
        """At the end of the stream: the unterminated tail, if any."""
        tail = self._events.flush()
        return self._event(tail) if tail.strip() else b""

    def _event(self, event: bytes) -> bytes:
        if self.done:
            return b""
        payload = event_data(event)
        if payload is None:
            return event + b"\n\n"  # a comment
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.parse_errors += 1
            return event + b"\n\n"
        if not isinstance(obj, dict):
            return event + b"\n\n"
        if obj.get("type") == "message_stop":
            self.done = event + b"\n\n"
            return b""
        self._absorb(obj)
        if obj.get("type") == "error":  # whatever its `error` holds (a string carried the message whole)
            error = stream_error(self.provider, obj.get("error"), "api_error", self.secret)
            self.failed = True
            self.error_type = kind if isinstance(kind := error.get("type"), str) else None
            # Rebuilt of the error's labels alone: the event's other fields (the provider's `request_id`,
            # what a proxy in front of it adds, any depth of nesting orjson could not write back) are the
            # provider's, as its message is.
            event = with_data(event, redact(orjson.dumps({"type": "error", "error": error}), self.secret))
        return event + b"\n\n"

    def _absorb(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind in ("content_block_start", "content_block_delta", "message_delta"):
            self._began = True
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
            # A block the model writes starts empty (its text follows in deltas); a server tool's
            # result arrives whole, here.
            block = obj.get("content_block")
            if isinstance(block, dict) and block.get("type") == "compaction":
                self._compacted = True
            if isinstance(block, dict) and not _written(block):
                self._read.add(*blocks_read([block]))
            elif isinstance(block, dict) and isinstance(block.get("name"), str):
                self._text.append(block["name"])


    def _take(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        for key in _INPUT_KEYS:
            if (value := _count(usage.get(key))) is not None:
                self._input[key] = value
        if isinstance(usage.get("iterations"), list):
            self._iterations = usage["iterations"]
        if (output := _count(usage.get("output_tokens"))) is not None and self._output is None:
            self._output = output
