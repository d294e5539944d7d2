"""A model that reasons without being asked (OpenAI's o-series, gpt-5) bills reasoning it never
streams: a client leaving its stream right before the usage chunk has the upstream read on to the
provider's count, which is charged (before: the output it reserved), as one asking for reasoning
has — on the relayed chat, Responses, translated `/v1/messages` and native surfaces, by the model's
name or the providers file's `reasons`, either way; a drain that ends without the count is charged
the output reserved."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml

from sentinel.services import exchange
from tests.api.conftest import Gateway
from tests.api.test_quotas import set_plan
from tests.support.attack import ledger_rows, openai_error
from tests.support.held_upstream import HeldUpstream, Script, Step
from tests.support.servers import serving
from tests.support.waiting import wait_for

RESERVED = 600  # each request's output cap
LIMIT = 1000  # output tokens a day, each user


def draining(gw: Gateway) -> Callable[[], bool]:
    """Whether a stream its client left is being read on by `gw` (it runs in this process)."""
    return lambda: bool(gw.runtime.relay.meter.reading_on)  # type: ignore[attr-defined]


def drains(gw: Gateway) -> int:
    """How many streams their clients left `gw` is reading on."""
    return len(gw.runtime.relay.meter.reading_on)  # type: ignore[attr-defined]


def chunk(model: str, choices: list[dict[str, Any]], **extra: Any) -> bytes:
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": choices, **extra}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def answer(model: str) -> Script:
    """A chat stream whose text comes at once and whose end — finish, usage chunk — waits for a gate
    the test never opens: the client leaves before the provider's count."""
    usage = {"prompt_tokens": 10, "completion_tokens": 5000, "total_tokens": 5010,
             "completion_tokens_details": {"reasoning_tokens": 4990}}
    script = Script(b"text/event-stream", [
        Step(chunk(model, [{"index": 0, "delta": {"role": "assistant", "content": "Hello there"},
                            "finish_reason": None}])),
        Step(chunk(model, [{"index": 0, "delta": {}, "finish_reason": "stop"}])
             + chunk(model, [], usage=usage) + b"data: [DONE]\n\n"),
    ])
    script.head.gate.set()
    script.steps[0].gate.set()
    return script


def event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps({"type": name, **data}).encode() + b"\n\n"


def response_answer(model: str) -> Script:
    """A Responses stream whose text comes at once and whose `response.completed` never does."""
    response = {"id": "resp_1", "object": "response", "created_at": 1, "model": model, "status": "in_progress",
                "output": []}
    usage = {"input_tokens": 10, "output_tokens": 5000, "total_tokens": 5010}
    script = Script(b"text/event-stream", [
        Step(event("response.created", {"response": response})
             + event("response.output_text.delta", {"item_id": "msg_1", "output_index": 0, "content_index": 0,
                                                    "delta": "Hello there"})),
        Step(event("response.completed", {"response": {**response, "status": "completed", "usage": usage}})),
    ])
    script.head.gate.set()
    script.steps[0].gate.set()
    return script


@pytest.fixture
def upstream() -> Iterator[tuple[HeldUpstream, str]]:
    held = HeldUpstream()
    with serving(held) as srv:
        yield held, srv.url


def gateway(factory: Callable[..., Gateway], tmp_path: Path, url: str, *, flags: bool = False,
            **settings: Any) -> Gateway:
    """A catalogue of OpenAI models on `url`; with `flags`, models whose `reasons` the file sets."""
    flagged = [
        {"name": "house-thinker", "provider": "openai", "upstream_name": "house-ft-1", "reasons": True},
        {"name": "quiet-o3", "provider": "openai", "upstream_name": "o3", "reasons": False},
    ]
    doc = {
        "providers": [{"name": "openai", "kind": "openai", "base_url": url + "/v1", "api_key": "sk-upstream"}],
        "models": [
            {"name": "o4-mini", "provider": "openai"},  # reasons: by its name
            {"name": "gpt-5.1", "provider": "openai"},
            {"name": "gpt-4o-mini", "provider": "openai"},  # does not
            *(flagged if flags else []),
        ],
        "aliases": {"thinker": ["o4-mini"]},
        "tiers": {"simple": [{"provider": "openai", "model": "o4-mini"}],
                  "moderate": [{"provider": "openai", "model": "o3" if flags else "gpt-5-chat-latest"}],
                  "complex": [{"provider": "openai", "model": "gpt-4o-mini"}]},
    }
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump(doc))
    return factory(providers_file=path, usage_flush_interval_seconds=0.1, **settings)


