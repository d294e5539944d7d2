"""A conversation whose model is gone for good — the provider answers 404 that it no longer serves
it, or the operator took it out of every tier — moves once to a model of its tier, over HTTP against
the mock upstream (told to retire a model: `MockState.retired`), on the in-memory store and on a real
Redis (`backend_url`). A transient error, or a 404 that does not say the model is gone, moves nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from sentinel.mock.app import MockState, create_mock_app
from sentinel.routing.health import ProviderHealth
from tests.api.conftest import Gateway
from tests.routing.helpers import AN_HAIKU, OA_MINI, URL, chat, entry, served, start, stored
from tests.support.clock import FakeClock
from tests.support.metrics import metric
from tests.support.servers import serving

ADMIN_KEY = "retired-admin-key-0123456789"
TWO = {"simple": [entry(OA_MINI), entry(AN_HAIKU)]}


@pytest.fixture
def upstream() -> Iterator[tuple[str, MockState]]:
    """A mock upstream of this test's own (its retired models are its state), and that state."""
    app = create_mock_app()
    with serving(app) as srv:
        yield srv.url, app.state.mock  # type: ignore[attr-defined]


def gateway(
    factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, upstream: str,
    tiers: dict[str, list[dict[str, Any]]] = TWO, **settings: Any,
) -> Gateway:
    return start(factory, tmp_path, backend_url, tiers, openai_api_url=upstream + "/v1", anthropic_api_url=upstream,
                 **settings)


def streamed(http: httpx.Client, conv: str, text: str) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": text}], "conversation_id": conv, "stream": True}
    with http.stream("POST", URL, json=body) as r:
        r.read()
    return r


def other(pair: tuple[str, str]) -> tuple[str, str]:
    return AN_HAIKU if pair == OA_MINI else OA_MINI


