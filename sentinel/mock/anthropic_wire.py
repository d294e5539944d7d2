"""Anthropic wire format: auth, error bodies, ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

The stream is the real named-event sequence: ``message_start``, per block ``content_block_start`` /
``content_block_delta`` (``text_delta`` one word each, or ``input_json_delta`` fragments) /
``content_block_stop`` with one ``ping`` after the first block start, then ``message_delta``
(stop_reason, usage.output_tokens) and ``message_stop``.

Tools: with ``tools`` given the answer is a ``tool_use`` block for the first tool (or the one
``tool_choice`` names), its input built from the schema's required properties; every tool gets a
block (parallel) under the ``parallel_tools`` knob, or with two or more tools and "parallel" in the
user text, unless ``disable_parallel_tool_use``. A last user turn holding a ``tool_result`` is
answered with text.
"""

from __future__ import annotations

from typing import Any

from sentinel.mock.asgi import Call, JSONReply, Reply, SSEReply, sse
from sentinel.mock.faults import Faults, WireError
from sentinel.mock.text import (
    TextOutput,
    dumps_arguments,
    echo_text,
    example_arguments,
    fragments,
    new_id,
    prompt_tokens,
    result_text,
    shape_text,
    stop_list,
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
_STOP = {"stop": "end_turn", "length": "max_tokens", "stop_sequence": "stop_sequence"}


def error_reply(err: WireError) -> JSONReply:
    """An error in Anthropic's shape ``{"type": "error", "error": {type, message}}``."""
    kind = _TYPES.get(err.status, "api_error" if err.status >= 500 else "invalid_request_error")
    body = {"type": "error", "error": {"type": kind, "message": err.message}}
    return JSONReply(body, err.status, err.headers)


def authenticate(call: Call) -> None:
    """Require a key (401) and ``anthropic-version`` (400) like the real API.

    The key is ``x-api-key`` or ``Authorization: Bearer`` (anthropic SDK 2.x sends API keys as
    Bearer tokens; the real API takes both).
    """
    scheme, _, token = call.headers.get("authorization", "").partition(" ")
    bearer = scheme.lower() == "bearer" and token.strip()
    if not (call.headers.get("x-api-key", "").strip() or bearer):
        raise WireError(401, "x-api-key header is required")
    if not call.headers.get("anthropic-version", "").strip():
        raise WireError(400, "anthropic-version: header is required")


def block_text(content: Any) -> str:
    """Text of a content: a string, or its ``text`` blocks joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            b["text"]
            for b in content
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        )
    return ""


def _parse(call: Call, need_max_tokens: bool) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    body = call.body
    if call.json_error is not None or not isinstance(body, dict):
        raise WireError(400, "There was an error parsing the body of your request as JSON")
    names = ("model", "max_tokens", "messages") if need_max_tokens else ("model", "messages")
    for name in names:
        if name not in body:
            raise WireError(400, f"{name}: Field required")
    if not isinstance(body["model"], str) or not body["model"]:
        raise WireError(400, "model: Input should be a valid string")
    max_tokens = body.get("max_tokens")
    if need_max_tokens and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise WireError(400, "max_tokens: Input should be greater than or equal to 1")
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise WireError(400, "messages: at least one message is required")
    texts = [block_text(body.get("system"))] if body.get("system") else []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise WireError(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
        texts.append(block_text(message.get("content")))
    return body, messages, texts


def _tool_result(message: dict[str, Any]) -> str | None:
    content = message.get("content")
    if message.get("role") != "user" or not isinstance(content, list):
        return None
    for block in content:
        if isinstance(block, dict) and block.get("type") == "tool_result":
            return block_text(block.get("content"))
    return None


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
    body, _, texts = _parse(call, need_max_tokens=False)
    call.resolve_faults("")
    return JSONReply({"input_tokens": prompt_tokens(texts, body.get("tools"))})


def messages(call: Call) -> Reply:
    """POST /v1/messages (plain, streamed, tool_use, stop_sequences)."""
    body, history, texts = _parse(call, need_max_tokens=True)
    user_text = next((block_text(m.get("content")) for m in reversed(history) if m["role"] == "user"), "")
    faults = call.resolve_faults(user_text)
    tool_text = _tool_result(history[-1])
    uses: list[dict[str, Any]] = []
    if tool_text is not None:
        output = shape_text(result_text(tool_text), body["max_tokens"], stop_list(body.get("stop_sequences")))
    else:
        output = shape_text(echo_text(user_text), body["max_tokens"], stop_list(body.get("stop_sequences")))
        uses = _tool_uses(body, user_text, faults)
    completion = (
        sum(tool_output_tokens(u["name"], dumps_arguments(u["input"])) for u in uses) or output.tokens
    )
    usage = (
        None
        if faults.no_usage
        else {
            "input_tokens": prompt_tokens(texts, body.get("tools")),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": completion,
            "service_tier": "standard",
        }
    )
    message: dict[str, Any] = {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": uses or [{"type": "text", "text": output.text}],
        "stop_reason": "tool_use" if uses else _STOP[output.reason],
        "stop_sequence": None if uses else output.stop_sequence,
    }
    if usage is not None:
        message["usage"] = usage
    if body.get("stream"):
        return _stream(message, output)
    return JSONReply(message)


def _stream(message: dict[str, Any], output: TextOutput) -> SSEReply:
    start: dict[str, Any] = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    if "usage" in message:
        start["usage"] = {**message["usage"], "output_tokens": 1}
    events = [sse({"type": "message_start", "message": start}, "message_start")]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            opening: dict[str, Any] = {"type": "text", "text": ""}
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
        events.append(sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
    final: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]},
    }
    if "usage" in message:
        final["usage"] = {"output_tokens": message["usage"]["output_tokens"]}
    events.append(sse(final, "message_delta"))
    events.append(sse({"type": "message_stop"}, "message_stop"))
    return SSEReply(events, 3)
