"""API keys with an expiry, over HTTP: issued by the admin API and the console with a lifetime, they
work until then on every surface and are refused from then (401 `token_expired`, each surface's
shape) — also when their identity is cached. The gateway's clocks are set, never slept on."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import openai
import pytest
from sqlalchemy import event

from tests.api.conftest import Gateway
from tests.api.test_console import Console, field_error
from tests.support.clock import FakeClock

ADMIN_KEY = "admin-key-for-tests-0123"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
MESSAGES = {"model": "claude-3-5-haiku-20241022", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}
NATIVE = {"tier": "simple", "messages": [{"role": "user", "content": "Hi"}]}


class Clocks:
    """The running gateway's clocks — the identity cache's, the key service's and the admin service's
    — set to one FakeClock (the wall clock's whole second at first: a datetime holds microseconds, so a
    moment read from a float with more digits could land either side of an expiry), moved by `advance`."""

    def __init__(self, gw: Gateway) -> None:
        self.clock = FakeClock(float(int(time.time())))
        runtime = gw.runtime
        auth = runtime.authenticator
        auth.clock = self.clock
        auth.cache.clock = self.clock
        auth.api_keys._clock = self.moment  # type: ignore[union-attr]
        admin = runtime.admin
        assert admin is not None
        admin.clock = self.moment
        admin.keys._clock = self.moment
        admin.users._clock = self.moment

    def moment(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def gw(request: pytest.FixtureRequest, gateway_factory: Callable[..., Gateway]) -> Gateway:
    if request.param == "postgres":
        return gateway_factory(admin_key=ADMIN_KEY, database_url=request.getfixturevalue("pg_url"))
    return gateway_factory(admin_key=ADMIN_KEY)


def test_a_key_works_until_its_expiry_then_every_surface_refuses_it(gw: Gateway) -> None:
    """Keys had no lifetime: one given to a trial user worked until an operator revoked it. Issued
    with `expires_in_seconds` it works until then — its identity cached meanwhile, as any key's —
    and from then on is 401 `token_expired` on /v1 (the openai SDK's AuthenticationError), on
    /v1/messages in Anthropic's shape and on /native; the listings say `expired`."""
    clocks = Clocks(gw)
    user = f"trial-{time.time_ns()}"  # the PostgreSQL database is the session's
    with gw.admin() as http:
        created = http.post(f"/admin/api/users/{user}/keys", json={"name": "trial", "expires_in_seconds": 3600})
        assert created.status_code == 201, created.text
        issued = created.json()
        assert issued["expires_at"] == (clocks.moment() + timedelta(seconds=3600)).isoformat()
        assert (issued["status"], issued["active"]) == ("active", True)
        key = issued["key"]
        sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
        assert sdk.chat.completions.create(**CHAT).choices[0].message.content  # type: ignore[call-overload]
        clocks.advance(3599)  # its identity is cached (fresh for 300 s) since the first use: not past the expiry
        assert sdk.chat.completions.create(**CHAT).choices[0].message.content  # type: ignore[call-overload]
        with gw.client(key) as caller:
            assert caller.post("/v1/messages", json=MESSAGES, headers={"x-api-key": key}).status_code == 200
            clocks.advance(1)
            with pytest.raises(openai.AuthenticationError) as refused:
                sdk.chat.completions.create(**CHAT)  # type: ignore[call-overload]
            assert refused.value.status_code == 401 and refused.value.code == "token_expired"
            assert refused.value.type == "authentication_error" and "expired" in refused.value.message
            messages = caller.post("/v1/messages", json=MESSAGES)
            assert messages.status_code == 401 and messages.headers["www-authenticate"] == "Bearer"
            body = messages.json()
            assert body["type"] == "error" and body["error"]["type"] == "authentication_error", body
            assert "expired" in body["error"]["message"]
            native = caller.post("/native/v1/chat/completions", json=NATIVE)
            assert native.status_code == 401, native.text
            assert native.json()["error"]["code"] == "token_expired"
            assert caller.get("/v1/models").json()["error"]["code"] == "token_expired"  # every use says why
        listed = http.get("/admin/api/keys", params={"user": user}).json()["keys"]
        assert [(k["status"], k["active"], k["expires_at"]) for k in listed] == [
            ("expired", False, issued["expires_at"])
        ]
        assert http.get(f"/admin/api/users/{user}").json()["user"]["active_keys"] == 0
        audit = http.get("/admin/api/audit", params={"target": issued["id"]}).json()["entries"]
        assert audit[0]["details"]["expires_at"] == issued["expires_at"]
    with gw.client() as alice:  # a key without an expiry is untouched
        assert alice.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_repeated_uses_of_an_expired_key_do_not_each_read_the_database(gw: Gateway) -> None:
    """Each use of an expired key looked it up in the database again (its refusal was not cached):
    a client holding one could make the gateway hit the database on every request. An expiry is for
    good, so its refusal is cached as an identity is: the first use past it reads the key, the
    others are refused from the cache — still 401 `token_expired` every time."""
    clocks = Clocks(gw)
    user = f"lapsed-{time.time_ns()}"
    with gw.admin() as http:
        key = http.post(f"/admin/api/users/{user}/keys", json={"expires_in_seconds": 60}).json()["key"]
    key_reads: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "api_keys" in statement:
            key_reads.append(statement)

    engine = gw.runtime.engine.sync_engine
    clocks.advance(60)
    event.listen(engine, "before_cursor_execute", count)
    try:
        with gw.client(key) as caller:
            answers = [caller.get("/v1/models") for _ in range(5)]
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert [(a.status_code, a.json()["error"]["code"]) for a in answers] == [(401, "token_expired")] * 5
    assert len(key_reads) == 1, key_reads


def test_an_expiry_given_as_a_moment(gw: Gateway) -> None:
    clocks = Clocks(gw)
    user = f"dated-{time.time_ns()}"
    ends = (clocks.moment() + timedelta(days=2)).replace(microsecond=0)
    with gw.admin() as http:
        # An offset is read as such (UTC in the answer); a naive time is UTC.
        local = ends.astimezone(UTC).replace(tzinfo=None).isoformat() + "+02:00"
        created = http.post(f"/admin/api/users/{user}/keys", json={"expires_at": local})
        assert created.status_code == 201, created.text
        assert created.json()["expires_at"] == (ends - timedelta(hours=2)).isoformat()
        naive = http.post(f"/admin/api/users/{user}/keys", json={"expires_at": ends.replace(tzinfo=None).isoformat()})
        assert naive.json()["expires_at"] == ends.isoformat()
        key = naive.json()["key"]
    with gw.client(key) as caller:
        assert caller.get("/v1/models").status_code == 200
        clocks.advance(2 * 86400)
        assert caller.get("/v1/models").json()["error"]["code"] == "token_expired"


BAD_EXPIRIES = [
    ({"expires_in_seconds": "30d"}, "expires_in_seconds"),  # the API takes seconds; "30d" is the CLI's
    ({"expires_in_seconds": True}, "expires_in_seconds"),
    ({"expires_in_seconds": 1.5}, "expires_in_seconds"),
    ({"expires_in_seconds": 0}, "expires_in_seconds"),
    ({"expires_in_seconds": -60}, "expires_in_seconds"),
    ({"expires_in_seconds": 2**62}, "expires_in_seconds"),
    ({"expires_in_seconds": 3661 * 86400}, "expires_in_seconds"),
    ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
    ({"expires_at": "tomorrow"}, "expires_at"),
    ({"expires_at": 1_900_000_000}, "expires_at"),
    ({"expires_at": "9999-12-31T23:00:00-05:00"}, "expires_at"),  # past year 9999 in UTC
    ({"expires_at": "9999-12-31"}, "expires_at"),
    ({"expires_at": ["2030-01-01"]}, "expires_at"),
    ({"expires_at": "2099-01-01", "expires_in_seconds": 60}, "expires_at"),
]


def test_a_wrong_expiry_is_a_400_naming_its_field_and_issues_nothing(gw: Gateway) -> None:
    user = f"refused-{time.time_ns()}"
    with gw.admin() as http:
        answers = [(http.post(f"/admin/api/users/{user}/keys", json={"name": "x", **body}), field)
                   for body, field in BAD_EXPIRIES]
        for (answer, field), (body, _) in zip(answers, BAD_EXPIRIES, strict=True):
            assert answer.status_code == 400, (body, answer.status_code, answer.text)
            error = answer.json()["error"]
            assert error["code"] == "validation_failed" and field in error["details"]["fields"], (body, error)
            assert answer.headers["cache-control"] == "no-store"
        huge = http.post(f"/admin/api/users/{user}/keys", content=b'{"expires_in_seconds": 1' + b"0" * 40 + b"}")
        assert huge.status_code == 400, huge.text  # beyond 64 bits: not even read as a number
        assert http.get("/admin/api/keys", params={"user": user}).json()["keys"] == []
        assert http.get(f"/admin/api/users/{user}").status_code == 404  # no user created either


@pytest.fixture
def console(gateway_factory: Callable[..., Gateway]) -> Iterator[Console]:
    c = Console(gateway_factory(admin_key=ADMIN_KEY))
    yield c
    c.http.close()


def test_the_console_issues_a_key_with_a_lifetime_and_shows_when_keys_expire(console: Console) -> None:
    clocks = Clocks(console.gw)
    refused = console.create_key("/admin/users/erin", {"name": "trial", "expires_in": "soon"})
    assert refused.status_code == 400
    assert "30d" in (field_error(refused.text, "expires_in") or "")
    created = console.create_key("/admin/users/erin", {"name": "trial", "expires_in": "12h"})
    assert created.status_code == 200, created.text
    ends = (clocks.moment() + timedelta(hours=12)).strftime("%Y-%m-%d %H:%M UTC")
    assert f"It expires {ends}." in created.text
    assert "<td>never</td>" not in created.text  # erin's only key has an expiry
    with console.gw.admin() as http:
        (key,) = http.get("/admin/api/keys", params={"user": "erin"}).json()["keys"]
        assert key["status"] == "active"
        clocks.advance(12 * 3600)
        assert http.get("/admin/api/keys", params={"user": "erin"}).json()["keys"][0]["status"] == "expired"
    page = console.get("/admin/users/erin").text
    assert f'<span class="key-expired">expired {ends}</span>' in page
    assert "<td>never</td>" in console.get("/admin/users/alice").text  # the fixture's key has no expiry


def test_failed_uses_of_an_expired_key_count_towards_the_addresss_throttle(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """An expired key's refusal is a failed authentication like a wrong key's: an address using one
    in a loop is throttled (429) as it would be with any wrong credential, and the cached keys
    behind it keep working."""
    gw = gateway_factory(admin_key=ADMIN_KEY, auth_failures_per_minute=3, window_clock=FakeClock())
    clocks = Clocks(gw)
    with gw.admin() as http:
        key = http.post("/admin/api/users/bob/keys", json={"expires_in_seconds": 60}).json()["key"]
    with gw.client() as alice:
        assert alice.get("/v1/models").status_code == 200  # cached from here on
        clocks.advance(60)
        with gw.client(key) as bob:
            codes = [bob.get("/v1/models").json()["error"]["code"] for _ in range(4)]
        assert codes == ["token_expired"] * 3 + ["auth_rate_limited"]
        assert alice.get("/v1/models").status_code == 200
