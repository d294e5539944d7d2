"""Usage read out of OpenAI-format bodies and SSE streams (the /v1 relay's metering)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sentinel.domain.usage import Usage
from sentinel.quota.images import OPENAI_MAX_IMAGE_TOKENS
from sentinel.quota.usage import (
    LENIENT_MAX_BYTES,
    READ_KEPT_CHARS,
    StreamInspector,
    output_read,
    read_as_sdks,
    text_from_body,
    top_level_value,
    usage_from_body,
)

DONE = b"data: [DONE]\n\n"


def event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def delta(text: str) -> bytes:
    return event({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]})


USAGE_CHUNK = event({"id": "c1", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}})
STREAM = delta("Hello") + delta(", world") + USAGE_CHUNK + DONE


def feed_all(inspector: StreamInspector, chunks: list[bytes]) -> bytes:
    return b"".join(inspector.feed(chunk) for chunk in chunks) + inspector.flush()


def test_done_is_withheld_for_the_caller_to_send_last() -> None:
    inspector = StreamInspector("chat")
    relayed = feed_all(inspector, [STREAM])
    assert relayed == delta("Hello") + delta(", world") + USAGE_CHUNK
    assert inspector.saw_done and inspector.done == DONE
    assert inspector.usage == Usage(9, 4) and inspector.text == "Hello, world"


def test_a_stream_without_done_has_nothing_to_send_last() -> None:
    inspector = StreamInspector("chat")
    feed_all(inspector, [delta("cut")])
    assert not inspector.saw_done and inspector.done == b""


def test_nothing_is_relayed_after_done() -> None:
    inspector = StreamInspector("chat")
    assert feed_all(inspector, [delta("a") + DONE + delta("late")]) == delta("a")
    assert inspector.text == "a"


@pytest.mark.parametrize("size", [1, 2, 7, 64])
def test_events_split_across_chunks_are_relayed_whole(size: int) -> None:
    inspector = StreamInspector("chat")
    pieces = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    outputs = [inspector.feed(piece) for piece in pieces]
    for out in outputs:  # only ever whole events
        assert out == b"" or (out.startswith(b"data: ") and out.endswith(b"\n\n"))
    assert b"".join(outputs) + inspector.flush() == delta("Hello") + delta(", world") + USAGE_CHUNK
    assert inspector.usage == Usage(9, 4) and inspector.done == DONE


def test_crlf_framing_is_understood() -> None:
    crlf = STREAM.replace(b"\n", b"\r\n")
    inspector = StreamInspector("chat")
    relayed = feed_all(inspector, [crlf[:10], crlf[10:]])
    assert relayed == delta("Hello") + delta(", world") + USAGE_CHUNK
    assert inspector.usage == Usage(9, 4) and inspector.saw_done


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize("line_end", [b"\r", b"\r\n", b"\n"], ids=["cr", "crlf", "lf"])
def test_every_line_end_the_standard_allows_frames_events(line_end: bytes, size: int) -> None:
    """A lone `\\r` ends a line as `\\n` and `\\r\\n` do (the SDKs read it so): a stream framed by it was
    one event without end, held back from the client and its usage unread. A `\\r\\n` split between
    two chunks is one line end, not two (no blank line made of it)."""
    framed = STREAM.replace(b"\n", line_end)
    inspector = StreamInspector("chat")
    outputs = [inspector.feed(framed[i : i + size]) for i in range(0, len(framed), size)]
    assert b"".join(outputs) + inspector.flush() == delta("Hello") + delta(", world") + USAGE_CHUNK
    assert inspector.usage == Usage(9, 4) and inspector.done == DONE and inspector.text == "Hello, world"


def test_a_line_end_split_from_its_line_feed_makes_no_blank_line() -> None:
    from sentinel.quota.usage import EventSplitter

    splitter = EventSplitter()
    assert splitter.feed(b"data: a\r\r") == [b"data: a"]  # the second `\r` may be a `\r\n`'s
    assert splitter.feed(b"\ndata: b\r") == [] and splitter.feed(b"\ndata: c\r\n") == []
    assert splitter.feed(b"\r\n") == [b"data: b\ndata: c"]  # one event of two data lines
    assert splitter.feed(b"data: d\r") == [] and splitter.flush() == b"data: d\n"


def test_the_usage_chunk_sentinel_asked_for_is_stripped() -> None:
    inspector = StreamInspector("chat", strip_usage_chunk=True)
    assert feed_all(inspector, [STREAM]) == delta("Hello") + delta(", world")
    assert inspector.usage == Usage(9, 4)  # still metered


@pytest.mark.parametrize("usage", [{"prompt_tokens": -5, "completion_tokens": -3}, {"prompt_tokens": 5.5},
                                   {"prompt_tokens": "5", "completion_tokens": "3"}, {}])
def test_the_usage_chunk_sentinel_asked_for_is_stripped_whatever_its_figures(usage: dict[str, Any]) -> None:
    """A usage chunk whose figures are not a usage (negative, not integers, missing) was relayed to a
    client that never asked for it (a chunk without choices: `chunk.choices[0]` raises); the answer
    is charged its text, as one without usage."""
    odd = event({"id": "c1", "choices": [], "usage": usage})
    inspector = StreamInspector("chat", strip_usage_chunk=True)
    assert feed_all(inspector, [delta("Hello") + odd + DONE]) == delta("Hello")
    assert inspector.usage is None and inspector.text == "Hello" and inspector.done == DONE
    kept = StreamInspector("chat")  # asked for: relayed as the provider sent it
    assert feed_all(kept, [delta("Hello") + odd + DONE]) == delta("Hello") + odd


def test_stripping_keeps_an_error_chunk_that_carries_usage() -> None:
    """An error chunk is the client's to see (its SDK raises on it), whatever else it carries."""
    failed = event({"error": {"message": "overloaded", "type": "server_error"},
                    "usage": {"prompt_tokens": 9, "completion_tokens": 4}})
    inspector = StreamInspector("chat", strip_usage_chunk=True)
    sent = feed_all(inspector, [delta("Hello") + failed])
    assert sent.startswith(delta("Hello")) and b'"error"' in sent and inspector.failed


