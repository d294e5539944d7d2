"""Objects created upstream through Sentinel belong to their creator, on a real Redis.

Two users share the company's provider account. Bob tries every way to name Alice's stored
response and file — in the path (plain and encoded), in a body field, nested in a message — and
must get exactly the 404 an id that does not exist gets, with nothing reaching the provider.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import yaml

from tests.api.conftest import Gateway
from tests.support.accounts import create_key
from tests.support.attack import SpyUpstream, bearer, openai_error, raw_request, recorded_ids
from tests.support.servers import serving
from tests.support.upstream import ScriptedUpstream

DAY_MS = 86_400_000
PASSTHROUGH = "/v1/files/*,/v1/batches"
BATCH_LINE = (b'{"custom_id": "%s", "method": "POST", "url": "/v1/chat/completions", '
              b'"body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Answer: yes or no"}]}}')


def start(gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str, **settings: Any) -> Gateway:
    return gateway_factory(openai_api_url=spy.url + "/v1", redis_url=redis_url, passthrough=PASSTHROUGH, **settings)


def key_for(gw: Gateway, user: str) -> str:
    return asyncio.run(create_key(gw.settings.database_url, user))[1]


def ghost_like(object_id: str) -> str:
    """An id of the same shape that names nothing."""
    prefix, _, rest = object_id.partition("_") if "_" in object_id else object_id.partition("-")
    sep = "_" if "_" in object_id else "-"
    return prefix + sep + "0" * len(rest)


def same_as_missing(attempt: httpx.Response, missing: httpx.Response, real: str, ghost: str) -> None:
    """`attempt` on a real id answers exactly what `missing` answered for an id that does not exist."""
    assert attempt.status_code == missing.status_code == 404, (attempt.text, missing.text)
    assert attempt.text.replace(real, "<id>") == missing.text.replace(ghost, "<id>")
    openai_error(attempt.json())


def create_response(gw: Gateway, *, stream: bool, text: str) -> str:
    client = gw.openai()
    if not stream:
        return str(client.responses.create(model="gpt-4o-mini", input=text).id)
    events = list(client.responses.create(model="gpt-4o-mini", input=text, stream=True))
    completed = [e for e in events if e.type == "response.completed"]
    assert completed, [e.type for e in events]
    return str(completed[0].response.id)


def chat_with(content_part: dict[str, Any]) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "summarise"}, content_part]}]}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_stored_responses_are_their_creators(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str, stream: bool
) -> None:
    gw = start(gateway_factory, spy, redis_url)
    rid = create_response(gw, stream=stream, text="alice's private thoughts")
    ghost = ghost_like(rid)
    bob_key = key_for(gw, "bob")
    with gw.client() as alice, gw.client(bob_key) as bob:
        assert alice.get(f"/v1/responses/{rid}").json()["id"] == rid
        assert alice.get(f"/v1/responses/{rid}/input_items").status_code == 200
        spy.clear()
        attempts: list[tuple[httpx.Response, httpx.Response]] = [
            (bob.get(f"/v1/responses/{rid}"), bob.get(f"/v1/responses/{ghost}")),
            (bob.get(f"/v1/responses/{rid}/input_items"), bob.get(f"/v1/responses/{ghost}/input_items")),
            (bob.delete(f"/v1/responses/{rid}"), bob.delete(f"/v1/responses/{ghost}")),
            (bob.post(f"/v1/responses/{rid}/cancel"), bob.post(f"/v1/responses/{ghost}/cancel")),
        ]
        by_body = [
            [
                bob.post("/v1/responses", json={"model": "gpt-4o-mini", "input": "go on", "previous_response_id": ref}),
                bob.post("/v1/responses", json={"model": "gpt-4o-mini", "input": "go on", "previous_response_id": ref,
                                                "stream": True}),
                # (a key a lenient reader would read; an `item_reference` without its `id` is a 400 first)
                bob.post("/v1/responses", json={"model": "gpt-4o-mini", "input": [
                    {"role": "user", "content": "x"}, {"role": "user", "content": "y", "response_id": ref}]}),
            ]
            for ref in (rid, ghost)
        ]
        attempts += list(zip(*by_body, strict=True))
        for attempt, missing in attempts:
            same_as_missing(attempt, missing, rid, ghost)
        # encoded spellings of the same path
        encoded = "".join(f"%{ord(c):02X}" for c in rid[:4]) + rid[4:]
        for target in (f"/v1/responses/{encoded}", f"/v1/responses/{rid}/", f"/v1/responses/{encoded}/input_items"):
            r = raw_request(gw.url, "GET", target, headers=bearer(bob_key))
            assert r.status == 404 and b"private" not in r.body, (target, r.body)
        assert spy.seen == []  # none of Bob's attempts reached the provider account
        # Bob's DELETE deleted nothing; Alice continues her own conversation
        assert alice.get(f"/v1/responses/{rid}").status_code == 200
        follow = alice.post("/v1/responses", json={"model": "gpt-4o-mini", "input": "more", "previous_response_id": rid})
        assert follow.status_code == 200, follow.text
        assert alice.delete(f"/v1/responses/{rid}").status_code == 200
        gone, missing = alice.get(f"/v1/responses/{rid}"), alice.get(f"/v1/responses/{ghost}")
        same_as_missing(gone, missing, rid, ghost)
    ttl = redis.Redis.from_url(redis_url).pttl(f"sentinel:owner:{follow.json()['id']}")
    assert ttl >= 30 * DAY_MS  # ownership outlives the provider's 30-day retention


def test_files_are_their_creators(gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str) -> None:
    gw = start(gateway_factory, spy, redis_url)
    secret = b"alice's salary: 1,000,000"
    fid = gw.openai().files.create(file=("salary.txt", secret), purpose="user_data").id
    ghost = ghost_like(fid)
    bob_key = key_for(gw, "bob")
    with gw.client() as alice, gw.client(bob_key) as bob:
        assert alice.get(f"/v1/files/{fid}").json()["filename"] == "salary.txt"
        assert alice.get(f"/v1/files/{fid}/content").status_code == 200
        spy.clear()
        pairs = []
        for ref in (fid, ghost):
            pairs.append([
                bob.get(f"/v1/files/{ref}"),
                bob.get(f"/v1/files/{ref}/content"),
                bob.delete(f"/v1/files/{ref}"),
                bob.post("/v1/chat/completions", json=chat_with({"type": "file", "file": {"file_id": ref}})),
                bob.post("/v1/responses", json={"model": "gpt-4o-mini", "input": [{"role": "user", "content": [
                    {"type": "input_file", "file_id": ref}]}]}),
                bob.post("/v1/batches", json={"input_file_id": ref, "endpoint": "/v1/chat/completions",
                                              "completion_window": "24h"}),
                bob.post("/v1/chat/completions", json={**chat_with({"type": "text", "text": "x"}),
                                                       "metadata": {"deep": [{"file_ids": [ref]}]}}),
                # a code interpreter's container and a typed file reference (an eval run's JSONL source)
                bob.post("/v1/responses", json={"model": "gpt-4o-mini", "input": "list /mnt/data",
                                                "tools": [{"type": "code_interpreter", "container": ref}]}),
                bob.post("/v1/responses", json={"model": "gpt-4o-mini", "input": "x", "metadata": {
                    "data_source": {"type": "jsonl", "source": {"type": "file_id", "id": ref}}}}),
            ])
        for attempt, missing in zip(*pairs, strict=True):
            same_as_missing(attempt, missing, fid, ghost)
            assert secret.decode() not in attempt.text
        assert spy.seen == []
        content = alice.get(f"/v1/files/{fid}/content")
        assert content.status_code == 200 and secret.decode() in content.text
        summary = alice.post("/v1/chat/completions", json=chat_with({"type": "file", "file": {"file_id": fid}}))
        assert summary.status_code == 200, summary.text
    assert gw.openai().files.delete(fid).deleted is True
    with gw.client() as alice:
        for path in (f"/v1/files/{fid}", f"/v1/files/{fid}/content"):
            same_as_missing(alice.get(path), alice.get(path.replace(fid, ghost)), fid, ghost)


def test_a_body_whose_ids_cannot_all_be_checked_is_refused(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """Every id a body names is checked or the body is refused: more than 1,000 ids (the victim's
    last), a compressed body, or JSON orjson refuses (NaN, a lone surrogate) are 400 and reach no
    provider — never forwarded with the ids unread."""
    import gzip

    gw = start(gateway_factory, spy, redis_url)
    victim = gw.openai().files.create(file=("v.txt", b"alice's"), purpose="user_data").id
    bob_key = key_for(gw, "bob")
    with gw.client(bob_key) as bob:
        own = bob.post("/v1/files", files={"file": ("b.txt", b"bob's")}, data={"purpose": "user_data"})
        assert own.status_code == 200, own.text  # a multipart upload is not JSON and still works
        mine = own.json()["id"]
        spy.clear()
        batch = {"input_file_id": victim, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        attempts = [
            bob.post("/v1/chat/completions", json={**chat_with({"type": "text", "text": "x"}),
                                                   "metadata": {"file_ids": [mine] * 1000 + [victim]}}),
            bob.post("/v1/batches", json={**batch, "metadata": {"file_ids": [mine] * 1001}}),
            bob.post("/v1/batches", content=gzip.compress(orjson.dumps(batch)),
                     headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}),
            bob.post("/v1/batches", content=b'{"input_file_id": "' + victim.encode() + b'", "x": NaN}',
                     headers={"Content-Type": "application/json"}),
            bob.post("/v1/batches", content=b'{"input_file_id": "' + victim.encode() + b'", "x": "\\ud800"}',
                     headers={"Content-Type": "application/json"}),
        ]
        for attempt in attempts:
            assert attempt.status_code == 400, attempt.text
            openai_error(attempt.json())
        assert spy.seen == []
        fine = bob.post("/v1/chat/completions", json={**chat_with({"type": "text", "text": "x"}),
                                                      "metadata": {"file_ids": [mine] * 1000}})
        assert fine.status_code == 200, fine.text  # 1,000 of one's own ids are fine



def test_ids_are_read_as_the_provider_reads_the_body(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """Sentinel read every body as JSON whatever its Content-Type: a form naming Alice's file (inside
    a JSON string, so no JSON key named it) and a multipart body with a `input_file_id` field both
    reached the provider, and Bob owned the batch. Now multipart fields are read, other types are
    400, and a body Sentinel read as JSON goes upstream as `application/json`."""
    gw = start(gateway_factory, spy, redis_url)
    victim = gw.openai().files.create(file=("v.jsonl", BATCH_LINE % b"alice"), purpose="batch").id
    bob_key = key_for(gw, "bob")
    fields = {"input_file_id": victim, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    form = f'"&input_file_id={victim}&endpoint=/v1/chat/completions&completion_window=24h&x="'.encode()
    with gw.client(bob_key) as bob:
        mine = bob.post("/v1/files", files={"file": ("b.jsonl", BATCH_LINE % b"bob")},
                        data={"purpose": "batch"}).json()["id"]
        spy.clear()
        refused = [
            bob.post("/v1/batches", content=form, headers={"Content-Type": "application/x-www-form-urlencoded"}),
            bob.post("/v1/batches", content=form, headers={"Content-Type": "text/plain"}),
            bob.post("/v1/batches", data=fields, files={"f": ("f", b"")}),  # multipart, Alice's id in a field
            bob.post("/v1/batches", data={**fields, "input_file_id": mine}, files={"f": ("f", b"")},
                     headers={"Content-Type": "multipart/form-data"}),  # no boundary: cannot be read
        ]
        mixed_case = (b'--WebKitFormBoundaryAbC\r\nContent-Disposition: form-data; name="input_file_id"\r\n\r\n'
                      + victim.encode() + b"\r\n--WebKitFormBoundaryAbC--\r\n")
        refused += [
            # a browser's boundary is mixed case: once lowercased with the header, no part was found
            bob.post("/v1/batches", content=mixed_case,
                     headers={"Content-Type": "multipart/form-data; boundary=WebKitFormBoundaryAbC"}),
            bob.post("/v1/batches", content=__import__("gzip").compress(orjson.dumps(fields)),
                     headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}),
        ]
        # a form and text are not read as JSON; multipart is read, but a batch takes JSON only
        assert [r.status_code for r in refused] == [400] * 6, [r.text for r in refused]
        for r in refused:
            openai_error(r.json())
        assert spy.seen == []
        as_text = bob.post("/v1/batches", content=orjson.dumps({**fields, "input_file_id": mine}),
                           headers={"Content-Type": "application/json; charset=utf-8"})
        bare = bob.post("/v1/batches", content=orjson.dumps({**fields, "input_file_id": mine}),
                        headers={"Content-Type": ""})
        upload = bob.post("/v1/files", files={"file": ("c.jsonl", BATCH_LINE % b"c")}, data={"purpose": "batch"})
    assert upload.status_code == 200, upload.text
    assert [r.status_code for r in (as_text, bare)] == [200, 200], (as_text.text, bare.text)  # forwarded, made
    assert [(s.path, s.content_type.split(";")[0]) for s in spy.seen] == [
        ("/v1/batches", "application/json"), ("/v1/batches", "application/json"), ("/v1/files", "multipart/form-data")]


def test_an_upload_too_large_to_read_cheaply_is_refused(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """An upload is read in Python on the event loop that serves every user: 20,164 tiny parts (1 MiB)
    took 0.2 s of it, a 1 MiB batch input of `{}` lines 1.5 s, one line of `{}` items 0.4 s (10 MiB:
    ten times that). An upload of more parts than a form holds and a batch input of more JSON objects
    than a real one are 400 and reach no provider; a real batch input is read as before, a key given
    twice still refused."""
    gw = start(gateway_factory, spy, redis_url)
    real = b"\n".join(BATCH_LINE % str(n).encode() for n in range(2_000)) + b"\n"
    huge_line = BATCH_LINE.replace(b'"messages"', b'"x": [' + b"{}, " * 20_000 + b'{}], "messages"') % b"x"
    twice = BATCH_LINE.replace(b'"custom_id": "%s"', b'"custom_id": "1", "custom_id": "2"')
    with gw.client() as alice:
        refused = [
            alice.post("/v1/files", data={f"f{n}": "x" for n in range(20_000)}, files={"file": ("a.txt", b"x")}),
            alice.post("/v1/files", files={"file": ("a.jsonl", real + huge_line)}, data={"purpose": "batch"}),
            alice.post("/v1/files", files={"file": ("a.jsonl", b"{}\n" * 60_000)}, data={"purpose": "batch"}),
            alice.post("/v1/files", files={"file": ("a.jsonl", real + twice)}, data={"purpose": "batch"}),
        ]
        assert [r.status_code for r in refused] == [400] * 4, [r.text for r in refused]
        assert "given twice" in refused[3].json()["error"]["message"]
        assert spy.seen == []
        accepted = alice.post("/v1/files", files={"file": ("a.jsonl", real)}, data={"purpose": "batch"})
    assert accepted.status_code == 200, accepted.text
    assert spy.paths() == ["/v1/files"]


def test_a_batch_input_runs_only_a_model_the_gateway_offers(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """A batch input's lines were checked for the ids they name, never for the model they run: Bob
    uploaded lines naming `o1-pro`, created the batch, and the company's account ran a model the
    operator never offered. Such an upload is now 400 and reaches no provider."""
    gw = start(gateway_factory, spy, redis_url)
    with gw.client(key_for(gw, "bob")) as bob:
        refused = bob.post("/v1/files", data={"purpose": "batch"}, files={"file": ("b.jsonl", b"\n".join([
            BATCH_LINE % b"1", BATCH_LINE.replace(b"gpt-4o-mini", b"o1-pro") % b"2"]))})
        assert spy.seen == []
        accepted = bob.post("/v1/files", files={"file": ("b.jsonl", BATCH_LINE % b"1")}, data={"purpose": "batch"})
    assert refused.status_code == 400, refused.text
    assert "Line 2 of the batch input names the model 'o1-pro'" in openai_error(refused.json())["message"]
    assert accepted.status_code == 200, accepted.text


def test_a_batch_line_naming_a_lone_surrogate_model_is_refused_not_a_500(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """A batch line is read as Python's json reads it, which takes a lone surrogate: a line naming the
    model `"\\ud800"` was refused with a message quoting it, which no JSON answer can hold (orjson
    refused to write it) — a 500 without an error body or `X-Request-Id`, a traceback logged. It is
    a 400 saying the name is not text, and nothing reaches the provider."""
    gw = start(gateway_factory, spy, redis_url)
    line = BATCH_LINE.replace(b"gpt-4o-mini", b"\\ud800") % b"1"
    with gw.client(key_for(gw, "bob")) as bob:
        refused = bob.post("/v1/files", data={"purpose": "batch"}, files={"file": ("b.jsonl", line)})
    assert refused.status_code == 400, refused.text
    assert "names a model name that is not text in `body.model`" in openai_error(refused.json())["message"]
    assert refused.headers["x-request-id"]
    assert spy.seen == []


def test_a_batch_lines_tool_runs_only_a_model_the_gateway_offers(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """Only a line's `body.model` was checked: a `/v1/responses` line whose image generation tool
    names `gpt-image-1` was accepted, and the batch had the company's account run a model the
    operator never offered. A tool's `model` is held as the line's own is (400, nothing sent)."""
    gw = start(gateway_factory, spy, redis_url)

    def line(model: object) -> bytes:
        return orjson.dumps({"custom_id": "1", "method": "POST", "url": "/v1/responses", "body": {
            "model": "gpt-4o-mini", "input": "draw", "tools": [{"type": "image_generation", "model": model}]}})

    with gw.client(key_for(gw, "bob")) as bob:
        refused = [bob.post("/v1/files", data={"purpose": "batch"}, files={"file": ("b.jsonl", line(model))})
                   for model in ("gpt-image-1", 7)]
        assert spy.seen == []
        accepted = bob.post("/v1/files", data={"purpose": "batch"}, files={"file": ("b.jsonl", line("gpt-4o-mini"))})
    assert [r.status_code for r in refused] == [400, 400], [r.text for r in refused]
    messages = [openai_error(r.json())["message"] for r in refused]
    assert "names the model 'gpt-image-1' in `body.tools.0.model`" in messages[0], messages
    assert "names no model in `body.tools.0.model`" in messages[1], messages
    assert accepted.status_code == 200, accepted.text


@pytest.mark.parametrize("model", ["house", "gpt-4o", "elsewhere", "fast", "claude-3-5-haiku-20241022"])
def test_a_batch_input_runs_a_catalogue_model_by_the_name_its_provider_knows(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str, tmp_path: Path, model: str
) -> None:
    """The input goes upstream as it came, to the OpenAI provider, which runs the model its lines
    name: a model renamed upstream (`house` is `gpt-4o` there), a real model the catalogue leaves
    out, a model of another provider, an alias (which the provider may know as another model) are
    400; a catalogue model the OpenAI provider serves under its own name is run."""
    doc = {
        "providers": [{"name": "other", "kind": "openai", "base_url": spy.url + "/v1"}],
        "models": [{"name": "gpt-4o-mini", "provider": "openai"},
                   {"name": "house", "provider": "openai", "upstream_name": "gpt-4o"},
                   {"name": "elsewhere", "provider": "other"},
                   {"name": "claude-3-5-haiku-20241022", "provider": "anthropic"}],
        "aliases": {"fast": "gpt-4o-mini"},
    }
    (tmp_path / "catalogue.yaml").write_text(yaml.safe_dump(doc))
    gw = start(gateway_factory, spy, redis_url, providers_file=tmp_path / "catalogue.yaml")
    with gw.client() as alice:
        refused = alice.post("/v1/files", data={"purpose": "batch"}, files={
            "file": ("a.jsonl", BATCH_LINE.replace(b"gpt-4o-mini", model.encode()) % b"1")})
        assert spy.seen == []
        accepted = alice.post("/v1/files", files={"file": ("a.jsonl", BATCH_LINE % b"1")}, data={"purpose": "batch"})
    assert refused.status_code == 400, refused.text
    assert f"names the model '{model}'" in openai_error(refused.json())["message"]
    assert accepted.status_code == 200, accepted.text


def test_a_request_with_two_content_types_is_refused(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """Sentinel and the provider must read one Content-Type. With an upload's first and JSON's last,
    Sentinel took the body (JSON it cannot read: NaN) for an upload naming nothing while the provider
    read it as JSON naming Alice's file. Two Content-Types are 400 on every surface, before the body
    is read: nothing is reserved or forwarded."""
    gw = start(gateway_factory, spy, redis_url)
    victim = gw.openai().files.create(file=("v.txt", b"alice's"), purpose="user_data").id
    bob_key = key_for(gw, "bob")
    two = [("Content-Type", "multipart/form-data; boundary=x"), ("Content-Type", "application/json")]
    batch = b'{"input_file_id": "%s", "endpoint": "/v1/chat/completions", "completion_window": "24h", "x": NaN}'
    chat = orjson.dumps(chat_with({"type": "text", "text": "x"}))
    message = orjson.dumps({"model": "claude-3-5-haiku-20241022", "max_tokens": 5, "messages": [
        {"role": "user", "content": "x"}]})
    with gw.client(bob_key) as bob:
        spy.clear()
        attempts = [
            bob.post("/v1/batches", content=batch % victim.encode(), headers=two),
            bob.post("/v1/chat/completions", content=chat, headers=two),
            bob.post("/v1/chat/completions", content=chat, headers=two[::-1]),
        ]
        for attempt in attempts:
            assert attempt.status_code == 400, attempt.text
            assert openai_error(attempt.json())["code"] == "duplicate_header", attempt.text
            assert "content-type" in openai_error(attempt.json())["message"].lower()
        anthropic = bob.post("/v1/messages", content=message, headers=two)
        assert anthropic.status_code == 400, anthropic.text
        assert anthropic.json()["type"] == "error" and anthropic.json()["error"]["type"] == "invalid_request_error"
    assert spy.seen == []
    assert recorded_ids(gw.settings.database_url, redis_url, external_id="bob") == set()


def test_ownership_holds_across_replicas(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """Two Sentinels on one Redis and one database: an object made on either is the creator's on both."""
    one = start(gateway_factory, spy, redis_url)
    two = start(gateway_factory, spy, redis_url, database_url=one.settings.database_url)
    bob_key = key_for(one, "bob")
    made = {
        "response": create_response(one, stream=False, text="made on one"),
        "streamed": create_response(two, stream=True, text="made on two"),
    }
    fid = two.openai().files.create(file=("two.txt", b"from replica two"), purpose="user_data").id
    paths = [f"/v1/responses/{made['response']}", f"/v1/responses/{made['streamed']}", f"/v1/files/{fid}"]
    for gw in (one, two):
        with gw.client() as alice, gw.client(bob_key) as bob:
            for path in paths:
                assert alice.get(path).status_code == 200, (gw.url, path)
                denied = bob.get(path)
                assert denied.status_code == 404 and openai_error(denied.json())["code"] == "object_not_found"
    files_ttl = redis.Redis.from_url(redis_url).pttl(f"sentinel:owner:{fid}")
    assert files_ttl == -1  # a file is kept until it is deleted, so is its owner


