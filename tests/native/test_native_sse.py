"""The incremental SSE parser: any split of the byte stream must give the same events."""

from __future__ import annotations

import random

import pytest

from sentinel.native import StreamError
from sentinel.native.sse import SSEEvent, SSEParser


def parse(pieces: list[bytes]) -> tuple[list[SSEEvent], bool]:
    parser = SSEParser()
    events = [event for piece in pieces for event in parser.feed(piece)]
    return events, parser.close()


def one_byte_at_a_time(raw: bytes) -> list[bytes]:
    return [raw[i : i + 1] for i in range(len(raw))]


STREAM = (
    b": keep-alive comment\n"
    b"event: message_start\n"
    b'data: {"type":"message_start"}\n'
    b"\n"
    b"data: first line\n"
    b"data: second line \xf0\x9f\x98\x80 caf\xc3\xa9\n"
    b"\n"
    b"id: 7\n"
    b"retry: 1500\n"
    b"event: done\n"
    b"data:no-space\n"
    b"\n"
)
EXPECTED = [
    SSEEvent('{"type":"message_start"}', "message_start"),
    SSEEvent("first line\nsecond line \U0001f600 café"),
    SSEEvent("no-space", "done", "7", 1500),
]


def test_whole_stream() -> None:
    assert parse([STREAM]) == (EXPECTED, False)


def test_one_byte_at_a_time() -> None:
    assert parse(one_byte_at_a_time(STREAM)) == (EXPECTED, False)


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
def test_other_line_endings_even_split_between_cr_and_lf(newline: bytes) -> None:
    raw = STREAM.replace(b"\n", newline)
    assert parse([raw]) == (EXPECTED, False)
    assert parse(one_byte_at_a_time(raw)) == (EXPECTED, False)


def test_random_splits() -> None:
    rng = random.Random(1234)
    raw = STREAM.replace(b"\n", b"\r\n") * 20
    whole, _ = parse([raw])
    assert [(e.data, e.event) for e in whole] == [(e.data, e.event) for e in EXPECTED] * 20
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(raw)), rng.randint(1, 40)))
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        events, dangling = parse(pieces)
        assert events == whole
        assert not dangling


def test_multibyte_character_split_across_pieces() -> None:
    raw = "data: ✓ done 😀\n\n".encode()
    emoji_start = raw.index(b"\xf0")
    events, _ = parse([raw[: emoji_start + 2], raw[emoji_start + 2 :]])
    assert events == [SSEEvent("✓ done 😀")]


def test_byte_order_mark_is_stripped_once() -> None:
    events, _ = parse(one_byte_at_a_time(b"\xef\xbb\xbfdata: a\n\ndata: \xef\xbb\xbfb\n\n"))
    assert events == [SSEEvent("a"), SSEEvent("\ufeffb")]


def test_events_without_data_are_not_dispatched() -> None:
    events, _ = parse([b"event: ping\n\n: just a comment\n\nretry: 10\n\n"])
    assert events == []


def test_empty_data_line_dispatches_an_empty_event() -> None:
    events, _ = parse([b"data\n\ndata:\n\n"])
    assert events == [SSEEvent(""), SSEEvent("")]


def test_unknown_fields_and_bad_retry_are_ignored() -> None:
    events, _ = parse([b"foo: bar\nretry: soon\ndata: x\n\n"])
    assert events == [SSEEvent("x")]


def test_id_persists_until_changed() -> None:
    events, _ = parse([b"id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\n"])
    assert [e.id for e in events] == ["1", "1", "2"]


@pytest.mark.parametrize("tail", [b"data: partial", b"data: partial\n", b"event: x\ndata: y\n"])
def test_unterminated_event_is_discarded_and_reported(tail: bytes) -> None:
    events, dangling = parse([b"data: whole\n\n" + tail])
    assert events == [SSEEvent("whole")]
    assert dangling


def test_openai_style_stream_ends_cleanly() -> None:
    events, dangling = parse(one_byte_at_a_time(b'data: {"a":1}\n\ndata: [DONE]\n\n'))
    assert [e.data for e in events] == ['{"a":1}', "[DONE]"]
    assert not dangling


def test_oversized_event_is_refused() -> None:
    parser = SSEParser(max_event_bytes=100)
    parser.feed(b"data: " + b"x" * 50 + b"\n")
    with pytest.raises(StreamError) as info:
        parser.feed(b"data: " + b"y" * 60)
    assert info.value.code == "parse_error"


def test_size_limit_is_per_event() -> None:
    parser = SSEParser(max_event_bytes=100)
    for _ in range(10):
        assert parser.feed(b"data: " + b"x" * 80 + b"\n\n") == [SSEEvent("x" * 80)]
