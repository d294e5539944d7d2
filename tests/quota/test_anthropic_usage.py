"""Metering Anthropic Messages: image sizes and their token rule, the admission estimate, usage from
answers and streams (cache writes and reads included in input, and kept on their own)."""

from __future__ import annotations

import base64
import json
import struct

import orjson
import pytest

from sentinel.domain.usage import Usage
from sentinel.quota.anthropic_usage import (
    AnthropicStreamInspector,
    estimate_messages,
    json_text,
    message_read,
    message_steps,
    message_text,
    message_usage,
)
from sentinel.quota.estimate import estimate_input, max_output
from sentinel.quota.images import (
    GIF_MAX_SUB_BLOCKS,
    JPEG_MAX_MARKERS,
    MAX_IMAGE_TOKENS,
    base64_image_tokens,
    image_size,
    image_tokens,
)
from sentinel.quota.tokens import TokenCounter
from sentinel.quota.usage import usage_from_body
from tests.support.media import gif, gif_comment, jpeg, png
from tests.support.payloads import SERVER_ID, resent_blocks


@pytest.mark.parametrize("raw, size", [
    (png(800, 600), (800, 600)),
    (gif(320, 200), (320, 200)),
    (jpeg(1024, 768), (1024, 768)),
    (b"RIFF" + bytes(4) + b"WEBPVP8X" + bytes(8) + (639).to_bytes(3, "little") + (479).to_bytes(3, "little"), (640, 480)),
    (b"not an image at all", None),
])
def test_image_sizes(raw: bytes, size: tuple[int, int] | None) -> None:
    assert image_size(raw) == size


def test_a_gif_is_as_large_as_its_first_frame() -> None:
    """Pillow grows a GIF to hold a frame past its logical screen (libvips takes the largest frame):
    a 1 x 1 screen around a 2048 x 2048 frame was read as 1 x 1 (gpt-4o-mini: 8,500 tokens for an
    image billed 25,501). Its size is the screen grown to its first frame's, found past the global
    color table and any extensions; a first frame not found (past GIF_MAX_SUB_BLOCKS data blocks, or
    not there at all) is a size not read: the rule's most."""
    assert image_size(gif(1, 1, (0, 0, 2048, 2048))) == (2048, 2048)
    assert image_size(gif(100, 100, (90, 10, 50, 50), palette=False)) == (140, 100)
    assert image_size(gif(640, 480, (0, 0, 10, 10))) == (640, 480)  # a small frame: the screen's
    netscape = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    assert image_size(gif(1, 1, (0, 0, 1500, 900), extensions=netscape + gif_comment(b"x" * 5000))) == (1500, 900)
    assert image_size(gif(1, 1, (0, 0, 1500, 900), extensions=gif_comment(b"x" * (GIF_MAX_SUB_BLOCKS + 1), block=1))) is None
    assert image_size(gif(1, 1)[:-16]) is None  # ends before its first frame
    assert image_size(b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0, 0, 0) + b"\x3b") is None  # no frame at all


def jpeg_after(markers: bytes, width: int = 1024, height: int = 768) -> bytes:
    """A JPEG whose frame header (its size) follows `markers`."""
    whole = jpeg(width, height)
    return whole[:2] + markers + whole[2:]


def test_a_jpeg_size_is_read_from_its_first_markers_only() -> None:
    """The markers before a JPEG's size are read one by one: 64 KiB of fill bytes or length-less
    markers (~87 KB of base64) cost ~7 ms an image, ~1 s of a 10 MiB body's estimate. A real file's
    size follows a handful of segments; past JPEG_MAX_MARKERS the size is unknown (the rule's most)."""
    app = b"\xff\xe1" + struct.pack(">H", 18) + bytes(16)
    assert image_size(jpeg_after(app * 20 + b"\xff" * 10 + b"\xff\xd0" * 10)) == (1024, 768)
    assert image_size(jpeg_after(b"\xff" * (JPEG_MAX_MARKERS - 2))) == (1024, 768)  # (and APP0: the last one read)
    for flood in (b"\xff" * JPEG_MAX_MARKERS, b"\xff\xd0" * JPEG_MAX_MARKERS, b"\xff" * 65_536):
        assert image_size(jpeg_after(flood)) is None
        assert base64_image_tokens(base64.b64encode(jpeg_after(flood)).decode()) == MAX_IMAGE_TOKENS


