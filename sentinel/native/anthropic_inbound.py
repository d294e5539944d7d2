"""Anthropic's Messages API as a client speaks it: request in, message out.

Used when an Anthropic client's model lives on a provider of another wire format. The request
becomes a `ModelChatRequest`: `system` (a string or text blocks) becomes the first message; a user
turn's `tool_result` blocks become tool messages ahead of the rest of the turn (`is_error` results
are prefixed "Error: "); `image` blocks become image parts (base64 as a data URL, a url source only
over http(s), what Anthropic fetches); `tool_use` blocks
become tool calls; `stop_sequences` is `stop`, `metadata.user_id` is dropped (the provider is told
Sentinel's pseudonym of the caller: `sentinel.native.end_user`), `tool_choice`
`any`/`tool` are `required`/a named function and `disable_parallel_tool_use` turns parallel calls off.
A structured output (`output_config.format`, the beta's `output_format`: `{"type": "json_schema",
"schema": ...}`) is one (see `_output_schema`).
`cache_control` marks (a block's, a tool's, the body's own) are dropped (the other provider caches
prompts by itself) — once checked as Anthropic checks them (`{"type": "ephemeral"}`, a `ttl` of "5m" or "1h"), so that a body is refused
alike whichever target of an alias serves it —, so are citations of earlier answers. Anything else that cannot be carried over (`top_k`, thinking, documents, server tools,
images inside tool results, a final assistant message used as a prefill, more than 4 stop
sequences, one of only whitespace, a `temperature` above Anthropic's 1, ...) is a `NativeValidationError` naming the field as the client wrote it (`_as_written`).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from sentinel.native._wire import is_number
from sentinel.native.anthropic import ANTHROPIC_MAX_TEMPERATURE, blank_stop
from sentinel.native.anthropic_checks import check_metadata
from sentinel.native.errors import NativeValidationError, invalid
from sentinel.native.model_request import ModelChatRequest
from sentinel.native.responses import CacheTokens, FinishReason, ProviderReply, Usage
from sentinel.native.types import MAX_STOP_SEQUENCES
from sentinel.native.validation import to_native_error

STOP_REASONS: dict[FinishReason, str] = {
    "stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal",
}
_KEPT = ("model", "max_tokens", "temperature", "top_p", "stream")
_NO_OPS: dict[str, tuple[Any, ...]] = {
    "top_k": (None,),
    "thinking": (None, {"type": "disabled"}),
    "service_tier": (None, "auto", "standard_only"),
    "container": (None,),
    "mcp_servers": (None, []),
    "context_management": (None,),
}
_BLOCK_KEYS = {
    "text": {"type", "text", "cache_control", "citations"},
    "image": {"type", "source", "cache_control"},
    "tool_use": {"type", "id", "name", "input", "cache_control"},
    "tool_result": {"type", "tool_use_id", "content", "is_error", "cache_control"},
}
_TOOL_KEYS = {"type", "name", "description", "input_schema", "strict", "cache_control"}


def parse_anthropic_messages(payload: dict[str, Any], *, target: str, count_only: bool = False) -> ModelChatRequest:
    """A Messages API body as a unified request; `target` names the provider's wire format in error
    messages. Raise NativeValidationError naming the first field that cannot be translated. With
    `count_only` (a `/v1/messages/count_tokens` body, which has no `max_tokens`) none is required."""
    out: dict[str, Any] = {key: payload[key] for key in _KEPT if payload.get(key) is not None}
    for key, value in payload.items():
        if key in _KEPT or key in ("messages", "system", "stop_sequences", "tools", "tool_choice", "metadata",
                                   "output_config", "output_format", "cache_control"):
            continue
        if key not in _NO_OPS:
            raise invalid(key, f"unknown parameter, or one that cannot be translated to {target}")
        if value not in _NO_OPS[key]:
            raise invalid(key, f"this value cannot be translated to {target}")
    if "max_tokens" not in out and not count_only:
        raise invalid("max_tokens", "Field required")
    if is_number(temperature := out.get("temperature")) and temperature > ANTHROPIC_MAX_TEMPERATURE:
        # The Messages API's range, which a Claude target refuses past (OpenAI's reaches 2): an alias
        # served or refused the same body by the target it drew, an OpenAI model alone sampled hotter
        # than the client could ask any Claude model for.
        raise invalid("temperature", f"must be from 0 to {ANTHROPIC_MAX_TEMPERATURE:g} (the Messages API's range)")
    origins: list[dict[str, str]] = []  # per unified message: its paths as the client wrote them
    out["messages"] = _system(payload.get("system"), origins) + _messages(payload.get("messages"), target, origins)
    stops = payload.get("stop_sequences")
    if stops:
        if not isinstance(stops, list) or len(stops) > MAX_STOP_SEQUENCES:
            raise invalid("stop_sequences", f"at most {MAX_STOP_SEQUENCES} stop sequences can be translated to {target}")
        if (i := blank_stop(stops)) is not None:  # (a Claude target refuses it; OpenAI takes "\n")
            raise invalid(f"stop_sequences.{i}", "must contain non-whitespace (the Messages API refuses one of only whitespace)")
        out["stop"] = stops
    if payload.get("tools") is not None:
        out["tools"] = _tools(payload["tools"], target)
    if payload.get("tool_choice") is not None:
        _tool_choice(payload["tool_choice"], out)
    check_metadata(payload.get("metadata"))
    _cache_mark("", payload)  # (the top-level mark, automatic caching: checked and dropped as a block's)
    schema = _output_schema(payload.get("output_config"), payload.get("output_format"), target)
    if schema is not None:
        out["output_schema"] = schema
    try:
        return ModelChatRequest.model_validate(out)
    except ValidationError as exc:
        raise _as_written(to_native_error(exc), origins) from None


def _as_written(error: NativeValidationError, origins: list[dict[str, str]]) -> NativeValidationError:
    """`error` naming the field as the client wrote it: the unified request is not the client's
    (`system` is the first message, a turn's tool results are messages of their own, its tool_use
    blocks tool calls, a tool's `input_schema` its `function.parameters`), so
    `messages.2.tool_calls.0.id` is `messages.1.content.3.id`."""
    param = error.param or ""
    match = _UNIFIED.match(param)
    if match is not None and int(match["index"]) < len(origins):
        paths, rest = origins[int(match["index"])], (match["rest"] or "").lstrip(".")
    else:
        tool = _TOOL.match(param)
        paths, rest = _FIELDS, param
        if tool is not None:
            field = _TOOL_FIELDS.get(tool["field"] or "", tool["field"])
            paths, rest = {"": ".".join(filter(None, (f"tools.{tool['index']}", field)))}, ""
    segments = rest.split(".") if rest else []
    for cut in range(len(segments), -1, -1):  # the longest known prefix of the unified path
        known = paths.get(".".join(segments[:cut]))
        if known is not None:
            written = ".".join([known, *segments[cut:]])
            break
    else:
        return error
    if written == param:
        return error
    message = error.message
    if message.startswith(f"Unknown field '{param}'"):
        message = f"Unknown field '{written}'" + message.removeprefix(f"Unknown field '{param}'")
    elif message.startswith(param):
        message = written + message.removeprefix(param)
    return NativeValidationError(message, written)


_UNIFIED = re.compile(r"^messages\.(?P<index>\d+)(?P<rest>\..*)?$")
_TOOL = re.compile(r"^tools\.(?P<index>\d+)\.function(?:\.(?P<field>.*))?$")
# The unified fields named otherwise in a Messages body (a tool's index is the client's own).
_FIELDS = {"stop": "stop_sequences", "tool_choice.function.name": "tool_choice.name",
           "tool_choice.function": "tool_choice"}
_TOOL_FIELDS = {"parameters": "input_schema"}  # under `tools.N.function.`, else the same name under `tools.N.`


_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # OpenAI's for a json_schema's `name`


def _output_schema(config: Any, beta: Any, target: str) -> dict[str, Any] | None:
    """`output_config` (only its `format` can be carried) or the beta's `output_format` as the unified
    structured output (None: plain text). Claude always enforces the schema (`strict`; the other
    provider keeps it where it can: `sentinel.native.openai`), named by its `title` when that is
    a name OpenAI takes, else `output`."""
    at, format_ = "output_format", beta
    if config is not None:
        if not isinstance(config, dict):
            raise invalid("output_config", "must be an object")
        for key, value in config.items():
            if key != "format" and value is not None:
                raise invalid(f"output_config.{key}", f"cannot be translated to {target}")
        if config.get("format") is not None:
            if beta is not None:
                raise invalid("output_format", "give output_config.format or output_format, not both")
            at, format_ = "output_config.format", config["format"]
    if format_ is None:
        return None
    if not isinstance(format_, dict) or format_.get("type") != "json_schema":
        raise invalid(f"{at}.type", "must be json_schema")
    if set(format_) - {"type", "schema"}:
        raise invalid(f"{at}.{sorted(set(format_) - {'type', 'schema'})[0]}", "unknown field")
    schema = format_.get("schema")
    if not isinstance(schema, dict):
        raise invalid(f"{at}.schema", "a JSON schema (an object) is required")
    title = schema.get("title")
    name = title if isinstance(title, str) and _NAME.fullmatch(title) else "output"
    return {"json_schema": schema, "name": name, "strict": True}


def _system(system: Any, origins: list[dict[str, str]]) -> list[dict[str, Any]]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        origins.append({"": "system", "content": "system"})
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise invalid("system", "must be a string or a list of text blocks")
    parts = []
    for j, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise invalid(f"system.{j}.type", "only text blocks are allowed")
        _known_keys(f"system.{j}", block)
        parts.append({"type": "text", "text": block.get("text")})
    if not parts:
        return []
    origins.append({"": "system", "content": "system", **{f"content.{j}": f"system.{j}" for j in range(len(parts))}})
    return [{"role": "system", "content": parts}]


def _known_keys(at: str, block: dict[str, Any]) -> None:
    extra = set(block) - _BLOCK_KEYS[block["type"]]
    if extra:
        raise invalid(f"{at}.{sorted(extra)[0]}", "unknown field")
    _cache_mark(at, block)


_CACHE_TTLS = (None, "5m", "1h")


def _cache_mark(at: str, holder: dict[str, Any]) -> None:
    """A block's, a tool's or the body's own (`at` "": automatic caching) `cache_control`, dropped by
    the translation, checked as Anthropic checks it: a malformed one (`5`, `{"type": "persistent"}`, a `ttl` of "99h") was dropped unseen, served by
    an OpenAI target where a Claude one refuses it."""
    mark = holder.get("cache_control")
    if mark is None:
        return
    if (not isinstance(mark, dict) or mark.get("type") != "ephemeral" or set(mark) - {"type", "ttl"}
            or mark.get("ttl") not in _CACHE_TTLS):
        raise invalid(f"{at}.cache_control" if at else "cache_control",
                      'must be {"type": "ephemeral"}, with an optional ttl of "5m" or "1h"')


def _messages(raw: Any, target: str, origins: list[dict[str, str]]) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise invalid("messages", "must be a non-empty array of message objects")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise invalid(f"messages.{i}.role", "must be 'user' or 'assistant'")
        extra = set(message) - {"role", "content"}
        if extra:
            raise invalid(f"messages.{i}.{sorted(extra)[0]}", "unknown field")
        turn = _user(i, message.get("content"), target, origins) if message["role"] == "user" else _assistant(
            i, message.get("content"), target, origins
        )
        out.extend(turn)
    if raw[-1].get("role") == "assistant":
        raise invalid(f"messages.{len(raw) - 1}", f"a final assistant message (a prefill) cannot be translated to {target}")
    return out


def _blocks(at: str, content: Any, allowed: tuple[str, ...], target: str) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        raise invalid(at, "must be a string or a list of content blocks")
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in allowed:
            raise invalid(f"{at}.{j}.type", f"{kind!r} blocks cannot be translated to {target} here")
        _known_keys(f"{at}.{j}", block)
        if kind == "text" and not isinstance(block.get("text"), str):  # was read as "" in a result or an answer
            raise invalid(f"{at}.{j}.text", "must be a string")
        if kind == "tool_result" and not isinstance(block.get("is_error", False), bool | None):
            raise invalid(f"{at}.{j}.is_error", "must be a boolean")
    return content


def _user(i: int, content: Any, target: str, origins: list[dict[str, str]]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        origins.append({"": f"messages.{i}", "content": f"messages.{i}.content"})
        return [{"role": "user", "content": content}]
    at = f"messages.{i}.content"
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    result_paths: list[dict[str, str]] = []
    part_paths: dict[str, str] = {"": f"messages.{i}", "content": at}
    for j, block in enumerate(_blocks(at, content, ("text", "image", "tool_result"), target)):
        if block["type"] == "text":
            part_paths[f"content.{len(parts)}"] = f"{at}.{j}"
            parts.append({"type": "text", "text": block.get("text")})
        elif block["type"] == "image":
            part_paths[f"content.{len(parts)}"] = f"{at}.{j}"
            part_paths[f"content.{len(parts)}.image_url.url"] = f"{at}.{j}.source"
            parts.append({"type": "image_url", "image_url": {"url": _image_url(f"{at}.{j}.source", block.get("source"))}})
        else:
            result_paths.append({"": f"{at}.{j}", "content": f"{at}.{j}.content", "tool_call_id": f"{at}.{j}.tool_use_id"})
            results.append({"role": "tool", "tool_call_id": block.get("tool_use_id"),
                            "content": _result_text(f"{at}.{j}", block, target)})
    if not results and not parts:
        raise invalid(at, "must not be empty")
    origins.extend(result_paths + ([part_paths] if parts else []))
    return results + ([{"role": "user", "content": parts}] if parts else [])


def _image_url(at: str, source: Any) -> str:
    if isinstance(source, dict) and source.get("type") == "base64":
        media, data = source.get("media_type"), source.get("data")
        if isinstance(media, str) and media.startswith("image/") and isinstance(data, str) and data:
            return f"data:{media};base64,{data}"
    url = source.get("url") if isinstance(source, dict) and source.get("type") == "url" else None
    if isinstance(url, str) and url[:8].lower().startswith(("https://", "http://")):
        # Anthropic fetches http(s) alone; an OpenAI-compatible server may read other schemes too
        # (vLLM: `file://` under its allowed media path, and a data URL is not a url source).
        return url
    raise invalid(at, "must be a base64 image (media_type image/..., data) or a url source with an http(s) URL")


def _result_text(at: str, block: dict[str, Any], target: str) -> Any:
    content = block.get("content")
    if content is None:
        text: Any = ""
    elif isinstance(content, str):
        text = content
    else:
        text = "".join(b["text"] for b in _blocks(f"{at}.content", content, ("text",), target))
    if block.get("is_error") is True and isinstance(text, str):
        text = "Error: " + text
    return text


def _assistant(i: int, content: Any, target: str, origins: list[dict[str, str]]) -> list[dict[str, Any]]:
    at = f"messages.{i}.content"
    paths = {"": f"messages.{i}", "content": at}
    origins.append(paths)
    if isinstance(content, str):
        return [{"role": "assistant", "content": content}]
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(_blocks(at, content, ("text", "tool_use"), target)):
        if block["type"] == "text":
            texts.append(block["text"])
        else:
            call = f"tool_calls.{len(calls)}"
            paths.update({call: f"{at}.{j}", f"{call}.id": f"{at}.{j}.id", f"{call}.function": f"{at}.{j}",
                          f"{call}.function.name": f"{at}.{j}.name", f"{call}.function.arguments": f"{at}.{j}.input"})
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"), "arguments": block.get("input")}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _tools(tools: Any, target: str) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise invalid("tools", "must be an array of tool objects")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type", "custom") not in ("custom", None):
            raise invalid(f"tools.{i}.type", f"only custom (client) tools can be translated to {target}")
        extra = set(tool) - _TOOL_KEYS
        if extra:
            raise invalid(f"tools.{i}.{sorted(extra)[0]}", f"cannot be translated to {target}")
        _cache_mark(f"tools.{i}", tool)
        function = {"name": tool.get("name"), "parameters": tool.get("input_schema")}
        if tool.get("description") is not None:
            function["description"] = tool["description"]
        if tool.get("strict") is not None:
            function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any, out: dict[str, Any]) -> None:
    if not isinstance(choice, dict) or set(choice) - {"type", "name", "disable_parallel_tool_use"}:
        raise invalid("tool_choice", "must be an object with type auto, any, tool or none")
    kind = choice.get("type")
    if kind == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif kind in ("auto", "any", "none"):
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    else:
        raise invalid("tool_choice.type", "must be auto, any, tool or none")
    disable = choice.get("disable_parallel_tool_use")
    if not isinstance(disable, bool | None):  # "true" was read as false: parallel calls left on
        raise invalid("tool_choice.disable_parallel_tool_use", "must be a boolean")
    if disable:
        out["parallel_tool_calls"] = False


def stop_reason(reason: FinishReason | None, called: bool, refused: bool = False) -> str:
    """Anthropic's `stop_reason` for a unified finish reason: an answer that `called` tools ended
    for them (`tool_use`, what an Anthropic client's tool loop waits for), though OpenAI says `stop`
    when `tool_choice` named the function; one that called none ended its turn, though a server may
    say `tool_calls` (vLLM's for a `required` choice whose call it could not read): the client's
    tool loop found nothing to run and sent back an empty turn of results. One that `refused`
    (OpenAI's `refusal`, said with `stop`) is `refusal`, as Claude's own refusal ends: else the
    client saw an empty turn ended as any other."""
    if called and reason in (None, "stop"):
        return "tool_use"
    if not called and reason == "tool_calls":
        return "end_turn"
    if refused and not called and reason in (None, "stop"):
        return "refusal"
    return STOP_REASONS[reason or "stop"]


def anthropic_usage(usage: Usage, cache: CacheTokens) -> dict[str, int]:
    """Anthropic's `usage` object: `input_tokens` excludes the cache writes and reads."""
    return {
        "input_tokens": max(0, usage.prompt_tokens - cache.write - cache.read),
        "cache_creation_input_tokens": cache.write,
        "cache_read_input_tokens": cache.read,
        "output_tokens": usage.completion_tokens,
    }


def render_anthropic_message(reply: ProviderReply, usage: Usage, cache: CacheTokens) -> dict[str, Any]:
    """A unified reply (its first choice) as a Messages API `message` body. A refusal (OpenAI's
    `refusal`, content null) has no content block, as its stream has none (Claude's own refusal may
    have none either); an empty answer of no tool calls has one empty text block."""
    choice = reply.choices[0]
    content: list[dict[str, Any]] = []
    if choice.message.content or not (choice.message.tool_calls or choice.message.refusal):
        content.append({"type": "text", "text": choice.message.content or ""})
    for call in choice.message.tool_calls or ():
        content.append({"type": "tool_use", "id": call.id, "name": call.function.name, "input": call.function.arguments})
    return {
        "id": reply.id,
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": content,
        "stop_reason": stop_reason(choice.finish_reason, bool(choice.message.tool_calls),
                                   bool(choice.message.refusal)),
        "stop_sequence": None,
        "usage": anthropic_usage(usage, cache),
    }
