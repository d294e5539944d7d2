"""The unified request of the `/v1` surfaces when a request must be translated to another wire format.

A client of `/v1/chat/completions` or `/v1/messages` names a catalogue model; when that model lives on
a provider of the other wire format, its body is read into a `ModelChatRequest`
(`sentinel.native.openai_inbound`, `sentinel.native.anthropic_inbound`) and sent with the same
translators the Native API uses. It holds the unified fields plus what either wire format can carry
to the other: whether parallel tool calls are allowed, whether an OpenAI client asked for a usage
chunk, and a structured output (`OutputSchema`: OpenAI's `response_format` json_schema, Anthropic's
`output_config.format`) and a tool's `strict` (`ModelFunctionSpec`). The client's end-user id is not carried: the provider is told Sentinel's pseudonym of the caller
(`sentinel.native.end_user`). Tool descriptions are optional here (both wire formats allow that).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from sentinel.native.types import ChatParams, FunctionSpec, Message, Stop, StrictModel, ToolChoice, ToolSpec


class OutputSchema(StrictModel):
    """A structured output: the answer is JSON text fitting `json_schema`. `name` is OpenAI's label
    (Anthropic has none); `strict` whether the client asked OpenAI to enforce the schema (Claude
    always enforces it)."""

    json_schema: dict[str, Any]
    name: str | None = None
    strict: bool | None = None


class ModelFunctionSpec(FunctionSpec):
    """A tool's function plus `strict`: whether the client asked the provider to enforce the
    schema on the call's input (OpenAI's `function.strict`, Anthropic's tool `strict`). The Native
    API's tools take no `strict` (`sentinel.native.types.FunctionDefinition`)."""

    strict: bool | None = None


class ModelToolSpec(ToolSpec):
    """A tool of a `/v1` request (see `ModelFunctionSpec`)."""

    function: ModelFunctionSpec


class ModelChatRequest(ChatParams):
    """A chat request addressed to one model (see the module docstring)."""

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: Stop | None = None
    stream: bool = False
    tools: list[ModelToolSpec] | None = Field(default=None, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    include_usage: bool = False
    output_schema: OutputSchema | None = None