def test_image_token_rule() -> None:
    assert image_tokens(750, 1) == 1
    assert image_tokens(1000, 1000) == 1334  # ceil(1e6 / 750)
    assert image_tokens(4000, 3000) == MAX_IMAGE_TOKENS  # scaled to 1568 long edge, then capped
    assert base64_image_tokens(base64.b64encode(png(200, 150)).decode()) == 40
    assert base64_image_tokens("%%%not base64") == MAX_IMAGE_TOKENS


def test_estimate_counts_system_tools_images_and_tool_blocks() -> None:
    counter = TokenCounter()
    base = {"model": "claude-x", "max_tokens": 77, "messages": [{"role": "user", "content": "hello"}]}
    plain = estimate_messages(counter, "claude-x", base)
    assert plain == 3 + 3 + counter.count_text("hello", "claude-x")
    with_system = estimate_messages(counter, "claude-x", {**base, "system": [{"type": "text", "text": "be terse"}]})
    assert with_system == plain + counter.count_text("be terse", "claude-x")
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(png(200, 150)).decode()}}
    url_image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    with_images = estimate_messages(counter, "claude-x", {**base, "messages": [
        {"role": "user", "content": [image, url_image, {"type": "text", "text": "hello"}]}]})
    assert with_images == plain + 40 + MAX_IMAGE_TOKENS
    # Only a base64 source's data is read: a URL (or untyped) source's stray `data`, a tiny image the
    # provider never sees, was what the fetched image was estimated at.
    decoys = [{"type": "image", "source": {**source, "data": image["source"]["data"]}}
              for source in ({"type": "url", "url": "https://example.com/a.png"}, {})]
    assert estimate_messages(counter, "claude-x", {**base, "messages": [
        {"role": "user", "content": [*decoys, {"type": "text", "text": "hello"}]}]}) == plain + 2 * MAX_IMAGE_TOKENS
    tools = [{"name": "lookup", "input_schema": {"type": "object"}}]
    assert estimate_messages(counter, "claude-x", {**base, "tools": tools}) > plain
    hostile = {"model": "claude-x", "messages": [None, {"content": [7, {"type": "tool_result", "content": {}}]}],
               "system": 5, "tools": "x"}
    assert estimate_messages(counter, "claude-x", hostile) == 3 + 3
    assert estimate_input(counter, "messages", "claude-x", base) == plain
    assert max_output("messages", base, 4096) == 77



