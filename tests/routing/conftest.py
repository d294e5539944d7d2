"""HTTP fixtures for routing tests: the API tests' gateway factory and per-backend gateways."""

from __future__ import annotations

from tests.api.conftest import backend_url, gateway, gateway_factory, mock_upstream

__all__ = ["backend_url", "gateway", "gateway_factory", "mock_upstream"]
