"""Pre-request estimates: input tokens of a request body and the output tokens it may produce."""

from __future__ import annotations

from typing import Any

from sentinel.quota.tokens import TokenCounter


def estimate_input(counter: TokenCounter, endpoint: str, model: str, payload: dict[str, Any]) -> int:
    """Input tokens the request will most likely be billed for (before the provider says)."""
    if endpoint in ("chat", "native"):
        messages = payload.get("messages")
        tools = payload.get("tools")
        return counter.count_chat(
            messages if isinstance(messages, list) else [], model, tools if isinstance(tools, list) else None
        )
    if endpoint == "completions":
        return counter.count_prompt(payload.get("prompt"), model)
    if endpoint == "embeddings":
        return counter.count_prompt(payload.get("input"), model)
    if endpoint == "responses":
        items = payload.get("input")
        total = counter.count_text(payload.get("instructions") or "", model) if payload.get("instructions") else 0
        if isinstance(items, str):
            return total + counter.count_text(items, model) + 3
        if isinstance(items, list):
            messages = [item for item in items if isinstance(item, dict) and "role" in item]
            others = [item for item in items if isinstance(item, dict) and "role" not in item]
            total += counter.count_chat(messages, model)
            for item in others:  # function_call / function_call_output items
                total += counter.count_text(str(item.get("output") or item.get("arguments") or ""), model)
        return total
    return 0


def max_output(endpoint: str, payload: dict[str, Any], default: int) -> int:
    """The most output tokens the request can produce: its own cap, or `default`."""
    if endpoint == "embeddings":
        return 0
    keys = {
        "chat": ("max_completion_tokens", "max_tokens"),
        "native": ("max_tokens",),
        "completions": ("max_tokens",),
        "responses": ("max_output_tokens",),
    }.get(endpoint, ())
    for key in keys:
        value = payload.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 16 if endpoint == "completions" else default