def test_documents_search_results_and_thinking_are_counted() -> None:
    """A text document, a content document, a search result and a thinking block are prompt text
    (once estimated at nothing: a 10,000-token document was admitted at 6 tokens)."""
    counter = TokenCounter()
    base = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hello"}]}
    plain = estimate_messages(counter, "claude-x", base)
    words = " ".join(f"word{i}" for i in range(500))
    blocks = [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": words}, "title": "T"},
        {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": words}]}},
        {"type": "search_result", "source": "https://example.com", "title": "R",
         "content": [{"type": "text", "text": words}]},
    ]
    for block in blocks:
        body = {**base, "messages": [{"role": "user", "content": [block, {"type": "text", "text": "hello"}]}]}
        assert estimate_messages(counter, "claude-x", body) >= plain + counter.count_text(words, "claude-x"), block
    thinking = {"role": "assistant", "content": [{"type": "thinking", "thinking": words, "signature": "s"}]}
    body = {**base, "messages": [*base["messages"], thinking]}
    assert estimate_messages(counter, "claude-x", body) >= plain + counter.count_text(words, "claude-x")


def test_a_pdf_sent_as_data_is_estimated_by_its_pages() -> None:
    """A base64 PDF `document` (on its own or inside a server tool's result sent back) is the image
    of each page under the request's rule (a letter page: 647 tokens under Anthropic's); one by URL
    is reserved as 100 pages, one by file id and any other base64 file are not. An answer's PDF read by a server tool is
    not counted at settlement (on the event loop): the provider's usage counts it."""
    counter = TokenCounter()
    pdf = base64.b64encode(b"%PDF-1.4\n" + b"<</Type /Page>>" * 3).decode()
    base = {"model": "claude-x", "max_tokens": 5}

    def estimate(*blocks: dict[str, object]) -> int:
        body = {**base, "messages": [{"role": "user", "content": [*blocks, {"type": "text", "text": "hi"}]}]}
        return estimate_messages(counter, "claude-x", body)

    plain = estimate()
    document = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": pdf}}
    assert estimate(document) == plain + 3 * 647
    fetched = {"type": "web_fetch_tool_result", "tool_use_id": SERVER_ID,
               "content": {"type": "web_fetch_result", "url": "u", "content": document}}
    assert estimate(fetched) >= plain + 3 * 647
    # A PDF by URL is the longest a request may hold, 100 pages (estimated at nothing, a burst of them
    # passed an input limit); one by file id is refused before any estimate (no file is the caller's).
    url = {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}
    assert estimate(url) == plain + 100 * 647
    # ... per request (the provider reads 100 pages of a request's PDFs): once however many, at any depth
    inside = {"type": "web_fetch_tool_result", "tool_use_id": SERVER_ID,
              "content": {"type": "web_fetch_result", "url": "u", "content": url}}
    assert estimate(url, url, inside) == estimate(inside) < plain + 2 * 100 * 647
    for source in ({"type": "file", "file_id": "file_1"},
                   {"type": "base64", "media_type": "application/pdf", "data": base64.b64encode(b"text").decode()}):
        assert estimate({"type": "document", "source": source}) < plain + 647, source
    text, tokens = message_read({"content": [fetched]})
    assert tokens < 647 and pdf not in text


WORDS = " ".join(f"word{i}" for i in range(500))


@pytest.mark.parametrize("kind", list(resent_blocks("")))
def test_blocks_without_a_rule_of_their_own_have_their_text_counted(kind: str) -> None:
    """A block type the estimate had no rule for was skipped: a previous turn's server-tool result
    sent back (code output, a fetched page, MCP's), redacted thinking, a type added later carried
    any amount of text at a few tokens (~20,000 admitted at 14 under a 5,000-token plan). Every
    string of such a block is counted now, its structural labels aside."""
    counter = TokenCounter()
    base = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hello"}]}
    plain = estimate_messages(counter, "claude-x", base)
    turn = {"role": "assistant", "content": [resent_blocks(WORDS)[kind]]}
    body = {**base, "messages": [*base["messages"], turn, {"role": "user", "content": "go on"}]}
    estimate = estimate_messages(counter, "claude-x", body)
    floor = plain + 3 + counter.count_text("go on", "claude-x") + counter.count_text(WORDS, "claude-x")
    assert floor <= estimate <= floor + 60, (kind, estimate - floor)


def test_what_the_walk_leaves_out_and_images_inside() -> None:
    """A block's own short labels (`type`, `id`, `tool_use_id`), `cache_control` and `citations`
    (Anthropic bills no `cited_text` sent back) are not text (deeper, they are); an image in a
    result keeps the pixel rule (its base64 is not text), not one in a tool's input; a block nested
    past MAX_JSON_DEPTH is not read, without recursing that deep."""
    counter = TokenCounter()
    base = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hello"}]}
    plain = estimate_messages(counter, "claude-x", base)

    def with_block(block: dict) -> int:
        return estimate_messages(counter, "claude-x", {**base, "messages": [
            {"role": "user", "content": [block, {"type": "text", "text": "hello"}]}]})

    labels = {"type": "future_block", "id": SERVER_ID, "tool_use_id": SERVER_ID,
              "cache_control": {"type": "ephemeral", "ttl": "1h"},
              "citations": [{"type": "char_location", "cited_text": WORDS}]}
    assert with_block(labels) == plain
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(png(200, 150) + bytes(30_000)).decode()}}
    with_image = with_block({"type": "mcp_tool_result", "tool_use_id": "m", "content": [image]})
    assert plain + 40 <= with_image <= plain + 40 + 2  # the key "content"
    # Below the block's top level nothing is a label or unbilled, and a tool's input is text
    # whatever its shape: short ids, types and citations, or a made-up image, carried text free.
    labelled = [{"id": f"{i:060}", "type": f"{i:060}", "citations": f"{i:060}"} for i in range(300)]
    fake_image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": WORDS}}
    for payload in (labelled, fake_image):
        use = {"type": "mcp_tool_use", "id": "mcptoolu_01", "name": "f", "server_name": "s", "input": {"x": payload}}
        floor = plain + counter.count_text(orjson.dumps(payload).decode(), "claude-x") // 2
        assert with_block(use) > floor, payload
    deep: dict = {"note": WORDS}
    for _ in range(100):
        deep = {"inner": [deep]}
    assert plain < with_block({"type": "future_block", **deep}) < plain + 200