def test_a_count_before_output_that_followed_is_whole_only_once_the_stream_ended() -> None:
    early = event({"id": "c1", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    cut = StreamInspector("chat")
    feed_all(cut, [early + delta("Hello")])
    ended = StreamInspector("chat")
    feed_all(ended, [early + delta("Hello") + DONE])
    assert (cut.usage, cut.text) == (None, "Hello") and ended.usage == Usage(1, 1)


def test_stripping_keeps_content_chunks_that_carry_usage() -> None:
    both = event({"choices": [{"index": 0, "delta": {"content": "x"}}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    inspector = StreamInspector("chat", strip_usage_chunk=True)
    assert feed_all(inspector, [both]) == both


def test_a_usage_on_a_content_chunk_counts_only_once_the_stream_ended() -> None:
    """A `usage` riding on a content chunk (vLLM's `continuous_usage_stats`: that choice's tokens so far)
    is the answer's count once `[DONE]` came (the last one shown is the final sum), not in a stream cut
    before its end: its text is counted then. A usage-only chunk is the whole count either way."""
    def riding(index: int, completion: int) -> bytes:
        return event({"choices": [{"index": index, "delta": {"content": "x"}}],
                      "usage": {"prompt_tokens": 9, "completion_tokens": completion}})

    cut = StreamInspector("chat")
    feed_all(cut, [riding(0, 1) + riding(1, 1)])
    assert cut.usage is None and cut.text == "xx"
    whole = StreamInspector("chat")
    feed_all(whole, [riding(0, 1) + riding(1, 1) + DONE])
    assert whole.usage == Usage(9, 1)
    summed = StreamInspector("chat")
    feed_all(summed, [riding(0, 1) + riding(1, 1) + USAGE_CHUNK])
    assert summed.usage == Usage(9, 4)


def test_unparseable_lines_are_counted_and_relayed() -> None:
    bad = b"data: {not json\n\n"
    inspector = StreamInspector("chat")
    assert feed_all(inspector, [delta("a") + bad + b": a comment\n\n" + DONE]) == delta("a") + bad + b": a comment\n\n"
    assert inspector.parse_errors == 1


def test_an_unterminated_tail_is_inspected_and_relayed_at_the_end() -> None:
    inspector = StreamInspector("chat")
    tail = USAGE_CHUNK.rstrip(b"\n")
    assert inspector.feed(delta("a") + tail) == delta("a")
    assert inspector.flush() == tail
    assert inspector.usage == Usage(9, 4)


def test_tool_call_fragments_are_counted_as_text() -> None:
    call = event({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"name": "get_weather", "arguments": '{"city"'}}]}}]})
    more = event({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ':"Paris"}'}}]}}]})
    inspector = StreamInspector("chat")
    feed_all(inspector, [call + more])
    assert inspector.text == 'get_weather{"city":"Paris"}'


