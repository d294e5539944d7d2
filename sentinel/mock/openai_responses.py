"""OpenAI wire format: ``POST /v1/responses`` (the Responses API), plain and streamed.

The stream is the real named-event sequence: ``response.created``, ``response.in_progress``, then
per output item ``response.output_item.added`` / ``response.content_part.added`` /
``response.output_text.delta``… / ``response.output_text.done`` / ``response.content_part.done`` /
``response.output_item.done`` (function calls use ``response.function_call_arguments.delta`` /
``.done``), and finally ``response.completed`` (``response.incomplete`` when ``max_output_tokens``
cut the text) carrying the usage.

A request with an ``image_generation`` tool is answered an ``image_generation_call`` item (``ig_…``)
before the message, its ``result`` a base64 image of IMAGE_BYTES bytes, as large as the provider's
(1.5–3 MB of base64): the whole answer is over 1 MiB.

``text.format`` ``json_schema`` (``name`` and ``schema`` beside ``type``, as the Responses API
takes them) or ``json_object`` is answered as JSON text (`text.structured_text`), and the response's
``text`` carries the format as asked; a ``json_schema`` format without a ``name`` is the real API's 400.
The ``refusal`` knob answers a ``refusal`` part (`text.REFUSAL`), streamed as ``response.refusal.delta``
events and a ``response.refusal.done``.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

from sentinel.mock.asgi import Call, JSONReply, Reply, SSEReply, sse
from sentinel.mock.faults import Faults, WireError
from sentinel.mock.openai_wire import content_text, json_object, max_tokens_of, require_model
from sentinel.mock.text import (
    REFUSAL,
    dumps_arguments,
    echo_text,
    example_arguments,
    fragments,
    new_id,
    prompt_tokens,
    result_text,
    shape_text,
    structured_text,
    tool_output_tokens,
)


def _items(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and all(isinstance(i, dict) for i in value):
        return value
    if value is None:
        raise WireError(
            400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )
    raise WireError(
        400,
        "Invalid type for 'input': expected a string or an array of input items.",
        param="input",
        code="invalid_type",
    )


# The image an `image_generation` tool draws: a PNG's signature, then bytes (base64: ~1.6 MB).
IMAGE_BYTES = 1_200_000


def _images(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The `image_generation_call` items a request with an `image_generation` tool is answered."""
    tools = body.get("tools") or []
    if not any(isinstance(t, dict) and t.get("type") == "image_generation" for t in tools):
        return []
    image = b"\x89PNG\r\n\x1a\n" + bytes(IMAGE_BYTES - 8)
    return [{"type": "image_generation_call", "id": new_id("ig_"), "status": "completed",
             "result": base64.b64encode(image).decode("ascii")}]


def _function_calls(body: dict[str, Any], user_text: str, faults: Faults) -> list[dict[str, Any]]:
    tools = [
        t
        for t in body.get("tools") or []
        if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("name"), str)
    ]
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return []
    if isinstance(choice, dict) and choice.get("type") == "function":
        tools = [t for t in tools if t["name"] == choice.get("name")] or tools[:1]
    parallel = faults.parallel_tools or (len(tools) >= 2 and "parallel" in user_text.lower())
    if not parallel or body.get("parallel_tool_calls") is False:
        tools = tools[:1]
    return [
        {
            "type": "function_call",
            "id": new_id("fc_"),
            "call_id": new_id("call_"),
            "name": t["name"],
            "arguments": dumps_arguments(example_arguments(t.get("parameters"))),
            "status": "completed",
        }
        for t in tools
    ]


def _text_format(body: dict[str, Any]) -> dict[str, Any]:
    """The request's ``text.format`` (``{"type": "text"}`` when none); the real API's 400 for a
    ``json_schema`` one without a ``name``."""
    text = body.get("text")
    format_ = text.get("format") if isinstance(text, dict) else None
    if not isinstance(format_, dict):
        return {"type": "text"}
    if format_.get("type") == "json_schema" and not isinstance(format_.get("name"), str):
        raise WireError(400, "Missing required parameter: 'text.format.name'.", param="text.format.name",
                        code="missing_required_parameter")
    return format_


