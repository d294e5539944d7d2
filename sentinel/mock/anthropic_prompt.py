"""Anthropic Messages request parsing for the mock: validation, the prompt's texts and its token count.

Validation follows the real API where a gateway's translator could get a body wrong, always as a
400 ``invalid_request_error`` whose message names the field:

* ``model`` / ``max_tokens`` (>= 1) / ``messages`` (non-empty, roles ``user``/``assistant``);
  ``temperature`` within 0..1;
* ``system``: a string or a list of ``text`` blocks;
* content blocks: ``text`` needs a string ``text``; ``image`` needs a ``base64`` source with a
  media type among jpeg/png/gif/webp and valid base64 data (or a ``url`` source);
  ``tool_use`` needs ``id``, ``name`` and an object ``input``; ``tool_result`` a ``tool_use_id``;
* every ``tool_result`` answers a ``tool_use`` of the previous (assistant) message, and a
  ``tool_use`` followed by another message is answered there;
* custom tools need a ``name`` and an object ``input_schema`` (``strict``, if given, is a boolean:
  strict tool use); ``tool_choice`` is one of
  ``auto``/``any``/``tool``/``none`` (``tool`` with a ``name``; ``none`` takes no
  ``disable_parallel_tool_use``, nor any other field) and needs ``tools``; so does a conversation
  holding a ``tool_use`` or ``tool_result`` block.

Input tokens: `sentinel.mock.text.prompt_tokens` over the system text and one text per message
(its text blocks, the text of its tool results, and ``name + JSON input`` of its tool uses),
plus the tool definitions, plus ``IMAGE_TOKENS`` per image block (also inside tool results).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from sentinel.mock.faults import WireError
from sentinel.mock.text import REPLY_PRIMER, dumps_arguments, prompt_tokens

IMAGE_TOKENS = 100
MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})
_PARALLEL = frozenset({"type", "disable_parallel_tool_use"})
_TOOL_CHOICE_KEYS = {"auto": _PARALLEL, "any": _PARALLEL, "tool": _PARALLEL | {"name"}, "none": frozenset({"type"})}


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


def _blocks(content: Any) -> list[dict[str, Any]]:
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def counted_text(content: Any) -> str:
    """The text the token rule counts for one message content (text, tool results, tool uses)."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in _blocks(content):
        kind = block.get("type")
        if kind == "text":
            parts.append(block_text([block]))
        elif kind == "tool_result":
            parts.append(block_text(block.get("content")))
        elif kind == "tool_use":
            parts.append(str(block.get("name", "")) + dumps_arguments(block.get("input") or {}))
    return "".join(parts)


def image_count(content: Any) -> int:
    """Image blocks in a content, including those inside tool results."""
    total = 0
    for block in _blocks(content):
        if block.get("type") == "image":
            total += 1
        elif block.get("type") == "tool_result":
            total += image_count(block.get("content"))
    return total


def count_input(tools: Any, system: Any, messages: list[dict[str, Any]]) -> int:
    """The input-token rule (see the module docstring) for a tools/system/messages triple."""
    texts = [block_text(system)] if system else []
    texts.extend(counted_text(m.get("content")) for m in messages)
    images = sum(image_count(m.get("content")) for m in messages)
    return prompt_tokens(texts, tools) + IMAGE_TOKENS * images


def prefix_tokens(tools: Any, system: Any, messages: list[dict[str, Any]]) -> int:
    """Tokens of a prompt prefix (the rule without the reply primer)."""
    return count_input(tools, system, messages) - REPLY_PRIMER


@dataclass(frozen=True, slots=True)
class Prompt:
    """A validated Messages request body and what the mock's model reads from it."""

    body: dict[str, Any]
    messages: list[dict[str, Any]]
    user_text: str  # the last user message's text ("" when none)
    tool_results: list[str] | None  # texts of the tool results the last message carries, if any
    input_tokens: int


