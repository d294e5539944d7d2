"""Fixtures for the mock upstream tests: one real server on a socket per module, SDK clients."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from sentinel.mock import running_mock


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    """Root URL of a mock upstream served by uvicorn in a background thread."""
    with running_mock() as url:
        yield url


@pytest.fixture
def oai(mock_url: str) -> Iterator[openai.OpenAI]:
    """The official OpenAI SDK pointed at the mock (no retries, so faults surface at once)."""
    client = openai.OpenAI(api_key="sk-test", base_url=mock_url + "/v1", max_retries=0, timeout=10)
    yield client
    client.close()


@pytest.fixture
def claude(mock_url: str) -> Iterator[anthropic.Anthropic]:
    """The official Anthropic SDK pointed at the mock (no retries)."""
    client = anthropic.Anthropic(api_key="sk-ant-test", base_url=mock_url, max_retries=0, timeout=10)
    yield client
    client.close()


@pytest.fixture
def http(mock_url: str) -> Iterator[httpx.Client]:
    """A plain HTTP client on the mock's root, for raw wire checks."""
    with httpx.Client(base_url=mock_url, timeout=10) as client:
        yield client


KEY = "sk-mock-configured-0123456789"


@pytest.fixture(scope="module")
def keyed_mock_url() -> Iterator[str]:
    """Root URL of a mock that accepts only the key `KEY`."""
    with running_mock(api_key=KEY) as url:
        yield url
