"""Edges of the operator surfaces an attacker-minded review found: dates at the ends of the
calendar, HEAD on a route that writes, line breaks and oversized forms in the console, a 405 that
quoted a whole path."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from urllib.parse import urlencode

import httpx
import pytest

from tests.api.conftest import Gateway
from tests.api.test_console import ADMIN_KEY, Console
from tests.support.accounts import create_key

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


EDGES = ["9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59", "0001-01-01"]


@pytest.mark.parametrize("moment", EDGES)
def test_dates_at_the_ends_of_the_calendar_never_give_a_500(api: httpx.Client, console: Console, moment: str) -> None:
    """A date that left years 1-9999 once shifted to UTC, or once cut into buckets, was a 500."""
    for param in ("since", "until"):
        answers = [
            api.get("/admin/api/usage.csv", params={param: moment}),
            api.get("/admin/api/usage/totals", params={"user": "alice", param: moment}),
            console.get("/admin/export.csv", params={param: moment}),
        ]
        for answer in answers:
            assert answer.status_code in (200, 400), (param, answer.request.url, answer.status_code, answer.text)
    for step, since, until in (("1h", "0001-01-01T00:00:00+01:00", "0001-01-01T01:00:00"),
                               ("1m", "9999-12-31T23:00:00", "9999-12-31T23:59:59-01:00")):
        answer = api.get("/admin/api/usage", params={"step": step, "since": since, "until": until})
        assert answer.status_code in (200, 400), answer.text
        if answer.status_code == 400:
            assert answer.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("window", [{"since": "1h", "until": "2h"}, {"since": "2026-01-02", "until": "2026-01-01"},
                                    {"since": "2026-01-01", "until": "2026-01-01"}, {"since": "8999-12-31"},
                                    {"since": "2999-01-01", "until": "3000-01-01"}, {"until": "2d"}])
def test_a_window_holding_no_moment_is_refused_where_since_is_named(
    api: httpx.Client, console: Console, window: dict[str, str],
) -> None:
    """`since` not before `until` (now without it): the export answered its header alone, 200, and
    the series a complaint about its buckets in another error shape (`details.param`), where the
    CLI refuses it. Each is a 400 naming `since` now (the console's export says so on its page)."""
    params = dict(window)
    paths = ["/admin/api/usage", "/admin/api/usage.csv", "/admin/api/usage/totals"]
    if "since" not in window:  # the series counts a day back from now: until=2d leaves nothing
        paths = ["/admin/api/usage"]
    for path in paths:
        answer = api.get(path, params={**params, "user": "alice", "step": "1h"})
        assert answer.status_code == 400, (path, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "validation_failed" and "since" in error["details"]["fields"], (path, error)
    if "since" in window:
        page = console.get("/admin/export.csv", params=params)
        assert page.status_code == 400 and "From: before Until" in page.text, page.text
    assert api.get("/admin/api/usage.csv", params={"since": "2h", "until": "1h"}).status_code == 200


@pytest.mark.parametrize("until", ["0001-01-01", "1969-12-31T23:59:59Z", "1970-01-01"])
def test_a_window_ending_before_anything_was_recorded_is_refused_where_until_is_named(
    api: httpx.Client, console: Console, until: str,
) -> None:
    """`until=0001-01-01` was kept at 1970-01-01 (nothing is recorded before it) and the export
    answered its header alone, 200; the CLI's `--until 0001-01-01` too (status 0)."""
    for path in ["/admin/api/usage", "/admin/api/usage.csv", "/admin/api/usage/totals"]:
        answer = api.get(path, params={"until": until, "user": "alice", "step": "1h"})
        assert answer.status_code == 400, (path, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "validation_failed" and "1970" in error["details"]["fields"]["until"], (path, error)
    page = console.get("/admin/export.csv", params={"until": until})
    assert page.status_code == 400 and "Until: after 1970-01-01" in page.text, page.text
    assert api.get("/admin/api/usage.csv", params={"until": "1970-01-02"}).status_code == 200


def test_a_series_of_too_many_buckets_names_its_step(api: httpx.Client) -> None:
    answer = api.get("/admin/api/usage", params={"step": "1m", "since": "30d"})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "validation_failed" and "2000 buckets" in error["details"]["fields"]["step"], error


def test_a_compact_iso_date_is_a_date_not_a_number_of_seconds(api: httpx.Client) -> None:
    """`since=20240101` (ISO 8601's basic format) covered the last 20,240,101 seconds (~234 days)."""
    answer = api.get("/admin/api/usage", params={"step": "1d", "since": "20240101", "until": "20240105"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["start"].startswith("2024-01-01")
    assert len(answer.json()["points"]) == 4


def test_head_on_a_plan_reads_it_and_never_saves_one(gw: Gateway) -> None:
    """HEAD (which the route answers because it answers GET) ran the PUT branch, with no CSRF check."""
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        assert client.post("/admin/signin", data={"key": ADMIN_KEY}).status_code == 303
        body = b'{"limits":[{"metric":"requests","limit":"7","window":"1h"}],"create":true}'
        head = client.request("HEAD", "/admin/api/plans/headcookie", content=body,
                              headers={"Content-Type": "application/json"})
        assert head.status_code == 404  # no such plan: HEAD read it, as GET does
        assert client.get("/admin/api/plans/headcookie").status_code == 404
        put = client.put("/admin/api/plans/headcookie", content=body, headers={"Content-Type": "application/json"})
        assert put.status_code == 403 and put.json()["error"]["code"] == "csrf_failed"  # the write needs its token


@pytest.mark.parametrize("field", ["name", "email"])
def test_console_fields_other_than_the_tier_textarea_refuse_line_breaks(console: Console, field: str) -> None:
    values = {"name": "laptop", "email": ""}
    values[field] = "line1\r\nBcc: z@w" if field == "email" else "line1\r\nline2"
    page = console.create_key("/admin/users/carol", values)
    assert page.status_code == 400
    with httpx.Client(base_url=console.gw.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as api:
        assert api.get("/admin/api/keys", params={"user": "carol"}).json()["keys"] == []
    entries = "openai/gpt-4o-mini:1\r\nopenai/gpt-4o:3"  # the textarea's lines are still its lines
    saved = console.post("/admin/tiers/simple", {"entries": entries})
    assert saved.status_code == 303, saved.text


def test_console_forms_take_no_more_items_than_the_api(console: Console) -> None:
    limits = [item for n in range(51) for item in (("metric", "requests"), ("limit", "5"), ("window", f"{n + 1}m"))]
    page = console.post("/admin/plans", [("name", "big"), *limits])
    assert page.status_code == 400 and "at most 50 limits" in page.text
    with httpx.Client(base_url=console.gw.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as api:
        assert api.get("/admin/api/plans/big").status_code == 404
    fifty = [item for n in range(50) for item in (("metric", "requests"), ("limit", "5"), ("window", f"{n + 1}m"))]
    assert console.post("/admin/plans", [("name", "big"), *fifty]).status_code == 303


def test_a_405_quotes_the_path_clipped(gateway: Gateway) -> None:
    path = "/native/docs/assets/" + "A" * 5000
    answer = httpx.post(gateway.url + path, timeout=30)
    assert answer.status_code == 405
    message = answer.json()["error"]["message"]
    assert len(message) < 400 and re.search(r"A{200}", message)


def test_a_404_quotes_the_name_it_looked_for_clipped(api: httpx.Client) -> None:
    """"No user '…'", "No plan '…'", "No key '…'" and "No session …" quoted the whole name from the
    path or query (bounded only by the header limit: a 5,000-character id came back whole). Like
    every other quoted path, it is cut to 256 characters."""
    long = "a" * 5000
    for path, params in (("/admin/api/users/" + long, None), ("/admin/api/plans/" + long, None),
                         ("/admin/api/keys/key_" + long + "/revoke", None),
                         ("/admin/api/users/alice/session", {"conversation_id": long}),
                         ("/admin/api/user/session", {"id": long, "conversation_id": long})):
        answer = api.request("POST" if path.endswith("/revoke") else "GET", path, params=params)
        assert answer.status_code == 404, (path[:40], answer.text[:200])
        message = answer.json()["error"]["message"]
        assert "a" * 250 in message and "a" * 257 not in message and "…" in message, (path[:40], len(message))


@pytest.mark.parametrize("body", [{}, {"plan_name": "team"}, {"Plan": "team"}, {"plan": ""}])
def test_a_plan_assignment_without_its_plan_field_changes_nothing(
    api: httpx.Client, console: Console, body: dict[str, str],
) -> None:
    """`plan` is required (`null`: the default plan, as the OpenAPI document says): a body without
    it — `{}`, a misspelt field — put the user back on the default plan, 200, audited as asked for; so
    did `{"plan": ""}` (a script's unset variable), which `sentinel users set-plan alice ""` refuses.
    The console's form, whose select always sends `plan`, refuses a post without it likewise."""
    api.put("/admin/api/plans/team", json={"create": True, "limits": [{"metric": "requests", "limit": 5, "window": "1h"}]})
    assert api.put("/admin/api/users/dave/plan", json={"plan": "team"}).status_code == 200
    entries = len(api.get("/admin/api/audit", params={"target": "dave"}).json()["entries"])

    answer = api.put("/admin/api/users/dave/plan", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "validation_failed" and list(error["details"]["fields"]) == ["plan"], error
    page = console.post("/admin/users/dave/plan", {"plan_name": "team"})
    assert page.status_code == 400 and "choose a plan" in page.text, page.text

    assert api.get("/admin/api/users/dave").json()["user"]["plan"] == "team"
    assert len(api.get("/admin/api/audit", params={"target": "dave"}).json()["entries"]) == entries
    assert api.put("/admin/api/users/dave/plan", json={"plan": None}).json() == {"external_id": "dave", "plan": None}


@pytest.mark.parametrize("user", ["alice ", " alice", "alice\u00a0", "\u3000alice", "zoe\u0301",
                                  "\u0430lice", "b\u03bfb", "\uff41lice", "\u2170van"])
def test_a_new_user_whose_id_reads_as_another_is_refused(
    gw: Gateway, api: httpx.Client, console: Console, user: str,
) -> None:
    """`alice ` read as `alice` on the console (HTML draws neither end's spaces), in the users list and
    `keys list`, and `zoe\u0301` (decomposed) as `zoé`, `\u0430lice` (a Cyrillic `а` among Latin letters)
    and `\uff41lice` (a fullwidth `ａ`) as `alice`: a key or plan an operator meant for one went to a new
    user. Refused (400, field
    `external_id`) on the admin API, the console and the CLI's service, nothing created or audited; a user
    who already exists under such an id (an identity source's) is still managed."""
    audit = len(api.get("/admin/api/audit").json()["entries"])
    key = api.post("/admin/api/user/keys", params={"id": user}, json={"name": "laptop"})
    plan = api.put("/admin/api/user/plan", params={"id": user}, json={"plan": None})
    for answer in (key, plan):
        assert answer.status_code == 400, answer.text
        assert list(answer.json()["error"]["details"]["fields"]) == ["external_id"], answer.text
    _, nonce = console.key_form("/admin/users/alice")
    form = console.post("/admin/user/keys?" + urlencode({"id": user}), {"name": "x", "nonce": nonce})
    assert form.status_code == 400 and "would read as another" in form.text, form.text
    assert console.post("/admin/user/plan?" + urlencode({"id": user}), {"plan": ""}).status_code == 400
    assert api.get("/admin/api/user", params={"id": user}).status_code == 404
    assert len(api.get("/admin/api/audit").json()["entries"]) == audit

    asyncio.run(create_key(gw.settings.database_url, user))  # as a JWT's `sub` would have made it
    assert api.put("/admin/api/user/plan", params={"id": user}, json={"plan": None}).status_code == 200
    assert api.post("/admin/api/user/keys", params={"id": user}, json={}).status_code == 201


@pytest.mark.parametrize("user", ["\u0430\u0440\u0440", "\u0410\u0420\u0420", "\u03b1\u03c1\u03c1", "\u0430\u0440\u0440-1"])
def test_a_new_user_whose_id_in_one_script_reads_as_an_existing_users_is_refused(
    gw: Gateway, api: httpx.Client, console: Console, user: str,
) -> None:
    """`\u0430\u0440\u0440` (all Cyrillic) is drawn as `app`: no script is mixed, so it was accepted beside an
    existing user `app`, and a key or plan an operator meant for `app` went to a new user. A new id whose
    letters of one look-alike script read as an existing user's id is refused (400, field `external_id`,
    naming that id) on the admin API and the console, nothing created or audited; without such a user
    the id is its own, and one an identity source already made stays manageable."""
    latin = user.translate(str.maketrans("\u0430\u0440\u0410\u0420\u03b1\u03c1", "apAPap"))
    assert api.post("/admin/api/user/keys", params={"id": latin}, json={}).status_code == 201
    audit = len(api.get("/admin/api/audit").json()["entries"])
    key = api.post("/admin/api/user/keys", params={"id": user}, json={"name": "laptop"})
    plan = api.put("/admin/api/user/plan", params={"id": user}, json={"plan": None})
    for answer in (key, plan):
        assert answer.status_code == 400, answer.text
        fields = answer.json()["error"]["details"]["fields"]
        assert list(fields) == ["external_id"] and repr(latin) in fields["external_id"], answer.text
    _, nonce = console.key_form(f"/admin/users/{latin}")
    form = console.post("/admin/user/keys?" + urlencode({"id": user}), {"name": "x", "nonce": nonce})
    assert form.status_code == 400 and "existing user" in form.text, form.text
    assert api.get("/admin/api/user", params={"id": user}).status_code == 404
    assert len(api.get("/admin/api/audit").json()["entries"]) == audit

    other = user.replace("\u0440", "\u0434").replace("\u0420", "\u0414").replace("\u03c1", "\u03b4")  # no Latin twin
    assert api.post("/admin/api/user/keys", params={"id": other}, json={}).status_code == 201
    asyncio.run(create_key(gw.settings.database_url, user))  # as a JWT's `sub` would have made it
    assert api.put("/admin/api/user/plan", params={"id": user}, json={"plan": None}).status_code == 200


@pytest.mark.parametrize("user", ["app", "\u03b1\u03c1\u03c1"])
def test_a_new_user_whose_id_reads_as_an_existing_users_in_another_script_is_refused(
    api: httpx.Client, console: Console, user: str,
) -> None:
    """The other way round: beside an existing all-Cyrillic `\u0430\u0440\u0440` (its own id while no `app`
    existed), a new Latin `app` or Greek `\u03b1\u03c1\u03c1` read as it and was accepted. Refused (400, field
    `external_id`, naming the existing id and its escapes), nothing created or audited."""
    assert api.post("/admin/api/user/keys", params={"id": "\u0430\u0440\u0440"}, json={}).status_code == 201
    audit = len(api.get("/admin/api/audit").json()["entries"])
    for answer in (api.post("/admin/api/user/keys", params={"id": user}, json={}),
                   api.put("/admin/api/user/plan", params={"id": user}, json={"plan": None})):
        assert answer.status_code == 400, answer.text
        message = answer.json()["error"]["details"]["fields"]["external_id"]
        assert "existing user" in message and "written \\u0430\\u0440\\u0440" in message, message
    _, nonce = console.key_form("/admin/users/alice")
    form = console.post("/admin/user/keys?" + urlencode({"id": user}), {"name": "x", "nonce": nonce})
    assert form.status_code == 400 and "existing user" in form.text, form.text
    assert api.get("/admin/api/user", params={"id": user}).status_code == 404
    assert len(api.get("/admin/api/audit").json()["entries"]) == audit


@pytest.mark.parametrize(("path", "body"), [
    ("/admin/api/plans/team", '{"limits": [{"metric": "requests", "limit": 5, "window": "1h"}], "limits": []}'),
    ("/admin/api/users/alice/plan", '{"plan": "team", "plan": null}'),
    ("/admin/api/plans/team", '{"limits": [{"metric": "requests", "limit": 5, "window": "1h", "limit": 0}]}'),
])
def test_a_body_giving_a_key_twice_is_refused_and_changes_nothing(api: httpx.Client, path: str, body: str) -> None:
    """orjson keeps a repeated key's last value, other readers (a proxy, a reviewing script) the first:
    `{"limits": [...], "limits": []}` saved the plan without limits, its users unlimited. 400 invalid_json."""
    api.put("/admin/api/plans/team", json={"create": True, "limits": [{"metric": "requests", "limit": 7, "window": "1m"}]})
    assert api.put("/admin/api/users/alice/plan", json={"plan": "team"}).status_code == 200
    audit = len(api.get("/admin/api/audit").json()["entries"])
    answer = api.put(path, content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_json" and "twice" in answer.json()["error"]["message"], answer.text
    assert api.get("/admin/api/plans/team").json()["spec"] == "requests=7/1m"
    assert api.get("/admin/api/users/alice").json()["user"]["plan"] == "team"
    assert len(api.get("/admin/api/audit").json()["entries"]) == audit


def test_a_tier_naming_one_candidate_twice_is_refused(api: httpx.Client, console: Console) -> None:
    """`openai/gpt-4o:1` and `openai/gpt-4o:2` in one tier were saved: a failover tried the same
    upstream again. 400 naming the second entry, the tier as it was (API and console)."""
    before = api.get("/admin/api/tiers").json()["effective"]["simple"]
    answer = api.put("/admin/api/tiers/simple", json={"entries": ["openai/gpt-4o:1", "anthropic/claude-3-5-haiku-20241022:2",
                                                                  "openai/gpt-4o:3"]})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["details"]["fields"] == {"entries.2": "openai/gpt-4o is candidate 1 already"}
    page = console.post("/admin/tiers/simple", {"entries": "openai/gpt-4o:1\nopenai/gpt-4o:1"})
    assert page.status_code == 400 and "candidate 1 already" in page.text, page.text
    assert api.get("/admin/api/tiers").json()["effective"]["simple"] == before


TEAM = {"create": True, "limits": [{"metric": "requests", "limit": 7, "window": "1m"}]}


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    # the CLI's name for the lifetime: the key was issued never to expire
    ("POST", "/admin/api/users/bob/keys", {"name": "ci", "expires_in": 3600}, "expires_in"),
    ("POST", "/admin/api/users/bob/keys", {"name": "ci", "expires": "2030-01-01T00:00:00Z"}, "expires"),
    # a misspelt `create`: the existing plan's limits were replaced, where `create` refuses
    ("PUT", "/admin/api/plans/team", {"crate": True, "limits": [{"metric": "requests", "limit": 1, "window": "1h"}]},
     "crate"),
    # a limit copied from the plan's JSON (`window_seconds`) beside a `window`: one of them was ignored
    ("PUT", "/admin/api/plans/team", {"limits": [{"metric": "requests", "limit": 1, "window": "1h",
                                                  "window_seconds": 60}]}, "limits.0.window_seconds"),
    ("PUT", "/admin/api/users/alice/plan", {"plan": None, "expires_in": 3600}, "expires_in"),
    ("PUT", "/admin/api/tiers/simple", {"entries": ["openai/gpt-4o:1"], "append": True}, "append"),
])
def test_a_body_field_the_route_does_not_take_is_refused_and_changes_nothing(
    api: httpx.Client, method: str, path: str, body: dict[str, object], field: str,
) -> None:
    """A field the route does not read was ignored: a key asked to expire in an hour (`expires_in`, the
    CLI's option's name) was issued never to expire, a misspelt `create` replaced an existing plan's
    limits. 400 (`validation_failed`) naming the field, nothing changed or audited."""
    assert api.put("/admin/api/plans/team", json=TEAM).status_code == 200
    assert api.put("/admin/api/users/alice/plan", json={"plan": "team"}).status_code == 200

    def state() -> list[object]:
        return [api.get("/admin/api/keys", params={"user": "bob"}).json(), api.get("/admin/api/plans/team").json(),
                api.get("/admin/api/users/alice").json()["user"]["plan"], api.get("/admin/api/tiers").json(),
                api.get("/admin/api/audit").json()]

    before = state()
    answer = api.request(method, path, json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "validation_failed" and field in error["details"]["fields"], error
    assert "unknown field" in error["details"]["fields"][field], error
    assert state() == before


def test_a_query_parameter_given_twice_is_refused_and_changes_nothing(api: httpx.Client, console: Console) -> None:
    """`?id=alice&id=bob` changed bob (Starlette reads a repeated parameter's last value) where a proxy,
    an access-log reader or a reviewing script reads the first — as with a JSON key given twice. 400
    `invalid_request` naming the parameter, on the admin API and the console, nothing changed or audited."""
    assert api.put("/admin/api/plans/team", json=TEAM).status_code == 200
    audit = api.get("/admin/api/audit").json()["entries"]
    answers = [
        api.put("/admin/api/user/plan?id=alice&id=bob", json={"plan": "team"}),
        api.post("/admin/api/user/keys?id=alice&id=bob", json={"name": "ci"}),
        api.get("/admin/api/usage/totals?user=alice&user=bob"),
        api.get("/admin/api/audit?target=alice&limit=5&target=bob"),
    ]
    for answer in answers:
        assert answer.status_code == 400, (answer.request.url, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "invalid_request" and "twice" in error["message"], error
    page = console.post("/admin/user/plan?id=alice&id=bob", {"plan": "team"})
    assert page.status_code == 400, page.text
    assert api.get("/admin/api/audit").json()["entries"] == audit
    assert api.get("/admin/api/keys", params={"user": "bob"}).json()["keys"] == []
    assert api.get("/admin/api/user", params={"id": "bob"}).status_code == 404
    assert api.get("/admin/api/users/alice").json()["user"]["plan"] is None


def test_an_unknown_plan_assigned_is_quoted_clipped(api: httpx.Client) -> None:
    """`{"plan": "<5,000 characters>"}` came back whole in the 404's message ("plan '…' does not
    exist"), where every other name a 404 quotes is cut to 256 characters."""
    answer = api.put("/admin/api/users/alice/plan", json={"plan": "a" * 5000})
    assert answer.status_code == 404, answer.text[:200]
    message = answer.json()["error"]["message"]
    assert "a" * 250 in message and "a" * 257 not in message and "…" in message, len(message)


def test_a_tier_candidate_of_a_provider_not_configured_is_named_in_the_answer(api: httpx.Client) -> None:
    """`opnai/gpt-4o:1` (a typo) is saved, as the console and `sentinel tiers set` save it, but they say
    "provider not configured" (such a candidate is never chosen: the tier may be left with none) and the
    admin API said nothing. Its tier table names each such candidate in `not_configured`."""
    saved = api.put("/admin/api/tiers/simple", json={"entries": ["opnai/gpt-4o:1", "openai/gpt-4o-mini:2"]})
    assert saved.status_code == 200, saved.text
    assert saved.json()["not_configured"] == {"simple": ["opnai/gpt-4o"]}
    assert api.get("/admin/api/tiers").json()["not_configured"] == {"simple": ["opnai/gpt-4o"]}
    assert api.delete("/admin/api/tiers/simple").status_code == 200
    assert api.get("/admin/api/tiers").json()["not_configured"] == {}
