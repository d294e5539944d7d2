"""The end user a provider is told of is Sentinel's pseudonym of the caller, on every metered surface.

A client naming someone else in OpenAI's `user`/`safety_identifier` or Anthropic's `metadata.user_id`
framed them in the provider's abuse records; a client naming no one gave the provider no per-user
signal. Each test reads what reached the mock upstream (`/__mock/last_request`), through the official
SDKs, and computes the expected pseudonym independently of Sentinel's code."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.api.conftest import Gateway
from tests.support.accounts import create_key

SECRET = "end-user-secret-for-tests-0123456789abcdef"
HAIKU = "claude-3-5-haiku-20241022"
MINI = "gpt-4o-mini"
VICTIM = "bob@example.com"  # the user a client tries to frame


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
    # The mock is no OpenAI host: `user` (what every OpenAI-compatible server takes); the client's
    # `safety_identifier` is replaced too, never dropped into another id.
    assert (body["user"], body["safety_identifier"]) == (alice, alice)
    assert "alice" not in alice and len(alice) == 32
    # Streamed, and naming no one: the provider still learns the caller.
    list(client.chat.completions.create(model=MINI, messages=[{"role": "user", "content": "hi"}], stream=True))
    assert sent(gw, "/v1/chat/completions")["user"] == alice


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


def test_translated_chat_names_the_caller_both_ways(gw: Gateway) -> None:
    alice = pseudonym("alice")
    gw.openai().chat.completions.create(model=HAIKU, messages=[{"role": "user", "content": "hi"}],
                                        user=VICTIM, safety_identifier=VICTIM)
    assert sent(gw, "/v1/messages")["metadata"] == {"user_id": alice}
    gw.anthropic().messages.create(model=MINI, max_tokens=20, metadata={"user_id": VICTIM},
                                   messages=[{"role": "user", "content": "hi"}])
    body = sent(gw, "/v1/chat/completions")
    assert body["user"] == alice and "safety_identifier" not in body  # (the mock is no OpenAI host)


def test_the_native_api_names_the_caller(gw: Gateway) -> None:
    with gw.client() as client:
        for tier in ("simple", "moderate", "complex"):  # whichever provider the tier draws
            answer = client.post("/native/v1/chat/completions",
                                 json={"tier": tier, "messages": [{"role": "user", "content": "hi"}]})
            assert answer.status_code == 200
            if answer.headers["x-sentinel-provider"] == "anthropic":
                assert sent(gw, "/v1/messages")["metadata"] == {"user_id": pseudonym("alice")}
            else:
                assert sent(gw, "/v1/chat/completions")["user"] == pseudonym("alice")


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