def chat_left(gw: Gateway, model: str, extra: dict[str, Any]) -> None:
    """The openai SDK streams a chat, reads its first chunk and closes the stream."""
    client = gw.openai()
    with client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "think about it"}], stream=True,
        max_completion_tokens=RESERVED, **extra,
    ) as stream:
        first = next(iter(stream))
        assert first.choices[0].delta.content == "Hello there"


def messages_left(gw: Gateway, model: str, extra: dict[str, Any]) -> None:
    """The anthropic SDK streams a message (translated for an OpenAI model) and leaves at its text."""
    client = gw.anthropic()
    with client.messages.stream(
        model=model, max_tokens=RESERVED, messages=[{"role": "user", "content": "think about it"}], **extra,
    ) as stream:
        assert next(iter(stream.text_stream)) == "Hello there"


def native_left(gw: Gateway, tier: str, extra: dict[str, Any]) -> None:
    """A native stream on a tier, left once its text came."""
    body = {"tier": tier, "messages": [{"role": "user", "content": "think about it"}], "stream": True,
            "max_tokens": RESERVED, **extra}
    with gw.client() as http, http.stream("POST", "/native/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert any("Hello there" in line for line in r.iter_lines())


def responses_left(gw: Gateway, model: str, extra: dict[str, Any]) -> None:
    """The openai SDK streams a response and closes it at its text."""
    with gw.openai().responses.create(
        model=model, input="think about it", stream=True, max_output_tokens=RESERVED, **extra,
    ) as stream:
        assert any(getattr(e, "delta", None) == "Hello there" for e in stream)


LEFT = {"chat": chat_left, "messages": messages_left, "native": native_left, "responses": responses_left}
CASES = [
    # (surface, model or tier, extra fields, upstream model, whether the reserved output is charged)
    ("chat", "o4-mini", {}, "o4-mini", True),
    ("chat", "thinker", {}, "o4-mini", True),  # an alias to it
    ("chat", "gpt-5.1", {"reasoning_effort": "none"}, "gpt-5.1", False),  # turned off
    ("chat", "gpt-5.1", {"reasoning_effort": "minimal"}, "gpt-5.1", True),
    ("chat", "gpt-4o-mini", {}, "gpt-4o-mini", False),
    ("responses", "o4-mini", {}, "o4-mini", True),
    ("responses", "gpt-5.1", {"reasoning": {"effort": "none"}}, "gpt-5.1", False),
    ("responses", "gpt-4o-mini", {}, "gpt-4o-mini", False),
    ("messages", "o4-mini", {}, "o4-mini", True),  # translated: `thinking` cannot reach it
    ("messages", "o4-mini", {"thinking": {"type": "disabled"}}, "o4-mini", True),
    ("messages", "gpt-4o-mini", {}, "gpt-4o-mini", False),
    ("native", "simple", {}, "o4-mini", True),  # a tier's model, by its name
    ("native", "moderate", {}, "gpt-5-chat-latest", False),  # (ChatGPT's model, which does not reason)
    ("native", "complex", {}, "gpt-4o-mini", False),
]
# The providers file's `reasons` overrides the name, both ways.
FLAGGED = [
    ("chat", "house-thinker", {}, "house-ft-1", True),  # `reasons: true` on a name that does not
    ("chat", "quiet-o3", {}, "o3", False),  # `reasons: false` on a name that does
    ("native", "moderate", {}, "o3", False),  # a tier's model, as the catalogue says of it (`quiet-o3`)
]


@pytest.mark.parametrize(("surface", "model", "extra", "upstream_model", "hidden", "flags"),
                         [(*case, False) for case in CASES] + [(*case, True) for case in FLAGGED])
def test_a_stream_left_before_its_usage_is_charged_the_reasoning_it_hid(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, upstream: tuple[HeldUpstream, str],
    surface: str, model: str, extra: dict[str, Any], upstream_model: str, hidden: bool, flags: bool,
) -> None:
    """o4-mini reasons on every request and bills it as output (5,000 tokens here), streaming none
    of it: a client closing its stream right before the usage chunk was charged the two words shown."""
    held, url = upstream
    gw = gateway(gateway_factory, tmp_path, url, flags=flags)
    set_plan(gw.settings.database_url, "alice", "daily", f"output_tokens={LIMIT}/1d")
    script = held.queue(response_answer(upstream_model) if surface == "responses" else answer(upstream_model))
    LEFT[surface](gw, model, extra)
    assert json.loads(held.received[0])["model"] == upstream_model
    if hidden:  # read on after the client left, for the provider's count: charged that, not the cap
        assert wait_for(draining(gw))
        assert not script.left.is_set()
        script.steps[1].gate.set()
        assert script.done.wait(10)
    else:
        assert script.left.wait(10)  # the gateway left the upstream before its usage chunk
        assert not script.done.is_set()
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 1)
    row = ledger_rows(gw.settings.database_url, "alice")[0]
    if hidden:
        assert (row["usage_source"], row["output_tokens"], row["status"]) == ("measured", 5000, 499)
    else:
        assert row["usage_source"] == "estimated"
        assert 0 < row["output_tokens"] < 10
    # The plan's counter holds what the ledger says: a request for the whole day's output is refused.
    with gw.client() as http:
        r = http.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "max_completion_tokens": LIMIT,
                                                    "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 429, r.text
    assert openai_error(r.json())["details"]["used"] == row["output_tokens"]
    assert len(held.received) == 1


