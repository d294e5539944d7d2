"""The official openai SDK's beta Responses (`client.beta.responses`, `/v1/responses...?beta=true`)
through Sentinel: metered and owned as `client.responses`, `beta=true` sent on as the SDK sent it."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from tests.api.conftest import Gateway
from tests.api.test_v1_proxy import last_upstream_request
from tests.support.accounts import create_key
from tests.support.attack import ledger_rows, recorded_ids
from tests.support.waiting import wait_for


def _text(response: Any) -> str:
    """A beta response's output text (`BetaResponse` has no `output_text`)."""
    return "".join(part.text for item in response.output if item.type == "message"
                   for part in item.content if part.type == "output_text")


def _recorded(gw: Gateway, user: str, count: int) -> list[dict[str, Any]]:
    wait_for(lambda: len(ledger_rows(gw.settings.database_url, user)) >= count)
    return ledger_rows(gw.settings.database_url, user)


def test_a_beta_response_is_metered_as_a_response_and_beta_true_reaches_the_provider(gateway: Gateway) -> None:
    client = gateway.openai()
    response = client.beta.responses.create(model="gpt-4o-mini", input="hello beta responses",
                                            betas=["responses_multi_agent=v1"])
    assert "hello beta responses" in _text(response)
    sent = last_upstream_request(gateway)
    assert (sent["path"], sent["query"]) == ("/v1/responses", {"beta": "true"}), sent
    assert {k.lower(): v for k, v in sent["headers"].items()}["openai-beta"] == "responses_multi_agent=v1"
    [row] = _recorded(gateway, "alice", 1)
    assert (row["endpoint"], row["model"]) == ("responses", "gpt-4o-mini"), row
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0, row

    # Its stored response is the caller's, read and deleted through the beta calls too.
    assert client.beta.responses.retrieve(response.id).id == response.id
    assert last_upstream_request(gateway)["query"] == {"beta": "true"}
    assert len(client.beta.responses.input_items.list(response.id).data) == 1  # the input, as the mock keeps it


def test_a_streamed_beta_response_is_relayed_and_charged(gateway: Gateway) -> None:
    client = gateway.openai()
    events = list(client.beta.responses.create(model="gpt-4o-mini", input="stream beta", stream=True))
    assert events[-1].type == "response.completed"
    assert "stream beta" in "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert last_upstream_request(gateway)["query"] == {"beta": "true"}
    [row] = _recorded(gateway, "alice", 1)
    usage = events[-1].response.usage
    assert usage is not None
    assert (row["endpoint"], row["input_tokens"], row["output_tokens"]) == (
        "responses", usage.input_tokens, usage.output_tokens), row


def test_another_users_beta_response_is_not_found(gateway: Gateway) -> None:
    alice = gateway.openai()
    made = alice.beta.responses.create(model="gpt-4o-mini", input="alice's secret")
    bob_key = asyncio.run(create_key(gateway.settings.database_url, "bob"))[1]
    bob = openai.OpenAI(base_url=gateway.url + "/v1", api_key=bob_key, max_retries=0)
    before = last_upstream_request(gateway)
    calls = [
        lambda: bob.beta.responses.retrieve(made.id),
        lambda: bob.beta.responses.input_items.list(made.id),
        lambda: bob.beta.responses.delete(made.id),
        lambda: bob.beta.responses.cancel(made.id),
        # nor continued by another user
        lambda: bob.beta.responses.create(model="gpt-4o-mini", input="more", previous_response_id=made.id),
    ]
    for call in calls:
        with pytest.raises((openai.NotFoundError, openai.BadRequestError)):
            call()
    assert last_upstream_request(gateway) == before  # nothing reached the provider
    assert alice.beta.responses.retrieve(made.id).id == made.id  # still alice's
    alice.beta.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        alice.beta.responses.retrieve(made.id)


def test_only_beta_true_is_taken_on_the_metered_endpoints(gateway: Gateway) -> None:
    """`beta=true` exactly, on `/v1/responses` only: any other query (another value, a repeat, one beside
    it, one on another metered endpoint) is refused as before, nothing sent, nothing recorded."""
    before = last_upstream_request(gateway)
    body = {"model": "gpt-4o-mini", "input": "x"}
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    refused = [
        ("/v1/responses?beta=TRUE", body), ("/v1/responses?beta=1", body), ("/v1/responses?beta=true&beta=true", body),
        ("/v1/responses?beta=true&model=gpt-4o", body), ("/v1/responses?model=gpt-4o&beta=true", body),
        ("/v1/responses?beta=%74rue", body), ("/v1/chat/completions?beta=true", chat),
    ]
    with gateway.client() as http:
        for url, payload in refused:
            r = http.post(url, json=payload)
            assert (r.status_code, r.json()["error"]["code"]) == (400, "unsupported_query"), (url, r.text)
    assert last_upstream_request(gateway) == before
    assert recorded_ids(gateway.settings.database_url) == set()
    with pytest.raises(openai.BadRequestError) as err:
        gateway.openai().beta.responses.create(model="gpt-4o-mini", input="x", extra_query={"model": "gpt-4o"})
    assert err.value.code == "unsupported_query"
