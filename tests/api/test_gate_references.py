"""References the ownership checks missed, on a real Redis: an earlier audio answer named in
`messages[].audio.id`, an upload's parts named in `part_ids`, and ids in a multipart form on a call
that takes JSON (dotted field names, JSON values)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

import openai
import orjson
import pytest
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from sentinel.mock.app import create_mock_app
from tests.api.conftest import Gateway
from tests.support.accounts import create_key
from tests.support.attack import SpyUpstream, openai_error, spying

DAY_MS = 86_400_000


def key_for(gw: Gateway, user: str) -> str:
    return asyncio.run(create_key(gw.settings.database_url, user))[1]


# --- audio answers -------------------------------------------------------------------------------
def speaking_upstream() -> Starlette:
    """Chat answers with an audio answer each (`audio_1`, `audio_2`, ...), plain or streamed; 2 MiB
    of audio when the user asks for a long one (relayed as it arrives, not read whole)."""
    numbers = itertools.count(1)

    async def chat(request: Request) -> Response:
        body = orjson.loads(await request.body())
        long = "long" in orjson.dumps(body["messages"]).decode()
        audio = {"id": f"audio_{next(numbers)}", "data": "UklGRg==" * (262_144 if long else 1),
                 "expires_at": int(time.time()) + 3 * 86_400, "transcript": "hello"}
        usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        if not body.get("stream"):
            return JSONResponse({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                     "role": "assistant", "content": None, "audio": audio}}], "usage": usage})
        chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "audio": audio}}]},
                  {"choices": [{"index": 0, "delta": {"audio": {"transcript": " there"}}, "finish_reason": "stop"}]},
                  {"choices": [], "usage": usage}]
        events = [b"data: " + orjson.dumps({"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1,
                                            "model": body["model"], **c}) + b"\n\n" for c in chunks]
        return StreamingResponse(iter([*events, b"data: [DONE]\n\n"]), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def referring_to(audio_id: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": "say hello"}, {"role": "assistant", "audio": {"id": audio_id}},
            {"role": "user", "content": "again"}]


@pytest.mark.parametrize("how", ["plain", "streamed", "large"])
def test_an_audio_answer_is_named_again_only_by_its_owner(
    gateway_factory: Callable[..., Gateway], redis_url: str, how: str
) -> None:
    """`messages[].audio.id` names an earlier audio answer: Bob could name Alice's (the provider
    reads her audio as his conversation's). Every audio answer, stored or not, streamed or not,
    is its caller's; naming another user's is the 404 an unknown one gets, and reaches nobody."""
    with spying(speaking_upstream()) as (_, upstream):
        gw = gateway_factory(openai_api_url=upstream.url + "/v1", redis_url=redis_url)
        client = gw.openai()
        kwargs: dict[str, Any] = {"model": "gpt-4o-mini", "modalities": ["text", "audio"],
                                  "audio": {"voice": "alloy", "format": "wav"}}
        first = [{"role": "user", "content": "say a long hello" if how == "large" else "say hello"}]
        if how == "streamed":
            chunks = list(client.chat.completions.create(messages=first, stream=True, **kwargs))
            audio_id = next(c.choices[0].delta.audio.id for c in chunks if c.choices and c.choices[0].delta.audio)
        else:
            answer = client.chat.completions.create(messages=first, **kwargs)
            assert answer.choices[0].message.audio is not None
            audio_id = answer.choices[0].message.audio.id
        owners = redis.Redis.from_url(redis_url)
        assert owners.get(f"sentinel:owner:{audio_id}") == b"alice"
        # kept a day past the provider's `expires_at` (3 days ahead); read from a large answer's head, 2 days
        assert owners.pttl(f"sentinel:owner:{audio_id}") >= (2 if how == "large" else 4) * DAY_MS - 60_000
        with gw.client(key_for(gw, "bob")) as bob:
            upstream.clear()
            stolen = bob.post("/v1/chat/completions", json={**kwargs, "messages": referring_to(audio_id)})
            missing = bob.post("/v1/chat/completions", json={**kwargs, "messages": referring_to("audio_999")})
            in_responses = bob.post("/v1/responses", json={"model": "gpt-4o-mini", "input": referring_to(audio_id)})
            assert upstream.seen == []
        assert stolen.status_code == missing.status_code == in_responses.status_code == 404, stolen.text
        assert openai_error(stolen.json())["code"] == "object_not_found"
        assert stolen.text.replace(audio_id, "<id>") == missing.text.replace("audio_999", "<id>")
        again = client.chat.completions.create(messages=referring_to(audio_id), **kwargs)  # Alice's own
        assert again.choices[0].message.audio is not None


# --- an upload's parts ---------------------------------------------------------------------------
def uploads_upstream() -> Starlette:
    numbers = itertools.count(1)

    async def create(_: Request) -> JSONResponse:
        return JSONResponse({"id": f"upload_{next(numbers)}", "object": "upload", "status": "pending"})

    async def part(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"id": f"part_{next(numbers)}", "object": "upload.part", "created_at": 1,
                             "upload_id": request.path_params["uid"]})

    async def complete(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["uid"], "object": "upload", "status": "completed",
                             "file": {"id": f"file-{next(numbers)}", "object": "file", "purpose": "user_data"}})

    return Starlette(routes=[Route("/v1/uploads", create, methods=["POST"]),
                             Route("/v1/uploads/{uid}/parts", part, methods=["POST"]),
                             Route("/v1/uploads/{uid}/complete", complete, methods=["POST"])])


def test_an_uploads_parts_are_completed_only_by_their_owner(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """A part's id (`POST /v1/uploads/{id}/parts`) was nobody's and `part_ids` was not read: Bob
    completed his upload with Alice's parts, a file of her bytes made his. A part is now its
    uploader's (as long as an upload is kept) and `part_ids` naming anyone else's is 404."""
    with spying(uploads_upstream()) as (_, upstream):
        gw = gateway_factory(openai_api_url=upstream.url + "/v1", redis_url=redis_url, passthrough="/v1/uploads/*")
        alice = gw.openai()
        made = {"filename": "a.txt", "purpose": "user_data", "bytes": 5, "mime_type": "text/plain"}
        upload = alice.uploads.create(**made)
        part = alice.uploads.parts.create(upload.id, data=b"alice")
        owners = redis.Redis.from_url(redis_url)
        assert owners.get(f"sentinel:owner:{part.id}") == b"alice"
        assert 0 < owners.pttl(f"sentinel:owner:{part.id}") <= 2 * DAY_MS
        bob = openai.OpenAI(base_url=gw.url + "/v1", api_key=key_for(gw, "bob"), max_retries=0)
        his = bob.uploads.create(**made)
        upstream.clear()
        with pytest.raises(openai.NotFoundError) as stolen:
            bob.uploads.complete(his.id, part_ids=[part.id])
        with pytest.raises(openai.NotFoundError) as missing:
            bob.uploads.complete(his.id, part_ids=["part_999"])
        assert upstream.seen == []
        assert str(stolen.value).replace(part.id, "<id>") == str(missing.value).replace("part_999", "<id>")
        done = alice.uploads.complete(upload.id, part_ids=[part.id])
    assert done.status == "completed" and done.file is not None
    assert owners.get(f"sentinel:owner:{done.file.id}") == b"alice"


def test_another_users_part_among_several_is_404_and_reaches_nobody(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """Several ids named at once are read together (one batched store read): one of them another
    user's, wherever it stands among his own, is still the 404 an unknown one gets, sent nowhere;
    all his own complete as before."""
    with spying(uploads_upstream()) as (_, upstream):
        gw = gateway_factory(openai_api_url=upstream.url + "/v1", redis_url=redis_url, passthrough="/v1/uploads/*")
        made = {"filename": "a.txt", "purpose": "user_data", "bytes": 5, "mime_type": "text/plain"}
        alice = gw.openai()
        hers = alice.uploads.parts.create(alice.uploads.create(**made).id, data=b"alice").id
        bob = openai.OpenAI(base_url=gw.url + "/v1", api_key=key_for(gw, "bob"), max_retries=0)
        upload = bob.uploads.create(**made)
        his = [bob.uploads.parts.create(upload.id, data=b"bob").id for _ in range(3)]
        upstream.clear()
        answers = set()
        for named in ([*his, hers], [hers, *his], [his[0], hers, his[1], hers], [*his, "part_999"]):
            with pytest.raises(openai.NotFoundError) as refused:
                bob.uploads.complete(upload.id, part_ids=named)
            assert refused.value.code == "object_not_found"
            answers.add(str(refused.value).replace(hers, "<id>").replace("part_999", "<id>"))
        assert len(answers) == 1 and "<id>" in answers.pop()  # hers answered as an unknown one
        assert upstream.seen == []
        done = bob.uploads.complete(upload.id, part_ids=his)
    assert done.status == "completed" and upstream.paths() == [f"/v1/uploads/{upload.id}/complete"]


# --- multipart bodies ----------------------------------------------------------------------------
def test_a_form_is_taken_only_where_a_file_is(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """Only JSON was read for what it asks of the provider, but a form was taken on any call but a
    batch's or an eval's: Bob created an assistant over Alice's vector store with a form whose field
    name used dots (`tool_resources.file_search.vector_store_ids`) or held JSON
    (`tool_resources={...}`), both unread. A form on a call that takes no file is now 400
    `unsupported_content_type` and reaches nobody; uploads still work, and on them a field holding
    JSON, or named with dots, is read too."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=redis_url,
                         passthrough="/v1/assistants,/v1/assistants/*,/v1/files/*,/v1/audio/*,/v1/threads/*")
    victim = gw.openai().files.create(file=("v.txt", b"alice's"), purpose="user_data").id
    owners = redis.Redis.from_url(redis_url)
    owners.set("sentinel:owner:vs_alice", "alice")
    owners.set("sentinel:owner:thread_bob", "bob")
    tools = {"file_search": {"vector_store_ids": ["vs_alice"]}}
    with gw.client(key_for(gw, "bob")) as bob:
        spy.clear()
        refused = [
            bob.post("/v1/assistants", data={"model": "gpt-4o-mini", "tool_resources.file_search.vector_store_ids":
                                             "vs_alice"}, files={"f": ("f", b"")}),
            bob.post("/v1/assistants", data={"model": "gpt-4o-mini", "tool_resources": orjson.dumps(tools).decode()},
                     files={"f": ("f", b"")}),
            bob.post("/v1/threads/thread_bob/messages", data={"role": "user", "content": "x"},
                     files={"f": ("f", b"")}),
            bob.post("/v1/assistants", content=b"model=gpt-4o-mini", headers={"Content-Type": "text/plain"}),
        ]
        for r in refused:
            assert r.status_code == 400, r.text
            assert openai_error(r.json())["code"] == "unsupported_content_type", r.text
        unread = [
            bob.post("/v1/files", data={"purpose": "user_data", "x.file_ids": victim}, files={"file": ("b", b"b")}),
            bob.post("/v1/files", data={"purpose": "user_data", "meta": orjson.dumps({"file_id": victim}).decode()},
                     files={"file": ("b", b"b")}),
        ]
        for r in unread:
            assert r.status_code == 404 and openai_error(r.json())["code"] == "object_not_found", r.text
        assert spy.seen == []
        upload = bob.post("/v1/files", data={"purpose": "user_data", "note": "{not json"},
                          files={"file": ("b.json", orjson.dumps({"file_id": victim}))})  # a file's bytes are its own
        spoken = bob.post("/v1/audio/transcriptions", data={"model": "whisper-1"}, files={"file": ("a.wav", b"RIFF")})
    assert upload.status_code == 200, upload.text
    assert spoken.status_code == 404, spoken.text  # forwarded (the mock has no transcriptions)
    assert [(s.method, s.path) for s in spy.seen] == [("POST", "/v1/files"), ("POST", "/v1/audio/transcriptions")]


