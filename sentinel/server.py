"""Running Sentinel under uvicorn (uvloop + httptools), with the demo set-up of the embedded default."""

from __future__ import annotations

import asyncio
import logging
import sys

import uvicorn

from sentinel.app import create_app
from sentinel.config import Settings
from sentinel.observability.logging import configure_logging
from sentinel.protocol import uvicorn_protocol_options

log = logging.getLogger("sentinel.server")

DEMO_USER = "demo-user"
DEMO_KEY_NAME = "demo (sentinel serve)"


async def _demo_key(settings: Settings) -> str:
    """A fresh demo key for the embedded default (older demo keys are revoked)."""
    from sentinel.db.engine import create_engine, migrate, session_factory
    from sentinel.governance.keys import KeyService

    engine = create_engine(settings.database_url)
    try:
        await migrate(engine)
        keys = KeyService(session_factory(engine))
        for old in await keys.list_keys(DEMO_USER):
            if old.name == DEMO_KEY_NAME and old.revoked_at is None:
                await keys.revoke(old.id)
        _, key = await keys.create_key(DEMO_USER, DEMO_KEY_NAME)
        return key
    finally:
        await engine.dispose()


def serve(settings: Settings) -> int:
    """Run the gateway until SIGTERM/SIGINT; in-flight requests drain before pools close."""
    configure_logging(settings.log_level)
    stop_mock = None
    demo_key = None
    if settings.use_embedded_mock:
        from sentinel.mock.server import start_mock_in_thread

        mock_url, stop_mock = start_mock_in_thread()
        settings = settings.model_copy(
            update={
                "openai_api_url": mock_url + "/v1",
                "anthropic_api_url": mock_url,
                "openai_api_key": "mock-upstream-key",
                "anthropic_api_key": "mock-upstream-key",
            }
        )
        log.warning(
            "NO UPSTREAM CONFIGURED: serving the built-in MOCK upstream (%s). Set OPENAI_API_KEY / "
            "OPENAI_API_URL (or ANTHROPIC_*) for real providers.",
            mock_url,
        )
        demo_key = asyncio.run(_demo_key(settings))
    if not settings.docs_api_key:
        log.warning("DOCS_API_KEY is not set: /native/docs is open to anyone")
    shown_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    base = f"http://{shown_host}:{settings.port}"
    print(f"Sentinel listening on {base}", flush=True)
    if demo_key:
        print(f"Demo API key (mock upstream): {demo_key}", flush=True)
        print(
            f"Try: curl -s {base}/v1/chat/completions -H 'Authorization: Bearer {demo_key}' "
            "-H 'Content-Type: application/json' "
            """-d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}]}'""",
            flush=True,
        )
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        **uvicorn_protocol_options(settings),
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
        server_header=False,
        proxy_headers=False,  # Sentinel does not use the client address; skip the X-Forwarded-* rewrite
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    finally:
        if stop_mock is not None:
            stop_mock()
    return 0 if server.started else 1
