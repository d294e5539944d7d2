"""Anthropic wire format: auth, error bodies, ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

Requests are validated by `sentinel.mock.anthropic_prompt`; ``cache_control`` blocks are priced by
`sentinel.mock.prompt_cache`. Errors are ``{"type": "error", "error": {type, message},
"request_id"}`` with the real status/type pairs (400 invalid_request_error, 401
authentication_error, 403 permission_error, 404 not_found_error, 413 request_too_large, 429
rate_limit_error, 529 overloaded_error, other 5xx api_error).

The stream is the real named-event sequence: ``message_start`` (usage with the input and cache
figures), per block ``content_block_start`` / ``content_block_delta`` (``text_delta`` one word
each, or ``input_json_delta`` fragments) / ``content_block_stop`` with one ``ping`` after the first
block start, then ``message_delta`` (stop_reason, stop_sequence and the final usage totals) and
``message_stop`` — or, under the ``error_after`` knob, an ``error`` event (``overloaded_error``) instead
of the rest.

Tools: with ``tools`` given the answer is a ``tool_use`` block for the first tool (or the one
``tool_choice`` names), its input built from the schema's required properties; every tool gets a
block (parallel) under the ``parallel_tools`` knob, or with two or more tools and "parallel" in the
user text, unless ``disable_parallel_tool_use``. A last user turn holding ``tool_result`` blocks is
answered with text: ``Result: <each result's text, joined by " | ">``. A structured output
(``output_config.format``, the beta's ``output_format``: ``{"type": "json_schema", "schema": ...}``) is
answered as JSON text fitting the schema (`text.structured_text`); one of another type or without a
``schema`` object is the real API's 400.
"""

from __future__ import annotations

import hmac
from typing import Any

from sentinel.mock.anthropic_prompt import Prompt, parse
from sentinel.mock.asgi import ENDLESS_FRAGMENT, Call, Endless, JSONReply, Reply, SSEReply, sse
from sentinel.mock.faults import Faults, WireError
from sentinel.mock.prompt_cache import CacheUsage, PromptCache, breakpoints
from sentinel.mock.text import (
    TextOutput,
    dumps_arguments,
    echo_text,
    example_arguments,
    fragments,
    new_id,
    result_text,
    shape_text,
    stop_list,
    structured_text,
    tool_output_tokens,
)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_DELTA_USAGE = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens",
                "iterations")
# Context compaction (`context_management.edits` with a `compact_20260112` edit): a prompt at or past
# its trigger (`{"type": "input_tokens", "value": N}`, 150,000 by default; the mock takes any N) is
# summarised first, in a step of its own: the answer opens with a `compaction` block, the top-level
# usage counts the answer's step alone (it read the summary), and `usage.iterations` gives both —
# the compaction's tokens, as Anthropic's docs say, "are not included in the top-level usage fields".
COMPACTION_SUMMARY = "Summary of the conversation so far."
COMPACTION_OUTPUT_TOKENS = 7
_COMPACTION_TRIGGER = 150_000
_STOP = {"stop": "end_turn", "length": "max_tokens", "stop_sequence": "stop_sequence"}


def error_reply(err: WireError, request_id: str | None = None) -> JSONReply:
    """An error in Anthropic's shape ``{"type": "error", "error": {type, message}, "request_id"}``."""
    kind = _TYPES.get(err.status, "api_error" if err.status >= 500 else "invalid_request_error")
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": err.message}}
    if request_id is not None:
        body["request_id"] = request_id
    return JSONReply(body, err.status, err.headers)


