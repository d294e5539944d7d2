"""Request and reply fragments several test packages use: one copy each."""

from __future__ import annotations

from typing import Any

# A function tool in the OpenAI/native shape.
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}

# Anthropic's stop reasons and the unified finish reason each one becomes (streamed or not).
ANTHROPIC_STOP_REASONS: list[tuple[str, str]] = [
    ("end_turn", "stop"),
    ("max_tokens", "length"),
    ("stop_sequence", "stop"),
    ("tool_use", "tool_calls"),
    ("refusal", "content_filter"),
    ("pause_turn", "stop"),
]
