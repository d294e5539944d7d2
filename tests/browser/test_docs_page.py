"""The native API docs in chromium: sign in, Swagger UI renders from Sentinel's own assets (every
request stays on 127.0.0.1, so no CDN), the strict CSP holds (no violation in the console)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from tests.api.conftest import Gateway
from tests.support.browser import BROWSER_TEST, Screenshot

if TYPE_CHECKING:
    from playwright.async_api import Page

pytestmark = BROWSER_TEST

KEY = "browser-docs-key-42"


@pytest.fixture
def docs_gateway(gateway_factory: Callable[..., Gateway]) -> Gateway:
    """A Sentinel with a docs key (started in a sync fixture: the factory uses asyncio.run)."""
    return gateway_factory(docs_api_key=KEY)


async def test_sign_in_then_swagger_ui_renders_offline(
    docs_gateway: Gateway, page: Page, screenshot: Screenshot
) -> None:
    gw = docs_gateway
    first = await page.goto(gw.url + "/native/docs")
    assert first is not None and first.status == 401
    await page.wait_for_selector("form input[name=key]")
    await screenshot(page, "signin")

    await page.fill("input[name=key]", "not-the-key")
    await page.click("button[type=submit]")
    await page.wait_for_selector("p.error")
    assert "Wrong docs key" in await page.inner_text("p.error")

    page.console_errors.clear()  # type: ignore[attr-defined]  # the two 401 answers above were logged
    await page.fill("input[name=key]", KEY)
    async with page.expect_navigation():
        await page.click("button[type=submit]")
    assert page.url == gw.url + "/native/docs" and KEY not in page.url
    await page.wait_for_selector(".swagger-ui .info .title")
    assert "Sentinel Native API" in await page.inner_text(".swagger-ui .info .title")
    operation = page.locator(".opblock-summary-path", has_text="/native/v1/chat/completions")
    await operation.wait_for()
    await operation.click()
    await page.wait_for_selector(".opblock.is-open .responses-wrapper")
    await page.locator(".response[data-code='400']").wait_for()
    await screenshot(page, "swagger-ui")

    assert await page.evaluate("document.cookie") == ""  # HttpOnly: scripts cannot read the session
    assert page.outside_requests == []  # type: ignore[attr-defined]
    assert page.console_errors == []  # type: ignore[attr-defined]  # a CSP violation would be logged here

    async with page.expect_navigation():  # the page's sign-out form: the session ends, copies too
        await page.click("form[action='/native/docs/signout'] button")
    assert page.url == gw.url + "/native/docs/signin"
    again = await page.goto(gw.url + "/native/docs")
    assert again is not None and again.status == 401


async def test_key_in_url_shows_the_sign_in_form(docs_gateway: Gateway, page: Page) -> None:
    gw = docs_gateway
    response = await page.goto(f"{gw.url}/native/docs?key={KEY}")
    assert response is not None and response.status == 401
    assert "not accepted in the URL" in await page.inner_text("p.error")
    assert await page.locator(".swagger-ui").count() == 0