def test_a_part_with_an_empty_filename_is_read_as_a_field(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """aiohttp's `request.post()` and Go's `ReadForm` read a part with `filename=""` as a field
    (Starlette and werkzeug as a file), and a reader without RFC 2231 finds no filename in
    `filename*=`: Sentinel read either as a file on a field the call takes files on (an edit's
    `image`, a video's `input_reference`), never read its value, and sent Bob's
    `{"file_id": <Alice's>}` on. Now it is read as a field too: the 404 an unknown file gets,
    nothing sent; Alice's own goes through."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=redis_url, passthrough="/v1/files/*,/v1/images/*,/v1/videos")
    victim = gw.openai().files.create(file=("v.png", b"alice's"), purpose="vision").id
    form = {"Content-Type": "multipart/form-data; boundary=bd"}

    def upload(field: str, file_id: str, filename: str = 'filename=""') -> bytes:
        return (b'--bd\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na cat\r\n'
                b'--bd\r\nContent-Disposition: form-data; name="' + field.encode() + b'"; ' + filename.encode()
                + b"\r\n\r\n" + orjson.dumps({"file_id": file_id}) + b"\r\n--bd--\r\n")

    with gw.client(key_for(gw, "bob")) as bob, gw.client() as alice:
        spy.clear()
        for path, field, filename in (
            ("/v1/images/edits", "image", 'filename=""'), ("/v1/images/edits", "image[]", 'filename=""'),
            ("/v1/videos", "input_reference", 'filename=""'), ("/v1/images/edits", "image", "filename*=UTF-8''a.png"),
        ):
            stolen = bob.post(path, content=upload(field, victim, filename), headers=form)
            missing = bob.post(path, content=upload(field, "file-000", filename), headers=form)
            assert stolen.status_code == missing.status_code == 404, (field, stolen.text)
            assert openai_error(stolen.json())["code"] == "object_not_found"
            assert stolen.text.replace(victim, "<id>") == missing.text.replace("file-000", "<id>")
            assert spy.seen == []
        alice.post("/v1/images/edits", content=upload("image", victim), headers=form)
    assert [(s.method, s.path) for s in spy.seen] == [("POST", "/v1/images/edits")]


def test_a_json_field_of_an_upload_is_read_as_any_reader_would_or_refused(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """An upload goes upstream as it came, but a field orjson could not read named nothing (`NaN`, a
    lone surrogate: Python's json and lenient providers read them), a key given twice named only the
    id orjson kept, and a JSON value given as a file (`filename=`) was never read: Bob named Alice's
    file in each. Such a value is now 400, and a file on a field the call takes no file on is read as
    a field (404: not his); a file's bytes on its own field stay unread."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=redis_url, passthrough="/v1/files/*")
    victim = gw.openai().files.create(file=("v.txt", b"alice's"), purpose="user_data").id
    file = {"file": ("b.json", orjson.dumps({"file_id": victim}))}
    with gw.client(key_for(gw, "bob")) as bob:
        mine = bob.post("/v1/files", data={"purpose": "user_data"}, files=file).json()["id"]
        spy.clear()
        unreadable = [
            bob.post("/v1/files", data={"purpose": "user_data", "session": value}, files=file)
            for value in (f'{{"file_id": "{victim}", "x": NaN}}', f'[{{"file_id": "{victim}", "n": "\\ud800"}}]',
                          f'{{"file_id": "{victim}", "file_id": "{mine}"}}')
        ]
        as_file = bob.post("/v1/files", data={"purpose": "user_data"},
                           files={**file, "meta": ("m.json", orjson.dumps({"file_id": victim}))})
        assert spy.seen == []
        own = bob.post("/v1/files", data={"purpose": "user_data", "note": "[Speaker 1] {not json"},
                       files={**file, "meta": ("m.json", orjson.dumps({"file_id": mine}))})
    for r in unreadable:
        assert r.status_code == 400, r.text
        assert openai_error(r.json())["type"] == "invalid_request_error" and "JSON" in r.json()["error"]["message"]
    assert as_file.status_code == 404 and openai_error(as_file.json())["code"] == "object_not_found", as_file.text
    assert own.status_code == 200, own.text
    assert [(s.method, s.path) for s in spy.seen] == [("POST", "/v1/files")]


@pytest.mark.parametrize(("content_type", "boundary"), [
    ("multipart/form-data; boundary*=utf-8''%E2%82%AC", "€".encode()),
    ("multipart/form-data; boundary*0*=utf-8''%E2; boundary*1*=%82%AC", "€".encode()),
    ("multipart/form-data; boundary*0=b; boundary*1=c", b"bc"),
    ("multipart/form-data; BOUNDARY*=iso-8859-1''bc", b"bc"),
], ids=["encoded", "encoded-continued", "continued", "latin-1"])
def test_an_rfc_2231_boundary_is_refused(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str, content_type: str, boundary: bytes,
) -> None:
    """An upload whose boundary was RFC 2231-encoded (`boundary*=utf-8''%E2%82%AC`) was a 500
    `internal_error`, a traceback logged: the decoded `€` cannot be a delimiter line's Latin-1
    bytes. Readers differ on RFC 2231 (as on a part's `name*=`; one that reads only `boundary=`
    finds none): such a boundary is 400, in the OpenAI error shape, and nothing is sent."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=redis_url, passthrough="/v1/files")
    body = b'--bc\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nassistants\r\n--bc--\r\n'
    with gw.client() as alice:
        refused = alice.post("/v1/files", content=body.replace(b"bc", boundary), headers={
            "Content-Type": content_type})
    assert refused.status_code == 400, refused.text
    error = openai_error(refused.json())
    assert error["type"] == "invalid_request_error" and "boundary" in error["message"], error
    assert spy.seen == []


def test_an_upload_whose_boundary_is_not_ascii_is_refused(gateway_factory: Callable[..., Gateway], spy: SpyUpstream) -> None:
    """A boundary with non-ASCII bytes (`boundary=bé`, sent as UTF-8) was read as Latin-1 to split
    the parts Sentinel checked, but its Content-Type went upstream re-encoded as UTF-8 (`bÃ©`): the
    provider split the body at other delimiter lines than the ones Sentinel checked — parts Sentinel
    never read (a batch line naming any model or object) could be hidden inside one it did. A
    non-ASCII header value is not forwarded, so the upload has no type Sentinel reads: 400, nothing sent."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", passthrough="/v1/files")
    boundary = "bé".encode()
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nassistants\r\n--'
            + boundary + b"--\r\n")
    with gw.client() as alice:
        refused = alice.post("/v1/files", content=body, headers={
            "Content-Type": b"multipart/form-data; boundary=" + boundary})
    assert spy.seen == [], spy.seen  # the provider never reads a body split otherwise than Sentinel's check
    assert refused.status_code == 400, refused.text
    assert openai_error(refused.json())["type"] == "invalid_request_error"