def test_legacy_completions_stream_text() -> None:
    inspector = StreamInspector("completions")
    feed_all(inspector, [event({"choices": [{"text": "one "}]}) + event({"choices": [{"text": "two"}]})])
    assert inspector.text == "one two"


def test_responses_stream_text_and_usage() -> None:
    inspector = StreamInspector("responses")
    events = [
        event({"type": "response.output_text.delta", "delta": "Hi "}),
        event({"type": "response.output_text.delta", "delta": "there"}),
        event({"type": "response.completed", "response": {"usage": {"input_tokens": 12, "output_tokens": 3}}}),
    ]
    relayed = feed_all(inspector, events)
    # Nothing is stripped; the terminal event is held back (sent after the record is stored), as
    # [DONE] is on chat: a client stopping at response.completed found no record once.
    assert relayed == b"".join(events[:2]) and inspector.done == events[2]
    assert inspector.text == "Hi there" and inspector.usage == Usage(12, 3)


def test_an_event_without_end_is_bounded_and_split_linearly() -> None:
    """An upstream that never sends a blank line: the pending event is set aside chunk by chunk
    (never searched again) and past the bound the stream fails, not the process's memory."""
    from sentinel.errors import UpstreamError
    from sentinel.quota.usage import EventSplitter

    splitter = EventSplitter(max_event_bytes=1000)
    assert splitter.feed(b"data: {") == [] and splitter.feed(b'"a": 1}\r') == []
    assert splitter.feed(b"\n\r\ndata: x") == [b'data: {"a": 1}']  # a blank line across two chunks
    with pytest.raises(UpstreamError) as failed:
        for _ in range(100):
            splitter.feed(b"y" * 100)
    assert failed.value.code == "stream_event_too_large"
    with pytest.raises(UpstreamError):  # the unfinished tail of a chunk that also ended an event
        EventSplitter(max_event_bytes=1000).feed(b"data: x\n\n" + b"y" * 2000)


@pytest.mark.parametrize(
    ("endpoint", "body", "expected"),
    [
        ("chat", {"usage": {"prompt_tokens": 5, "completion_tokens": 2}}, Usage(5, 2)),
        ("embeddings", {"usage": {"prompt_tokens": 8, "total_tokens": 8}}, Usage(8, 0)),
        ("responses", {"usage": {"input_tokens": 4, "output_tokens": 6}}, Usage(4, 6)),
        ("chat", {"usage": {"prompt_tokens": 0, "completion_tokens": 0}}, None),  # a placeholder, not usage
        ("chat", {"usage": {"prompt_tokens": "5", "completion_tokens": 2}}, None),
        # Either naming is read whatever the endpoint (images and pass-through answers use input/output).
        ("responses", {"usage": {"prompt_tokens": 5, "completion_tokens": 2}}, Usage(5, 2)),
        ("chat", {"usage": {"input_tokens": 5, "output_tokens": 2}}, Usage(5, 2)),
        ("chat", {"choices": []}, None),
        ("chat", [1, 2], None),
        ("chat", None, None),
    ],
)
def test_usage_from_body(endpoint: str, body: Any, expected: Usage | None) -> None:
    assert usage_from_body(endpoint, body) == expected


def test_text_from_bodies_of_every_endpoint() -> None:
    chat = {"choices": [{"message": {"content": "It is sunny.", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}}, "junk"]}
    assert text_from_body("chat", chat) == 'It is sunny.get_weather{"city":"Paris"}'
    assert text_from_body("completions", {"choices": [{"text": "a"}, {"text": None}, {"text": "b"}]}) == "ab"
    responses = {"output": [
        {"type": "message", "content": [{"type": "output_text", "text": "Hello"}, "junk"]},
        {"type": "function_call", "name": "f", "arguments": '{"x":1}'},
        {"type": "message", "content": " again"},
        "junk",
    ]}
    assert text_from_body("responses", responses) == 'Hello{"x":1} again'
    assert text_from_body("chat", "not a body") == ""


