"""Input the provider bills that a request carries or names without Sentinel reading it as text
counts against the input limit: an audio clip (`input_audio`, by its length) and what a request
names that the provider holds — a Responses `item_reference`, a reusable prompt's own text
(`prompt.id`), a chat message's earlier audio answer (`audio.id`). Each was estimated at nothing, so a
client under a small input limit had an hour of audio or a long stored item read (a stream it left
at once charged nothing for it), and a burst of such requests all passed admission."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.api.conftest import Gateway
from tests.api.test_quotas import set_plan
from tests.support.attack import SpyUpstream, ledger_rows, openai_error, recorded_ids, wait_for
from tests.support.media import wav

LIMITED = "requests=100/1h,input_tokens=1000/1h"
SLOW = "what is said here? #mock:chunk_delay_ms=200"  # a stream the client can leave early
REFERENCE_TOKENS = 4096  # SENTINEL_REFERENCE_INPUT_TOKENS' default


def heard(clip: bytes, kind: str = "wav") -> list[dict[str, Any]]:
    return [{"role": "user", "content": [
        {"type": "text", "text": "what is said here?"},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(clip).decode(), "format": kind}}]}]


def alices(gw: Gateway, *item_ids: str) -> None:
    """Make stored items Alice's, as Sentinel does for the items it shows her (named by id, only an
    item of the caller's reaches the provider: `tests/api/test_gate_items.py`)."""
    for item_id in item_ids:
        gw.write_stored(f"sentinel:owner:{item_id}", b"alice", 3600)


def refused_as_never_fitting(refused: openai.RateLimitError, at_least: int) -> None:
    error = openai_error(refused.response.json())
    assert "can never be admitted" in error["message"], error
    assert error["details"]["metric"] == "input_tokens" and error["details"]["requested"] >= at_least, error


def test_an_audio_clip_counts_by_its_length(gateway_factory: Callable[..., Gateway], spy: SpyUpstream) -> None:
    """150 s of 8 kHz audio (1,500 tokens at OpenAI's 10 a second) was admitted under a 1,000-token
    input limit, estimated at the text's few tokens; a 3 s clip (30) still is."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1")
    set_plan(gw.settings.database_url, "alice", "small", LIMITED)
    client = gw.openai()
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="gpt-4o", messages=heard(wav(150, rate=8_000, bits=8)))  # type: ignore[arg-type]
    refused_as_never_fitting(refused.value, 1_500)
    # An MP3's length is bounded by its size at MPEG audio's lowest bitrate (8 kbit/s): 120 KB, 1,200 tokens.
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="gpt-4o", messages=heard(bytes(120_000), "mp3"))  # type: ignore[arg-type]
    refused_as_never_fitting(refused.value, 1_200)
    with pytest.raises(openai.RateLimitError) as refused:  # the same on the Responses API
        client.responses.create(model="gpt-4o", input=[{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav(150, rate=8_000, bits=8)).decode(),
                                                    "format": "wav"}}]}])  # type: ignore[list-item]
    refused_as_never_fitting(refused.value, 1_500)
    assert spy.seen == [] and recorded_ids(gw.settings.database_url) == set()  # nothing sent, nothing charged
    answer = client.chat.completions.create(model="gpt-4o", messages=heard(wav(3, rate=8_000, bits=8)))  # type: ignore[arg-type]
    assert answer.choices[0].message.content
    assert len(spy.seen) == 1


def test_stored_items_and_prompts_named_by_id_are_reserved(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """An `item_reference` or a `prompt.id` stands for text the provider holds: each reserves
    SENTINEL_REFERENCE_INPUT_TOKENS (4,096 by default), so under a 1,000-token limit a request naming
    one can never fit — it was admitted at a few tokens."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1")
    set_plan(gw.settings.database_url, "alice", "small", LIMITED)
    alices(gw, "msg_0123456789abcdef")
    client = gw.openai()
    with pytest.raises(openai.RateLimitError) as refused:
        client.responses.create(model="gpt-4o", input=[
            {"role": "user", "content": "go on"}, {"type": "item_reference", "id": "msg_0123456789abcdef"}])
    refused_as_never_fitting(refused.value, REFERENCE_TOKENS)
    with pytest.raises(openai.RateLimitError) as refused:
        client.responses.create(model="gpt-4o", input="go on", prompt={"id": "pmpt_0123456789abcdef"})
    refused_as_never_fitting(refused.value, REFERENCE_TOKENS)
    # (a chat message's `audio.id` is reserved the same — `tests/quota/test_estimate.py` —, once its
    # ownership is checked: another user's, or one never made, is 404 before any estimate)
    assert spy.seen == [] and recorded_ids(gw.settings.database_url) == set()