LINE = (b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", '
        b'"messages": [{"role": "user", "content": "hi"}], "x": "=22, =22model=22: =22o1-pro=22, =22messages=22: '
        b'[{=22role=22: =22user=22, =22content=22: [{=22type=22: =22file=22, =22file=22: {=22file_id=22: '
        b'=22%s=22}}]}], =22y=22: =22"}}\n')


def test_an_upload_part_a_reader_decodes_into_other_bytes_is_refused(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """A part was checked as its raw bytes and went upstream as it came, but form readers decode a
    part's transfer encoding and a field's charset (aiohttp's `request.post()`): Bob's batch input,
    quoted-printable, read as a catalogue model's line here and ran o1-pro on Alice's file there
    (`=22` is `"`); a transcription's `stream`, base64 (`dHJ1ZQ==`) or UTF-16, or spelled `yes`, was not
    seen as asking for a stream, and the stream went unmetered. Each is now 400 naming the part, and
    nothing is sent; what the SDK sends is still taken."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", passthrough="/v1/files,/v1/files/*,/v1/audio/*")
    victim = gw.openai().files.create(file=("v.txt", b"alice's"), purpose="user_data").id
    form = {"Content-Type": "multipart/form-data; boundary=B"}
    batch = (b'--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--B\r\nContent-Disposition: '
             b'form-data; name="file"; filename="in.jsonl"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
             + LINE % victim.encode() + b"\r\n--B--\r\n")

    def transcription(stream: bytes, *headers: bytes) -> bytes:
        return (b'--B\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-4o-transcribe\r\n--B\r\n'
                b'Content-Disposition: form-data; name="stream"\r\n' + b"".join(h + b"\r\n" for h in headers)
                + b"\r\n" + stream + b'\r\n--B\r\nContent-Disposition: form-data; name="file"; filename="a.wav"'
                b"\r\n\r\nRIFF....\r\n--B--\r\n")

    with gw.client(key_for(gw, "bob")) as bob:
        spy.clear()
        refused = [
            (bob.post("/v1/files", content=batch, headers=form), "file"),
            (bob.post("/v1/audio/transcriptions", content=transcription(
                b"dHJ1ZQ==", b"Content-Transfer-Encoding: base64"), headers=form), "stream"),
            (bob.post("/v1/audio/transcriptions", content=transcription(
                "true".encode("utf-16"), b"Content-Type: text/plain; charset=utf-16"), headers=form), "stream"),
        ]
        yes = bob.post("/v1/audio/transcriptions", content=transcription(b"yes"), headers=form)
        assert spy.seen == []
        sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key=key_for(gw, "bob"), max_retries=0)
        checked = sdk.files.create(file=("in.jsonl", LINE.replace(b"=22", b"") % b"x"), purpose="batch")
    for r, param in refused:
        assert r.status_code == 400, r.text
        error = openai_error(r.json())
        assert error["type"] == "invalid_request_error" and error["details"] == {"param": param}, error
        assert f"'{param}'" in error["message"], error
    assert yes.status_code == 400 and openai_error(yes.json())["code"] == "stream_not_supported", yes.text
    assert checked.id and [(s.method, s.path) for s in spy.seen] == [("POST", "/v1/files")]


def aiohttp_reads(content_type: str, body: bytes) -> dict[str, bytes]:
    """The fields of an upload as aiohttp's `request.post()` reads them (a provider's lenient reader)."""
    from unittest import mock

    from aiohttp.streams import StreamReader
    from aiohttp.test_utils import make_mocked_request

    async def read() -> dict[str, bytes]:
        stream = StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())
        stream.feed_data(body)
        stream.feed_eof()
        request = make_mocked_request("POST", "/v1/files", headers={"Content-Type": content_type}, payload=stream)
        form = await request.post()
        return {k: v.file.read() if hasattr(v, "file") else v.encode() for k, v in form.items()}

    return asyncio.run(read())


@pytest.mark.parametrize(("content_type", "ours", "theirs"), [
    ('multipart/form-data; boundary=""B', b'""B', b"B"),
    ('multipart/form-data; boundary="B;S"', b"B;S", b"B"),
    ('multipart/form-data; x="; boundary=B"; boundary=S', b"S", b"B"),
    ('multipart/form-data; boundary="S\\"B"', b'S"B', b'S\\"B'),
], ids=["quotes-in-a-token", "quoted-semicolon", "inside-another-parameter", "escape"])
def test_an_upload_whose_boundary_readers_read_otherwise_is_refused(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, content_type: str, ours: bytes, theirs: bytes,
) -> None:
    """Sentinel read an upload with the boundary Python's email package reads in its Content-Type;
    aiohttp's `request.post()` reads another one there (`""B` as `B`) and skips all that comes before
    its first delimiter. Bob's upload read here as a checked batch input (a catalogue model, no id)
    and a note, read there as a batch input running o1-pro on Alice's file — vouched as checked, so
    `POST /v1/batches` would run it. A boundary not given plainly is now 400 and nothing is sent;
    one that readers read alike (quoted or not) is still taken."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", passthrough="/v1/files")
    victim = gw.openai().files.create(file=("v.txt", b"alice's"), purpose="user_data").id
    checked = LINE.replace(b"=22", b"") % b"x"
    evil = (b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "o1-pro", '
            b'"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "%s"}}]}]}}\n')

    def fields(boundary: bytes, *parts: tuple[bytes, bytes]) -> bytes:
        return b"".join(b"--" + boundary + b"\r\nContent-Disposition: form-data; " + head + b"\r\n\r\n" + value + b"\r\n"
                        for head, value in parts) + b"--" + boundary + b"--"

    hidden = fields(theirs, (b'name="purpose"', b"batch"), (b'name="file"; filename="in.jsonl"', evil % victim.encode()))
    body = fields(ours, (b'name="purpose"', b"batch"), (b'name="file"; filename="in.jsonl"', checked),
                  (b'name="note"', b"see below\r\n" + hidden)) + b"\r\n"
    assert aiohttp_reads(content_type, body) == {"purpose": b"batch", "file": evil % victim.encode()}
    with gw.client(key_for(gw, "bob")) as bob:
        spy.clear()
        refused = bob.post("/v1/files", content=body, headers={"Content-Type": content_type})
        assert spy.seen == []
        plain = bob.post("/v1/files", content=fields(b"B", (b'name="purpose"', b"batch"), (
            b'name="file"; filename="in.jsonl"', checked)) + b"\r\n", headers={"Content-Type": 'multipart/form-data; boundary="B"'})
    assert refused.status_code == 400, refused.text
    error = openai_error(refused.json())
    assert error["type"] == "invalid_request_error" and "boundary" in error["message"], error
    assert plain.status_code == 200, plain.text
    assert [(s.method, s.path) for s in spy.seen] == [("POST", "/v1/files")]


