"""The ledger's totals equal the usage the provider reported, across both surfaces, both wire formats,
plain and streamed, with prompt-cache writes and reads recorded on their own — one row per request."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select

from sentinel.quota.estimate import REFERENCE_TOKENS
from tests.api.conftest import Gateway
from tests.api.test_native import tiers_file
from tests.api.test_quotas import set_plan, wait_for
from tests.support.metrics import metric
from tests.support.payloads import SERVER_ID, resent_blocks
from tests.support.servers import serving
from tests.support.upstream import ScriptedUpstream

HAIKU = "claude-3-5-haiku-20241022"
MINI = "gpt-4o-mini"
KEYS = ("requests", "input_tokens", "output_tokens", "cache_write_tokens", "cache_read_tokens")


def ledger_rows(database_url: str) -> list[dict[str, Any]]:
    from sentinel.db.engine import create_engine, session_factory
    from sentinel.db.models import UsageLedgerRow

    async def go() -> list[dict[str, Any]]:
        engine = create_engine(database_url)
        try:
            async with session_factory(engine)() as session:
                rows = (await session.execute(select(UsageLedgerRow))).scalars().all()
                return [{c: getattr(r, c) for c in ("request_id", "endpoint", "model", "provider", "input_tokens",
                                                    "output_tokens", "cache_write_tokens", "cache_read_tokens",
                                                    "usage_source", "status", "cost_usd")} for r in rows]
        finally:
            await engine.dispose()

    return asyncio.run(go())


def totals(rows: list[dict[str, Any]]) -> dict[str, int]:
    out = {key: sum(r[key] for r in rows) for key in KEYS[1:]}
    out["requests"] = len(rows)
    return out


class Reported:
    """Sums what the provider reported, as each client saw it (converted to Sentinel's convention:
    input tokens include the prompt-cache writes and reads)."""

    def __init__(self) -> None:
        self.sums = dict.fromkeys(KEYS, 0)

    def openai(self, usage: Any) -> None:
        cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
        self._add(usage.prompt_tokens, usage.completion_tokens, 0, cached or 0)

    def anthropic(self, usage: Any) -> None:
        write, read = usage.cache_creation_input_tokens or 0, usage.cache_read_input_tokens or 0
        self._add(usage.input_tokens + write + read, usage.output_tokens, write, read)

    def _add(self, inp: int, out: int, write: int, read: int) -> None:
        for key, value in zip(KEYS, (1, inp, out, write, read), strict=True):
            self.sums[key] += value


def test_ledger_totals_equal_reported_usage(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(usage_flush_interval_seconds=0.1)
    seen = Reported()
    oa, claude = gw.openai(), gw.anthropic()
    ask = [{"role": "user", "content": "count every token"}]
    for model in (MINI, HAIKU):  # same format, then translated
        seen.openai(oa.chat.completions.create(model=model, messages=ask).usage)
        chunks = list(oa.chat.completions.create(model=model, messages=ask, stream=True,
                                                 stream_options={"include_usage": True}))
        seen.openai(chunks[-1].usage)
    system = [{"type": "text", "text": f"a cached system prompt {uuid.uuid4().hex} " * 6,
               "cache_control": {"type": "ephemeral"}}]
    for model in (HAIKU, MINI):  # same format (with cache writes and reads), then translated
        for _ in range(2):
            seen.anthropic(claude.messages.create(model=model, max_tokens=20, system=system, messages=ask).usage)
        with claude.messages.stream(model=model, max_tokens=20, system=system, messages=ask) as stream:
            seen.anthropic(stream.get_final_message().usage)
    assert seen.sums["cache_write_tokens"] > 0 and seen.sums["cache_read_tokens"] > 0
    assert wait_for(lambda: totals(ledger_rows(gw.settings.database_url)) == seen.sums), (
        totals(ledger_rows(gw.settings.database_url)), seen.sums
    )
    rows = ledger_rows(gw.settings.database_url)
    assert len({r["request_id"] for r in rows}) == len(rows) == 10
    assert {r["endpoint"] for r in rows} == {"chat", "messages"} and {r["usage_source"] for r in rows} == {"measured"}
    assert {(r["model"], r["provider"]) for r in rows} == {(MINI, "openai"), (HAIKU, "anthropic")}
    assert all(r["cost_usd"] and r["cost_usd"] > 0 for r in rows)
    read = metric(gw.url, "sentinel_tokens_total", direction="cache_read", model=HAIKU)
    assert read == sum(r["cache_read_tokens"] for r in rows if r["model"] == HAIKU) > 0


def test_partial_and_refused_requests(gateway_factory: Callable[..., Gateway]) -> None:
    """A stream cut short is billed (estimated) once; a request the provider refuses (here a translated
    one) is recorded once with its status and no tokens."""
    gw = gateway_factory(usage_flush_interval_seconds=0.1)
    with gw.client() as http:
        cut = http.post("/v1/messages", json={"model": HAIKU, "max_tokens": 30, "stream": True, "messages": [
            {"role": "user", "content": "one two three four five six #mock:disconnect_after=4"}]})
        refused = http.post("/v1/messages", json={"model": MINI, "max_tokens": 30, "messages": [
            {"role": "user", "content": "#mock:status=400"}]})
    assert cut.status_code == 200 and "message_stop" not in cut.text
    assert refused.status_code == 400
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 2)
    cut_row, refused_row = sorted(ledger_rows(gw.settings.database_url), key=lambda r: r["status"], reverse=True)
    assert cut_row["usage_source"] == "estimated" and cut_row["input_tokens"] > 0 and cut_row["status"] == 502
    assert (refused_row["status"], refused_row["model"], refused_row["input_tokens"], refused_row["output_tokens"]) == (
        400, MINI, 0, 0
    )


# --- usage too large to be recorded ---------------------------------------------------------------
TOO_LARGE = 10**12 + 1  # one more than a provider is believed to report (MAX_TOKENS)
ASK_OPENAI = {"model": MINI, "messages": [{"role": "user", "content": "count me"}]}
ASK_CLAUDE = {"model": HAIKU, "max_tokens": 30, "messages": [{"role": "user", "content": "count me"}]}


def completion(usage: dict[str, int]) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MINI, "usage": usage,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "a reply"}, "finish_reason": "stop"}]}


def chunk(choices: list[Any], **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MINI, "choices": choices,
            **extra}


def claude_message(usage: dict[str, int]) -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": HAIKU, "stop_reason": "end_turn",
            "stop_sequence": None, "content": [{"type": "text", "text": "a reply"}], "usage": usage}


def claude_events(start_usage: dict[str, int], output_tokens: int) -> list[dict[str, Any]]:
    return [
        {"type": "message_start", "message": {**claude_message(start_usage), "content": [], "stop_reason": None}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a reply"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": output_tokens}},
        {"type": "message_stop"},
    ]


def test_usage_too_large_to_record_is_estimated(gateway_factory: Callable[..., Gateway], tmp_path: Path) -> None:
    """A count over MAX_TOKENS (or Anthropic input figures summing over it) is malformed usage, like a
    negative one: the answer is relayed and its record estimated (once, a count past 2^63 made SQLite's
    OverflowError fail the request and lose the record, and sums of large ones could overflow)."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", anthropic_api_url=srv.url,
                             providers_file=tiers_file(tmp_path, "anthropic"))
        with gw.client() as http:
            upstream.json(completion({"prompt_tokens": TOO_LARGE, "completion_tokens": 3}))
            answers = [http.post("/v1/chat/completions", json=ASK_OPENAI)]
            upstream.sse(chunk([{"index": 0, "delta": {"role": "assistant", "content": "a reply"},
                                 "finish_reason": "stop"}]),
                         chunk([], usage={"prompt_tokens": 5, "completion_tokens": TOO_LARGE}), "[DONE]")
            answers.append(http.post("/v1/chat/completions", json={**ASK_OPENAI, "stream": True}))
            third = 4 * 10**11  # each figure fits, their sum does not
            upstream.json(claude_message({"input_tokens": third, "cache_creation_input_tokens": third,
                                          "cache_read_input_tokens": third, "output_tokens": 3}))
            answers.append(http.post("/v1/messages", json=ASK_CLAUDE))
            upstream.sse(*claude_events({"input_tokens": 5, "output_tokens": 1}, TOO_LARGE))
            answers.append(http.post("/v1/messages", json={**ASK_CLAUDE, "stream": True}))
            upstream.sse(*claude_events({"input_tokens": third, "cache_read_input_tokens": third,
                                         "cache_creation_input_tokens": third, "output_tokens": 1}, 3))
            answers.append(http.post("/native/v1/chat/completions", json={
                "messages": ASK_CLAUDE["messages"], "max_tokens": 30, "stream": True}))
            for usage in ({"input_tokens": 5, "output_tokens": TOO_LARGE}, {"input_tokens": -1, "output_tokens": 3}):
                upstream.json(claude_message(usage))  # native answers: served and estimated, not a 502
                answers.append(http.post("/native/v1/chat/completions", json={
                    "messages": ASK_CLAUDE["messages"], "max_tokens": 30}))
            upstream.json(claude_message({"input_tokens": 5, "output_tokens": TOO_LARGE}))
            answers.append(http.post("/v1/chat/completions", json={**ASK_OPENAI, "model": HAIKU}))  # translated
    assert [r.status_code for r in answers] == [200] * 8, [r.text for r in answers]
    assert "[DONE]" in answers[1].text and "message_stop" in answers[3].text and "[DONE]" in answers[4].text
    rows = ledger_rows(gw.settings.database_url)
    assert sorted(r["request_id"] for r in rows) == sorted(r.headers["x-request-id"] for r in answers)
    for row in rows:
        assert row["usage_source"] == "estimated", row
        assert 0 < row["input_tokens"] < 100 and 0 < row["output_tokens"] < 100, row
        assert row["cache_write_tokens"] == row["cache_read_tokens"] == 0, row


