"""`create_app(settings)` -> the Sentinel ASGI app.

The lifespan builds the runtime (`sentinel.wiring.build_runtime`: pools, services) inside the
running event loop and closes it at shutdown after in-flight requests drained. Nothing is
module-global, so two apps with different settings can run side by side in one process (the
tests do).
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from sentinel.api.admin_api import AdminApiRoutes
from sentinel.api.admin_auth import AdminGate
from sentinel.api.admin_openapi import build_admin_openapi
from sentinel.api.anthropic import AnthropicRoutes
from sentinel.api.body_budget import BodyBudget
from sentinel.api.console import ConsoleRoutes
from sentinel.api.cors import CorsMiddleware
from sentinel.api.debug import DebugRoutes
from sentinel.api.deps import Deps
from sentinel.api.dispatch import Dispatcher
from sentinel.api.docs import DocsRoutes
from sentinel.api.middleware import RequestMiddleware
from sentinel.api.native import NativeRoutes
from sentinel.api.openai import OpenAIRoutes, PassthroughPolicy
from sentinel.api.ops import OpsRoutes
from sentinel.api.responses import endpoint_not_found
from sentinel.api.throttle import FailedAuthThrottle
from sentinel.api.tracing import TracingMiddleware
from sentinel.api.user_slots import UserSlots
from sentinel.config import ConfigError, Settings, reveal
from sentinel.db.engine import DatabaseUnreachable, SchemaTooNew
from sentinel.observability.logging import AccessLog, access_log_wanted
from sentinel.observability.metrics import Metrics
from sentinel.observability.tracing import OtelTracing, Tracing
from sentinel.wiring import Runtime, build_runtime

log = logging.getLogger("sentinel.app")


class SentinelApp:
    """The ASGI entry point. Requests are served by the routes built at startup."""

    def __init__(
        self, settings: Settings, *, tracing: Tracing | None = None, owns_process: bool = False,
        stream_clock: Callable[[], float] = time.monotonic, upstream_clock: Callable[[], float] = time.monotonic,
        window_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.tracing = tracing
        self.owns_process = owns_process
        self.stream_clock = stream_clock
        self.upstream_clock = upstream_clock
        self.window_clock = window_clock
        self.metrics = Metrics()
        self.runtime: Runtime | None = None
        self.access_log: AccessLog | None = None
        self._http: ASGIApp | None = None

    async def startup(self) -> None:
        s = self.settings
        runtime = await build_runtime(
            s, self.metrics, self.tracing, stream_clock=self.stream_clock, upstream_clock=self.upstream_clock,
            window_clock=self.window_clock,
        )
        if s.access_log and access_log_wanted():
            self.access_log = AccessLog(sys.stderr.buffer)
            self.access_log.start()
        throttle = FailedAuthThrottle(s.auth_failures_per_minute, store=runtime.store, clock=self.window_clock)
        slots = UserSlots(s.max_in_flight_per_user)
        bodies = BodyBudget(s.max_body_bytes_in_flight, s.body_bytes_per_user)
        deps = Deps(
            settings=s, store=runtime.store, metrics=self.metrics, authenticator=runtime.authenticator,
            throttle=throttle, slots=slots, bodies=bodies,
        )
        routes = (
            OpsRoutes(
                runtime.store, runtime.engine, self.metrics, metrics_token=reveal(s.metrics_token), throttle=throttle,
            ).routes()
            + AnthropicRoutes(deps, runtime.messages).routes()
            + OpenAIRoutes(deps, runtime.relay, runtime.models, PassthroughPolicy(s.passthrough_patterns)).routes()
            + NativeRoutes(deps, runtime.native).routes()
            + DebugRoutes(deps, runtime.router).routes()
            + DocsRoutes(
                reveal(s.docs_api_key), throttle=throttle, body_timeout=s.body_timeout_seconds, store=runtime.store,
            ).routes()
        )
        admin_key = reveal(s.admin_key)
        console: ConsoleRoutes | None = None
        if admin_key and runtime.admin is not None:  # without the key, every /admin* path stays 404 (JSON)
            gate = AdminGate(admin_key, throttle=throttle, store=runtime.store)
            routes += AdminApiRoutes(deps, runtime.admin, gate, build_admin_openapi()).routes()
            console = ConsoleRoutes(runtime.admin, gate, runtime.store, body_timeout=s.body_timeout_seconds)
            routes += console.routes()
        app: ASGIApp = Dispatcher(routes, not_found=endpoint_not_found)
        redact = runtime.redact  # keys a client puts in a path are never logged
        if isinstance(runtime.tracing, OtelTracing):
            app = TracingMiddleware(app, runtime.tracing, redact)
        app = RequestMiddleware(
            app,
            metrics=self.metrics, max_in_flight=s.max_in_flight, access_log=self.access_log,
            outcomes=runtime.outcomes, slots=slots, bodies=bodies, redact=redact,
            console_page=None if console is None else console.error_page,
        )
        if s.cors_origin_list:
            app = CorsMiddleware(app, origins=s.cors_origin_list)
        self._http = app
        self.runtime = runtime
        if self.owns_process:
            # Everything built so far lives as long as the process: keep it out of the garbage
            # collector's generations, so each collection walks only what requests allocate. Only
            # for `serve`: a process that builds many apps (the tests) would never free the frozen ones.
            gc.collect()
            gc.freeze()
            gc.set_threshold(50_000, 20, 20)

    async def shutdown(self) -> None:
        if self.access_log is not None:
            await self.access_log.stop()
        runtime, self.runtime = self.runtime, None
        if runtime is None:
            return
        for close in runtime.closers:
            try:
                await close()
            except Exception:  # noqa: BLE001 - shutdown must go on closing the rest
                log.warning("error while closing a resource", exc_info=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # a WebSocket (the server is configured without them): refused
            await send({"type": "websocket.close", "code": 1008})
            return
        if self._http is None:
            raise RuntimeError("Sentinel app used before startup")
        await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which exits
                    # What an operator must fix (the configuration, a database unreachable or one a
                    # newer Sentinel migrated) is said in one line by the server; a traceback only for the rest.
                    known = isinstance(exc, ConfigError | DatabaseUnreachable | SchemaTooNew)
                    log.error("startup failed", exc_info=not known)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(
    settings: Settings, *, tracing: Tracing | None = None, owns_process: bool = False,
    stream_clock: Callable[[], float] = time.monotonic, upstream_clock: Callable[[], float] = time.monotonic,
    window_clock: Callable[[], float] = time.time,
) -> SentinelApp:
    """Build (but do not start) a Sentinel app for `settings` (`tracing`: instead of the one the
    settings choose, e.g. an in-memory exporter in tests; `owns_process`: the app is all this
    process serves, so start-up may tune the garbage collector for it; `stream_clock`: the monotonic
    clock the time limit of an answer's body, streamed or not, is read on, a test's own to move;
    `upstream_clock`: the one an upstream request's sending is timed on — how soon a dropped
    connection dropped; `window_clock`: the Unix clock fixed, epoch-aligned windows are read on — the
    quotas' and the failed-authentication throttle's minutes; a test's own, so requests it counts
    never straddle a window's end)."""
    return SentinelApp(settings, tracing=tracing, owns_process=owns_process, stream_clock=stream_clock,
                       upstream_clock=upstream_clock, window_clock=window_clock)