def test_a_stored_chat_completion_is_not_readable_by_anyone(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """`store: true` keeps the completion upstream; the stored-completion routes are not offered."""
    gw = start(gateway_factory, spy, redis_url)
    with gw.client() as alice:
        stored = alice.post("/v1/chat/completions", json={**chat_with({"type": "text", "text": "keep"}), "store": True})
        assert stored.status_code == 200, stored.text
        cid = stored.json()["id"]
        spy.clear()
        for method, path in (("GET", f"/v1/chat/completions/{cid}"), ("GET", f"/v1/chat/completions/{cid}/messages"),
                             ("POST", f"/v1/chat/completions/{cid}"), ("DELETE", f"/v1/chat/completions/{cid}"),
                             ("GET", "/v1/chat/completions")):
            r = alice.request(method, path, content=orjson.dumps({"metadata": {"a": "b"}}))
            assert r.status_code in (404, 405), (method, path, r.text)
    assert spy.seen == []


def test_a_file_made_by_an_upload_is_owned_as_long_as_files_are(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """Completing an upload creates a file, which the provider keeps until it is deleted. Its owner
    was recorded for the upload's two days: after that Alice got 404 on her own file and the id was
    anyone's to claim. The upload keeps its two days; the file has no expiry."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tests.support.servers import serving

    async def create(_: Request) -> JSONResponse:
        return JSONResponse({"id": "upload_1", "object": "upload", "status": "pending"})

    async def complete(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["uid"], "object": "upload", "status": "completed",
                             "file": {"id": "file-from-upload_1", "object": "file", "purpose": "batch"}})

    upstream = Starlette(routes=[Route("/v1/uploads", create, methods=["POST"]),
                                 Route("/v1/uploads/{uid}/complete", complete, methods=["POST"])])
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=redis_url, passthrough="/v1/uploads/*")
        with gw.client() as alice:
            upload = alice.post("/v1/uploads", json={"filename": "a.jsonl", "purpose": "batch", "bytes": 1,
                                                     "mime_type": "text/jsonl"})
            done = alice.post("/v1/uploads/upload_1/complete", json={"part_ids": []})
    assert upload.status_code == done.status_code == 200, (upload.text, done.text)
    owners = redis.Redis.from_url(redis_url)
    assert 0 < owners.pttl("sentinel:owner:upload_1") <= 2 * DAY_MS
    assert owners.pttl("sentinel:owner:file-from-upload_1") == -1  # kept until deleted through Sentinel


def test_a_fine_tuning_jobs_result_files_are_its_owners(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """A fine-tuning job makes result files (its metrics, `result_files`), as a batch makes its output
    file: they were no one's, so Alice got 404 downloading her own job's results. Once a read of her
    job shows them they are hers, kept as files are; Bob's reads are still 404."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from tests.support.servers import serving

    async def create(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"id": "ftjob-1", "object": "fine_tuning.job", "status": "queued", "result_files": []})

    async def job(_: Request) -> JSONResponse:
        return JSONResponse({"id": "ftjob-1", "object": "fine_tuning.job", "status": "succeeded",
                             "fine_tuned_model": "ft:gpt-4o-mini:acme::1", "result_files": ["file-results-1"]})

    async def content(_: Request) -> Response:
        return Response(b"step,train_loss\n1,0.5\n", media_type="application/octet-stream")

    async def upload(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"id": "file-train-1", "object": "file", "purpose": "fine-tune", "filename": "t.jsonl",
                             "bytes": 2, "created_at": 1, "status": "processed"})

    upstream = Starlette(routes=[Route("/v1/files", upload, methods=["POST"]),
                                 Route("/v1/fine_tuning/jobs", create, methods=["POST"]),
                                 Route("/v1/fine_tuning/jobs/{jid}", job),
                                 Route("/v1/files/{fid}/content", content)])
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=redis_url,
                             passthrough="/v1/fine_tuning/*,/v1/files/*")
        training = gw.openai().files.create(file=("train.jsonl", b"{}"), purpose="fine-tune").id
        with gw.client() as alice, gw.client(key_for(gw, "bob")) as bob:
            made = alice.post("/v1/fine_tuning/jobs", json={"model": "gpt-4o-mini", "training_file": training})
            assert made.status_code == 200, made.text
            assert alice.get("/v1/files/file-results-1/content").status_code == 404  # not shown yet: no one's
            assert alice.get("/v1/fine_tuning/jobs/ftjob-1").json()["result_files"] == ["file-results-1"]
            results = alice.get("/v1/files/file-results-1/content")
            assert results.status_code == 200 and b"train_loss" in results.content, results.text
            assert bob.get("/v1/files/file-results-1/content").status_code == 404
    assert redis.Redis.from_url(redis_url).pttl("sentinel:owner:file-results-1") == -1


