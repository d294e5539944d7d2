"""Helpers for the native tests: check request bodies against the official SDKs' request types."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from anthropic.types import message_create_params as anthropic_params
from openai.types.chat import completion_create_params as openai_params
from pydantic import TypeAdapter

Check = Callable[[dict[str, Any]], dict[str, Any]]


def _materialize(value: Any) -> Any:
    """pydantic validates `Iterable[...]` fields lazily: walk everything so every error surfaces."""
    if isinstance(value, dict):
        return {k: _materialize(v) for k, v in value.items()}
    if isinstance(value, list | tuple) or type(value).__name__ == "ValidatorIterator":
        return [_materialize(v) for v in value]
    return value


def _checker(*types: Any) -> Check:
    adapters = [TypeAdapter(t) for t in types]

    def check(body: dict[str, Any]) -> dict[str, Any]:
        adapter = adapters[1] if body.get("stream") and len(adapters) > 1 else adapters[0]
        return _materialize(adapter.validate_python(body))

    return check


@pytest.fixture(scope="session")
def openai_wire() -> Check:
    """Validate a body against openai's CompletionCreateParams (streaming or not); raises on mismatch."""
    return _checker(
        openai_params.CompletionCreateParamsNonStreaming, openai_params.CompletionCreateParamsStreaming
    )


@pytest.fixture(scope="session")
def anthropic_wire() -> Check:
    """Validate a body against anthropic's MessageCreateParams (streaming or not); raises on mismatch."""
    return _checker(
        anthropic_params.MessageCreateParamsNonStreaming, anthropic_params.MessageCreateParamsStreaming
    )
