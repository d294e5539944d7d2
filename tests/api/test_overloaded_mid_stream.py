"""Anthropic's `overloaded_error` sent after a stream's opening `message_start` (the mock's `error_after`
knob): the client gets a well-formed error event (what its SDK raises), the usage record holds the input
message_start reported and the output streamed before it (status 502), and the provider+model is put
in backoff as its 529 before the first byte would — on `/v1/messages` (relayed), on a Claude model
reached from an OpenAI client (translated), and on the native API. A request asking for thinking whose
stream the overload ended before any block of the answer is charged no output (not its reservation).
A stream cut by a broken connection still counts against no health (`test_gate_drops`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import anthropic
import openai
import pytest
import yaml
from starlette.types import Receive, Scope, Send

from sentinel.mock.app import create_mock_app
from sentinel.quota.tokens import TokenCounter
from sentinel.routing.health import ProviderHealth
from tests.api.conftest import Gateway
from tests.api.test_native import tiers_file
from tests.support.attack import ledger_rows
from tests.support.metrics import metric
from tests.support.servers import serving
from tests.support.waiting import wait_for

HAIKU = "claude-3-5-haiku-20241022"


@pytest.fixture
def gw(gateway_factory: Callable[..., Gateway], tmp_path: Path) -> Gateway:
    """Native tiers on Claude alone, usage records flushed at once."""
    return gateway_factory(providers_file=tiers_file(tmp_path, "anthropic"), usage_flush_interval_seconds=0.1)


def one_row(gw: Gateway) -> dict[str, object]:
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 1)
    return ledger_rows(gw.settings.database_url, "alice")[0]


def in_backoff(gw: Gateway) -> bool:
    return gw.read_stored(ProviderHealth.key("anthropic", HAIKU)) is not None


def test_anthropic_sdk_gets_the_error_and_the_stream_is_charged_what_it_served(gw: Gateway) -> None:
    claude = gw.anthropic()
    seen: list[anthropic.types.RawMessageStreamEvent] = []
    text = ""
    with pytest.raises(anthropic.APIStatusError) as caught:  # noqa: PT012
        for event in claude.messages.create(
            model=HAIKU, max_tokens=200, stream=True,
            messages=[{"role": "user", "content": "one two three four five #mock:error_after=5"}],
        ):
            seen.append(event)
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
    assert [e.type for e in seen] == ["message_start", "content_block_start", "content_block_delta",
                                      "content_block_delta"]
    body = caught.value.body
    assert body == {"type": "error", "error": {  # nothing else of the provider's event (its request_id)
        "type": "overloaded_error", "message": "Provider anthropic failed during the stream"}}, body
    row = one_row(gw)
    started = seen[0]
    assert started.type == "message_start"
    assert row["status"] == 502 and row["input_tokens"] == started.message.usage.input_tokens, row
    assert row["output_tokens"] == TokenCounter().count_text(text, HAIKU) > 0, (row, text)  # not the 200 reserved
    assert in_backoff(gw)
    assert metric(gw.url, "sentinel_provider_health", provider="anthropic", model=HAIKU) == 0


def test_a_claude_stream_translated_to_an_openai_client(gw: Gateway) -> None:
    with pytest.raises(openai.APIError) as caught:  # noqa: PT012
        for _ in gw.openai().chat.completions.create(
            model=HAIKU, stream=True, messages=[{"role": "user", "content": "one two #mock:error_after=3"}],
        ):
            pass
    assert "anthropic" in caught.value.message
    row = one_row(gw)
    assert row["status"] == 502 and row["input_tokens"] > 0, row
    assert in_backoff(gw)


def test_a_native_stream_on_claude_puts_the_tier_model_in_backoff(gw: Gateway) -> None:
    with gw.client() as http:
        broken = http.post("/native/v1/chat/completions", json={
            "tier": "simple", "stream": True, "messages": [{"role": "user", "content": "hi #mock:error_after=1"}]})
        assert broken.status_code == 200 and '"code":"overloaded_error"' in broken.text, broken.text
        assert "[DONE]" not in broken.text
        after = http.post("/native/v1/chat/completions", json={"tier": "simple", "messages": [
            {"role": "user", "content": "hi"}]})
    assert after.status_code == 503 and after.json()["error"]["code"] == "tier_unavailable", after.text
    assert one_row(gw)["status"] == 502


@pytest.mark.parametrize("after", [1, 4])
def test_a_thinking_stream_overloaded_before_its_answer_began_is_charged_no_output(gw: Gateway, after: int) -> None:
    """A request asking for thinking is charged its reservation's output when its stream stops short
    (reasoning is billed, not all streamed) — but not when the provider's error came before any block
    of the answer (`after=1`: right after message_start): it generated nothing."""
    claude = gw.anthropic()
    reserved = 3000
    seen: list[anthropic.types.RawMessageStreamEvent] = []
    with pytest.raises(anthropic.APIStatusError):  # noqa: PT012
        for event in claude.messages.create(
            model=HAIKU, max_tokens=reserved, stream=True, thinking={"type": "enabled", "budget_tokens": 1024},
            messages=[{"role": "user", "content": f"one two three #mock:error_after={after}"}],
        ):
            seen.append(event)
    started = seen[0]
    assert started.type == "message_start"
    row = one_row(gw)
    assert row["status"] == 502 and row["input_tokens"] == started.message.usage.input_tokens, row
    assert row["output_tokens"] == (0 if after == 1 else reserved), row



@pytest.fixture
def thinker(gateway_factory: Callable[..., Gateway], tmp_path: Path, mock_upstream: str) -> Gateway:
    """A Claude model an operator marked as reasoning unasked (`reasons: true`: its output billed
    unseen), on /v1 and as every native tier's model."""
    model = {"name": "house-claude", "provider": "anthropic", "upstream_name": HAIKU, "reasons": True}
    entry = {"provider": "anthropic", "model": HAIKU}  # (a tier names the upstream model)
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump({
        "providers": [{"name": "anthropic", "kind": "anthropic", "base_url": mock_upstream, "api_key": "sk-ant-x"}],
        "models": [model],
        "tiers": {"simple": [entry], "moderate": [entry], "complex": [entry]},
    }))
    return gateway_factory(providers_file=path, usage_flush_interval_seconds=0.1)