# --- tool-call arguments sent as an object ---------------------------------------------------------
ARGUMENTS = {"city": "Paris"}  # some OpenAI-compatible servers send the object, not its JSON text
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}


def test_tool_call_arguments_sent_as_an_object_are_counted_as_json_text(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """Relayed, native and translated, answered and streamed: the answer arrives whole, its usage is
    recorded (counted from the arguments as compact JSON) and its reservation reconciled (once a 500,
    a stream without its end, no record and the reservation held)."""
    upstream = ScriptedUpstream()
    answer = completion({})
    answer["choices"][0].update(message={"role": "assistant", "content": None, "tool_calls": [CALL]},
                                finish_reason="tool_calls")
    del answer["usage"]
    first_delta = {"role": "assistant", "content": None, "tool_calls": [{"index": 0, **CALL}]}
    stream = (chunk([{"index": 0, "delta": first_delta}]),
              chunk([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]), "[DONE]")
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", providers_file=tiers_file(tmp_path, "openai"))
        set_plan(gw.settings.database_url, "alice", "tight", "requests=100/1m,output_tokens=1000/1m")
        ask = [{"role": "user", "content": "weather in Paris?"}]
        with gw.client() as http:
            upstream.json(answer)
            relayed = http.post("/v1/chat/completions", json={"model": MINI, "messages": ask, "max_tokens": 900})
            upstream.sse(*stream)
            native = http.post("/native/v1/chat/completions", json={"messages": ask, "max_tokens": 900, "stream": True})
            upstream.sse(*stream)
            translated = http.post("/v1/messages", json={"model": MINI, "messages": ask, "max_tokens": 900,
                                                         "stream": True})
            upstream.json(answer)  # 900 of the 1,000 output tokens again: fits only if nothing is still held
            after = http.post("/v1/chat/completions", json={"model": MINI, "messages": ask, "max_tokens": 900})
    answers = [relayed, native, translated, after]
    assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
    assert relayed.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == ARGUMENTS
    assert native.text.endswith("data: [DONE]\n\n") and '"arguments":"{\\"city\\":\\"Paris\\"}"' in native.text
    assert "message_stop" in translated.text and '"partial_json":"{\\"city\\":\\"Paris\\"}"' in translated.text
    rows = ledger_rows(gw.settings.database_url)
    assert sorted(r["request_id"] for r in rows) == sorted(r.headers["x-request-id"] for r in answers)
    assert all(r["status"] == 200 and r["usage_source"] == "estimated" and r["output_tokens"] > 0 for r in rows), rows



def test_tool_call_arguments_sent_as_an_object_deeper_than_orjson_writes_are_counted(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """orjson reads 1,024 levels but writes 254: arguments sent as an object nested deeper (a model told
    to nest them, on a server that sends the object) were counted as no text at all, and an answer
    without usage charged none of the ~3,000 tokens of text inside them. They are compact JSON text
    at any depth."""
    from sentinel.quota.tokens import TokenCounter

    words = " ".join(f"word{i}" for i in range(1500))
    depth = 300
    arguments = '{"a":' + "[" * depth + orjson.dumps(words).decode() + "]" * depth + "}"
    call = '{"id":"call_1","type":"function","function":{"name":"nest","arguments":' + arguments + "}}"
    answer = ('{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"' + MINI + '","choices":[{"index":0,'
              '"message":{"role":"assistant","content":null,"tool_calls":[' + call + ']},"finish_reason":"tool_calls"}]}')
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", usage_flush_interval_seconds=0.1)
        with gw.client() as http:
            upstream.json_bytes(answer.encode())
            r = http.post("/v1/chat/completions", json=ASK_OPENAI)
    assert r.status_code == 200, r.text
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 1)
    row = ledger_rows(gw.settings.database_url)[0]
    assert row["usage_source"] == "estimated", row
    assert row["output_tokens"] >= TokenCounter().count_text(words, MINI) + depth, row

# --- a stream that breaks off keeps the input the provider reported ---------------------------------
def test_a_broken_claude_stream_is_charged_the_input_it_reported(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """message_start reports the input (cache writes and reads too) before any output; a stream that
    ends without its final count was recorded from Sentinel's estimate, a few tokens for a prompt the
    provider billed at 50,000 (a document or a file part the estimate cannot count), and could be
    repeated: relayed, native and translated now keep the reported input, output counted."""
    upstream = ScriptedUpstream()
    start = {"input_tokens": 50_000, "cache_creation_input_tokens": 300, "cache_read_input_tokens": 200,
             "output_tokens": 1}
    broken = claude_events(start, 0)[:3]  # message_start, a text block, then nothing
    with serving(upstream) as srv:
        gw = gateway_factory(anthropic_api_url=srv.url, providers_file=tiers_file(tmp_path, "anthropic"))
        with gw.client() as http:
            upstream.sse(*broken)
            relayed = http.post("/v1/messages", json={**ASK_CLAUDE, "stream": True})
            upstream.sse(*broken)
            native = http.post("/native/v1/chat/completions", json={
                "messages": ASK_CLAUDE["messages"], "max_tokens": 30, "stream": True})
            upstream.sse(*broken)
            translated = http.post("/v1/chat/completions", json={**ASK_OPENAI, "model": HAIKU, "stream": True})
    answers = [relayed, native, translated]
    assert [r.status_code for r in answers] == [200] * 3, [r.text for r in answers]
    assert "message_stop" not in relayed.text and "[DONE]" not in native.text + translated.text
    rows = ledger_rows(gw.settings.database_url)
    assert sorted(r["request_id"] for r in rows) == sorted(r.headers["x-request-id"] for r in answers)
    for row in rows:
        assert (row["input_tokens"], row["cache_write_tokens"], row["cache_read_tokens"]) == (50_500, 300, 200), row
        assert row["usage_source"] == "estimated" and row["output_tokens"] > 0, row  # "a reply", counted


def test_a_broken_claude_stream_whose_start_reported_no_input_is_charged_the_estimate(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """An Anthropic-compatible server that gives its counts only in the final message_delta sends
    message_start with `input_tokens: 0`: a client that left (or a stream that broke off) after it was
    charged no input at all, whatever its prompt. A reported 0 is no count of a prompt: the estimate
    stands, on every surface."""
    upstream = ScriptedUpstream()
    broken = claude_events({"input_tokens": 0, "output_tokens": 0}, 0)[:3]
    prompt = " ".join(f"word{i}" for i in range(2000))
    ask = [{"role": "user", "content": prompt}]
    with serving(upstream) as srv:
        gw = gateway_factory(anthropic_api_url=srv.url, providers_file=tiers_file(tmp_path, "anthropic"))
        with gw.client() as http:
            upstream.sse(*broken)
            relayed = http.post("/v1/messages", json={**ASK_CLAUDE, "messages": ask, "stream": True})
            upstream.sse(*broken)
            native = http.post("/native/v1/chat/completions", json={"messages": ask, "max_tokens": 30, "stream": True})
            upstream.sse(*broken)
            translated = http.post("/v1/chat/completions", json={**ASK_OPENAI, "messages": ask, "model": HAIKU,
                                                                 "stream": True})
    answers = [relayed, native, translated]
    assert [r.status_code for r in answers] == [200] * 3, [r.text for r in answers]
    rows = ledger_rows(gw.settings.database_url)
    assert sorted(r["request_id"] for r in rows) == sorted(r.headers["x-request-id"] for r in answers)
    for row in rows:
        assert row["usage_source"] == "estimated" and row["input_tokens"] >= 2000, row


def test_a_broken_stream_is_charged_the_server_tool_results_it_carried(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """With server tools Anthropic runs several steps in one request, each reading the results
    before it as input; message_start reports the first step's input, the final message_delta all
    of it. A stream cut between the two (the client leaves, the upstream ends) was charged
    message_start's 50 input tokens though the client had been streamed a ~23,000-token fetched
    page: the results streamed are charged as input now. A stream that ends with its usage is
    charged that usage alone; a non-streamed answer without usage counts its results as a stream
    does."""
    from sentinel.quota.tokens import TokenCounter

    page_text = " ".join(f"word{i}" for i in range(8000))
    page_tokens = TokenCounter().count_text(page_text, HAIKU)
    fetch = {"type": "server_tool_use", "id": SERVER_ID, "name": "web_fetch", "input": {}}
    page = resent_blocks(page_text)["web_fetch_tool_result"]
    message_start, text_start, text_delta, text_stop, *_ = claude_events({"input_tokens": 50, "output_tokens": 1}, 0)
    cut = [message_start, text_start, text_delta, text_stop,
           {"type": "content_block_start", "index": 1, "content_block": fetch},
           {"type": "content_block_delta", "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"url": "https://example.com/page"}'}},
           {"type": "content_block_stop", "index": 1},
           {"type": "content_block_start", "index": 2, "content_block": page},
           {"type": "content_block_stop", "index": 2}]
    finished = [*cut, {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                       "usage": {"input_tokens": 30_000, "output_tokens": 40}}, {"type": "message_stop"}]
    answer = {**claude_message({"input_tokens": 50}), "content": [{"type": "text", "text": "a reply"}, fetch, page]}
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(anthropic_api_url=srv.url, providers_file=tiers_file(tmp_path, "anthropic"))
        with gw.client() as http:
            upstream.sse(*cut)
            broken = http.post("/v1/messages", json={**ASK_CLAUDE, "stream": True})
            upstream.sse(*finished)
            whole = http.post("/v1/messages", json={**ASK_CLAUDE, "stream": True})
            upstream.json(answer)  # its usage has no output figure: malformed, estimated
            unmetered = http.post("/v1/messages", json=ASK_CLAUDE)
    answers = [broken, whole, unmetered]
    assert [r.status_code for r in answers] == [200] * 3, [r.text for r in answers]
    assert "message_stop" not in broken.text and page_text in broken.text
    rows = {row["request_id"]: row for row in ledger_rows(gw.settings.database_url)}
    broken_row, whole_row, unmetered_row = (rows[r.headers["x-request-id"]] for r in answers)
    assert broken_row["usage_source"] == unmetered_row["usage_source"] == "estimated", rows
    assert 50 + page_tokens <= broken_row["input_tokens"] <= 50 + page_tokens + 60, broken_row
    assert 0 < broken_row["output_tokens"] < 60, broken_row  # the text and the call, not the page
    assert (whole_row["input_tokens"], whole_row["output_tokens"], whole_row["usage_source"]) == (
        30_000, 40, "measured"
    )
    assert page_tokens < unmetered_row["input_tokens"] <= page_tokens + 80, unmetered_row  # its estimate + page


def test_a_broken_stream_that_asked_for_thinking_is_charged_the_output_it_reserved(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """Claude 4 streams a summary of its thinking (or only a signature) but bills every thinking
    token: a stream cut after its first text was charged the few tokens of text it had shown (a
    client closing its connection there got up to `budget_tokens` of reasoning nearly free).
    Without the provider's final count, a request that asked for thinking is charged the output
    it reserved; one that did not keeps the counted text."""
    upstream = ScriptedUpstream()
    start = {"input_tokens": 20, "output_tokens": 1}
    thinking_block = [
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "c2ln"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "42"}},
    ]
    message_start = claude_events(start, 0)[0]
    ask = {**ASK_CLAUDE, "max_tokens": 32_000, "stream": True,
           "thinking": {"type": "enabled", "budget_tokens": 30_000}}
    with serving(upstream) as srv:
        gw = gateway_factory(anthropic_api_url=srv.url, providers_file=tiers_file(tmp_path, "anthropic"))
        with gw.client() as http:
            upstream.sse(message_start, *thinking_block)
            thought = http.post("/v1/messages", json=ask)
            upstream.sse(message_start, *thinking_block[3:])
            plain = http.post("/v1/messages", json={**ask, "thinking": {"type": "disabled"}})
    assert (thought.status_code, plain.status_code) == (200, 200), (thought.text, plain.text)
    rows = {row["request_id"]: row for row in ledger_rows(gw.settings.database_url)}
    assert rows[thought.headers["x-request-id"]]["output_tokens"] == 32_000
    assert 0 < rows[plain.headers["x-request-id"]]["output_tokens"] < 10


# --- reasoning streamed beside the answer -----------------------------------------------------------
def test_streamed_reasoning_without_usage_is_charged_on_every_surface(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """An OpenAI-compatible provider streaming `reasoning_content` and reporting no usage: the relay
    counted the reasoning, but translated (`/v1/messages`) and native streams counted only `content`,
    one token for an answer that streamed 200 more."""
    upstream = ScriptedUpstream()
    stream = (chunk([{"index": 0, "delta": {"role": "assistant", "reasoning_content": "think " * 200}}]),
              chunk([{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]), "[DONE]")
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", providers_file=tiers_file(tmp_path, "openai"))
        ask = [{"role": "user", "content": "think first"}]
        with gw.client() as http:
            upstream.sse(*stream)
            relayed = http.post("/v1/chat/completions", json={"model": MINI, "messages": ask, "stream": True})
            upstream.sse(*stream)
            translated = http.post("/v1/messages", json={"model": MINI, "messages": ask, "max_tokens": 1000,
                                                         "stream": True})
            upstream.sse(*stream)
            native = http.post("/native/v1/chat/completions", json={"messages": ask, "max_tokens": 1000,
                                                                     "stream": True})
    answers = [relayed, translated, native]
    assert [r.status_code for r in answers] == [200] * 3, [r.text for r in answers]
    assert "message_stop" in translated.text and native.text.endswith("data: [DONE]\n\n")
    rows = ledger_rows(gw.settings.database_url)
    assert sorted(r["request_id"] for r in rows) == sorted(r.headers["x-request-id"] for r in answers)
    for row in rows:
        assert row["status"] == 200 and row["usage_source"] == "estimated" and row["output_tokens"] >= 200, row


def test_a_refusal_and_reasoning_in_an_answer_without_usage_are_charged_on_every_surface(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """An OpenAI-compatible provider answering (not streaming) with a `refusal` and its
    `reasoning_content`, content null and no usage: the relay counted them, the native and translated
    (`/v1/messages`) answers counted only the content (none of its ~380 tokens), and the native
    client never saw the refusal. Every surface now counts the same text; the refusal is shown where
    the answer's format has a field for it (the Messages API has none: counted, as its stream)."""
    refusal, reasoning = "I can't help with that. " * 30, "think " * 200
    answer = completion({})
    del answer["usage"]
    answer["choices"][0]["message"] = {"role": "assistant", "content": None, "refusal": refusal,
                                       "reasoning_content": reasoning}
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", providers_file=tiers_file(tmp_path, "openai"))
        ask = [{"role": "user", "content": "help me with something bad"}]
        with gw.client() as http:
            upstream.json(answer)
            relayed = http.post("/v1/chat/completions", json={"model": MINI, "messages": ask})
            upstream.json(answer)
            native = http.post("/native/v1/chat/completions", json={"messages": ask, "max_tokens": 1000})
            upstream.json(answer)
            translated = http.post("/v1/messages", json={"model": MINI, "messages": ask, "max_tokens": 1000})
    answers = [relayed, native, translated]
    assert [r.status_code for r in answers] == [200] * 3, [r.text for r in answers]
    assert native.json()["choices"][0]["message"] == {"role": "assistant", "refusal": refusal}
    # (a refusal: no content block, as its stream has none — the Messages API has no field for its text)
    assert translated.json()["content"] == [] and translated.json()["stop_reason"] == "refusal"
    rows = {row["request_id"]: row for row in ledger_rows(gw.settings.database_url)}
    recorded = [rows[r.headers["x-request-id"]] for r in answers]
    assert all(r["status"] == 200 and r["usage_source"] == "estimated" for r in recorded), recorded
    assert recorded[0]["output_tokens"] > 350, [r["output_tokens"] for r in recorded]
    assert [r["output_tokens"] for r in recorded] == [recorded[0]["output_tokens"]] * 3, recorded
    assert native.json()["usage"]["completion_tokens"] == recorded[0]["output_tokens"]
    assert translated.json()["usage"]["output_tokens"] == recorded[0]["output_tokens"]


# --- cached tokens beyond the prompt ----------------------------------------------------------------
def test_cached_tokens_beyond_the_prompt_are_capped_on_every_surface(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """`cached_tokens` is part of `prompt_tokens`: a provider reporting 10**12 of them for a 10-token
    prompt was believed on the native and translated paths (a record of 10**12 cache reads costing
    ~$2.5M), while the relay capped it. Every surface now records (and shows) at most the prompt."""
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 10**12}}
    upstream = ScriptedUpstream()
    streamed = (chunk([{"index": 0, "delta": {"role": "assistant", "content": "a reply"}, "finish_reason": "stop"}]),
                chunk([], usage=usage), "[DONE]")
    ask = [{"role": "user", "content": "count me"}]
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", providers_file=tiers_file(tmp_path, "openai"))
        with gw.client() as http:
            answers = []
            for path, body in (("/v1/chat/completions", {"model": MINI, "messages": ask}),
                               ("/native/v1/chat/completions", {"messages": ask, "max_tokens": 30}),
                               ("/v1/messages", {"model": MINI, "messages": ask, "max_tokens": 30})):
                upstream.json(completion(usage))
                answers.append(http.post(path, json=body))
                upstream.sse(*streamed)
                answers.append(http.post(path, json={**body, "stream": True}))
    assert [r.status_code for r in answers] == [200] * 6, [r.text for r in answers]
    translated = answers[4].json()["usage"]
    assert translated["input_tokens"] + translated["cache_read_input_tokens"] == 10, translated
    rows = ledger_rows(gw.settings.database_url)
    assert sorted(r["request_id"] for r in rows) == sorted(r.headers["x-request-id"] for r in answers)
    for row in rows:
        assert row["usage_source"] == "measured", row
        assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"]) == (10, 5, 10), row
        assert row["cost_usd"] is None or 0 < row["cost_usd"] < 0.001, row  # (the tiers file names no prices)
    assert sum(row["cost_usd"] is not None for row in rows) >= 4


def test_a_cut_stream_is_charged_the_client_text_the_provider_bills(gateway_factory: Callable[..., Gateway]) -> None:
    """A chat stream cut before its usage is charged its estimated input: an earlier refusal, a
    custom tool call's input and a predicted output are billed input the estimate left out (3 to 19
    tokens for each ~2,000 tokens sent); a prediction is charged its reserved output, since its
    rejected tokens are billed and never streamed."""
    gw = gateway_factory(usage_flush_interval_seconds=0.1)
    words = " ".join(f"word{i}" for i in range(2000))
    cut = {"role": "user", "content": "one two three four five six #mock:disconnect_after=4"}
    bodies = [
        [{"role": "assistant", "content": None, "refusal": words}],
        [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "custom", "custom": {"name": "grep", "input": words}}]},
         {"role": "tool", "tool_call_id": "call_1", "content": "ok"}],
    ]
    with gw.client() as http:
        for history in bodies:
            r = http.post("/v1/chat/completions", json={"model": MINI, "stream": True, "messages": [*history, cut]})
            assert r.status_code == 200 and "[DONE]" not in r.text
        r = http.post("/v1/chat/completions", json={"model": MINI, "stream": True, "max_tokens": 50, "messages": [cut],
                                                    "prediction": {"type": "content", "content": words}})
        assert r.status_code == 200 and "[DONE]" not in r.text
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 3)
    rows = ledger_rows(gw.settings.database_url)
    assert all(r["usage_source"] == "estimated" and r["input_tokens"] > 2000 for r in rows), rows
    (predicted,) = [r for r in rows if r["output_tokens"] == 50]
    assert predicted["input_tokens"] > 2000


def test_a_cut_responses_stream_is_charged_its_prompt_variables(gateway_factory: Callable[..., Gateway]) -> None:
    """A reusable prompt's variables are billed input; `_responses_input` never read `prompt`."""
    gw = gateway_factory(usage_flush_interval_seconds=0.1)
    words = " ".join(f"word{i}" for i in range(2000))
    variables = {"notes": words, "more": {"type": "input_text", "text": words}}
    with gw.client() as http:
        r = http.post("/v1/responses", json={
            "model": MINI, "stream": True, "prompt": {"id": "pmpt_1", "variables": variables},
            "input": "one two three four five six #mock:disconnect_after=4"})
    assert r.status_code == 200 and "response.completed" not in r.text, r.text[:300]
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 1)
    (row,) = ledger_rows(gw.settings.database_url)
    assert row["usage_source"] == "estimated" and row["input_tokens"] > 4000, row


def test_a_cut_responses_stream_is_charged_a_function_output_however_it_starts(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """A function call's output is billed input whatever its first characters: one starting
    `data:` was estimated at 3 tokens, so a stream cut before its usage was charged almost nothing."""
    gw = gateway_factory(usage_flush_interval_seconds=0.1)
    words = " ".join(f"word{i}" for i in range(2000))
    with gw.client() as http:
        r = http.post("/v1/responses", json={"model": MINI, "stream": True, "input": [
            {"type": "function_call_output", "call_id": "call_1", "output": "data:" + words},
            {"role": "user", "content": "one two three four five six #mock:disconnect_after=4"}]})
    assert r.status_code == 200 and "response.completed" not in r.text, r.text[:300]
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 1)
    (row,) = ledger_rows(gw.settings.database_url)
    assert row["usage_source"] == "estimated" and row["input_tokens"] > 2000, row


# --- a Responses stream's hosted-tool items -----------------------------------------------------------
MCP_TOOL = {"type": "mcp", "server_label": "x", "server_url": "https://mcp.example/mcp", "require_approval": "never"}


def test_a_cut_responses_stream_is_charged_the_hosted_tool_items_it_carried(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """An MCP server's tool list and a call's output are input the model reads in the steps that
    follow; only `response.completed` counts them. A client that left at the first text delta after
    an ~80k-token tool list and call output was charged 38 input tokens (the estimate) and 1 output
    (the inspector read only `delta` strings): the items streamed are charged as input now, each
    once. A stream read to its end is charged the provider's usage alone; a non-streamed answer
    without usage counts its items as a stream does."""
    from sentinel.quota.tokens import TokenCounter

    manual = " ".join(f"tool{i}" for i in range(12000))
    page = " ".join(f"page{i}" for i in range(12000))
    items_tokens = TokenCounter().count_text(manual, MINI) + TokenCounter().count_text(page, MINI)
    listed = {"type": "mcp_list_tools", "id": "mcpl_1", "server_label": "x", "tools": [
        {"name": "lookup", "description": manual, "input_schema": {"type": "object", "properties": {}}}]}
    called = {"type": "mcp_call", "id": "mcp_1", "server_label": "x", "name": "lookup", "status": "completed",
              "arguments": '{"query": "valve"}', "output": page, "error": None}
    message = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
               "content": [{"type": "output_text", "text": "The valve opens.", "annotations": []}]}
    started = {"id": "resp_1", "object": "response", "status": "in_progress", "model": MINI, "output": [],
               "usage": None}
    events = [
        {"type": "response.created", "response": started},
        {"type": "response.output_item.added", "output_index": 0, "item": {**listed, "tools": []}},
        {"type": "response.output_item.done", "output_index": 0, "item": listed},
        {"type": "response.output_item.added", "output_index": 1,
         "item": {**called, "arguments": "", "output": None, "status": "in_progress"}},
        {"type": "response.mcp_call_arguments.delta", "output_index": 1, "item_id": "mcp_1",
         "delta": called["arguments"]},
        {"type": "response.output_item.done", "output_index": 1, "item": called},
        {"type": "response.output_item.added", "output_index": 2, "item": {**message, "content": []}},
        {"type": "response.output_text.delta", "output_index": 2, "item_id": "msg_1", "content_index": 0,
         "delta": "The"},
    ]
    answer = {**started, "status": "completed", "output": [listed, called, message],
              "usage": {"input_tokens": 170_000, "output_tokens": 40, "total_tokens": 170_040}}
    ask = {"model": MINI, "input": "look it up", "tools": [MCP_TOOL]}
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", providers_file=tiers_file(tmp_path, "openai"),
                             usage_flush_interval_seconds=0.1)
        with gw.client() as http:
            upstream.sse(*events, hold=True)  # the upstream goes on; the client leaves at the first text
            with http.stream("POST", "/v1/responses", json={**ask, "stream": True}) as left:
                seen = ""
                for line in left.iter_lines():
                    seen += line
                    if "response.output_text.delta" in line:
                        break
            assert upstream.left.wait(10)
            upstream.sse(*events, {"type": "response.completed", "response": answer})
            whole = http.post("/v1/responses", json={**ask, "stream": True})
            upstream.json({**answer, "usage": None})
            unmetered = http.post("/v1/responses", json=ask)
    assert [left.status_code, whole.status_code, unmetered.status_code] == [200] * 3, [whole.text, unmetered.text]
    assert page in seen and "response.completed" in whole.text
    ids = [r.headers["x-request-id"] for r in (left, whole, unmetered)]
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 3)
    rows = {row["request_id"]: row for row in ledger_rows(gw.settings.database_url)}
    left_row, whole_row, unmetered_row = (rows[i] for i in ids)
    assert (left_row["status"], left_row["usage_source"]) == (499, "estimated"), left_row
    # (the estimate holds the MCP server's reservation, SENTINEL_REFERENCE_INPUT_TOKENS, as well)
    reserved = REFERENCE_TOKENS
    assert items_tokens + reserved <= left_row["input_tokens"] <= items_tokens + reserved + 150, (left_row, items_tokens)
    assert 0 < left_row["output_tokens"] < 20, left_row  # the call's arguments and "The", not the items
    assert (whole_row["input_tokens"], whole_row["output_tokens"], whole_row["usage_source"]) == (
        170_000, 40, "measured"
    )
    assert unmetered_row["usage_source"] == "estimated", unmetered_row
    assert items_tokens + reserved <= unmetered_row["input_tokens"] <= items_tokens + reserved + 150, (
        unmetered_row, items_tokens)
    assert 0 < unmetered_row["output_tokens"] < 20, unmetered_row


