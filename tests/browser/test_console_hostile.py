"""Text a user controls, shown to the operator in chromium: it reads as text and never runs.

Users put markup into the ledger and the users table through what they control — the id and email
claims of their JWT, a key issued for an id they picked (`sentinel keys create '<img …>'`), a hostile
model name and `user` field in a request — and the operator then opens the overview, the users page,
each user's page (links of both forms: `/admin/users/{id}` and `/admin/user?id=`), and the audit log.
Each page is checked twice: with its Content-Security-Policy bypassed (the HTML escaping alone must
keep every payload inert: `window.__xss` stays undefined, no element is injected) and as served
(the CSP on top: no violation logged, nothing left the machine).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import pytest

from tests.api.conftest import Gateway
from tests.browser.test_console_page import reload_until, sign_in
from tests.support.browser import BROWSER_TEST, guarded_context
from tests.support.waiting import wait_for

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

pytestmark = BROWSER_TEST

ADMIN_KEY = "browser-admin-key-0123456789"
SECRET = "a-browser-test-secret-long-enough-for-hs256"
# Every payload sets window.__xss if it ever runs: as an element, a handler, a script or a URL.
JWT_USER = '"><svg onload=window.__xss=1></script><script>window.__xss=2</script>'  # holds '/': ?id= links
JWT_EMAIL = "x@\"><img src=x onerror=window.__xss=3>.example"
KEY_USER = "<img src=x onerror=window.__xss=4>"  # no '/': a /admin/users/{id} link
KEY_NAME = "<iframe src=javascript:window.__xss=5>"
LINK_USER = "javascript:window.__xss=6"
HOSTILE_MODEL = "<img src=x onerror=window.__xss=7>"
END_USER = "</title><script>window.__xss=8</script>"
USERS = (JWT_USER, KEY_USER, LINK_USER)

INJECTED = """() => {
  const inMain = [...document.querySelectorAll("main img, main script, main iframe, main object, main embed, main svg")]
    .filter((element) => !element.closest("figure.chart"));  // the charts are the pages' own SVG
  const handlers = [...document.querySelectorAll("*")].filter(
    (element) => [...element.attributes].some((attribute) => attribute.name.startsWith("on")));
  const urls = [...document.querySelectorAll("[href], [src], [action]")].filter((element) =>
    /^\\s*javascript:/i.test(element.getAttribute("href") || element.getAttribute("src") || element.getAttribute("action")));
  return {xss: typeof window.__xss, elements: inMain.length, handlers: handlers.length, urls: urls.length};
}"""
INERT = {"xss": "undefined", "elements": 0, "handlers": 0, "urls": 0}


@pytest.fixture
def hostile_gateway(gateway_factory: Callable[..., Gateway]) -> Gateway:
    """A Sentinel with the console on and locally verified JWTs (a user's claims name their id)."""
    return gateway_factory(admin_key=ADMIN_KEY, jwt_secret=SECRET, jwt_audience="sentinel")


def user_traffic(gw: Gateway) -> None:
    """What the users send: each a request the gateway serves, plus one naming a hostile model."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    claims = {"sub": "u-1", "externalId": JWT_USER, "email": JWT_EMAIL, "aud": "sentinel",
              "exp": int(time.time()) + 600}
    bearers = [jwt.encode(claims, SECRET, algorithm="HS256")]
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        for user, name in ((KEY_USER, KEY_NAME), (LINK_USER, None)):  # as `sentinel keys create` would
            made = client.post("/admin/api/user/keys", params={"id": user}, json={"name": name}, headers=admin)
            assert made.status_code == 201, made.text
            bearers.append(made.json()["key"])
        for bearer in bearers:
            chat = {"model": "gpt-4o-mini", "user": END_USER, "messages": [{"role": "user", "content": "hi"}]}
            served = client.post("/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {bearer}"})
            assert served.status_code == 200, served.text
        refused = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {bearers[0]}"},
                              json={"model": HOSTILE_MODEL, "messages": [{"role": "user", "content": "hi"}]})
        assert refused.status_code == 404  # not in the catalogue: nothing recorded under that name


async def visit(page: Page, url: str, *, within: Callable[[], Any] | None = None) -> None:
    """Open `url` (and reload until `within()` holds, for data the ledger writes a moment later);
    nothing on it ran or was injected."""
    await page.goto(url)
    shown = within is None or await reload_until(page, within)
    assert await page.evaluate(INJECTED) == INERT, url
    assert shown, url


async def operator_tour(page: Page, url: str) -> None:
    """Every page showing the users' text, each checked by `visit`."""
    await sign_in(page, url)

    async def top_users() -> bool:
        shown = await page.inner_text("table.top-users")
        return all(user in shown for user in USERS)

    await visit(page, url + "/admin?period=1h", within=top_users)
    assert HOSTILE_MODEL not in await page.inner_text("table.top-models")
    links = page.locator("table.top-users a")
    hrefs = {await links.nth(i).inner_text(): await links.nth(i).get_attribute("href") for i in range(await links.count())}
    assert hrefs[KEY_USER].startswith("/admin/users/%3Cimg")
    assert hrefs[JWT_USER].startswith("/admin/user?id=")  # its '/' cannot be a path segment
    assert hrefs[LINK_USER].startswith("/admin/users/javascript")  # a path of the console, never a URL scheme
    for user in USERS:
        await page.goto(url + "/admin?period=1h")
        async with page.expect_navigation():
            await page.click(f"table.top-users a >> text={user}", strict=True)

        async def recorded() -> bool:
            return await page.locator("table.recent tbody tr").count() >= 1

        await visit(page, page.url, within=recorded)
        assert await page.inner_text("main h1") == f"User {user}"
        assert await page.title() == f"User {user} · Sentinel console"
        assert "gpt-4o-mini" in await page.inner_text("table.recent")
    await visit(page, url + hrefs[KEY_USER])
    assert KEY_NAME in await page.inner_text("table.keys")
    await visit(page, url + "/admin/users")
    shown = await page.inner_text("table.users")
    assert KEY_USER in shown and LINK_USER in shown
    await visit(page, url + "/admin/users?q=" + "%3C")  # the search echoes the query into its field
    assert await page.input_value("input[name=q]") == "<"
    await visit(page, url + "/admin/audit")
    assert KEY_USER in await page.inner_text("table.audit") and KEY_NAME in await page.inner_text("table.audit")


async def test_user_text_is_shown_as_text_even_without_the_csp(hostile_gateway: Gateway, browser: Browser) -> None:
    """The escaping alone: the same tour with the page's CSP bypassed, so a payload that reached the
    page as markup would run and set window.__xss."""
    await asyncio.to_thread(user_traffic, hostile_gateway)
    context, outside = await guarded_context(browser, bypass_csp=True)
    try:
        await operator_tour(await context.new_page(), hostile_gateway.url)
    finally:
        await context.close()
    assert outside == []


async def test_user_text_is_shown_as_text_under_the_csp(hostile_gateway: Gateway, page: Page) -> None:
    """As served: the tour passes with the CSP in force and no violation logged (an inline handler
    the CSP blocked would be one)."""
    await asyncio.to_thread(user_traffic, hostile_gateway)
    await operator_tour(page, hostile_gateway.url)
    assert page.console_errors == []  # type: ignore[attr-defined]
    assert page.outside_requests == []  # type: ignore[attr-defined]


# Ids an identity source may vouch for that a page draws as another's: whitespace at an end, a
# no-break space, two spaces in a row, a decomposed accent (NFC: `zoé`).
LOOK_ALIKES = ("alice", "alice ", " alice", "alice\u00a0", "bob smith", "bob  smith", "zo\u00e9", "zoe\u0301")


def look_alike_traffic(gw: Gateway) -> None:
    """One served request from each of LOOK_ALIKES, each a JWT's `externalId`."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        for user in LOOK_ALIKES:
            claims = {"sub": f"sub-{LOOK_ALIKES.index(user)}", "externalId": user, "aud": "sentinel",
                      "exp": int(time.time()) + 600}
            token = jwt.encode(claims, SECRET, algorithm="HS256")
            served = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"})
            assert served.status_code == 200, served.text


def as_read(text: str) -> str:
    """What a reader takes from drawn text: runs of whitespace (a no-break space too) as one space,
    none at the ends, a decomposed accent as the composed one."""
    import unicodedata

    return unicodedata.normalize("NFC", " ".join(text.split()))


async def test_user_ids_that_look_alike_read_apart(hostile_gateway: Gateway, page: Page) -> None:
    """A JWT may name its user `alice ` (or `alice\\u00a0`, `zoe\\u0301`): the operator surfaces refuse
    such an id for a new user, but one an identity source vouched for is served and recorded, and the
    console drew it exactly as `alice` — two rows reading `alice` in the top users, the user's page
    titled `User alice` — so the operator could change the plan of, or revoke, the wrong one."""
    await asyncio.to_thread(look_alike_traffic, hostile_gateway)
    await sign_in(page, hostile_gateway.url)

    async def listed() -> bool:
        return await page.locator("table.top-users tbody tr").count() == len(LOOK_ALIKES)

    await visit(page, hostile_gateway.url + "/admin?period=1h", within=listed)
    cells = page.locator("table.top-users tbody tr td:first-child")
    shown = [as_read(await cells.nth(i).inner_text()) for i in range(await cells.count())]
    assert len(set(shown)) == len(LOOK_ALIKES), shown
    links = page.locator("table.top-users a")
    hrefs = {await links.nth(i).get_attribute("href") for i in range(await links.count())}
    assert "/admin/users/alice%20" in hrefs
    # its page, and that of an id only a link can name now (Sentinel refuses a bidi override in every
    # id; a row an earlier version recorded may hold one): `\u202eecila` is drawn as `alice`
    for path, spelled in (("alice%20", "alice\\u0020"), ("%E2%80%AEecila", "\\u202eecila")):
        await visit(page, f"{hostile_gateway.url}/admin/users/{path}")
        assert await page.locator("main .look-alike-id").count() == 1, path
        assert spelled in await page.inner_text("main .look-alike-id .look-alike"), path
        # the heading and the tab name it too: they drew `User alice` above the notice and in the tab bar
        assert spelled in await page.inner_text("main h1 .look-alike"), path
        assert await page.title() == f"User {spelled} · Sentinel console", path
        drawn = await page.evaluate("""() => {  // the id is isolated: an override in it leaves the badge after it
          const [id, badge] = ["main .look-alike-id bdi", "main .look-alike-id .look-alike"].map(
            (selector) => document.querySelector(selector).getBoundingClientRect());
          return badge.left >= id.right;
        }""")
        assert drawn, path
    await visit(page, hostile_gateway.url + "/admin/users/alice")
    assert await page.locator("main .look-alike-id").count() == 0
    assert await page.locator("main h1 .look-alike").count() == 0 and await page.title() == "User alice · Sentinel console"


# Ids a JWT vouches for that made an audit entry of a key read otherwise: one forging the details
# after it, one drawn as `alice`.
FORGING_USER = "bob, name: laptop, prefix: sk-sentinel-forged"
SPACED_USER = "alice\u00a0"


def audited_keys(gw: Gateway) -> None:
    """Each of FORGING_USER and SPACED_USER sends a request (its JWT names it); the operator then
    creates a key for each (the admin API refuses a look-alike id for a user it does not know yet:
    retried until the ledger holds the request) and revokes it."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        for user in (FORGING_USER, SPACED_USER):
            claims = {"sub": f"sub-{user}", "externalId": user, "aud": "sentinel", "exp": int(time.time()) + 600}
            token = jwt.encode(claims, SECRET, algorithm="HS256")
            served = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"})
            assert served.status_code == 200, served.text
            made: list[httpx.Response] = []

            def created(user: str = user, made: list[httpx.Response] = made) -> bool:
                made.append(client.post("/admin/api/user/keys", params={"id": user}, json={}, headers=admin))
                return made[-1].status_code == 201

            assert wait_for(created), made[-1].text
            revoked = client.post(f"/admin/api/keys/{made[-1].json()['id']}/revoke", headers=admin)
            assert revoked.status_code == 200, revoked.text


async def test_an_audit_entry_of_a_key_names_its_user_as_every_page_does(hostile_gateway: Gateway, page: Page) -> None:
    """A key's entries name its user in their details, which the audit page wrote as one run of text
    (`user: bob, name: laptop, prefix: sk-sentinel-forged, name: none, prefix: sk-sentinel-…`): an id a
    JWT vouched for forged the details after it, and `alice\u00a0`'s key read as `alice`'s, with no
    badge. Each detail is a line of its own, the user named as every page names a user id."""
    await asyncio.to_thread(audited_keys, hostile_gateway)
    await sign_in(page, hostile_gateway.url)
    await visit(page, hostile_gateway.url + "/admin/audit")
    rows = page.locator("table.audit tbody tr")
    assert await rows.count() == 4  # key.create and key.revoke of each
    for i in range(4):
        cell = rows.nth(i).locator("td:nth-child(5)")  # Details
        lines = (await cell.inner_text()).split("\n")
        assert lines[0] in (f"user: {FORGING_USER}", "user: alice\u00a0 alice\\u00a0"), lines  # (the id, its badge)
        # key.create's details, key.revoke's: each a line, the key's own prefix last
        assert [line.split(":")[0] for line in lines] in (["user", "name", "prefix"], ["user", "prefix"]), lines
        assert lines[-1].startswith("prefix: sk-sentinel-") and "forged" not in lines[-1], lines
        if "alice" in lines[0]:
            badge = cell.locator(".look-alike")
            assert await badge.inner_text() == "alice\\u00a0"
            assert "spaces that do not show" in (await badge.get_attribute("title") or "")


async def test_a_key_is_created_for_a_user_whose_email_the_browser_would_refuse(
    hostile_gateway: Gateway, page: Page
) -> None:
    """The key form's Email field, filled in with the user's email, was `type=email`: an email
    Sentinel holds (given with an earlier key by `sentinel keys create --email` or the admin API — an
    address with a non-ASCII local part, `josé@example.com`, or text a user gave the operator) that
    failed the browser's own stricter check made the operator's "Create key" do nothing but show the
    browser's complaint about a field they had not touched."""
    gw = hostile_gateway
    users = {"jose": "jos\u00e9@example.com", "mallory": "m@llory@example.com", "eve": "eve @example.com"}
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for user, email in users.items():
        made = await asyncio.to_thread(httpx.post, f"{gw.url}/admin/api/users/{user}/keys", json={"email": email},
                                       headers=admin, timeout=30)
        assert made.status_code == 201, made.text
    await sign_in(page, gw.url)
    for user, email in users.items():
        await visit(page, f"{gw.url}/admin/users/{user}")
        assert await page.input_value("form.create-key input[name=email]") == email
        await page.fill("form.create-key input[name=name]", "laptop")
        async with page.expect_navigation(timeout=10_000):
            await page.click("form.create-key button[type=submit]")
        assert (await page.input_value("#new-key")).startswith("sk-sentinel-"), user
        assert await page.locator("table.keys tbody tr").count() == 2, user


ERROR_PATHS = {  # a console path an attacker links the operator to, and the page's heading
    "/admin/nope<img src=x onerror=window.__xss=9>": "Not found",
    "/admin/users/x/<svg onload=window.__xss=10>": "Not found",
    "/admin//<script>window.__xss=11</script>": "Refused",  # not canonical: 400
}


async def error_tour(page: Page, url: str) -> None:
    """Open each of ERROR_PATHS signed in: the console's page, the path quoted as text, nothing run
    (no dialog either) and no CSP violation logged."""
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    await sign_in(page, url)
    for path, heading in ERROR_PATHS.items():
        answer = await page.goto(url + path)
        assert answer is not None and answer.headers["content-type"].startswith("text/html"), path
        assert await page.inner_text("main h1") == heading, path
        assert await page.evaluate(INJECTED) == INERT, path
        if heading == "Not found":  # the path, quoted as text
            assert path in await page.inner_text("main p.error"), path
    assert dialogs == []
    # (chromium logs each 4xx document as an error too: only a CSP violation counts here)
    assert not any("Content Security Policy" in error for error in errors), errors


async def test_an_error_page_a_link_leads_to_is_the_consoles_and_inert(hostile_gateway: Gateway, browser: Browser) -> None:
    """The route table's 404 and the canonical-path check's 400 on a console path answered the
    browser JSON; they are the console's page, quoting the path as text: with the CSP bypassed (the
    escaping alone) nothing runs, and as served no violation is logged."""
    for bypass in (True, False):
        context, outside = await guarded_context(browser, bypass_csp=bypass)
        try:
            await error_tour(await context.new_page(), hostile_gateway.url)
        finally:
            await context.close()
        assert outside == []