def test_usage_of_answers() -> None:
    body = {"content": [{"type": "text", "text": "hi"}, {"type": "tool_use", "name": "f", "input": {"a": 1}}],
            "usage": {"input_tokens": 10, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 20,
                      "output_tokens": 3}}
    assert message_usage(body) == Usage(35, 3, 5, 20)
    assert message_text(body) == 'hif{"a": 1}'
    assert message_usage({"usage": {"output_tokens": 3}}) is None and message_usage([1]) is None
    openai = {"usage": {"prompt_tokens": 50, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 32}}}
    assert usage_from_body("chat", openai) == Usage(50, 2, 0, 32)


def test_usage_iterations_left_out_of_the_top_level_are_added() -> None:
    """`usage.iterations`: the model's own steps (`message`, `fallback_message`) are what the top-level
    figures sum; a compaction's and an advisor's steps (and a kind added later) are billed besides."""
    def step(kind: str, plain: int, output: int, write: int = 0, read: int = 0) -> dict:
        return {"type": kind, "input_tokens": plain, "output_tokens": output,
                "cache_creation_input_tokens": write, "cache_read_input_tokens": read}

    top = {"input_tokens": 10, "output_tokens": 3, "cache_read_input_tokens": 20}
    summed = [step("message", 4, 1), step("fallback_message", 6, 2, read=20)]
    assert message_usage({"usage": {**top, "iterations": summed}}) == Usage(30, 3, 0, 20)
    apart = [step("compaction", 180_000, 3_500, write=100), step("advisor_message", 9_000, 700, read=50),
             step("added_later", 5, 1), "junk", step("compaction", -1, True)]  # type: ignore[arg-type]
    assert message_usage({"usage": {**top, "iterations": summed + apart}}) == Usage(189_185, 4_204, 100, 70)
    inspector = AnthropicStreamInspector()
    inspector.feed(b'data: {"type":"message_start","message":{"usage":{"input_tokens":10,"output_tokens":1}}}\n\n')
    inspector.feed(b'data: {"type":"content_block_start","index":0,"content_block":'
                   b'{"type":"compaction","content":"the summary"}}\n\n')
    assert inspector.reported_input is None  # message_start's input leaves the compaction out: the estimate
    inspector.feed(b'data: {"type":"message_delta","usage":{"output_tokens":3,"iterations":'
                   + orjson.dumps([step("compaction", 180_000, 3_500), step("message", 10, 3)]) + b'}}\n\n')
    assert inspector.usage == Usage(180_010, 3_503, 0, 0)


def test_the_steps_of_another_model_are_read_with_their_model() -> None:
    """An `advisor_message` step names the model that ran it (the advisor tool's): its usage is read
    apart, whole or streamed, to be priced at that model's prices; a step of the request's model (a
    compaction's, the summed ones) names none and is not."""
    advice = {"type": "advisor_message", "model": "claude-opus-4-8", "input_tokens": 9_000, "output_tokens": 700,
              "cache_creation_input_tokens": 0, "cache_read_input_tokens": 50}
    steps = [{"type": "message", "input_tokens": 4, "output_tokens": 1, "model": "claude-haiku-4-5"}, advice,
             {"type": "compaction", "input_tokens": 100, "output_tokens": 10}, {**advice, "model": 7}]
    usage = {"input_tokens": 10, "output_tokens": 3, "iterations": steps}
    assert message_steps({"usage": usage}) == [("claude-opus-4-8", Usage(9_050, 700, 0, 50))]
    assert message_steps({"usage": {**usage, "input_tokens": -1}}) == []  # no usage read: none apart
    assert message_steps({"usage": {**usage, "iterations": "junk"}}) == [] and message_steps(None) == []
    inspector = AnthropicStreamInspector()
    inspector.feed(b'data: {"type":"message_start","message":{"usage":{"input_tokens":10,"output_tokens":1}}}\n\n')
    assert inspector.steps == []
    inspector.feed(b'data: {"type":"message_delta","usage":{"output_tokens":3,"iterations":'
                   + orjson.dumps(steps) + b'}}\n\n')
    assert inspector.steps == [("claude-opus-4-8", Usage(9_050, 700, 0, 50))]
    # (all counted: a step whose model is not a string is priced at the request's model's prices)
    assert inspector.usage == Usage(10 + 2 * 9_050 + 100, 3 + 2 * 700 + 10, 0, 100)