# --- the answer's own usage, read backwards from the end of a large answer -------------------------
OWN = {"input_tokens": 500, "output_tokens": 7}
ECHOED = {"input_tokens": 1, "output_tokens": 1}


@pytest.mark.parametrize("keep", [10_000, 200, 131])  # 131: from the comma before the key
def test_only_the_top_level_usage_counts(keep: int) -> None:
    answer = {"tools": [{"parameters": {"usage": ECHOED}}], "note": 'a "usage": {"input_tokens": 2}',
              "usage": OWN, "user": None, "metadata": {"usage": "x", 'k"usage': '{"input_tokens":3}', "t": "\\\\"}}
    raw = orjson.dumps(answer)
    assert top_level_value(raw[-keep:] + b"\n", b"usage") == OWN


@pytest.mark.parametrize("raw", [
    orjson.dumps({"data": {"usage": ECHOED}}),  # nested only
    orjson.dumps({"usage": OWN, "metadata": {"m": "x" * 200}})[-150:],  # cut before the key
    b'{"usage": {"input_tokens": 1',  # truncated
    b"",
])
def test_no_top_level_usage_is_none(raw: bytes) -> None:
    assert top_level_value(raw, b"usage") is None


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        ({"function_call": {"name": "weather", "arguments": '{"city": "Oslo"}'}}, 'weather{"city": "Oslo"}'),
        ({"refusal": "I can't help with that."}, "I can't help with that."),
        ({"reasoning_content": "Let me think step by step."}, "Let me think step by step."),
        ({"reasoning": "First, the premise."}, "First, the premise."),
        ({"audio": {"id": "a1", "data": "UklGR...", "transcript": "Hello there"}}, "Hello there"),
        ({"content": "Hi", "reasoning_content": " and why"}, "Hi and why"),
    ],
)
def test_a_cut_stream_counts_every_kind_of_output_it_relayed(delta: dict[str, Any], text: str) -> None:
    """Only `content` and `tool_calls` were read: a stream of legacy function-call arguments,
    refusals, a provider's streamed reasoning or an audio answer, cut before its usage chunk, was
    charged no output at all."""
    inspector = StreamInspector("chat")
    chunk = {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
    inspector.feed(b"data: " + orjson.dumps(chunk) + b"\n\n")
    assert inspector.text == text and inspector.usage is None
    message = {"choices": [{"index": 0, "message": {"role": "assistant", **delta}}]}
    assert text_from_body("chat", message) == text  # the same output, not streamed


def test_reasoning_sent_under_both_names_is_counted_once() -> None:
    """Some servers send the same text as `reasoning` and `reasoning_content`."""
    message = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Yes.",
                                                   "reasoning_content": "Because.", "reasoning": "Because."}}]}
    assert text_from_body("chat", message) == "Yes.Because."


def test_usage_without_its_output_figure_is_not_a_measured_zero() -> None:
    """`completion_tokens` (or `output_tokens`) missing was read as 0 output, measured: the answer's
    text went uncounted. Only embeddings report no output."""
    assert usage_from_body("chat", {"usage": {"prompt_tokens": 12, "total_tokens": 412}}) is None
    assert usage_from_body("responses", {"usage": {"input_tokens": 12, "total_tokens": 412}}) is None
    assert usage_from_body("embeddings", {"usage": {"prompt_tokens": 12, "total_tokens": 12}}) == Usage(12, 0)


DEEP = "[" * 300 + "]" * 300  # orjson reads 1,024 levels but writes only 255


@pytest.mark.parametrize(
    ("endpoint", "raw", "expected"),
    [
        ("responses", '{"type": "response.failed", "response": {"error": {"message": "org-123"}, "x": DEEP}}',
         {"type": "response.failed", "response": {"object": "response", "status": "failed", "error": {
             "code": "server_error", "message": "Provider openai failed during the stream"}}}),
    ],
)
def test_an_error_event_too_deep_to_write_back_is_replaced_by_a_generic_one(
    endpoint: str, raw: str, expected: dict[str, Any]
) -> None:
    """Re-writing the redacted event raised a JSONEncodeError: the relay cut the client's connection
    mid-stream and recorded the request as a success."""
    inspector = StreamInspector(endpoint)
    sent = inspector.feed(b"data: " + raw.replace("DEEP", DEEP).encode() + b"\n\n") + inspector.flush()
    sent += inspector.done  # `response.failed` is held back, to be sent last
    assert orjson.loads(sent.removeprefix(b"data: ")) == expected
    assert b"org-123" not in sent