def test_a_stream_read_on_after_its_client_left_holds_its_callers_in_flight_slot(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, upstream: tuple[HeldUpstream, str],
) -> None:
    """A drain holds an upstream connection for up to the stream's time limit: one key starting
    hidden-output streams and leaving each at its first chunk held as many pooled connections as it
    liked, past SENTINEL_MAX_IN_FLIGHT_PER_USER (its slot was given back as its client left). Each
    drain now counts as one of its caller's requests in flight until it ends."""
    held, url = upstream
    gw = gateway(gateway_factory, tmp_path, url, max_in_flight_per_user=2)
    scripts = [held.queue(answer("o4-mini")) for _ in range(2)]
    for _ in scripts:
        chat_left(gw, "o4-mini", {})
    assert wait_for(lambda: drains(gw) == 2)
    assert not any(script.left.is_set() for script in scripts)
    with gw.client() as http:
        r = http.post("/v1/chat/completions", json={"model": "o4-mini", "stream": True,
                                                    "messages": [{"role": "user", "content": "again"}]})
        assert r.status_code == 429, r.text
        assert openai_error(r.json())["code"] == "too_many_in_flight"
        assert len(held.received) == 2  # refused before anything was sent
    scripts[0].steps[1].gate.set()  # one drain reads its end: its slot is free again
    assert scripts[0].done.wait(10)
    assert wait_for(lambda: drains(gw) == 1)
    scripts.append(held.queue(answer("o4-mini")))
    chat_left(gw, "o4-mini", {})
    for script in scripts[1:]:
        script.steps[1].gate.set()
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 3)


def test_a_whole_answer_without_usage_from_a_model_that_reasons_is_charged_as_reserved(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, upstream: tuple[HeldUpstream, str],
) -> None:
    """A non-streamed answer carries the provider's usage (charged as it says); one from a server that
    leaves it out is charged as reserved, as a stream cut before its count is."""
    held, url = upstream
    gw = gateway(gateway_factory, tmp_path, url)
    set_plan(gw.settings.database_url, "alice", "daily", f"output_tokens={LIMIT}/1d")
    message = {"role": "assistant", "content": "Hello there"}
    for usage in ({"prompt_tokens": 10, "completion_tokens": 412, "total_tokens": 422}, None):
        body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "o4-mini",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
        if usage is not None:
            body["usage"] = usage
        held.queue(Script(b"application/json", [Step(json.dumps(body).encode())])).open_all()
    with gw.client() as http:
        answers = [http.post("/v1/chat/completions", json={
            "model": "o4-mini", "max_completion_tokens": 300, "messages": [{"role": "user", "content": "x"}]})
            for _ in range(2)]
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 2)
    rows = {row["request_id"]: row for row in ledger_rows(gw.settings.database_url, "alice")}
    charged = [(rows[r.headers["x-request-id"]]["usage_source"], rows[r.headers["x-request-id"]]["output_tokens"])
               for r in answers]
    assert charged == [("measured", 412), ("estimated", 300)]