def test_a_stored_item_named_by_its_id_alone_is_reserved(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """An item reference's `type` is optional in the Responses API (`{"id": "msg_..."}`, or its type
    null, is an `item_reference`): written so, it was estimated at nothing and admitted under a
    1,000-token input limit, the provider reading the stored item."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1")
    set_plan(gw.settings.database_url, "alice", "small", LIMITED)
    alices(gw, "msg_0123456789abcdef", "msg_1")
    client = gw.openai()
    for reference in ({"id": "msg_0123456789abcdef"}, {"type": None, "id": "msg_0123456789abcdef"}):
        with pytest.raises(openai.RateLimitError) as refused:
            client.responses.create(model="gpt-4o", input=[{"role": "user", "content": "go on"}, reference])  # type: ignore[list-item]
        refused_as_never_fitting(refused.value, REFERENCE_TOKENS)
    assert spy.seen == [] and recorded_ids(gw.settings.database_url) == set()
    # A message without its type is a message, not a reference: admitted.
    answer = client.responses.create(model="gpt-4o", input=[{"role": "user", "content": "go on", "id": "msg_1"}])  # type: ignore[list-item]
    assert answer.status == "completed"


def test_the_reservation_per_reference_is_configured(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """With SENTINEL_REFERENCE_INPUT_TOKENS=300, two references (600) fit a 1,000-token limit; four
    (1,200) do not."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", reference_input_tokens=300)
    set_plan(gw.settings.database_url, "alice", "small", LIMITED)
    client = gw.openai()
    refs: list[Any] = [{"type": "item_reference", "id": f"msg_{i:016d}"} for i in range(4)]
    alices(gw, *(ref["id"] for ref in refs))
    answer = client.responses.create(model="gpt-4o", input=[{"role": "user", "content": "go on"}, *refs[:2]])
    assert answer.status == "completed"
    with pytest.raises(openai.RateLimitError) as refused:
        client.responses.create(model="gpt-4o", input=[{"role": "user", "content": "go on"}, *refs])
    refused_as_never_fitting(refused.value, 1_200)


@pytest.mark.parametrize(("body", "tokens"), [
    ({"model": "gpt-4o", "stream": True, "max_tokens": 50, "messages": [{"role": "user", "content": [
        {"type": "text", "text": SLOW},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav(120, rate=8_000, bits=8)).decode(),
                                                "format": "wav"}}]}]}, 1_200),
    ({"model": "gpt-4o", "stream": True, "input": [
        {"role": "user", "content": SLOW}, {"type": "item_reference", "id": "msg_0123456789abcdef"}]}, REFERENCE_TOKENS),
], ids=["audio", "item_reference"])
def test_a_stream_its_client_leaves_is_charged_what_it_carried(
    gateway_factory: Callable[..., Gateway], body: dict[str, Any], tokens: int
) -> None:
    """Read the first event and leave: the record is the estimate, which now holds the audio's
    length or the reference's figure (it was the text's few tokens while the provider billed all)."""
    gw = gateway_factory(usage_flush_interval_seconds=0.1)
    alices(gw, "msg_0123456789abcdef")
    path = "/v1/responses" if "input" in body else "/v1/chat/completions"
    with gw.client() as http, http.stream("POST", path, json=body) as r:
        assert r.status_code == 200, r.read()
        first = next(r.iter_lines())
        assert first.startswith(("data:", "event:")), first
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url)) == 1)
    (row,) = ledger_rows(gw.settings.database_url)
    assert row["usage_source"] == "estimated", row
    assert tokens <= row["input_tokens"] < tokens + 100, row


