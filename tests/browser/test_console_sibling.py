"""The console in chromium beside a page of a sibling subdomain: `console.corp.localhost` and
`wiki.corp.localhost` are one site (`corp.localhost`), so the wiki's requests to the console carry its
SameSite=Strict cookie (chromium resolves every `*.localhost` name to the loopback, and sends the
`Sec-Fetch-*` headers to it as to an https origin)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from tests.api.conftest import Gateway
from tests.support.browser import BROWSER_TEST
from tests.support.servers import ServerThread, serving

if TYPE_CHECKING:
    from playwright.async_api import Browser

pytestmark = BROWSER_TEST

ADMIN_KEY = "browser-admin-key-0123456789"


@pytest.fixture
def console_gateway(gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(admin_key=ADMIN_KEY)


@pytest.fixture
def wiki(console_gateway: Gateway) -> Iterator[ServerThread]:
    """The sibling's page: images of the console's exports, as any page of the company's domain may hold."""
    console = f"http://console.corp.localhost:{console_gateway.server.port}"

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(f'<img src="{console}/admin/export.csv?since=3650d">'
                            f'<img src="{console}/admin/api/usage.csv?since=3650d">')

    with serving(Starlette(routes=[Route("/", page)])) as server:
        yield server


async def test_a_sibling_subdomains_page_runs_no_report_in_the_operators_browser(
    console_gateway: Gateway, wiki: ServerThread, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each operator who opened such a page ran two whole-ledger reports (up to
    DATABASE_REPORT_TIMEOUT_SECONDS each on the reports' two connections); none now."""
    gw = console_gateway
    ran: list[object] = []
    export = gw.runtime.admin.usage_csv

    async def counted(*args: object) -> str:
        ran.append(args)
        return await export(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(gw.runtime.admin, "usage_csv", counted)
    context = await browser.new_context()  # every *.localhost name is the loopback: nothing leaves the machine
    try:
        page = await context.new_page()
        console = f"http://console.corp.localhost:{gw.server.port}"
        await page.goto(console + "/admin/signin")
        await page.fill("input[name=key]", ADMIN_KEY)
        async with page.expect_navigation():
            await page.click("button[type=submit]")
        assert [c["name"] for c in await context.cookies()] == ["sentinel_admin"]
        sent: list[str] = []
        page.on("request", lambda request: sent.append(request.url))
        await page.goto(f"http://wiki.corp.localhost:{wiki.port}/", wait_until="load")  # its images answered
        assert len([url for url in sent if ".csv" in url]) == 2 and ran == []
        async with page.expect_download() as download:  # the console's own form still exports
            await page.goto(console + "/admin")
            await page.click("form[action='/admin/export.csv'] button[type=submit]")
        assert (await download.value).suggested_filename.startswith("sentinel-usage-") and len(ran) == 1
    finally:
        await context.close()
