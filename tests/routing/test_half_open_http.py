"""Half-open provider health over HTTP: once a model's backoff ran out, one native request is its
trial while the tier's others go to its healthy model; the trial's answer restores it.

The recovering model is served by an upstream of the test's own that holds its first request until
the test lets it go (the others it answers at once); the healthy one by the mock upstream. The
gateway's health clock is frozen: the backoff has run out, and the trial's claim cannot lapse while
the test runs, however slow the machine.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sentinel.routing.health import ProviderHealth
from tests.api.conftest import Gateway
from tests.routing.helpers import AN_HAIKU, chat, entry, served, start
from tests.support.clock import FakeClock
from tests.support.servers import serving
from tests.support.waiting import wait_for

RECOVERING = ("recovering", "gpt-4o-mini")
ANSWER = {
    "id": "chatcmpl-back", "object": "chat.completion", "created": 0, "model": RECOVERING[1],
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "back"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


REFUSAL = {"error": {"message": "Invalid value for 'temperature'", "type": "invalid_request_error",
                     "param": "temperature", "code": None}}


class Held:
    """An OpenAI-format upstream that holds its first request until `release()`, answers the rest at
    once; a request whose text says `#refuse` it refuses with a 400 (a client's error)."""

    def __init__(self) -> None:
        self.hits = 0
        self.gate = threading.Event()
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.answer, methods=["POST"])])

    async def answer(self, request: Request) -> JSONResponse:
        self.hits += 1
        if b"#refuse" in await request.body():
            return JSONResponse(REFUSAL, status_code=400)
        if self.hits == 1:
            await anyio.to_thread.run_sync(self.gate.wait)
        return JSONResponse(ANSWER)

    def release(self) -> None:
        self.gate.set()


def recovering_gateway(
    factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None, upstream_url: str,
    tiers: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch,
) -> Gateway:
    """A gateway whose RECOVERING model failed once and whose 30 s backoff has just run out; its
    selector draws RECOVERING whenever it may (else as it would)."""
    gw = start(factory, tmp_path, backend_url, tiers, {"recovering": upstream_url + "/v1"}, debug=True)
    router = gw.runtime.native.router
    clock = FakeClock(time.time())
    monkeypatch.setattr(router, "clock", clock)
    monkeypatch.setattr(router.health, "clock", clock)
    lapsed = {"failures": 1, "until_ts": clock() - 1, "backoff": 30.0}
    gw.write_stored(ProviderHealth.key(*RECOVERING), json.dumps(lapsed).encode(), 3600)
    selector = router.selector
    draw = selector.choose
    monkeypatch.setattr(selector, "choose", lambda pool: next(
        (e for e in pool if (e.provider, e.model) == RECOVERING), None) or draw(pool))
    return gw


