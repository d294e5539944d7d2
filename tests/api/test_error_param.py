"""Sentinel's OpenAI-shape errors name the offending parameter at `error.param`, where the official
openai SDK reads it (`exc.param`): OpenAI's shape is `{"error": {"message", "type", "param", "code"}}`.
`details.param` stays (documented before). The Anthropic shape carries no `param`."""

from __future__ import annotations

import anthropic
import openai
import pytest

from tests.api.conftest import Gateway

CHAT = [{"role": "user", "content": "Hi"}]


def test_the_openai_sdk_reads_the_param_of_sentinels_own_refusals(gateway: Gateway) -> None:
    """A bad `max_tokens`, an unknown model and a blank `previous_response_id`: each a 400/404 whose
    `exc.param` names the field (it was None: the field was only in `details.param`)."""
    sdk = gateway.openai()
    with pytest.raises(openai.BadRequestError) as bad_cap:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=-1)  # type: ignore[arg-type]
    assert bad_cap.value.param == "max_tokens", bad_cap.value.body
    with pytest.raises(openai.NotFoundError) as unknown:
        sdk.chat.completions.create(model="no-such-model", messages=CHAT)  # type: ignore[arg-type]
    assert unknown.value.code == "model_not_found"
    assert unknown.value.param == "model", unknown.value.body
    with pytest.raises(openai.BadRequestError) as blank:
        sdk.responses.create(model="gpt-4o-mini", input="go on", previous_response_id="  ")
    assert blank.value.param == "previous_response_id", blank.value.body
    assert isinstance(blank.value.body, dict)
    assert blank.value.body["details"] == {"param": "previous_response_id"}  # kept, as documented


def test_an_output_cap_past_any_believable_count_is_refused_naming_its_bound(gateway: Gateway) -> None:
    """A `/v1` output cap of 10**13 (past the most tokens Sentinel believes of one call) went to the
    provider, and a bad one was said to need only be ">= 1": a 400 naming the field and its bound, as
    `/v1/messages` says of its `max_tokens`, before anything is sent."""
    sdk = gateway.openai()
    too_many = 10**13
    calls = (
        ("max_tokens", lambda: sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=too_many)),
        ("max_completion_tokens", lambda: sdk.chat.completions.create(
            model="gpt-4o-mini", messages=CHAT, max_completion_tokens=too_many)),
        ("max_tokens", lambda: sdk.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hi", max_tokens=too_many)),
        ("max_output_tokens", lambda: sdk.responses.create(model="gpt-4o-mini", input="Hi", max_output_tokens=too_many)),
    )
    for param, call in calls:
        with pytest.raises(openai.BadRequestError) as refused:
            call()
        assert refused.value.param == param, refused.value.body
        assert "must be an integer from 1 to 1000000000000" in refused.value.message, refused.value.message
    assert sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=10**12).choices


def test_an_error_about_no_parameter_carries_param_null(gateway: Gateway) -> None:
    """OpenAI's shape always has `param`: null when the error names none (a 401 here)."""
    with gateway.client("sk-sentinel-wrong") as http:
        r = http.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": CHAT})
    assert r.status_code == 401, r.text
    assert "param" in r.json()["error"]
    assert r.json()["error"]["param"] is None


def test_a_relayed_provider_refusal_keeps_the_providers_param(gateway: Gateway) -> None:
    """An upstream 400 relayed on `/v1` keeps the provider's `param` with its type, code and message."""
    with pytest.raises(openai.BadRequestError) as refused:
        # (past the model's own 1,536, which the provider knows and Sentinel does not: 0 is Sentinel's 400)
        gateway.openai().embeddings.create(model="text-embedding-3-small", input="hi", dimensions=4000)
    assert refused.value.param == "dimensions", refused.value.body
    assert refused.value.code == "provider_rejected_request", refused.value.body


def test_the_native_api_names_the_param_at_the_top_as_its_schema_says(gateway: Gateway) -> None:
    """The native API's OpenAI-shape error has `param` at `error.param` (its `ErrorDetail` declared it)."""
    with gateway.client() as http:
        r = http.post("/native/v1/chat/completions", json={"tier": "simple", "messages": CHAT, "max_tokens": 0})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "max_tokens"


def test_the_anthropic_shape_is_unchanged(gateway: Gateway) -> None:
    """`/v1/messages` keeps Anthropic's `{"type": "error", "error": {"type", "message"}}`: no `param`."""
    with pytest.raises(anthropic.BadRequestError) as bad:
        gateway.anthropic().messages.create(
            model="claude-3-5-haiku-20241022", max_tokens=-1, messages=CHAT,  # type: ignore[arg-type]
        )
    assert isinstance(bad.value.body, dict)
    assert bad.value.body["type"] == "error"
    assert set(bad.value.body["error"]) == {"type", "message"}