def test_a_files_content_is_never_read_for_ids_even_with_a_trailing_slash(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """A file's content is the user's own bytes: ids in it are never claimed. `content/` (an empty
    last segment, which a provider may ignore) was read as an object's answer, so a JSON file
    naming `output_file_id` claimed that id for its uploader."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tests.support.servers import serving

    async def create(_: Request) -> JSONResponse:
        return JSONResponse({"id": "file-own", "object": "file"})

    async def content(_: Request) -> JSONResponse:
        return JSONResponse({"id": "x", "output_file_id": "file-unowned", "file": {"id": "file-unowned-2"}})

    upstream = Starlette(routes=[Route("/v1/files", create, methods=["POST"]),
                                 Route("/v1/files/{fid}/content", content), Route("/v1/files/{fid}/content/", content)])
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=redis_url, passthrough="/v1/files/*")
        with gw.client() as alice:
            made = alice.post("/v1/files", files={"file": ("a.jsonl", BATCH_LINE % b"1")}, data={"purpose": "batch"})
            assert made.status_code == 200, made.text
            answers = [alice.get("/v1/files/file-own/content/"), alice.get("/v1/files/file-own/content")]
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    owners = redis.Redis.from_url(redis_url)
    assert owners.exists("sentinel:owner:file-own") == 1
    assert owners.exists("sentinel:owner:file-unowned", "sentinel:owner:file-unowned-2") == 0


def test_a_delete_with_a_trailing_slash_forgets_the_owner(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """`DELETE /v1/files/{id}/` deleted the file but kept its owner record (and the batch-input and
    charge marks), for ever. An object's path with a trailing slash is its path: it goes upstream
    without the slash and the records go with the object."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=redis_url, passthrough="/v1/files/*")
    owners = redis.Redis.from_url(redis_url)
    with gw.client() as alice:
        fid = alice.post("/v1/files", files={"file": ("a.txt", b"x")}, data={"purpose": "user_data"}).json()["id"]
        assert owners.exists(f"sentinel:owner:{fid}") == 1
        spy.clear()
        read = alice.get(f"/v1/files/{fid}/")
        gone = alice.delete(f"/v1/files/{fid}/")
        after = alice.get(f"/v1/files/{fid}")
    assert read.status_code == 200 and read.json()["id"] == fid, read.text
    assert gone.status_code == 200 and gone.json()["deleted"] is True, gone.text
    assert owners.exists(f"sentinel:owner:{fid}") == 0
    assert after.status_code == 404
    assert [(s.method, s.path) for s in spy.seen] == [("GET", f"/v1/files/{fid}"), ("DELETE", f"/v1/files/{fid}")]


def test_a_body_naming_its_own_file_a_thousand_times_looks_it_up_once(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """A body may name 1,000 objects: each was looked up on its own, one Redis command and round trip
    after another, the same id 1,000 times too. Each distinct id is looked up once, all together."""
    gw = start(gateway_factory, spy, redis_url)
    fid = gw.openai().files.create(file=("a.txt", b"mine"), purpose="user_data").id
    part = {"type": "file", "file": {"file_id": fid}}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [part] * 1000}]}
    stats = redis.Redis.from_url(redis_url)
    try:
        before = stats.info("commandstats").get("cmdstat_get", {}).get("calls", 0)
        with gw.client() as http:
            answer = http.post("/v1/chat/completions", json=body)
        gets = stats.info("commandstats").get("cmdstat_get", {}).get("calls", 0) - before
    finally:
        stats.close()
    assert answer.status_code == 200, answer.text
    assert gets < 20, gets  # (the owner's lookup, and the request's own: its key, its plan, ...)


def test_a_body_naming_many_distinct_ids_is_answered_not_a_busy_store(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """Looked up all at once, each id took a Redis connection of its own (a GET is not auto-pipelined):
    600 distinct ids named in one body exhausted the process's pool of 512 — that request was a 503
    `Redis is busy` instead of its 404, and every other request's store command failed meanwhile.
    The lookups go a few at a time: the answer is the one a missing object gets."""
    gw = start(gateway_factory, spy, redis_url)
    parts = [{"type": "file", "file": {"file_id": f"file-nobody{i:04d}"}} for i in range(600)]
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": parts}]}
    with gw.client() as http:
        answer = http.post("/v1/chat/completions", json=body)
    assert answer.status_code == 404, answer.text
    assert answer.json()["error"]["code"] == "object_not_found"
    assert spy.seen == []


def test_ids_nested_in_a_reference_field_are_checked(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """A reference field's list was read for its strings only: Alice's file id one list deeper
    (`[[id]]`) or as an object's `id` in it (`[{"id": id}]`) went upstream unchecked, to a provider
    that may read it leniently. Every id in a reference field's value is checked, at any depth."""
    gw = gateway_factory(openai_api_url=spy.url + "/v1", redis_url=redis_url, passthrough="/v1/files,/v1/vector_stores")
    fid = gw.openai().files.create(file=("salary.txt", b"alice's salary"), purpose="user_data").id
    ghost = ghost_like(fid)
    with gw.client(key_for(gw, "bob")) as bob:
        spy.clear()
        pairs = [
            [bob.post("/v1/vector_stores", json={"name": "v", "file_ids": [[ref]]}) for ref in (fid, ghost)],
            [bob.post("/v1/vector_stores", json={"name": "v", "file_ids": ["", [[{"id": ref}]]]}) for ref in (fid, ghost)],
            [bob.post("/v1/chat/completions", json=chat_with({"type": "file", "file": {"file_id": [[ref]]}}))
             for ref in (fid, ghost)],
        ]
    for attempt, missing in pairs:
        same_as_missing(attempt, missing, fid, ghost)
    assert spy.seen == []


def test_a_delete_below_an_object_keeps_its_owner(gateway_factory: Callable[..., Gateway], redis_url: str) -> None:
    """A DELETE forgot the object of its path whenever its last segment was that object's id: taking
    a file out of a store (`DELETE /v1/vector_stores/{vs}/files/{id}`) whose id the provider gave as
    the store's dropped the store's owner — unreachable to its maker from then on. Only a DELETE of
    the object's own path forgets it."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=redis_url, passthrough="/v1/vector_stores/*")
        with gw.client() as alice:
            upstream.json({"id": "vs_1", "object": "vector_store"})
            assert alice.post("/v1/vector_stores", json={"name": "v"}).status_code == 200
            upstream.json({"id": "vs_1", "object": "vector_store.file.deleted", "deleted": True})
            assert alice.delete("/v1/vector_stores/vs_1/files/vs_1").status_code == 200
            upstream.json({"id": "vs_1", "object": "vector_store"})
            kept = alice.get("/v1/vector_stores/vs_1")
            upstream.json({"id": "vs_1", "object": "vector_store.deleted", "deleted": True})
            gone = alice.delete("/v1/vector_stores/vs_1")
            after = alice.get("/v1/vector_stores/vs_1")
    assert kept.status_code == 200, kept.text
    assert gone.status_code == 200 and after.status_code == 404, (gone.text, after.text)
    assert redis.Redis.from_url(redis_url).exists("sentinel:owner:vs_1") == 0


def test_an_upload_answered_with_another_users_file_never_takes_its_batch_input(
    gateway_factory: Callable[..., Gateway], backend_url: str | None
) -> None:
    """A batch input's upload marks the file its answer names as its uploader's checked input. A
    provider answering Bob's upload with Alice's file id (its owner kept: Alice's) had Bob's mark
    replace hers: her own checked input was refused as unchecked (400 `unchecked_batch_input`). As
    what an upload's file holds (`remember_file`), the mark is now made only for the file's owner."""
    upstream = ScriptedUpstream()
    with serving(upstream) as srv:
        gw = gateway_factory(openai_api_url=srv.url + "/v1", redis_url=backend_url, passthrough=PASSTHROUGH)
        file = {"id": "file-alice", "object": "file", "bytes": 1, "created_at": 1, "filename": "in.jsonl",
                "purpose": "batch", "status": "processed"}
        with gw.client() as alice, gw.client(key_for(gw, "bob")) as bob:
            for client in (alice, bob):
                upstream.json(file)
                made = client.post("/v1/files", files={"file": ("in.jsonl", BATCH_LINE % b"1")}, data={"purpose": "batch"})
                assert made.status_code == 200, made.text
            upstream.json({"id": "batch_1", "object": "batch", "status": "validating", "input_file_id": "file-alice",
                           "endpoint": "/v1/chat/completions", "completion_window": "24h"})
            batch = alice.post("/v1/batches", json={"input_file_id": "file-alice", "endpoint": "/v1/chat/completions",
                                                   "completion_window": "24h"})
    assert batch.status_code == 200, batch.text
    assert gw.read_stored("sentinel:owner:file-alice") == b"alice"