@pytest.mark.parametrize("value", [
    None, "é\"", 1.5, [], {}, [[[]], {}], {"a": [1, {"b": None, "c": True}], "d": "x"},
])
def test_json_text_is_json_dumps_at_any_depth(value: object) -> None:
    """What the interpreter can recurse through is `json.dumps`'s text; deeper (an answer's tool input,
    up to the 1,024 levels orjson reads), the same text is written without recursion."""
    assert json_text(value) == json.dumps(value)
    deep: object = value
    for _ in range(3000):
        deep = {"k": [deep]}
    assert json_text(deep) == '{"k": [' * 3000 + json.dumps(value) + "]}" * 3000


def sse(kind: str, data: dict) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


def test_stream_inspector_relays_and_holds_back_message_stop() -> None:
    events = [
        sse("message_start", {"message": {"usage": {"input_tokens": 8, "cache_read_input_tokens": 100,
                                                     "cache_creation_input_tokens": 0, "output_tokens": 1}}}),
        sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
        sse("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}}),
        sse("message_stop", {}),
    ]
    whole = b"".join(events)
    inspector = AnthropicStreamInspector()
    relayed = b"".join(inspector.feed(whole[i : i + 7]) for i in range(0, len(whole), 7)) + inspector.flush()
    assert relayed == b"".join(events[:-1]) and inspector.done == events[-1]
    assert inspector.usage == Usage(108, 4, 0, 100) and inspector.text == "Hello"
    cut = AnthropicStreamInspector()
    cut.feed(b"".join(events[:3]))
    assert cut.usage is None and cut.done == b"" and cut.text == "Hello"  # billed by estimate


def test_server_tool_results_streamed_are_read_input() -> None:
    """A server tool's result arrives whole in content_block_start and the model reads it in the
    next step; message_start reports the first step's input only. The inspector kept only tool
    names: a stream cut after a 45k-token page was charged message_start's 50. The results are
    `read_input` now (the estimate's rule), the model's own blocks output as before."""
    page = resent_blocks(WORDS)["web_fetch_tool_result"]
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(png(200, 150)).decode()}}
    events = [
        sse("message_start", {"message": {"usage": {"input_tokens": 50, "output_tokens": 1}}}),
        sse("content_block_start", {"index": 0, "content_block": {"type": "server_tool_use", "id": SERVER_ID,
                                                                   "name": "web_fetch", "input": {}}}),
        sse("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta",
                                                          "partial_json": '{"url": "https://example.com/page"}'}}),
        sse("content_block_stop", {"index": 0}),
        sse("content_block_start", {"index": 1, "content_block": page}),
        sse("content_block_stop", {"index": 1}),
        sse("content_block_start", {"index": 2, "content_block": {
            "type": "mcp_tool_result", "tool_use_id": "m", "content": [image]}}),
    ]
    inspector = AnthropicStreamInspector()
    inspector.feed(b"".join(events))
    text, tokens = inspector.read_input
    assert WORDS in text and "Page" in text and tokens == 40
    assert inspector.text == 'web_fetch{"url": "https://example.com/page"}'  # output: the model's call
    assert inspector.usage is None and inspector.reported_input == Usage(50, 0)
    deep = "{" + '"a": {' * 900 + '"b": "x"' + "}" * 900 + "}"  # orjson reads it; no recursion that deep
    hostile = AnthropicStreamInspector()
    hostile.feed(b'data: {"type": "content_block_start", "index": 0, "content_block": ' + deep.encode() + b"}\n\n")
    assert hostile.read_input[0].count("a") < 70 and "b" not in hostile.read_input[0]
    odd = [{"type": ["text"], "text": "x"}, {"type": {"a": 1}}, {"name": "n"}, {"type": None, "data": "d"}]
    for block in odd:  # an unhashable type once raised on the way in (the relay's exception)
        hostile.feed(sse("content_block_start", {"index": 1, "content_block": block}))
    assert hostile.read_input[0].endswith("d") and message_read({"content": odd})[0].endswith("d")
    answer = {"content": [{"type": "text", "text": "Fetching."}, events_block(events[1]), page],
              "usage": {"input_tokens": 50}}  # malformed usage: no output figure
    assert message_usage(answer) is None
    assert WORDS in message_read(answer)[0] and message_read(answer)[1] == 0 and WORDS not in message_text(answer)
    assert message_text(answer) == 'Fetching.web_fetch{}'