def on(gw: Gateway, conv: str) -> tuple[str, str]:
    session = stored(gw, conv)
    assert session is not None
    return session["provider"], session["model"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_conversation_whose_model_the_provider_retired_moves_once_to_another_of_its_tier(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None,
    upstream: tuple[str, MockState], stream: bool,
) -> None:
    url, mock = upstream
    gw = gateway(gateway_factory, tmp_path, backend_url, url)
    with gw.client() as http:
        first = served(chat(http, "hello", conv="old"))[1:]
        mock.retired.add(first[1])  # the provider withdraws the conversation's model
        r = streamed(http, "old", "still there?") if stream else chat(http, "still there?", conv="old")
        assert r.status_code == 200, r.text
        if stream:
            assert r.text.rstrip().endswith("data: [DONE]") and '"error"' not in r.text
        moved = other(first)
        assert (r.headers["x-sentinel-provider"], r.headers["x-sentinel-model"]) == moved
        session = stored(gw, "old")
        assert session is not None and (session["provider"], session["model"]) == moved
        assert session["migrations"] == 1
        assert metric(gw.url, "sentinel_sessions_total", event="migrated") == 1
        # It stays there: the next turns go to the new model straight away, and move nothing more.
        for i in range(3):
            assert served(chat(http, f"turn {i}", conv="old"))[1:] == moved
        assert stored(gw, "old")["migrations"] == 1  # type: ignore[index]
    # The retired model was asked twice: the first turn, and the moved turn's first attempt; never again.
    asked = [call["body"]["model"] for call in mock.log.all() if call["path"].endswith(("completions", "messages"))]
    assert asked.count(first[1]) == 2 and asked.count(moved[1]) == 4


def test_the_moved_turn_is_charged_once(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, upstream: tuple[str, MockState],
) -> None:
    url, mock = upstream
    # (its quota clock stands still: on the wall clock a 60 s window could end between the two counts)
    gw = gateway(gateway_factory, tmp_path, backend_url, url, admin_key=ADMIN_KEY, window_clock=FakeClock())
    with gw.client() as http:
        first = served(chat(http, "hello", conv="old"))[1:]
        assert gw.quota_used()["requests"] == 1
        mock.retired.add(first[1])
        assert served(chat(http, "again", conv="old"))[1:] == other(first)
        assert gw.quota_used()["requests"] == 2  # one request: the 404 attempt is not charged


def test_a_turn_whose_model_is_retired_with_nowhere_to_move_is_given_back(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, upstream: tuple[str, MockState],
) -> None:
    """A tier whose only model the provider retired: the turn fails (502 `provider_model_retired`,
    the operator's to fix), charged nothing, and the session stays as it was."""
    url, mock = upstream
    gw = gateway(gateway_factory, tmp_path, backend_url, url, {"simple": [entry(OA_MINI)]}, admin_key=ADMIN_KEY,
                 window_clock=FakeClock())  # (one 60 s window for both counts, as above)
    with gw.client() as http:
        served(chat(http, "hello", conv="old"))
        before = stored(gw, "old")
        mock.retired.add(OA_MINI[1])
        for stream in (False, True):
            r = streamed(http, "old", "and now?") if stream else chat(http, "and now?", conv="old")
            assert r.status_code == 502 and r.json()["error"]["code"] == "provider_model_retired", r.text
        assert gw.quota_used()["requests"] == 1
        assert stored(gw, "old") == before
    assert not metric(gw.url, "sentinel_sessions_total", event="migrated")


@pytest.mark.parametrize("fault", ["503", "429", "500", "404"])
def test_a_transient_error_or_a_404_not_naming_the_model_moves_nothing(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None,
    upstream: tuple[str, MockState], fault: str,
) -> None:
    """A provider's 5xx or 429 says nothing of the model being gone; nor does a 404 whose message
    does not name the model (the mock's `#mock:status=404`, coded `model_not_found`, names none: a
    client sending it must not move a healthy conversation)."""
    url, _ = upstream
    gw = gateway(gateway_factory, tmp_path, backend_url, url)
    with gw.client() as http:
        first = served(chat(http, "hello", conv="kept"))[1:]
        before = stored(gw, "kept")
        r = chat(http, f"#mock:status={fault}", conv="kept")
        assert r.status_code != 200
        assert r.headers.get("x-sentinel-model") in (None, first[1])
        assert stored(gw, "kept") == before
        assert served(chat(http, "and again", conv="kept"))[1:] == first
    assert not metric(gw.url, "sentinel_sessions_total", event="migrated")


def test_a_conversation_whose_model_the_operator_took_out_of_every_tier_moves_once(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, upstream: tuple[str, MockState],
) -> None:
    url, _ = upstream
    gw = gateway(gateway_factory, tmp_path, backend_url, url, admin_key=ADMIN_KEY)
    with gw.client() as http:
        first = served(chat(http, "hello", conv="edited"))[1:]
        rest = other(first)
        with gw.admin() as admin:
            saved = admin.put("/admin/api/tiers/simple", json={"entries": [f"{rest[0]}/{rest[1]}:1"]})
            assert saved.status_code == 200, saved.text
        assert served(chat(http, "next", conv="edited"))[1:] == rest
        assert on(gw, "edited") == rest
        assert stored(gw, "edited")["migrations"] == 1  # type: ignore[index]
        assert served(chat(http, "after", conv="edited"))[1:] == rest
        assert stored(gw, "edited")["migrations"] == 1  # type: ignore[index]
    assert metric(gw.url, "sentinel_sessions_total", event="migrated") == 1


def test_a_conversation_whose_tier_the_operator_emptied_moves_to_the_tier_its_turn_asks_for(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, upstream: tuple[str, MockState],
) -> None:
    """The operator took the conversation's tier away (reset to the providers file's, which holds
    none): its model is in no tier, and its tier has no model to move to. The fresh selection in its
    tier was a 503 no_models_for_tier at whatever tier the turn asked for (`simple`, served for every
    other conversation), every turn, until the session expired a day later: it moves to a model of
    the tier the turn asks for, once, as a conversation whose model is gone for good does."""
    url, _ = upstream
    gw = gateway(gateway_factory, tmp_path, backend_url, url, {"simple": [entry(OA_MINI)]}, admin_key=ADMIN_KEY)
    with gw.client() as http, gw.admin() as admin:
        saved = admin.put("/admin/api/tiers/complex", json={"entries": [f"{AN_HAIKU[0]}/{AN_HAIKU[1]}:1"]})
        assert saved.status_code == 200, saved.text
        assert served(chat(http, "hard", conv="emptied", tier="complex")) == ("complex", *AN_HAIKU)
        assert admin.delete("/admin/api/tiers/complex").status_code == 200  # back to the file's: none
        for tier in (None, "simple"):
            assert served(chat(http, "next", conv="emptied", tier=tier)) == ("simple", *OA_MINI)
        session = stored(gw, "emptied")
        assert session is not None and (session["tier"], session["provider"], session["model"]) == ("simple", *OA_MINI)
        assert session["migrations"] == 1
        # Asked for the tier that has none, it is still that tier's 503 (nothing to upgrade to), and stays.
        r = chat(http, "harder", conv="emptied", tier="complex")
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_models_for_tier", r.text
        assert stored(gw, "emptied") == session
    assert metric(gw.url, "sentinel_sessions_total", event="migrated") == 1


def test_concurrent_turns_after_a_retirement_are_all_served_by_one_new_model(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, upstream: tuple[str, MockState],
) -> None:
    url, mock = upstream
    three = {"simple": [entry(OA_MINI), entry(("openai", "gpt-4o")), entry(AN_HAIKU)]}
    gw = gateway(gateway_factory, tmp_path, backend_url, url, three)
    with gw.client() as http:
        first = served(chat(http, "hello", conv="busy"))[1:]
        mock.retired.add(first[1])
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: chat(http, f"turn {i}", conv="busy"), range(8)))
    models = {served(r)[1:] for r in answers}
    assert len(models) == 1 and first not in models
    assert on(gw, "busy") in models and stored(gw, "busy")["migrations"] == 1  # type: ignore[index]
    assert metric(gw.url, "sentinel_sessions_total", event="migrated") == 1