SECRET = "org-123 over its quota of 30000"
GENERIC = "Provider openai failed during the stream"


@pytest.mark.parametrize(
    ("endpoint", "raw", "expected"),
    [
        # A string error (TGI, proxies): relayed whole, as the SDK raises it.
        ("chat", b'data: {"error": "org-123 over its quota of 30000"}',
         {"error": {"type": "upstream_error", "message": GENERIC}}),
        # OpenRouter's `metadata.raw` quotes the provider's own error answer.
        ("chat", b'data: {"error": {"code": 502, "message": "x", "metadata": {"raw": "org-123 over its quota of 30000"}}}',
         {"error": {"code": 502, "type": "upstream_error", "message": GENERIC}}),
        # One JSON value over two `data` lines: the SDK joins them (and raised the provider's message).
        ("chat", b'data: {"error":\ndata: {"message": "org-123 over its quota of 30000", "type": "server_error"}}',
         {"error": {"type": "server_error", "message": GENERIC}}),
        ("responses", b'data: {"type": "error", "code": "rate_limit_exceeded", "message": "x", "param": null, '
                      b'"sequence_number": 4, "detail": "org-123 over its quota of 30000"}',
         {"type": "error", "code": "rate_limit_exceeded", "param": None, "message": GENERIC, "sequence_number": 4}),
        ("responses", b'data: {"type": "response.failed", "response": {"id": "r", "error": "org-123 over its quota of 30000"}}',
         {"type": "response.failed", "response": {"id": "r", "error": {"message": GENERIC}}}),
        # The event's other fields: the provider's request id, a proxy's, an OpenRouter chunk's own,
        # nesting deeper than orjson writes (it wrote a generic error, its `param` lost).
        ("chat", b'data: {"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "error"}], '
                 b'"request_id": "req_1", "proxy": {"account": "org-123 over its quota of 30000"}, '
                 b'"error": {"message": "x", "type": "server_error", "code": "overloaded"}}',
         {"error": {"type": "server_error", "code": "overloaded", "message": GENERIC}}),
        ("completions", b'data: {"request_id": "req_1", "detail": "org-123 over its quota of 30000", "error": {"message": "x"}}',
         {"error": {"type": "upstream_error", "message": GENERIC}}),
        ("chat", ('data: {"error": {"message": "org-123 over its quota of 30000", "param": "p"}, "x": ' + DEEP + "}").encode(),
         {"error": {"param": "p", "type": "upstream_error", "message": GENERIC}}),
        ("responses", b'data: {"type": "response.failed", "sequence_number": 3, "request_id": "req_1", '
                      b'"detail": "org-123 over its quota of 30000", "response": {"id": "r", "error": {"code": "c"}}}',
         {"type": "response.failed", "sequence_number": 3, "response": {"id": "r", "error": {"code": "c", "message": GENERIC}}}),
    ],
)
def test_a_relayed_error_event_of_any_shape_carries_no_provider_text(
    endpoint: str, raw: bytes, expected: dict[str, Any]
) -> None:
    """Only an error object's `message` was replaced: an error that was a string, the provider's text
    in another field of it, or an error event whose JSON spans two `data` lines (read line by line,
    it was read as none) reached the client with the provider's message, naming the company's
    account. The error keeps its labels (type, code, param) and gets the generic message."""
    inspector = StreamInspector(endpoint)
    sent = inspector.feed(raw + b"\n\n") + inspector.flush() + inspector.done
    assert b"org-123" not in sent
    assert sent.count(b"data: ") == 1 and sent.endswith(b"\n\n")
    assert orjson.loads(sent.removeprefix(b"data: ")) == expected


