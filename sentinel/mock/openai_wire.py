"""OpenAI wire format: auth, error bodies, shared helpers and ``/v1/chat/completions``.

Shapes follow the real API: non-stream ``chat.completion`` objects with usage details, and SSE
streams of ``chat.completion.chunk`` objects (role first, one word per content delta, a finish
chunk, an optional usage-only chunk when ``stream_options.include_usage``, then ``[DONE]``).
Tool calls stream as ``delta.tool_calls`` fragments: index/id/type/name first, then arguments.
``n`` (1..128) repeats the answer per choice (each its share of ``call.answer_chars``, when set); ``logprobs``/``top_logprobs`` follow
`sentinel.mock.logprobs`; ``stream_options`` without ``stream`` is the real API's 400. After a run
of ``tool`` messages (parallel calls) the answer is ``Result: <their texts joined by " | ">``.
``response_format`` ``json_schema`` / ``json_object`` is answered as JSON text (`text.structured_text`);
``json_object`` without the word "json" in the messages, and ``json_schema`` without a ``json_schema``
object holding a ``name`` (of letters, digits, ``_`` and ``-``) and a ``schema`` object, are the real
API's 400s. The ``refusal`` knob answers `text.REFUSAL` as
the message's ``refusal`` (content null), streamed as ``refusal`` deltas.
"""

from __future__ import annotations

import hmac
import re
import time
from typing import Any

from sentinel.mock import logprobs
from sentinel.mock.asgi import DONE, ENDLESS_FRAGMENT, Call, Endless, JSONReply, Reply, SSEReply, sse
from sentinel.mock.faults import Faults, WireError
from sentinel.mock.text import (
    REFUSAL,
    TextOutput,
    dumps_arguments,
    echo_text,
    example_arguments,
    fragments,
    new_id,
    prompt_tokens,
    result_text,
    shape_text,
    share,
    stop_list,
    structured_text,
    tool_output_tokens,
)

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
FINGERPRINT = "fp_mock"
_TYPES = {401: "invalid_request_error", 403: "permission_error", 429: "requests"}
_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}
# OpenAI's rule for a chat message's `name` (its 400 quotes this pattern).
_MESSAGE_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")

def error_reply(err: WireError, request_id: str | None = None) -> JSONReply:
    """An error in OpenAI's shape ``{"error": {message, type, param, code}}`` (the id is a header only)."""
    if err.shape is not None:
        return _google_error(err)
    kind = _TYPES.get(err.status, "server_error" if err.status >= 500 else "invalid_request_error")
    body = {
        "error": {
            "message": err.message,
            "type": kind,
            "param": err.param,
            "code": err.code or _CODES.get(err.status),
        }
    }
    return JSONReply(body, err.status, err.headers)


# Google's canonical status names of the HTTP statuses (google.rpc.Code), as Gemini's errors carry them.
_GOOGLE_STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                    429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def _google_error(err: WireError) -> JSONReply:
    """An error in Google's shape (Gemini's; its OpenAI-compatible endpoint answers a list of one):
    ``{"error": {code, message, status, details}}``, `err.code` as the reason of its ``ErrorInfo``."""
    error: dict[str, Any] = {"code": err.status, "message": err.message,
                             "status": _GOOGLE_STATUSES.get(err.status, "UNKNOWN")}
    if err.code:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": err.code,
                             "domain": "googleapis.com"}]
    body: Any = {"error": error}
    return JSONReply([body] if err.shape == "google_list" else body, err.status, err.headers)


def authenticate(call: Call, api_key: str | None = None) -> None:
    """Require ``Authorization: Bearer <non-empty>`` like the real API (equal to `api_key` when set)."""
    scheme, _, token = call.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise WireError(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )
    if api_key is not None and not hmac.compare_digest(token.encode(), api_key.encode()):
        shown = f"{token[:3]}****{token[-4:]}" if len(token) > 8 else "****"
        raise WireError(401, f"Incorrect API key provided: {shown}.", code="invalid_api_key")


def json_object(call: Call) -> dict[str, Any]:
    """The body as a JSON object, or the real API's 400."""
    if call.json_error is not None or not isinstance(call.body, dict):
        raise WireError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means "
            "you aren't using your HTTP library correctly.)",
        )
    return call.body