def responses(call: Call, keep: Callable[[dict[str, Any], list[dict[str, Any]]], None] | None = None) -> Reply:
    """POST /v1/responses; `keep(response, input_items)` stores it unless the request says `store: false`."""
    body = json_object(call)
    model = require_model(body)
    items = _items(body.get("input"))
    texts = [content_text(i.get("content")) for i in items if "role" in i]
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        texts.insert(0, instructions)
    user_text = next((content_text(i.get("content")) for i in reversed(items) if i.get("role") == "user"), "")
    faults = call.resolve_faults(user_text)
    limit = max_tokens_of(body, "max_output_tokens")
    last = items[-1] if items else {}
    calls: list[dict[str, Any]] = []
    if last.get("type") == "function_call_output":
        answer = result_text(str(last.get("output", "")))
    else:
        answer = echo_text(user_text)
        calls = _function_calls(body, user_text, faults)
    format_ = _text_format(body)
    refused = faults.refusal and not calls
    if refused:
        answer = REFUSAL
    else:
        answer = structured_text(format_.get("type"), format_.get("schema"), answer) or answer
    output = shape_text(answer, limit, room=call.answer_chars)
    prompt = prompt_tokens(texts, body.get("tools"))
    completion = sum(tool_output_tokens(c["name"], c["arguments"]) for c in calls) if calls else output.tokens
    usage = (
        None
        if faults.no_usage
        else {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion,
        }
    )
    message = {
        "type": "message",
        "id": new_id("msg_"),
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "refusal", "refusal": output.text} if refused else
                    {"type": "output_text", "text": output.text, "annotations": [], "logprobs": []}],
    }
    outputs = calls or [*_images(body), message]
    incomplete = not calls and output.reason == "length"
    if incomplete:
        message["status"] = "incomplete"
    final = _envelope(body, model, "incomplete" if incomplete else "completed", outputs, usage)
    if keep is not None and body.get("store") is not False:
        keep(final, items)
    if not body.get("stream"):
        return JSONReply(final)
    return _stream(final, output.pieces)


def _envelope(
    body: dict[str, Any], model: str, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "id": new_id("resp_"),
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": _text_format(body)},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": usage,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def _stream(final: dict[str, Any], pieces: list[str]) -> SSEReply:
    events: list[bytes] = []

    def emit(kind: str, **fields: Any) -> None:
        events.append(sse({"type": kind, "sequence_number": len(events), **fields}, kind))

    started = {**final, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}
    emit("response.created", response=started)
    emit("response.in_progress", response=started)
    delta_index = len(events) + 2
    for index, item in enumerate(final["output"]):
        if item["type"] == "image_generation_call":
            emit("response.output_item.added", output_index=index,
                 item={**item, "status": "in_progress", "result": None})
            emit("response.output_item.done", output_index=index, item=item)
            continue
        if item["type"] == "function_call":
            emit(
                "response.output_item.added",
                output_index=index,
                item={**item, "arguments": "", "status": "in_progress"},
            )
            for part in fragments(item["arguments"]):
                emit(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=part,
                )
            emit(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                name=item["name"],
                arguments=item["arguments"],
            )
            emit("response.output_item.done", output_index=index, item=item)
            continue
        where = {"item_id": item["id"], "output_index": index, "content_index": 0}
        part = item["content"][0]
        emit(
            "response.output_item.added",
            output_index=index,
            item={**item, "status": "in_progress", "content": []},
        )
        if part["type"] == "refusal":
            emit("response.content_part.added", **where, part={**part, "refusal": ""})
            for piece in pieces:
                emit("response.refusal.delta", **where, delta=piece)
            emit("response.refusal.done", **where, refusal=part["refusal"])
        else:
            emit("response.content_part.added", **where, part={**part, "text": ""})
            for piece in pieces:
                emit("response.output_text.delta", **where, delta=piece, logprobs=[])
            emit("response.output_text.done", **where, text=part["text"], logprobs=[])
        emit("response.content_part.done", **where, part=part)
        emit("response.output_item.done", output_index=index, item=item)
    emit("response.completed" if final["status"] == "completed" else "response.incomplete", response=final)
    deltas = (b"event: response.output_text.delta", b"event: response.refusal.delta")
    first_delta = next((i for i, event in enumerate(events) if event.split(b"\n", 1)[0] in deltas), delta_index - 1)
    return SSEReply(events, first_delta)
