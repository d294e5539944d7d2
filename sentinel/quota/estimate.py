"""Pre-request estimates: input tokens of a request body and the output tokens it may produce.

Both read only values of the expected types (anything else counts as absent): the transport
type-checks metered fields first (`sentinel.native.openai_checks`), and an estimate must never be
the thing that turns a hostile body into a 500.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from sentinel.native.openai_checks import output_multiplier, prompt_count
from sentinel.native.types import MAX_TOOLS
from sentinel.quota.anthropic_usage import content_texts, estimate_messages
from sentinel.quota.images import ANTHROPIC, ImageRule, openai_image_rule
from sentinel.quota.items import item_text
from sentinel.quota.media import NO_FILES, Files, RequestFiles, TextCount, part_tokens
from sentinel.quota.tokens import TokenCounter

# No request reserves more output tokens than this (no model produces that many in one call): the
# quota arithmetic — Lua numbers in Redis, the 429's details, JSON — stays exact and in range
# whatever token cap and `n` a client sends.
MAX_RESERVED_OUTPUT = 2**40
# What a request reserves for each thing it names that the provider holds and Sentinel cannot read
# (`SENTINEL_REFERENCE_INPUT_TOKENS`): a Responses `item_reference` input item, a reusable prompt's
# own text (`prompt.id`), a chat message's earlier audio answer (`audio.id`), an MCP server whose
# tool list the provider fetches and adds to the input (`/v1/messages`' `mcp_servers`, a Responses
# `mcp` tool). One short id can stand for a long stored item: estimated at nothing, it passed any
# input limit, and a stream cut before its usage was charged nothing for it. The answer's usage is
# what is charged.
REFERENCE_TOKENS = 4096
# The most MCP servers one request is reserved for: the most tools a request may have. A body naming
# 100,000 of them reserved 100,000 times the figure (the provider refuses such a request anyway).
MAX_MCP_SERVERS = MAX_TOOLS


def estimate_input(
    counter: TokenCounter, endpoint: str, model: str, payload: dict[str, Any], *, user: str | None = None,
    images: ImageRule | None = None, files: Files = NO_FILES, referenced: int = REFERENCE_TOKENS,
) -> int:
    """Input tokens the request will most likely be billed for (before the provider says); `user`
    (the caller's external id) lets the counter remember their long texts (`InputCounts`). `model`
    counts the text (its tokenizer); `images` prices the images and PDF pages (the rule of every
    model that may serve the request, `images.image_rule_for`), by default `model`'s rule on an
    OpenAI-format endpoint and Anthropic's on `/v1/messages`. `files`: what was read at upload of
    the files the request names by id (`media.upload_facts`; any other is `media.unread_file_tokens`).
    `referenced`: the tokens reserved for each stored item, prompt or audio answer it names by id
    (`references`; REFERENCE_TOKENS)."""
    if endpoint in ("messages", "messages/count_tokens"):
        # (count_tokens answers this figure to the client: a count of the body, never the reservation
        # of what the provider fetches, which Sentinel does not see)
        total = estimate_messages(counter, model, payload, user=user, images=ANTHROPIC if images is None else images)
        if endpoint == "messages":
            total += references(endpoint, payload) * referenced + _stop_sequences(counter, model, user, payload)
        return total
    rule = openai_image_rule(model) if images is None else images
    files = RequestFiles(files)  # (the bound of the files it cannot read is reserved once: `media.unread_bound`)
    if endpoint in ("chat", "native"):
        messages = payload.get("messages")
        tools = payload.get("tools")
        total = counter.count_chat(
            [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else [],
            model,
            tools if isinstance(tools, list) else None,
            user=user, images=rule, files=files,
        )
        # The legacy `functions` and a `response_format`'s schema reach the model as text too, and a
        # predicted output (`prediction.content`) is read as input.
        total += _as_json(counter, model, user, payload.get("functions"), payload.get("response_format"))
        prediction = payload.get("prediction")
        if isinstance(prediction, dict):
            total += sum(counter.count_text(text, model, user=user) for text in content_texts(prediction.get("content")))
        return total + references(endpoint, payload) * referenced
    if endpoint == "completions":
        prompt = payload.get("prompt")
        total = counter.count_prompt(_prompt(prompt), model, user=user)
        # Each prompt of a list is completed on its own, followed by the `suffix`: read once a prompt
        # (counted once, 2,048 prompts with a 4,000-token suffix reserved ~6,000 tokens of 8 million).
        suffix = payload.get("suffix")
        return total + (counter.count_text(suffix, model, user=user) * prompt_count(prompt)
                        if isinstance(suffix, str) else 0)
    if endpoint == "embeddings":
        return counter.count_prompt(_prompt(payload.get("input")), model, user=user)
    if endpoint == "responses":
        return _responses_input(counter, model, payload, user, rule, files) + references(endpoint, payload) * referenced
    return 0


def _stop_sequences(counter: TokenCounter, model: str, user: str | None, payload: dict[str, Any]) -> int:
    """The tokens of a `/v1/messages` body's stop sequences: Anthropic takes up to 8,191 of them (as
    does Sentinel, `anthropic_checks`; each at most MAX_STOP_CHARS characters, `openai_checks.check_stop`), which the provider reads and
    does not bill; reserved as input so that a body of thousands of them is held to the input limit
    like any other text (OpenAI's surfaces take at most 4, left uncounted)."""
    stops = payload.get("stop_sequences")  # (one encoder for them all: resolving it is most of a short one's count)
    return counter.count_prompt([text for text in stops if isinstance(text, str)] if isinstance(stops, list) else None,
                                model, user=user)


def references(endpoint: str, payload: dict[str, Any]) -> int:
    """How many things the request names that the provider holds and Sentinel cannot read, each
    reserved REFERENCE_TOKENS (or the configured figure): a Responses request's `item_reference`
    input items, its reusable prompt (`prompt.id`) and its `mcp` tools; a chat message's earlier
    audio answer (`audio.id`, which the model hears again); a Messages request's `mcp_servers`. The
    MCP servers (whose tool lists the provider fetches, `allowed_tools` or not: Sentinel sees their
    names at most, never their definitions) count up to MAX_MCP_SERVERS."""
    if endpoint in ("messages", "messages/count_tokens"):
        return _mcp_servers(payload.get("mcp_servers"))
    if endpoint in ("chat", "native"):
        messages = payload.get("messages")
        return sum(1 for message in messages if isinstance(message, dict) and _named(message.get("audio"))) \
            if isinstance(messages, list) else 0
    if endpoint != "responses":
        return 0
    tools = payload.get("tools")
    mcp = [tool for tool in tools if isinstance(tool, dict) and tool.get("type") == "mcp"] \
        if isinstance(tools, list) else []
    return item_references(payload.get("input")) + (1 if _named(payload.get("prompt")) else 0) + _mcp_servers(mcp)


def item_references(items: Any) -> int:
    """How many of a list of Responses items (a request's `input`, the `items` given to a
    conversation) name a stored item by id (`_item_reference`): its text is the provider's, which
    Sentinel cannot read — each is reserved REFERENCE_TOKENS (or the configured figure)."""
    return sum(1 for item in items if isinstance(item, dict) and _item_reference(item)) if isinstance(items, list) else 0


def _mcp_servers(servers: Any) -> int:
    """How many MCP servers `servers` (a list of server objects) names, at most MAX_MCP_SERVERS."""
    return min(MAX_MCP_SERVERS, sum(1 for server in servers if isinstance(server, dict))) \
        if isinstance(servers, list) else 0


def _item_reference(item: dict[str, Any]) -> bool:
    """Whether a Responses input item is an `item_reference`: its type says so, or — the type is
    optional, null or left out (`{"id": "msg_..."}`) — it is an id and no message (which has a role).
    Counted by its type alone, a reference without one passed any input limit."""
    kind = item.get("type")
    return kind == "item_reference" or (kind is None and "role" not in item and _named(item))


def _named(value: Any) -> bool:
    """Whether `value` is an object naming a stored one by its `id` (a non-empty string)."""
    return isinstance(value, dict) and isinstance(value.get("id"), str) and bool(value["id"])


def _prompt(value: Any) -> str | list[Any] | None:
    return value if isinstance(value, str | list) else None


def _as_json(counter: TokenCounter, model: str, user: str | None, *values: Any) -> int:
    """Tokens of each object or list among `values` as compact JSON (how tool-like definitions are
    estimated: the provider renders them in its own format)."""
    return sum(
        counter.count_text(json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str), model, user=user)
        for value in values if isinstance(value, dict | list) and value
    )


