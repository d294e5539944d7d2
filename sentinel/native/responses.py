"""Unified response types of the Native API: the completion, the stream chunk and the error body.

Field names follow §2.5 (OpenAI's shape) plus `provider` and `tier`, so a client can see where its
request went. Tool-call arguments are JSON objects in a completion and string fragments in a chunk,
exactly as OpenAI does. Translators return a `ProviderReply`, whose usage is None when the provider
reported none; only `ProviderReply.to_response` makes the client-facing `ChatResponse`, which always
carries usage, so an unestimated response cannot be sent by mistake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ConfigDict, Field

from sentinel.native._wire import field_text
from sentinel.native.types import StrictModel, Tier, ToolCall

FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


class Usage(StrictModel):
    """Token counts of one completion; prompt tokens include cached input tokens."""

    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        """Usage with the total computed."""
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class AssistantMessage(StrictModel):
    """The assistant's answer: text, tool calls, or both; `refusal` is the text of a refusal the
    provider sent as one (OpenAI's `message.refusal`, the content then null)."""

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(StrictModel):
    """One completion choice."""

    index: int = Field(ge=0)
    message: AssistantMessage
    finish_reason: FinishReason


_RESPONSE_EXAMPLE: dict[str, Any] = {
    "id": "chatcmpl-9x7",
    "object": "chat.completion",
    "created": 1732000000,
    "model": "gpt-4o-mini",
    "provider": "openai",
    "tier": "simple",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
}


class ChatResponse(StrictModel):
    """A non-streaming completion as sent to the client."""

    model_config = ConfigDict(json_schema_extra={"examples": [_RESPONSE_EXAMPLE]})

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    provider: str
    tier: Tier
    choices: list[Choice]
    usage: Usage


@dataclass(frozen=True, slots=True)
class CacheTokens:
    """The prompt-cache part of a completion's prompt tokens: written to the cache and read from it
    (Anthropic's cache_creation/cache_read_input_tokens, OpenAI's cached_tokens). Both are included in
    `Usage.prompt_tokens`."""

    write: int = 0
    read: int = 0


@dataclass(frozen=True, slots=True)
class ProviderReply:
    """A provider's completion in unified form; `usage` is None when the provider did not report it.
    `extras` is the output the provider sent beside the content and the tool calls, as its stream's
    deltas would carry it (`sentinel.native.openai.delta_extras`: a refusal, also shown as
    `message.refusal`, reasoning, ...): counted, not otherwise shown."""

    id: str
    created: int
    model: str
    provider: str
    tier: Tier
    choices: list[Choice]
    usage: Usage | None
    cache: CacheTokens = CacheTokens()
    extras: str = ""

    def text(self) -> str:
        """All generated text, tool calls' names and arguments and the `extras` included (for
        estimating completion tokens when usage is missing: an answer of tool calls only, a refusal or
        the provider's reasoning is output too)."""
        parts: list[str] = []
        for choice in self.choices:
            parts.append(choice.message.content or "")
            for call in choice.message.tool_calls or ():
                parts.append(call.function.name + field_text(call.function.arguments))
        parts.append(self.extras)
        return "".join(parts)

    def to_response(self, usage: Usage | None = None) -> ChatResponse:
        """The client-facing response; `usage` (an estimate) is required when the provider gave none."""
        final = usage or self.usage
        if final is None:
            raise ValueError("the provider reported no usage: pass an estimate")
        return ChatResponse(
            id=self.id,
            created=self.created,
            model=self.model,
            provider=self.provider,
            tier=self.tier,
            choices=self.choices,
            usage=final,
        )


class FunctionDelta(StrictModel):
    """A fragment of a streamed function call; `arguments` is a piece of a JSON string."""

    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(StrictModel):
    """A fragment of one streamed tool call; `index` is stable per call, `id` comes in its first fragment."""

    index: int = Field(ge=0)
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta | None = None


class ChunkDelta(StrictModel):
    """What one chunk adds to the answer."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(StrictModel):
    """The single choice of a chunk."""

    index: int = Field(ge=0)
    delta: ChunkDelta
    finish_reason: FinishReason | None = None


_CHUNK_EXAMPLE: dict[str, Any] = {
    "id": "chatcmpl-9x7",
    "object": "chat.completion.chunk",
    "created": 1732000000,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}],
}


class ChatChunk(StrictModel):
    """One streamed chunk, sent as `data: <json>`; id, created and model are the same on every chunk."""

    model_config = ConfigDict(json_schema_extra={"examples": [_CHUNK_EXAMPLE]})

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ErrorDetail(StrictModel):
    """What went wrong: `type` gives the class (and the HTTP status), `code` the precise cause.

    `provider` names the upstream involved, when one was; `details` carries machine-readable
    context whose keys depend on `code` (e.g. ``{"param": "messages.0.role"}`` for a validation
    error, the limit's figures for a quota error).
    """

    message: str
    type: str
    code: str
    provider: str | None = None
    param: str | None = None
    details: dict[str, Any] | None = Field(
        default=None,
        description="Machine-readable context; its keys depend on `code`.",
        examples=[{"param": "messages.0.role"}],
    )


class ErrorBody(StrictModel):
    """The body of every native error response."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "message": "Unknown field 'model': name a tier instead",
                        "type": "invalid_request_error",
                        "code": "invalid_request",
                        "param": "model",
                    }
                }
            ]
        }
    )

    error: ErrorDetail
