"""Browser tests: Playwright (sync API) driving Debian's chromium, headless, plus screenshots.

Use from a test package's conftest.py::

    from tests.support.browser import browser, page, screenshot  # noqa: F401  (fixtures)

* ``browser`` (session): a chromium `Browser`; skipped locally, failed under ``CI=true`` (see
  `tests.conftest.unavailable`) when ``/usr/bin/chromium`` or the ``playwright`` package is missing.
  Playwright's own browser download does not work offline: we launch the system chromium with
  flags that stop it from phoning home. Each launch gets a fresh temporary profile
  (Playwright passes its own ``--user-data-dir`` to a non-persistent launch).
* ``page`` (test): a page in a fresh context (no shared cookies); ``page.console_errors`` lists the
  console errors and page errors seen, ``page.outside_requests`` every request that left 127.0.0.1
  (those are aborted: tests are offline).
* ``screenshot(page, name)``: saves ``test-artifacts/screenshots/<test>-<name>.png`` under the
  rootdir and prints the path to the terminal (CI keeps the log), returning it.

Browser tests are sync functions: Playwright's sync API refuses to run inside an asyncio loop.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import unavailable

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

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
Screenshot = Callable[["Page", str], Path]


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """A headless chromium for the whole session."""
    if not CHROMIUM.is_file():
        unavailable(f"{CHROMIUM} not found (apt-get install chromium)")
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        try:
            launched = pw.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS), timeout=60_000
            )
        except Error as exc:
            unavailable(f"chromium did not start: {exc}")
        try:
            yield launched
        finally:
            launched.close()


def _is_local(url: str) -> bool:
    match = re.match(r"^[a-z]+://(\[[^\]]*\]|[^/:]+)", url)
    return match is None or match.group(1) in LOCAL_HOSTS  # data:, blob:, about: stay in the page


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh context and page; requests leaving the machine are aborted and recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    opened = context.new_page()
    errors: list[str] = []
    outside: list[str] = []

    def guard(route: Any) -> None:
        if _is_local(route.request.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    opened.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.console_errors = errors  # type: ignore[attr-defined]
    opened.outside_requests = outside  # type: ignore[attr-defined]
    try:
        yield opened
    finally:
        context.close()


@pytest.fixture
def screenshot(request: pytest.FixtureRequest) -> Screenshot:
    """A function saving a full-page screenshot and printing where it went."""
    folder = request.config.rootpath / SCREENSHOT_DIR
    test = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")
    plugins = request.config.pluginmanager
    reporter, capture = plugins.getplugin("terminalreporter"), plugins.getplugin("capturemanager")

    def take(target: Page, name: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{test}-{name}.png"
        target.screenshot(path=str(path), full_page=True)
        line = f"screenshot: {path}"
        print(line)
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():  # straight to the terminal, even under capture
                reporter.write_line(line)
        return path

    return take