def test_first_turns_drawn_to_a_retired_model_are_served_by_another_and_their_sessions_follow(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, upstream: tuple[str, MockState],
) -> None:
    """A tier still naming a model its provider retired: a first turn drawn to it was refused (400),
    at random. It goes to another model of the tier, and its session is on that one; the model is
    not put in backoff (no backoff brings it back: the operator's to take out)."""
    url, mock = upstream
    gw = gateway(gateway_factory, tmp_path, backend_url, url)
    mock.retired.add(OA_MINI[1])
    with gw.client() as http:
        for i in range(12):
            assert served(chat(http, f"hello {i}", conv=f"new-{i}"))[1:] == AN_HAIKU
            assert on(gw, f"new-{i}") == AN_HAIKU
            assert stored(gw, f"new-{i}")["migrations"] == 0  # type: ignore[index]
        assert served(chat(http, "no conversation"))[1:] == AN_HAIKU
    asked = [call["body"]["model"] for call in mock.log.all() if call["path"].endswith(("completions", "messages"))]
    assert OA_MINI[1] in asked  # it was drawn (equal costs), answered 404, and retried
    assert metric(gw.url, "sentinel_provider_health", provider="openai", model=OA_MINI[1]) != 0


def test_a_turn_the_new_model_cannot_carry_does_not_move_the_conversation(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, upstream: tuple[str, MockState],
) -> None:
    """The tier's other model is Anthropic's, which cannot carry a conversation opened by the
    assistant: such a turn fails (nowhere to move it) and leaves the session as it was, rather than
    binding the conversation to a model that refused it; the next turn it can carry moves it."""
    url, mock = upstream
    gw = gateway(gateway_factory, tmp_path, backend_url, url, TWO)
    opened = [{"role": "assistant", "content": "Welcome!"}, {"role": "user", "content": "hi"}]
    with gw.client() as http:
        assert served(chat(http, messages=opened, conv="c"))[1:] == OA_MINI  # (the one that can carry it)
        before = stored(gw, "c")
        mock.retired.add(OA_MINI[1])
        r = chat(http, messages=opened, conv="c")
        assert r.status_code == 502 and r.json()["error"]["code"] == "provider_model_retired", r.text
        assert stored(gw, "c") == before
        assert served(chat(http, "plain now", conv="c"))[1:] == AN_HAIKU
        assert on(gw, "c") == AN_HAIKU