# --- a tool input nested deeper than the interpreter recurses -------------------------------------
def test_a_claude_answer_with_a_tool_input_nested_1000_deep_is_relayed_and_recorded(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    """orjson reads 1,024 levels of nesting; the answer's tool inputs were written back as text with
    `json.dumps` (to count them), which recurses and raised RecursionError past ~1,000 levels: a
    served answer (a model told to nest its tool input) became a 500, its reservation given back and
    no record stored — free, and repeatable. Now it is relayed and recorded: its usage, or its text
    counted when it has none."""
    depth = 1000
    tool_use = '{"type":"tool_use","id":"toolu_1","name":"nest","input":{"a":' + "[" * depth + "]" * depth + "}}"

    def answer(usage: str) -> bytes:
        return ('{"id":"msg_1","type":"message","role":"assistant","model":"' + HAIKU + '","stop_reason":"tool_use",'
                '"stop_sequence":null,"content":[' + tool_use + '],"usage":' + usage + "}").encode()

    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(anthropic_api_url=srv.url, providers_file=tiers_file(tmp_path, "anthropic"))
        with gw.client() as http:
            upstream.json_bytes(answer('{"input_tokens":10,"output_tokens":2000}'))
            measured = http.post("/v1/messages", json=ASK_CLAUDE)
            upstream.json_bytes(answer("null"))
            unmetered = http.post("/v1/messages", json=ASK_CLAUDE)
    assert [measured.status_code, unmetered.status_code] == [200, 200], [measured.text[:300], unmetered.text[:300]]
    assert measured.content.count(b"[") > depth
    rows = {row["request_id"]: row for row in ledger_rows(gw.settings.database_url)}
    measured_row, unmetered_row = (rows[r.headers["x-request-id"]] for r in (measured, unmetered))
    assert (measured_row["input_tokens"], measured_row["output_tokens"], measured_row["usage_source"]) == (
        10, 2000, "measured"
    )
    assert unmetered_row["usage_source"] == "estimated" and unmetered_row["output_tokens"] >= depth, unmetered_row


def test_a_cut_translated_stream_is_charged_the_tool_ids_it_sent(gateway_factory: Callable[..., Gateway]) -> None:
    """A `/v1/messages` request for a model of another wire format is estimated by Anthropic's rules,
    and a stream cut before the provider's count is charged that estimate. A tool use's `id` and a
    tool result's `tool_use_id` were left out whatever their length, while the translation sends
    them as the call's and the tool message's ids, which the provider reads (the chat surface counts
    a tool message's `tool_call_id`): ~40,000 characters of ids went with a cut stream charged as a
    short question. A long one is text now, as a long label of any other block is. (An OpenAI model
    is now sent such an id renamed to 37 characters, `openai_call_id`: the estimate, made before the
    target is known, still counts it whole — on the caller's side, never the company's.)"""
    from sentinel.quota.tokens import TokenCounter

    long_id = "toolu_" + "".join(f"{i:05}x" for i in range(5000))

    def ask(call_id: str) -> dict[str, Any]:
        return {"model": MINI, "max_tokens": 30, "stream": True, "messages": [
            {"role": "user", "content": "what is the weather"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": call_id, "name": "weather", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id, "content": "sunny"}]},
        ]}

    cut = [chunk([{"index": 0, "delta": {"role": "assistant", "content": "It is"}}])]  # then the upstream ends
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1")
        with gw.client() as http:
            upstream.sse(*cut)
            short = http.post("/v1/messages", json=ask("toolu_01"))
            upstream.sse(*cut)
            long = http.post("/v1/messages", json=ask(long_id))
    assert [short.status_code, long.status_code] == [200, 200], [short.text, long.text]
    assert "message_stop" not in long.text and long_id not in upstream.received[1].decode()
    rows = {row["request_id"]: row for row in ledger_rows(gw.settings.database_url)}
    short_row, long_row = (rows[r.headers["x-request-id"]] for r in (short, long))
    assert short_row["usage_source"] == long_row["usage_source"] == "estimated"
    id_tokens = TokenCounter().count_text(long_id, MINI)
    assert long_row["input_tokens"] - short_row["input_tokens"] >= 2 * id_tokens - 10, (short_row, long_row, id_tokens)


def test_a_custom_tool_call_is_charged_as_output_without_usage(gateway_factory: Callable[..., Gateway]) -> None:
    """A custom tool's call (`type: "custom"`, free-text `input`: a patch, a script) is output the
    model writes, as a function call's arguments are. Counted only as `function` calls were, a client
    that left a chat stream once the call had arrived (before the usage chunk) was charged no output
    for ~8,000 tokens of it, and so was an answer (chat or Responses) that came without usage."""
    from sentinel.quota.tokens import TokenCounter

    patch = " ".join(f"line{i}" for i in range(3000))
    patch_tokens = TokenCounter().count_text(patch, MINI)
    custom = {"name": "apply_patch", "input": patch}
    streamed = [chunk([{"index": 0, "delta": {"role": "assistant", "content": None, "tool_calls": [
                    {"index": 0, "id": "call_1", "type": "custom", "custom": custom}]}}]),
                chunk([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])]
    answer = completion({})
    del answer["usage"]
    answer["choices"][0].update(finish_reason="tool_calls", message={
        "role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "custom", "custom": custom}]})
    response = {"id": "resp_1", "object": "response", "status": "completed", "model": MINI, "usage": None,
                "output": [{"type": "custom_tool_call", "id": "ctc_1", "call_id": "call_1", "status": "completed",
                            **custom}]}
    tools = [{"type": "custom", "custom": {"name": "apply_patch"}}]
    ask = {"model": MINI, "messages": [{"role": "user", "content": "patch it"}], "tools": tools}
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", usage_flush_interval_seconds=0.1)
        with gw.client() as http:
            upstream.sse(*streamed, hold=True)  # the usage chunk would come next: the client leaves first
            with http.stream("POST", "/v1/chat/completions", json={**ask, "stream": True}) as left:
                for line in left.iter_lines():
                    if '"finish_reason":"tool_calls"' in line.replace(" ", ""):
                        break
            assert upstream.left.wait(10)
            upstream.json(answer)
            whole = http.post("/v1/chat/completions", json=ask)
            upstream.json(response)
            responded = http.post("/v1/responses", json={"model": MINI, "input": "patch it", "store": False,
                                                         "tools": [{"type": "custom", "name": "apply_patch"}]})
    answers = [left, whole, responded]
    assert [r.status_code for r in answers] == [200] * 3, [r.text for r in answers]
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 3)
    rows = {row["request_id"]: row for row in ledger_rows(gw.settings.database_url)}
    recorded = [rows[r.headers["x-request-id"]] for r in answers]
    assert [(r["status"], r["usage_source"]) for r in recorded] == [
        (499, "estimated"), (200, "estimated"), (200, "estimated")], recorded
    assert all(patch_tokens <= r["output_tokens"] <= patch_tokens + 5 for r in recorded), (recorded, patch_tokens)


def test_a_usage_riding_on_a_content_chunk_of_a_cut_stream_is_not_the_whole_count(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """vLLM's `continuous_usage_stats` (a stream option the client sends on) puts a `usage` on every
    content chunk: its own choice's tokens so far, the sum of every choice coming only in the final
    usage-only chunk. A client asking `n: 2` that left before that chunk was charged one choice's
    count as the provider's (measured): its other choices were free. A stream cut before its end is
    charged the text streamed, every choice's, unless a usage-only chunk came."""
    from sentinel.quota.tokens import TokenCounter

    texts = [" ".join(f"alpha{i}" for i in range(400)), " ".join(f"beta{i}" for i in range(400))]
    streamed = [chunk([{"index": i, "delta": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                      usage={"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12})
                for i, text in enumerate(texts)]
    ask = {"model": MINI, "messages": [{"role": "user", "content": "two please"}], "n": 2, "stream": True,
           "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", usage_flush_interval_seconds=0.1)
        with gw.client() as http:
            upstream.sse(*streamed, hold=True)  # the summed usage chunk would come next: the client leaves first
            with http.stream("POST", "/v1/chat/completions", json=ask) as left:
                for line in left.iter_lines():
                    if "beta399" in line:
                        break
            assert upstream.left.wait(10)
    assert left.status_code == 200
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 1)
    row = ledger_rows(gw.settings.database_url)[0]
    shown = TokenCounter().count_text("".join(texts), MINI)
    assert (row["status"], row["usage_source"]) == (499, "estimated"), row
    assert row["output_tokens"] == shown, (row, shown)


def _recorded_responses_answer(
    gateway_factory: Callable[..., Gateway], answer: dict[str, Any], prompt: str
) -> dict[str, Any]:
    """`answer` from the upstream to one `/v1/responses` request (`store: false`): its ledger row."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", usage_flush_interval_seconds=0.1)
        with gw.client() as http:
            upstream.json(answer)
            r = http.post("/v1/responses", json={"model": MINI, "input": prompt, "store": False})
    assert r.status_code == 200, r.text
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 1)
    return ledger_rows(gw.settings.database_url)[0]


def test_a_responses_refusal_without_usage_is_charged(gateway_factory: Callable[..., Gateway]) -> None:
    """A Responses answer's refusal is a message part of its own (`{"type": "refusal", "refusal": …}`),
    streamed as `response.refusal.delta` (counted) but, in a whole answer without usage, read only
    for a `text`: its ~180 tokens were charged as no output at all."""
    refusal = "I can't help with that. " * 30
    answer = {"id": "resp_1", "object": "response", "status": "completed", "model": MINI, "usage": None,
              "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                          "content": [{"type": "refusal", "refusal": refusal}]}]}
    row = _recorded_responses_answer(gateway_factory, answer, "something bad")
    assert row["usage_source"] == "estimated" and row["output_tokens"] > 150, row


def test_a_responses_answer_without_usage_is_charged_the_patches_and_commands_the_model_wrote(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """The model's own calls of OpenAI's coding tools are output: an `apply_patch_call`'s diff (its
    `operation.diff`), a `shell_call`'s `action.commands`, a `local_shell_call`'s `action.command`,
    streamed as deltas (counted) but, in a whole answer without usage, read neither as output (only
    `content`, `arguments` and a custom call's `input` were) nor as input (the model's own items are
    left out of what it read): a ~3,000-token patch was charged no output at all."""
    from sentinel.quota.tokens import TokenCounter

    diff = "\n".join(f"+line{i}" for i in range(1500))
    commands = [f"echo step{i}" for i in range(300)]
    answer = {"id": "resp_1", "object": "response", "status": "completed", "model": MINI, "usage": None,
              "output": [
                  {"type": "apply_patch_call", "id": "apc_1", "call_id": "call_1", "status": "completed",
                   "operation": {"type": "update_file", "path": "lib/x.py", "diff": diff}},
                  {"type": "shell_call", "id": "sh_1", "call_id": "call_2", "status": "completed",
                   "action": {"commands": commands, "timeout_ms": 1000}},
                  {"type": "local_shell_call", "id": "lsh_1", "call_id": "call_3", "status": "completed",
                   "action": {"type": "exec", "command": commands, "env": {}}},
              ]}
    written = TokenCounter().count_text(diff + "".join(commands) * 2, MINI)
    row = _recorded_responses_answer(gateway_factory, answer, "fix it")
    assert row["usage_source"] == "estimated" and written * 0.8 <= row["output_tokens"] <= written * 1.2, (row, written)
