"""Type checks of the fields Sentinel meters in Anthropic Messages requests, before any quota is taken.

The same rule as `sentinel.native.openai_checks` for the other wire format: the fields that decide
what is reserved and how the answer is read (`model`, `max_tokens`, `stream`, the prompt's
`system`/`messages`/`tools`) must have the documented types, or the request is a 400 naming the
parameter — never a different reservation or a 500 later. The provider validates everything else.
"""

from __future__ import annotations

from typing import Any

from sentinel.native._wire import MAX_COUNT, is_number
from sentinel.native.advisor import check_advisor_tools
from sentinel.native.errors import invalid
from sentinel.native.openai_checks import MAX_MODEL_CHARS, check_stop
from sentinel.native.types import MAX_MESSAGES_STOP_SEQUENCES


def _objects(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def _blocks(param: str, content: Any) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise invalid(param, "must be a string or an array of content blocks")
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise invalid(f"{param}.{j}", "must be a content block object with a string 'type'")
        if block["type"] == "tool_result" and block.get("content") is not None:
            _blocks(f"{param}.{j}.content", block["content"])


def check_metadata(metadata: Any) -> None:
    """Raise NativeValidationError unless `metadata` is absent or an object whose only key is `user_id`:
    Anthropic's Messages API refuses any other key (a 400 after Sentinel admitted the request, relayed),
    and none can be carried to another wire format. `user_id`'s value is never sent (the provider is
    told Sentinel's pseudonym of the caller: `sentinel.native.end_user`)."""
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise invalid("metadata", "must be an object")
    if metadata.keys() - {"user_id"}:
        raise invalid("metadata", "only metadata.user_id is accepted (the Messages API takes no other key)")


def check_messages_fields(payload: dict[str, Any], *, count_only: bool = False) -> None:
    """Raise NativeValidationError (with `param`) when a metered field of a `/v1/messages` body (or, with
    `count_only`, a `/v1/messages/count_tokens` body, which has no `max_tokens`) has the wrong type."""
    model = payload.get("model")
    if not isinstance(model, str) or not model or len(model) > MAX_MODEL_CHARS:
        raise invalid("model", f"is required and must be a non-empty string of at most {MAX_MODEL_CHARS} characters")
    if not count_only:
        max_tokens = payload.get("max_tokens")
        # (an integer past 64 bits, `10**30`, is read as a float: it gets this message too, which says the bound)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_COUNT:
            raise invalid("max_tokens", f"is required and must be an integer from 1 to {MAX_COUNT}")
        if payload.get("stream") is not None and not isinstance(payload["stream"], bool):
            raise invalid("stream", "must be a boolean")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "must be a non-empty array of message objects")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"messages.{i}", "must be a message object")
        if not isinstance(message.get("role"), str):
            raise invalid(f"messages.{i}.role", "must be a string")
        _blocks(f"messages.{i}.content", message.get("content"))
    system = payload.get("system")
    if system is not None:
        _blocks("system", system)
    if payload.get("tools") is not None and not _objects(payload["tools"]):
        raise invalid("tools", "must be an array of tool objects")
    check_advisor_tools(payload)  # (its calls are reserved: `sentinel.native.advisor`)
    if payload.get("mcp_servers") is not None and not _objects(payload["mcp_servers"]):  # (each one reserved)
        raise invalid("mcp_servers", "must be an array of MCP server objects")
    for key in ("tool_choice", "thinking"):
        if payload.get(key) is not None and not isinstance(payload[key], dict):
            raise invalid(key, "must be an object")
    check_metadata(payload.get("metadata"))
    stops = payload.get("stop_sequences")
    if stops is not None and not (isinstance(stops, list) and len(stops) <= MAX_MESSAGES_STOP_SEQUENCES
                                  and all(isinstance(s, str) for s in stops)):
        raise invalid("stop_sequences", f"must be an array of at most {MAX_MESSAGES_STOP_SEQUENCES:,} strings")
    check_stop(stops, "stop_sequences", most=None)
    for key in ("temperature", "top_p", "top_k"):
        if payload.get(key) is not None and not is_number(payload[key]):
            raise invalid(key, "must be a number")
