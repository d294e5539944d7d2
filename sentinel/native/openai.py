"""Translate between the unified types and OpenAI's chat-completions wire format.

Two bugs of the original are fixed here: the upstream body always names the `model`, and assistant
tool-call arguments go upstream as JSON *strings* (OpenAI rejects objects). Tool-call ids are the
provider's own, kept unchanged in both directions: the client echoes them back in its next request and
they are forwarded as they are (one that the provider would refuse is renamed within the request:
`openai_call_id`, `anthropic.anthropic_call_id`), so no id mapping has to outlive a request. An id is invented
only when the provider gave none.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Any

import orjson

from sentinel.native._wire import as_count, as_object
from sentinel.native._wire import (
    field_text as field_text,  # the one rule; `sentinel.quota.usage` reads it here
)
from sentinel.native.errors import TranslationError, invalid
from sentinel.native.model_request import ModelChatRequest
from sentinel.native.responses import (
    AssistantMessage,
    CacheTokens,
    Choice,
    FinishReason,
    ProviderReply,
    Usage,
)
from sentinel.native.types import ChatParams, Message, Tier, ToolCall, ToolChoiceFunction

_FINISH_REASONS: dict[str | None, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def new_call_id() -> str:
    """A tool-call id for a call the provider did not name."""
    return f"call_{uuid.uuid4().hex}"


def map_finish_reason(reason: Any) -> FinishReason:
    """OpenAI's finish_reason in the unified vocabulary; unknown or missing values mean `stop`."""
    return _FINISH_REASONS.get(reason, "stop") if isinstance(reason, str | None) else "stop"


def parse_arguments(raw: Any, *, tool: str, provider: str, written: bool = True) -> dict[str, Any]:
    """Tool-call arguments (a JSON string) as an object; an empty string means no arguments.
    `written`: the object is written again inside a larger document (see `writable_arguments`)."""
    if isinstance(raw, dict):  # some OpenAI-compatible servers send the object itself
        return writable_arguments(raw, tool=tool, provider=provider) if written else raw
    if not isinstance(raw, str):
        raise TranslationError(f"Malformed tool call arguments for '{tool}': not a string", provider=provider)
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise TranslationError(
            f"Malformed tool call arguments for '{tool}': {exc}", provider=provider
        ) from None
    if not isinstance(value, dict):
        raise TranslationError(
            f"Malformed tool call arguments for '{tool}': expected a JSON object", provider=provider
        )
    return writable_arguments(value, tool=tool, provider=provider) if written else value


# The levels a tool call's arguments sit at inside the documents they are written into (a request
# body's messages and content blocks, an answer's choices): room kept for them.
_ENCLOSING_LEVELS = 16


def writable_arguments(value: dict[str, Any], *, tool: str, provider: str) -> dict[str, Any]:
    """`value`, if it can be written as JSON again inside the document it goes into (every request
    and answer is: upstream, to the client, to count it); orjson reads 1,024 levels of nesting but
    writes 255 in a whole document, and a deeper one raised mid-request or mid-answer."""
    enclosed: Any = value
    for _ in range(_ENCLOSING_LEVELS):
        enclosed = [enclosed]
    try:
        orjson.dumps(enclosed)
    except orjson.JSONEncodeError:
        raise TranslationError(f"Malformed tool call arguments for '{tool}': nested too deep", provider=provider) from None
    return value


# What OpenAI's reasoning models (`completion_cap`) take only as the default, 1 — but gpt-5.1 and
# later, which reason only when asked (`reasoning_effort` defaults to `none`) and sample as asked then.
_DEFAULT_SAMPLING_ONLY = frozenset({"temperature", "top_p"})
_SAMPLES_UNASKED = re.compile(r"gpt-5\.[1-9].*", re.IGNORECASE)