def test_first_turns_stop_drawing_a_model_the_provider_answered_as_retired(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, upstream: tuple[str, MockState],
) -> None:
    """Once a model answered 404 that it is retired, first turns leave it out (marked in the store,
    `ProviderHealth.mark_retired`) instead of drawing it at its normal odds, each draw an extra round
    trip: it is asked once, however many first turns follow. No provider failure is recorded."""
    url, mock = upstream
    gw = gateway(gateway_factory, tmp_path, backend_url, url)
    mock.retired.add(OA_MINI[1])

    def asked(model: str) -> int:
        return [c["body"]["model"] for c in mock.log.all() if c["path"].endswith(("completions", "messages"))
                ].count(model)

    with gw.client() as http:
        for i in range(60):  # until a first turn drew it (each draws it at even odds)
            assert served(chat(http, f"first {i}"))[1:] == AN_HAIKU
            if asked(OA_MINI[1]):
                break
        assert asked(OA_MINI[1]) == 1
        for i in range(20):  # would draw it about ten times more
            assert served(chat(http, f"then {i}", conv=f"c{i}"))[1:] == AN_HAIKU
        assert asked(OA_MINI[1]) == 1
    assert metric(gw.url, "sentinel_provider_health", provider=OA_MINI[0], model=OA_MINI[1]) != 0  # no backoff


def asked(mock: MockState, model: str) -> int:
    """How many generations the mock upstream was asked of `model`."""
    return [c["body"]["model"] for c in mock.log.all() if c["path"].endswith(("completions", "messages"))
            ].count(model)


def test_a_conversation_already_on_a_model_marked_retired_moves_without_asking_it(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, upstream: tuple[str, MockState],
) -> None:
    """Two conversations on one model the provider then retires: the first one's next turn meets the
    404 (and marks the model retired); the second one's next turn moves at once — not sent to the dead
    model first — and is counted as a migration as the first one's move is."""
    url, mock = upstream
    gw = gateway(gateway_factory, tmp_path, backend_url, url, admin_key=ADMIN_KEY)
    with gw.client() as http:
        first = served(chat(http, "hello", conv="one"))[1:]
        for i in range(60):  # a second conversation drawn to the same model (even odds)
            if served(chat(http, "hello", conv=f"two-{i}"))[1:] == first:
                break
        two = f"two-{i}"
        assert on(gw, two) == first
        mock.retired.add(first[1])
        moved = other(first)
        assert served(chat(http, "still there?", conv="one"))[1:] == moved
        before = asked(mock, first[1])
        assert served(chat(http, "and you?", conv=two))[1:] == moved
        assert asked(mock, first[1]) == before  # no 404 round trip: it was not asked again
        assert on(gw, two) == moved and stored(gw, two)["migrations"] == 1  # type: ignore[index]
    assert metric(gw.url, "sentinel_sessions_total", event="migrated") == 2


def test_a_conversation_on_a_model_marked_retired_stays_when_every_other_is_marked_too(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, upstream: tuple[str, MockState],
) -> None:
    """The mark moves a conversation only to a model not marked: a tier whose every model is marked
    is served as before (the marks may be stale: its model still answers, and keeps it)."""
    url, _ = upstream
    gw = gateway(gateway_factory, tmp_path, backend_url, url)
    with gw.client() as http:
        first = served(chat(http, "hello", conv="kept"))[1:]
        for pair in (OA_MINI, AN_HAIKU):
            gw.write_stored(ProviderHealth.retired_key(*pair), b"1", 3600)
        assert served(chat(http, "next", conv="kept"))[1:] == first
        assert stored(gw, "kept")["migrations"] == 0  # type: ignore[index]
    assert not metric(gw.url, "sentinel_sessions_total", event="migrated")


