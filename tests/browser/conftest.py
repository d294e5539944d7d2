"""Browser fixtures for this package (see tests/support/browser.py)."""

from tests.support.browser import browser, page, screenshot  # noqa: F401
