"""Translate between the unified types and Anthropic's Messages API.

Request: system messages become the top-level `system` (those empty or of only whitespace left out); assistant tool calls become `tool_use` blocks
and tool messages `tool_result` blocks in a user turn; consecutive turns of one role are merged so that
user and assistant strictly alternate, as Anthropic requires. Within a merged user turn, tool results
come first (Anthropic wants them before any text that follows a tool call). Text that is empty or
only whitespace is left out (Anthropic refuses such a block, 400 "text content blocks must contain
non-whitespace text": a model's own whitespace-only text beside its tool calls, replayed, refused
every later turn of the conversation); an assistant message left with nothing is left out (the
user turns around it merged), a user turn left with nothing is an empty message. A final
assistant turn (a prefill) loses its trailing whitespace, which Anthropic refuses there; a stop
sequence of only whitespace cannot be carried (Anthropic refuses it). A tool-call id with
characters Anthropic refuses (another provider's) is renamed, alike in the call and its result
(`anthropic_call_id`); a message's `name` has no place in Anthropic's format and is left out.

Temperature: OpenAI's range is 0..2, Anthropic's 0..1. The client names a tier, not a provider, so a
request that is valid for the Native API must not fail because the router happened to pick Anthropic:
values above 1 are clamped to 1 (both APIs' default is 1, so scaling would shift every request).
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

from sentinel.native._wire import MAX_COUNT, as_count, as_object
from sentinel.native.errors import NativeValidationError, TranslationError, invalid
from sentinel.native.model_request import ModelChatRequest
from sentinel.native.openai import writable_arguments
from sentinel.native.responses import (
    AssistantMessage,
    CacheTokens,
    Choice,
    FinishReason,
    ProviderReply,
    Usage,
)
from sentinel.native.types import (
    ChatParams,
    ImagePart,
    Message,
    Tier,
    ToolCall,
    ToolChoiceFunction,
    image_data_url,
    sampling_knobs_refused,
)

ANTHROPIC_MAX_TEMPERATURE = 1.0
_CALL_ID = re.compile(r"[a-zA-Z0-9_-]+")  # (whole: `fullmatch`, never `$`, which passes a final newline)
_NOT_ID_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
_TOOL_BLOCKS = frozenset({"tool_use", "tool_result"})
_STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",  # the output was cut by the context window: not whole
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def map_stop_reason(reason: Any) -> FinishReason:
    """Anthropic's stop_reason in the unified vocabulary; anything unknown means `stop`."""
    return _STOP_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"


def build_anthropic_request(
    req: ChatParams, model: str, *, stream: bool, default_max_tokens: int = 4096, clamp_temperature: bool = True
) -> dict[str, Any]:
    """The upstream body for POST /v1/messages with the selected `model`. Without `clamp_temperature`
    a temperature above Anthropic's maximum is a NativeValidationError instead of being lowered."""
    body: dict[str, Any] = {"model": model, "max_tokens": req.max_tokens or default_max_tokens}
    # Anthropic refuses an empty or whitespace-only `system` (400 "system: text content blocks must be
    # non-empty"): a client's empty system message (common: a prompt not set) is left out, as is one
    # of only whitespace; none left, no `system`.
    system = [text for m in req.messages if m.role == "system" and (text := m.text()).strip()]
    if system:
        body["system"] = "\n".join(system)
    body["messages"] = _turns(req.messages)
    if not req.tools and any(block["type"] in _TOOL_BLOCKS for turn in body["messages"] for block in turn["content"]):
        # Anthropic refuses it (400 "Requests which include `tool_use` or `tool_result` blocks must
        # define tools"), OpenAI takes it: a history of tool turns asked to be summed up, say. Not
        # carried, so a tier candidate that can is tried, or the request refused before it is sent.
        raise invalid("tools", "Anthropic does not accept a conversation with tool calls or tool results and"
                               " no tools: send the tools its calls used (tool_choice 'none' to forbid new calls)")
    if req.temperature is not None:
        if req.temperature > ANTHROPIC_MAX_TEMPERATURE and not clamp_temperature:
            raise NativeValidationError(
                f"temperature: Anthropic models accept 0 to {ANTHROPIC_MAX_TEMPERATURE:g}", "temperature"
            )
        body["temperature"] = min(req.temperature, ANTHROPIC_MAX_TEMPERATURE)
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.stop is not None:
        body["stop_sequences"] = _stop_sequences(req.stop)
    if req.tools:
        body["tools"] = [_tool(t.function.name, t.function.description, t.function.parameters) for t in req.tools]
        choice = _tool_choice(req)
        if choice is not None:
            body["tool_choice"] = choice
    if stream:
        body["stream"] = True
    return body