# --- the `/v1` surfaces: an alias's targets --------------------------------------------------------------

MINI, FOUR_O, HAIKU = OA_MINI[1], "gpt-4o", AN_HAIKU[1]


def alias_gateway(
    factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, upstream: str,
) -> Gateway:
    """A catalogue with two aliases whose first target is gpt-4o-mini: `sturdy` (then gpt-4o, relayed
    as it is) and `mixed` (then Claude: on `/v1/messages` gpt-4o-mini is the translated one). Its quota
    clock stands still, so the requests a test counts are all in one 60 s window (on the wall clock
    a window could end between two calls: 5 counted after 7 served)."""
    doc = {"models": [{"name": MINI, "provider": "openai"}, {"name": FOUR_O, "provider": "openai"},
                      {"name": HAIKU, "provider": "anthropic"}],
           "aliases": {"sturdy": [MINI, FOUR_O], "mixed": [MINI, HAIKU]}}
    path = tmp_path / "aliases.yaml"
    path.write_text(yaml.safe_dump(doc))
    return factory(providers_file=path, redis_url=backend_url, default_plan="requests=100000/60s",
                   openai_api_url=upstream + "/v1", anthropic_api_url=upstream, admin_key=ADMIN_KEY,
                   redis_timeout_seconds=2.0, window_clock=FakeClock())