def lenient_names(disposition: str) -> list[str | None]:
    """The part's name as aiohttp's and werkzeug's readers read a Content-Disposition."""
    import warnings

    from aiohttp.multipart import parse_content_disposition
    from werkzeug.http import parse_options_header

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # aiohttp warns of a header it reads leniently
        return [parse_content_disposition(disposition)[1].get("name"), parse_options_header(disposition)[1].get("name")]


@pytest.mark.parametrize("disposition", [
    b'form-data; name="fi\\le_id"', b'form-data; name="\\file_id"', b'form-data; name="file_id"x',
    b'form-data; name=file_id"', b'form-data; name=file_id\\', b'form-data; name=file_id x',
], ids=["escape", "leading-escape", "after-quotes", "quote-in-a-token", "backslash-in-a-token", "space-in-a-token"])
def test_an_upload_part_whose_name_readers_read_otherwise_is_refused(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, disposition: bytes,
) -> None:
    """Sentinel read a part's name as Python's email package reads its Content-Disposition; aiohttp
    and werkzeug read `name="fi\\le_id"` as `file_id` (and werkzeug `name="file_id"x` too): Bob's
    part, no id field here, named Alice's file there, which a container of his would copy for him
    to read. A Content-Disposition not given plainly (a parameter's value a token, or quoted with
    no escape but `\\\\`) is now 400 and nothing is sent; what the SDKs send is still taken."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", passthrough="/v1/files,/v1/containers/*")
    victim = gw.openai().files.create(file=("v.txt", b"alice's"), purpose="user_data").id
    asyncio.run(gw.runtime.relay.ownership.claim("cntr_bob", "bob", None))
    form = {"Content-Type": "multipart/form-data; boundary=B"}
    body = b"--B\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + victim.encode() + b"\r\n--B--\r\n"
    assert "file_id" in lenient_names(disposition.decode())
    with gw.client(key_for(gw, "bob")) as bob:
        spy.clear()
        refused = bob.post("/v1/containers/cntr_bob/files", content=body, headers=form)
        assert spy.seen == []
        sdk = bob.post("/v1/containers/cntr_bob/files", files={"file": ("a \\ b.txt", b"bob's")})
    assert refused.status_code == 400, refused.text
    error = openai_error(refused.json())
    assert error["type"] == "invalid_request_error" and "Content-Disposition" in error["message"], error
    assert sdk.status_code == 404, sdk.text  # forwarded (the mock has no containers)
    assert [(s.method, s.path) for s in spy.seen] == [("POST", "/v1/containers/cntr_bob/files")]


def werkzeug_reads(content_type: str, body: bytes) -> dict[str, bytes]:
    """The fields of an upload as werkzeug (Flask's reader) reads them."""
    from io import BytesIO

    from werkzeug.formparser import parse_form_data

    _, form, files = parse_form_data({"wsgi.input": BytesIO(body), "CONTENT_TYPE": content_type,
                                      "CONTENT_LENGTH": str(len(body)), "REQUEST_METHOD": "POST"})
    return {**{k: v.encode() for k, v in form.items()}, **{k: f.read() for k, f in files.items()}}


@pytest.mark.parametrize("line_break", [b"\n", b"\r"], ids=["lf", "cr"])
def test_an_upload_delimiter_after_a_bare_line_break_is_refused(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, line_break: bytes,
) -> None:
    """A delimiter line is one after a CRLF to Sentinel (and aiohttp), after any line break to
    werkzeug: Bob's note, one field here, was a note and a `file_id` naming Alice's file there,
    which his container would copy for him to read. A body holding its delimiter after a bare LF
    or CR is now 400 and nothing is sent."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", passthrough="/v1/files,/v1/containers/*")
    victim = gw.openai().files.create(file=("v.txt", b"alice's"), purpose="user_data").id
    asyncio.run(gw.runtime.relay.ownership.claim("cntr_bob", "bob", None))
    form = "multipart/form-data; boundary=B"
    hidden = line_break.join([b"", b"--B", b'Content-Disposition: form-data; name="file_id"', b"", victim.encode()])
    body = b'--B\r\nContent-Disposition: form-data; name="note"\r\n\r\nsee below' + hidden + b"\r\n--B--\r\n"
    assert werkzeug_reads(form, body) == {"note": b"see below", "file_id": victim.encode()}
    with gw.client(key_for(gw, "bob")) as bob:
        spy.clear()
        refused = bob.post("/v1/containers/cntr_bob/files", content=body, headers={"Content-Type": form})
    assert refused.status_code == 400, refused.text
    assert "delimiter" in openai_error(refused.json())["message"], refused.text
    assert spy.seen == []


def test_a_batch_input_given_as_file_and_file_brackets_is_refused(gateway_factory: Callable[..., Gateway], spy: SpyUpstream) -> None:
    """Bob's batch input read as its `file` part — a catalogue model, no id — and vouched as checked,
    while a `file[]` part beside it, a file on the field the call takes files on, went unread: a
    provider that takes `file[]` as one of the files on `file` (as it takes the SDK's `image[]`)
    may store that one, running o1-pro on Alice's file. Such an upload is 400 and nothing is sent."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", passthrough="/v1/files")
    victim = gw.openai().files.create(file=("v.txt", b"alice's"), purpose="user_data").id
    evil = (b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "o1-pro", '
            b'"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "%s"}}]}]}}\n')
    files = [("file", ("in.jsonl", LINE.replace(b"=22", b"") % b"x")), ("file[]", ("in.jsonl", evil % victim.encode()))]
    with gw.client(key_for(gw, "bob")) as bob:
        spy.clear()
        refused = bob.post("/v1/files", data={"purpose": "batch"}, files=files)
        alone = bob.post("/v1/files", data={"purpose": "batch"}, files=files[:1])
    assert refused.status_code == 400 and "exactly one file" in openai_error(refused.json())["message"], refused.text
    assert alone.status_code == 200, alone.text
    assert [(s.method, s.path) for s in spy.seen] == [("POST", "/v1/files")]


@pytest.mark.parametrize("purpose", [b"batch", b"evals"])
def test_a_batch_input_naming_an_id_with_a_lone_surrogate_is_refused_on_every_store(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None, purpose: bytes
) -> None:
    """The stdlib JSON reader that checks a batch line orjson refuses takes `"\\ud800"` (and its raw
    bytes): an id holding one reached the ownership check — on Redis a key that cannot be sent
    (UnicodeEncodeError), in memory a 404 whose message cannot be written as JSON — and a model named
    so a 400 that could not be written either: each upload was a 500. Such a line is now refused
    (400), on either store, and nothing is sent (a lone surrogate in a prompt's text stays allowed) — and
    so is an eval's data file naming one (its items are read for ids as a batch's lines are)."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=backend_url, passthrough="/v1/files")
    form = {"Content-Type": "multipart/form-data; boundary=B"}

    def upload(line: bytes) -> bytes:
        return (b'--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n' + purpose + b'\r\n--B\r\nContent-Disposition: '
                b'form-data; name="file"; filename="in.jsonl"\r\n\r\n' + line + b"\r\n--B--\r\n")

    line = (b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "%s", '
            b'"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "%s"}}]}]}}\n')
    lines = [
        line % (b"gpt-4o-mini", b"file-\\ud800"),  # an escaped lone surrogate in a file id
        line % (b"gpt-4o-mini", "file-\ud800".encode("utf-8", "surrogatepass")),  # its bytes (not UTF-8)
        line % (b"\\udfff", b"x"),  # in the model named (a batch's: an eval's data names none it runs)
    ][: 3 if purpose == b"batch" else 2]
    with gw.client() as alice:
        spy.clear()
        answers = [alice.post("/v1/files", content=upload(line), headers=form) for line in lines]
    for r in answers:
        assert r.status_code == 400, r.text
        error = openai_error(r.json())
        assert error["type"] == "invalid_request_error" and "not text" in error["message"], error
    assert spy.seen == []


# --- a response named for a prompt cache comparison -------------------------------------------------
def test_a_response_named_for_a_prompt_cache_comparison_is_its_owners_only(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, backend_url: str | None
) -> None:
    """`prompt_cache_options.comparison_response_id` names a stored response whose prompt the provider
    compares with the request's (how much of its prefix the cache reused): Bob could have named Alice's
    and read, a token at a time, what her prompt began with. Naming another user's response there is
    the 404 an unknown one gets, on either store, and nothing is sent; Alice names her own."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=backend_url)
    alice = gw.openai()
    rid = alice.responses.create(model="gpt-4o-mini", input="alice's private prompt").id
    bob = openai.OpenAI(api_key=key_for(gw, "bob"), base_url=gw.url + "/v1", max_retries=0)
    spy.clear()
    refused = []
    for ref in (rid, "resp_000"):
        with pytest.raises(openai.NotFoundError) as caught:
            bob.responses.create(model="gpt-4o-mini", input="alice's", prompt_cache_options={"comparison_response_id": ref})
        refused.append(caught.value)
    assert spy.seen == []
    stolen, missing = refused
    assert stolen.code == missing.code == "object_not_found"
    assert stolen.response.text.replace(rid, "<id>") == missing.response.text.replace("resp_000", "<id>")
    mine = alice.responses.create(model="gpt-4o-mini", input="again", prompt_cache_options={"comparison_response_id": rid})
    assert mine.id != rid


# --- skills ---------------------------------------------------------------------------------------
def skills_upstream() -> Starlette:
    """The mock upstream, and a Skills API: `POST /v1/skills` makes `skill_1`, `skill_2`, ...; a skill
    is read and deleted at `/v1/skills/{id}` (any id: the provider account holds skills Sentinel did not see made)."""
    numbers = itertools.count(1)

    async def create(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"id": f"skill_{next(numbers)}", "object": "skill", "name": "payroll", "created_at": 1})

    async def one(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["sid"], "object": "skill", "name": "payroll", "created_at": 1})

    return Starlette(routes=[Route("/v1/skills", create, methods=["POST"]),
                             Route("/v1/skills/{sid}", one, methods=["GET", "DELETE"]),
                             Mount("/", app=create_mock_app())])


