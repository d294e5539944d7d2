"""An object named by an id that is not a string: a list, an object, a number or a boolean given where
Sentinel reads an id (`referenced_ids`) was read by no check — only strings were — and went to the
provider as it came. OpenAI refuses such bodies, but a lenient OpenAI-compatible server (or a proxy
coercing `["file-1"]` to `"file-1"`) would read another user's object. Each is a 400 naming where, in
the surface's shape, before anything is reserved or sent: a metered body, a pass-through one, a
batch input's line, an eval data file's item, an upload's JSON field; on `/v1/messages` any file is
refused whatever its id. A string id still works."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anthropic
import openai
import orjson
import pytest

from tests.api.conftest import Gateway
from tests.support.accounts import create_key
from tests.support.attack import SpyUpstream, openai_error, recorded_ids

# Where an `id` is read (a typed reference's, an item's, an audio answer's): anything but a string.
ID_VALUES: list[Any] = [["THEIRS"], {"id": "THEIRS"}, 7, True]
# What a reference key (`file_id`, ...) holds — a string, an object's `id`, lists of them (read,
# however deep) —, with something other than a string where the id goes.
KEY_VALUES: list[Any] = [{"id": ["THEIRS"]}, {"id": 7}, 7, False, [7], [{"id": ["THEIRS"]}]]


def naming(value: Any, theirs: str) -> Any:
    """`value` with its placeholder replaced by another user's object id."""
    return orjson.loads(orjson.dumps(value).replace(b"THEIRS", theirs.encode()))


def chat_file(file_id: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "summarise"}, {"type": "file", "file": {"file_id": file_id}}]}]}


def chat_audio(audio_id: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "audio": {"id": audio_id}},
                                                 {"role": "user", "content": "again"}]}


def responses_file(file_id: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "summarise"}, {"type": "input_file", "file_id": file_id}]}]}


def responses_container(file_id: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "input": "run it",
            "tools": [{"type": "code_interpreter", "container": {"type": "auto", "file_ids": ["", file_id]}}]}


# (path, body of a value, the parameter refused — its start —, whether the value is an `id`'s)
JSON_CASES = [
    ("/v1/chat/completions", chat_file, "messages.0.content.1.file.file_id", False),
    ("/v1/chat/completions", chat_audio, "messages.1.audio.id", True),
    ("/v1/responses", responses_file, "input.0.content.1.file_id", False),
    ("/v1/responses", responses_container, "tools.0.container.file_ids.1", False),
    ("/v1/conversations", lambda i: {"items": [{"type": "item_reference", "id": i}]}, "items.0.id", True),
    ("/v1/vector_stores", lambda f: {"name": "v", "file_ids": [f]}, "file_ids.0", False),
]


def people(gw: Gateway) -> tuple[openai.OpenAI, openai.OpenAI, str]:
    """Alice's and Bob's SDKs, and a file of Alice's."""
    alice = gw.openai()
    bob = openai.OpenAI(base_url=gw.url + "/v1", api_key=asyncio.run(create_key(gw.settings.database_url, "bob"))[1],
                        max_retries=0)
    return alice, bob, alice.files.create(file=("salary.txt", b"alice's salary"), purpose="user_data").id


PASSTHROUGH = "/v1/files,/v1/files/*,/v1/conversations,/v1/vector_stores,/v1/evals,/v1/evals/*"


