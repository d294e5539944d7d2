"""The operator surfaces (console, admin API, debug views, health) against what a security review of
them found: prices that overflowed a cost, tier forms that changed or hid what was typed, a 405
where debug-off promises 404, Unicode controls in names, missing headers, store details on the
public health check, users whose ids no path can name."""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections.abc import Callable, Iterator
from urllib.parse import quote

import httpx
import pytest

from sentinel.db.models import TierModelRow, UsageMinuteRow
from tests.api.conftest import Gateway
from tests.api.test_console import ADMIN_KEY, Console, field_error, key_form
from tests.support.accounts import database

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@pytest.fixture
def gw(gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(admin_key=ADMIN_KEY)


@pytest.fixture
def api(gw: Gateway) -> Iterator[httpx.Client]:
    with gw.admin() as client:
        yield client


@pytest.fixture
def console(gw: Gateway) -> Iterator[Console]:
    c = Console(gw)
    yield c
    c.http.close()


def test_a_price_too_large_for_a_finite_cost_is_refused(api: httpx.Client) -> None:
    """`1e308` was accepted: a request's cost became `inf`, and the console's overview a 500."""
    for entry in ("openai/gpt-4o:1:1e308:1e308", "openai/gpt-4o:1:0.15:1000001"):
        refused = api.put("/admin/api/tiers/simple", json={"entries": [entry]})
        assert refused.status_code == 400, entry
        assert "1000000" in refused.json()["error"]["details"]["fields"]["entries.0"]
    assert api.put("/admin/api/tiers/simple", json={"entries": ["openai/gpt-4o:1:1e6:0"]}).status_code == 200


async def _store_tier_row(database_url: str, price: float) -> None:
    async with database(database_url) as sessions, sessions() as session:
        session.add(TierModelRow(tier="simple", position=0, provider="openai", model="gpt-4o-mini", relative_cost=1,
                                 input_price_per_million=price, output_price_per_million=0.6))
        await session.commit()


def test_a_price_stored_before_the_bound_is_read_at_the_bound(gw: Gateway, api: httpx.Client) -> None:
    """Refusing such a row when it is read would leave no tier table at all (every native call a 500)."""
    asyncio.run(_store_tier_row(gw.settings.database_url, 1e308))
    tiers = api.get("/admin/api/tiers")
    assert tiers.status_code == 200, tiers.text
    assert tiers.json()["overrides"]["simple"][0]["input_price_per_million"] == 1e6
    with gw.client() as user:
        chat = {"tier": "simple", "messages": [{"role": "user", "content": "Hi"}]}
        assert user.post("/native/v1/chat/completions", json=chat).status_code == 200


CHAT = {"tier": "simple", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.mark.parametrize("model", [
    "gpt\u20114o-mini",  # NON-BREAKING HYPHEN, pasted from a web page
    "gpt-4o-mini\u2713", "gpt-4o\u00a0mini", "gpt-4o-mini\u00e9", " gpt-4o-mini",
])
def test_a_tier_model_name_an_answer_header_cannot_carry_is_refused(
    gw: Gateway, api: httpx.Client, console: Console, model: str
) -> None:
    """A tier's model name is sent back in `X-Sentinel-Model`: any was accepted, and one outside
    Latin-1 made every native answer of that model a 500 once the provider had served (and billed) it (a line break, which the providers file or Zion could hold: a dropped connection).
    Refused now, here as in every tier source (control characters were refused before)."""
    before = api.get("/admin/api/tiers").json()
    refused = api.put("/admin/api/tiers/simple", json={"entries": [f"openai/{model}:1"]})
    assert refused.status_code == 400, refused.text
    assert "entries.0" in refused.json()["error"]["details"]["fields"]
    page = console.post("/admin/tiers/simple", {"entries": f"openai/{model}:1"})
    assert page.status_code == 400 and field_error(page.text, "entries.0"), page.text[-600:]
    assert api.get("/admin/api/tiers").json() == before
    with gw.client() as user:
        assert user.post("/native/v1/chat/completions", json=CHAT).status_code == 200


def test_a_tier_model_name_of_printable_ascii_is_served_as_written(gw: Gateway, api: httpx.Client) -> None:
    """Looser than a catalogue name: a local server may serve `/models/x` or a name with spaces."""
    for model in ("Llama 3 8B Instruct", "/models/llama-3"):
        assert api.put("/admin/api/tiers/simple", json={"entries": [f"openai/{model}:1"]}).status_code == 200
        with gw.client() as user:
            r = user.post("/native/v1/chat/completions", json=CHAT)
        assert r.status_code == 200 and r.headers["x-sentinel-model"] == model, r.text


async def _store_tier_rows(database_url: str, *models: str) -> None:
    async with database(database_url) as sessions, sessions() as session:
        session.add_all(TierModelRow(tier="simple", position=i, provider="openai", model=model, relative_cost=1,
                                     input_price_per_million=0.15, output_price_per_million=0.6)
                        for i, model in enumerate(models))
        await session.commit()


def test_a_tier_row_stored_before_the_model_name_rule_is_left_out(gw: Gateway, api: httpx.Client) -> None:
    """Such a row made every answer of its model a 500; refusing it as the table is read would make
    every native call one. It is left out: the tier's other rows (or, without any, the catalog's
    table) serve, and the console still shows the table."""
    asyncio.run(_store_tier_rows(gw.settings.database_url, "gpt-4o-mini\u2713", "gpt-4o"))
    tiers = api.get("/admin/api/tiers")
    assert tiers.status_code == 200, tiers.text
    assert [e["model"] for e in tiers.json()["overrides"]["simple"]] == ["gpt-4o"]
    with gw.client() as user:
        for _ in range(5):
            r = user.post("/native/v1/chat/completions", json=CHAT)
            assert r.status_code == 200 and r.headers["x-sentinel-model"] == "gpt-4o", r.text


async def _record_minute(database_url: str, cost: float) -> None:
    async with database(database_url) as sessions, sessions() as session:
        session.add(UsageMinuteRow(minute=int(time.time()) // 60, requests=1, cost_usd=cost))
        await session.commit()


def test_the_overview_draws_a_cost_that_is_not_finite(gw: Gateway, console: Console, api: httpx.Client) -> None:
    """A minute whose cost is `inf` (stored before prices were bounded) made every period a 500."""
    asyncio.run(_record_minute(gw.settings.database_url, float("inf")))
    for period in ("1h", "24h", "30d"):
        page = console.get("/admin", params={"period": period})
        assert page.status_code == 200, (period, page.text[:300])
        if period != "30d":  # the minute is in the per-minute rollup only
            assert '<span class="value">$inf</span>' in page.text  # the cost tile says what is stored
        assert api.get("/admin/api/overview", params={"period": period}).status_code == 200


@pytest.mark.parametrize("entry", [
    "openai/gpt-4o:\u0663",  # ARABIC-INDIC DIGIT THREE: int() read cost 3
    "openai/gpt-4o:\uff12",  # FULLWIDTH DIGIT TWO
    "openai/gpt-4o:+2", "openai/gpt-4o: 2", "openai/gpt-4o:0_2",
    "openai/gpt-4o:2:\u0661.5:0", "openai/gpt-4o:2:1_0:0", "openai/gpt-4o:2: 1:0", "openai/gpt-4o:2:infinity:0",
    "openai/gpt-4o:2:0:NaN", "openai/gpt-4o:2:-0:0",
])
def test_every_number_of_a_tier_entry_is_ascii_digits(api: httpx.Client, console: Console, entry: str) -> None:
    before = api.get("/admin/api/tiers").json()
    refused = api.put("/admin/api/tiers/simple", json={"entries": [entry]})
    assert refused.status_code == 400, refused.text
    page = console.post("/admin/tiers/simple", {"entries": entry})
    assert page.status_code == 400 and field_error(page.text, "entries.0"), page.text[-600:]
    assert api.get("/admin/api/tiers").json() == before


def test_tier_prices_are_decimals_with_an_optional_exponent(api: httpx.Client) -> None:
    entries = ["openai/gpt-4o:2", "openai/gpt-4o-mini:1:.5:2.", "anthropic/claude-3-5-haiku-20241022:3:1e-3:1E2"]
    saved = api.put("/admin/api/tiers/simple", json={"entries": entries})
    assert saved.status_code == 200, saved.text
    prices = [(x["input_price_per_million"], x["output_price_per_million"]) for x in saved.json()["overrides"]["simple"]]
    assert prices == [(0.0, 0.0), (0.5, 2.0), (0.001, 100.0)]


def _tier_textarea(page: str, tier: str) -> str:
    found = re.search(rf'action="/admin/tiers/{tier}">.*?<textarea name="entries" rows="3">([^<]*)</textarea>', page, re.S)
    assert found is not None
    return html.unescape(found.group(1))


def test_saving_a_tier_form_unchanged_keeps_its_prices(api: httpx.Client, console: Console) -> None:
    """The form printed prices with six significant digits: saving it as shown rounded them."""
    entries = ["openai/gpt-4o-mini:1:0.1234567:1.0000001", "openai/gpt-4o:2:123456.789:3e-09"]
    saved = api.put("/admin/api/tiers/simple", json={"entries": entries}).json()["overrides"]["simple"]
    shown = _tier_textarea(console.get("/admin/plans").text, "simple")
    assert console.post("/admin/tiers/simple", {"entries": shown}).status_code == 303
    assert api.get("/admin/api/tiers").json()["overrides"]["simple"] == saved
    assert [(x["input_price_per_million"], x["output_price_per_million"]) for x in saved] == [
        (0.1234567, 1.0000001), (123456.789, 3e-09)]


@pytest.mark.parametrize("char", ["\u0085", "\u009b", "\u202e", "\u200f", "\u2066", "\u061c", "\u200b", "\ufeff",
                                  "\u2028", "\U000e0041", "\ufe0f", "\U000e0100", "\u034f", "\u3164", "\uffa0",
                                  "\u17b4", "\u180b", "\U000e0080", "\ufff0",
                                  "\u200c", "\u200d"])  # the joiners between Latin letters: they join nothing
def test_unicode_controls_and_format_characters_are_refused(api: httpx.Client, console: Console, char: str) -> None:
    """Only ASCII controls were refused: NEL, CSI (C1), bidi overrides that make a name read as
    another, zero-width and tag characters were stored."""
    answers = [
        api.post("/admin/api/users/bob/keys", json={"name": f"lap{char}top"}),
        api.post("/admin/api/users/bob/keys", json={"email": f"bob{char}@example.com"}),
        api.put(f"/admin/api/users/bo{quote(char)}b/plan", json={"plan": None}),
        api.get("/admin/api/users", params={"q": f"b{char}"}),
        console.create_key("/admin/users/bob", {"name": f"lap{char}top"}),
        console.get("/admin/users", params={"q": f"b{char}"}),
    ]
    assert [a.status_code for a in answers] == [400] * len(answers), [(a.status_code, a.text[:100]) for a in answers]
    assert api.get("/admin/api/users", params={"q": "b"}).json()["users"] == []


def test_the_joiners_names_need_are_accepted(api: httpx.Client) -> None:
    # and the variation selectors that draw something: an emoji's (U+FE0F, a keycap's too), an
    # ideograph's variant (a Japanese name's IVS), a Mongolian letter's form
    for name in ("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", "dev \U0001f469\u200d\U0001f4bb", "caf\u00e9\u00a0bar",
                 "team \u2764\ufe0f", "desk 1\ufe0f\u20e3", "\u845b\U000e0100\u98fe", "\u1820\u180b", "\u00a9\ufe0f 2026",
                 "\u0915\u094d\u200d\u0937", "\u0915\u094d\u200c\u0937", "flag \U0001f3f3\ufe0f\u200d\U0001f308",
                 "\U0001f469\U0001f3fd\u200d\U0001f4bb"):
        created = api.post("/admin/api/users/bob/keys", json={"name": name})
        assert created.status_code == 201 and created.json()["name"] == name, created.text


def test_a_refused_save_of_an_unknown_tier_says_why(console: Console) -> None:
    """The message was keyed to a tier no form shows: a 400 page that said nothing."""
    page = console.post("/admin/tiers/bogus", {"entries": "openai/gpt-4o:1"})
    assert page.status_code == 400
    assert "Tier \u201c<bdi>bogus</bdi>\u201d was not saved" in page.text
    assert "one of simple" in (field_error(page.text, "tier") or "")
    reset = console.post("/admin/tiers/bogus/reset", {})
    assert reset.status_code == 400 and reset.headers["content-type"].startswith("text/html")
    assert "one of simple" in (field_error(reset.text, "tier") or "")


def test_operator_answers_are_never_cached_or_sniffed(gw: Gateway, api: httpx.Client, console: Console) -> None:
    """`/admin/api/*` reads (users, keys, audit: operator data) had no `Cache-Control`, and JSON
    answers of the operator surfaces no `nosniff`."""
    for path in ("/admin/api/users", "/admin/api/keys", "/admin/api/overview", "/admin/api/tiers", "/admin/api/audit",
                 "/admin/api/plans", "/admin/api/usage.csv", "/admin/api/openapi.json"):
        answer = api.get(path)
        assert answer.status_code == 200, path
        assert answer.headers.get("cache-control") == "no-store", path
        assert answer.headers.get("x-content-type-options") == "nosniff", path
    sniffed = [
        api.get("/admin/api/users/nobody"),  # 404
        httpx.get(gw.url + "/admin/api/users"),  # 401
        console.get("/admin/export.csv"),
        httpx.get(gw.url + "/health"), httpx.get(gw.url + "/health/live"), httpx.get(gw.url + "/health/ready"),
        httpx.get(gw.url + "/metrics"),
        httpx.get(gw.url + "/native/docs/openapi.json"),
        httpx.get(gw.url + "/debug/health"),  # 404 debug_disabled
    ]
    for answer in sniffed:
        assert answer.headers.get("x-content-type-options") == "nosniff", (answer.request.url, answer.status_code)


ODD_IDS = ["team/alice", "50%", "what?", "a#b", "back\\slash", ".", ".."]


@pytest.mark.parametrize("external_id", ODD_IDS)
def test_a_user_whose_id_no_path_can_hold_is_managed_by_query(
    gw: Gateway, api: httpx.Client, console: Console, external_id: str
) -> None:
    """Ids the canonical-path check refuses as a segment were listed with links to a 400 page, and
    no console page or admin API route could reach them."""
    created = api.post("/admin/api/user/keys", params={"id": external_id}, json={"name": "laptop"})
    assert created.status_code == 201 and created.json()["user"] == external_id, created.text
    assert api.put("/admin/api/plans/team", json={"create": True, "limits": [
        {"metric": "requests", "limit": 5, "window": "1h"}]}).status_code == 200
    assert api.put("/admin/api/user/plan", params={"id": external_id}, json={"plan": "team"}).status_code == 200
    user = api.get("/admin/api/user", params={"id": external_id})
    assert user.status_code == 200 and user.json()["user"]["plan"] == "team"
    assert api.get("/admin/api/user/quota", params={"id": external_id}).json()["plan"] == "team"
    assert api.get("/admin/api/user").status_code == 400  # no id

    listed = console.get("/admin/users", params={"q": external_id})
    links = re.findall(r'<a href="([^"]+)"><bdi>([^<]*)</bdi></a>', listed.text)
    href = next(html.unescape(h) for h, text in links if html.unescape(text) == external_id)
    page = console.get(href)
    assert page.status_code == 200 and 'class="plan-name"><bdi>team</bdi><' in page.text, (href, page.status_code)
    plan_action = re.search(r'<form method="post" action="([^"]+)" class="inline"><input type="hidden" name="csrf"',
                            page.text)
    assert plan_action is not None
    assert console.post(html.unescape(plan_action.group(1)), {"plan": ""}).status_code == 303
    keys_action = re.search(r'action="([^"]+)" class="inline create-key"', page.text)
    assert keys_action is not None
    _, nonce = key_form(page.text)
    new_key = console.post(html.unescape(keys_action.group(1)), {"name": "second", "nonce": nonce})
    assert new_key.status_code == 200 and 'id="new-key"' in new_key.text
    assert api.get("/admin/api/user", params={"id": external_id}).json()["user"]["plan"] is None
    assert len(api.get("/admin/api/keys", params={"user": external_id}).json()["keys"]) == 2
    without_token = console.http.post(html.unescape(keys_action.group(1)), data={"name": "third"})
    assert without_token.status_code == 403  # CSRF on the query form's actions too
    key_id = created.json()["id"]
    revoked = console.post(f"/admin/keys/{key_id}/revoke", {})
    assert revoked.status_code == 303 and console.get(revoked.headers["location"]).status_code == 200


JWT_SECRET = "a-test-secret-that-is-long-enough-for-hs256"


@pytest.mark.parametrize("claims", [
    {"externalId": "\u202eecila"},  # shown as "alice" on the console (a right-to-left override)
    {"externalId": "alice\u200b"},  # a zero-width space: looks exactly like "alice"
    # drawn as nothing though not format characters: a variation selector no sequence gives "e", an
    # ideographic one (IVS), the combining grapheme joiner, a Hangul filler, an unassigned tag
    {"externalId": "alice\ufe0f"}, {"externalId": "alice\U000e0100"}, {"externalId": "ali\u034fce"},
    {"externalId": "alice\u3164"}, {"externalId": "\U000e0080alice"}, {"externalId": "alice\u2065"},
    {"externalId": "\ufe0falice"},
    # a joiner where it joins nothing (Latin letters, either end): drawn as nothing, "alice" again
    {"externalId": "alice\u200d"}, {"externalId": "\u200calice"}, {"externalId": "ali\u200dce"},
    {"email": "alice@example.com\u200c"},
    {"externalId": "mallory\x1b]0;owned\x07\x1b[2K"},  # ESC sequences for `sentinel usage export` on a terminal
    {"sub": "\x1b[31mred", "externalId": None},
    {"email": "m\u202e@example.com"},
    # blank: the operator surfaces refuse it too (400: 1-255 characters), so no plan could be set for it
    {"externalId": "   "}, {"externalId": "\u3000"}, {"sub": " ", "externalId": None},
])
def test_a_token_naming_its_user_with_control_characters_is_refused(
    gateway_factory: Callable[..., Gateway], claims: dict[str, object]
) -> None:
    """The operator surfaces refuse control and format characters in every user id and email they
    are given, but a JWT's claims were taken as they came: its user was served and recorded under an
    id that reads as another user's on the console (or rewrites the operator's terminal through
    `sentinel usage export`), and that no operator could put on a plan (400: no control characters)."""
    import jwt

    from tests.support.attack import ledger_rows
    from tests.support.waiting import wait_for

    gw = gateway_factory(admin_key=ADMIN_KEY, jwt_secret=JWT_SECRET, jwt_audience="sentinel",
                         usage_flush_interval_seconds=0.1)
    base: dict[str, object] = {"sub": "user-9", "externalId": "jwt-user", "email": "j@example.com",
                               "aud": "sentinel", "exp": int(time.time()) + 600}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    bad = jwt.encode({k: v for k, v in {**base, **claims}.items() if v is not None}, JWT_SECRET, algorithm="HS256")
    refused = httpx.post(gw.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {bad}"},
                         timeout=30)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "identity_unrecordable"
    good = jwt.encode(base, JWT_SECRET, algorithm="HS256")
    assert httpx.post(gw.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {good}"},
                      timeout=30).status_code == 200
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 1)
    assert [row["external_id"] for row in ledger_rows(gw.settings.database_url)] == ["jwt-user"]


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_console_form_for_a_user_named_with_a_nul_is_refused(
    gateway_factory: Callable[..., Gateway], request: pytest.FixtureRequest, database: str
) -> None:
    """The console's pages and the admin API refuse a control character in the query, but its forms
    for `?id=` did not: the refused change re-rendered the user's page, looking the NUL id up in the
    database — a 500 on PostgreSQL. Now 400 before anything is read or written."""
    url = request.getfixturevalue("pg_url") if database == "postgres" else None
    gw = gateway_factory(admin_key=ADMIN_KEY, **({"database_url": url} if url else {}))
    console = Console(gw)
    api = httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    try:
        audit = api.get("/admin/api/audit").json()  # the PostgreSQL database is the test session's
        _, nonce = console.key_form("/admin/user?id=a%2Fb")
        answers = [console.post("/admin/user/plan?id=a%00b", {"plan": ""}),
                   console.post("/admin/user/keys?id=a%00b", {"name": "x", "nonce": nonce})]
        for answer in answers:
            assert answer.status_code == 400, answer.text[:200]
            assert answer.headers["content-type"].startswith("text/html")  # the console's refusal page
            assert "Control characters (NUL, CR, LF, ...) are not accepted in the query" in answer.text
        assert api.get("/admin/api/audit").json() == audit
    finally:
        console.http.close()
        api.close()


def test_ids_and_names_whose_escapes_are_not_utf8_are_refused(api: httpx.Client, console: Console) -> None:
    """`%FF`, `%FE` and `%C0%AF` were each read as U+FFFD: a plan and a key went to a user named
    "\ufffd" (one user for every such spelling), and a console form named a key "\ufffd". Each is
    400 now, in a path (`invalid_path`), a query or a form, and nothing is created."""
    _, nonce = console.key_form("/admin/users/bob")
    answers = [
        api.post("/admin/api/users/%FF/keys", json={}),
        api.put("/admin/api/users/%C0%AF/plan", json={"plan": None}),
        api.post("/admin/api/user/keys?id=%FE", json={}),
        api.put("/admin/api/user/plan?id=%ED%A0%80", json={"plan": None}),
        console.post("/admin/user/plan?id=%FF", {"plan": ""}),
        console.http.post("/admin/users/bob/keys", headers={"Content-Type": "application/x-www-form-urlencoded"},
                          content=f"name=%FF&nonce={nonce}&csrf={console.csrf}"),
    ]
    assert [a.status_code for a in answers] == [400] * len(answers), [a.text[:120] for a in answers]
    assert [a.json()["error"]["code"] for a in answers[:2]] == ["invalid_path"] * 2
    assert "UTF-8" in answers[2].json()["error"]["message"]
    assert [user["external_id"] for user in api.get("/admin/api/users").json()["users"]] == ["alice"]
    assert api.get("/admin/api/keys", params={"user": "bob"}).json()["keys"] == []
    assert api.get("/admin/api/audit").json()["entries"] == []


def test_a_cookie_of_the_same_name_set_by_a_sibling_site_does_not_sign_the_operator_out(
    gw: Gateway, console: Console,
) -> None:
    """A page of another subdomain of the same site can set `sentinel_admin` for the parent domain
    and a longer path; browsers send it before the console's own. Only the first was read, so the
    operator was signed out for good (signing in again set a cookie still sent second)."""
    token = console.http.cookies["sentinel_admin"]
    planted = "sentinel_admin=v1.99999999999.0000000000000000." + "0" * 64
    with httpx.Client(base_url=gw.url, timeout=30) as browser:
        cookie = {"Cookie": f"{planted}; sentinel_admin={token}"}
        page = browser.get("/admin/users", headers=cookie)
        assert page.status_code == 200 and "<title>Users" in page.text
        changed = browser.put("/admin/api/users/zoe/plan", json={"plan": None},
                              headers={**cookie, "X-CSRF-Token": console.csrf})
        assert changed.status_code == 200
        # Only the operator's own cookie signs in: the planted one alone does not.
        assert browser.get("/admin/users", headers={"Cookie": planted}).status_code == 303


def test_cookies_planted_for_every_prefix_of_a_deep_path_do_not_sign_the_operator_out(
    gw: Gateway, console: Console,
) -> None:
    """A sibling subdomain can plant one `sentinel_admin` per parent domain for each path that is a
    prefix of the request's (`/admin/api/users/zoe/plan`, `/admin/api/users/zoe/`, ... `/admin`), all
    sent before the console's own: nine for one admin API path under a single parent domain, twice
    that under two (`a.b.example.com`). Only the first 8 values were read: the operator's cookie,
    sent last, was never reached there."""
    token = console.http.cookies["sentinel_admin"]

    def planted(path: str, domains: int) -> str:
        prefixes = []
        for at in range(len(path), len("/admin") - 1, -1):  # the longest path first, as browsers send them
            if path[:at].endswith("/") or at == len(path) or path[at] == "/":
                prefixes.append(path[:at])
        fake = [f"sentinel_admin=v1.99999999999.{i:016x}.{'0' * 64}" for i in range(len(prefixes) * domains)]
        return "; ".join([*fake, f"sentinel_admin={token}"])

    with httpx.Client(base_url=gw.url, timeout=30) as browser:
        changed = browser.put("/admin/api/users/zoe/plan", json={"plan": None},
                              headers={"Cookie": planted("/admin/api/users/zoe/plan", 1), "X-CSRF-Token": console.csrf})
        assert changed.status_code == 200, changed.text
        page = browser.get("/admin/users/zoe", headers={"Cookie": planted("/admin/users/zoe", 2)})
        assert page.status_code == 200, page.headers.get("location")
