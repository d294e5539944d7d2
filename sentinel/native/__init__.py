"""The pure core of the Native API: unified types, one translator per wire format, SSE parse and emit.

Nothing here does I/O or imports any other part of Sentinel; the HTTP layer calls in and maps
`NativeValidationError` to 400 and `TranslationError` to a 5xx.
"""

from sentinel.native.errors import NativeError, NativeValidationError, StreamError, TranslationError
from sentinel.native.responses import ChatChunk, ChatResponse, ErrorBody, FinishReason, ProviderReply, Usage
from sentinel.native.types import ChatRequest, Message, Tier, ToolCall, ToolDefinition
from sentinel.native.validation import parse_chat_request

__all__ = [
    "ChatChunk",
    "ChatRequest",
    "ChatResponse",
    "ErrorBody",
    "FinishReason",
    "Message",
    "NativeError",
    "NativeValidationError",
    "ProviderReply",
    "StreamError",
    "Tier",
    "ToolCall",
    "ToolDefinition",
    "TranslationError",
    "Usage",
    "parse_chat_request",
]