@pytest.mark.parametrize("after", [1, 4])
def test_a_translated_thinking_stream_overloaded_before_its_answer_began_is_charged_no_output(
    thinker: Gateway, after: int,
) -> None:
    """The same rule for an OpenAI client's chat on a Claude model that reasons (translated): its stream
    stopped short is charged its reservation's output (reasoning is billed unseen) — not when the
    provider's error came right after message_start (`after=1`), before any block of the answer: it
    generated nothing, and was charged the whole reservation."""
    reserved = 3000
    with pytest.raises(openai.APIError):  # noqa: PT012
        for _ in thinker.openai().chat.completions.create(
            model="house-claude", stream=True, max_completion_tokens=reserved,
            messages=[{"role": "user", "content": f"one two three #mock:error_after={after}"}],
        ):
            pass
    row = one_row(thinker)
    assert row["status"] == 502 and row["input_tokens"] > 0, row
    assert row["output_tokens"] == (0 if after == 1 else reserved), row


@pytest.mark.parametrize("after", [1, 4])
def test_a_native_thinking_stream_overloaded_before_its_answer_began_is_charged_no_output(
    thinker: Gateway, after: int,
) -> None:
    """And on the native API (its tier's model reasons)."""
    reserved = 3000
    with thinker.client() as http:
        broken = http.post("/native/v1/chat/completions", json={
            "tier": "simple", "stream": True, "max_tokens": reserved,
            "messages": [{"role": "user", "content": f"hi #mock:error_after={after}"}]})
    assert broken.status_code == 200 and '"code":"overloaded_error"' in broken.text, broken.text
    row = one_row(thinker)
    assert row["status"] == 502 and row["output_tokens"] == (0 if after == 1 else reserved), row


SONNET = "claude-sonnet-4-20250514"


class _Overloading:
    """The mock upstream, every Anthropic stream of which sends `overloaded_error` right after its
    `message_start` (`error_after=1`): a Claude model overloaded as its answer would begin."""

    def __init__(self) -> None:
        self.app = create_mock_app()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, "headers": [*scope["headers"], (b"x-mock-error-after", b"1")]}
        await self.app(scope, receive, send)


@pytest.fixture
def overloading(gateway_factory: Callable[..., Gateway], tmp_path: Path, mock_upstream: str) -> Iterator[Gateway]:
    """A `/v1` alias and a native tier of two Claude models: the first (on `busy`) overloaded right
    after `message_start`, the second sound."""
    with serving(_Overloading()) as busy:
        path = tmp_path / "providers.yaml"
        path.write_text(yaml.safe_dump({
            "providers": [{"name": "anthropic", "kind": "anthropic", "base_url": mock_upstream, "api_key": "sk-ant-x"},
                          {"name": "busy", "kind": "anthropic", "base_url": busy.url, "api_key": "sk-ant-x"}],
            "models": [{"name": "busy-haiku", "provider": "busy", "upstream_name": HAIKU},
                       {"name": "busy-sonnet", "provider": "busy", "upstream_name": SONNET},
                       {"name": SONNET, "provider": "anthropic"}],
            "aliases": {"claudes": ["busy-haiku", SONNET], "busy-claudes": ["busy-haiku", "busy-sonnet"]},
            "tiers": {tier: [{"provider": "busy", "model": HAIKU, "relative_cost": 1},
                             {"provider": "anthropic", "model": SONNET, "relative_cost": 10}]
                      for tier in ("simple", "moderate", "complex")},
        }))
        yield gateway_factory(providers_file=path, usage_flush_interval_seconds=0.1)