ROLE = {"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None}, "finish_reason": None}
SAID = {"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}
CHAT_ERROR = b'data: {"error": {"message": "The server had an error", "type": "server_error", "code": null}}\n\n'
STARTED = {"id": "resp_1", "object": "response", "created_at": 1, "model": "o4-mini", "status": "in_progress",
           "output": [], "usage": None}
FAILED = {**STARTED, "status": "failed", "error": {"code": "server_error", "message": "The server had an error"}}
REASONING = {"id": "rs_1", "type": "reasoning", "summary": []}
BROKEN: list[tuple[str, list[bytes], int | None]] = [
    # (surface, what the provider streams before it ends, the output charged: None for none)
    ("chat", [chunk("o4-mini", [ROLE]), CHAT_ERROR], None),  # its error right after the opening role
    ("chat", [CHAT_ERROR], None),
    ("chat", [chunk("o4-mini", [SAID]), CHAT_ERROR], RESERVED),  # the answer began: it reasoned first
    ("chat", [chunk("o4-mini", [{**ROLE, "delta": {}, "finish_reason": "length"}]), CHAT_ERROR], RESERVED),
    ("chat", [chunk("o4-mini", [ROLE])], RESERVED),  # the connection ended: the provider may go on unseen
    ("responses", [event("response.created", {"response": STARTED}),
                   event("response.in_progress", {"response": STARTED}),
                   event("response.failed", {"response": FAILED})], None),
    ("responses", [event("response.created", {"response": STARTED}),
                   event("error", {"code": "server_error", "message": "The server had an error", "param": None})],
     None),
    ("responses", [event("response.created", {"response": STARTED}),
                   event("response.output_item.added", {"output_index": 0, "item": REASONING}),
                   event("response.failed", {"response": FAILED})], RESERVED),  # it began reasoning
    ("responses", [event("response.created", {"response": STARTED}),
                   event("response.failed", {"response": {**FAILED, "output": [REASONING]}})], RESERVED),
    ("responses", [event("response.created", {"response": STARTED}),  # the provider's count wins
                   event("response.failed", {"response": {**FAILED, "usage": {
                       "input_tokens": 10, "output_tokens": 321, "total_tokens": 331}}})], 321),
    # Translated for an Anthropic client, and on the native API (a tier's o4-mini): the same rule.
    ("messages", [chunk("o4-mini", [ROLE]), CHAT_ERROR], None),
    ("messages", [chunk("o4-mini", [SAID]), CHAT_ERROR], RESERVED),
    ("native", [chunk("o4-mini", [ROLE]), CHAT_ERROR], None),
    ("native", [chunk("o4-mini", [SAID]), CHAT_ERROR], RESERVED),
]


@pytest.mark.parametrize(("surface", "sent", "output"), BROKEN)
def test_a_reasoning_stream_the_provider_failed_before_any_output_is_charged_no_output(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, upstream: tuple[HeldUpstream, str],
    surface: str, sent: list[bytes], output: int | None,
) -> None:
    """o4-mini's reasoning is billed unseen, so a stream cut short is charged the output it reserved —
    but one the provider itself ended as failed (chat's error chunk, a Responses `error` or
    `response.failed`) before any of the answer came gave the client nothing: it was charged its
    whole reservation for it. Charged no output now (its input as before), unless the provider's
    usage says otherwise; one whose answer began (a word, a finish reason, a reasoning item), or
    whose connection merely ended, is charged as before."""
    held, url = upstream
    gw = gateway(gateway_factory, tmp_path, url)
    held.queue(Script(b"text/event-stream", [Step(part) for part in sent])).open_all()
    client = gw.openai()
    with contextlib.suppress(openai.APIError, anthropic.APIError):
        if surface == "native":
            with gw.client() as http:
                r = http.post("/native/v1/chat/completions", json={
                    "tier": "simple", "messages": [{"role": "user", "content": "think about it"}], "stream": True,
                    "max_tokens": RESERVED})
            assert r.status_code == 200 and "[DONE]" not in r.text, r.text
        elif surface == "messages":
            for _ in gw.anthropic().messages.create(
                model="o4-mini", max_tokens=RESERVED, messages=[{"role": "user", "content": "think about it"}],
                stream=True,
            ):
                pass
        elif surface == "chat":
            for _ in client.chat.completions.create(
                model="o4-mini", messages=[{"role": "user", "content": "think about it"}], stream=True,
                max_completion_tokens=RESERVED,
            ):
                pass
        else:
            for _ in client.responses.create(
                model="o4-mini", input="think about it", stream=True, max_output_tokens=RESERVED,
            ):
                pass
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 1)
    row = ledger_rows(gw.settings.database_url, "alice")[0]
    assert row["input_tokens"] > 0, row
    assert row["output_tokens"] == (0 if output is None else output), row
    assert row["usage_source"] == ("measured" if output not in (None, RESERVED) else "estimated"), row


@pytest.mark.parametrize("stream", [False, True])
def test_a_native_answer_without_usage_shows_what_it_was_charged(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, upstream: tuple[HeldUpstream, str], stream: bool,
) -> None:
    """The simple tier's o4-mini answers without usage: it is charged as reserved, and the answer's
    usage (the body's, the stream's usage chunk) says so — it showed the two words' count, or nothing."""
    held, url = upstream
    gw = gateway(gateway_factory, tmp_path, url)
    message = {"role": "assistant", "content": "Hello there"}
    if stream:
        script = Script(b"text/event-stream", [Step(
            chunk("o4-mini", [{"index": 0, "delta": message, "finish_reason": None}])
            + chunk("o4-mini", [{"index": 0, "delta": {}, "finish_reason": "stop"}]) + b"data: [DONE]\n\n")])
    else:
        script = Script(b"application/json", [Step(json.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "o4-mini",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}).encode())])
    held.queue(script).open_all()
    body = {"messages": [{"role": "user", "content": "think about it"}], "max_tokens": RESERVED, "stream": stream}
    with gw.client() as http:
        r = http.post("/native/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    if stream:
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        assert r.text.endswith("data: [DONE]\n\n")
        shown = events[-1]["usage"]
    else:
        shown = r.json()["usage"]
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 1)
    row = ledger_rows(gw.settings.database_url, "alice")[0]
    assert (row["usage_source"], row["output_tokens"]) == ("estimated", RESERVED)
    assert shown == {"prompt_tokens": row["input_tokens"], "completion_tokens": RESERVED,
                     "total_tokens": row["input_tokens"] + RESERVED}


