"""HTTP fixtures for routing tests: the API tests' gateway factory, plus per-backend helpers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api.conftest import gateway, gateway_factory, mock_upstream

__all__ = ["backend_url", "gateway", "gateway_factory", "mock_upstream"]


@pytest.fixture(params=["memory", "redis"])
def backend_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """REDIS_URL for a gateway: None (in-process store) or a clean real Redis."""
    yield None if request.param == "memory" else request.getfixturevalue("redis_url")
