"""What a translated or native stream keeps to finish or send is bounded (`sentinel.native.kept.HeldBudget`).

A tool call's argument fragments were kept whole by the normalisers (to check the call at the end)
and, on a translated Anthropic stream, by the encoder for what began after the first call (held and
sent at the end): a provider streaming one call's arguments, or text after a call, without end grew
the process's memory until the stream time limit. Past `HELD_CHARS` the stream ends with a
`stream_too_large` StreamError; the memory is shown bounded by the size of what is kept."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sentinel.native import StreamError, kept
from sentinel.native.anthropic_stream import AnthropicStreamEncoder
from sentinel.native.sse import SSEEvent
from sentinel.native.stream import AnthropicStreamNormalizer, OpenAIStreamNormalizer, StreamNormalizer

HELD_CHARS = 8 * 1024 * 1024  # what a stream may hold (`kept.HELD_CHARS`)
KEPT_CHARS = 1024 * 1024  # what is kept to count (`kept.KEPT_CHARS`)
PIECE = "x" * (64 * 1024)
ENOUGH = HELD_CHARS // len(PIECE) + 2  # more pieces than a stream may hold


def oa(delta: dict[str, Any]) -> SSEEvent:
    return SSEEvent(orjson.dumps({"id": "c", "model": "m", "choices": [{"index": 0, "delta": delta}]}).decode())


def oa_args(index: int, arguments: str, **start: str) -> SSEEvent:
    function = {"arguments": arguments} | ({"name": start["name"]} if start else {})
    call = {"index": index, "function": function} | ({"id": start["id"], "type": "function"} if start else {})
    return oa({"tool_calls": [call]})


def an(event: dict[str, Any]) -> SSEEvent:
    return SSEEvent(orjson.dumps(event).decode(), event["type"])


def an_args(index: int, fragment: str) -> SSEEvent:
    return an({"type": "content_block_delta", "index": index,
               "delta": {"type": "input_json_delta", "partial_json": fragment}})


def feed_until_cut(normalizer: StreamNormalizer, events: Any) -> tuple[StreamError, int]:
    """Feed events until the normaliser refuses one: (its error, how many it took)."""
    for taken, event in enumerate(events):
        try:
            normalizer.feed(event)
        except StreamError as exc:
            return exc, taken
    raise AssertionError("the stream was never cut")


def test_a_held_budget_raises_past_its_limit_and_not_before() -> None:
    assert (kept.HELD_CHARS, kept.KEPT_CHARS) == (HELD_CHARS, KEPT_CHARS)
    budget = kept.HeldBudget("its tool calls", provider="p", limit=10)
    budget.take("x" * 10)
    with pytest.raises(StreamError) as cut:
        budget.take("y")
    assert (cut.value.code, cut.value.kind, cut.value.provider) == ("stream_too_large", "stream_too_large", "p")
    assert cut.value.message == "Upstream p stream cut: its tool calls ran past the 10 characters a stream may hold"


def test_an_openai_call_whose_arguments_never_end_is_cut_with_what_was_kept_bounded() -> None:
    normalizer = OpenAIStreamNormalizer(provider="openai")
    start = oa_args(0, '{"city": "', id="call_a", name="get_weather")
    error, taken = feed_until_cut(normalizer, [start, *(oa_args(0, PIECE) for _ in range(ENOUGH))])
    assert error.code == "stream_too_large" and error.provider == "openai"
    assert "ran past the 8,388,608 characters a stream may hold" in error.message
    assert taken < ENOUGH
    # Every piece within the limit was taken (and relayed), the next refused: the call is kept, to
    # count at settlement, up to the limit and no further (its id and name count too); tiktoken is
    # given KEPT_CHARS of it, the rest counted as a token per 4 bytes.
    assert HELD_CHARS - len(PIECE) < normalizer.held_chars <= HELD_CHARS
    assert len(normalizer.text) <= KEPT_CHARS
    assert len(normalizer.text) + 4 * normalizer.counted == normalizer.held_chars - len("call_a" "get_weather")


def test_an_anthropic_call_whose_arguments_never_end_is_cut_with_what_was_kept_bounded() -> None:
    normalizer = AnthropicStreamNormalizer(provider="anthropic")
    events = [
        an({"type": "message_start", "message": {"id": "msg", "model": "claude", "usage": {"input_tokens": 7}}}),
        an({"type": "content_block_start", "index": 0,
            "content_block": {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {}}}),
        *(an_args(0, PIECE) for _ in range(ENOUGH)),
    ]
    error, _ = feed_until_cut(normalizer, events)
    assert error.code == "stream_too_large" and error.provider == "anthropic"
    assert HELD_CHARS - len(PIECE) < normalizer.held_chars <= HELD_CHARS
    assert normalizer.prompt_tokens == 7  # what was reported stays readable for the settlement


def test_calls_begun_without_end_count_their_names_too() -> None:
    """A new call per event (each with a long name, no arguments) is held as well: cut alike."""
    normalizer = OpenAIStreamNormalizer(provider="openai")
    events = (oa_args(i, "", id=f"call_{i}", name=PIECE) for i in range(ENOUGH))
    error, taken = feed_until_cut(normalizer, events)
    assert error.code == "stream_too_large" and taken < ENOUGH


def test_calls_within_the_limit_finish_whole() -> None:
    normalizer = OpenAIStreamNormalizer(provider="openai")
    big = '{"text": "' + "y" * (HELD_CHARS - 1000) + '"}'
    normalizer.feed(oa_args(0, big, id="call_a", name="f"))
    normalizer.feed(oa({}))
    normalizer.feed(SSEEvent("[DONE]"))
    result = normalizer.finish()
    assert result.error is None and result.tool_calls[0].function.arguments == orjson.loads(big)


def unified(delta: dict[str, Any]) -> dict[str, Any]:
    return {"id": "msg", "model": "gpt", "choices": [{"index": 0, "delta": delta}]}


def call(index: int, arguments: str, **start: str) -> dict[str, Any]:
    function = {"arguments": arguments} | ({"name": start["name"]} if start else {})
    return unified({"tool_calls": [{"index": index, "function": function} | start]})


def feed_encoder_until_cut(encoder: AnthropicStreamEncoder, chunks: Any) -> tuple[StreamError, bytes]:
    sent = b""
    for chunk in chunks:
        try:
            sent += encoder.feed(chunk)
        except StreamError as exc:
            return exc, sent
    raise AssertionError("the stream was never cut")


def test_a_later_call_held_without_end_is_cut_with_what_is_held_bounded() -> None:
    """OpenAI -> Anthropic: a second call's fragments are held until the end; endless, the encoder
    refuses them once it holds HELD_CHARS, after streaming the first call as it came."""
    encoder = AnthropicStreamEncoder(input_tokens=5, provider="openai")
    chunks = [call(0, '{"a": 1}', id="call_a", name="f"), call(1, "", id="call_b", name="g"),
              *(call(1, PIECE) for _ in range(ENOUGH))]
    error, sent = feed_encoder_until_cut(encoder, chunks)
    assert error.code == "stream_too_large" and error.provider == "openai"
    assert "what it streamed after its first tool call ran past" in error.message
    assert b'"partial_json":"{\\"a\\": 1}"' in sent and PIECE.encode() not in sent  # held, never sent
    assert HELD_CHARS - len(PIECE) < encoder.held_chars <= HELD_CHARS


def test_text_after_the_first_call_held_without_end_is_cut_alike() -> None:
    encoder = AnthropicStreamEncoder(input_tokens=5)
    chunks = [call(0, "{}", id="call_a", name="f"), *(unified({"content": PIECE}) for _ in range(ENOUGH))]
    error, _ = feed_encoder_until_cut(encoder, chunks)
    assert error.code == "stream_too_large" and error.message.startswith("Upstream stream cut:")
    assert HELD_CHARS - len(PIECE) < encoder.held_chars <= HELD_CHARS


def test_the_first_call_streams_as_it_comes_and_holds_nothing() -> None:
    """Only what is held counts: the first call's fragments (and text before it) are sent at once."""
    encoder = AnthropicStreamEncoder(input_tokens=5)
    for chunk in [unified({"content": PIECE}), call(0, "", id="call_a", name="f"),
                  *(call(0, PIECE) for _ in range(ENOUGH))]:
        assert encoder.feed(chunk)
    assert encoder.held_chars == 0


def test_text_kept_to_count_stays_bounded_beside_the_calls() -> None:
    """The text beside a call is kept to count up to KEPT_CHARS and counted past it, never held."""
    normalizer = OpenAIStreamNormalizer(provider="openai")
    for _ in range(KEPT_CHARS // len(PIECE) + 8):
        normalizer.feed(oa({"content": PIECE}))
    assert len(normalizer.text) <= KEPT_CHARS and normalizer.counted > 0