def build_anthropic_model_request(req: ModelChatRequest, model: str, *, default_max_tokens: int) -> dict[str, Any]:
    """The upstream body for a `/v1` request translated to Anthropic: the unified fields (a temperature
    above 1 is refused, not lowered; so are `temperature` and `top_p` together: `sampling_knobs_refused`),
    `parallel_tool_calls: false` as `disable_parallel_tool_use`, a structured output as
    `output_config.format` and a tool's `strict: true` as the tool's `strict` (the end user is added by
    `sentinel.native.end_user`)."""
    refused = sampling_knobs_refused(req, "Claude 4.5 and later models")
    if refused is not None:
        raise invalid(refused[1], refused[0])
    body = build_anthropic_request(
        req, model, stream=req.stream, default_max_tokens=default_max_tokens, clamp_temperature=False
    )
    # (`none` calls no tool: Anthropic's `none` takes no other field, 400 "Extra inputs are not permitted")
    if req.parallel_tool_calls is False and req.tools and req.tool_choice != "none":
        body["tool_choice"] = {**body.get("tool_choice", {"type": "auto"}), "disable_parallel_tool_use": True}
    for tool, spec in zip(body.get("tools", ()), req.tools or (), strict=True):
        if spec.function.strict:
            tool["strict"] = True
    if req.output_schema is not None:  # (its name and strict: Claude has no label and always enforces)
        body["output_config"] = {"format": {"type": "json_schema", "schema": req.output_schema.json_schema}}
    return body


def _stop_sequences(stop: str | list[str]) -> list[str]:
    """`stop` as Anthropic's `stop_sequences`. One of only whitespace (`"\\n"`, which OpenAI takes) is
    refused by Anthropic (400 "each stop sequence must contain non-whitespace"): a NativeValidationError
    here, so the request goes to a tier candidate that can carry it, or is refused before it is sent."""
    stops = [stop] if isinstance(stop, str) else list(stop)
    if (i := blank_stop(stops)) is not None:
        param = "stop" if isinstance(stop, str) else f"stop.{i}"
        raise invalid(param, "Anthropic does not accept a stop sequence of only whitespace")
    return stops


def blank_stop(stops: list[Any]) -> int | None:
    """The index of the first stop sequence of only whitespace among `stops` (Anthropic refuses one:
    400 "each stop sequence must contain non-whitespace"), or None."""
    return next((i for i, sequence in enumerate(stops) if isinstance(sequence, str) and not sequence.strip()), None)


def _tool(name: str, description: str | None, schema: dict[str, Any]) -> dict[str, Any]:
    tool: dict[str, Any] = {"name": name}
    if description is not None:
        tool["description"] = description
    tool["input_schema"] = schema
    return tool


def _tool_choice(req: ChatParams) -> dict[str, Any] | None:
    choice = req.tool_choice
    if isinstance(choice, ToolChoiceFunction):
        return {"type": "tool", "name": choice.function.name}
    return {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}.get(choice or "")


def _turns(messages: list[Message]) -> list[dict[str, Any]]:
    """Non-system messages as strictly alternating user/assistant turns of content blocks."""
    turns: list[dict[str, Any]] = []
    first_index: list[int] = []  # the request index each turn starts at, for error paths
    for i, msg in enumerate(messages):
        if msg.role == "system":
            continue
        role = "assistant" if msg.role == "assistant" else "user"
        blocks = _blocks(msg, i)
        if not blocks and role == "assistant":
            # An answer of nothing (Claude's own empty `end_turn`, replayed by the client as `""`):
            # refused as an empty message, it failed every later turn of a conversation bound to
            # Claude. Left out; the user turns around it merge, as Anthropic requires.
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
            first_index.append(i)
    if not turns:
        raise NativeValidationError("Conversation must contain at least one user message", "messages")
    if turns[0]["role"] != "user":
        raise NativeValidationError(
            "First non-system message must be from user role", f"messages.{first_index[0]}.role"
        )
    for turn, index in zip(turns, first_index, strict=True):
        if not turn["content"]:
            raise NativeValidationError(
                f"messages.{index}: Anthropic does not accept empty messages", f"messages.{index}.content"
            )
        if turn["role"] == "user":  # stable: tool results first, the rest in order
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    last = turns[-1]["content"][-1]
    if turns[-1]["role"] == "assistant" and last["type"] == "text":
        # A prefill: Anthropic refuses one that ends in whitespace (400 "final assistant content
        # cannot end with trailing whitespace"); OpenAI takes it. (Not empty: whitespace-only text is left out.)
        last["text"] = last["text"].rstrip()
    return turns


def _blocks(msg: Message, index: int) -> list[dict[str, Any]]:
    if msg.role == "tool":
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": anthropic_call_id(msg.tool_call_id or "")}
        if (text := msg.text()).strip():
            result["content"] = text
        return [result]
    blocks: list[dict[str, Any]] = []
    if isinstance(msg.content, str):
        if msg.content.strip():  # Anthropic rejects empty and whitespace-only text blocks
            blocks.append({"type": "text", "text": msg.content})
    elif msg.content is not None:
        for j, part in enumerate(msg.content):
            if isinstance(part, ImagePart):
                blocks.append(_image_block(part.image_url.url, f"messages.{index}.content.{j}.image_url.url"))
            elif part.text.strip():
                blocks.append({"type": "text", "text": part.text})
    for call in msg.tool_calls or ():
        blocks.append(
            {"type": "tool_use", "id": anthropic_call_id(call.id), "name": call.function.name,
             "input": call.function.arguments}
        )
    return blocks