def build_openai_request(req: ChatParams, model: str, *, stream: bool, completion_cap: bool = False) -> dict[str, Any]:
    """The upstream body for POST /chat/completions with the selected `model`. `completion_cap`: the
    output cap goes as `max_completion_tokens`, for OpenAI's reasoning models, which refuse
    `max_tokens` (400 "Unsupported parameter: 'max_tokens' is not supported with this model. Use
    'max_completion_tokens' instead."); other models get `max_tokens`, which every OpenAI-compatible
    server reads (some refuse a field they do not know). Those models take `temperature` and `top_p`
    only as their default, 1 (left out); another is NativeValidationError naming it."""
    body: dict[str, Any] = {"model": model, "messages": [_message(m) for m in req.messages]}
    for field in ("temperature", "top_p", "max_tokens", "stop"):
        value = getattr(req, field)
        if value is None:
            continue
        if completion_cap and field in _DEFAULT_SAMPLING_ONLY and not _SAMPLES_UNASKED.fullmatch(model):
            if value == 1:  # the default, the one value they take: the same request without it
                continue
            # OpenAI refuses another (400 "Unsupported value: 'temperature' does not support 0.5 with
            # this model"), charged as its refusal: a model that cannot carry it, as Claude's
            # translation refuses a whitespace stop (a tier's other candidates are tried).
            raise invalid(field, f"OpenAI's reasoning models ({model}) take no {field} other than 1")
        body["max_completion_tokens" if field == "max_tokens" and completion_cap else field] = value
    if req.tools:
        body["tools"] = [tool.to_dict() for tool in req.tools]
    if isinstance(req.tool_choice, ToolChoiceFunction):
        body["tool_choice"] = req.tool_choice.to_dict()
    elif req.tool_choice is not None and req.tools:
        body["tool_choice"] = req.tool_choice
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def build_openai_model_request(req: ModelChatRequest, model: str, *, completion_cap: bool = False) -> dict[str, Any]:
    """The upstream body for a `/v1` request translated to OpenAI: the unified fields plus
    `parallel_tool_calls`, a structured output as `response_format` json_schema and a tool's `strict`
    as `function.strict` (each `strict` only when the schema fits OpenAI's strict mode:
    `strict_schema_fits`) (the end user is added by `sentinel.native.end_user`); `completion_cap` as
    `build_openai_request`'s."""
    body = build_openai_request(req, model, stream=req.stream, completion_cap=completion_cap)
    for tool, given in zip(body.get("tools", ()), req.tools or (), strict=True):
        tool["function"].pop("strict", None)
        if given.function.strict and strict_schema_fits(given.function.parameters):
            tool["function"]["strict"] = True
    if req.parallel_tool_calls is not None and req.tools:
        body["parallel_tool_calls"] = req.parallel_tool_calls
    if req.output_schema is not None:
        schema = req.output_schema.json_schema
        spec: dict[str, Any] = {"name": req.output_schema.name or "output", "schema": schema}
        if req.output_schema.strict and strict_schema_fits(schema):
            spec["strict"] = True
        body["response_format"] = {"type": "json_schema", "json_schema": spec}
    return body


