"""OpenAI's chat-completions wire format as a client speaks it: request in, completion out.

Used when an OpenAI client's model lives on a provider of another wire format: the request becomes a
`ModelChatRequest`, and the provider's unified answer becomes a `chat.completion` body (a stream's
unified chunks already are OpenAI chunks). A field that cannot be carried to the other format is a
`NativeValidationError` naming it — never silently dropped; a field whose value changes nothing
(`n: 1`, `logprobs: false`, a zero penalty, ...) is accepted. `developer` messages are system
messages; tool-call arguments (JSON strings) must be JSON objects. A `response_format` of
`json_schema` is a structured output (its `name` and `strict` carry nothing to Claude, which has no
label and always enforces the schema); `json_object` asks for JSON of no schema, which Claude has no
mode for: refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from pydantic import ValidationError

from sentinel.native.errors import TranslationError, invalid
from sentinel.native.model_request import ModelChatRequest
from sentinel.native.openai import parse_arguments
from sentinel.native.responses import CacheTokens, ProviderReply, Usage
from sentinel.native.validation import to_native_error

# Copied as they are (validated by ModelChatRequest).
_KEPT = ("model", "temperature", "top_p", "stop", "stream", "tool_choice", "parallel_tool_calls")
# The end user the client names: never sent on (the end user a provider is told of is Sentinel's
# pseudonym of the caller: `sentinel.native.end_user`), whatever it holds.
_END_USER = ("user", "safety_identifier")


def _none(value: Any) -> bool:
    return value is None


def _is(*allowed: Any) -> Callable[[Any], bool]:
    return lambda value: value is None or any(value == a and type(value) is type(a) for a in allowed)


# Fields accepted only with a value that changes nothing on any provider.
_NO_OPS: dict[str, Callable[[Any], bool]] = {
    "n": _is(1),
    "logprobs": _is(False),
    "top_logprobs": _none,
    "frequency_penalty": _is(0, 0.0),
    "presence_penalty": _is(0, 0.0),
    "logit_bias": lambda v: v is None or v == {},
    "seed": _none,
    "store": _is(False),
    "metadata": lambda v: v is None or v == {},
    "service_tier": _is("auto", "default"),
    "modalities": lambda v: v is None or v == ["text"],
    "prediction": _none,
    "audio": _none,
    "reasoning_effort": _none,
    "web_search_options": _none,
    "prompt_cache_key": _none,
    "verbosity": _none,
    "functions": _none,
    "function_call": _none,
}
_STREAM_OPTIONS = frozenset({"include_usage", "include_obfuscation"})
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


def parse_openai_chat(payload: dict[str, Any], *, target: str) -> ModelChatRequest:
    """An OpenAI chat-completions body as a unified request; `target` names the provider's wire format
    in error messages. Raise NativeValidationError naming the first field that cannot be translated."""
    out: dict[str, Any] = {key: payload[key] for key in _KEPT if key in payload and payload[key] is not None}
    for key, value in payload.items():
        if key in _KEPT or key in ("messages", "max_tokens", "max_completion_tokens", "tools", "stream_options",
                                   "response_format"):
            continue
        if key in _END_USER:
            continue
        check = _NO_OPS.get(key)
        if check is None:
            raise invalid(key, f"unknown parameter, or one that cannot be translated to {target}")
        if not check(value):
            raise invalid(key, f"this value cannot be translated to {target}")
    # null is absent (as OpenAI reads it), so `max_completion_tokens: null` leaves `max_tokens` in force.
    limit = payload.get("max_completion_tokens")
    if limit is None:
        limit = payload.get("max_tokens")
    if limit is not None:
        out["max_tokens"] = limit
    out["include_usage"] = _include_usage(payload.get("stream_options"))
    out["messages"] = _messages(payload.get("messages"), target)
    if payload.get("tools") is not None:
        out["tools"] = _tools(payload["tools"], target)
    schema = _output_schema(payload.get("response_format"), target)
    if schema is not None:
        out["output_schema"] = schema
    try:
        return ModelChatRequest.model_validate(out)
    except ValidationError as exc:
        raise to_native_error(exc) from None


_JSON_SCHEMA_KEYS = frozenset({"name", "schema", "strict", "description"})


def _output_schema(value: Any, target: str) -> dict[str, Any] | None:
    """`response_format` as the unified structured output (None: plain text)."""
    if value is None or value == {"type": "text"}:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "json_object":
        raise invalid("response_format", f"json_object (JSON of no schema) cannot be translated to {target},"
                                         " which has no JSON mode: use json_schema")
    if kind != "json_schema" or set(value) - {"type", "json_schema"}:
        raise invalid("response_format", f"this value cannot be translated to {target}")
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise invalid("response_format.json_schema", "must be an object")
    for key in spec:
        if key not in _JSON_SCHEMA_KEYS:
            raise invalid(f"response_format.json_schema.{key}", "unknown field")
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        raise invalid("response_format.json_schema.name", "is required")
    if spec.get("description") not in (None, ""):
        raise invalid("response_format.json_schema.description", f"cannot be translated to {target}")
    if not isinstance(spec.get("schema"), dict):
        raise invalid("response_format.json_schema.schema", f"a JSON schema (an object) is required for {target}")
    if not isinstance(spec.get("strict"), bool | None):
        raise invalid("response_format.json_schema.strict", "must be a boolean")
    return {"json_schema": spec["schema"], "name": spec["name"], "strict": spec.get("strict")}


def _include_usage(options: Any) -> bool:
    if options is None:
        return False
    if not isinstance(options, dict):
        raise invalid("stream_options", "must be an object")
    for key in options:
        if key not in _STREAM_OPTIONS:
            raise invalid(f"stream_options.{key}", "unknown stream option")
    return options.get("include_usage") is True


def _messages(raw: Any, target: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise invalid("messages", "must be an array of message objects")
    return [_message(i, m, target) for i, m in enumerate(raw)]


def _message(i: int, raw: Any, target: str) -> dict[str, Any]:
    at = f"messages.{i}"
    if not isinstance(raw, dict):
        raise invalid(at, "must be a message object")
    given = raw.get("role")
    role = _ROLES.get(given) if isinstance(given, str) else None
    if role is None:
        raise invalid(f"{at}.role", f"must be one of {', '.join(_ROLES)} (function messages cannot be translated)")
    msg: dict[str, Any] = {"role": role}
    for key, value in raw.items():
        if key in ("role", "name", "tool_call_id"):
            if key != "role" and value is not None:
                msg[key] = value
        elif key == "content":
            msg["content"] = _content(f"{at}.content", value, target)
        elif key == "tool_calls":
            if value is not None and value != []:  # (`false`, `{}`, `0` were read as none)
                msg["tool_calls"] = _tool_calls(f"{at}.tool_calls", value)
        elif key in ("refusal", "audio", "function_call", "annotations"):
            if value not in (None, []):
                raise invalid(f"{at}.{key}", f"cannot be translated to {target}")
        else:
            raise invalid(f"{at}.{key}", "unknown message field")
    return msg


def _content(at: str, value: Any, target: str) -> Any:
    if not isinstance(value, list):
        return value  # a string or null; anything else is refused by the model
    parts = []
    for j, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("text", "image_url"):
            raise invalid(f"{at}.{j}.type", f"only text and image_url parts can be translated to {target}")
        parts.append(part)
    return parts


def _tool_calls(at: str, calls: Any) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise invalid(at, "must be an array of tool calls")
    out = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise invalid(f"{at}.{j}.function", "is required")
        name = function.get("name")
        try:
            arguments = parse_arguments(function.get("arguments"), tool=str(name), provider="client")
        except TranslationError as exc:
            raise invalid(f"{at}.{j}.function.arguments", exc.message) from None
        out.append({"id": call.get("id"), "type": call.get("type", "function"),
                    "function": {"name": name, "arguments": arguments}})
    return out


def _tools(tools: Any, target: str) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise invalid("tools", "must be an array of tool objects")
    out = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type") != "function":
            raise invalid(f"tools.{i}.type", f"only function tools can be translated to {target}")
        out.append({"type": "function", "function": function})  # (`strict`: `ModelFunctionSpec`)
    return out


def render_openai_completion(reply: ProviderReply, usage: Usage, cache: CacheTokens) -> dict[str, Any]:
    """A unified reply as an OpenAI `chat.completion` body (tool-call arguments as JSON strings)."""
    choices = []
    for choice in reply.choices:
        message: dict[str, Any] = {"role": "assistant", "content": choice.message.content,
                                   "refusal": choice.message.refusal}
        if choice.message.tool_calls:
            message["tool_calls"] = [
                {"id": call.id, "type": "function",
                 "function": {"name": call.function.name, "arguments": orjson.dumps(call.function.arguments).decode()}}
                for call in choice.message.tool_calls
            ]
        choices.append(
            {"index": choice.index, "message": message, "logprobs": None, "finish_reason": choice.finish_reason}
        )
    return {
        "id": reply.id,
        "object": "chat.completion",
        "created": reply.created,
        "model": reply.model,
        "choices": choices,
        "usage": openai_usage(usage, cache),
    }


def openai_usage(usage: Usage, cache: CacheTokens) -> dict[str, Any]:
    """OpenAI's `usage` object: prompt tokens include cache writes and reads; reads are `cached_tokens`."""
    return {**usage.to_dict(), "prompt_tokens_details": {"cached_tokens": cache.read}}
