"""Pass-through media calls whose answer shows no `usage` are held to the plan's token limits
(`sentinel.quota.media_calls`): speech is reserved and charged its `input` text's tokens (and a
gpt-4o-mini-tts answer's audio), a dall-e image what gpt-image-1 bills for its size and quality, a
transcript as `text`/`srt`/`vtt` its audio's length or its text, a Sora video its seconds at its
model's and size's rate, a vector store search with `rewrite_query` its query's tokens. Before, each was charged no token
and reserved none: a user on a token-limited plan ran them at one request each."""

from __future__ import annotations

import asyncio
import base64
import math
from collections.abc import Callable

import pytest

from sentinel.quota.audio import AUDIO_TOKENS_PER_SECOND
from sentinel.quota.images import openai_image_tokens
from sentinel.quota.media import BYTES_PER_TOKEN
from sentinel.quota.media_calls import (
    MAX_VIDEO_SECONDS,
    grader_run_input,
    image_tokens,
    speech_audio_tokens,
    video_tokens,
)
from sentinel.quota.tokens import TokenCounter
from tests.api.conftest import Gateway
from tests.support.attack import SpyUpstream, ledger_rows, openai_error, wait_for
from tests.support.servers import serving
from tests.support.upstream import ScriptedUpstream

SPEECH_TEXT = "The quick brown fox jumps over the lazy dog, again and again, until the day is done. " * 10
MP3 = b"ID3" + b"\x00" * 64
IMAGE = {"created": 1, "data": [{"url": "https://images.example/a.png"}]}


def _start(gateway_factory: Callable[..., Gateway], url: str, plan: str) -> Gateway:
    return gateway_factory(openai_api_url=url + "/v1", passthrough="/v1/audio/*,/v1/images/*", default_plan=plan)


def _row(gw: Gateway) -> dict[str, object]:
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 1)
    [row] = ledger_rows(gw.settings.database_url, "alice")
    return row


def _refused_before_upstream(gw: Gateway, upstream: ScriptedUpstream, call: Callable[[], object], sent: int) -> None:
    import openai

    with pytest.raises(openai.RateLimitError) as refused:
        call()
    assert openai_error(refused.value.response.json())["code"] == "quota_exceeded"
    assert len(upstream.received) == sent  # refused before the provider


@pytest.mark.parametrize("audio", [MP3, MP3 + b"\x00" * (1024 * 1024)], ids=["small", "over 1 MiB"])
def test_speech_is_charged_its_input_text_and_held_to_the_input_limit(
    gateway_factory: Callable[..., Gateway], audio: bytes,
) -> None:
    tokens = TokenCounter().count_text(SPEECH_TEXT, "tts-1")
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = _start(gateway_factory, srv.url, f"requests=100/1h,input_tokens={tokens + tokens // 2}/1h")
        upstream.typed(b"audio/mpeg", audio)
        client = gw.openai()
        spoken = client.audio.speech.create(model="tts-1", voice="alloy", input=SPEECH_TEXT)
        assert spoken.content == audio
        row = _row(gw)
        assert (row["status"], row["input_tokens"], row["output_tokens"]) == (200, tokens, 0)
        # Half the text is left of the limit: the same text again does not fit, and is refused before it runs.
        _refused_before_upstream(
            gw, upstream, lambda: client.audio.speech.create(model="tts-1", voice="alloy", input=SPEECH_TEXT), 1)


def test_speech_of_a_model_billing_audio_tokens_is_charged_its_audio(gateway_factory: Callable[..., Gateway]) -> None:
    audio = speech_audio_tokens("gpt-4o-mini-tts", SPEECH_TEXT)
    assert audio > 0
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = _start(gateway_factory, srv.url, f"requests=100/1h,output_tokens={audio + audio // 2}/1h")
        upstream.typed(b"audio/mpeg", MP3)
        client = gw.openai()
        client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input=SPEECH_TEXT)
        row = _row(gw)
        assert (row["input_tokens"], row["output_tokens"]) == (TokenCounter().count_text(SPEECH_TEXT, "gpt-4o-mini-tts"),
                                                               audio)
        _refused_before_upstream(
            gw, upstream, lambda: client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input=SPEECH_TEXT), 1)


def test_dalle_images_are_charged_per_image_made_and_held_to_the_output_limit(
    gateway_factory: Callable[..., Gateway],
) -> None:
    per_image = image_tokens("dall-e-3", "1792x1024", "hd")
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        # Room for two images: the call asks for three (reserved), the answer shows two (charged).
        gw = _start(gateway_factory, srv.url, f"requests=100/1h,output_tokens={3 * per_image}/1h")
        upstream.json({"created": 1, "data": [*IMAGE["data"], *IMAGE["data"]]})
        client = gw.openai()
        made = client.images.generate(model="dall-e-3", prompt="a lighthouse at dusk", n=3, size="1792x1024",
                                      quality="hd")
        assert len(made.data or []) == 2
        row = _row(gw)
        assert (row["status"], row["output_tokens"]) == (200, 2 * per_image)
        assert row["input_tokens"] == TokenCounter().count_text("a lighthouse at dusk", "dall-e-3")
        # One image's worth is left: two more do not fit, refused before they run.
        _refused_before_upstream(gw, upstream, lambda: client.images.generate(
            model="dall-e-3", prompt="a lighthouse at dawn", n=2, size="1792x1024", quality="hd"), 1)


def _png(width: int, height: int) -> bytes:
    """A PNG's signature and header chunk: all an image's size is read from."""
    return b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big")


