"""What handlers depend on, gathered in one object built by the app factory (no globals)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from sentinel.api.context import context
from sentinel.config import Settings
from sentinel.domain.identity import Identity
from sentinel.errors import PayloadTooLarge
from sentinel.governance.auth import Authenticator, parse_bearer
from sentinel.observability.metrics import Metrics
from sentinel.store import Store


@dataclass
class Deps:
    """The app's shared services; handlers receive this, never module state."""

    settings: Settings
    store: Store
    metrics: Metrics
    authenticator: Authenticator

    async def authenticate(self, request: Request) -> Identity:
        """The caller's identity from `Authorization: Bearer`, or AuthenticationError (401)."""
        token = parse_bearer(request.headers.get("authorization"))
        identity = await self.authenticator.authenticate(token)
        context(request.scope).external_id = identity.external_id
        return identity

    async def read_body(self, request: Request) -> bytes:
        """The whole request body, refusing more than `max_body_bytes` (413) without buffering it."""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"Request body is larger than the {limit}-byte limit")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"Request body is larger than the {limit}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)
