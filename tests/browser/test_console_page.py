"""The operator console in chromium: sign in, create a plan, put a user on it, issue a key (reloading
the answer sends the form again and creates no second key), use it through /v1/chat/completions,
watch the requests on the user's page and in the overview chart, revoke the key and see the next
request refused; a wrong key and a form without its CSRF token are refused. Every page is
photographed (paths printed), the overview at laptop and phone widths."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.api.conftest import Gateway
from tests.support.browser import BROWSER_TEST, Screenshot

if TYPE_CHECKING:
    from playwright.async_api import Page, Route

pytestmark = BROWSER_TEST

ADMIN_KEY = "browser-admin-key-0123456789"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello from the console test"}]}
REQUESTS = 3


@pytest.fixture
def console_gateway(gateway_factory: Callable[..., Gateway]) -> Gateway:
    """A Sentinel with the console on (started in a sync fixture: the factory uses asyncio.run)."""
    return gateway_factory(admin_key=ADMIN_KEY)


async def chat(url: str, key: str) -> int:
    def send() -> int:
        with httpx.Client(base_url=url, timeout=30) as client:
            return client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}).status_code

    return await asyncio.to_thread(send)


async def reload_until(page: Page, check: Callable[[], Awaitable[bool]], within: float = 20.0) -> bool:
    """Reload `page` until `check()` holds (usage reaches the ledger a moment after the answer)."""
    deadline = time.monotonic() + within
    while True:
        if await check():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.25)
        await page.reload()


async def sign_in(page: Page, url: str) -> None:
    await page.goto(url + "/admin/signin")
    await page.fill("input[name=key]", ADMIN_KEY)
    async with page.expect_navigation():
        await page.click("button[type=submit]")
    assert page.url == url + "/admin"


async def test_operator_journey(console_gateway: Gateway, page: Page, screenshot: Screenshot) -> None:
    gw = console_gateway
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))

    # A wrong key is refused; the right one opens the overview.
    first = await page.goto(gw.url + "/admin")
    assert first is not None and page.url == gw.url + "/admin/signin"
    await page.fill("input[name=key]", "not-the-admin-key")
    await page.click("button[type=submit]")
    await page.wait_for_selector("p.error")
    assert "Wrong admin key" in await page.inner_text("p.error")
    await screenshot(page, "signin-refused")
    page.console_errors.clear()  # type: ignore[attr-defined]  # the 401 answer was logged
    await sign_in(page, gw.url)
    assert await page.evaluate("document.cookie") == ""  # HttpOnly

    # Create a plan with two limits (the second row added by the page's script); a bad window first.
    await page.click("nav >> text=Plans & tiers")
    await page.fill("form.plan-form input[name=name]", "browser-team")
    rows = page.locator("form.plan-form .limit-row")
    await rows.nth(0).locator("select[name=metric]").select_option("requests")
    await rows.nth(0).locator("input[name=limit]").fill("50")
    await rows.nth(0).locator("input[name=window]").fill("whenever")
    await page.click("form.plan-form [data-add-limit]")
    assert await rows.count() == 3
    await rows.nth(2).locator("select[name=metric]").select_option("output_tokens")
    await rows.nth(2).locator("input[name=limit]").fill("100000")
    await rows.nth(2).locator("input[name=window]").fill("1d")
    async with page.expect_navigation():
        await page.click("form.plan-form button[type=submit]")
    error = page.locator('.field-error[data-field="limits.0.window"]')
    assert "duration" in await error.inner_text()
    await screenshot(page, "plans-field-error")
    page.console_errors.clear()  # type: ignore[attr-defined]  # the 400 answer was logged
    await page.locator("form.plan-form .limit-row").nth(0).locator("input[name=window]").fill("1h")
    async with page.expect_navigation():
        await page.click("form.plan-form button[type=submit]")
    assert page.url == gw.url + "/admin/plans"
    assert "100000 output tokens per 1d, 50 requests per 1h" in await page.inner_text("table.plans")
    await screenshot(page, "plans")

    # Open a new user, put them on the plan, create a key (shown once, copyable).
    await page.click("nav >> text=Users")
    await page.fill("input[name=id]", "browser-bob")
    async with page.expect_navigation():
        await page.click("form[action='/admin/user'] button")
    assert page.url.endswith("/admin/users/browser-bob")
    await page.select_option("select[name=plan]", "browser-team")
    async with page.expect_navigation():
        await page.click("text=Change plan")
    assert await page.inner_text("strong.plan-name") == "browser-team"
    await page.fill("form.create-key input[name=name]", "browser laptop")
    async with page.expect_navigation():
        await page.click("form.create-key button[type=submit]")
    key = await page.input_value("#new-key")
    assert key.startswith("sk-sentinel-")
    await page.click("[data-copy='#new-key']")
    # (a locator, not wait_for_function: its string predicate is eval'd in the page, which the console's
    # CSP, without 'unsafe-eval', refused once under load — EvalError, the test failed)
    await page.locator("[data-copy='#new-key']:text-is('Copied')").wait_for()
    await screenshot(page, "user-new-key")

    # Reloading the answer sends the form again (a browser's "resend"): no second key, no key shown.
    page.console_errors.clear()  # type: ignore[attr-defined]
    resent = await page.reload()
    assert resent is not None and resent.status == 409 and resent.request.method == "POST"
    assert await page.locator("#new-key").count() == 0 and key not in await page.content()
    assert "This form was already sent" in await page.inner_text("section.key-sent")
    assert await page.locator("table.keys tbody tr").count() == 1
    await screenshot(page, "user-key-form-sent-again")
    page.console_errors.clear()  # type: ignore[attr-defined]  # the 409 answer was logged

    # Requests with the key show up on the user's page (ledger and live quota counters)...
    assert [await chat(gw.url, key) for _ in range(REQUESTS)] == [200] * REQUESTS
    await page.goto(gw.url + "/admin/users/browser-bob")
    assert await page.locator("#new-key").count() == 0  # never shown again

    async def recorded() -> bool:
        return await page.locator("table.recent tbody tr").count() == REQUESTS

    assert await reload_until(page, recorded)
    used = page.locator('.used[data-metric="requests"][data-window="3600"]')
    assert await used.inner_text() == str(REQUESTS)
    await screenshot(page, "user")

    # ... and in the overview's chart and tiles.
    await page.click("nav >> text=Overview")
    await page.click("nav.periods >> text=last hour")
    chart = page.locator('figure.chart svg[data-series="requests"]')

    async def charted() -> bool:  # the ledger is rolled up in the background, within about a second
        return int(await chart.get_attribute("data-total") or 0) >= REQUESTS

    assert await reload_until(page, charted)
    assert await page.locator("figure.chart svg[data-series=requests] rect.s0[height]").count() == 60
    assert "browser-bob" in await page.inner_text("table.top-users")
    await screenshot(page, "overview")
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.reload()
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than a phone
    await screenshot(page, "overview-phone")
    await page.set_viewport_size({"width": 1280, "height": 900})

    # Revoke the key: the next request is refused at once.
    await page.goto(gw.url + "/admin/users/browser-bob")
    async with page.expect_navigation():
        await page.click("table.keys button.danger")  # confirm() accepted by the dialog handler
    assert "revoked" in await page.inner_text("table.keys")
    assert await chat(gw.url, key) == 401

    # A form whose CSRF token was removed is refused.
    await page.evaluate("document.querySelectorAll('form.create-key input[name=csrf]').forEach(e => e.remove())")
    async with page.expect_navigation():
        await page.click("form.create-key button[type=submit]")
    assert "CSRF" in await page.inner_text("p.error")
    await screenshot(page, "csrf-refused")
    await page.goto(gw.url + "/admin/users/browser-bob")
    assert await page.locator("table.keys tbody tr").count() == 1  # no key was created
    page.console_errors.clear()  # type: ignore[attr-defined]  # the 403 answer was logged

    await page.click("nav >> text=Audit log")
    audit = await page.inner_text("table.audit")
    for action in ("plan.create", "user.plan", "key.create", "key.revoke"):
        assert action in audit
    await screenshot(page, "audit")
    await page.click("nav >> text=Users")
    await screenshot(page, "users")

    assert page.outside_requests == []  # type: ignore[attr-defined]  # no CDN, nothing off the machine
    assert page.console_errors == []  # type: ignore[attr-defined]  # no CSP violation, no script error


async def test_the_key_form_is_sent_once_from_its_page(console_gateway: Gateway, page: Page) -> None:
    """The page's script sends the key form once: a double click sent it twice, the browser showed
    the second answer ("already sent") and the key, in the first answer, was lost. The first post is
    held (a slow answer) while the form is submitted again."""
    gw = console_gateway
    await sign_in(page, gw.url)
    await page.goto(gw.url + "/admin/users/double-dora")
    released = asyncio.Event()

    async def hold(route: Route) -> None:
        await released.wait()
        with contextlib.suppress(Exception):  # a post the browser dropped for a later one
            await route.continue_()

    await page.route("**/admin/users/double-dora/keys", hold)
    # A listener on the window runs after the page's own (on the document): it sees their verdict.
    prevented = await page.evaluate("""() => {
        const seen = [];
        window.addEventListener("submit", (event) => seen.push(event.defaultPrevented));
        const form = document.querySelector("form.create-key");
        form.requestSubmit();
        form.requestSubmit();
        return seen;
    }""")
    assert prevented == [False, True]
    async with page.expect_navigation():
        released.set()
    assert (await page.input_value("#new-key")).startswith("sk-sentinel-")
    assert await page.locator("table.keys tbody tr").count() == 1


async def test_a_page_of_another_origin_keeps_no_handle_on_the_console_it_opens(
    console_gateway: Gateway, page: Page
) -> None:
    """A page elsewhere that opened the console (`window.open`) kept a handle on its window: it could
    watch it (`w.length`, when it navigates) and, once the operator had signed in there, send that
    window to a look-alike sign-in page of its own. `Cross-Origin-Opener-Policy: same-origin` puts
    the console in a browsing context group of its own: the opener's handle reads as closed and the
    console sees no opener. `localhost` and `127.0.0.1` are two origins (and sites) of one server."""
    gw = console_gateway
    elsewhere = gw.url.replace("127.0.0.1", "localhost")
    assert elsewhere != gw.url
    await sign_in(page, gw.url)
    await page.goto(elsewhere + "/health")
    for path in ("/admin/signin", "/admin/users"):
        async with page.expect_popup() as opened:
            await page.evaluate("(url) => { window.console_window = window.open(url); }", gw.url + path)
        popup = await opened.value
        await popup.wait_for_load_state()
        assert popup.url.startswith(gw.url + "/admin/"), popup.url
        assert await popup.evaluate("window.opener === null"), path
        assert await page.evaluate("window.console_window.closed"), path
        await popup.close()
