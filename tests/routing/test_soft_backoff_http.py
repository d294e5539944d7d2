"""Soft backoffs over HTTP: two users' client-causable failures (two keys of one person meet the
witness rule alone) steer a tier's traffic away from the model, but never refuse a request;
only the provider's own failures (a 503, say) do."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from sentinel.routing.health import ProviderHealth
from tests.api.conftest import Gateway
from tests.routing.helpers import OA_4O, OA_MINI, chat, entry, served, start, stored
from tests.support.accounts import create_key


def keys(gw: Gateway, *users: str) -> list[str]:
    return [asyncio.run(create_key(gw.settings.database_url, user))[1] for user in users]


def failed(r: httpx.Response) -> None:
    assert r.status_code == 502 and r.json()["error"]["code"] == "provider_error", r.text


def backed_off(gw: Gateway, pair: tuple[str, str]) -> dict[str, Any]:
    raw = gw.read_stored(ProviderHealth.key(*pair))
    assert raw is not None
    state: dict[str, Any] = json.loads(raw)
    return state


def v1_fails(http: httpx.Client, model: str, directive: str) -> None:
    """A `/v1` call naming `model` alone (no other target) that its provider fails."""
    failed(http.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": f"my fault {directive}"}]}))


def test_two_users_500s_never_take_a_one_model_tier_out_of_service(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None
) -> None:
    """alice and bob (two keys of one person) each sent a request its provider answers 500 for —
    free, their reservations given back —, and carol's ordinary request on a one-model tier was
    refused 503 `tier_unavailable` for 30 s, doubling to 300 s while they repeated. The backoff they
    start is soft: carol is served. A 503 (the provider's own load) makes it hard: refused."""
    gw = start(gateway_factory, tmp_path, backend_url, {"simple": [entry(OA_MINI)]})
    bob_key, carol_key = keys(gw, "bob", "carol")
    with gw.client() as alice, gw.client(bob_key) as bob, gw.client(carol_key) as carol:
        for http in (alice, bob):
            failed(chat(http, "my fault #mock:status=500"))
        assert backed_off(gw, OA_MINI)["failures"] == 1
        assert served(chat(carol, "hello"))[1:] == OA_MINI
        assert gw.read_stored(ProviderHealth.key(*OA_MINI)) is None  # its success cleared the backoff
        for http in (alice, bob):
            failed(chat(http, "again #mock:status=500"))
        assert served(chat(carol, "hello again"))[1:] == OA_MINI
        for http in (alice, bob):
            failed(chat(http, "and again #mock:status=500"))
        assert backed_off(gw, OA_MINI)["soft"] is True
        failed(chat(alice, "busy #mock:status=503"))  # during the soft backoff: now hard
        assert "soft" not in backed_off(gw, OA_MINI)
        refused = chat(carol, "anyone?")
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "tier_unavailable", refused.text
    assert 0 < int(refused.headers["retry-after"]) <= 30


def test_a_soft_backoff_steers_a_tier_to_its_other_model_and_serves_when_that_one_is_out(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None
) -> None:
    """A soft-backed-off model is avoided while the tier has another (as any backoff), and is the
    last resort when the other is out for good reason — not a 503 for everyone."""
    gw = start(gateway_factory, tmp_path, backend_url, {"simple": [entry(OA_MINI), entry(OA_4O)]})
    bob_key, carol_key = keys(gw, "bob", "carol")
    with gw.client() as alice, gw.client(bob_key) as bob, gw.client(carol_key) as carol:
        for http in (alice, bob):
            v1_fails(http, OA_MINI[1], "#mock:status=500")
        assert backed_off(gw, OA_MINI)["failures"] == 1
        for n in range(6):
            assert served(chat(carol, f"hello {n}"))[1:] == OA_4O  # steered
        v1_fails(alice, OA_4O[1], "#mock:status=503")  # the other model's provider is overloaded: hard
        assert "soft" not in backed_off(gw, OA_4O)
        assert served(chat(carol, "and now?"))[1:] == OA_MINI  # the soft one serves
    assert gw.read_stored(ProviderHealth.key(*OA_MINI)) is None  # and its success cleared it


def test_a_soft_backoff_keeps_a_conversation_on_its_model_under_migrate(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None
) -> None:
    """Under SESSION_FAILOVER=migrate every live conversation on a model in backoff moved off it:
    two keys of one person moved everyone's conversations at will. Only a hard backoff moves them."""
    gw = start(gateway_factory, tmp_path, backend_url, {"simple": [entry(OA_MINI), entry(OA_4O)]},
               session_failover="migrate")
    bob_key, carol_key = keys(gw, "bob", "carol")
    with gw.client() as alice, gw.client(bob_key) as bob, gw.client(carol_key) as carol:
        tier, provider, model = served(chat(carol, "hi", conv="conv-c"))
        for http in (alice, bob):
            v1_fails(http, model, "#mock:status=500")
        assert backed_off(gw, (provider, model))["failures"] == 1
        assert served(chat(carol, "still you?", conv="conv-c")) == (tier, provider, model)
        session = stored(gw, "conv-c", "carol")
        assert session is not None and (session["provider"], session["model"], session["migrations"]) == (
            provider, model, 0)
        # A hard backoff of the model (a 503) still moves it.
        v1_fails(alice, model, "#mock:status=503")
        moved = served(chat(carol, "and now?", conv="conv-c"))
    assert moved[1:] != (provider, model)
    session = stored(gw, "conv-c", "carol")
    assert session is not None and (session["provider"], session["model"], session["migrations"]) == (*moved[1:], 1)


def test_an_alias_tries_a_target_in_a_soft_backoff_before_one_in_a_hard_backoff(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None
) -> None:
    """A `/v1` alias sends to its targets in backoff last, in its order: a target out for the
    provider's own failures (a 503) was tried before one only two users' 500s put in a soft backoff,
    which likely answers an ordinary request — a failed call first, or a 502 for a request alone."""
    doc = {"models": [{"name": OA_MINI[1], "provider": "openai"}, {"name": OA_4O[1], "provider": "openai"}],
           "aliases": {"sturdy": [OA_MINI[1], OA_4O[1]]}}
    path = tmp_path / "aliases.yaml"
    path.write_text(yaml.safe_dump(doc))
    gw = gateway_factory(providers_file=path, redis_url=backend_url, default_plan="requests=100000/60s",
                         redis_timeout_seconds=2.0)
    (bob_key,) = keys(gw, "bob")
    with gw.client() as http, gw.client(bob_key) as bob:
        v1_fails(http, OA_MINI[1], "#mock:status=503")  # the provider's own load: hard
        for user in (http, bob):
            v1_fails(user, OA_4O[1], "#mock:status=500")  # two users' 500s: soft
        r = http.post("/v1/chat/completions", json={"model": "sturdy", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert r.headers["x-sentinel-model"] == OA_4O[1]
    assert gw.read_stored(ProviderHealth.key(*OA_4O)) is None  # its answer cleared the backoff
    assert gw.read_stored(ProviderHealth.key(*OA_MINI)) is not None  # never asked


def test_operators_see_a_soft_backoff_as_such(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None
) -> None:
    """The admin API, the console and `/debug/health` said `backoff` alike for a soft backoff (which
    refuses no request) and a hard one (which refuses a one-model tier): an operator reading "in
    backoff" could not tell a provider failing from two users' 500s. Each candidate says `soft`."""
    admin_key = "admin-key-for-soft-backoff"
    gw = start(gateway_factory, tmp_path, backend_url, {"simple": [entry(OA_MINI)], "complex": [entry(OA_4O)]},
               admin_key=admin_key, debug=True)
    (bob_key,) = keys(gw, "bob")
    with gw.client() as alice, gw.client(bob_key) as bob:
        for http in (alice, bob):
            failed(chat(http, "my fault #mock:status=500"))
        failed(chat(alice, "the provider's own #mock:status=503", tier="complex"))
        debug = {(c["provider"], c["model"]): c for c in alice.get("/debug/health").json()["candidates"]}
    with gw.client(admin_key) as admin:
        listed = admin.get("/admin/api/providers")
        assert listed.status_code == 200, listed.text
        rows = {(p["provider"], p["model"]): p for p in listed.json()["providers"]}
    with httpx.Client(base_url=gw.url, timeout=30) as console:
        assert console.post("/admin/signin", data={"key": admin_key}).status_code == 303
        page = console.get("/admin")
    for view in (debug, rows):
        assert (view[OA_MINI]["state"], view[OA_MINI]["soft"]) == ("backoff", True)
        assert (view[OA_4O]["state"], view[OA_4O]["soft"]) == ("backoff", False)
    assert "soft backoff" in page.text and page.text.count("soft backoff") == 1, page.text
