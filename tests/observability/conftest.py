"""HTTP fixtures for the tracing tests: the mock upstream and gateway factory of tests/api."""

from tests.api.conftest import gateway_factory, mock_upstream  # noqa: F401
