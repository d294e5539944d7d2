"""The browser fixture works: chromium opens a page served by a real server, clicks, screenshots."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from tests.support.browser import BROWSER_TEST, SCREENSHOT_DIR, Screenshot
from tests.support.servers import ServerThread, serving

if TYPE_CHECKING:
    from playwright.async_api import Page

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>smoke</title></head>
<body><h1 id="count">clicks: 0</h1><button id="go">click me</button>
<script>
document.getElementById("go").addEventListener("click", async () => {
  const r = await fetch("/click", {method: "POST"});
  document.getElementById("count").textContent = "clicks: " + (await r.json()).clicks;
});
</script></body></html>"""


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[ServerThread, list[str]]]:
    clicks: list[str] = []

    async def home(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE)

    async def click(request: Request) -> JSONResponse:
        clicks.append(request.headers.get("user-agent", ""))
        return JSONResponse({"clicks": len(clicks)})

    app = Starlette(routes=[Route("/", home), Route("/click", click, methods=["POST"])])
    with serving(app) as server:
        yield server, clicks


@BROWSER_TEST
async def test_open_click_screenshot(
    site: tuple[ServerThread, list[str]], page: Page, screenshot: Screenshot, pytestconfig: pytest.Config
) -> None:
    server, clicks = site
    await page.goto(server.url + "/")
    assert await page.title() == "smoke"
    await page.click("#go")
    await page.wait_for_function("document.getElementById('count').textContent === 'clicks: 1'")
    await page.click("#go")
    await page.wait_for_function("document.getElementById('count').textContent === 'clicks: 2'")
    assert len(clicks) == 2 and "HeadlessChrome" in clicks[0]
    path = await screenshot(page, "clicked")
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.parent == pytestconfig.rootpath / SCREENSHOT_DIR
    assert page.console_errors == [] and page.outside_requests == []  # type: ignore[attr-defined]


@BROWSER_TEST
async def test_requests_leaving_the_machine_are_aborted_and_recorded(
    site: tuple[ServerThread, list[str]], page: Page
) -> None:
    server, _ = site
    await page.goto(server.url + "/")
    failed = await page.evaluate(
        "fetch('http://cdn.example.invalid/lib.js').then(() => 'loaded', (e) => 'blocked: ' + e.name)"
    )
    assert failed == "blocked: TypeError"
    assert page.outside_requests == ["http://cdn.example.invalid/lib.js"]  # type: ignore[attr-defined]


def test_plain_asyncio_still_works_after_the_browser_started() -> None:
    """Runs after the browser started: its loop is not left running between tests (a sync Playwright
    would break every later asyncio.run and async test of the session)."""
    import asyncio

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert asyncio.run(answer()) == 42