def anthropic_call_id(call_id: str) -> str:
    """A tool call's id as Anthropic takes it (`^[a-zA-Z0-9_-]+$`): as it is when it fits, else its
    other characters replaced and a digest of the whole id added (distinct ids stay distinct). Other
    providers' ids need not fit (Kimi's `functions.lookup:0`): a conversation that moved to Claude
    (an alias's or a tier's other model) was refused for the ids in its history. A call and its
    result are in the same request, so both are renamed alike and nothing has to be remembered."""
    if _CALL_ID.fullmatch(call_id):
        return call_id
    digest = hashlib.sha256(call_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{_NOT_ID_CHARS.sub('_', call_id)}_{digest}"


# The image types Anthropic takes inline (400 "media_type: Input should be 'image/jpeg', 'image/png',
# 'image/gif' or 'image/webp'", exact lower case); `image/jpg`, a common misspelling, is JPEG.
_MEDIA_TYPES = {"image/jpeg": "image/jpeg", "image/jpg": "image/jpeg", "image/png": "image/png",
                "image/gif": "image/gif", "image/webp": "image/webp"}


def _image_block(url: str, param: str) -> dict[str, Any]:
    # A URL's scheme is case-insensitive (RFC 3986), as the unified request's check reads it
    # (`ImageUrl`): `HTTPS://…` and `Data:image/png;base64,…` were refused here as not http(s).
    if parts := image_data_url(url):
        media = _MEDIA_TYPES.get(parts[0].lower())
        if media is None:
            raise invalid(param, "Anthropic takes a data URL of image/jpeg, image/png, image/gif or image/webp")
        source = {"type": "base64", "media_type": media, "data": parts[1]}
        return {"type": "image", "source": source}
    if url[:8].lower().startswith(("https://", "http://")):
        scheme, rest = url.split(":", 1)
        return {"type": "image", "source": {"type": "url", "url": f"{scheme.lower()}:{rest}"}}
    raise NativeValidationError(
        f"{param}: image URL must be http(s) or a data:image/<type>;base64 URL", param
    )


def parse_anthropic_response(
    body: Any, *, provider: str, tier: Tier, created: int | None = None
) -> ProviderReply:
    """A Messages API response in unified form (Anthropic sends no `created`: now, unless given)."""
    if not isinstance(body, dict) or body.get("type", "message") != "message":
        raise TranslationError("Upstream response is not a message", provider=provider)
    if body.get("role", "assistant") != "assistant":
        raise TranslationError("Upstream message is not from the assistant", provider=provider)
    blocks = body.get("content")
    if not isinstance(blocks, list):
        raise TranslationError("Upstream message has no content list", provider=provider)
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            calls.append(_tool_call(block, provider))
        # thinking, redacted_thinking and server-side tool blocks are not part of the unified answer
    text = "".join(texts)
    message = AssistantMessage(content=text if text or not calls else None, tool_calls=calls or None)
    for key in ("id", "model"):
        if not isinstance(body.get(key), str):
            raise TranslationError(f"Upstream message has no string '{key}'", provider=provider)
    return ProviderReply(
        id=body["id"],
        created=int(time.time()) if created is None else created,
        model=body["model"],
        provider=provider,
        tier=tier,
        choices=[Choice(index=0, message=message, finish_reason=map_stop_reason(body.get("stop_reason")))],
        usage=parse_anthropic_usage(body.get("usage")),
        cache=anthropic_cache_tokens(as_object(body.get("usage"))),
    )


def _tool_call(block: dict[str, Any], provider: str) -> ToolCall:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
        raise TranslationError("Upstream tool_use block has no id or name", provider=provider)
    if not isinstance(arguments, dict):
        raise TranslationError(
            f"Malformed tool call arguments for '{name}': expected an object", provider=provider
        )
    arguments = writable_arguments(arguments, tool=name, provider=provider)
    return ToolCall.model_validate({"id": call_id, "function": {"name": name, "arguments": arguments}})


def anthropic_prompt_tokens(raw: dict[str, Any]) -> int | None:
    """Input tokens including cache writes and reads: all of them count as prompt (None when their
    sum is over MAX_COUNT: malformed)."""
    keys = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    total = sum(as_count(raw.get(key)) or 0 for key in keys)
    return total if total <= MAX_COUNT else None


def anthropic_cache_tokens(raw: dict[str, Any]) -> CacheTokens:
    """The cache writes and reads of an Anthropic `usage` object (absent counts as 0)."""
    return CacheTokens(
        as_count(raw.get("cache_creation_input_tokens")) or 0, as_count(raw.get("cache_read_input_tokens")) or 0
    )


def parse_anthropic_usage(raw: Any) -> Usage | None:
    """Anthropic's `usage` object, or None when the provider sent none or a malformed one (then the
    usage is estimated; see `parse_openai_usage`)."""
    if raw is None:
        return None
    plain, output = (
        as_count(as_object(raw).get("input_tokens")),
        as_count(as_object(raw).get("output_tokens")),
    )
    prompt = None if plain is None else anthropic_prompt_tokens(raw)
    if prompt is None or output is None:
        return None
    return Usage.of(prompt, output)