def test_one_trial_reaches_the_recovering_model_and_its_success_restores_it(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before, the first request after the backoff and every one after it went to the recovering
    model at once (here: drawn whenever it may be)."""
    held = Held()
    with serving(held.app) as upstream:
        gw = recovering_gateway(gateway_factory, tmp_path, backend_url, upstream.url,
                                {"simple": [entry(RECOVERING), entry(AN_HAIKU)]}, monkeypatch)
        with gw.client() as http, gw.client() as other, ThreadPoolExecutor(1) as pool:
            phases = [shown_state(http)]  # what operators are shown of it (`available` said true throughout)
            try:
                trial = pool.submit(chat, other, "are you back?")
                assert wait_for(lambda: held.hits == 1)  # the trial is at the recovering model
                phases.append(shown_state(http))
                meanwhile = [served(chat(http, f"meanwhile {i}"))[1:] for i in range(5)]
                hits_meanwhile = held.hits
            finally:
                held.release()
            assert served(trial.result())[1:] == RECOVERING
            assert meanwhile == [AN_HAIKU] * 5 and hits_meanwhile == 1
            assert gw.read_stored(ProviderHealth.key(*RECOVERING)) is None  # its success restored it
            phases.append(shown_state(http))
            after = [served(chat(http, f"after {i}"))[1:] for i in range(3)]
    assert after == [RECOVERING] * 3 and held.hits == 4
    assert phases == ["half_open", "trial", "healthy"]


def shown_state(http: Any) -> str:
    """The recovering model's state in `/debug/health`."""
    candidates = http.get("/debug/health").json()["candidates"]
    [row] = [c for c in candidates if (c["provider"], c["model"]) == RECOVERING]
    state: str = row["state"]
    return state


def test_a_single_model_tier_is_not_refused_while_its_trial_runs(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no other candidate the requests go to the recovering model all the same (never a 503
    because a trial is under way), and any answer of it clears its backoff."""
    held = Held()
    with serving(held.app) as upstream:
        gw = recovering_gateway(gateway_factory, tmp_path, backend_url, upstream.url,
                                {"simple": [entry(RECOVERING)]}, monkeypatch)
        with gw.client() as http, gw.client() as other, ThreadPoolExecutor(1) as pool:
            try:
                trial = pool.submit(chat, other, "are you back?")
                assert wait_for(lambda: held.hits == 1)
                meanwhile = served(chat(http, "and me?"))[1:]
                cleared = gw.read_stored(ProviderHealth.key(*RECOVERING)) is None
            finally:
                held.release()
            assert served(trial.result())[1:] == RECOVERING
    assert meanwhile == RECOVERING and cleared and held.hits == 2


def test_a_trial_that_ends_with_a_clients_error_lets_the_next_request_be_a_trial(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client's 4xx says nothing of the provider's health: the trial's claim is released when the
    request ends, and the next request is the trial at once (not 30 s later)."""
    held = Held()
    held.release()  # nothing held here
    with serving(held.app) as upstream:
        gw = recovering_gateway(gateway_factory, tmp_path, backend_url, upstream.url,
                                {"simple": [entry(RECOVERING), entry(AN_HAIKU)]}, monkeypatch)
        with gw.client() as http:
            refused = chat(http, "a bad one #refuse")
            assert gw.read_stored(ProviderHealth.key(*RECOVERING)) is not None  # no verdict
            trial = served(chat(http, "and now?"))[1:]
    assert refused.status_code == 400 and refused.json()["error"]["provider"] == RECOVERING[0], refused.text
    assert trial == RECOVERING and held.hits == 2
    assert gw.read_stored(ProviderHealth.key(*RECOVERING)) is None


def test_a_request_that_claimed_no_trial_releases_nothing(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, backend_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The healthy path pays nothing for half-open health: a request (streamed or not) that claimed
    no trial makes no release (each one a shielded task of its own at the request's end); one that
    claimed a trial and ended with no verdict releases it."""
    held = Held()
    held.release()  # nothing held here
    with serving(held.app) as upstream:
        gw = recovering_gateway(gateway_factory, tmp_path, backend_url, upstream.url,
                                {"simple": [entry(RECOVERING), entry(AN_HAIKU)], "moderate": [entry(AN_HAIKU)]},
                                monkeypatch)
        router = gw.runtime.native.router
        released: list[list[tuple[str, str, str]]] = []
        release = router.release

        async def counted(decision: Any) -> None:
            released.append(list(decision.trials))
            await release(decision)

        monkeypatch.setattr(router, "release", counted)
        with gw.client() as http:
            assert chat(http, "a bad one #refuse").status_code == 400  # the trial, no verdict
            assert [[(p, m) for p, m, _ in trials] for trials in released] == [[RECOVERING]]
            released.clear()
            assert served(chat(http, "the trial"))[1:] == RECOVERING  # restored
            released.clear()  # (it claimed the trial: its release finds it reported)
            with http.stream("POST", "/native/v1/chat/completions", json={
                    "tier": "moderate", "messages": [{"role": "user", "content": "hi"}], "stream": True}) as streamed:
                assert streamed.status_code == 200 and b"[DONE]" in streamed.read()
            assert served(chat(http, "healthy"))[1:] in {RECOVERING, AN_HAIKU}
    assert released == []