def require_model(body: dict[str, Any]) -> str:
    """The ``model`` field (400 ``you must provide a model parameter`` when missing)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise WireError(400, "you must provide a model parameter", param="model")
    return model


def content_text(content: Any) -> str:
    """Text of a message content: a string, or the ``text`` of its text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def usage_block(prompt: int, completion: int) -> dict[str, Any]:
    """Chat/completions usage with the real API's detail objects."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def max_tokens_of(body: dict[str, Any], *names: str, default: int | None = None) -> int | None:
    """The first integer ``max_*tokens`` field present; a value below 1 is the real API's 400."""
    for name in names:
        value = body.get(name)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise WireError(
                    400,
                    f"Invalid '{name}': integer below minimum value.",
                    param=name,
                    code="integer_below_min_value",
                )
            return value
    return default


def include_usage(body: dict[str, Any]) -> bool:
    """Whether ``stream_options.include_usage`` asks for the final usage-only chunk."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def pick_tools(body: dict[str, Any], user_text: str, faults: Faults) -> list[tuple[str, str]]:
    """The deterministic tool calls (name, JSON arguments) for a chat request, or []."""
    tools = [
        t["function"]
        for t in body.get("tools") or []
        if isinstance(t, dict)
        and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
    ]
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return []
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        tools = [t for t in tools if t["name"] == wanted]
        if not tools:
            raise WireError(
                400, f"Invalid 'tool_choice': no function named {wanted!r} in 'tools'.", param="tool_choice"
            )
    parallel = faults.parallel_tools or (len(tools) >= 2 and "parallel" in user_text.lower())
    if not parallel or body.get("parallel_tool_calls") is False:
        tools = tools[:1]
    return [(t["name"], dumps_arguments(example_arguments(t.get("parameters")))) for t in tools]


def structured_format(body: dict[str, Any], texts: list[str]) -> tuple[str, Any] | None:
    """A chat request's ``response_format`` as (type, schema) when it asks for JSON, else None; the
    real API's 400 for a malformed one."""
    value = body.get("response_format")
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "json_object":
        if not any("json" in text.lower() for text in texts):
            raise WireError(400, "'messages' must contain the word 'json' in some form, to use 'response_format' of"
                            " type 'json_object'.", param="messages")
        return kind, None
    if kind != "json_schema":
        return None
    spec = value.get("json_schema") if isinstance(value, dict) else None
    if not isinstance(spec, dict):
        raise WireError(400, "Missing required parameter: 'response_format.json_schema'.",
                        param="response_format.json_schema", code="missing_required_parameter")
    if not isinstance(spec.get("name"), str):
        raise WireError(400, "Missing required parameter: 'response_format.json_schema.name'.",
                        param="response_format.json_schema.name", code="missing_required_parameter")
    if not _SCHEMA_NAME.fullmatch(spec["name"]):
        raise WireError(400, "Invalid 'response_format.json_schema.name': string does not match pattern."
                        " Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                        param="response_format.json_schema.name", code="invalid_value")
    if not isinstance(spec.get("schema"), dict):
        raise WireError(400, "Missing required parameter: 'response_format.json_schema.schema'.",
                        param="response_format.json_schema.schema", code="missing_required_parameter")
    return kind, spec["schema"]


_SCHEMA_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def _trailing_tool_results(messages: list[dict[str, Any]], texts: list[str]) -> list[str]:
    """Texts of the tool messages ending the conversation (parallel calls answer in a row)."""
    results: list[str] = []
    for entry, text in zip(reversed(messages), reversed(texts), strict=True):
        if entry["role"] not in ("tool", "function"):
            break
        results.append(text)
    return results[::-1]


def chat_completions(call: Call) -> Reply:
    """POST /v1/chat/completions (plain, streamed, tool calls)."""
    body = json_object(call)
    model = require_model(body)
    messages = body.get("messages")
    if messages is None:
        raise WireError(
            400,
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    if not isinstance(messages, list) or not messages:
        raise WireError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            param="messages",
            code="empty_array",
        )
    texts: list[str] = []
    user_text = ""
    for i, entry in enumerate(messages):
        role = entry.get("role") if isinstance(entry, dict) else None
        if not isinstance(role, str) or role not in ROLES:
            raise WireError(
                400,
                f"Invalid value for 'messages[{i}].role'.",
                param=f"messages[{i}].role",
                code="invalid_value",
            )
        name = entry.get("name")
        if name is not None and not (isinstance(name, str) and _MESSAGE_NAME.fullmatch(name)):
            raise WireError(
                400,
                f"Invalid 'messages[{i}].name': string does not match pattern. Expected a string that matches"
                f" the pattern '{_MESSAGE_NAME.pattern}'.",
                param=f"messages[{i}].name",
                code="invalid_value",
            )
        texts.append(content_text(entry.get("content")))
        if entry["role"] == "user":
            user_text = texts[-1]
    faults = call.resolve_faults(user_text)
    n = body.get("n") or 1
    if not isinstance(n, int) or not 1 <= n <= 128:
        raise WireError(400, "Invalid 'n': must be between 1 and 128.", param="n")
    limit = max_tokens_of(body, "max_completion_tokens", "max_tokens")
    top = logprobs.requested(body)
    if body.get("stream_options") is not None and not body.get("stream"):
        raise WireError(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    calls: list[tuple[str, str]] = []
    results = _trailing_tool_results(messages, texts)
    if results:
        answer = result_text(" | ".join(results))
    else:
        answer = echo_text(user_text)
        calls = pick_tools(body, user_text, faults)
    structured = structured_format(body, texts)
    refused = faults.refusal and not calls
    if refused:
        answer = REFUSAL
    elif structured is not None and not calls:
        answer = structured_text(*structured, answer) or answer
    output = shape_text(answer, limit, stop_list(body.get("stop")), room=share(call.answer_chars, n))
    prompt = prompt_tokens(texts, body.get("tools"))
    completion = sum(tool_output_tokens(*c) for c in calls) if calls else output.tokens
    usage = None if faults.no_usage else usage_block(prompt, completion * n)
    tool_calls = [
        {"id": new_id("call_"), "type": "function", "function": {"name": name, "arguments": args}}
        for name, args in calls
    ]
    head = {
        "id": new_id("chatcmpl-"),
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": FINGERPRINT,
    }
    if body.get("stream"):
        include = include_usage(body)
        return _chat_stream(head, n, output, tool_calls, usage if include else None, include, top, refused)
    reason = "tool_calls" if tool_calls else ("length" if output.reason == "length" else "stop")
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if tool_calls or refused else output.text,
        "refusal": output.text if refused else None,
        "annotations": [],
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    lp = logprobs.choice_logprobs(output.pieces, top, bool(tool_calls), "refusal" if refused else "content")
    choices = [{"index": i, "message": message, "logprobs": lp, "finish_reason": reason} for i in range(n)]
    result = {
        "id": head["id"],
        "object": "chat.completion",
        **head,
        "choices": choices,
        "service_tier": "default",
    }
    if usage is not None:
        result["usage"] = usage
    return JSONReply(result)


def _chat_stream(
    head: dict[str, Any],
    n: int,
    output: TextOutput,
    tool_calls: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    include_usage: bool,
    top: int | None,
    refused: bool = False,
) -> SSEReply:
    base = {"id": head["id"], "object": "chat.completion.chunk", **head}
    null_usage = {"usage": None} if include_usage and usage is not None else {}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, lp: Any = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}
        return sse({**base, "choices": [choice], **null_usage})

    events: list[bytes] = []
    endless: Endless | None = None
    for i in range(n):
        if tool_calls:
            for k, tc in enumerate(tool_calls):
                first = {
                    "index": k,
                    "id": tc["id"],
                    "type": "function",
                    "function": {"name": tc["function"]["name"], "arguments": ""},
                }
                delta: dict[str, Any] = {"tool_calls": [first]}
                if k == 0:
                    delta = {"role": "assistant", "content": None, **delta, "refusal": None}
                events.append(chunk(i, delta))
                events.extend(
                    chunk(i, {"tool_calls": [{"index": k, "function": {"arguments": part}}]})
                    for part in fragments(tc["function"]["arguments"])
                )
            if endless is None:  # (`endless_tool_args`: the first choice's last call goes on)
                more = {"tool_calls": [{"index": len(tool_calls) - 1, "function": {"arguments": ENDLESS_FRAGMENT}}]}
                endless = Endless(len(events), chunk(i, more))
            events.append(chunk(i, {}, "tool_calls"))
            continue
        key = "refusal" if refused else "content"
        events.append(chunk(i, {"role": "assistant", "content": None if refused else "",
                                "refusal": "" if refused else None}))
        events.extend(
            chunk(i, {key: p}, None, None if top is None else {key: [logprobs.entry(p, top)]})
            for p in output.pieces
        )
        events.append(chunk(i, {}, "length" if output.reason == "length" else "stop"))
    if usage is not None:
        events.append(sse({**base, "choices": [], "usage": usage}))
    events.append(DONE)
    return SSEReply(events, 1, endless)