def with_skill(skill_id: str) -> dict[str, Any]:
    """A Responses request whose shell tool's container mounts the skill `skill_id`."""
    return {"model": "gpt-4o-mini", "input": "run the payroll skill", "tools": [{"type": "shell", "environment": {
        "type": "container_auto", "skills": [{"type": "skill_reference", "skill_id": skill_id, "version": "latest"}]}}]}


def test_a_skill_is_mounted_only_by_its_owner(gateway_factory: Callable[..., Gateway], backend_url: str | None) -> None:
    """A `skill_reference` (a shell tool's container, a container made through `/v1/containers`)
    names a skill of the provider account by id, its files mounted in the caller's container: Bob
    could mount Alice's skill, made through an allowed `/v1/skills`, or one never made through
    Sentinel, and read its files — on the metered Responses endpoint, which nothing needs allowing
    for. Skills are a collection of owned objects: naming one not the caller's is the 404 an unknown
    one gets, nothing is sent, listing them is not offered; Alice mounts hers."""
    with spying(skills_upstream()) as (_, upstream):
        gw = gateway_factory(openai_api_url=upstream.url + "/v1", redis_url=backend_url,
                             passthrough="/v1/skills/*,/v1/containers")
        with gw.client() as alice, gw.client(key_for(gw, "bob")) as bob:
            made = alice.post("/v1/skills", files={"files": ("SKILL.md", b"# payroll\nsalaries.csv")})
            assert made.status_code == 200, made.text
            skill = made.json()["id"]
            upstream.clear()
            refused = [
                (bob.post("/v1/responses", json=with_skill(ref)), ref) for ref in (skill, "skill_operator", "skill_000")
            ] + [
                (bob.post("/v1/containers", json={"name": "c", "skills": [{"type": "skill_reference", "skill_id": ref}]}),
                 ref) for ref in (skill, "skill_000")
            ] + [(bob.get(f"/v1/skills/{ref}"), ref) for ref in (skill, "skill_000")]
            listed = bob.get("/v1/skills")
            assert upstream.seen == []
            for (answer, ref), (missing, ghost) in itertools.product(refused, refused[-1:]):
                assert answer.status_code == 404, answer.text
                assert openai_error(answer.json())["code"] == "object_not_found"
                assert answer.text.replace(ref, "<id>") == missing.text.replace(ghost, "<id>")
            assert listed.status_code == 404 and openai_error(listed.json())["code"] == "endpoint_not_supported"
            assert alice.post("/v1/responses", json=with_skill(skill)).status_code == 200
            assert alice.get(f"/v1/skills/{skill}").json()["id"] == skill
            assert [s.path for s in upstream.seen] == ["/v1/responses", f"/v1/skills/{skill}"]


