"""Fixtures for HTTP tests: a real mock upstream and a real Sentinel, each on its own socket."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sentinel.app import create_app
from sentinel.config import Settings
from sentinel.mock.app import create_mock_app
from sentinel.protocol import uvicorn_protocol_options
from tests.support.servers import ServerThread, serving

UPSTREAM_KEY = "sk-upstream-secret-0123456789"


@pytest.fixture(scope="session")
def mock_upstream() -> Iterator[str]:
    """The project's mock provider (OpenAI + Anthropic wire formats); root URL without /v1."""
    with serving(create_mock_app()) as srv:
        yield srv.url


async def make_key(database_url: str, external_id: str, name: str | None = None) -> tuple[str, str]:
    from sentinel.db.engine import create_engine, migrate, session_factory
    from sentinel.governance.keys import KeyService

    engine = create_engine(database_url)
    try:
        await migrate(engine)
        info, key = await KeyService(session_factory(engine)).create_key(external_id, name)
        return info.id, key
    finally:
        await engine.dispose()


@dataclass
class Gateway:
    url: str
    key: str
    key_id: str
    settings: Settings
    server: ServerThread

    def client(self, key: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)

    def openai(self, **kw: Any) -> Any:
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.key, max_retries=0, **kw)

    def anthropic(self, **kw: Any) -> Any:
        """The official Anthropic client on Sentinel (`api_key=` unless `auth_token=` is given)."""
        import anthropic

        if "auth_token" not in kw:
            kw.setdefault("api_key", self.key)
        return anthropic.Anthropic(base_url=self.url, max_retries=0, **kw)

    def async_anthropic(self, **kw: Any) -> Any:
        import anthropic

        if "auth_token" not in kw:
            kw.setdefault("api_key", self.key)
        return anthropic.AsyncAnthropic(base_url=self.url, max_retries=0, **kw)


@pytest.fixture
def gateway_factory(tmp_path: Path, mock_upstream: str) -> Iterator[Callable[..., Gateway]]:
    """Start Sentinel with settings overrides; every gateway is stopped at the end of the test."""
    started: list[ServerThread] = []

    def start(**overrides: Any) -> Gateway:
        values: dict[str, Any] = {
            "openai_api_url": mock_upstream + "/v1",
            "openai_api_key": UPSTREAM_KEY,
            "anthropic_api_url": mock_upstream,
            "anthropic_api_key": "sk-ant-upstream-secret",
            "database_url": f"sqlite+aiosqlite:///{tmp_path}/sentinel-{len(started)}.db",
            "access_log": False,
            "redis_url": None,
        }
        values.update(overrides)
        settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
        key_id, key = asyncio.run(make_key(settings.database_url, "alice"))
        server = ServerThread(create_app(settings), **uvicorn_protocol_options(settings)).start()
        started.append(server)
        return Gateway(url=server.url, key=key, key_id=key_id, settings=settings, server=server)

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def gateway(gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory()