def test_a_usage_chunk_over_two_data_lines_is_read() -> None:
    """An event's data is its `data` lines joined (as the SDKs read it): a usage chunk written over two
    lines went unread, and the stream was charged its streamed text instead of the provider's count."""
    inspector = StreamInspector("chat", strip_usage_chunk=True)
    split = b'data: {"id": "c1", "choices": [],\ndata:  "usage": {"prompt_tokens": 500, "completion_tokens": 300}}\n\n'
    sent = inspector.feed(delta("Hi") + split + DONE)
    assert inspector.usage == Usage(500, 300)
    assert b"usage" not in sent  # the usage-only chunk Sentinel asked for is still stripped


# --- a Responses answer's hosted-tool items ----------------------------------------------------------
TOOL_LIST = {"type": "mcp_list_tools", "id": "mcpl_1", "server_label": "x", "tools": [
    {"name": "lookup", "description": "Looks things up in the manual", "annotations": None,
     "input_schema": {"type": "object", "properties": {"a_property_name_the_model_reads": {"type": "string"}}}}]}
MCP_CALL = {"type": "mcp_call", "id": "mcp_1", "server_label": "x", "name": "lookup",
            "arguments": '{"query": "chapter nine"}', "output": "Chapter nine says the valve opens", "error": None}
CODE = {"type": "code_interpreter_call", "id": "ci_1", "container_id": "cntr_1", "status": "completed",
        "code": "print(6 * 7)", "outputs": [{"type": "logs", "logs": "42 and the log lines"}]}
IMAGE = {"type": "image_generation_call", "id": "ig_1", "status": "completed", "result": "iVBORw0KGgo" * 100,
         "revised_prompt": "a lighthouse at dusk"}
SCREENSHOT = {"type": "computer_call_output", "id": "cuo_1", "call_id": "call_9",
              "output": {"type": "computer_screenshot", "image_url": "data:image/png;base64,iVBORw0KGgo"}}
MESSAGE = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
           "content": [{"type": "output_text", "text": "The valve opens", "annotations": []}]}
FUNCTION = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": '{"x": 1}'}


def item_events(item: dict[str, Any], *deltas: tuple[str, str]) -> list[bytes]:
    """An output item as a stream carries it: added (without its results), its deltas, done (whole)."""
    empty = {key: value for key, value in item.items() if key in ("type", "id", "server_label", "name")}
    return [event({"type": "response.output_item.added", "output_index": 0, "item": empty}),
            *(event({"type": kind, "item_id": item["id"], "delta": text}) for kind, text in deltas),
            event({"type": "response.output_item.done", "output_index": 0, "item": item})]


def test_the_models_own_calls_are_not_read_input() -> None:
    """A patch's diff streams as deltas (output) and a computer or local-shell action is the model's:
    they were charged again, whole, as read input when the stream was cut (a 30 KB diff twice)."""
    diff = "+ a line of the patch\n" * 1500
    patch = {"type": "apply_patch_call", "id": "apc_1", "call_id": "call_p", "status": "completed",
             "operation": {"type": "update_file", "path": "a.py", "diff": diff}}
    computer = {"type": "computer_call", "id": "cu_1", "call_id": "call_c", "status": "completed",
                "action": {"type": "type", "text": "a long thing the model typed " * 200}}
    shell = {"type": "local_shell_call", "id": "ls_1", "call_id": "call_s", "status": "completed",
             "action": {"type": "exec", "command": ["echo", "the model's command " * 200]}}
    inspector = StreamInspector("responses")
    feed_all(inspector, [*item_events(patch, ("response.apply_patch_call_operation_diff.delta", diff)),
                         *item_events(computer), *item_events(shell)])
    assert inspector.read_input == ("", 0)
    assert diff in inspector.text  # output, once