# --- custom voices and their consents ---------------------------------------------------------------
def voices_upstream() -> Starlette:
    """The mock upstream, and custom voices: `POST /v1/audio/voice_consents` records a consent
    (`cons_1`, ...), `POST /v1/audio/voices` makes a voice of one (`voice_2`, ...), each read, listed
    and deleted as the provider does; `POST /v1/audio/speech` speaks."""
    numbers = itertools.count(1)

    async def made(request: Request) -> JSONResponse:
        await request.body()
        kind = request.url.path.rsplit("/", 1)[-1]
        prefix = {"voice_consents": "cons", "voices": "voice"}[kind]
        return JSONResponse({"id": f"{prefix}_{next(numbers)}", "object": f"audio.{kind[:-1]}", "name": "Alice",
                             "created_at": 1})

    async def listed(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "cons_1", "name": "Alice's own voice"}]})

    async def one(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["oid"], "object": "audio.voice_consent", "name": "Alice"})

    async def speech(request: Request) -> Response:
        await request.body()
        return Response(b"RIFF....WAVE", media_type="audio/wav")

    return Starlette(routes=[
        Route("/v1/audio/voice_consents", made, methods=["POST"]), Route("/v1/audio/voice_consents", listed),
        Route("/v1/audio/voices", made, methods=["POST"]),
        Route("/v1/audio/voice_consents/{oid}", one, methods=["GET", "DELETE"]),
        Route("/v1/audio/voices/{oid}", one, methods=["DELETE"]),
        Route("/v1/audio/speech", speech, methods=["POST"]), Mount("/", app=create_mock_app()),
    ])