def test_an_alias_target_the_provider_retired_passes_the_request_on_uncharged_and_is_skipped_after(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, upstream: tuple[str, MockState],
) -> None:
    """`/v1` alias routing: a target answering 404 that its provider no longer serves it is no provider
    failure (no backoff) and no client refusal (it was relayed, charged a request, and the alias's
    next target never tried): the request goes on to the next target, charged once, and the target
    is marked retired, so later requests skip it as they skip one in backoff — on both surfaces."""
    url, mock = upstream
    gw = alias_gateway(gateway_factory, tmp_path, backend_url, url)
    mock.retired.add(MINI)
    client = gw.openai()
    raw = client.chat.completions.with_raw_response.create(model="sturdy", messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().choices[0].message.content == "Echo: hi"
    assert raw.headers["x-sentinel-model"] == FOUR_O
    assert gw.quota_used()["requests"] == 1
    assert gw.read_stored(ProviderHealth.retired_key("openai", MINI)) is not None
    assert gw.read_stored(ProviderHealth.key("openai", MINI)) is None  # not a provider failure
    assert asked(mock, MINI) == 1
    for i in range(3):
        again = client.chat.completions.with_raw_response.create(
            model="sturdy", messages=[{"role": "user", "content": f"again {i}"}])
        assert again.headers["x-sentinel-model"] == FOUR_O
        message = gw.anthropic().messages.with_raw_response.create(
            model="mixed", max_tokens=10, messages=[{"role": "user", "content": f"hi {i}"}])
        assert message.headers["x-sentinel-model"] == HAIKU
    assert asked(mock, MINI) == 1  # skipped while marked: never asked again
    # Seven served, seven counted, each with one usage record (counted when admitted, recorded in
    # the background: `settled_rows` waits for the ledger).
    assert gw.quota_used()["requests"] == 7
    assert len({row["request_id"] for row in gw.settled_rows(7)}) == 7


def test_a_translated_alias_target_the_provider_retired_passes_the_request_on(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, upstream: tuple[str, MockState],
) -> None:
    """On `/v1/messages` the alias's first target is an OpenAI model (translated): its retired 404 also
    sends the request on to Claude, streamed or not, charged once each."""
    url, mock = upstream
    gw = alias_gateway(gateway_factory, tmp_path, backend_url, url)
    mock.retired.add(MINI)
    for stream in (True, False):
        mock.log.clear()
        gw.drop_stored(ProviderHealth.retired_key("openai", MINI))  # its mark ran out
        raw = gw.anthropic().messages.with_raw_response.create(
            model="mixed", max_tokens=10, messages=[{"role": "user", "content": "hi"}], stream=stream)
        assert raw.headers["x-sentinel-model"] == HAIKU
        if stream:
            assert [event.type for event in raw.parse()][-1] == "message_stop"
        assert asked(mock, MINI) == 1
    assert gw.quota_used()["requests"] == 2


def test_an_alias_whose_every_target_is_marked_is_served_as_before(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, upstream: tuple[str, MockState],
) -> None:
    """Marks (from the native API's tiers, or another replica) skip a target still answering; with
    every target marked the alias is served in its order, as before."""
    url, mock = upstream
    gw = alias_gateway(gateway_factory, tmp_path, backend_url, url)
    gw.write_stored(ProviderHealth.retired_key("openai", MINI), b"1", 3600)
    client = gw.openai()
    raw = client.chat.completions.with_raw_response.create(model="sturdy", messages=[{"role": "user", "content": "a"}])
    assert raw.headers["x-sentinel-model"] == FOUR_O and asked(mock, MINI) == 0
    gw.write_stored(ProviderHealth.retired_key("openai", FOUR_O), b"1", 3600)
    raw = client.chat.completions.with_raw_response.create(model="sturdy", messages=[{"role": "user", "content": "b"}])
    assert raw.headers["x-sentinel-model"] == MINI


def test_a_named_model_the_provider_retired_is_a_502_charged_nothing(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, upstream: tuple[str, MockState],
) -> None:
    """A `/v1` request naming one model (or an alias whose last target is retired): nowhere to send
    it, so the native rule — 502 `provider_model_retired`, the reservation given back — where it was
    the provider's 404 relayed and charged as a client's refused request."""
    url, mock = upstream
    gw = alias_gateway(gateway_factory, tmp_path, backend_url, url)
    mock.retired.update({MINI, FOUR_O})
    for model in (MINI, "sturdy"):
        with pytest.raises(openai.APIStatusError) as caught:
            gw.openai().chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
        assert caught.value.status_code == 502
        assert caught.value.body["code"] == "provider_model_retired"  # type: ignore[index]
        assert caught.value.response.headers.get("x-should-retry") == "false"  # the SDK's retries: the same 404
    # Asked once each, never retried: the model named alone, then the alias's first target (its
    # second, the model just marked, is left out).
    assert (asked(mock, MINI), asked(mock, FOUR_O)) == (1, 1)
    assert gw.quota_used()["requests"] == 0


def test_a_retired_404_under_a_clients_beta_switch_marks_nothing(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, upstream: tuple[str, MockState],
) -> None:
    """A request sent with the client's `openai-beta` may be refused the model for that switch alone:
    its 404 is relayed as the refusal it is, and the model is not marked for everyone."""
    url, mock = upstream
    gw = alias_gateway(gateway_factory, tmp_path, backend_url, url)
    mock.retired.add(MINI)
    with pytest.raises(openai.NotFoundError):
        gw.openai().chat.completions.create(model="sturdy", messages=[{"role": "user", "content": "x"}],
                                            extra_headers={"openai-beta": "assistants=v2"})
    assert gw.read_stored(ProviderHealth.retired_key("openai", MINI)) is None
    assert asked(mock, FOUR_O) == 0


def test_a_conversation_in_an_emptied_tier_on_a_model_another_tier_lists_moves_off_it_when_retired(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, upstream: tuple[str, MockState],
) -> None:
    """The operator emptied the conversation's tier, but its model is still listed in another: it
    stays on it (not gone) — until its provider answers 404 that it retired the model. The move was
    chosen in the conversation's own tier, which has none: a 502 `provider_model_retired` every turn
    though the tier its turn asked for serves every other conversation. It moves to a model of that
    tier (`_home`, as a model taken out of every tier does), once; a second conversation so placed
    moves at its next turn without asking the model marked retired."""
    url, mock = upstream
    gw = gateway(gateway_factory, tmp_path, backend_url, url, admin_key=ADMIN_KEY)
    with gw.client() as http, gw.admin() as admin:
        saved = admin.put("/admin/api/tiers/complex", json={"entries": [f"{AN_HAIKU[0]}/{AN_HAIKU[1]}:1"]})
        assert saved.status_code == 200, saved.text
        for conv in ("first", "second"):
            assert served(chat(http, "hard", conv=conv, tier="complex")) == ("complex", *AN_HAIKU)
        assert admin.delete("/admin/api/tiers/complex").status_code == 200  # back to the file's: none
        # Not gone (still listed in simple): the conversation stays on its model and its tier.
        assert served(chat(http, "still here", conv="first")) == ("complex", *AN_HAIKU)
        mock.retired.add(AN_HAIKU[1])
        for conv in ("first", "second"):
            assert served(chat(http, "and now?", conv=conv)) == ("simple", *OA_MINI)
            session = stored(gw, conv)
            assert session is not None
            assert (session["tier"], session["provider"], session["model"], session["migrations"]) == (
                "simple", *OA_MINI, 1)
            assert served(chat(http, "after", conv=conv)) == ("simple", *OA_MINI)
    assert asked(mock, AN_HAIKU[1]) == 4  # two first turns, the hit, the first one's 404: not the second's
    assert metric(gw.url, "sentinel_sessions_total", event="migrated") == 2


def test_a_move_to_a_model_of_a_larger_output_cap_is_reserved_for_that_cap(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, upstream: tuple[str, MockState],
) -> None:
    """Under `keep`, a conversation bound to a model of 1,000 output tokens at most asks for more: it
    was reserved as 1,000 (its model alone could serve it) — but a 404 saying the model is retired
    moves it to one of 2,000, sent 2,000 on a reservation of 1,000, beyond a plan of 1,500 under
    concurrency. The reservation covers every model the turn may move to (`TierRouter.may_serve`):
    refused with the plan's 429 before anything is sent, nothing counted and the session as it was;
    a cap that fits is served by the new model and the conversation moves."""
    url, mock = upstream
    doc = {"models": [{"name": OA_MINI[1], "provider": OA_MINI[0], "max_output_tokens": 1000},
                      {"name": AN_HAIKU[1], "provider": AN_HAIKU[0], "max_output_tokens": 2000}],
           "tiers": {"simple": [entry(OA_MINI)]}}
    config = tmp_path / "capped.yaml"
    config.write_text(yaml.safe_dump(doc))
    gw = gateway_factory(providers_file=config, redis_url=backend_url, redis_timeout_seconds=2.0,
                         openai_api_url=url + "/v1", anthropic_api_url=url, admin_key=ADMIN_KEY,
                         default_plan="requests=100/1d,output_tokens=1500/1d", window_clock=FakeClock())
    with gw.client() as http, gw.admin() as admin:
        assert served(chat(http, "hello", conv="c", max_tokens=5))[1:] == OA_MINI
        both = [f"{OA_MINI[0]}/{OA_MINI[1]}:1", f"{AN_HAIKU[0]}/{AN_HAIKU[1]}:1"]
        assert admin.put("/admin/api/tiers/simple", json={"entries": both}).status_code == 200
        before, used = stored(gw, "c"), gw.quota_used()
        mock.retired.add(OA_MINI[1])
        sent = len(mock.log.all())
        r = chat(http, "more", conv="c", max_tokens=1_000_000)
        assert r.status_code == 429, r.text
        assert r.json()["error"]["details"]["metric"] == "output_tokens"
        assert len(mock.log.all()) == sent  # nothing sent
        assert (stored(gw, "c"), gw.quota_used()) == (before, used)
        assert served(chat(http, "some more", conv="c", max_tokens=1400))[1:] == AN_HAIKU
        assert on(gw, "c") == AN_HAIKU
    moved = [c["body"] for c in mock.log.all() if c["path"].endswith("messages")]
    assert [body["max_tokens"] for body in moved] == [1400]