def _responses_input(
    counter: TokenCounter, model: str, payload: dict[str, Any], user: str | None, images: ImageRule, files: Files,
) -> int:
    count = _text_count(counter, model, user)
    instructions = payload.get("instructions")
    total = counter.count_text(instructions, model, user=user) if isinstance(instructions, str) else 0
    # Tool definitions and the output format's schema (`text.format`) reach the model as text.
    total += _as_json(counter, model, user, payload.get("tools"), payload.get("text"))
    # A reusable prompt's variables (strings or input_text parts) are filled into its text, and its
    # input_image and input_file variables into its content; the prompt's own text (`prompt.id`)
    # lives at the provider, reserved as a reference (`references`).
    prompt = payload.get("prompt")
    variables = prompt.get("variables") if isinstance(prompt, dict) else None
    if isinstance(variables, dict):
        values = [value for value in variables.values() if isinstance(value, str)]
        values += [value["text"] for value in variables.values()
                   if isinstance(value, dict) and value.get("type") == "input_text" and isinstance(value.get("text"), str)]
        total += sum(counter.count_text(text, model, user=user) for text in values)
        total += sum(part_tokens(value, images, count, files) for value in variables.values()
                     if isinstance(value, dict) and value.get("type") in ("input_image", "input_file"))
    items = payload.get("input")
    if isinstance(items, str):
        return total + counter.count_text(items, model, user=user) + 3
    if isinstance(items, list):
        # A message is an item with a role and no other type (a function output given a `role`
        # is still a function output: its `output` is read below, not skipped by the chat count).
        messages = [item for item in items if isinstance(item, dict) and "role" in item
                    and item.get("type", "message") == "message"]
        others = [item for item in items if isinstance(item, dict) and not (
            "role" in item and item.get("type", "message") == "message")]
        total += counter.count_chat(messages, model, user=user, images=images, files=files)
        # Function calls and their outputs, reasoning summaries, ...: their text (never a screenshot's
        # data URL, a file's base64 or a reasoning item's encrypted content, which are not text) and
        # their images and files.
        texts: list[str] = []
        for item in others:
            item_texts, media = _item_input(item, images, count, files)
            texts += item_texts
            total += media
        total += counter.count_text("\n".join(texts), model, user=user) if texts else 0
    return total


