"""The console's pages and forms over HTTP (the browser tests drive the same pages in chromium)."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlencode

import httpx
import jwt
import pytest

from sentinel.errors import GovernanceUnavailable, StoreUnavailable
from tests.api.conftest import Gateway
from tests.support.waiting import wait_for

ADMIN_KEY = "admin-key-for-tests-0123"


class Console:
    """A signed-in browser-like client: cookie jar plus the page's CSRF token."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.http = httpx.Client(base_url=gw.url, timeout=30)
        assert self.http.post("/admin/signin", data={"key": ADMIN_KEY}).status_code == 303
        found = re.search(r'name="csrf-token" content="([0-9a-f]+)"', self.http.get("/admin/audit").text)
        assert found is not None
        self.csrf = found.group(1)

    def get(self, path: str, **kw: object) -> httpx.Response:
        return self.http.get(path, **kw)  # type: ignore[arg-type]

    def post(self, path: str, data: dict[str, str] | list[tuple[str, str]]) -> httpx.Response:
        """A form post (repeated fields in order, as a browser sends them) with the CSRF token."""
        items = list(data.items()) if isinstance(data, dict) else list(data)
        body = urlencode([*items, ("csrf", self.csrf)])
        return self.http.post(path, content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})

    def key_form(self, user_page: str) -> tuple[str, str]:
        """The create-key form's action and one-time nonce, as the user's page renders them."""
        return key_form(self.get(user_page).text)

    def create_key(self, user_page: str, data: dict[str, str]) -> httpx.Response:
        """Send the create-key form of a freshly loaded user's page, as a browser does."""
        action, nonce = self.key_form(user_page)
        return self.post(action, {**data, "nonce": nonce})


def key_form(page: str) -> tuple[str, str]:
    found = re.search(r'<form method="post" action="([^"]+)" class="inline create-key" data-once>.*?name="nonce" '
                      r'value="([0-9a-f]{32})"', page)
    assert found is not None, page
    return html.unescape(found.group(1)), found.group(2)


@pytest.fixture
def console(gateway_factory: Callable[..., Gateway]) -> Iterator[Console]:
    c = Console(gateway_factory(admin_key=ADMIN_KEY))
    yield c
    c.http.close()


def field_error(page: str, name: str) -> str | None:
    found = re.search(rf'<span class="field-error" role="alert" data-field="{re.escape(name)}">([^<]*)</span>', page)
    return None if found is None else found.group(1)