def strict_schema_fits(schema: Any) -> bool:
    """Whether OpenAI's strict mode takes `schema`: every object in it requires all its properties and
    forbids others (400 "'required' is required to be supplied and to be an array including every key
    in properties" else). A schema asked to be enforced (Claude's always are) that does not fit is sent
    without `strict`, followed by the model but not enforced, rather than refused by OpenAI."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            properties = node.get("properties")
            if node.get("type") == "object" or isinstance(properties, dict):
                keys = set(properties) if isinstance(properties, dict) else set()
                required = node.get("required", [])
                if node.get("additionalProperties") is not False or not isinstance(required, list) or set(required) != keys:
                    return False
            stack.extend(value for key, value in node.items() if key != "properties")
            if isinstance(properties, dict):
                stack.extend(properties.values())
    return True


# The longest tool-call id OpenAI takes ("string too long. Expected a string with maximum length 40").
MAX_CALL_ID_CHARS = 40


def openai_call_id(call_id: str) -> str:
    """A tool call's id as OpenAI takes it (at most MAX_CALL_ID_CHARS characters): as it is when it
    fits, else `call_` and a digest of the whole id (distinct ids stay distinct). Other providers'
    ids need not fit, and a conversation that moved to an OpenAI model (an alias's or a tier's other
    model, an Anthropic client's own ids) was refused for the ids in its history. A call and its
    result are in the same request, so both are renamed alike and nothing has to be remembered."""
    if len(call_id) <= MAX_CALL_ID_CHARS:
        return call_id
    return "call_" + hashlib.sha256(call_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _message(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": msg.role}
    if msg.content == []:
        # No parts is no content: OpenAI refuses an empty array (400 "empty array. Expected an array
        # with minimum length 1"), charged as a refusal, where Claude's translation reads it as the
        # empty message `""` is. Sent as `""` (null beside tool calls), OpenAI takes it as that.
        out["content"] = None if msg.tool_calls else ""
    elif isinstance(msg.content, list):
        out["content"] = [part.to_dict() for part in msg.content]
    else:
        out["content"] = msg.content
    if msg.name is not None:
        out["name"] = msg.name
    if msg.tool_call_id is not None:
        out["tool_call_id"] = openai_call_id(msg.tool_call_id)
    if msg.tool_calls:
        out["tool_calls"] = [
            {
                "id": openai_call_id(call.id),
                "type": "function",
                "function": {
                    "name": call.function.name,
                    "arguments": orjson.dumps(call.function.arguments).decode(),
                },
            }
            for call in msg.tool_calls
        ]
    return out


def parse_openai_response(body: Any, *, provider: str, tier: Tier) -> ProviderReply:
    """A chat.completion body in unified form; raise `TranslationError` when it is not one."""
    if not isinstance(body, dict):
        raise TranslationError("Upstream response is not a JSON object", provider=provider)
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise TranslationError("Upstream response has no choices", provider=provider)
    created = body.get("created")
    if not isinstance(created, int) or isinstance(created, bool):
        raise TranslationError("Upstream response has no integer 'created'", provider=provider)
    return ProviderReply(
        id=_required_str(body, "id", provider),
        created=created,
        model=_required_str(body, "model", provider),
        provider=provider,
        tier=tier,
        choices=[_choice(position, raw, provider) for position, raw in enumerate(choices)],
        usage=parse_openai_usage(body.get("usage")),
        cache=openai_cache_tokens(body.get("usage")),
        # Counted as a stream's deltas are (`delta_extras`): a refusal, the provider's reasoning, ...
        extras="".join(delta_extras(raw["message"]) for raw in choices),
    )


def _required_str(body: dict[str, Any], key: str, provider: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise TranslationError(f"Upstream response has no string '{key}'", provider=provider)
    return value


def _choice(position: int, raw: Any, provider: str) -> Choice:
    if not isinstance(raw, dict) or not isinstance(raw.get("message"), dict):
        raise TranslationError(f"Upstream choice {position} has no message", provider=provider)
    message = raw["message"]
    if message.get("role", "assistant") != "assistant":
        raise TranslationError(f"Upstream choice {position} is not from the assistant", provider=provider)
    content, refusal, tool_calls = message.get("content"), message.get("refusal"), message.get("tool_calls")
    if tool_calls is not None and not isinstance(tool_calls, list):  # a number iterated raised a TypeError: a 500
        raise TranslationError(f"Upstream choice {position} has malformed tool_calls", provider=provider)
    finish_reason = map_finish_reason(raw.get("finish_reason"))
    calls = [_tool_call(call, provider, cut=finish_reason == "length") for call in tool_calls or ()]
    index = raw.get("index", position)
    return Choice(
        index=index if isinstance(index, int) and index >= 0 else position,
        message=AssistantMessage(
            content=content if isinstance(content, str) else None,
            refusal=refusal if isinstance(refusal, str) else None,
            tool_calls=calls or None,
        ),
        finish_reason=finish_reason,
    )


def _tool_call(raw: Any, provider: str, *, cut: bool = False) -> ToolCall:
    """A tool call of an answer, its arguments an object. `cut`: the answer ended at its output cap
    (`length`), so a call it was writing may have arguments that are not whole: such a call is kept
    with no arguments (`cut_arguments`), as Anthropic answers `max_tokens` with the tool use it was
    writing, instead of the whole answer becoming an error — served, billed, and retried by the SDKs."""
    function = raw.get("function") if isinstance(raw, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise TranslationError("Upstream tool call has no function name", provider=provider)
    if raw.get("type", "function") != "function":
        raise TranslationError(f"Unsupported upstream tool call type '{raw.get('type')}'", provider=provider)
    name = function["name"]
    call_id = raw.get("id")
    return ToolCall.model_validate(
        {
            "id": call_id if isinstance(call_id, str) and call_id else new_call_id(),
            "function": {
                "name": name,
                "arguments": cut_arguments(function.get("arguments"), tool=name, provider=provider, cut=cut),
            },
        }
    )


def cut_arguments(raw: Any, *, tool: str, provider: str, cut: bool, written: bool = True) -> dict[str, Any]:
    """`parse_arguments`, but for a call the answer's output cap cut short (`cut`: finish reason
    `length`, Anthropic's `max_tokens`), whose arguments are likely not whole JSON: those are no
    arguments (`{}`), the answer's finish reason telling the client the call was cut, instead of a
    TranslationError (a 502 for an answer the provider served and billed)."""
    try:
        return parse_arguments(raw, tool=tool, provider=provider, written=written)
    except TranslationError:
        if not cut:
            raise
        return {}


# Output a chat delta carries besides `content` and `tool_calls`, relayed to the client and billed:
# the legacy `function_call`, a `refusal`, reasoning some OpenAI-compatible providers stream
# (`reasoning_content`: DeepSeek, vLLM; `reasoning`: Groq, OpenRouter), an audio answer's transcript.
# A whole answer's message carries the same fields. One rule for every surface: the relay
# (`sentinel.quota.usage`), the stream normaliser and `parse_openai_response` count alike.
_DELTA_TEXT = ("refusal", "reasoning_content")
PLAIN_DELTA = frozenset({"role", "content", "tool_calls"})  # most deltas: nothing more to look at


def carries_answer(choice: dict[str, Any], key: str = "delta") -> bool:
    """Whether a streamed choice carries any of the answer: a finish reason (the model finished,
    reasoning included), or under `key` (chat's `delta`, legacy completions' `text`) anything but
    the opening role and empty values (`{"role": "assistant", "content": "", "refusal": null}`). A
    provider's failure before any choice carried some gave the client nothing (`unserved`)."""
    if choice.get("finish_reason") is not None:
        return True
    shown = choice.get(key)
    if isinstance(shown, dict):
        return any(name != "role" and value not in (None, "", [], {}) for name, value in shown.items())
    return shown not in (None, "", [], {})


def delta_extras(delta: dict[str, Any]) -> str:
    """The text of a chat delta's (or message's) output other than its `content` and `tool_calls`
    (see `_DELTA_TEXT`), for counting when the answer comes without the provider's usage."""
    parts = [delta[key] for key in _DELTA_TEXT if isinstance(delta.get(key), str)]
    if not isinstance(delta.get("reasoning_content"), str) and isinstance(delta.get("reasoning"), str):
        parts.append(delta["reasoning"])  # one or the other: some servers send the same text as both
    call = delta.get("function_call")
    if isinstance(call, dict):
        parts.append(field_text(call.get("name")) + field_text(call.get("arguments")))
    audio = delta.get("audio")
    if isinstance(audio, dict) and isinstance(audio.get("transcript"), str):
        parts.append(audio["transcript"])
    return "".join(parts)


def openai_cache_tokens(raw: Any) -> CacheTokens:
    """The cached prompt tokens of an OpenAI `usage` object (`prompt_tokens_details.cached_tokens`),
    part of its `prompt_tokens`: never more (a malformed count is shown and recorded as all of them)."""
    usage = as_object(raw)
    cached = as_count(as_object(usage.get("prompt_tokens_details")).get("cached_tokens")) or 0
    return CacheTokens(read=min(cached, as_count(usage.get("prompt_tokens")) or 0))


def parse_openai_usage(raw: Any) -> Usage | None:
    """OpenAI's `usage` object, or None when the provider sent none or a malformed one (a count that
    is negative, not an integer or beyond MAX_COUNT): the answer is still served and its usage
    estimated, as on the relayed surfaces — refusing it would lose the record of a call the provider
    served."""
    if raw is None:
        return None
    prompt, completion = (
        as_count(as_object(raw).get("prompt_tokens")),
        as_count(as_object(raw).get("completion_tokens")),
    )
    if prompt is None or completion is None:
        return None
    return Usage.of(prompt, completion)