def _item_input(item: Any, images: ImageRule, count: TextCount, files: Files) -> tuple[list[str], int]:
    """What a Responses input item puts before the model (`items.item_text`): its text, keys
    included, and the tokens counted already (its scalars, images and files, under `images`; a text
    file's text by `count`, a file by id by its `files` facts)."""
    return item_text(item, images=images, count=count, files=files) if isinstance(item, dict) else ([], 0)


def _text_count(counter: TokenCounter, model: str, user: str | None) -> TextCount:
    """`counter`'s count of a text for `model` (a text file's, `media.file_tokens`)."""
    return functools.partial(_count_text, counter, model, user)


def _count_text(counter: TokenCounter, model: str, user: str | None, text: str) -> int:
    return counter.count_text(text, model, user=user)


def hides_output(endpoint: str, payload: dict[str, Any], *, reasons: bool = False, kind: str = "openai") -> bool:
    """Whether the request asks for output the provider bills but does not return as countable
    text (Anthropic's `thinking` — summarised or omitted since Claude 4 —, OpenAI's
    `reasoning_effort` on chat and `reasoning` on Responses; the reasoning an OpenAI-compatible server
    streams, turned off by the client — vLLM's and OpenRouter's `include_reasoning: false`,
    OpenRouter's `reasoning.exclude` —, generated and billed all the same; spoken output, `modalities`
    with `audio`, billed as audio tokens; a chat `prediction`, whose rejected tokens are billed as
    output but never streamed; legacy completions' `best_of` above `n`, whose candidates the provider
    generates and bills but does not return): text counted from what was streamed would leave it free.
    `reasons`: the model serving it (of wire format `kind`) reasons without being asked
    (`ModelTarget.reasons`: OpenAI's o-series, gpt-5): then it hides output unless the request turns
    reasoning off as that API allows (`reasoning_off`)."""
    if reasons and endpoint != "embeddings" and not reasoning_off(endpoint, payload, kind):
        return True
    if endpoint == "completions":
        n, best_of = payload.get("n"), payload.get("best_of")
        shown = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
        return isinstance(best_of, int) and not isinstance(best_of, bool) and best_of > shown
    if endpoint == "messages":
        thinking = payload.get("thinking")
        return isinstance(thinking, dict) and thinking.get("type") != "disabled"
    if endpoint == "chat":
        modalities = payload.get("modalities")
        speaks = isinstance(modalities, list) and "audio" in modalities
        prediction = payload.get("prediction")
        predicts = isinstance(prediction, dict) and any(content_texts(prediction.get("content")))
        reasoning = payload.get("reasoning")
        unshown = payload.get("include_reasoning") is False or (
            isinstance(reasoning, dict) and reasoning.get("exclude") is True)
        return speaks or predicts or unshown or payload.get("reasoning_effort") not in (None, "none")
    if endpoint == "responses":
        return isinstance(payload.get("reasoning"), dict) and not reasoning_off(endpoint, payload, kind)
    return False


