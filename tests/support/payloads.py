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

# A server tool use's id, as Anthropic makes them.
SERVER_ID = "srvtoolu_01WYG3ziw53XMcoyKL4XcZmE"


def resent_blocks(text: str) -> dict[str, dict[str, Any]]:
    """Blocks a client sends back in a later turn (Anthropic's shapes), `text` where each carries its
    payload: server tools' uses and results, MCP's, redacted thinking, a search result's source, and
    a block type Sentinel does not know (one added later)."""
    page = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": text},
            "title": "Page", "citations": {"enabled": True}}
    return {
        "code_execution_tool_result": {"type": "code_execution_tool_result", "tool_use_id": SERVER_ID, "content": {
            "type": "code_execution_result", "stdout": text, "stderr": "", "return_code": 0, "content": []}},
        "bash_code_execution_tool_result": {"type": "bash_code_execution_tool_result", "tool_use_id": SERVER_ID,
                                            "content": {"type": "bash_code_execution_result", "stdout": "",
                                                        "stderr": text, "return_code": 1, "content": []}},
        "text_editor_code_execution_tool_result": {
            "type": "text_editor_code_execution_tool_result", "tool_use_id": SERVER_ID, "content": {
                "type": "text_editor_code_execution_view_result", "file_type": "text", "content": text,
                "num_lines": 1, "start_line": 1, "total_lines": 1}},
        "web_fetch_tool_result": {"type": "web_fetch_tool_result", "tool_use_id": SERVER_ID, "content": {
            "type": "web_fetch_result", "url": "https://example.com/page", "content": page,
            "retrieved_at": "2025-08-25T10:30:00Z"}},
        "web_search_tool_result": {"type": "web_search_tool_result", "tool_use_id": SERVER_ID, "content": [
            {"type": "web_search_result", "url": "https://example.com/a", "title": text[: len(text) // 2],
             "encrypted_content": text[len(text) // 2 :], "page_age": None}]},
        "server_tool_use": {"type": "server_tool_use", "id": SERVER_ID, "name": "code_execution",
                            "input": {"code": text}},
        "mcp_tool_use": {"type": "mcp_tool_use", "id": "mcptoolu_01", "name": "echo", "server_name": "tools",
                         "input": {"message": text}},
        "mcp_tool_result": {"type": "mcp_tool_result", "tool_use_id": "mcptoolu_01", "is_error": False,
                            "content": [{"type": "text", "text": text}]},
        "redacted_thinking": {"type": "redacted_thinking", "data": text},
        "search_result.source": {"type": "search_result", "source": text, "title": "R",
                                 "content": [{"type": "text", "text": "short"}]},
        "a future block type": {"type": "memory_recall_result", "tool_use_id": SERVER_ID,
                                "content": {"recalled": [{"note": text, "score": 0.9}]}},
        "a long label": {"type": "future_tool_use", "id": text},
    }
