"""`create_app(settings)` -> the Sentinel ASGI app.

Shared clients (the store's connection pool, the SQL engine, the upstream HTTP session) are opened
in the lifespan startup, inside the running event loop, and closed at shutdown after in-flight
requests drained. Nothing is module-global, so two apps with different settings can run side by
side in one process (the tests do).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Receive, Scope, Send

from sentinel.api.debug import DebugRoutes
from sentinel.api.deps import Deps
from sentinel.api.dispatch import Dispatcher
from sentinel.api.docs import DocsRoutes
from sentinel.api.middleware import RequestMiddleware, endpoint_not_found
from sentinel.api.native import NativeAPI
from sentinel.api.ops import OpsRoutes
from sentinel.api.proxy import OpenAIProxy
from sentinel.config import Settings
from sentinel.db.engine import create_engine, migrate, session_factory
from sentinel.governance.auth import Authenticator
from sentinel.governance.keys import KeyService
from sentinel.governance.plan_source import CachedPlans
from sentinel.governance.wiring import build_governance
from sentinel.observability.metrics import Metrics
from sentinel.providers.catalog import build_catalog
from sentinel.providers.chat import make_provider
from sentinel.providers.http import create_session
from sentinel.providers.openai_compat import OpenAICompatUpstream
from sentinel.quota.deliverer import UsageDeliverer
from sentinel.quota.limiter import QuotaLimiter
from sentinel.quota.local_limiter import LocalLimiter
from sentinel.quota.meter import QuotaMeter
from sentinel.quota.outbox import DurableOutbox, RedisStreamOutbox, SqlOutbox
from sentinel.quota.tokens import TokenCounter
from sentinel.routing.health import ProviderHealth
from sentinel.routing.router import TierRouter
from sentinel.routing.selection import WeightedSelector
from sentinel.routing.sessions import SessionStore
from sentinel.store import Store, create_store
from sentinel.store.redis import RedisStore

log = logging.getLogger("sentinel.app")

# With Redis, identities and plans are also kept per process for at most this long (never past
# the stored entry's freshness), sparing two Redis round trips per request under load.
LOCAL_CACHE_SECONDS = 1.0


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    raise endpoint_not_found(scope)


@dataclass
class Runtime:
    """What the lifespan opened, so shutdown can close it in reverse order."""

    store: Store
    engine: AsyncEngine
    deps: Deps
    closers: list[Any] = field(default_factory=list)


class SentinelApp:
    """The ASGI entry point. Requests are served by the router built at startup."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.runtime: Runtime | None = None
        self._http: ASGIApp | None = None

    async def startup(self) -> None:
        s = self.settings
        store = create_store(s.redis_url, timeout=s.redis_timeout_seconds)
        engine = create_engine(s.database_url)
        await migrate(engine)
        sessions = session_factory(engine)
        http = create_session(read_timeout=s.upstream_timeout_seconds, connect_timeout=s.upstream_connect_timeout_seconds)
        keys = KeyService(sessions)
        catalog = build_catalog(s)
        governance = build_governance(s, store=store, sessions=sessions, http=http, catalog_tiers=catalog.tiers)
        authenticator = Authenticator(
            store,
            api_keys=keys,
            jwt=governance.jwt,
            ttl=s.jwt_cache_ttl_seconds,
            grace=s.governance_grace_seconds,
            metrics=self.metrics,
            local_ttl=LOCAL_CACHE_SECONDS if s.redis_url else 0.0,
        )
        openai = OpenAICompatUpstream("openai", s.effective_openai_url, s.openai_api_key, http)
        counter = TokenCounter(on_fallback=lambda wanted, used: self.metrics.tokenizer_fallback.labels(wanted, used).inc())
        await asyncio.to_thread(counter.warm)
        plans = CachedPlans(
            store, governance.plans, ttl=s.cache_ttl_seconds, grace=s.governance_grace_seconds,
            local_ttl=LOCAL_CACHE_SECONDS if s.redis_url else 0.0,
        )
        redis_outbox = RedisStreamOutbox(store, lease_seconds=s.usage_lease_seconds) if isinstance(store, RedisStore) else None
        outbox = DurableOutbox(SqlOutbox(sessions, lease_seconds=s.usage_lease_seconds), redis_outbox)
        deliverer = UsageDeliverer(outbox, governance.sink, self.metrics, interval=s.usage_flush_interval_seconds)
        meter = QuotaMeter(
            plans=plans,
            limiter=QuotaLimiter(store),
            local_limiter=LocalLimiter(),
            failure_mode=s.quota_failure_mode,
            counter=counter,
            outbox=outbox,
            metrics=self.metrics,
            default_max_output=s.default_max_output_tokens,
        )
        deps = Deps(
            settings=s,
            store=store,
            metrics=self.metrics,
            authenticator=authenticator,
            openai=openai,
            meter=meter,
            counter=counter,
        )
        chat_providers = {
            name: make_provider(spec, http, default_max_tokens=s.default_max_output_tokens)
            for name, spec in catalog.providers.items()
        }
        router = TierRouter(
            tiers=governance.tiers,
            providers=list(chat_providers),
            health=ProviderHealth(store, self.metrics),
            sessions=SessionStore(store, s.session_ttl_seconds),
            selector=WeightedSelector(),
            metrics=self.metrics,
            failover=s.session_failover,
            auto_key=s.session_auto_key,
        )
        deliverer.start()
        routes = (
            OpsRoutes(store, engine, self.metrics).routes()
            + OpenAIProxy(deps).routes()
            + NativeAPI(deps, router, chat_providers).routes()
            + DebugRoutes(deps, router).routes()
            + DocsRoutes(s.docs_api_key).routes()
        )
        self._http = RequestMiddleware(
            Dispatcher(routes, default=_not_found), metrics=self.metrics, max_in_flight=s.max_in_flight, access_log_enabled=s.access_log
        )
        self.runtime = Runtime(
            store=store,
            engine=engine,
            deps=deps,
            closers=[lambda: deliverer.stop(s.shutdown_timeout_seconds), http.close, engine.dispose, store.close],
        )

    async def shutdown(self) -> None:
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
        if self._http is None:
            raise RuntimeError("Sentinel app used before startup")
        await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.error("startup failed", exc_info=True)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings) -> SentinelApp:
    """Build (but do not start) a Sentinel app for `settings`."""
    return SentinelApp(settings)