@pytest.mark.parametrize("capped", [False, True])
def test_an_uncapped_reasoning_stream_left_after_its_first_chunk_is_charged_what_the_provider_billed(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, upstream: tuple[HeldUpstream, str], capped: bool,
) -> None:
    """An o4-mini chat stream with no output cap reserves DEFAULT_MAX_OUTPUT_TOKENS (4,096): left
    after its first chunk it was charged that, whatever the provider billed (5,000 here) — again and
    again. The upstream is now read on to its usage, which is charged (a cap too is no bound then)."""
    held, url = upstream
    gw = gateway(gateway_factory, tmp_path, url)
    script = held.queue(answer("o4-mini"))
    client = gw.openai()
    cap = {"max_completion_tokens": RESERVED} if capped else {}
    with client.chat.completions.create(
        model="o4-mini", messages=[{"role": "user", "content": "think about it"}], stream=True, **cap,
    ) as stream:
        assert next(iter(stream)).choices[0].delta.content == "Hello there"
    assert wait_for(draining(gw))
    assert not script.left.is_set()  # still read, nothing more sent to the client
    script.steps[1].gate.set()
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 1)
    row = ledger_rows(gw.settings.database_url, "alice")[0]
    assert (row["usage_source"], row["input_tokens"], row["output_tokens"]) == ("measured", 10, 5000)
    assert script.done.is_set()


def test_a_drain_past_its_byte_bound_is_charged_as_reserved(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, upstream: tuple[HeldUpstream, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stream read on after its client left is bounded: past `DRAIN_MAX_BYTES` the gateway
    leaves the upstream and charges the stream as before the drain, its reservation."""
    monkeypatch.setattr(exchange, "DRAIN_MAX_BYTES", 100)
    held, url = upstream
    gw = gateway(gateway_factory, tmp_path, url)
    script = answer("o4-mini")
    filler = chunk("o4-mini", [{"index": 0, "delta": {"content": "x" * 200}, "finish_reason": None}])
    script.steps.insert(1, Step(filler))
    held.queue(script)
    chat_left(gw, "o4-mini", {})
    assert wait_for(draining(gw))  # (the filler is read after the client left, not relayed before)
    script.steps[1].gate.set()
    assert script.left.wait(10)  # the drain stopped past its bound, before the usage chunk
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 1)
    row = ledger_rows(gw.settings.database_url, "alice")[0]
    assert (row["usage_source"], row["output_tokens"], row["status"]) == ("estimated", RESERVED, 499)
    assert not script.done.is_set()


def test_a_drain_under_way_at_shutdown_is_cut_and_charged_as_reserved(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, upstream: tuple[HeldUpstream, str],
) -> None:
    """Shutdown does not wait on an upstream that never ends: the drain is cut, the upstream left,
    and the stream recorded (once) before the ledger closes — charged as before the drain."""
    held, url = upstream
    gw = gateway(gateway_factory, tmp_path, url)
    script = held.queue(answer("o4-mini"))
    chat_left(gw, "o4-mini", {})
    assert wait_for(draining(gw))
    gw.server.stop()
    assert not gw.server.thread.is_alive()
    assert script.left.wait(10)
    rows = ledger_rows(gw.settings.database_url, "alice")
    assert [(r["usage_source"], r["output_tokens"], r["status"]) for r in rows] == [("estimated", RESERVED, 499)]