def test_hosted_tool_items_streamed_are_read_input() -> None:
    """A hosted tool's item (an MCP server's tool list, a call's output, code logs) is input the model
    reads in the steps that follow, and only `response.completed` counts it; the inspector read only
    `delta` strings, so a stream cut before that usage was charged the estimate and the text (an
    80k-token tool list and call output free). The items are `read_input` now, each once (from its
    `.done`), but for what the model wrote (a call's arguments, code: output, streamed as deltas) and
    images; the model's own items (a message, a function call) stay output alone."""
    inspector = StreamInspector("responses")
    feed_all(inspector, [
        *item_events(TOOL_LIST),
        *item_events(MCP_CALL, ("response.mcp_call_arguments.delta", MCP_CALL["arguments"])),
        *item_events(CODE, ("response.code_interpreter_call_code.delta", CODE["code"])),
        *item_events(IMAGE), *item_events(SCREENSHOT),
        *item_events(MESSAGE, ("response.output_text.delta", "The valve opens")),
        *item_events(FUNCTION, ("response.function_call_arguments.delta", FUNCTION["arguments"])),
    ])
    text, tokens = inspector.read_input
    for read in ("Looks things up in the manual", "a_property_name_the_model_reads", "input_schema",
                 "Chapter nine says the valve opens", "42 and the log lines", "a lighthouse at dusk", "computer_screenshot"):
        assert read in text, read
    for unread in ("chapter nine", "print(6 * 7)", "iVBORw0KGgo", "The valve opens", '{"x": 1}', "mcpl_1", "call_9"):
        assert unread not in text, unread
    assert tokens == 2 + OPENAI_MAX_IMAGE_TOKENS  # `annotations` and `error`: null; the screenshot (unreadable)
    assert inspector.text == '{"query": "chapter nine"}print(6 * 7)The valve opens{"x": 1}'  # output, as before
    assert inspector.usage is None
    plain = StreamInspector("responses")  # no hosted tools: nothing read
    feed_all(plain, item_events(MESSAGE, ("response.output_text.delta", "Hi")))
    assert plain.read_input == ("", 0)
    body = {"output": [TOOL_LIST, MCP_CALL, CODE, MESSAGE, FUNCTION], "usage": None}  # not streamed
    assert output_read("responses", body)[0].count("Chapter nine") == 1 and "The valve opens" not in output_read(
        "responses", body)[0]
    assert output_read("chat", body) == ("", 0)


