"""The end-user rule of every body sent upstream (`sentinel.native.end_user`)."""

from __future__ import annotations

import pytest

from sentinel.native.end_user import (
    names_end_user,
    openai_end_user_field,
    with_anthropic_end_user,
    with_batch_end_user,
    with_end_user,
    with_named_end_user,
    with_openai_end_user,
)


@pytest.mark.parametrize(
    ("base_url", "field"),
    [
        ("https://api.openai.com/v1", "safety_identifier"),
        ("https://API.OpenAI.com/v1", "safety_identifier"),
        ("https://api.groq.com/openai/v1", "named"),
        ("http://localhost:8000/v1", "named"),
        ("https://api.openai.com.example.net/v1", "named"),
        ("https://proxy.example/api.openai.com/v1", "named"),
    ],
)
def test_openai_itself_is_told_in_safety_identifier_any_other_server_only_what_the_client_named(
    base_url: str, field: str,
) -> None:
    assert openai_end_user_field(base_url) == field


@pytest.mark.parametrize("configured", ["user", "safety_identifier", "none"])
def test_the_operators_choice_wins_over_the_base_url(configured: str) -> None:
    assert openai_end_user_field("https://api.mistral.ai/v1", configured) == configured
    assert openai_end_user_field("https://api.openai.com/v1", configured) == configured


def test_the_field_is_set_and_a_client_end_user_in_the_other_replaced() -> None:
    client = {"model": "m", "user": "bob", "safety_identifier": "bob"}
    assert with_openai_end_user(client, "p", "safety_identifier") == {"model": "m", "user": "p", "safety_identifier": "p"}
    assert with_openai_end_user({"model": "m"}, "p", "safety_identifier") == {"model": "m", "safety_identifier": "p"}
    assert with_openai_end_user({"model": "m"}, "p", "user") == {"model": "m", "user": "p"}
    assert with_openai_end_user({"model": "m", "safety_identifier": None}, "p", "user") == {
        "model": "m", "user": "p", "safety_identifier": "p"}
    assert client == {"model": "m", "user": "bob", "safety_identifier": "bob"}  # never changed: a failover resends it


def test_off_openais_api_only_a_field_the_client_sent_is_there_and_it_names_the_caller() -> None:
    client = {"model": "m", "user": "bob"}
    assert with_openai_end_user(client, "p", "named") == {"model": "m", "user": "p"}
    assert with_openai_end_user({"model": "m", "safety_identifier": "bob"}, "p", "named") == {
        "model": "m", "safety_identifier": "p"}
    for endpoint in ("chat", "responses", "completions", "embeddings"):
        assert with_openai_end_user({"model": "m"}, "p", "named", endpoint=endpoint) == {"model": "m"}
    assert client == {"model": "m", "user": "bob"}


def test_none_takes_the_clients_end_user_fields_out() -> None:
    client = {"model": "m", "user": "bob", "safety_identifier": "bob"}
    assert with_openai_end_user(client, "p", "none") == {"model": "m"}
    assert with_openai_end_user({"model": "m"}, "p", "none", endpoint="embeddings") == {"model": "m"}
    assert client == {"model": "m", "user": "bob", "safety_identifier": "bob"}


@pytest.mark.parametrize("endpoint", ["completions", "embeddings"])
def test_an_endpoint_without_safety_identifier_is_told_in_user(endpoint: str) -> None:
    assert with_openai_end_user({"model": "m"}, "p", "safety_identifier", endpoint=endpoint) == {"model": "m", "user": "p"}


def test_anthropic_is_told_in_metadata_user_id() -> None:
    client = {"model": "m", "metadata": {"user_id": "bob", "other": 1}}
    assert with_anthropic_end_user(client, "p") == {"model": "m", "metadata": {"user_id": "p", "other": 1}}
    assert client["metadata"] == {"user_id": "bob", "other": 1}
    assert with_anthropic_end_user({"model": "m"}, "p") == {"model": "m", "metadata": {"user_id": "p"}}
    assert with_anthropic_end_user({"metadata": None}, "p") == {"metadata": {"user_id": "p"}}
    assert with_end_user({}, "anthropic", "p", "user") == {"metadata": {"user_id": "p"}}
    assert with_end_user({}, "openai", "p", "user") == {"user": "p"}
    assert with_end_user({}, "openai", "p", "named") == {}


def test_a_call_without_metadata_has_only_the_user_id_the_client_wrote_replaced() -> None:
    """count_tokens takes no `metadata`: none is added (`add=False`), but a client's `user_id` named anyone."""
    client = {"model": "m", "metadata": {"user_id": "bob", "other": 1}}
    assert with_anthropic_end_user(client, "p", add=False) == {"model": "m", "metadata": {"user_id": "p", "other": 1}}
    assert client["metadata"] == {"user_id": "bob", "other": 1}
    assert with_anthropic_end_user({"model": "m"}, "p", add=False) == {"model": "m"}
    assert with_anthropic_end_user({"metadata": {"other": 1}}, "p", add=False) == {"metadata": {"other": 1}}
    assert with_anthropic_end_user({"metadata": {"user_id": None}}, "p", add=False) == {"metadata": {"user_id": "p"}}


def test_a_pass_through_body_has_only_the_end_user_it_named_replaced() -> None:
    client = {"prompt": "a cat", "user": "bob"}
    assert with_named_end_user(client, "p") == {"prompt": "a cat", "user": "p"} and client["user"] == "bob"
    assert with_named_end_user({"prompt": "a cat"}, "p") == {"prompt": "a cat"}
    assert with_named_end_user([{"user": "bob"}], "p") == [{"user": "bob"}]  # only an object's top level


def test_a_batch_line_is_told_as_the_endpoint_it_runs() -> None:
    """A line of a metered endpoint (`url`) is told the end user as that endpoint; any other line's body
    has only the end user the client named replaced; the rest of the line is left as it is."""
    line = {"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "user": "bob"}}
    assert with_batch_end_user(line, "p", "safety_identifier") == {
        **line, "body": {"model": "m", "user": "p", "safety_identifier": "p"}}
    assert line["body"] == {"model": "m", "user": "bob"}  # never changed
    embeddings = {**line, "url": "/v1/embeddings", "body": {"model": "m"}}
    assert with_batch_end_user(embeddings, "p", "safety_identifier")["body"] == {"model": "m", "user": "p"}
    for url in ("/v1/moderations", "/v1/chat/completions?x=1", ["/v1/chat/completions"], None):
        other = {**line, "url": url}
        assert with_batch_end_user(other, "p", "user")["body"] == {"model": "m", "user": "p"}
        assert with_batch_end_user({**other, "body": {"model": "m"}}, "p", "user")["body"] == {"model": "m"}
    assert with_batch_end_user({"url": "/v1/responses", "body": "x"}, "p", "user") == {"url": "/v1/responses", "body": "x"}


@pytest.mark.parametrize(("name", "named"), [("user", True), ("safety_identifier", True), ("users", False),
                                             ("metadata", False), ("User", False)])
def test_a_pass_through_field_names_an_end_user_by_its_name(name: str, named: bool) -> None:
    assert names_end_user(name) is named