def test_pages_are_strict_html_and_signed_out_visitors_are_sent_to_sign_in(console: Console) -> None:
    anonymous = httpx.get(console.gw.url + "/admin/users")
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/admin/signin"
    for path in ("/admin", "/admin?period=1h", "/admin?period=30d", "/admin/users", "/admin/plans", "/admin/audit",
                 "/admin/users/alice"):
        page = console.get(path)
        assert page.status_code == 200, path
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store" and page.headers["x-frame-options"] == "DENY"
        assert page.headers["cross-origin-opener-policy"] == "same-origin"
        assert "<script>" not in page.text and " style=" not in page.text  # nothing inline
    css = console.get("/admin/assets/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert console.get("/admin/assets/console.css", headers={"If-None-Match": css.headers["etag"]}).status_code == 304
    assert console.get("/admin/assets/../app.py").status_code in (400, 404)


def test_plan_form_errors_stand_next_to_their_fields(console: Console) -> None:
    form = [("name", "team"), ("metric", "requests"), ("limit", "ten"), ("window", "1m"),
            ("metric", "output_tokens"), ("limit", "5000"), ("window", "fortnight"),
            ("metric", ""), ("limit", ""), ("window", "")]
    page = console.post("/admin/plans", form)
    assert page.status_code == 400
    assert field_error(page.text, "limits.0.limit") == "a whole number from 0 to 1,000,000,000,000,000"
    assert "duration" in (field_error(page.text, "limits.1.window") or "")
    assert 'value="ten"' in page.text and 'value="fortnight"' in page.text  # what was typed stays
    fixed = [("name", "team"), ("metric", "requests"), ("limit", "10"), ("window", "1m"),
             ("metric", "output_tokens"), ("limit", "5000"), ("window", "1d")]
    assert console.post("/admin/plans", fixed).status_code == 303
    listed = console.get("/admin/plans").text
    assert "5000 output tokens per 1d, 10 requests per 1m" in listed
    again = console.post("/admin/plans", fixed)
    assert again.status_code == 400 and "exists" in (field_error(again.text, "name") or "")
    edited = console.post("/admin/plans/team", [("metric", "requests"), ("limit", "20"), ("window", "1h")])
    assert edited.status_code == 303 and "20 requests per 1h" in console.get("/admin/plans").text


def test_tier_form_errors_name_their_line(console: Console) -> None:
    page = console.post("/admin/tiers/simple", {"entries": "openai/gpt-4o-mini:1\nbroken line\nopenai/gpt-4o:99"})
    assert page.status_code == 400
    assert (field_error(page.text, "entries.1") or "").startswith("line 2: invalid tier entry")
    assert "relative cost" in (field_error(page.text, "entries.2") or "")
    assert console.post("/admin/tiers/simple", {"entries": "openai/gpt-4o:2:2.5:10"}).status_code == 303
    assert "In effect (database): <bdi>openai/gpt-4o</bdi> (cost 2)" in console.get("/admin/plans").text
    assert console.post("/admin/tiers/simple/reset", {}).status_code == 303
    assert "In effect (configuration)" in console.get("/admin/plans").text


def test_a_key_is_shown_once_then_only_its_prefix(console: Console) -> None:
    page = console.create_key("/admin/users/erin", {"name": "laptop", "email": ""})
    assert page.status_code == 200
    key = re.search(r'id="new-key" readonly value="(sk-sentinel-[^"]+)"', page.text)
    assert key is not None
    later = console.get("/admin/users/erin").text
    assert key.group(1) not in later and key.group(1)[:20] in later
    with httpx.Client(base_url=console.gw.url, headers={"Authorization": f"Bearer {key.group(1)}"}) as user:
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
        assert user.post("/v1/chat/completions", json=chat).status_code == 200
        assert wait_for(lambda: "No requests recorded yet" not in console.get("/admin/users/erin").text)
        key_id = re.search(r'action="/admin/keys/(key_[0-9a-f]+)/revoke"', console.get("/admin/users/erin").text)
        assert key_id is not None
        revoked = console.post(f"/admin/keys/{key_id.group(1)}/revoke", {})
        assert revoked.status_code == 303 and revoked.headers["location"] == "/admin/users/erin"
        assert user.post("/v1/chat/completions", json=chat).status_code == 401
    audit = console.get("/admin/audit").text
    assert "key.revoke" in audit and "key.create" in audit and key.group(1) not in audit


def test_a_key_is_shown_when_the_rest_of_its_users_page_cannot_be_read(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is created, then the user's page it is shown on reads the ledger (the reports' own two
    connections, busy with an export): that read failing answered 503, the key created, active and
    shown to no one — not even when the form is sent again (409, "not shown again")."""
    gw = console.gw
    action, nonce = console.key_form("/admin/users/erin")

    async def unreadable(*args: object, **kwargs: object) -> object:
        raise GovernanceUnavailable("usage reports unavailable (pool timeout)")

    monkeypatch.setattr(gw.runtime.admin.reports.stats, "user_totals", unreadable)
    page = console.post(action, {"name": "laptop", "email": "", "nonce": nonce})
    monkeypatch.undo()
    assert page.status_code == 200, page.text
    key = _shown_key(page.text)
    assert key is not None and "usage reports unavailable" in page.text
    assert "<h1>User <bdi>erin</bdi></h1>" in page.text and 'name="csrf-token"' in page.text
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}) as user:
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
        assert user.post("/v1/chat/completions", json=chat).status_code == 200
    assert len(_keys_of(gw, "erin")) == 1


def test_a_revocation_the_store_did_not_hear_about_says_so_and_offers_to_send_it_again(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store could not take the revoked key's tombstone and the console redirected as for a done
    revocation, while the identity cached before kept the key working for up to JWT_CACHE_TTL_SECONDS."""
    gw = console.gw
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
    with gw.client() as user:
        assert user.post("/v1/chat/completions", json=chat).status_code == 200  # its identity is cached now

        async def unavailable(key: str, value: bytes, ttl: float | None = None, *, nx: bool = False) -> bool:
            raise StoreUnavailable("store unavailable (set)")

        monkeypatch.setattr(gw.runtime.store, "set", unavailable)  # as a lost Redis refuses writes
        page = console.post(f"/admin/keys/{gw.key_id}/revoke", {})
        monkeypatch.undo()
        assert page.status_code == 503, page.text
        assert "Revocation not complete" in page.text and "revoked in the database" in page.text
        assert "JWT_CACHE_TTL_SECONDS" in page.text and "<h1>User <bdi>alice</bdi></h1>" in page.text
        again = re.search(rf'<form method="post" action="(/admin/keys/{gw.key_id}/revoke)"', page.text)
        assert again is not None and "Revoke again" in page.text
        assert user.post("/v1/chat/completions", json=chat).status_code == 200  # the cached identity, as warned
        retried = console.post(again.group(1), {})
        assert retried.status_code == 303 and retried.headers["location"] == "/admin/users/alice"
        assert user.post("/v1/chat/completions", json=chat).status_code == 401
    assert console.get("/admin/audit").text.count("key.revoke") == 1


def _keys_of(gw: Gateway, external_id: str) -> list[dict[str, object]]:
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as api:
        keys: list[dict[str, object]] = api.get("/admin/api/keys", params={"user": external_id}).json()["keys"]
        return keys


def _key_creations(gw: Gateway, external_id: str) -> int:
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as api:
        entries = api.get("/admin/api/audit", params={"limit": 500}).json()["entries"]
    return sum(1 for x in entries if x["action"] == "key.create" and x["details"].get("user") == external_id)


def _shown_key(page: str) -> str | None:
    found = re.search(r'id="new-key" readonly value="(sk-sentinel-[^"]+)"', page)
    return None if found is None else found.group(1)


def test_a_key_form_sent_again_creates_no_second_key(console: Console) -> None:
    """Reloading the answer that showed a new key sent the form again, which created a second key."""
    action, nonce = console.key_form("/admin/users/frank")
    form = {"name": "laptop", "email": "", "nonce": nonce}
    first = console.post(action, form)
    key = _shown_key(first.text)
    assert first.status_code == 200 and key is not None
    again = console.post(action, form)  # a reload of the answer, a double click, back and send again
    assert again.status_code == 409, again.text
    assert key not in again.text and _shown_key(again.text) is None
    assert "This form was already sent" in again.text
    stored = _keys_of(console.gw, "frank")
    assert len(stored) == 1 and _key_creations(console.gw, "frank") == 1
    assert f"<code>{stored[0]['prefix']}\u2026</code> ({stored[0]['id']})" in again.text
    # The page answering the repeat has a form of its own: sending that one creates another key.
    assert console.post(*_with_nonce(key_form(again.text), {"name": "second"})).status_code == 200
    assert len(_keys_of(console.gw, "frank")) == 2 and _key_creations(console.gw, "frank") == 2


def _with_nonce(form: tuple[str, str], data: dict[str, str]) -> tuple[str, dict[str, str]]:
    return form[0], {**data, "nonce": form[1]}


def test_a_key_form_without_its_nonce_is_refused(console: Console) -> None:
    action, nonce = console.key_form("/admin/users/gina")
    for sent in ({"name": "laptop"}, {"name": "laptop", "nonce": ""}, {"name": "laptop", "nonce": nonce.upper()},
                 {"name": "laptop", "nonce": nonce[:-1]}, {"name": "laptop", "nonce": nonce + "0"}):
        refused = console.post(action, sent)
        assert refused.status_code == 400, (sent, refused.text)
        assert "one-time token" in refused.text and _shown_key(refused.text) is None
    assert _keys_of(console.gw, "gina") == [] and _key_creations(console.gw, "gina") == 0
    assert console.post(action, {"name": "laptop", "nonce": nonce}).status_code == 200  # still unused


def test_two_key_forms_create_two_keys_and_a_refused_form_can_be_corrected(console: Console) -> None:
    one, two = console.key_form("/admin/users/hank"), console.key_form("/admin/users/hank")
    assert one[1] != two[1]
    refused = console.post(*_with_nonce(one, {"name": "laptop", "email": "not an address"}))
    assert refused.status_code == 400 and field_error(refused.text, "email") == "an email address"
    first = console.post(*_with_nonce(one, {"name": "laptop", "email": "hank@example.com"}))  # corrected, same form
    second = console.post(*_with_nonce(two, {"name": "phone"}))
    assert first.status_code == second.status_code == 200
    assert _shown_key(first.text) != _shown_key(second.text)
    assert len(_keys_of(console.gw, "hank")) == 2 and _key_creations(console.gw, "hank") == 2


def test_a_key_form_sent_again_to_another_replica_creates_nothing(
    gateway_factory: Callable[..., Gateway], redis_url: str, tmp_path: Path
) -> None:
    """The form's nonce is claimed in the shared store: replicas behind one address agree."""
    shared = {"admin_key": ADMIN_KEY, "redis_url": redis_url,
              "database_url": f"sqlite+aiosqlite:///{tmp_path}/replicas.db"}
    one, two = gateway_factory(**shared), gateway_factory(**shared)
    console = Console(one)
    try:
        action, nonce = console.key_form("/admin/users/ivan")
        form = urlencode({"name": "laptop", "nonce": nonce, "csrf": console.csrf})
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        first = console.http.post(action, content=form, headers=headers)
        assert first.status_code == 200 and _shown_key(first.text) is not None
        cookies = {"sentinel_admin": console.http.cookies["sentinel_admin"]}
        with httpx.Client(base_url=two.url, cookies=cookies, timeout=30) as other:
            again = other.post(action, content=form, headers=headers)
        assert again.status_code == 409 and _shown_key(again.text) is None, again.text
        assert len(_keys_of(one, "ivan")) == 1 and _key_creations(two, "ivan") == 1
    finally:
        console.http.close()


def test_names_are_escaped(console: Console) -> None:
    created = console.create_key("/admin/users/%3Cscript%3Ex", {"name": "<img src=x onerror=alert(1)>"})
    assert created.status_code == 200
    for page in (created.text, console.get("/admin/users/%3Cscript%3Ex").text, console.get("/admin/users").text,
                 console.get("/admin/audit").text):
        assert "<script>x" not in page and "<img src=x" not in page
        assert "&lt;script&gt;x" in page


def test_plan_assignment_and_csv_export_from_the_console(console: Console) -> None:
    assert console.post("/admin/plans", [("name", "tiny"), ("metric", "requests"), ("limit", "1"),
                                         ("window", "1h")]).status_code == 303
    assert console.post("/admin/users/alice/plan", {"plan": "tiny"}).status_code == 303
    refused = console.post("/admin/users/alice/plan", {"plan": "no-such-plan"})
    assert refused.status_code == 400 and "does not exist" in (field_error(refused.text, "plan") or "")
    with console.gw.client() as user:  # alice's key from the gateway fixture
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
        assert [user.post("/v1/chat/completions", json=chat).status_code for _ in range(2)] == [200, 429]
    assert wait_for(lambda: "alice,gpt-4o-mini,1," in console.get("/admin/export.csv?since=1h").text)
    export = console.get("/admin/export.csv", params={"since": "1h"})
    assert export.headers["content-disposition"].startswith('attachment; filename="sentinel-usage-')
    assert console.get("/admin/export.csv", params={"since": "yesterday-ish"}).status_code == 400
    page = console.get("/admin/users/alice").text
    assert 'data-metric="requests" data-window="3600">1</span> / 1' in page


def test_bad_numbers_in_console_queries_and_forms_are_400(console: Console) -> None:
    for before in ("\u00b2", "9" * 26, "-1", "x"):
        page = console.get("/admin/audit", params={"before": before})
        assert page.status_code == 400 and "entry id" in page.text, before
    assert console.get("/admin/audit", params={"before": "0"}).status_code == 200
    assert console.get("/admin/export.csv", params={"since": "99999999d"}).status_code == 400
    assert console.get("/admin/export.csv", params={"until": "\u00b2h"}).status_code == 400
    form = [("name", "team"), ("metric", "requests"), ("limit", "\u00b2"), ("window", "1h"),
            ("metric", "output_tokens"), ("limit", "5"), ("window", "99999999999999d")]
    page = console.post("/admin/plans", form)
    assert page.status_code == 400
    assert field_error(page.text, "limits.0.limit") == "a whole number from 0 to 1,000,000,000,000,000"
    assert "at most 366d" in (field_error(page.text, "limits.1.window") or "")


def test_a_user_form_posted_without_its_user_is_refused_as_the_admin_api_refuses_it(console: Console) -> None:
    """The console read a missing `?id=` as the user "" (the admin API refused it): one rule now."""
    for path in ("/admin/user/plan", "/admin/user/keys"):
        refused = console.post(path, {"plan": "", "name": "x"})
        assert refused.status_code == 400, refused.text
        assert refused.headers["content-type"].startswith("text/html")
        assert "id: the user&#x27;s external id" in refused.text, refused.text


def test_the_audit_page_shows_a_change_as_before_and_after(console: Console) -> None:
    """A key created with another email records `email: {from, to}`: the audit page showed Python's
    repr of it (`{'from': None, 'to': ...}`); it reads `none → carol@example.com`, then the next change."""
    for email in ("carol@example.com", "c@example.org"):
        assert console.create_key("/admin/users/carol", {"name": "k", "email": email}).status_code in (200, 303)
    audit = html.unescape(console.get("/admin/audit").text)
    assert "email: none → <bdi>carol@example.com</bdi>" in audit
    assert "email: <bdi>carol@example.com</bdi> → <bdi>c@example.org</bdi>" in audit
    assert "{'from'" not in audit


def refusal_page(answer: httpx.Response, status: int) -> str:
    """The text of a console refusal's HTML page (its status checked), unescaped."""
    assert answer.status_code == status, (answer.status_code, answer.text)
    assert answer.headers["content-type"].startswith("text/html"), answer.headers["content-type"]
    assert answer.headers["cache-control"] == "no-store" and "script-src 'self'" in answer.headers["content-security-policy"]
    assert '<p class="error" role="alert">' in answer.text and "<script>" not in answer.text
    return html.unescape(answer.text)


def test_a_console_refusal_is_an_html_page_not_json(console: Console) -> None:
    """An unknown plan, an unknown key, a form posted as another content type: the console answered
    the admin API's JSON (`{"error": ...}`), a browser showing it raw; it is the console's page with
    the same status and message, and nothing changed."""
    assert "No plan 'gold'" in refusal_page(console.get("/admin/plans/gold"), 404)
    assert "No plan 'gold'" in refusal_page(console.post("/admin/plans/gold", {"metric": "requests", "limit": "1",
                                                                                "window": "1h"}), 404)
    assert "No plan 'gold'" in refusal_page(console.post("/admin/plans/gold/delete", {}), 404)
    assert "No key 'key_nope'" in refusal_page(console.post("/admin/keys/key_nope/revoke", {}), 404)
    body = urlencode({"name": "team", "metric": "requests", "limit": "1", "window": "1h", "csrf": console.csrf})
    plain = console.http.post("/admin/plans", content=body, headers={"Content-Type": "text/plain"})
    assert "posted as application/x-www-form-urlencoded" in refusal_page(plain, 400)
    marked = console.get("/admin/plans/<b>x")
    assert "No plan '<b>x'" in refusal_page(marked, 404) and "<b>" not in marked.text  # escaped
    assert "team" not in console.get("/admin/plans").text  # refused: nothing was created


@pytest.mark.parametrize("period", ["7d", "", "24H", "1h "])
def test_an_unknown_overview_period_is_refused_naming_the_periods(console: Console, period: str) -> None:
    """`/admin?period=7d` showed the last 24 hours under a link saying nothing of it, while the admin
    API's overview refused the same parameter (400): one rule, the console's page naming the periods."""
    assert "period: one of 1h, 24h, 30d" in refusal_page(console.get("/admin", params={"period": period}), 400)
    with console.gw.admin() as api:
        assert api.get("/admin/api/overview", params={"period": period}).status_code == 400


def test_the_console_export_reads_the_admin_services_clock(console: Console) -> None:
    """The console's export read the wall clock, the admin API's the service's (`AdminService.clock`):
    the same `since` named another window on each. On the service's clock, the window follows it."""
    then = datetime(2020, 3, 1, 12, 30, tzinfo=UTC)
    admin = console.gw.runtime.admin
    assert admin is not None
    admin.clock = lambda: then
    exported = console.get("/admin/export.csv", params={"since": "1d"})
    assert exported.status_code == 200, exported.text
    assert 'filename="sentinel-usage-20200301-1230.csv"' in exported.headers["content-disposition"]
    # a moment after the service's now is an empty window there, as in the admin API (the wall clock is later)
    later = {"since": "2020-06-01"}
    assert "From: before Until" in refusal_page(console.get("/admin/export.csv", params=later), 400)
    with console.gw.admin() as api:
        assert api.get("/admin/api/usage.csv", params=later).status_code == 400


BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def test_what_the_middleware_answers_on_a_console_page_is_the_consoles_page_to_a_browser(console: Console) -> None:
    """The route table's 404/405 and the canonical-path check's 400 on a console page path were the
    admin API's JSON, which a browser shows raw: to a request accepting text/html they are the
    console's page with the same status, headers and (escaped) message. A script (`*/*`) and any
    `/admin/api/*` request keep the JSON shape."""
    missing = console.get("/admin/nope<img src=x onerror=alert(1)>", headers=BROWSER)
    assert "Endpoint GET /admin/nope<img src=x onerror=alert(1)> not found" in refusal_page(missing, 404)
    assert "<img" not in missing.text and "<h1>Not found</h1>" in missing.text
    wrong_method = console.http.delete("/admin/users", headers=BROWSER)
    assert "Method DELETE not allowed" in refusal_page(wrong_method, 405)
    assert "GET" in wrong_method.headers["allow"]
    assert "('//') are not allowed" in refusal_page(console.get("/admin//users", headers=BROWSER), 400)
    posted = console.http.post("/admin/users", content=f"csrf={console.csrf}", headers={
        **BROWSER, "Content-Type": "application/x-www-form-urlencoded"})
    assert "<h1>Not allowed</h1>" in posted.text and posted.status_code == 405
    signed_out = httpx.get(console.gw.url + "/admin/nope", headers=BROWSER)  # no session: the page says no more
    assert "Endpoint GET /admin/nope not found" in refusal_page(signed_out, 404)
    for script in (console.get("/admin/nope"), console.get("/admin//users", headers={"Accept": "application/json"}),
                   console.get("/admin/api/nope", headers=BROWSER), console.get("/admin//api/users", headers=BROWSER)):
        assert script.headers["content-type"] == "application/json", script.request.url
        assert script.json()["error"]["code"] in ("endpoint_not_found", "invalid_path")
        assert script.headers["cache-control"] == "no-store"


def test_a_console_5xx_is_the_consoles_page_naming_the_request_id(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page that failed (a fault in the admin service, the store gone) answered a browser the
    admin API's JSON 500/503; it is the console's page, its status and Retry-After kept, naming the
    request id its log line holds, no traceback. The admin API stays JSON."""
    admin = console.gw.runtime.admin
    assert admin is not None

    async def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("secret internals")

    async def unavailable(*args: object, **kwargs: object) -> object:
        raise StoreUnavailable("store unavailable (get)")

    monkeypatch.setattr(admin, "audit", broken)
    failed = console.get("/admin/audit", headers=BROWSER)
    assert failed.status_code == 500 and failed.headers["content-type"].startswith("text/html")
    shown = html.unescape(failed.text)
    assert "<h1>Server error</h1>" in shown and f"(request id {failed.headers['x-request-id']})" in shown
    assert "secret internals" not in shown and "script-src 'self'" in failed.headers["content-security-policy"]
    with console.gw.admin() as api:
        assert api.get("/admin/api/audit", headers=BROWSER).json()["error"]["type"] == "server_error"
    monkeypatch.setattr(admin, "find_users", unavailable)
    down = console.get("/admin/users", headers=BROWSER)
    assert "store unavailable" in refusal_page(down, 503) and "<h1>Unavailable</h1>" in down.text
    assert console.get("/admin/users").json()["error"]["code"] == "store_unavailable"  # a script: JSON


@pytest.mark.parametrize("site", ["same-site", "cross-site"])
def test_a_form_another_site_sent_is_refused_even_with_its_token(console: Console, site: str) -> None:
    """A form post a browser says a page of another site sent (a sibling subdomain is `same-site`:
    its posts carry the SameSite=Strict cookie) was judged on its CSRF token alone: one leaked (a
    screenshot, a shared HAR) let that page change plans. Refused as the sign-in form refuses such a
    post (403, nothing changed); the console's own forms are same-origin, scripts send no such header."""
    body = urlencode({"name": "team", "metric": "requests", "limit": "1", "window": "1h", "csrf": console.csrf})
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    sent = console.http.post("/admin/plans", content=body, headers={**form, "Sec-Fetch-Site": site})
    assert "console's own page" in refusal_page(sent, 403)
    signout = console.http.post("/admin/signout", content=f"csrf={console.csrf}", headers={**form, "Sec-Fetch-Site": site})
    assert signout.status_code == 403 and "set-cookie" not in signout.headers
    assert console.get("/admin/plans").status_code == 200 and "/admin/plans/team" not in console.get("/admin/plans").text
    own = console.http.post("/admin/plans", content=body, headers={**form, "Sec-Fetch-Site": "same-origin"})
    assert own.status_code == 303 and "/admin/plans/team" in console.get("/admin/plans").text


@pytest.mark.parametrize("dest", ["image", "iframe", "script", "empty"])
def test_a_page_another_site_embeds_is_refused_before_it_is_read(
    console: Console, monkeypatch: pytest.MonkeyPatch, dest: str
) -> None:
    """A page of a sibling subdomain (`same-site`: its requests carry the SameSite=Strict cookie) that
    embeds console addresses (`<img src=/admin/export.csv?since=3650d>`, an iframe, a fetch) had each
    operator who opened it run whole-ledger reports, up to DATABASE_REPORT_TIMEOUT_SECONDS each on the
    reports' two connections: the console's usage pages 503 meanwhile. Refused (403) before anything
    is read; a link followed from there (a navigation: `document`) still opens the page."""
    gw = console.gw
    ran: list[object] = []

    async def counted(*args: object) -> str:
        ran.append(args)
        return "external_id\r\n"

    monkeypatch.setattr(gw.runtime.admin, "usage_csv", counted)
    embedded = {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": dest}
    for path in ("/admin/export.csv?since=3650d", "/admin?period=30d", "/admin/users/alice"):
        refused = console.get(path, headers=embedded)
        assert refused.status_code == 403 and "console" in refused.text, (path, refused.status_code)
    api = console.get("/admin/api/usage.csv?since=3650d", headers=embedded)  # the admin API on the cookie too
    assert api.status_code == 403 and api.json()["error"]["code"] == "cross_site_request"
    assert ran == []
    followed = {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    assert console.get("/admin/export.csv?since=3650d", headers=followed).status_code == 200 and len(ran) == 1
    own = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": dest}
    assert console.get("/admin/export.csv?since=3650d", headers=own).status_code == 200 and len(ran) == 2


def test_a_plan_change_not_in_force_names_its_users_as_every_page_does(
    gateway_factory: Callable[..., Gateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plan saved whose users' cached plans the store could not drop (503) listed those users as
    one run of text: `alice ` (a JWT's `externalId`, vouched for) read as `alice`, and an id holding
    a bidi override reordered the ids after it. Each is named as every page names a user id: isolated
    (`<bdi>`), a look-alike followed by its badge spelling it out."""
    secret = "a-console-test-secret-long-enough-for-hs256"
    gw = gateway_factory(admin_key=ADMIN_KEY, jwt_secret=secret, jwt_audience="sentinel")
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    for user in ("alice ", "bob"):
        token = jwt.encode({"sub": user, "externalId": user, "aud": "sentinel", "exp": int(time.time()) + 600},
                           secret, algorithm="HS256")
        assert httpx.post(gw.url + "/v1/chat/completions", json=chat, timeout=30,
                          headers={"Authorization": f"Bearer {token}"}).status_code == 200
    console = Console(gw)
    try:
        limits = {"metric": "requests", "limit": "100", "window": "1h"}
        assert console.post("/admin/plans", {"name": "team", **limits}).status_code == 303
        for user in ("alice ", "bob"):
            assigned = console.post(f"/admin/user/plan?id={urlencode({'': user})[1:]}", {"plan": "team"})
            assert assigned.status_code == 303, assigned.text

        async def unavailable(*args: object, **kwargs: object) -> object:
            raise StoreUnavailable("store unavailable (set)")

        monkeypatch.setattr(gw.runtime.store, "set", unavailable)  # as a lost Redis refuses writes
        page = console.post("/admin/plans/team", {**limits, "limit": "10"})
        monkeypatch.undo()
        assert page.status_code == 503 and "<h1>Saved, not yet in force everywhere</h1>" in page.text, page.text
        assert "CACHE_TTL_SECONDS" in page.text
        assert "<bdi>alice </bdi>" in page.text and "alice\\u0020</span>" in page.text  # the look-alike, spelled
        assert "<bdi>bob</bdi>" in page.text
    finally:
        console.http.close()


class _TextNodes(HTMLParser):
    """Each text node of a page with the tag it is directly inside (`<title>`, `<option>` and
    `<textarea>` hold text only: left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.nodes: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag not in ("br", "input", "meta", "link", "img", "hr"):
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        while self.open and self.open.pop() != tag:
            pass

    def handle_data(self, data: str) -> None:
        if not self.open or self.open[-1] not in ("title", "option", "textarea"):
            self.nodes.append((self.open[-1] if self.open else "", data))


def test_every_name_someone_chose_is_isolated_on_the_console(gateway_factory: Callable[..., Gateway]) -> None:
    """Only user ids were drawn isolated (`<bdi>`): an email, a key's, plan's, model's or provider's
    name (right-to-left, or holding a bidi override a provider reported or a row of an earlier version
    holds) ran on into the text around it — `Enforced now: <plan> (assigned)` swapped the plan's
    neighbours, a model `\u202ex-tpg` read as `gpt-x`, and an email read on as another's. Each is now its
    own `<bdi>`, on every page that shows it."""
    import sqlite3
    from urllib.parse import quote

    from tests.support.attack import sqlite_file

    gw = gateway_factory(admin_key=ADMIN_KEY, usage_flush_interval_seconds=0.1)
    email, key_name, plan = "\u05d3\u05d5\u05d3@example.com", "\u05de\u05d7\u05e9\u05d1 1", "gold-2"  # plans: ASCII
    model, provider = "\u202ex-tpg", "\u05e1\u05e4\u05e7"  # recorded as a provider reported them
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    with gw.admin() as http:
        limits = {"create": True, "limits": [{"metric": "requests", "limit": 100, "window": "1h"}]}
        assert http.put(f"/admin/api/plans/{quote(plan, safe='')}", json=limits).status_code == 200
        assert http.put("/admin/api/users/alice/plan", json={"plan": plan}).status_code == 200
        created = http.post("/admin/api/users/alice/keys", json={"name": key_name, "email": email})
        assert created.status_code == 201, created.text
        with gw.client(created.json()["key"]) as alice:
            assert alice.post("/v1/chat/completions", json=chat).status_code == 200
        assert wait_for(lambda: http.get("/admin/api/usage/totals", params={"user": "alice"}).json()["models"])
    conn = sqlite3.connect(sqlite_file(gw.settings.database_url), timeout=10)
    with conn:
        conn.execute("UPDATE usage_ledger SET model = ?, provider = ? WHERE external_id = 'alice'", (model, provider))
    conn.close()
    console = Console(gw)
    try:
        pages = {path: console.get(path) for path in ("/admin?period=1h", "/admin/users", "/admin/users/alice",
                                                      "/admin/plans", f"/admin/plans/{quote(plan, safe='')}",
                                                      "/admin/audit")}
    finally:
        console.http.close()
    shown: dict[str, set[str]] = {name: set() for name in (email, key_name, plan, model, provider)}
    for path, page in pages.items():
        assert page.status_code == 200, (path, page.text[:300])
        parser = _TextNodes()
        parser.feed(page.text)
        for tag, text in parser.nodes:
            for name in shown:
                if name in text:
                    assert (tag, text) == ("bdi", name), (path, tag, text)  # the whole name, isolated alone
                    shown[name].add(path)
    assert shown == {
        email: {"/admin/users", "/admin/audit"},
        key_name: {"/admin/users/alice", "/admin/audit"},
        plan: {"/admin/users", "/admin/users/alice", "/admin/plans", f"/admin/plans/{quote(plan, safe='')}",
               "/admin/audit"},
        model: {"/admin?period=1h", "/admin/users/alice"},
        provider: {"/admin?period=1h"},
    }, shown
