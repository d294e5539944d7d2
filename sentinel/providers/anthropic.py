"""Anthropic's Messages API as a native chat provider (base URL without /v1, as the SDK takes it)."""

from __future__ import annotations

from typing import Any

from sentinel.native import ChatRequest, ProviderReply
from sentinel.native.anthropic import build_anthropic_request, parse_anthropic_response
from sentinel.native.stream import AnthropicStreamNormalizer, StreamNormalizer
from sentinel.providers.chat import ChatProvider

ANTHROPIC_VERSION = "2023-06-01"


class AnthropicProvider(ChatProvider):
    """Anthropic's Messages API (base URL without /v1, as the SDK takes it)."""

    kind = "anthropic"

    def headers(self) -> dict[str, str]:
        h = {"content-type": "application/json", "accept-encoding": "identity", "anthropic-version": ANTHROPIC_VERSION}
        if self.spec.api_key:
            h["x-api-key"] = self.spec.api_key
        return h

    def url(self) -> str:
        return self.spec.base_url + "/v1/messages"

    def body(self, req: ChatRequest, model: str, *, stream: bool) -> dict[str, Any]:
        return build_anthropic_request(req, model, stream=stream, default_max_tokens=self.default_max_tokens)

    def parse(self, body: Any, tier: str) -> ProviderReply:
        return parse_anthropic_response(body, provider=self.name, tier=tier)  # type: ignore[arg-type]

    def normalizer(self) -> StreamNormalizer:
        return AnthropicStreamNormalizer(provider=self.name)