def busy_in_backoff(gw: Gateway) -> bool:
    return gw.read_stored(ProviderHealth.key("busy", HAIKU)) is not None


def retried_overloads(gw: Gateway) -> float | None:
    """`upstream_errors_total` of the busy provider's failures before the first byte (a 529's kind)."""
    return metric(gw.url, "sentinel_upstream_errors_total", provider="busy", kind="provider_error")


def test_an_alias_stream_overloaded_before_its_first_block_is_served_by_the_next_target(overloading: Gateway) -> None:
    """The first target's `message_start` is held back until its first block: its overload before
    one is its 529 — counted against its health, the stream retried on the next target —, and the
    client gets one clean stream from the model that served it, charged once."""
    claude = overloading.anthropic()
    with claude.messages.with_streaming_response.create(
        model="claudes", max_tokens=200, stream=True, messages=[{"role": "user", "content": "one two three"}],
    ) as raw:
        assert raw.headers["x-sentinel-model"] == SONNET, raw.headers
        events = list(raw.parse())
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds.count("message_start") == 1, kinds
    assert kinds[-1] == "message_stop" and "error" not in kinds, kinds
    assert events[0].message.model == SONNET  # type: ignore[union-attr]
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta"
                   and e.delta.type == "text_delta")  # type: ignore[union-attr]
    assert text == "Echo: one two three", text
    row = one_row(overloading)
    assert row["status"] == 200 and row["model"] == SONNET and row["output_tokens"] > 0, row
    assert busy_in_backoff(overloading)
    assert retried_overloads(overloading) == 1  # as its 529 would be


def test_a_translated_alias_stream_overloaded_before_its_first_block_is_served_by_the_next_target(
    overloading: Gateway,
) -> None:
    """The same for an OpenAI client's chat translated to the alias's Claude models."""
    raw = overloading.openai().chat.completions.with_raw_response.create(
        model="claudes", stream=True, messages=[{"role": "user", "content": "one two three"}],
    )
    assert raw.headers["x-sentinel-model"] == SONNET, raw.headers
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: one two three", text
    assert chunks[-1].choices[0].finish_reason == "stop", chunks[-1]
    row = one_row(overloading)
    assert row["status"] == 200 and row["model"] == SONNET, row
    assert busy_in_backoff(overloading)
    assert retried_overloads(overloading) == 1


def test_a_native_stream_overloaded_before_its_first_block_is_retried_on_the_tiers_next_model(
    overloading: Gateway,
) -> None:
    """On the native API the tier's next model serves it (the busy one is drawn first ten times in
    eleven: requests go until it was — each answered whole by the other — and is then in backoff)."""
    served = 0
    with overloading.client() as http:
        while not busy_in_backoff(overloading) and served < 30:
            answer = http.post("/native/v1/chat/completions", json={
                "tier": "simple", "stream": True, "messages": [{"role": "user", "content": "one two"}]})
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-sentinel-model"] == SONNET, answer.headers
            assert "Echo:" in answer.text and "error" not in answer.text and answer.text.rstrip().endswith("[DONE]")
            served += 1
    assert busy_in_backoff(overloading)
    assert retried_overloads(overloading) == 1  # the busy model's one attempt, dropped (the native API counted none)
    assert wait_for(lambda: len(ledger_rows(overloading.settings.database_url, "alice")) == served)
    rows = ledger_rows(overloading.settings.database_url, "alice")
    assert all(row["status"] == 200 and row["model"] == SONNET for row in rows), rows


def test_an_alias_whose_last_target_is_overloaded_too_relays_its_stream_as_it_came(overloading: Gateway) -> None:
    """With nowhere else to go, the last target's held opening is relayed, then its error event, as
    before: both targets counted against their health, one usage record (502)."""
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:  # noqa: PT012
        for event in overloading.anthropic().messages.create(
            model="busy-claudes", max_tokens=200, stream=True, messages=[{"role": "user", "content": "one two"}],
        ):
            seen.append(event.type)
    assert seen == ["message_start"], seen
    assert caught.value.body["error"]["type"] == "overloaded_error", caught.value.body  # type: ignore[index]
    row = one_row(overloading)
    assert row["status"] == 502 and row["model"] == "busy-sonnet" and row["output_tokens"] == 0, row
    assert busy_in_backoff(overloading)
    assert overloading.read_stored(ProviderHealth.key("busy", SONNET)) is not None
    assert retried_overloads(overloading) == 1  # the first target's; the last one's relayed, not counted twice