def speaking_in(voice: str) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "read my payslip aloud"}],
            "modalities": ["text", "audio"], "audio": {"voice": {"id": voice}, "format": "wav"}}


def test_a_custom_voice_and_its_consent_are_their_makers_only(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """A custom voice speaks as a real person, made from their recorded consent. With `/v1/audio/*`
    allowed (speech, transcriptions), Bob could list every user's consents, make a voice of Alice's,
    delete hers, and speak in her voice — on the metered chat endpoint too (`audio.voice.id`), where
    any custom voice of the provider account, one never made through Sentinel included, was his to
    use. Voices and consents are owned objects: naming one not the caller's (a `voice` object's `id`,
    a voice's `consent`) is the 404 an unknown one gets, nothing is sent, listing them is not
    offered; a `consent` key anywhere else (a chat's `metadata`) names nothing. Alice uses hers."""
    with spying(voices_upstream()) as (_, upstream):
        gw = gateway_factory(openai_api_url=upstream.url + "/v1", redis_url=backend_url, passthrough="/v1/audio/*")
        with gw.client() as alice, gw.client(key_for(gw, "bob")) as bob:
            consent = alice.post("/v1/audio/voice_consents", data={"name": "Alice", "language": "en"},
                                 files={"recording": ("consent.wav", b"RIFF....WAVE")}).json()["id"]
            made = alice.post("/v1/audio/voices", data={"name": "Alice", "consent": consent},
                              files={"audio_sample": ("sample.wav", b"RIFF....WAVE")})
            assert made.status_code == 200, made.text
            voice = made.json()["id"]
            upstream.clear()
            sample = {"audio_sample": ("sample.wav", b"RIFF....WAVE")}
            pairs = [
                [bob.post("/v1/chat/completions", json=speaking_in(ref)) for ref in (voice, "voice_000")],
                [bob.post("/v1/chat/completions", json=speaking_in(ref)) for ref in ("voice_operator", "voice_000")],
                [bob.post("/v1/audio/speech", json={"model": "gpt-4o-mini-tts", "input": "hi", "voice": {"id": ref}})
                 for ref in (voice, "voice_000")],
                [bob.post("/v1/audio/voices", data={"name": "Alice", "consent": ref}, files=sample)
                 for ref in (consent, "cons_000")],
                [bob.post("/v1/audio/voices", json={"name": "Alice", "consent": ref}) for ref in (consent, "cons_000")],
                [bob.delete(f"/v1/audio/voices/{ref}") for ref in (voice, "voice_000")],
                [bob.get(f"/v1/audio/voice_consents/{ref}") for ref in (consent, "cons_000")],
            ]
            listed = [bob.get("/v1/audio/voice_consents"), bob.get("/v1/audio/voices")]
            assert upstream.seen == []
            for stolen, missing in pairs:
                assert stolen.status_code == missing.status_code == 404, stolen.text
                assert openai_error(stolen.json())["code"] == "object_not_found"
                assert stolen.text.replace(voice, "<id>").replace(consent, "<id>").replace("voice_operator", "<id>") \
                    == missing.text.replace("voice_000", "<id>").replace("cons_000", "<id>")
            for answer in listed:
                assert answer.status_code == 404 and openai_error(answer.json())["code"] == "endpoint_not_supported"
            plain = bob.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "metadata": {"consent": "granted"},
                                                          "messages": [{"role": "user", "content": "hi"}]})
            assert plain.status_code == 200, plain.text
            assert alice.post("/v1/chat/completions", json=speaking_in(voice)).status_code == 200
            spoken = alice.post("/v1/audio/speech", json={"model": "gpt-4o-mini-tts", "input": "hi", "voice": {"id": voice}})
            assert spoken.status_code == 200 and spoken.content == b"RIFF....WAVE"
            assert alice.delete(f"/v1/audio/voices/{voice}").status_code == 200
            assert alice.post("/v1/chat/completions", json=speaking_in(voice)).status_code == 404  # forgotten


