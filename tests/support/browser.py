"""Browser tests: Playwright (async API) driving Debian's chromium, headless, plus screenshots.

Use from a test package's conftest.py and test modules::

    # conftest.py
    from tests.support.browser import browser, page, screenshot  # noqa: F401  (fixtures)

    # test_something.py
    from tests.support.browser import BROWSER_TEST
    pytestmark = BROWSER_TEST            # run the module's tests in the browser's event loop

    async def test_it(page, screenshot):
        await page.goto(url)
        await screenshot(page, "home")

* ``browser`` (session): a chromium `Browser`; skipped locally, failed under ``CI=true`` (see
  `tests.conftest.unavailable`) when ``/usr/bin/chromium`` or the ``playwright`` package is missing.
  Playwright's own browser download does not work offline: we launch the system chromium with
  flags that stop it from phoning home. Each launch gets a fresh temporary profile
  (Playwright passes its own ``--user-data-dir`` to a non-persistent launch).
* ``page`` (test): a page in a fresh context (no shared cookies); ``page.console_errors`` lists the
  console errors and page errors seen, ``page.outside_requests`` every request that left 127.0.0.1
  (those are aborted: tests are offline).
* ``screenshot(page, name)`` (awaitable): saves ``test-artifacts/screenshots/<test>-<name>.png``
  under the rootdir and prints the path to the terminal (CI keeps the log), returning it.

Why async: Playwright's sync API keeps an event loop marked as running in the main thread for as
long as it is started, which breaks every later ``asyncio.run`` and pytest-asyncio test in the
session. The async API lives in pytest-asyncio's session loop instead, which runs only while a
browser test (or fixture) runs. Sync fixtures (servers, ``gateway_factory``) work as usual.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

from tests.conftest import unavailable

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
SCREENSHOT_DIR = Path("test-artifacts") / "screenshots"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
BROWSER_TEST = pytest.mark.asyncio(loop_scope="session")
Screenshot = Callable[["Page", str], Awaitable[Path]]


def require_browser() -> None:
    """Skip (fail under CI=true) unless chromium and the playwright package are installed."""
    if not CHROMIUM.is_file():
        unavailable(f"{CHROMIUM} not found (apt-get install chromium)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        unavailable("the playwright package is not installed (pip install -e '.[dev]')")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    """A headless chromium for the whole session."""
    require_browser()
    from playwright.async_api import Error, async_playwright

    async with async_playwright() as pw:
        try:
            launched = await pw.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS), timeout=60_000
            )
        except Error as exc:
            unavailable(f"chromium did not start: {exc}")
        try:
            yield launched
        finally:
            await launched.close()


def is_local(url: str) -> bool:
    """True for loopback http(s) URLs and in-page schemes (data:, blob:, about:)."""
    match = re.match(r"^[a-z]+://(\[[^\]]*\]|[^/:]+)", url)
    return match is None or match.group(1) in LOCAL_HOSTS


async def guarded_context(browser: Browser, **options: Any) -> tuple[BrowserContext, list[str]]:
    """A fresh browser context (`options` for `new_context`) in which requests leaving the machine
    are aborted, and the list they are recorded in."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, **options)
    context.set_default_timeout(15_000)
    outside: list[str] = []

    async def guard(route: Any) -> None:
        if is_local(route.request.url):
            await route.continue_()
        else:
            outside.append(route.request.url)
            await route.abort()

    await context.route("**/*", guard)
    return context, outside


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh context and page; requests leaving the machine are aborted and recorded."""
    context, outside = await guarded_context(browser)
    opened = await context.new_page()
    errors: list[str] = []
    opened.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.console_errors = errors  # type: ignore[attr-defined]
    opened.outside_requests = outside  # type: ignore[attr-defined]
    try:
        yield opened
    finally:
        await context.close()


@pytest.fixture
def screenshot(request: pytest.FixtureRequest) -> Screenshot:
    """An async function saving a full-page screenshot and printing where it went."""
    folder = request.config.rootpath / SCREENSHOT_DIR
    test = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")
    plugins = request.config.pluginmanager
    reporter, capture = plugins.getplugin("terminalreporter"), plugins.getplugin("capturemanager")

    async def take(target: Page, name: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{test}-{name}.png"
        await target.screenshot(path=str(path), full_page=True)
        line = f"screenshot: {path}"
        print(line)
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():  # straight to the terminal, even under capture
                reporter.write_line(line)
        return path

    return take
