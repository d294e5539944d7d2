"""Browser fixtures (see tests/support/browser.py) and a real Sentinel for the pages under test."""

from tests.api.conftest import gateway_factory, mock_upstream  # noqa: F401
from tests.support.browser import browser, page, screenshot  # noqa: F401