@pytest.mark.parametrize(("path", "body", "param", "is_id"), JSON_CASES)
def test_an_id_that_is_not_a_string_is_refused_in_a_json_body(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, path: str, body: Callable[[Any], Any], param: str,
    is_id: bool,
) -> None:
    """Metered (chat, Responses) and pass-through bodies: 400 naming the parameter, nothing sent,
    nothing reserved; Bob's own file by a string id is still served (or 404 for Alice's)."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", passthrough=PASSTHROUGH, default_plan="requests=1000/1m",
                         admin_key="a" * 32)
    _, bob, alices = people(gw)
    own = bob.files.create(file=("notes.txt", b"bob's notes"), purpose="user_data").id
    used, recorded = gw.quota_used("bob"), recorded_ids(gw.settings.database_url, external_id="bob")
    spy.clear()
    for value in ID_VALUES if is_id else KEY_VALUES:
        with pytest.raises(openai.BadRequestError) as refused:
            bob.post(path.removeprefix("/v1"), body=body(naming(value, alices)), cast_to=object)
        error = openai_error(refused.value.response.json())
        assert error["type"] == "invalid_request_error" and error["param"].startswith(param), (value, error)
        assert "must name an object by its id" in error["message"], error
    assert spy.seen == []
    assert gw.quota_used("bob") == used
    assert recorded_ids(gw.settings.database_url, external_id="bob") == recorded
    with pytest.raises(openai.NotFoundError):  # a string: Alice's is the 404 of no object
        bob.post(path.removeprefix("/v1"), body=body(alices), cast_to=object)
    if path in ("/v1/chat/completions", "/v1/responses") and not is_id:
        bob.post(path.removeprefix("/v1"), body=body(own), cast_to=object)  # and Bob's own is served


def uploaded(purpose: bytes, line: dict[str, Any]) -> bytes:
    return (b'--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n' + purpose + b'\r\n--B\r\nContent-Disposition: '
            b'form-data; name="file"; filename="in.jsonl"\r\n\r\n' + orjson.dumps(line) + b"\n\r\n--B--\r\n")


def test_an_id_that_is_not_a_string_is_refused_in_a_batch_line_an_eval_item_and_an_upload_field(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream
) -> None:
    """A batch input's line and an eval data file's item are read for ids as a body is: the upload is
    400 naming the line and the parameter; so is an upload's field holding JSON. Nothing is sent;
    the same files naming a string id of Bob's own are stored."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", passthrough=PASSTHROUGH)
    _, bob, alices = people(gw)
    own = bob.files.create(file=("notes.txt", b"bob's notes"), purpose="user_data").id
    form = {"Content-Type": "multipart/form-data; boundary=B"}

    def batch(file_id: Any) -> bytes:
        return uploaded(b"batch", {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                                   "body": chat_file(file_id)})

    def eval_items(file_id: Any) -> bytes:
        return uploaded(b"evals", {"item": {"input": [{"type": "item_reference", "id": file_id}]}})

    def field(file_id: Any) -> bytes:
        resources = orjson.dumps({"file_search": {"vector_store_ids": [{"id": file_id}]}})
        return (b'--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n--B\r\n'
                b'Content-Disposition: form-data; name="tool_resources"\r\n\r\n' + resources + b"\r\n--B\r\n"
                b'Content-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nhello\r\n--B--\r\n')

    cases = [(batch, KEY_VALUES, "body.messages.0.content.1.file.file_id"),
             (eval_items, ID_VALUES, "item.input.0.id"),
             (field, ID_VALUES, "tool_resources.file_search.vector_store_ids.0.id")]
    spy.clear()
    with gw.client(bob.api_key) as raw:
        for upload, values, param in cases:
            for value in values:
                answer = raw.post("/v1/files", content=upload(naming(value, alices)), headers=form)
                assert answer.status_code == 400, (value, answer.text)
                error = openai_error(answer.json())
                assert param in error["message"] and "must name an object by its id" in error["message"], error
                assert error["type"] == "invalid_request_error", error
        assert spy.seen == []
        for upload, _, _ in cases:
            assert raw.post("/v1/files", content=upload(own), headers=form).status_code == 200


def test_an_eval_run_names_its_data_file_by_a_string_id(gateway_factory: Callable[..., Gateway], spy: SpyUpstream) -> None:
    """An eval run's `{"type": "file_id", "id": ...}` source must be a data file whose items were read
    (`unchecked_eval_data`): given as a list, an object, a number, it was neither checked for its
    owner nor as such a file, and went to the provider. 400 naming `data_source.source.id`."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", passthrough=PASSTHROUGH)
    alice, bob, _ = people(gw)
    items = orjson.dumps({"item": {"input": "hi"}}) + b"\n"
    alices = alice.files.create(file=("items.jsonl", items), purpose="evals").id
    made = bob.evals.create(name="e", data_source_config={"type": "custom", "item_schema": {"type": "object"}},
                            testing_criteria=[])

    def run(file_id: Any) -> Any:
        return bob.evals.runs.create(made.id, data_source={  # type: ignore[arg-type]
            "type": "responses", "model": "gpt-4o-mini", "source": {"type": "file_id", "id": file_id},
            "input_messages": {"type": "item_reference", "item_reference": "item.input"}})

    spy.clear()
    for value in ID_VALUES:
        with pytest.raises(openai.BadRequestError) as refused:
            run(naming(value, alices))
        assert openai_error(refused.value.response.json())["param"] == "data_source.source.id", value
    assert spy.seen == []
    with pytest.raises(openai.NotFoundError):
        run(alices)
    assert run(bob.files.create(file=("items.jsonl", items), purpose="evals").id).status == "queued"


@pytest.mark.parametrize("model", ["claude-3-5-haiku-20241022", "gpt-4o-mini"])
def test_a_messages_file_is_refused_whatever_its_id(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, model: str
) -> None:
    """`/v1/messages` names no file of the provider account at all (Sentinel serves no Files API): a
    `file` source or a `file_id` given as a list, an object, a number is refused as a string one is
    — 400 in Anthropic's shape naming the block, relayed or translated, nothing sent or reserved."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", anthropic_api_url=spy.url)
    claude = gw.anthropic()
    blocks = [({"type": "document", "source": {"type": "file", "file_id": "VALUE"}}, "messages.0.content.1.source"),
              ({"type": "image", "source": {"type": "file", "file_id": "VALUE"}}, "messages.0.content.1.source"),
              ({"type": "document", "source": {"file_id": "VALUE"}}, "messages.0.content.1.source"),
              ({"type": "container_upload", "file_id": "VALUE"}, "messages.0.content.1")]
    for block, param in blocks:
        for value in [*ID_VALUES, None]:
            named = orjson.loads(orjson.dumps(block).replace(b'"VALUE"', orjson.dumps(value)))
            turn = [{"role": "user", "content": [{"type": "text", "text": "read it"}, named]}]
            with pytest.raises(anthropic.BadRequestError) as refused:
                claude.messages.create(model=model, max_tokens=5, messages=turn)
            error = orjson.loads(refused.value.response.content)
            assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error", error
            assert param in error["error"]["message"], error
    assert spy.seen == []
    assert recorded_ids(gw.settings.database_url) == set()