def test_a_gpt_image_edit_is_reserved_its_input_images_and_held_to_the_input_limit(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """A gpt-image edit bills the images it is given as input tokens, but reserved only its prompt's:
    an edit of sixteen images far past the plan's input limit was sent (charged its answer's usage
    after), and a burst of edits passed any limit before the first settled. Each image given (an
    upload's `image[]` and `mask`, a JSON body's `images`) is reserved as its size's tiles: an edit that
    can never fit is refused before it is sent, one past what is left waits for the window."""
    prompt = "put a hat on the cat"
    per_image = openai_image_tokens(1024, 1024, model="gpt-image-1")
    edit = TokenCounter().count_text(prompt, "gpt-image-1") + 2 * per_image
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = _start(gateway_factory, srv.url, f"requests=100/1h,input_tokens={edit + edit // 2}/1h")
        upstream.json({**IMAGE, "usage": {"input_tokens": edit, "output_tokens": 0, "total_tokens": edit}})
        client = gw.openai()
        images = [("a.png", _png(1024, 1024)), ("b.png", _png(1024, 1024))]
        _refused_before_upstream(gw, upstream, lambda: client.images.edit(
            model="gpt-image-1", image=images * 8, prompt=prompt), 0)
        client.images.edit(model="gpt-image-1", image=images, prompt=prompt)
        row = _row(gw)
        assert (row["status"], row["input_tokens"]) == (200, edit)  # its answer's usage
        # Half an edit is left of the limit: the same edit again does not fit, refused before it runs
        # (it was admitted: it reserved its prompt alone).
        _refused_before_upstream(gw, upstream, lambda: client.images.edit(
            model="gpt-image-1", image=images, prompt=prompt), 1)
        with gw.client() as alice:  # a JSON edit's images alike
            data_url = "data:image/png;base64," + base64.b64encode(_png(1024, 1024)).decode()
            given = alice.post("/v1/images/edits", json={
                "model": "gpt-image-1", "prompt": prompt, "images": [{"image_url": data_url}] * 2})
        assert given.status_code == 429 and openai_error(given.json())["code"] == "quota_exceeded", given.text
        assert len(upstream.received) == 1


def test_an_image_larger_than_any_openai_model_makes_is_charged_by_its_area(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """A `dall-e-2` image of `4096x4096` (no OpenAI model makes one; a lenient server may) was charged
    as one 1024 x 1024 image: a sixteenth of what it made. It is reserved and charged as the sixteen
    1024 x 1024 images its area covers, and held to the output limit: one such image past it is
    refused before it runs."""
    square = image_tokens("dall-e-2", "1024x1024", None)
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = _start(gateway_factory, srv.url, f"requests=100/1h,output_tokens={16 * square + 8 * square}/1h")
        upstream.json(IMAGE)
        with gw.client() as alice:
            made = alice.post("/v1/images/generations", json={"model": "dall-e-2", "prompt": "a map", "size": "4096x4096"})
            assert made.status_code == 200, made.text
            assert _row(gw)["output_tokens"] == 16 * square
            again = alice.post("/v1/images/generations", json={"model": "dall-e-2", "prompt": "a map", "size": "4096x4096"})
        assert again.status_code == 429, again.text
        assert len(upstream.received) == 1


def test_an_image_variation_upload_is_charged_its_images(gateway_factory: Callable[..., Gateway]) -> None:
    per_image = image_tokens("dall-e-2", "512x512", None)
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = _start(gateway_factory, srv.url, f"requests=100/1h,output_tokens={per_image}/1h")
        upstream.json(IMAGE)
        client = gw.openai()
        client.images.create_variation(image=("cat.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 32), n=1, size="512x512")
        assert _row(gw)["output_tokens"] == per_image
        _refused_before_upstream(gw, upstream, lambda: client.images.create_variation(
            image=("cat.png", b"\x89PNG\r\n\x1a\n"), n=1, size="512x512"), 1)


@pytest.mark.parametrize("kind", ["transcriptions", "translations"])
def test_a_transcript_as_srt_is_charged_its_audio_length(gateway_factory: Callable[..., Gateway], kind: str) -> None:
    srt = "1\n00:00:00,000 --> 00:30:00,000\na long meeting\n\n2\n00:30:00,000 --> 00:59:59,950\nstill going\n"
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = _start(gateway_factory, srv.url, "requests=100/1h,input_tokens=30000/1h")
        upstream.typed(b"text/plain; charset=utf-8", srt.encode())
        client = gw.openai()
        made = getattr(client.audio, kind).create(model="whisper-1", file=("meeting.mp3", MP3), response_format="srt")
        assert "a long meeting" in str(made)
        row = _row(gw)
        assert (row["input_tokens"], row["output_tokens"]) == (math.ceil(3599.95 * AUDIO_TOKENS_PER_SECOND), 0)
        _refused_before_upstream(gw, upstream, lambda: getattr(client.audio, kind).create(
            model="whisper-1", file=("b.mp3", MP3), response_format="srt"), 1)


@pytest.mark.parametrize("words", [400, 250_000], ids=["counted", "over 1 MiB, by its size"])
def test_a_transcript_as_text_is_charged_its_text(gateway_factory: Callable[..., Gateway], words: int) -> None:
    text = "word " * words
    # (an answer over 1 MiB is relayed as it passes, not kept to count: a token per 4 bytes)
    tokens = TokenCounter().count_text(text, "") if words == 400 else -(-len(text) // BYTES_PER_TOKEN)
    _charged_its_text(gateway_factory, text, tokens, then_refused=True)


def test_a_transcript_as_text_saying_a_cue_is_charged_its_text(gateway_factory: Callable[..., Gateway]) -> None:
    # A plain-text transcript is the speaker's words: one that says "--> 00:00:00,001" (spoken, or a
    # prompt's style the model follows) was read as a cue, and the whole text charged one token.
    text = "--> 00:00:00,001 " + "word " * 400
    tokens = TokenCounter().count_text(text, "")
    _charged_its_text(gateway_factory, text, tokens)


def _charged_its_text(gateway_factory: Callable[..., Gateway], text: str, tokens: int, *, then_refused: bool = False) -> None:
    """A transcript asked for as text, answered `text`, is charged `tokens` of output — all a plan of
    that many allows: a next one is refused before the upstream (`then_refused`)."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = _start(gateway_factory, srv.url, f"requests=100/1h,output_tokens={tokens}/1h")
        upstream.typed(b"text/plain; charset=utf-8", text.encode())
        client = gw.openai()
        client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.mp3", MP3), response_format="text")
        row = _row(gw)
        assert (row["input_tokens"], row["output_tokens"]) == (0, tokens)
        if then_refused:
            _refused_before_upstream(gw, upstream, lambda: client.audio.transcriptions.create(
                model="gpt-4o-transcribe", file=("b.mp3", MP3), response_format="text"), 1)


@pytest.mark.parametrize("verbose", [True, False], ids=["verbose_json, by its duration", "json, by its text"])
def test_a_json_transcript_without_usage_is_charged(gateway_factory: Callable[..., Gateway], verbose: bool) -> None:
    # `usage` is optional in a transcript's JSON (an OpenAI-compatible server's, an older answer's):
    # one without was charged nothing. verbose_json always shows the audio's `duration`.
    text = "word " * 400
    answer: dict[str, object] = {"text": text, **({"task": "transcribe", "duration": 1800.05} if verbose else {})}
    tokens = math.ceil(1800.05 * AUDIO_TOKENS_PER_SECOND) if verbose else TokenCounter().count_text(text, "")
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = _start(gateway_factory, srv.url, f"requests=100/1h,{'input' if verbose else 'output'}_tokens={tokens}/1h")
        upstream.json(answer)
        client = gw.openai()
        client.audio.transcriptions.create(model="whisper-1", file=("a.mp3", MP3),
                                           response_format="verbose_json" if verbose else "json")
        row = _row(gw)
        assert (row["input_tokens"], row["output_tokens"]) == ((tokens, 0) if verbose else (0, tokens))


@pytest.mark.parametrize("asked", [None, "json"], ids=["no format", "json"])
def test_a_json_transcript_answered_as_text_is_charged_its_text(
    gateway_factory: Callable[..., Gateway], asked: str | None
) -> None:
    # A server whose default format is `text` (or that read `response_format` otherwise) answers a
    # transcript Sentinel took for JSON with its plain text: it was charged nothing, at will.
    text = "word " * 400
    tokens = TokenCounter().count_text(text, "")
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = _start(gateway_factory, srv.url, f"requests=100/1h,output_tokens={tokens}/1h")
        upstream.typed(b"text/plain; charset=utf-8", text.encode())
        with gw.client() as alice:
            made = alice.post("/v1/audio/transcriptions", files={"file": ("a.mp3", MP3)},
                              data={"model": "whisper-1", **({"response_format": asked} if asked else {})})
        assert made.status_code == 200, made.text
        row = _row(gw)
        assert (row["input_tokens"], row["output_tokens"]) == (0, tokens)


def test_a_media_call_with_a_query_is_refused_before_anything(gateway_factory: Callable[..., Gateway]) -> None:
    # Charged by its body's model, size and seconds: `?model=sora-2-pro` (which a LiteLLM proxy in front
    # of the provider reads over the body's, as on the metered endpoints) went upstream unchecked, and
    # the video was charged as the body's `sora-2`.
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", passthrough="/v1/audio/*,/v1/images/*,/v1/videos")
        with gw.client() as alice:
            refused = [
                alice.post("/v1/videos?model=sora-2-pro", json={"model": "sora-2", "prompt": "a cat"}),
                alice.post("/v1/audio/speech?model=gpt-4o-mini-tts", json={"model": "tts-1", "voice": "alloy",
                                                                             "input": "hi"}),
                alice.post("/v1/images/generations?quality=high", json={"model": "dall-e-3", "prompt": "a cat"}),
                alice.post("/v1/audio/transcriptions?response_format=text", files={"file": ("a.mp3", MP3)},
                           data={"model": "whisper-1"}),
            ]
        for r in refused:
            assert (r.status_code, openai_error(r.json())["code"]) == (400, "unsupported_query"), r.text
        assert upstream.received == []
        assert ledger_rows(gw.settings.database_url, "alice") == []


def test_a_media_call_with_a_query_and_no_body_is_refused_before_anything(gateway_factory: Callable[..., Gateway]) -> None:
    """A media call's query was refused only beside a body: with none, `POST /v1/images/generations
    ?model=dall-e-3&prompt=...&n=10` went upstream as a call no body named — reserved nothing, and
    charged nothing for the images a server reading the query (a LiteLLM proxy's `?model=`) made.
    Refused alike (400 `unsupported_query`) before anything is reserved or sent."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", passthrough="/v1/audio/*,/v1/images/*,/v1/videos")
        upstream.json({"created": 1, "data": IMAGE["data"] * 10})
        with gw.client() as alice:
            refused = [alice.post(path) for path in (
                "/v1/images/generations?model=dall-e-3&prompt=a+cat&n=10&quality=hd",
                "/v1/audio/speech?model=gpt-4o-mini-tts&voice=alloy&input=hi", "/v1/videos?model=sora-2-pro&seconds=12",
            )]
        for r in refused:
            assert (r.status_code, openai_error(r.json())["code"]) == (400, "unsupported_query"), r.text
        assert upstream.received == []
        assert ledger_rows(gw.settings.database_url, "alice") == []


def test_an_upload_giving_a_field_its_charge_is_read_from_twice_is_refused(gateway_factory: Callable[..., Gateway]) -> None:
    # `json` then `text`: read as the first, a call whose answer shows its usage; answered as the
    # second, a transcript without usage, charged nothing.
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = _start(gateway_factory, srv.url, "requests=100/1h,input_tokens=30000/1h")
        with gw.client() as alice:
            twice = alice.post("/v1/audio/transcriptions", files={"file": ("a.mp3", MP3)},
                               data={"model": "whisper-1", "response_format": ["json", "text"]})
        assert twice.status_code == 400, twice.text
        assert openai_error(twice.json())["details"]["param"] == "response_format"
        assert upstream.received == []
        assert ledger_rows(gw.settings.database_url, "alice") == []
        # A field given as a list (`timestamp_granularities[]`) is not one the charge is read from.
        upstream.json({"text": "hi", "usage": {"type": "duration", "seconds": 1.0}})
        gw.openai().audio.transcriptions.create(model="whisper-1", file=("a.mp3", MP3), response_format="verbose_json",
                                                timestamp_granularities=["word", "segment"])
        assert _row(gw)["input_tokens"] == AUDIO_TOKENS_PER_SECOND


@pytest.mark.parametrize(("path", "files", "field"), [
    ("/v1/audio/transcriptions", {"file": ("a.mp3", MP3)}, "response_format"),
    ("/v1/images/variations", {"image": ("a.png", b"\x89PNG")}, "n"),
    ("/v1/images/edits", {"image": ("a.png", b"\x89PNG")}, "size"),
], ids=["transcript", "variation", "edit"])
def test_an_upload_giving_a_field_its_charge_is_read_from_as_a_file_is_refused(
    gateway_factory: Callable[..., Gateway], path: str, files: dict[str, tuple[str, bytes]], field: str
) -> None:
    # Sentinel skipped the file part (reserved a `json` transcript, one image, the default size); a
    # provider reading it as the field billed a `text` transcript, ten images, the dearest size.
    upstream = ScriptedUpstream()
    value = {"response_format": b"text", "n": b"10", "size": b"1024x1024"}[field]
    with serving(upstream) as srv:
        gw = _start(gateway_factory, srv.url, "requests=100/1h,input_tokens=30000/1h,output_tokens=100000/1h")
        with gw.client() as alice:
            refused = alice.post(path, files={**files, field: ("f.txt", value)},
                                 data={"model": "whisper-1" if "audio" in path else "dall-e-2", "prompt": "a cat"})
        assert refused.status_code == 400, refused.text
        assert openai_error(refused.json())["details"]["param"] == field
        assert upstream.received == []
        assert ledger_rows(gw.settings.database_url, "alice") == []


@pytest.mark.parametrize(("path", "files", "field", "value"), [
    ("/v1/images/variations", {"image": ("a.png", b"\x89PNG")}, "n[]", "10"),
    ("/v1/images/edits", {"image[]": ("a.png", b"\x89PNG")}, "size[0]", "1792x1024"),
    ("/v1/images/edits", {"image[]": ("a.png", b"\x89PNG")}, "quality[]", "hd"),
    ("/v1/audio/transcriptions", {"file": ("a.mp3", MP3)}, "response_format[]", "text"),
], ids=["count", "size", "quality", "format"])
def test_an_upload_giving_a_field_its_charge_is_read_from_as_a_list_is_refused(
    gateway_factory: Callable[..., Gateway], path: str, files: dict[str, tuple[str, bytes]], field: str, value: str,
) -> None:
    """The provider reads `image[]` as one of the images on `image`; a reader that does reads `n[]`
    as `n` too, which Sentinel skipped as another field: it reserved one image of the default size
    and quality (and charged each image made so) where the provider made ten, or hd landscapes.
    Refused (400 naming the field) before anything is reserved or sent; a list field the charge is
    not read from (`timestamp_granularities[]`) still goes."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = _start(gateway_factory, srv.url, "requests=100/1h,input_tokens=30000/1h,output_tokens=100000/1h")
        with gw.client() as alice:
            refused = alice.post(path, files=files, data={
                "model": "whisper-1" if "audio" in path else "dall-e-2", "prompt": "a cat", field: value})
        assert refused.status_code == 400, refused.text
        assert openai_error(refused.json())["details"]["param"] == field.partition("[")[0]
        assert upstream.received == []
        assert ledger_rows(gw.settings.database_url, "alice") == []


VIDEOS = "/v1/videos,/v1/videos/*,/v1/vector_stores,/v1/vector_stores/*"


def _rows(gw: Gateway, count: int) -> list[dict[str, object]]:
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == count)
    return ledger_rows(gw.settings.database_url, "alice")


def test_a_video_is_charged_its_seconds_at_creation_and_held_to_the_output_limit(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream,
) -> None:
    import openai

    eight = video_tokens("sora-2-pro", "1792x1024", 8)
    assert eight == 8 * 12_500  # $0.50 a second at $40 per million tokens
    gw = gateway_factory(openai_api_url=spy.url + "/v1", passthrough=VIDEOS,
                         default_plan=f"requests=100/1h,output_tokens={eight + eight // 2}/1h")
    client = gw.openai()
    made = client.videos.create(model="sora-2-pro", prompt="a lighthouse at dusk", seconds="8", size="1792x1024")
    assert (made.status, made.seconds) == ("queued", "8")
    [row] = _rows(gw, 1)
    assert (row["status"], row["input_tokens"], row["output_tokens"]) == (200, 0, eight)
    # Half of it is left: another eight seconds do not fit, refused before they run.
    sent = len(spy.seen)
    with pytest.raises(openai.RateLimitError) as refused:
        client.videos.create(model="sora-2-pro", prompt="a lighthouse at dawn", seconds="8", size="1792x1024")
    assert openai_error(refused.value.response.json())["code"] == "quota_exceeded"
    assert len(spy.seen) == sent
    # Four seconds of sora-2 at its default size (10,000 tokens) still fit; a remix of them is
    # reserved as its source (recorded when it was made through Sentinel), not as the dearest (12
    # seconds of sora-2-pro, 150,000 tokens, larger than is left): it fits too. A remix of the
    # eight seconds of sora-2-pro, reserved as those, does not.
    short = client.videos.create(prompt="a lighthouse")  # sora-2, 720 x 1280, 4 seconds: the defaults
    assert _rows(gw, 2)[1]["output_tokens"] == video_tokens("sora-2", "720x1280", 4) == 10_000
    remixed = client.videos.remix(short.id, prompt="at night")
    assert (remixed.model, remixed.size, remixed.seconds) == ("sora-2", "720x1280", "4")
    assert _rows(gw, 3)[2]["output_tokens"] == 10_000
    sent = len(spy.seen)
    with pytest.raises(openai.RateLimitError):
        client.videos.remix(made.id, prompt="at night")
    assert len(spy.seen) == sent


def test_a_remix_is_charged_what_its_answer_shows_it_makes(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(passthrough=VIDEOS, default_plan="requests=100/1h,output_tokens=200000/1h")
    client = gw.openai()
    source = client.videos.create(model="sora-2", prompt="a lighthouse", seconds="12", size="1280x720")
    remix = client.videos.remix(source.id, prompt="at night")
    assert (remix.model, remix.seconds, remix.size) == ("sora-2", "12", "1280x720")  # its source's
    assert [r["output_tokens"] for r in _rows(gw, 2)] == [12 * 2_500, 12 * 2_500]


@pytest.mark.parametrize("seconds", ["100000", "0", "-4", "4.5", "four", str(MAX_VIDEO_SECONDS + 1)])
def test_a_video_of_absurd_seconds_is_refused(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, seconds: str,
) -> None:
    import openai

    gw = gateway_factory(openai_api_url=spy.url + "/v1", passthrough=VIDEOS,
                         default_plan="requests=100/1h,output_tokens=1000000/1h")
    with pytest.raises(openai.BadRequestError) as refused:
        gw.openai().videos.create(prompt="a lighthouse", seconds=seconds)  # type: ignore[arg-type]
    assert openai_error(refused.value.response.json())["details"]["param"] == "seconds"
    assert spy.seen == []
    assert ledger_rows(gw.settings.database_url, "alice") == []
    # A JSON body is read alike.
    with gw.client() as alice:
        as_json = alice.post("/v1/videos", json={"prompt": "a lighthouse", "seconds": 3600})
    assert as_json.status_code == 400, as_json.text
    assert openai_error(as_json.json())["details"]["param"] == "seconds"
    assert spy.seen == []


def test_a_video_the_provider_refuses_is_charged_nothing(gateway_factory: Callable[..., Gateway]) -> None:
    import openai

    gw = gateway_factory(passthrough=VIDEOS, default_plan="requests=100/1h,output_tokens=1000000/1h")
    with pytest.raises(openai.BadRequestError):  # 16 seconds: Sentinel's bound, not the provider's
        gw.openai().videos.create(prompt="a lighthouse", seconds="16")  # type: ignore[arg-type]
    [row] = _rows(gw, 1)
    assert (row["status"], row["input_tokens"], row["output_tokens"]) == (400, 0, 0)


def test_a_vector_store_search_rewriting_its_query_is_charged_the_query(gateway_factory: Callable[..., Gateway]) -> None:
    import openai

    query = "which of our lighthouses were built before the war, and by whom? " * 8
    tokens = TokenCounter().count_text(query, "")
    gw = gateway_factory(passthrough=VIDEOS, default_plan=f"requests=100/1h,input_tokens={tokens + tokens // 2}/1h")
    client = gw.openai()
    store = client.vector_stores.create(name="lighthouses")
    client.vector_stores.search(store.id, query=query)  # no rewrite: no model runs, charged nothing
    page = client.vector_stores.search(store.id, query=query, rewrite_query=True)
    assert page.search_query == [query.lower()]
    assert [r["input_tokens"] for r in _rows(gw, 3)] == [0, 0, tokens]
    with pytest.raises(openai.RateLimitError) as refused:
        client.vector_stores.search(store.id, query=[query], rewrite_query=True)
    assert openai_error(refused.value.response.json())["code"] == "quota_exceeded"


@pytest.mark.parametrize("n", [10.0, True, "ten", 0, -2, 11, "11", 10**9])
def test_an_image_call_of_a_count_that_is_no_whole_number_is_refused(
    gateway_factory: Callable[..., Gateway], n: object,
) -> None:
    """An image call's `n` that was no count (`10.0`, `true`, `"ten"`, 0) was read as one image and
    reserved so, then sent: a provider taking `10.0` for ten made ten on a plan with room for one (its
    answer charged after, past the limit). Refused (400 naming `n`) before anything is reserved or
    sent, as a video's `seconds` is; JSON digits and an upload's text are still counts. So is an `n`
    past 10 (which OpenAI refuses): it was reserved as ten, and a server making them all passed an
    output limit by the rest."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = _start(gateway_factory, srv.url, "requests=100/1h,output_tokens=1000000/1h")
        with gw.client() as alice:
            refused = alice.post("/v1/images/generations", json={"model": "dall-e-2", "prompt": "a lighthouse", "n": n})
            assert refused.status_code == 400, refused.text
            assert openai_error(refused.json())["details"]["param"] == "n"
            assert upstream.received == []
            assert ledger_rows(gw.settings.database_url, "alice") == []
            upstream.json({"created": 1, "data": [*IMAGE["data"], *IMAGE["data"]]})
            made = alice.post("/v1/images/generations", json={"model": "dall-e-2", "prompt": "a lighthouse", "n": "2"})
        assert made.status_code == 200, made.text
        assert _row(gw)["output_tokens"] == 2 * image_tokens("dall-e-2", None, None)


@pytest.mark.parametrize("speed", ["0.25", True, 0, 0.1, 4.5, [1]])
def test_a_speech_call_of_a_speed_that_is_no_number_in_range_is_refused(
    gateway_factory: Callable[..., Gateway], speed: object,
) -> None:
    """A speech call's `speed` that was no number from 0.25 to 4.0 (`"0.25"`, `true`, 0, 10) was read
    as speed 1 and reserved so, then sent: a lenient provider taking `"0.25"` (or clamping 0.1 to
    0.25) spoke four times as long as was reserved. Refused (400 naming `speed`) before anything is
    reserved or sent, as an image call's `n` is; a number in range is still read."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = _start(gateway_factory, srv.url, "requests=100/1h,output_tokens=1000000/1h")
        with gw.client() as alice:
            body = {"model": "gpt-4o-mini-tts", "voice": "alloy", "input": SPEECH_TEXT}
            refused = alice.post("/v1/audio/speech", json={**body, "speed": speed})
            assert refused.status_code == 400, refused.text
            assert openai_error(refused.json())["details"]["param"] == "speed"
            assert upstream.received == []
            assert ledger_rows(gw.settings.database_url, "alice") == []
        upstream.typed(b"audio/mpeg", MP3)
        gw.openai().audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input=SPEECH_TEXT, speed=0.25)
        assert _row(gw)["output_tokens"] == speech_audio_tokens("gpt-4o-mini-tts", SPEECH_TEXT, 0.25)


def test_a_compaction_is_reserved_its_input_and_held_to_the_input_limit(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """`POST /v1/responses/compact` has a model read its Responses body and write a summary: it reserved
    one request and no token, so a compaction of a conversation far past the plan's input limit was
    sent (and charged its answer's usage after), and a burst of them passed any limit before the first
    settled. It reserves the input `/v1/responses` estimates for the same body: one that can never fit
    is refused before it is sent, and one past what is left waits for the window."""
    conversation = [{"role": "user", "content": "Log of the lighthouse keeper, day after day. " * 40},
                    {"role": "assistant", "content": "Noted, and the lamp was trimmed at dusk. " * 40}]
    counter = TokenCounter()
    tokens = counter.count_chat(conversation, "gpt-5")
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", passthrough="/v1/responses/*",
                             default_plan=f"requests=100/1h,input_tokens={tokens + tokens // 2}/1h")
        upstream.json({"id": "cmp_1", "object": "response.compaction", "created_at": 1, "output": [],
                       "usage": {"input_tokens": tokens, "output_tokens": 40, "total_tokens": tokens + 40}})
        with gw.client() as alice:
            too_long = alice.post("/v1/responses/compact", json={"model": "gpt-5", "input": conversation * 2})
            assert upstream.received == []  # never sent
            compacted = alice.post("/v1/responses/compact", json={"model": "gpt-5", "input": conversation})
            again = alice.post("/v1/responses/compact", json={"model": "gpt-5", "input": conversation})
    assert too_long.status_code == 429, too_long.text
    error = openai_error(too_long.json())
    assert error["code"] == "quota_exceeded" and "can never be admitted" in error["message"], error
    assert "retry-after" not in too_long.headers
    assert compacted.status_code == 200, compacted.text
    # Half the conversation is left of the limit: the same compaction again does not fit, and is refused
    # before it runs (it was admitted: it reserved no input).
    assert again.status_code == 429, again.text
    assert openai_error(again.json())["code"] == "quota_exceeded"
    assert again.headers["retry-after"]
    assert len(upstream.received) == 1
    row = _row(gw)
    assert (row["status"], row["input_tokens"], row["output_tokens"]) == (200, tokens, 40)  # its answer's usage


def test_a_compaction_of_a_stored_response_is_reserved_the_context_it_reads(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """A compaction continuing a stored response (`previous_response_id`) has the provider read that
    response's whole context again, as a `/v1/responses` request continuing it does: reserved as that
    request is (the tokens Sentinel keeps for the response, `carried_input`), a compaction of a chain
    past the plan's input limit is refused before it is sent — it reserved its few new tokens."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", passthrough="/v1/responses/*",
                             default_plan="requests=100/1h,input_tokens=1000/1h")
        ownership = gw.runtime.relay.ownership
        for response, context in (("resp_long", 50_000), ("resp_short", 200)):
            asyncio.run(ownership.claim(response, "alice", None))
            asyncio.run(ownership.remember_context(response, context, None))
        upstream.json({"id": "cmp_1", "object": "response.compaction", "created_at": 1, "output": [],
                       "usage": {"input_tokens": 210, "output_tokens": 40, "total_tokens": 250}})
        with gw.client() as alice:
            long = alice.post("/v1/responses/compact",
                              json={"model": "gpt-5", "input": "hi", "previous_response_id": "resp_long"})
            assert upstream.received == []  # never sent
            short = alice.post("/v1/responses/compact",
                               json={"model": "gpt-5", "input": "hi", "previous_response_id": "resp_short"})
    assert long.status_code == 429, long.text
    error = openai_error(long.json())
    assert error["code"] == "quota_exceeded" and "can never be admitted" in error["message"], error
    assert short.status_code == 200, short.text
    row = _row(gw)
    assert (row["status"], row["input_tokens"], row["output_tokens"]) == (200, 210, 40)


LOG = "Log of the lighthouse keeper, day after day, the lamp trimmed at dusk and the glass wiped clean. " * 30


def _graders(*kinds: str) -> dict[str, object]:
    """A `multi` grader of a grader of each of `kinds` (a model grader reads its messages, filled in)."""
    made: dict[str, object] = {}
    for i, kind in enumerate(kinds):
        if kind == "string_check":
            made[f"g{i}"] = {"type": "string_check", "name": f"g{i}", "input": "{{sample.output_text}}",
                             "reference": "{{item.answer}}", "operation": "eq"}
        else:
            made[f"g{i}"] = {"type": kind, "name": f"g{i}", "model": "gpt-4o-mini",
                             "input": [{"role": "user", "content": "Does {{sample.output_text}} answer {{item.log}}?"}],
                             **({"labels": ["yes", "no"], "passing_labels": ["yes"]} if kind == "label_model" else {})}
    return {"type": "multi", "name": "m", "calculate_output": " + ".join(made), "graders": made}


def _graded(prompt_tokens: int | None) -> dict[str, object]:
    """A grader run's answer, its model graders' tokens in `metadata.token_usage` (none: left out)."""
    metadata: dict[str, object] = {"name": "m", "type": "multi", "execution_time": 1.0, "scores": {},
                                   "sampled_model_name": None, "errors": {}}
    if prompt_tokens is not None:
        metadata["token_usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": 9, "cached_tokens": 0,
                                   "total_tokens": prompt_tokens + 9}
    return {"reward": 1.0, "sub_rewards": {}, "metadata": metadata}


def test_a_grader_run_is_reserved_what_its_model_graders_read_and_held_to_the_input_limit(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """`POST /v1/fine_tuning/alpha/graders/run` has each model grader read its messages filled in from
    the run's `item` and `model_sample`: it reserved one request and no token, so a run far past the
    plan's input limit was sent, and a burst of them passed any limit before the first settled. It
    reserves, for each model grader (a `multi` grader's nested ones), its text and `item` and
    `model_sample` as text: one that can never fit is refused before it is sent, one past what is
    left waits for the window, and a refused run leaves nothing reserved."""
    counter = TokenCounter()
    body = {"grader": _graders("score_model", "label_model", "string_check"), "item": {"log": LOG},
            "model_sample": LOG}
    small = {"grader": _graders("score_model"), "item": {"log": "calm"}, "model_sample": "calm"}
    tokens, few = grader_run_input(counter, body), grader_run_input(counter, small)
    # each of the two model graders reads the item and the sample (the string check reads no model)
    assert tokens > 4 * counter.count_text(LOG, "gpt-4o-mini") > 0 and tokens > 2 * few > 0
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", passthrough="/v1/fine_tuning/*",
                             default_plan=f"requests=100/1h,input_tokens={tokens + few}/1h")
        upstream.json(_graded(tokens))
        upstream.json(_graded(few))
        with gw.client() as alice:
            too_long = alice.post("/v1/fine_tuning/alpha/graders/run", json={**body, "model_sample": LOG * 3})
            assert upstream.received == []  # never sent
            graded = alice.post("/v1/fine_tuning/alpha/graders/run", json=body)
            again = alice.post("/v1/fine_tuning/alpha/graders/run", json=body)
            assert len(upstream.received) == 1
            # What is left (`few`) is left whole: the refused run reserved nothing.
            fits = alice.post("/v1/fine_tuning/alpha/graders/run", json=small)
    assert too_long.status_code == 429, too_long.text
    error = openai_error(too_long.json())
    assert error["code"] == "quota_exceeded" and "can never be admitted" in error["message"], error
    assert "retry-after" not in too_long.headers
    assert graded.status_code == 200, graded.text
    assert again.status_code == 429, again.text
    assert openai_error(again.json())["code"] == "quota_exceeded"
    assert again.headers["retry-after"]
    assert fits.status_code == 200, fits.text
    assert len(upstream.received) == 2
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 2)
    rows = ledger_rows(gw.settings.database_url, "alice")
    # charged what each answer's `metadata.token_usage` shows
    assert sorted((r["status"], r["input_tokens"], r["output_tokens"]) for r in rows) == sorted(
        [(200, tokens, 9), (200, few, 9)])


def test_a_grader_run_whose_answer_shows_no_token_usage_is_charged_its_estimate(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """A grader run whose answer shows no `metadata.token_usage` was charged one request and no token
    however long what its model graders read: charged the input it reserved. A grader that runs no
    model (`string_check`) reserves and is charged no token, under any input limit."""
    counter = TokenCounter()
    body = {"grader": _graders("score_model"), "item": {"log": LOG}, "model_sample": "the lamp"}
    tokens = grader_run_input(counter, body)
    assert tokens > counter.count_text(LOG, "gpt-4o-mini")
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", passthrough="/v1/fine_tuning/*",
                             default_plan=f"requests=100/1h,input_tokens={tokens}/1h")
        upstream.json(_graded(None))
        upstream.json(_graded(None))
        client = gw.openai()
        no_model = {"grader": _graders("string_check"), "item": {"answer": LOG}, "model_sample": LOG}
        assert client.fine_tuning.alpha.graders.run(**no_model).reward == 1.0  # type: ignore[arg-type]
        assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 1)
        assert client.fine_tuning.alpha.graders.run(**body).reward == 1.0  # type: ignore[arg-type]
        assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 2)
    rows = ledger_rows(gw.settings.database_url, "alice")
    assert sorted((r["input_tokens"], r["output_tokens"]) for r in rows) == [(0, 0), (tokens, 0)]


def test_speech_is_reserved_and_charged_its_instructions_too(gateway_factory: Callable[..., Gateway]) -> None:
    """gpt-4o-mini-tts reads a speech call's `instructions` (how to speak) as text input, billed as
    its `input` is; only `input` was counted, so instructions of any length were neither reserved
    nor charged (a novel of them, one request and the input's few tokens). Both are reserved and
    charged as input: a call whose instructions alone pass the input limit is refused before it runs."""
    instructions = "Speak slowly, in the voice of a tired lighthouse keeper reading the shipping forecast. " * 40
    counter = TokenCounter()
    spoken, told = (counter.count_text(text, "gpt-4o-mini-tts") for text in (SPEECH_TEXT, instructions))
    call = {"model": "gpt-4o-mini-tts", "voice": "alloy", "input": SPEECH_TEXT, "instructions": instructions}
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = _start(gateway_factory, srv.url, f"requests=100/1h,input_tokens={spoken + told // 2}/1h")
        _refused_before_upstream(gw, upstream, lambda: gw.openai().audio.speech.create(**call), 0)
        assert ledger_rows(gw.settings.database_url, "alice") == []
        roomy = _start(gateway_factory, srv.url, "requests=100/1h,input_tokens=1000000/1h")
        upstream.typed(b"audio/mpeg", MP3)
        roomy.openai().audio.speech.create(**call)
        row = _row(roomy)
        assert (row["input_tokens"], row["output_tokens"]) == (
            spoken + told, speech_audio_tokens("gpt-4o-mini-tts", SPEECH_TEXT))


@pytest.mark.parametrize("stream_format", ["sse", "SSE", " sse", 1, True])
def test_speech_asked_for_as_events_is_refused_before_anything(
    gateway_factory: Callable[..., Gateway], stream_format: object,
) -> None:
    """A speech call's `stream_format: "sse"` (the openai SDK's `audio.speech.create(stream_format=
    "sse")`) has the provider answer with events, its usage in the last: never relayed, the speech
    was made, billed and thrown away, the caller charged and answered 502. Refused (400
    `stream_not_supported` naming `stream_format`) before anything is reserved or sent, as a `stream`
    is; `audio` (the default) is still served."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = _start(gateway_factory, srv.url, "requests=100/1h,input_tokens=1000000/1h")
        body = {"model": "gpt-4o-mini-tts", "voice": "alloy", "input": SPEECH_TEXT}
        with gw.client() as alice:
            refused = alice.post("/v1/audio/speech", json={**body, "stream_format": stream_format})
        assert refused.status_code == 400, refused.text
        error = openai_error(refused.json())
        assert (error["code"], error["details"]["param"]) == ("stream_not_supported", "stream_format")
        assert upstream.received == []
        assert ledger_rows(gw.settings.database_url, "alice") == []
        upstream.typed(b"audio/mpeg", MP3)
        assert gw.openai().audio.speech.create(**body, stream_format="audio").content == MP3


@pytest.mark.parametrize("field", ["stream[]", "stream[0]"])
def test_a_transcription_asking_for_a_stream_as_a_list_is_refused_before_anything(
    gateway_factory: Callable[..., Gateway], field: str,
) -> None:
    """A transcription's `stream` form field is refused (its usage would come in events Sentinel does
    not relay); given as `stream[]` — which a reader taking `image[]` as one of the images reads as
    `stream` — it was sent on: the provider's events, made and billed, never relayed (502, charged).
    Refused alike (400 `stream_not_supported`) before anything is reserved or sent."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = _start(gateway_factory, srv.url, "requests=100/1h,input_tokens=30000/1h")
        with gw.client() as alice:
            refused = alice.post("/v1/audio/transcriptions", files={"file": ("a.mp3", MP3)},
                                 data={"model": "gpt-4o-transcribe", field: "true"})
            upstream.json({"text": "hi", "usage": {"type": "duration", "seconds": 1.0}})
            unasked = alice.post("/v1/audio/transcriptions", files={"file": ("a.mp3", MP3)},
                                 data={"model": "whisper-1", field: "false"})
        assert refused.status_code == 400, refused.text
        assert openai_error(refused.json())["code"] == "stream_not_supported"
        assert unasked.status_code == 200, unasked.text
        assert len(upstream.received) == 1
        assert _row(gw)["status"] == 200