def test_hosted_tool_text_kept_is_bounded() -> None:
    """The read text is kept to count at settlement up to READ_KEPT_CHARS; an item past it is counted
    as it arrives (a token per 4 bytes) and not kept: a stream of many large items holds no more."""
    inspector = StreamInspector("responses")
    output = "w" * (READ_KEPT_CHARS // 2)
    items = [{**MCP_CALL, "id": f"mcp_{i}", "output": output, "error": None} for i in range(5)]
    feed_all(inspector, [e for item in items for e in item_events(item)])
    text, tokens = inspector.read_input
    assert len(text) <= READ_KEPT_CHARS and text.count(output) == 1
    assert tokens >= 4 * len(output) // 4 and tokens < 5 * len(output) // 4  # the four past the bound


def test_data_orjson_refuses_is_read_as_the_sdks_read_it_up_to_a_size() -> None:
    assert read_as_sdks(b'{"a":"x\\ud83d y","b":NaN,"c":-Infinity,"d":"\xff"}') == {
        "a": "x? y", "b": None, "c": None, "d": "\ufffd"}
    assert read_as_sdks(b'{"a":"x\\ud83d\\ude00"}') == {"a": "x\U0001f600"}  # a whole pair is a character
    assert read_as_sdks(b"[" * 5000) is None and read_as_sdks(b"{oops}") is None
    big = b'{"a":"' + b"x" * LENIENT_MAX_BYTES + b'\\ud83d"}'
    assert read_as_sdks(big) is None  # (the slow reader is not run on large events)


def test_the_audio_answers_a_stream_names_are_kept_within_a_bound() -> None:
    """A chat answer names one audio answer per choice (`n` is at most 128): kept to record as the
    caller's. A provider naming a new id in every chunk grew the map (and the store writes made of it
    at settlement) without end; past the bound, and for an id no store key can hold, nothing is kept
    (unowned: unreachable through Sentinel)."""
    inspector = StreamInspector("chat")
    for i in range(300):
        audio = {"id": f"audio_{i}", "transcript": "hi", **({"expires_at": 1_800_000_000} if i == 3 else {})}
        inspector.feed(event({"id": "c1", "choices": [{"index": 0, "delta": {"audio": audio}}]}))
    long_id = {"audio": {"id": "a" * 201}}
    inspector.feed(event({"id": "c1", "choices": [{"index": 0, "delta": long_id}]}))
    assert list(inspector.audio) == [f"audio_{i}" for i in range(128)]
    inspector.feed(event({"id": "c1", "choices": [{"index": 0, "delta": {"audio": {"id": "audio_5", "expires_at": 7}}}]}))
    assert (inspector.audio["audio_3"], inspector.audio["audio_5"], len(inspector.audio)) == (1_800_000_000, 7, 128)


def test_the_items_a_responses_stream_shows_are_kept_within_a_bound() -> None:
    """A response's output items (`response.output_item.added`/`.done`, the terminal event's output)
    are kept to record as the caller's; a provider naming a new item without end keeps no more than
    MAX_ANSWER_ITEMS, and an id no store key can hold is not kept."""
    inspector = StreamInspector("responses")
    inspector.feed(event({"type": "response.output_item.added", "item": {"type": "message", "id": "msg_1"}}))
    inspector.feed(event({"type": "response.output_item.done", "item": {"type": "message", "id": "msg_1"}}))
    inspector.feed(event({"type": ["x"], "item": {"id": "msg_x"}}))
    inspector.feed(event({"type": "response.output_item.done", "item": {"id": "m" * 201}}))
    for i in range(300):
        inspector.feed(event({"type": "response.output_item.added", "item": {"type": "function_call", "id": f"fc_{i}"}}))
    assert list(inspector.items) == ["msg_1", *(f"fc_{i}" for i in range(127))]
    completed = StreamInspector("responses")
    completed.feed(event({"type": "response.completed", "response": {"id": "resp_1", "output": [
        {"type": "reasoning", "id": "rs_1"}, {"type": "message", "id": "msg_2"}]}}))
    assert list(completed.items) == ["rs_1", "msg_2"]


def test_usages_summed_stay_within_max_tokens() -> None:
    from sentinel.domain.numbers import MAX_TOKENS

    big = Usage(MAX_TOKENS, MAX_TOKENS, 0, MAX_TOKENS)
    assert big.plus(big) == Usage(MAX_TOKENS, MAX_TOKENS, 0, MAX_TOKENS)
    assert Usage(10, 5, 2, 3).plus(Usage(2, 1, 1, 1)) == Usage(12, 6, 3, 4)


def test_a_provider_failure_before_any_of_the_answer_leaves_it_unserved() -> None:
    """The provider's error (chat's and legacy completions' error chunk) before any choice carried some
    of the answer — the opening role or an empty text is none — gave the client no output (`unserved`:
    charged none); after a word or a finish reason, or without an error, it is not."""
    error = event({"error": {"message": "x", "type": "server_error"}})

    def unserved(endpoint: str, *choices: dict[str, Any], failing: bool = True) -> bool:
        inspector = StreamInspector(endpoint)
        feed_all(inspector, [*(event({"id": "c1", "choices": [c]}) for c in choices), *([error] if failing else [])])
        return inspector.unserved

    role = {"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None}, "finish_reason": None}
    assert unserved("chat") and unserved("chat", role)
    assert not unserved("chat", role, {"index": 0, "delta": {"content": "Hi"}})
    assert not unserved("chat", {"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1"}]}})
    assert not unserved("chat", {"index": 0, "delta": {}, "finish_reason": "length"})
    assert not unserved("chat", role, failing=False)
    assert unserved("completions", {"index": 0, "text": "", "finish_reason": None})
    assert not unserved("completions", {"index": 0, "text": "Hi", "finish_reason": None})


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"type": "duration", "seconds": 9.2}, Usage(92, 0)),  # whisper-1: 10 tokens a second of audio
        ({"type": "duration", "seconds": 0.01}, Usage(1, 0)),  # rounded up
        ({"type": "duration", "seconds": 3600}, Usage(36_000, 0)),
        ({"type": "duration", "seconds": 0}, None),
        ({"type": "duration", "seconds": -5}, None),
        ({"type": "duration", "seconds": "60"}, None),
        ({"type": "duration", "seconds": True}, None),
        ({"type": "duration", "seconds": 1e300}, None),  # past any count believed
        ({"type": "duration"}, None),
        # gpt-4o-transcribe bills tokens, and says so
        ({"type": "tokens", "input_tokens": 14, "output_tokens": 45, "total_tokens": 59}, Usage(14, 45)),
    ],
)
def test_a_usage_billed_by_audio_length_is_its_audio_tokens(usage: dict[str, Any], expected: Usage | None) -> None:
    assert usage_from_body("/v1/audio/*", {"text": "hi", "usage": usage}) == expected
