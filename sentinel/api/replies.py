"""Service replies rendered as ASGI responses."""

from __future__ import annotations

from sentinel.api.responses import RawResponse, StreamingRelay, encode_headers
from sentinel.services.exchange import Reply, StreamReply


def render(reply: Reply | StreamReply) -> RawResponse | StreamingRelay:
    """The ASGI response for a service reply."""
    if isinstance(reply, Reply):
        return RawResponse(reply.status, reply.body, encode_headers(reply.headers))
    return StreamingRelay(reply.status, encode_headers(reply.headers), reply.chunks, reply.on_close)