def authenticate(call: Call, api_key: str | None = None) -> None:
    """Require a key (401) and ``anthropic-version`` (400) like the real API.

    The key is ``x-api-key`` or ``Authorization: Bearer`` (anthropic SDK 2.x sends API keys as
    Bearer tokens; the real API takes both). With `api_key` configured, the key must equal it.
    """
    scheme, _, token = call.headers.get("authorization", "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else ""
    given = call.headers.get("x-api-key", "").strip() or bearer
    if not given:
        raise WireError(401, "x-api-key header is required")
    if api_key is not None and not hmac.compare_digest(given.encode(), api_key.encode()):
        raise WireError(401, "invalid x-api-key")
    if not call.headers.get("anthropic-version", "").strip():
        raise WireError(400, "anthropic-version: header is required")


def _tool_uses(body: dict[str, Any], user_text: str, faults: Faults) -> list[dict[str, Any]]:
    tools = [
        t
        for t in body.get("tools") or []
        if isinstance(t, dict) and isinstance(t.get("name"), str) and t.get("type", "custom") == "custom"
    ]
    raw_choice = body.get("tool_choice")
    choice: dict[str, Any] = raw_choice if isinstance(raw_choice, dict) else {}
    if not tools or choice.get("type") == "none":
        return []
    if choice.get("type") == "tool":
        tools = [t for t in tools if t["name"] == choice.get("name")]
        if not tools:
            raise WireError(400, f"tool_choice: tool {choice.get('name')!r} not found in tools")
    parallel = faults.parallel_tools or (len(tools) >= 2 and "parallel" in user_text.lower())
    if not parallel or choice.get("disable_parallel_tool_use"):
        tools = tools[:1]
    return [
        {
            "type": "tool_use",
            "id": new_id("toolu_"),
            "name": t["name"],
            "input": example_arguments(t.get("input_schema")),
        }
        for t in tools
    ]


def count_tokens(call: Call) -> Reply:
    """POST /v1/messages/count_tokens: the input-token rule applied to a messages body."""
    prompt = parse(call.body, call.json_error, need_max_tokens=False)
    call.resolve_faults("")
    return JSONReply({"input_tokens": prompt.input_tokens})


def _output_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """The structured output a body asks for: ``output_config.format``, else the beta's ``output_format``;
    the real API's 400 for one that is not ``{"type": "json_schema", "schema": {...}}``."""
    config = body.get("output_config")
    at, format_ = "output_config.format", config.get("format") if isinstance(config, dict) else None
    if format_ is None:
        at, format_ = "output_format", body.get("output_format")
    if format_ is None:
        return None
    if not isinstance(format_, dict) or format_.get("type") != "json_schema":
        raise WireError(400, f"{at}.type: Input should be 'json_schema'")
    if not isinstance(format_.get("schema"), dict):
        raise WireError(400, f"{at}.schema: Field required")
    return format_


def _answer(prompt: Prompt, faults: Faults, room: int | None) -> tuple[TextOutput, list[dict[str, Any]]]:
    body = prompt.body
    stops = stop_list(body.get("stop_sequences"))
    format_ = _output_format(body)
    if prompt.tool_results is not None:
        answer = result_text(" | ".join(prompt.tool_results))
        uses: list[dict[str, Any]] = []
    else:
        answer = echo_text(prompt.user_text)
        uses = _tool_uses(body, prompt.user_text, faults)
    if format_ is not None:
        answer = structured_text("json_schema", format_.get("schema"), answer) or answer
    return shape_text(answer, body["max_tokens"], stops, room), uses


def messages(call: Call, cache: PromptCache) -> Reply:
    """POST /v1/messages (plain, streamed, tool_use, stop_sequences, cache_control)."""
    prompt = parse(call.body, call.json_error, need_max_tokens=True)
    faults = call.resolve_faults(prompt.user_text)
    points = breakpoints(prompt)
    output, uses = _answer(prompt, faults, call.answer_chars)
    cached: CacheUsage = cache.lookup(points)
    if faults.error() is None:
        cache.store(points)
    completion = (
        sum(tool_output_tokens(u["name"], dumps_arguments(u["input"])) for u in uses) or output.tokens
    )
    body = prompt.body
    message: dict[str, Any] = {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": uses or [{"type": "text", "text": output.text}],
        "stop_reason": "tool_use" if uses else _STOP[output.reason],
        "stop_sequence": None if uses else output.stop_sequence,
    }
    compacted = _compacts(body, prompt.input_tokens)
    if compacted:
        message["content"] = [{"type": "compaction", "content": COMPACTION_SUMMARY}, *message["content"]]
    if not faults.no_usage:
        read = COMPACTION_OUTPUT_TOKENS if compacted else prompt.input_tokens  # the step's own input
        message["usage"] = {
            **cached.usage_fields(read),
            "output_tokens": completion,
            "service_tier": "standard",
        }
        if compacted:
            steps = [("compaction", prompt.input_tokens, COMPACTION_OUTPUT_TOKENS), ("message", read, completion)]
            message["usage"]["iterations"] = [
                {"type": kind, "input_tokens": tokens, "output_tokens": out, "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens": 0} for kind, tokens, out in steps
            ]
    if body.get("stream"):
        return _stream(message, output)
    return JSONReply(message)


def _compacts(body: dict[str, Any], input_tokens: int) -> bool:
    """Whether the request asks for compaction and its prompt reached the trigger."""
    management = body.get("context_management")
    edits = management.get("edits") if isinstance(management, dict) else None
    for edit in edits if isinstance(edits, list) else ():
        if isinstance(edit, dict) and edit.get("type") == "compact_20260112":
            trigger = edit.get("trigger")
            value = trigger.get("value") if isinstance(trigger, dict) else None
            return input_tokens >= (value if isinstance(value, int) else _COMPACTION_TRIGGER)
    return False


def _stream(message: dict[str, Any], output: TextOutput) -> SSEReply:
    start: dict[str, Any] = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    if "usage" in message:
        # (the steps are known at the end: `iterations` comes in message_delta alone)
        start["usage"] = {**{k: v for k, v in message["usage"].items() if k != "iterations"}, "output_tokens": 1}
    events = [sse({"type": "message_start", "message": start}, "message_start")]
    endless: Endless | None = None  # (`endless_tool_args`: the last tool_use block goes on)
    for index, block in enumerate(message["content"]):
        opening: dict[str, Any]
        deltas: list[dict[str, Any]]
        if block["type"] == "compaction":  # whole at its start
            opening, deltas = block, []
        elif block["type"] == "text":
            opening = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in output.pieces]
        else:
            opening = {**block, "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": part}
                for part in fragments(dumps_arguments(block["input"]))
            ]
        events.append(
            sse(
                {"type": "content_block_start", "index": index, "content_block": opening},
                "content_block_start",
            )
        )
        if index == 0:
            events.append(sse({"type": "ping"}, "ping"))
        events.extend(
            sse({"type": "content_block_delta", "index": index, "delta": d}, "content_block_delta")
            for d in deltas
        )
        if block["type"] == "tool_use":
            more = {"type": "input_json_delta", "partial_json": ENDLESS_FRAGMENT}
            endless = Endless(len(events), sse({"type": "content_block_delta", "index": index, "delta": more},
                                               "content_block_delta"))
        events.append(sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
    final: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]},
    }
    if "usage" in message:
        usage = message["usage"]
        final["usage"] = {k: usage[k] for k in _DELTA_USAGE if k in usage}
    events.append(sse(final, "message_delta"))
    events.append(sse({"type": "message_stop"}, "message_stop"))
    return SSEReply(events, 3, endless, OVERLOADED_EVENT)


# What Anthropic sends when it cannot finish a stream it began (`error_after`), its status line long gone.
OVERLOADED_EVENT = sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
                        "request_id": "req_mock_overloaded"}, "error")