def reasoning_off(endpoint: str, payload: dict[str, Any], kind: str = "openai") -> bool:
    """Whether the request turns a model's reasoning off, as the API it reaches (`kind`) allows: chat's
    `reasoning_effort: "none"` and Responses' `reasoning.effort: "none"` (`"minimal"` still reasons),
    and `thinking.type: "disabled"` relayed to an Anthropic-format provider. Nothing else does: a
    translation carries neither (`/v1/messages` to an OpenAI model drops `thinking`), and the
    native API and legacy completions have no such field."""
    if endpoint == "chat":
        return payload.get("reasoning_effort") == "none"
    if endpoint == "responses":
        reasoning = payload.get("reasoning")
        return isinstance(reasoning, dict) and reasoning.get("effort") == "none"
    if endpoint == "messages" and kind == "anthropic":
        thinking = payload.get("thinking")
        return isinstance(thinking, dict) and thinking.get("type") == "disabled"
    return False


# The fields each endpoint caps its output with (built once: a literal in `max_output` was rebuilt
# on every request).
_OUTPUT_CAPS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "chat": ("max_completion_tokens", "max_tokens"),
    "native": ("max_tokens",),
    "completions": ("max_tokens",),
    "responses": ("max_output_tokens",),
    "messages": ("max_tokens",),
})


def max_output(endpoint: str, payload: dict[str, Any], default: int) -> int:
    """The most output tokens the request can produce: its own cap (or `default`) times the number
    of completions it asks for (`n`, `best_of`), at most MAX_RESERVED_OUTPUT. A chat request giving
    both caps (`max_completion_tokens` and `max_tokens`; null is not set) reserves the larger: OpenAI
    refuses the pair, and the translation sends `max_completion_tokens` (`sentinel.native.openai_inbound`),
    but an OpenAI-compatible server that reads `max_tokens` alone generated up to it on a reservation
    of the other (`max_completion_tokens: 1, max_tokens: 100000` reserved 1)."""
    if endpoint == "embeddings":
        return 0
    keys = _OUTPUT_CAPS.get(endpoint, ())
    caps = [value for key in keys
            if isinstance(value := payload.get(key), int) and not isinstance(value, bool) and value > 0]
    cap = max(caps) if caps else 16 if endpoint == "completions" else default
    return min(cap * output_multiplier(endpoint, payload), MAX_RESERVED_OUTPUT)


@dataclass(frozen=True, slots=True)
class Rereads:
    """Steps of another model a request may run that each read its whole prompt again and write up
    to a cap (an Anthropic advisor tool's calls: `sentinel.native.advisor`): at most `uses` of them,
    each writing up to `output` tokens (None: not known, the default output cap)."""

    uses: int
    output: int | None = None


def rereads_reserved(rereads: Sequence[Rereads], estimate: int, default: int) -> tuple[int, int]:
    """(input, output) `rereads` may add to a request whose input is estimated at `estimate`: each use
    reads that input again and writes its cap (`default` when unknown); at most MAX_RESERVED_OUTPUT each."""
    uses = sum(each.uses for each in rereads)
    written = sum(each.uses * (default if each.output is None else each.output) for each in rereads)
    return min(uses * estimate, MAX_RESERVED_OUTPUT), min(written, MAX_RESERVED_OUTPUT)


# The endpoint a batch line's `url` runs, by the metered endpoint whose estimate it gets (a
# moderation reads its `input` as an embedding does, and writes no tokens).
BATCH_URLS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings",
              "/v1/responses": "responses", "/v1/moderations": "embeddings"}
_ANY_URL = ("chat", "responses", "completions", "embeddings")


def estimate_batch_line(
    counter: TokenCounter, url: Any, body: dict[str, Any], default: int, referenced: int = REFERENCE_TOKENS,
) -> tuple[int, int]:
    """(input, output) a batch line reserves: the estimate of its `body` as the metered endpoint its
    `url` names (`BATCH_URLS`) estimates it (`referenced` a stored thing it names), and its output
    cap or `default` — what the request sent alone would reserve. A `url` Sentinel does not know
    (the provider refuses it, or may run it as any) reserves the most any of those endpoints would."""
    model = body.get("model")
    model = model if isinstance(model, str) else ""
    endpoint = BATCH_URLS.get(url) if isinstance(url, str) else None
    endpoints = (endpoint,) if endpoint is not None else _ANY_URL
    return (max(estimate_input(counter, name, model, body, referenced=referenced) for name in endpoints),
            max(max_output(name, body, default) for name in endpoints))
