"""CORS from a real browser (headless chromium): a page served from an allowed origin calls Sentinel with
`fetch` — preflight, `x-api-key`, reading Sentinel's exposed headers — and the same call from a page on
another origin is refused by the browser."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from tests.api.conftest import Gateway
from tests.support.browser import BROWSER_TEST, Screenshot
from tests.support.servers import ServerThread

if TYPE_CHECKING:
    from playwright.async_api import Page

pytestmark = BROWSER_TEST

PAGE = "<!doctype html><html><head><meta charset='utf-8'><title>browser app</title></head><body>app</body></html>"
CALL = """async ([url, key]) => {
  try {
    const r = await fetch(url + "/v1/messages", {
      method: "POST",
      headers: {"content-type": "application/json", "x-api-key": key, "anthropic-version": "2023-06-01"},
      body: JSON.stringify({model: "gpt-4o-mini", max_tokens: 20,
                            messages: [{role: "user", content: "hello from the browser"}]}),
    });
    const body = await r.json();
    return {status: r.status, text: body.content[0].text, requestId: r.headers.get("x-request-id"),
            remaining: r.headers.get("x-ratelimit-remaining"), provider: r.headers.get("x-sentinel-provider")};
  } catch (e) {
    return {error: e.name};
  }
}"""


@dataclass
class Sites:
    gateway: Gateway
    allowed: ServerThread
    other: ServerThread


@pytest.fixture
def sites(gateway_factory: Callable[..., Gateway]) -> Iterator[Sites]:
    """Two static sites on their own ports (two origins) and a Sentinel allowing only the first
    (started in a sync fixture: the factory uses asyncio.run)."""

    async def home(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE)

    allowed = ServerThread(Starlette(routes=[Route("/", home)])).start()
    other = ServerThread(Starlette(routes=[Route("/", home)])).start()
    try:
        yield Sites(gateway_factory(cors_origins=allowed.url), allowed, other)
    finally:
        allowed.stop()
        other.stop()


async def test_fetch_from_an_allowed_origin_and_refused_from_another(
    sites: Sites, page: Page, screenshot: Screenshot
) -> None:
    gw = sites.gateway
    await page.goto(sites.allowed.url + "/")
    result = await page.evaluate(CALL, [gw.url, gw.key])
    assert result.get("status") == 200, result
    assert result["text"] == "Echo: hello from the browser"
    assert result["requestId"] and result["remaining"] is not None and result["provider"] == "openai"

    await page.goto(sites.other.url + "/")
    refused = await page.evaluate(CALL, [gw.url, gw.key])
    assert refused == {"error": "TypeError"}  # the browser blocked it: the preflight was refused
    await screenshot(page, "refused-origin")
    assert page.outside_requests == []  # type: ignore[attr-defined]
