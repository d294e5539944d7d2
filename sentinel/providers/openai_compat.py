"""An OpenAI-compatible upstream (OpenAI itself, or xAI, Groq, vLLM, Ollama, the mock): raw forwarding.

The client's credentials and hop-by-hop headers never leave Sentinel; the provider key is injected
here and nowhere else, and it is never logged.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from sentinel.providers.http import UpstreamResponse, send

# Request headers never forwarded: credentials, hop-by-hop, and those the client library sets for
# its own connection (aiohttp recomputes length/host; encoding is pinned so usage can be read).
DROP_REQUEST_HEADERS = frozenset(
    {
        "authorization", "proxy-authorization", "x-api-key", "api-key", "cookie",
        "openai-organization", "openai-project",
        "connection", "keep-alive", "proxy-authenticate", "proxy-connection", "te", "trailer", "trailers",
        "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding", "expect",
    }
)
# Response headers never relayed: hop-by-hop ones, framing the server recomputes, and upstream
# account identifiers.
DROP_RESPONSE_HEADERS = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
        "transfer-encoding", "upgrade", "content-length", "date", "server", "x-request-id",
        "openai-organization", "openai-project", "set-cookie",
    }
)


def forwardable_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        if key not in DROP_REQUEST_HEADERS:
            out[key] = value.decode("latin-1")
    return out


def relayable_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() not in DROP_RESPONSE_HEADERS]


@dataclass
class OpenAICompatUpstream:
    """A named OpenAI-wire-format provider at `base_url` (which ends in /v1, as OpenAI's does)."""

    name: str
    base_url: str
    api_key: str | None
    session: aiohttp.ClientSession

    async def forward(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str],
        body: bytes | None,
        query: list[tuple[str, str]] | None = None,
    ) -> UpstreamResponse:
        """Send `path` (relative to the base URL, e.g. `/chat/completions`) to the upstream."""
        out = dict(headers)
        out["accept-encoding"] = "identity"
        if self.api_key:
            out["authorization"] = f"Bearer {self.api_key}"
        if body is None or method in ("GET", "HEAD"):
            body = None
        return await send(
            self.session, self.name, method, self.base_url + path, headers=out, body=body, params=query
        )
