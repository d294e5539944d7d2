"""`/v1/embeddings` takes what OpenAI takes, told before anything is counted, reserved or sent: at most
2,048 inputs, none empty, token ids whole numbers, `dimensions` and `encoding_format` of their type —
a 400 in OpenAI's shape naming `input` (or the field). Before, any number of inputs was counted (2.4
million one-word inputs: seconds of a counting thread every user shares) and sent to the provider.
And the embedded mock's echo is bounded, all of a request's `n` choices together."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import orjson
import pytest

from sentinel.mock.app import create_mock_app
from sentinel.mock.server import start_mock_in_thread
from tests.api.conftest import Gateway
from tests.support.attack import SpyUpstream, spying
from tests.support.clock import FakeClock

ADMIN_KEY = "admin-key-for-tests-0123"
MODEL = "text-embedding-3-small"
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's, as README and SECURITY.md say
MAX_ANSWER_CHARS = 16_384  # the embedded mock's answers to one request, all choices together (README, Configuration)
EMBEDDED_KEY = "sk-embedded-mock-key-for-tests"


@pytest.fixture
def watched(gateway_factory: Callable[..., Gateway]) -> Iterator[tuple[Gateway, SpyUpstream]]:
    """A gateway whose OpenAI upstream records every request it gets."""
    with spying(create_mock_app()) as (_, spy):
        yield gateway_factory(openai_api_url=spy.url + "/v1", admin_key=ADMIN_KEY, window_clock=FakeClock()), spy


REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"input": ["a"] * (MAX_EMBEDDING_INPUTS + 1)}, "input"),
    ({"input": [[1]] * (MAX_EMBEDDING_INPUTS + 1)}, "input"),
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": None}, "input"),
    ({"input": {"text": "a"}}, "input"),
    ({"input": ["a", ""]}, "input.1"),
    ({"input": ["a", 1]}, "input.1"),
    ({"input": ["a", ["b"]]}, "input.1"),
    ({"input": [[1, 2], []]}, "input.1"),
    ({"input": [[1, 2], [3, "x"]]}, "input.1"),
    ({"input": [[[1]]]}, "input.0"),
    ({"input": [None]}, "input.0"),
    ({"input": [1, 2.5]}, "input"),
    ({"input": [1, True]}, "input"),
    ({"input": [-1]}, "input"),
    ({"input": [2**40]}, "input"),
    ({"input": "a", "dimensions": "256"}, "dimensions"),
    ({"input": "a", "dimensions": 0}, "dimensions"),
    ({"input": "a", "dimensions": 10**30}, "dimensions"),
    ({"input": "a", "dimensions": 1.5}, "dimensions"),
    ({"input": "a", "dimensions": True}, "dimensions"),
    ({"input": "a", "encoding_format": 5}, "encoding_format"),
    ({"input": "a", "encoding_format": ["float"]}, "encoding_format"),
]


def test_what_openai_refuses_is_refused_before_it_is_counted_reserved_or_sent(
    watched: tuple[Gateway, SpyUpstream],
) -> None:
    """Each body OpenAI refuses is a 400 in OpenAI's shape naming the field, the provider never asked
    and the quota untouched (a refused request changes nothing) — before, each went to the provider,
    2,049 inputs counted first."""
    gw, spy = watched
    with gw.client() as http:
        for body, param in REFUSED:
            r = http.post("/v1/embeddings", json={"model": MODEL, **body})
            assert r.status_code == 400, (body if len(str(body)) < 200 else param, r.text)
            error = r.json()["error"]
            assert error["type"] == "invalid_request_error", error
            assert error["param"] == param, (str(body)[:200], error)
            assert error["code"], error
    assert spy.paths() == [], "a refused body reached the provider"
    assert set(gw.quota_used().values()) <= {0}, gw.quota_used()


def test_the_bound_is_said_and_what_openai_takes_is_served(watched: tuple[Gateway, SpyUpstream]) -> None:
    """2,049 inputs: the openai SDK reads `param` and a message saying the bound; 2,048 are served,
    and so is one token-id list longer than 2,048 (one input, not 3,000)."""
    gw, spy = watched
    sdk = gw.openai()
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.embeddings.create(model=MODEL, input=["a"] * (MAX_EMBEDDING_INPUTS + 1))
    assert refused.value.param == "input"
    assert "2,049 inputs: at most 2,048" in refused.value.message, refused.value.message
    assert spy.paths() == []
    served = sdk.embeddings.create(model=MODEL, input=["a"] * MAX_EMBEDDING_INPUTS, dimensions=1)
    assert len(served.data) == MAX_EMBEDDING_INPUTS
    assert len(sdk.embeddings.create(model=MODEL, input=[[7] * 3000, [0]], dimensions=1).data) == 2
    assert len(sdk.embeddings.create(model=MODEL, input=[7] * 3000, encoding_format="base64").data) == 1
    assert spy.paths() == ["/v1/embeddings"] * 3


@pytest.fixture
def on_the_embedded_mock(gateway_factory: Callable[..., Gateway]) -> Iterator[Gateway]:
    """A gateway on the mock upstream `sentinel serve` embeds (no providers configured), as serve starts it."""
    url, stop = start_mock_in_thread(api_key=EMBEDDED_KEY, embedded=True)
    try:
        yield gateway_factory(openai_api_url=url + "/v1", openai_api_key=EMBEDDED_KEY,
                              anthropic_api_url=url, anthropic_api_key=EMBEDDED_KEY)
    finally:
        stop()


def test_the_embedded_mocks_echo_is_bounded_for_all_n_choices_together(on_the_embedded_mock: Gateway) -> None:
    """A long prompt with `n` choices and no `max_tokens`: the embedded mock answers each choice its
    share of 16,384 characters, cut as `max_tokens` cuts (`length`), streamed or not, and reports that
    output; a legacy completion's prompts share them too, and a message's answer is held to them —
    before, each of `n` echoed the whole prompt (2 MB, `n: 128`: a 256 MB answer built in the gateway's
    own process, 51 million output tokens charged)."""
    gw = on_the_embedded_mock
    sdk = gw.openai()
    prompt = "word " * 40_000  # 200,000 characters
    user = [{"role": "user", "content": prompt}]
    answer = sdk.chat.completions.create(model="gpt-4o-mini", messages=user, n=16)
    assert len(answer.choices) == 16
    texts = [choice.message.content or "" for choice in answer.choices]
    assert sum(map(len, texts)) <= MAX_ANSWER_CHARS
    assert all(text.startswith("Echo: word word") for text in texts), texts[0][:40]
    assert {choice.finish_reason for choice in answer.choices} == {"length"}
    assert answer.usage is not None and answer.usage.completion_tokens <= MAX_ANSWER_CHARS // 2
    streamed: dict[int, str] = {}
    finished: set[str | None] = set()
    for chunk in sdk.chat.completions.create(model="gpt-4o-mini", messages=user, n=16, stream=True):
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason is not None:
                finished.add(choice.finish_reason)
    assert len(streamed) == 16 and sum(map(len, streamed.values())) <= MAX_ANSWER_CHARS
    assert finished == {"length"}
    legacy = sdk.completions.create(model="gpt-3.5-turbo-instruct", prompt=[prompt] * 4, max_tokens=10**6)
    assert sum(len(choice.text) for choice in legacy.choices) <= MAX_ANSWER_CHARS
    assert {choice.finish_reason for choice in legacy.choices} == {"length"}
    message = gw.anthropic().messages.create(model="claude-3-5-haiku-20241022", max_tokens=20_000, messages=user)
    assert sum(len(block.text) for block in message.content) <= MAX_ANSWER_CHARS
    assert message.stop_reason == "max_tokens"
    short = sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], n=128)
    assert {choice.message.content for choice in short.choices} == {"Echo: hi"}  # a short answer is whole


def test_a_batch_lines_embeddings_input_is_held_to_the_same_rule(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """A batch line is the request it runs: an embeddings line of 2,049 inputs was counted at upload
    and run by the provider. Refused at upload (400 naming the line and `body.input`), nothing sent;
    a line of 2,048 is uploaded."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", passthrough="/v1/files,/v1/files/*,/v1/batches,/v1/batches/*")
    client = gw.openai()

    def line(inputs: list[str]) -> bytes:
        body = {"model": MODEL, "input": inputs}
        return orjson.dumps({"custom_id": "1", "method": "POST", "url": "/v1/embeddings", "body": body}) + b"\n"

    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("in.jsonl", line(["a"] * (MAX_EMBEDDING_INPUTS + 1))), purpose="batch")
    assert "body.input" in refused.value.message and "Line 1" in refused.value.message, refused.value.body
    assert spy.seen == []
    assert client.files.create(file=("in.jsonl", line(["a"] * MAX_EMBEDDING_INPUTS)), purpose="batch").id