def parse(body: Any, json_error: str | None, *, need_max_tokens: bool) -> Prompt:
    """Validate a ``/v1/messages`` (or ``count_tokens``) body; WireError(400) names the bad field."""
    if json_error is not None or not isinstance(body, dict):
        raise WireError(400, "There was an error parsing the body of your request as JSON")
    names = ("model", "max_tokens", "messages") if need_max_tokens else ("model", "messages")
    for name in names:
        if name not in body:
            raise WireError(400, f"{name}: Field required")
    if not isinstance(body["model"], str) or not body["model"]:
        raise WireError(400, "model: Input should be a valid string")
    max_tokens = body.get("max_tokens")
    if need_max_tokens and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise WireError(400, "max_tokens: Input should be greater than or equal to 1")
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 1
    ):
        raise WireError(400, "temperature: Input should be less than or equal to 1")
    _check_system(body.get("system"))
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise WireError(400, "messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise WireError(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
        _check_content(f"messages.{i}.content", message.get("content"))
    _check_tool_pairs(messages)
    _check_tools(body.get("tools"), body.get("tool_choice"))
    if not body.get("tools") and any(b.get("type") in ("tool_use", "tool_result")
                                     for m in messages for b in _blocks(m.get("content"))):
        raise WireError(400, "Requests which include `tool_use` or `tool_result` blocks must define tools.")
    user_text = next((block_text(m.get("content")) for m in reversed(messages) if m["role"] == "user"), "")
    last = messages[-1]
    results = [
        block_text(b.get("content")) for b in _blocks(last.get("content")) if b.get("type") == "tool_result"
    ]
    return Prompt(
        body=body,
        messages=messages,
        user_text=user_text,
        tool_results=results if last["role"] == "user" and results else None,
        input_tokens=count_input(body.get("tools"), body.get("system"), messages),
    )


def _check_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise WireError(400, "system: Input should be a valid string or a list of text blocks")
    for j, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise WireError(400, f"system.{j}: Input should be a text block with a string 'text'")


def _check_content(where: str, content: Any) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise WireError(400, f"{where}: Input should be a valid string or a list of content blocks")
    for b, block in enumerate(content):
        at = f"{where}.{b}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise WireError(400, f"{at}.type: Field required")
        kind = block["type"]
        if kind == "text" and not isinstance(block.get("text"), str):
            raise WireError(400, f"{at}.text: Input should be a valid string")
        elif kind == "image":
            _check_image(at, block.get("source"))
        elif kind == "tool_use" and not (
            isinstance(block.get("id"), str) and isinstance(block.get("name"), str)
            and isinstance(block.get("input"), dict)
        ):
            raise WireError(400, f"{at}: a tool_use block needs a string 'id' and 'name' and an object 'input'")
        elif kind == "tool_result":
            if not isinstance(block.get("tool_use_id"), str):
                raise WireError(400, f"{at}.tool_use_id: Field required")
            if block.get("content") is not None:
                _check_content(f"{at}.content", block["content"])


def _check_image(at: str, source: Any) -> None:
    if not isinstance(source, dict):
        raise WireError(400, f"{at}.source: Field required")
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return
    if source.get("type") != "base64":
        raise WireError(400, f"{at}.source.type: Input should be 'base64' or 'url'")
    media = source.get("media_type")
    if not isinstance(media, str) or media not in MEDIA_TYPES:
        raise WireError(
            400, f"{at}.source.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"
        )
    data = source.get("data")
    try:
        if not isinstance(data, str) or not data:
            raise ValueError(data)
        base64.b64decode(data, validate=True)
    except (ValueError, binascii.Error):
        raise WireError(400, f"{at}.source.data: The image data is not valid base64") from None


def _check_tool_pairs(messages: list[dict[str, Any]]) -> None:
    previous_uses: set[str] = set()
    for i, message in enumerate(messages):
        blocks = _blocks(message.get("content"))
        results = [b["tool_use_id"] for b in blocks if b.get("type") == "tool_result"]
        for b, block in enumerate(blocks):
            if block.get("type") == "tool_result" and block["tool_use_id"] not in previous_uses:
                raise WireError(
                    400,
                    f"messages.{i}.content.{b}: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{block['tool_use_id']}. Each `tool_result` block must have a corresponding "
                    "`tool_use` block in the previous message.",
                )
        if previous_uses and i > 0:
            missing = sorted(previous_uses - set(results))
            if missing:
                raise WireError(
                    400,
                    f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks immediately "
                    f"after: {', '.join(missing)}. Each `tool_use` block must have a corresponding "
                    "`tool_result` block in the next message.",
                )
        uses = {b["id"] for b in blocks if b.get("type") == "tool_use"}
        previous_uses = uses if message.get("role") == "assistant" else set()


def _check_tools(tools: Any, choice: Any) -> None:
    if tools is not None:
        if not isinstance(tools, list):
            raise WireError(400, "tools: Input should be a valid list")
        for t, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise WireError(400, f"tools.{t}: Input should be a valid dictionary")
            if tool.get("type", "custom") != "custom":
                continue  # server / client tools (bash, web_search, ...) have their own shapes
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                raise WireError(400, f"tools.{t}.custom.name: Field required")
            schema = tool.get("input_schema")
            if not isinstance(schema, dict) or schema.get("type") != "object":
                raise WireError(400, f"tools.{t}.custom.input_schema.type: Input should be 'object'")
            if not isinstance(tool.get("strict", False), bool):  # (strict tool use: null is not taken)
                raise WireError(400, f"tools.{t}.custom.strict: Input should be a valid boolean")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if not isinstance(kind, str) or kind not in TOOL_CHOICES:
        raise WireError(400, "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    if choice["type"] == "tool" and not isinstance(choice.get("name"), str):
        raise WireError(400, "tool_choice.tool.name: Field required")
    extra = sorted(set(choice) - _TOOL_CHOICE_KEYS[choice["type"]])
    if extra:
        raise WireError(400, f"tool_choice.{choice['type']}.{extra[0]}: Extra inputs are not permitted")
    if not tools and choice["type"] != "none":
        raise WireError(400, "tool_choice may only be specified while providing tools.")
