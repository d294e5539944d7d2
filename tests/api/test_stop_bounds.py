"""A `/v1` request's stop sequences are held to the Native API's rule: a `stop` on
`/v1/chat/completions` and `/v1/completions` is at most 4 sequences (OpenAI's limit) of at most 256
characters each, refused up front otherwise; a `/v1/messages` body's `stop_sequences` (Anthropic takes
up to 8,191) each of at most 256 characters, their text counted as input. Before, any number of them
of up to a body's size went to the provider, outside every estimate."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import openai
import orjson
import pytest

from sentinel.mock.app import create_mock_app
from tests.api.conftest import Gateway
from tests.support.attack import SpyUpstream, recorded_ids, spying

MINI, HAIKU = "gpt-4o-mini", "claude-3-5-haiku-20241022"
CHAT = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def spied(gateway_factory: Callable[..., Gateway]) -> Iterator[tuple[Gateway, SpyUpstream]]:
    """A gateway whose providers (both wire formats) are a spy: what was sent."""
    with spying(create_mock_app()) as (_, spy):
        yield gateway_factory(openai_api_url=spy.url + "/v1", anthropic_api_url=spy.url), spy


def _nothing_happened(gw: Gateway, spy: SpyUpstream) -> None:
    assert spy.seen == [] and recorded_ids(gw.settings.database_url) == set()


@pytest.mark.parametrize(("stop", "param"), [
    (["a", "b", "c", "d", "e"], "stop"),
    ("s" * 257, "stop"),
    (["</answer>", "x" * 1_000_000], "stop.1"),
])
@pytest.mark.parametrize("model", [MINI, HAIKU])  # relayed, and translated to Anthropic
def test_a_chat_stop_past_four_sequences_or_256_characters_is_refused_before_anything(
    spied: tuple[Gateway, SpyUpstream], model: str, stop: Any, param: str
) -> None:
    gw, spy = spied
    sdk = gw.openai()
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.chat.completions.create(model=model, messages=CHAT, stop=stop, stream=stream)  # type: ignore[call-overload]
        assert refused.value.param == param, refused.value.body
        assert "256" in refused.value.message or "4" in refused.value.message
    _nothing_happened(gw, spy)
    served = sdk.chat.completions.create(model=model, messages=CHAT, stop=["</answer>", "a", "b", "s" * 256])  # type: ignore[arg-type]
    assert served.choices[0].message.content


def test_a_legacy_completion_stop_is_held_to_the_same_rule(spied: tuple[Gateway, SpyUpstream]) -> None:
    gw, spy = spied
    sdk = gw.openai()
    for stop, param in ((["a"] * 5, "stop"), (["ok", "s" * 257], "stop.1")):
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hi", stop=stop)
        assert refused.value.param == param, refused.value.body
    _nothing_happened(gw, spy)
    assert sdk.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hi", stop=["s" * 256]).choices


@pytest.mark.parametrize("model", [HAIKU, MINI])  # relayed, and translated to OpenAI
def test_a_messages_stop_sequence_over_256_characters_is_refused_before_anything(
    spied: tuple[Gateway, SpyUpstream], model: str
) -> None:
    gw, spy = spied
    with pytest.raises(anthropic.BadRequestError) as refused:
        gw.anthropic().messages.create(model=model, max_tokens=20, messages=CHAT,  # type: ignore[arg-type]
                                       stop_sequences=["</answer>", "x" * 100_000])
    assert refused.value.body["error"]["type"] == "invalid_request_error", refused.value.body
    assert "stop_sequences.1" in refused.value.message and "256" in refused.value.message
    _nothing_happened(gw, spy)


def test_many_messages_stop_sequences_are_counted_as_input(gateway_factory: Callable[..., Gateway]) -> None:
    """Anthropic takes thousands of stop sequences: 200 of 256 characters (~51 KB) were no input to
    any estimate, so a plan of 5,000 input tokens a minute admitted them; now their text is counted
    and the request is refused on that limit (nothing sent), while a few short ones pass."""
    gw = gateway_factory(default_plan="requests=100/1m,input_tokens=5000/1m")
    stop = [(f"stop sequence number {i}, alpha beta gamma delta epsilon " * 8)[:256] for i in range(200)]
    client = gw.anthropic()
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model=HAIKU, max_tokens=20, messages=CHAT, stop_sequences=stop)  # type: ignore[arg-type]
    assert limited.value.body["error"]["type"] == "rate_limit_error", limited.value.body
    served = client.messages.create(model=HAIKU, max_tokens=20, messages=CHAT,  # type: ignore[arg-type]
                                    stop_sequences=stop[:8])
    assert served.content


@pytest.mark.parametrize("endpoint", ["create", "count_tokens"])
def test_more_messages_stop_sequences_than_anthropic_takes_are_refused_before_anything(
    spied: tuple[Gateway, SpyUpstream], endpoint: str
) -> None:
    """Anthropic takes up to 8,191 stop sequences. Sentinel took any number and counted each one's
    text on its own: a 10 MB body of 2.4 million one-character sequences kept a counting thread (one
    of two, shared by every user) ~90 s before the provider refused it. Past 8,191: a 400 in
    Anthropic's shape naming `stop_sequences`, nothing sent or recorded; 8,191 are served."""
    gw, spy = spied
    messages = gw.anthropic().messages
    for stream in ((False, True) if endpoint == "create" else (False,)):
        with pytest.raises(anthropic.BadRequestError) as refused:
            if endpoint == "create":
                messages.create(model=HAIKU, max_tokens=20, messages=CHAT, stop_sequences=["x"] * 8192,  # type: ignore[arg-type]
                                stream=stream)
            else:
                messages.count_tokens(model=HAIKU, messages=CHAT, extra_body={"stop_sequences": ["x"] * 8192})  # type: ignore[arg-type]
        assert refused.value.body["error"]["type"] == "invalid_request_error", refused.value.body
        assert "stop_sequences" in refused.value.message and "8,191" in refused.value.message
    _nothing_happened(gw, spy)
    if endpoint == "create":
        assert messages.create(model=HAIKU, max_tokens=20, messages=CHAT, stop_sequences=["x"] * 8191).content  # type: ignore[arg-type]


def test_a_batch_lines_stop_is_held_to_the_same_rule(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """A batch runs each line as the request it is: a chat line's 1 MB stop sequence was uploaded and
    run by the provider, outside the line's estimate. Refused at upload (400 naming the line and
    `body.stop.1`), nothing sent; a line within the rule is uploaded."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", passthrough="/v1/files,/v1/files/*,/v1/batches,/v1/batches/*")
    client = gw.openai()

    def line(stop: Any) -> bytes:
        body = {"model": MINI, "max_tokens": 10, "messages": CHAT, "stop": stop}
        return orjson.dumps({"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": body}) + b"\n"

    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("in.jsonl", line(["ok", "x" * 100_000])), purpose="batch")
    assert "body.stop.1" in refused.value.message and "Line 1" in refused.value.message, refused.value.body
    assert spy.seen == []
    assert client.files.create(file=("in.jsonl", line(["ok", "x" * 256])), purpose="batch").id