def test_an_upload_part_with_more_header_lines_than_a_form_has_is_refused(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream,
) -> None:
    """Each header line of a part is read into an email `Message`: 4,000 short ones (16 KB, just under
    the size read in a worker thread) took ~5 ms of the event loop. More than a form part has is a
    400 in the OpenAI error shape, and nothing is sent."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", passthrough="/v1/files")
    head = b'Content-Disposition: form-data; name="purpose"\r\n' + b"a: b\r\n" * 2_500  # (15 KB: under 16 KiB of headers)
    body = b"--bc\r\n" + head + b"\r\nassistants\r\n--bc--\r\n"
    with gw.client() as alice:
        refused = alice.post("/v1/files", content=body, headers={"Content-Type": "multipart/form-data; boundary=bc"})
    assert refused.status_code == 400, refused.text
    error = openai_error(refused.json())
    assert error["type"] == "invalid_request_error" and "header lines" in error["message"], error
    assert spy.seen == []


# --- videos ------------------------------------------------------------------------------------------
def videos_upstream() -> Starlette:
    """The mock upstream, and the Videos API as the provider serves it: `POST /v1/videos` (and an edit,
    an extension, a remix) makes a video (`video_1`, ...), `POST /v1/videos/characters` a character
    (`char_2`, ...); each is read, downloaded, deleted; `GET /v1/videos` lists every video of the
    account."""
    numbers = itertools.count(1)
    made: list[str] = []

    async def video(request: Request) -> JSONResponse:
        await request.body()
        made.append(f"video_{next(numbers)}")
        return JSONResponse({"id": made[-1], "object": "video", "status": "queued", "prompt": "a payslip"})

    async def character(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"id": f"char_{next(numbers)}", "name": "Alice"})

    async def listed(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": v, "prompt": "a payslip"} for v in made]})

    async def one(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["oid"], "object": "video", "prompt": "a payslip"})

    async def content(_: Request) -> Response:
        return Response(b"\x00\x00\x00\x18ftypmp42", media_type="video/mp4")

    return Starlette(routes=[
        Route("/v1/videos", video, methods=["POST"]), Route("/v1/videos", listed),
        Route("/v1/videos/edits", video, methods=["POST"]), Route("/v1/videos/extensions", video, methods=["POST"]),
        Route("/v1/videos/characters", character, methods=["POST"]), Route("/v1/videos/characters/{oid}", one),
        Route("/v1/videos/{oid}", one, methods=["GET", "DELETE"]), Route("/v1/videos/{oid}/content", content),
        Route("/v1/videos/{oid}/remix", video, methods=["POST"]), Mount("/", app=create_mock_app()),
    ])


def test_a_video_is_its_makers_only(gateway_factory: Callable[..., Gateway], backend_url: str | None) -> None:
    """Videos were no collection of owned objects: with `/v1/videos/*` allowed (the Videos API's
    uploads were even read as such), Bob listed every user's videos, read, downloaded, deleted and
    remixed Alice's, and edited or extended them by id. Now a video (and a character) is its maker's:
    naming one not the caller's — in the path, or as the `video` of an edit or an extension, JSON or
    a form's `video[id]` — is the 404 an unknown one gets, nothing is sent, listing is not offered.
    Alice's remix, edit and extension are hers; a video file given on `video` is a file, not an id."""
    with spying(videos_upstream()) as (_, upstream):
        gw = gateway_factory(openai_api_url=upstream.url + "/v1", redis_url=backend_url, passthrough="/v1/videos/*")
        with gw.client() as alice, gw.client(key_for(gw, "bob")) as bob:
            made = alice.post("/v1/videos", data={"prompt": "my payslip", "model": "sora-2"},
                              files={"input_reference": ("ref.png", b"\x89PNG....")})
            assert made.status_code == 200, made.text
            video = made.json()["id"]
            character = alice.post("/v1/videos/characters", data={"name": "Alice"},
                                   files={"video": ("me.mp4", b"\x00\x00\x00\x18ftypmp42")}).json()["id"]
            upstream.clear()
            pairs = [
                [bob.get(f"/v1/videos/{ref}") for ref in (video, "video_000")],
                [bob.get(f"/v1/videos/{ref}/content") for ref in (video, "video_000")],
                [bob.delete(f"/v1/videos/{ref}") for ref in (video, "video_000")],
                [bob.post(f"/v1/videos/{ref}/remix", json={"prompt": "at night"}) for ref in (video, "video_000")],
                [bob.post("/v1/videos/edits", json={"prompt": "x", "video": {"id": ref}}) for ref in (video, "video_000")],
                [bob.post("/v1/videos/extensions", json={"prompt": "x", "seconds": "4", "video": {"id": ref}})
                 for ref in (video, "video_000")],
                [bob.post("/v1/videos/edits", data={"prompt": "x", "video[id]": ref}, files={"f": ("f", b"")})
                 for ref in (video, "video_000")],
                [bob.get(f"/v1/videos/characters/{ref}") for ref in (character, "char_000")],
            ]
            listed = [bob.get("/v1/videos"), bob.head("/v1/videos"), bob.get("/v1/videos/characters")]
            assert upstream.seen == []
            for stolen, missing in pairs:
                assert stolen.status_code == missing.status_code == 404, stolen.text
                assert openai_error(stolen.json())["code"] == "object_not_found"
                assert stolen.text.replace(video, "<id>").replace(character, "<id>") \
                    == missing.text.replace("video_000", "<id>").replace("char_000", "<id>")
            assert [answer.status_code for answer in listed] == [404, 404, 404]
            assert openai_error(listed[0].json())["code"] == "endpoint_not_supported"
            remix = alice.post(f"/v1/videos/{video}/remix", json={"prompt": "at night"}).json()["id"]
            edit = alice.post("/v1/videos/edits", json={"prompt": "x", "video": {"id": video}}).json()["id"]
            extension = alice.post("/v1/videos/extensions", data={"prompt": "x", "seconds": "4", "video[id]": video},
                                   files={"f": ("f", b"")}).json()["id"]
            uploaded = alice.post("/v1/videos/edits", data={"prompt": "x"},
                                  files={"video": ("clip.mp4", b"video_000 is no id here")})
            assert uploaded.status_code == 200, uploaded.text
            for own in (video, remix, edit, extension, uploaded.json()["id"]):
                assert alice.get(f"/v1/videos/{own}").json()["id"] == own
                assert bob.get(f"/v1/videos/{own}").status_code == 404
            assert alice.get(f"/v1/videos/{video}/content").content.endswith(b"ftypmp42")
            assert alice.get(f"/v1/videos/characters/{character}").status_code == 200
            assert alice.delete(f"/v1/videos/{video}").status_code == 200
            assert alice.get(f"/v1/videos/{video}").status_code == 404  # forgotten
