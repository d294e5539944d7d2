"""Helpers shared by the mock upstream tests (imported as a sibling module)."""

from __future__ import annotations

OPENAI_AUTH = {"Authorization": "Bearer sk-test"}
ANTHROPIC_AUTH = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}


def sse_data(text: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


def expected_prompt_tokens(*texts: str) -> int:
    """The documented input rule, computed independently: 3 + sum(3 + ceil(len/4))."""
    return 3 + sum(3 + -(-len(t) // 4) for t in texts)
