"""What handlers depend on, gathered in one object built by the app factory (no globals)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from sentinel.api.bodies import read_within
from sentinel.api.body_budget import BodyBudget
from sentinel.api.context import context, header
from sentinel.api.throttle import FailedAuthThrottle, client_of
from sentinel.api.user_slots import UserSlots
from sentinel.config import Settings
from sentinel.domain.identity import Identity
from sentinel.errors import AuthenticationError
from sentinel.governance.auth import Authenticator, parse_credential
from sentinel.observability.metrics import Metrics
from sentinel.store import Store


@dataclass
class Deps:
    """The app's shared services; handlers receive this, never module state."""

    settings: Settings
    store: Store
    metrics: Metrics
    authenticator: Authenticator
    throttle: FailedAuthThrottle
    slots: UserSlots
    bodies: BodyBudget

    async def authenticate(self, request: Request) -> Identity:
        """The caller's identity from `Authorization: Bearer` or `x-api-key` (the client's credential is
        never forwarded upstream): AuthenticationError (401), or 429 for an address that failed too
        often this minute (checked before any lookup) — unless the credential's identity is cached:
        one client's failures must not lock out the users sharing its address (a NAT, a proxy)."""
        address = client_of(request)
        ctx = context(request.scope)
        with ctx.spans.span("sentinel.auth"):
            try:
                try:
                    token = ctx.credential = self.credential(request)
                except AuthenticationError as exc:
                    # No credential at all is judged on this process's count (no store round trip):
                    # it costs no lookup and guesses no key.
                    if exc.code == "missing_api_key":
                        self.throttle.check_here(address)
                    else:
                        await self.throttle.check(address)
                    raise
                identity = await self.authenticator.authenticate(
                    token, lookup=lambda: self.throttle.lookup(address), unknown=lambda: self.throttle.check(address)
                )
            except AuthenticationError as exc:  # counted before the lookup's turn is given back (no await between)
                # Not a request with no credential at all: it costs no lookup, and any page a browser
                # opens can make it send one (an <img>), so counting it let any site lock its
                # visitors' address out — the admin key and every user key behind the same NAT too.
                if exc.code != "missing_api_key":
                    await self.throttle.failed(address)  # in this process's count before its first await
                raise
        ctx.external_id = identity.external_id
        if ctx.slot is None:  # given back by RequestMiddleware once the answer is sent
            self.slots.acquire(identity.external_id)
            ctx.slot = identity.external_id
        return identity

    @staticmethod
    def credential(request: Request) -> str:
        """The credential the request presents (`Authorization: Bearer` or `x-api-key`), as
        `authenticate` reads it; AuthenticationError when there is none."""
        authorization, api_key = header(request.scope, b"authorization"), header(request.scope, b"x-api-key")
        return parse_credential(None if authorization is None else authorization.decode("latin-1"),
                                None if api_key is None else api_key.decode("latin-1"))

    async def read_body(self, request: Request) -> bytes:
        """The whole request body: more than `max_body_bytes` is 413 (refused without buffering it),
        not all of it within `body_timeout_seconds` is 408. (A request with more than one `Content-Type`
        never gets here: readers that pick different ones would disagree on what the body is, so the
        middleware refuses it, `duplicate_header`, `sentinel.api.middleware._ONE_LINE_HEADERS`.)"""
        limit = self.settings.max_body_bytes
        return await read_within(request, limit=limit, seconds=self.settings.body_timeout_seconds,
                                 too_large=f"Request body is larger than the {limit}-byte limit", budget=self.bodies)
