"""Fixtures for provider tests: the project's mock upstream on a real socket, and a pooled session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from sentinel.mock.app import create_mock_app
from sentinel.providers.catalog import ProviderSpec
from sentinel.providers.chat import ChatProvider, make_provider
from sentinel.providers.http import create_session
from tests.support.servers import serving
from tests.support.upstream import UPSTREAM_KEY


@dataclass
class Mock:
    """The mock upstream: its root URL and its request log (what it received, in-process)."""

    url: str
    app: Any

    def last_request(self, path: str | None = None) -> dict[str, Any]:
        found = self.app.state.mock.log.last(path)
        assert found is not None, "the mock received nothing"
        return dict(found)


@pytest.fixture(scope="module")
def mock() -> Iterator[Mock]:
    app = create_mock_app()
    with serving(app) as server:
        yield Mock(server.url, app)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The app-wide upstream session, as `sentinel.wiring` builds it."""
    http = create_session(read_timeout=10, connect_timeout=5)
    yield http
    await http.close()


@pytest.fixture
def provider_for(mock: Mock, session: aiohttp.ClientSession) -> Callable[..., ChatProvider]:
    """A chat provider of `kind` on the mock (base URL as each SDK takes it), keyed unless `key=None`."""

    def build(kind: str, *, key: str | None = UPSTREAM_KEY, base_url: str | None = None) -> ChatProvider:
        base = base_url or (mock.url + "/v1" if kind == "openai" else mock.url)
        return make_provider(ProviderSpec(kind, kind, base, key), session, default_max_tokens=256)

    return build
