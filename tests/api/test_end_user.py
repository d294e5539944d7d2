"""The end user a provider is told of is Sentinel's pseudonym of the caller, on every metered surface.

A client naming someone else in OpenAI's `user`/`safety_identifier` or Anthropic's `metadata.user_id`
framed them in the provider's abuse records; a client naming no one gave the provider no per-user
signal. An OpenAI-compatible server other than OpenAI's own API is told only over a field the client
sent, unless the providers file's `end_user_field` says otherwise: a strict server (Mistral, Gemini's
OpenAI endpoint) refuses a field outside its schema, and every request to it failed, charged. Each
test reads what reached the mock upstream (`/__mock/last_request`), through the official SDKs, and
computes the expected pseudonym independently of Sentinel's code."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import redis
import yaml

from tests.api.conftest import UPSTREAM_KEY, Gateway
from tests.support.accounts import create_key

SECRET = "end-user-secret-for-tests-0123456789abcdef"
HAIKU = "claude-3-5-haiku-20241022"
MINI = "gpt-4o-mini"
VICTIM = "bob@example.com"  # the user a client tries to frame
END_USER_FIELDS = {"user", "safety_identifier"}


def pseudonym(external_id: str, secret: str | None = SECRET) -> str:
    message = b"sentinel-end-user:v1:" + external_id.encode()
    if secret is None:
        return hashlib.sha256(message).hexdigest()[:32]
    return hmac.new(secret.encode(), message, "sha256").hexdigest()[:32]


def sent(gw: Gateway, path: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(
        f"{gw.settings.anthropic_api_url}/__mock/last_request", params={"path": path}, timeout=5
    ).json()["body"]
    return body


@pytest.fixture
def gw(gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(end_user_secret=SECRET)


def test_a_relayed_chat_names_the_caller_not_the_user_the_client_named(gw: Gateway) -> None:
    client = gw.openai()
    answer = client.chat.completions.create(
        model=MINI, messages=[{"role": "user", "content": "hi"}], user=VICTIM, safety_identifier=VICTIM,
    )
    assert answer.choices[0].message.content == "Echo: hi"  # the answer is the same
    body = sent(gw, "/v1/chat/completions")
    alice = pseudonym("alice")
    # Each end-user field the client sent names the caller instead, never another id.
    assert (body["user"], body["safety_identifier"]) == (alice, alice)
    assert "alice" not in alice and len(alice) == 32
    # Streamed, and naming no one: the mock is no OpenAI host, so none is added (a strict server
    # refuses a field outside its schema).
    list(client.chat.completions.create(model=MINI, messages=[{"role": "user", "content": "hi"}], stream=True))
    assert not END_USER_FIELDS & sent(gw, "/v1/chat/completions").keys()


def test_two_users_have_two_pseudonyms_and_one_user_keeps_hers(gw: Gateway) -> None:
    _, bob_key = asyncio.run(create_key(gw.settings.database_url, VICTIM))
    ask = {"model": MINI, "messages": [{"role": "user", "content": "hi"}], "user": "alice"}
    seen = []
    for key in (gw.key, bob_key, gw.key):
        with gw.client(key) as client:
            assert client.post("/v1/chat/completions", json=ask).status_code == 200
        seen.append(sent(gw, "/v1/chat/completions")["user"])
    assert seen == [pseudonym("alice"), pseudonym(VICTIM), pseudonym("alice")]
    assert seen[0] != seen[1] and "bob" not in seen[1] and "example" not in seen[1]


def test_responses_completions_and_embeddings_name_the_caller(gw: Gateway) -> None:
    client, alice = gw.openai(), pseudonym("alice")
    answer = client.responses.create(model=MINI, input="hi", user=VICTIM, safety_identifier=VICTIM)
    assert answer.output_text == "Echo: hi"
    body = sent(gw, "/v1/responses")
    assert (body["user"], body["safety_identifier"]) == (alice, alice)
    client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi", user=VICTIM)
    assert sent(gw, "/v1/completions")["user"] == alice
    client.embeddings.create(model="text-embedding-3-small", input="hi", user=VICTIM)
    assert sent(gw, "/v1/embeddings")["user"] == alice


def test_messages_relayed_to_claude_name_the_caller(gw: Gateway) -> None:
    claude = gw.anthropic()
    message = claude.messages.create(model=HAIKU, max_tokens=20, metadata={"user_id": VICTIM},
                                     messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text == "Echo: hi"  # type: ignore[union-attr]
    assert sent(gw, "/v1/messages")["metadata"] == {"user_id": pseudonym("alice")}
    with claude.messages.stream(model=HAIKU, max_tokens=20, messages=[{"role": "user", "content": "hi"}]) as stream:
        assert stream.get_final_text() == "Echo: hi"
    assert sent(gw, "/v1/messages")["metadata"] == {"user_id": pseudonym("alice")}


def test_count_tokens_relayed_to_claude_never_passes_on_the_user_the_client_named(gw: Gateway) -> None:
    """`/v1/messages/count_tokens` forwarded a client's `metadata.user_id` as written, naming anyone
    to the provider. The call takes no `metadata`: none is added, and one the client wrote names the
    caller instead (as a pass-through body's end-user field does)."""
    claude = gw.anthropic()
    hi = [{"role": "user", "content": "hi"}]
    named = claude.messages.count_tokens(model=HAIKU, messages=hi, extra_body={"metadata": {"user_id": VICTIM}})
    body = sent(gw, "/v1/messages/count_tokens")
    assert body["metadata"] == {"user_id": pseudonym("alice")} and VICTIM not in str(body)
    plain = claude.messages.count_tokens(model=HAIKU, messages=hi)
    assert "metadata" not in sent(gw, "/v1/messages/count_tokens")  # none added
    assert named.input_tokens == plain.input_tokens > 0  # the count is the same


def test_translated_chat_names_the_caller_both_ways(gw: Gateway) -> None:
    alice = pseudonym("alice")
    gw.openai().chat.completions.create(model=HAIKU, messages=[{"role": "user", "content": "hi"}],
                                        user=VICTIM, safety_identifier=VICTIM)
    assert sent(gw, "/v1/messages")["metadata"] == {"user_id": alice}
    gw.anthropic().messages.create(model=MINI, max_tokens=20, metadata={"user_id": VICTIM},
                                   messages=[{"role": "user", "content": "hi"}])
    body = sent(gw, "/v1/chat/completions")
    # The client's `metadata.user_id` is not carried; the mock is no OpenAI host: none is added.
    assert not END_USER_FIELDS & body.keys() and "metadata" not in body and VICTIM not in str(body)


def test_the_native_api_names_the_caller(gw: Gateway) -> None:
    with gw.client() as client:
        for tier in ("simple", "moderate", "complex"):  # whichever provider the tier draws
            answer = client.post("/native/v1/chat/completions",
                                 json={"tier": tier, "messages": [{"role": "user", "content": "hi"}]})
            assert answer.status_code == 200
            if answer.headers["x-sentinel-provider"] == "anthropic":
                assert sent(gw, "/v1/messages")["metadata"] == {"user_id": pseudonym("alice")}
            else:  # the mock is no OpenAI host: none added
                assert not END_USER_FIELDS & sent(gw, "/v1/chat/completions").keys()


def test_without_a_secret_the_pseudonym_is_a_keyless_digest(gateway: Gateway) -> None:
    gateway.openai().chat.completions.create(model=MINI, messages=[{"role": "user", "content": "hi"}], user=VICTIM)
    assert sent(gateway, "/v1/chat/completions")["user"] == pseudonym("alice", None)


def test_a_pass_through_body_naming_an_end_user_names_the_caller(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(end_user_secret=SECRET, passthrough="/v1/images/*,/v1/moderations")
    with gw.client() as client:
        client.post("/v1/images/generations", json={"prompt": "a cat", "user": VICTIM})
        assert sent(gw, "/v1/images/generations") == {"prompt": "a cat", "user": pseudonym("alice")}
        client.post("/v1/moderations", json={"input": "hi"})
        assert sent(gw, "/v1/moderations") == {"input": "hi"}  # none added where the client named none


def stored(gw: Gateway, file_id: str) -> bytes:
    """The content of a file as the provider stored it (read from the mock, not through Sentinel)."""
    return httpx.get(f"{gw.settings.anthropic_api_url}/v1/files/{file_id}/content",
                     headers={"Authorization": "Bearer k"}, timeout=5).content


def provider(gw: Gateway, path: str) -> Any:
    """What the provider (the mock) answers a GET of `path` with, asked directly."""
    return httpx.get(f"{gw.settings.anthropic_api_url}{path}", headers={"Authorization": "Bearer k"}, timeout=5).json()


def batch_line(custom_id: str, url: str, body: dict[str, Any]) -> bytes:
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def test_a_batch_inputs_lines_name_the_caller(gateway_factory: Callable[..., Gateway]) -> None:
    """A batch input's lines are requests the provider runs in the caller's name later: they went
    upstream as the client wrote them, so a line's `user` or `safety_identifier` named anyone in the
    provider's abuse records. Each line now tells the provider the caller's pseudonym as the metered
    endpoint it runs would be told, whatever the client wrote (on OpenAI's own API, a line naming no
    one too)."""
    gw = gateway_factory(end_user_secret=SECRET, passthrough="/v1/files,/v1/files/*")
    chat = {"model": MINI, "messages": [{"role": "user", "content": "hi \u00e9"}]}
    content = b"\r\n".join([
        batch_line("named", "/v1/chat/completions", {**chat, "user": VICTIM, "safety_identifier": VICTIM}),
        batch_line("no one", "/v1/chat/completions", chat),
        b"",  # a blank line is skipped, as the provider skips it
        batch_line("response", "/v1/responses", {"model": MINI, "input": "hi", "safety_identifier": VICTIM}),
        batch_line("embedding", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi", "user": VICTIM}),
        # a lone surrogate in a prompt: read by the `json` module, written back as it reads it
        batch_line("odd", "/v1/chat/completions", chat).replace(b"hi \xc3\xa9", b"hi \\ud800"),
    ]) + b"\r\n"
    uploaded = gw.openai().files.create(file=("in.jsonl", content), purpose="batch")
    assert VICTIM.encode() not in stored(gw, uploaded.id)
    lines = [json.loads(line) for line in stored(gw, uploaded.id).splitlines()]
    alice = pseudonym("alice")
    assert [line["custom_id"] for line in lines] == ["named", "no one", "response", "embedding", "odd"]
    assert [line["body"] for line in lines] == [
        {**chat, "user": alice, "safety_identifier": alice},
        chat,  # (the mock is no OpenAI host: none added where the client named none)
        {"model": MINI, "input": "hi", "safety_identifier": alice},
        {"model": "text-embedding-3-small", "input": "hi", "user": alice},
        {**chat, "messages": [{"role": "user", "content": "hi \ud800"}]},
    ]
    assert uploaded.bytes == len(stored(gw, uploaded.id))  # the file the provider keeps is the one written


def test_a_batch_line_with_a_number_no_json_writer_writes_is_refused(gateway_factory: Callable[..., Gateway]) -> None:
    """A line is written back from what was read: `1e400`, which Python's `json` reads as an infinity
    (orjson refuses it), would be written as `null`. Refused, in OpenAI's error shape, and nothing is
    stored."""
    gw = gateway_factory(end_user_secret=SECRET, passthrough="/v1/files,/v1/files/*")
    line = batch_line("1", "/v1/chat/completions", {"model": MINI, "messages": [], "temperature": 1})
    files = len(provider(gw, "/v1/files")["data"])
    with gw.client() as client:
        refused = client.post("/v1/files", data={"purpose": "batch"},
                              files={"file": ("in.jsonl", line.replace(b'"temperature":1', b'"temperature":1e400'))})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["type"] == "invalid_request_error"
    assert "Line 1 of the batch input is not JSON Sentinel can read" in refused.json()["error"]["message"]
    assert len(provider(gw, "/v1/files")["data"]) == files


def test_an_uploads_end_user_field_names_the_caller(gateway_factory: Callable[..., Gateway]) -> None:
    """An upload's form fields went upstream as they came: an image edit's `user` named anyone. The
    field the client named is the caller's pseudonym instead (none added); the image, the prompt and
    every other part are the bytes the client sent."""
    gw = gateway_factory(end_user_secret=SECRET, passthrough="/v1/images/*")
    image = b"PNG-like bytes, as they are\r\n\r\n--not a boundary\r\n" * 64  # (the mock records text)
    with pytest.raises(openai.NotFoundError):  # the mock serves no image edits: what reached it is read
        gw.openai().images.edit(image=("cat.png", image, "image/png"), prompt="a hat", user=VICTIM)
    recorded = httpx.get(f"{gw.settings.anthropic_api_url}/__mock/last_request",
                         params={"path": "/v1/images/edits"}, timeout=5).json()
    parts = multipart_fields(recorded)
    assert parts["user"] == pseudonym("alice").encode()
    assert parts["prompt"] == b"a hat" and parts["image"] == image
    assert VICTIM.encode() not in recorded["body"].encode("utf-8", "surrogateescape")


def multipart_fields(recorded: dict[str, Any]) -> dict[str, bytes]:
    """A recorded multipart request's parts by name (as a form reader reads them)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    content_type = dict(recorded["headers"])["content-type"] if isinstance(recorded["headers"], list) else \
        recorded["headers"]["content-type"]
    raw = recorded["body"].encode("utf-8", "surrogateescape")
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in message.iter_parts()}


def test_a_batch_input_uploaded_before_its_lines_were_rewritten_runs_no_batch(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """A file an earlier Sentinel vouched for as a batch input went upstream with the end users the
    client wrote: it is no batch's input any more (400, nothing reaches the provider); deleting it
    drops its record. So is one whose lines an earlier Sentinel did not measure (it would reserve
    nothing). One uploaded now runs."""
    gw = gateway_factory(end_user_secret=SECRET, redis_url=redis_url, passthrough="/v1/files,/v1/files/*,/v1/batches")
    store = redis.Redis.from_url(redis_url)
    line = batch_line("1", "/v1/chat/completions", {"model": MINI, "messages": [], "user": VICTIM})
    with gw.client() as client:
        old = client.post("/v1/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", line)}).json()["id"]
        unmeasured = client.post("/v1/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", line)}).json()["id"]
        for file_id, earlier in ((old, "sentinel:batch-input:"), (unmeasured, "sentinel:batch-lines:")):
            store.delete(f"sentinel:batch-measured:{file_id}")  # kept as an earlier Sentinel kept it:
            store.set(earlier + file_id, "alice")
        new = client.post("/v1/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", line)}).json()["id"]
        batch = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
        refused = [client.post("/v1/batches", json={**batch, "input_file_id": file_id}) for file_id in (old, unmeasured)]
        sent_on = client.post("/v1/batches", json={**batch, "input_file_id": new})
        assert client.delete(f"/v1/files/{old}").status_code == 200
        assert client.delete(f"/v1/files/{unmeasured}").status_code == 200
    for answer in refused:
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "unchecked_batch_input", answer.text
    assert sent_on.status_code == 200 and sent(gw, "/v1/batches")["input_file_id"] == new
    assert store.get(f"sentinel:batch-input:{old}") is None and store.get(f"sentinel:batch-lines:{unmeasured}") is None


# --- which field an OpenAI-format provider is told in (the providers file's `end_user_field`) ----------
# Four providers on the mock, one per rule, each with a model of its own; the native API's tiers
# draw one each (simple: the default, moderate: `user`, complex: `none`).
RULES = {"strict": None, "chosen-user": "user", "own-api": "safety_identifier", "stripped": "none"}


def model_of(provider: str) -> str:
    return f"{provider}-small"


@pytest.fixture
def ruled(gateway_factory: Callable[..., Gateway], mock_upstream: str, tmp_path: Path) -> Gateway:
    providers = []
    for name, rule in RULES.items():
        entry = {"name": name, "kind": "openai", "base_url": mock_upstream + "/v1", "api_key": UPSTREAM_KEY,
                 "cheap_model": model_of(name)}
        if rule is not None:
            entry["end_user_field"] = rule
        providers.append(entry)
    tier = {"simple": "strict", "moderate": "chosen-user", "complex": "stripped"}
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump({"providers": providers, "tiers": {
        t: [{"provider": p, "model": model_of(p), "relative_cost": 1}] for t, p in tier.items()
    }}))
    return gateway_factory(end_user_secret=SECRET, providers_file=path)


def chat(gw: Gateway, provider: str, **fields: Any) -> dict[str, Any]:
    """What the mock was sent for a chat completion on `provider`'s model, the client adding `fields`."""
    answer = gw.openai().chat.completions.create(
        model=model_of(provider), messages=[{"role": "user", "content": "hi"}], **fields)
    assert answer.choices[0].message.content == "Echo: hi"
    return sent(gw, "/v1/chat/completions")


def native(gw: Gateway, tier: str, provider: str) -> dict[str, Any]:
    """What the mock was sent for a native request drawing `tier` (served by `provider`)."""
    with gw.client() as client:
        answer = client.post("/native/v1/chat/completions",
                             json={"tier": tier, "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200 and answer.headers["x-sentinel-provider"] == provider
    return sent(gw, "/v1/chat/completions")


def told(body: dict[str, Any]) -> dict[str, Any]:
    """The end-user fields of a body sent upstream."""
    return {key: body[key] for key in END_USER_FIELDS & body.keys()}


def test_an_openai_compatible_server_is_told_only_in_a_field_the_client_sent(ruled: Gateway) -> None:
    """The default off OpenAI's own API: nothing added (a strict server refused every request with
    one), and what the client named is the caller's pseudonym, never passed on."""
    alice, client = pseudonym("alice"), ruled.openai()
    assert told(chat(ruled, "strict", user=VICTIM)) == {"user": alice}
    assert told(chat(ruled, "strict", safety_identifier=VICTIM)) == {"safety_identifier": alice}
    assert told(chat(ruled, "strict")) == {}
    list(client.chat.completions.create(model=model_of("strict"), messages=[{"role": "user", "content": "hi"}],
                                        stream=True))
    assert told(sent(ruled, "/v1/chat/completions")) == {}
    assert client.responses.create(model=model_of("strict"), input="hi").output_text == "Echo: hi"
    assert told(sent(ruled, "/v1/responses")) == {}
    client.embeddings.create(model=model_of("strict"), input="hi")
    assert told(sent(ruled, "/v1/embeddings")) == {}
    client.embeddings.create(model=model_of("strict"), input="hi", user=VICTIM)
    assert told(sent(ruled, "/v1/embeddings")) == {"user": alice}
    # Translated from Anthropic's format, whose `metadata.user_id` is not carried; and the native API.
    ruled.anthropic().messages.create(model=model_of("strict"), max_tokens=20, metadata={"user_id": VICTIM},
                                      messages=[{"role": "user", "content": "hi"}])
    assert told(sent(ruled, "/v1/chat/completions")) == {}
    assert told(native(ruled, "simple", "strict")) == {}


def test_an_operator_can_have_a_server_told_in_user(ruled: Gateway) -> None:
    alice, client = pseudonym("alice"), ruled.openai()
    assert told(chat(ruled, "chosen-user")) == {"user": alice}
    assert told(chat(ruled, "chosen-user", user=VICTIM, safety_identifier=VICTIM)) == {
        "user": alice, "safety_identifier": alice}
    client.responses.create(model=model_of("chosen-user"), input="hi")
    assert told(sent(ruled, "/v1/responses")) == {"user": alice}
    client.embeddings.create(model=model_of("chosen-user"), input="hi")
    assert told(sent(ruled, "/v1/embeddings")) == {"user": alice}
    ruled.anthropic().messages.create(model=model_of("chosen-user"), max_tokens=20,
                                      messages=[{"role": "user", "content": "hi"}])
    assert told(sent(ruled, "/v1/chat/completions")) == {"user": alice}
    assert told(native(ruled, "moderate", "chosen-user")) == {"user": alice}


def test_safety_identifier_tells_a_server_as_openais_own_api_is(ruled: Gateway) -> None:
    """`safety_identifier` on chat and Responses (`user` where a call has none), as OpenAI's own
    API is told (an OpenAI reached through another URL: a proxy, an Azure deployment)."""
    alice, client = pseudonym("alice"), ruled.openai()
    assert told(chat(ruled, "own-api")) == {"safety_identifier": alice}
    assert told(chat(ruled, "own-api", user=VICTIM)) == {"safety_identifier": alice, "user": alice}
    client.responses.create(model=model_of("own-api"), input="hi")
    assert told(sent(ruled, "/v1/responses")) == {"safety_identifier": alice}
    client.embeddings.create(model=model_of("own-api"), input="hi")
    assert told(sent(ruled, "/v1/embeddings")) == {"user": alice}


def test_none_takes_out_the_end_user_the_client_named(ruled: Gateway) -> None:
    client = ruled.openai()
    body = chat(ruled, "stripped", user=VICTIM, safety_identifier=VICTIM)
    assert told(body) == {} and VICTIM not in str(body)
    list(client.chat.completions.create(model=model_of("stripped"), messages=[{"role": "user", "content": "hi"}],
                                        user=VICTIM, stream=True))
    assert told(sent(ruled, "/v1/chat/completions")) == {}
    client.responses.create(model=model_of("stripped"), input="hi", safety_identifier=VICTIM)
    assert told(sent(ruled, "/v1/responses")) == {}
    client.embeddings.create(model=model_of("stripped"), input="hi", user=VICTIM)
    assert told(sent(ruled, "/v1/embeddings")) == {}
    assert told(native(ruled, "complex", "stripped")) == {}