def events_block(event: bytes) -> dict:
    return orjson.loads(event.split(b"data: ", 1)[1])["content_block"]


def test_an_error_event_too_deep_to_write_back_is_relayed_of_its_labels_alone() -> None:
    """orjson reads 1,024 levels but writes 255: re-writing the redacted event raised a JSONEncodeError
    that cut the client's connection mid-stream and left the request recorded as a success. The event
    is rebuilt of its error's labels alone now: its other fields — the provider's `request_id`, what a
    proxy adds, however deep — were relayed as the provider wrote them."""
    deep = "[" * 300 + "]" * 300
    raw = (b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "org-123"}, '
           b'"request_id": "req_0123", "org": "org-123 at its limit", "x": ')
    relayed = AnthropicStreamInspector().feed(raw + deep.encode() + b"}\n\n")
    assert relayed.startswith(b"event: error\ndata: ") and b"org-123" not in relayed
    assert orjson.loads(relayed.split(b"data: ", 1)[1]) == {
        "type": "error", "error": {"type": "overloaded_error", "message": "Provider anthropic failed during the stream"}
    }


@pytest.mark.parametrize(
    "raw",
    [
        b'event: error\ndata: {"type": "error", "error": "Overloaded: org-123 over its quota"}',
        b'event: error\ndata: {"type": "error",\ndata: "error": {"type": "overloaded_error", "message": "org-123 over its quota"}}',
    ],
)
def test_an_error_event_of_any_shape_carries_no_provider_text(raw: bytes) -> None:
    """An `error` that was a string, or an error event whose JSON spans two `data` lines (read line by
    line, it was read as none), reached the client with the provider's message: it is Anthropic's
    error shape with the generic message now, its type kept when it had one."""
    relayed = AnthropicStreamInspector().feed(raw + b"\n\n")
    assert b"org-123" not in relayed and relayed.startswith(b"event: error\ndata: ")
    error = orjson.loads(relayed.split(b"data: ", 1)[1])["error"]
    assert error["message"] == "Provider anthropic failed during the stream"
    assert error["type"] == ("overloaded_error" if b"overloaded_error" in raw else "api_error")


def test_server_tool_results_kept_to_count_are_bounded() -> None:
    """A stream's server-tool results were kept whole (the parsed blocks, a document's base64 data
    too) until the stream ended: up to READ_KEPT_CHARS of their text is kept now, as the Responses
    stream's hosted-tool items are; a result past it is counted as it arrives and not kept."""
    from sentinel.quota.usage import READ_KEPT_CHARS

    page = "w" * (READ_KEPT_CHARS // 2)
    blocks = [{"type": "web_fetch_tool_result", "tool_use_id": f"srvtoolu_{i}",
               "content": {"type": "web_fetch_result", "url": "https://example.com",
                           "content": {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                                                      "data": page}}}} for i in range(5)]
    inspector = AnthropicStreamInspector()
    inspector.feed(b"".join(sse("content_block_start", {"index": i, "content_block": b}) for i, b in enumerate(blocks)))
    text, tokens = inspector.read_input
    assert len(text) <= READ_KEPT_CHARS and text.count(page) == 1
    assert 4 * len(page) // 4 <= tokens < 5 * len(page) // 4  # the four past the bound, a token per 4 bytes
    whole, counted = message_read({"content": blocks})  # what the same blocks answered whole are charged
    assert whole.count(page) == 5 and counted == 0


def test_an_error_before_any_block_of_the_answer_leaves_it_unserved() -> None:
    """The provider's error event right after message_start (its overload): no block of the answer came,
    so no output was generated — its type is kept for routing health (`failed_mid_stream`)."""
    opening = sse("message_start", {"message": {"usage": {"input_tokens": 9, "output_tokens": 1}}})
    overloaded = sse("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})
    at_once = AnthropicStreamInspector()
    at_once.feed(opening + sse("ping", {}) + overloaded)
    assert at_once.unserved and at_once.error_type == "overloaded_error"
    later = AnthropicStreamInspector()
    later.feed(opening + sse("content_block_start", {"index": 0, "content_block": {"type": "thinking", "thinking": ""}})
               + overloaded)
    assert later.failed and not later.unserved and later.error_type == "overloaded_error"
    whole = AnthropicStreamInspector()
    whole.feed(opening)
    assert not whole.unserved and whole.error_type is None