MCP_SERVER = {"type": "url", "url": "https://mcp.example.com/sse", "name": "docs"}
MCP_TOOL = {"type": "mcp", "server_label": "docs", "server_url": "https://mcp.example.com/sse",
            "allowed_tools": ["search"], "require_approval": "never"}


def test_mcp_servers_are_reserved_per_server(gateway_factory: Callable[..., Gateway], spy: SpyUpstream) -> None:
    """An MCP server a request names (`/v1/messages`' `mcp_servers`, a Responses `mcp` tool by
    `server_url` or `connector_id`, `allowed_tools` or not) makes the provider fetch its tool list and
    add it to the input: estimated at nothing, it passed a 1,000-token input limit. Each reserves
    SENTINEL_REFERENCE_INPUT_TOKENS, so one can never fit that limit; nothing is sent or charged."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", anthropic_api_url=spy.url)
    set_plan(gw.settings.database_url, "alice", "small", LIMITED)
    with pytest.raises(openai.RateLimitError) as refused:
        gw.openai().responses.create(model="gpt-4o", input="what do the docs say?", tools=[MCP_TOOL])  # type: ignore[list-item]
    refused_as_never_fitting(refused.value, REFERENCE_TOKENS)
    with pytest.raises(openai.RateLimitError) as refused:
        gw.openai().responses.create(model="gpt-4o", input="mail?", tools=[  # type: ignore[list-item]
            {"type": "mcp", "server_label": "mail", "connector_id": "connector_gmail", "authorization": "t"}])
    refused_as_never_fitting(refused.value, REFERENCE_TOKENS)
    import anthropic

    with pytest.raises(anthropic.RateLimitError) as too_much:
        gw.anthropic().beta.messages.create(
            model="claude-3-5-haiku-20241022", max_tokens=50, messages=[{"role": "user", "content": "docs?"}],
            mcp_servers=[MCP_SERVER], betas=["mcp-client-2025-04-04"])  # type: ignore[list-item]
    error = too_much.value.response.json()["error"]
    assert "can never be admitted" in error["message"], error
    assert spy.seen == [] and recorded_ids(gw.settings.database_url) == set()


def needed(body: dict[str, Any]) -> int:
    """The input tokens an Anthropic-shaped 429 says a request alone needs."""
    found = re.search(r"alone needs (\d+) input tokens", body["error"]["message"])
    assert found is not None and body["error"]["type"] == "rate_limit_error", body
    return int(found[1])


def test_the_reservation_per_mcp_server_is_configured_and_bounded(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """With SENTINEL_REFERENCE_INPUT_TOKENS=300 a request naming two MCP servers (600) fits a
    1,000-token limit and four (1,200) do not; an absurd number of them is reserved as the most
    tools a request may have (128), never more — the figure stays finite and exact."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", anthropic_api_url=spy.url, reference_input_tokens=300)
    set_plan(gw.settings.database_url, "alice", "small", LIMITED)
    body: dict[str, Any] = {"model": "claude-3-5-haiku-20241022", "max_tokens": 5,
                            "messages": [{"role": "user", "content": "docs?"}]}
    with gw.client() as http:
        ok = http.post("/v1/messages", json={**body, "mcp_servers": [MCP_SERVER] * 2})
        assert ok.status_code == 200, ok.text
        over = http.post("/v1/messages", json={**body, "mcp_servers": [MCP_SERVER] * 4})
        assert over.status_code == 429 and over.json()["type"] == "error", over.text
        assert needed(over.json()) >= 1_200, over.text
        absurd = http.post("/v1/messages", json={**body, "mcp_servers": [MCP_SERVER] * 50_000})
        assert absurd.status_code == 429, absurd.text
        assert 128 * 300 <= needed(absurd.json()) < 129 * 300, absurd.text
        wrong = http.post("/v1/messages", json={**body, "mcp_servers": {"docs": MCP_SERVER}})
        assert wrong.status_code == 400 and wrong.json()["error"]["type"] == "invalid_request_error", wrong.text
    assert len(spy.seen) == 1
