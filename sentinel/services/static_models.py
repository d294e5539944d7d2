"""The static model catalogue served when the upstream cannot list models (the original's fallback)."""

from __future__ import annotations

from typing import Any

_ROWS = [
    ("gpt-4o", 1706745600, "openai"),
    ("gpt-4o-mini", 1706745600, "openai"),
    ("gpt-4-turbo", 1706745600, "openai"),
    ("gpt-4", 1687882411, "openai"),
    ("gpt-3.5-turbo", 1677610602, "openai"),
    ("claude-3-5-sonnet-20241022", 1729555200, "anthropic"),
    ("claude-3-5-haiku-20241022", 1729555200, "anthropic"),
    ("claude-3-opus-20240229", 1709164800, "anthropic"),
]

STATIC_MODELS: list[dict[str, Any]] = [
    {"id": model_id, "object": "model", "created": created, "owned_by": owner} for model_id, created, owner in _ROWS
]
