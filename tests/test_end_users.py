"""The pseudonym a provider knows a caller by (`sentinel.domain.end_user`)."""

from __future__ import annotations

import hashlib
import hmac

from sentinel.domain.end_user import EndUsers
from sentinel.providers.catalog import ProviderSpec
from sentinel.providers.chat import make_provider
from sentinel.providers.openai import OpenAICompatUpstream

SECRET = b"k" * 32


def test_a_keyed_pseudonym_is_an_hmac_of_the_id_alone() -> None:
    users = EndUsers(SECRET)
    alice = users.of("alice@example.com")
    assert alice == hmac.new(SECRET, b"sentinel-end-user:v1:alice@example.com", "sha256").hexdigest()[:32]
    assert users.of("alice@example.com") == alice and EndUsers(SECRET).of("alice@example.com") == alice  # stable
    assert users.of("bob@example.com") != alice
    assert EndUsers(b"j" * 32).of("alice@example.com") != alice  # another key: another pseudonym
    assert "alice" not in alice and len(alice) == 32 and users.keyed


def test_without_a_key_it_is_a_prefixed_sha256() -> None:
    users = EndUsers(None)
    assert users.of("42") == hashlib.sha256(b"sentinel-end-user:v1:42").hexdigest()[:32] and not users.keyed
    assert EndUsers(b"").of("42") == users.of("42")


def test_any_id_has_one_and_each_is_computed_once() -> None:
    users = EndUsers(SECRET, cached=2)
    assert len({users.of(i) for i in ("é", "\ud800", "a" * 255, "")}) == 4  # a lone surrogate too: never raises
    users.of("x")
    users.of("x")
    assert users.of.cache_info().hits >= 1 and users.of.cache_info().currsize == 2  # bounded


def test_an_upstream_on_openais_own_api_is_told_in_safety_identifier() -> None:
    own = OpenAICompatUpstream("openai", "https://api.openai.com/v1", None, None)  # type: ignore[arg-type]
    other = OpenAICompatUpstream("groq", "https://api.groq.com/openai/v1", None, None)  # type: ignore[arg-type]
    chosen = OpenAICompatUpstream("groq", "https://api.groq.com/openai/v1", None, None,  # type: ignore[arg-type]
                                  configured_end_user_field="user")
    assert (own.end_user_field, other.end_user_field, chosen.end_user_field) == ("safety_identifier", "named", "user")


def test_a_translated_or_native_body_for_openais_own_api_is_told_in_safety_identifier() -> None:
    own = make_provider(ProviderSpec("openai", "openai", "https://api.openai.com/v1", None), None,  # type: ignore[arg-type]
                        default_max_tokens=10)
    other = make_provider(ProviderSpec("vllm", "openai", "http://vllm:8000/v1", None), None,  # type: ignore[arg-type]
                          default_max_tokens=10)
    claude = make_provider(ProviderSpec("anthropic", "anthropic", "https://api.anthropic.com", None), None,  # type: ignore[arg-type]
                           default_max_tokens=10)
    chosen = make_provider(ProviderSpec("vllm", "openai", "http://vllm:8000/v1", None, "user"), None,  # type: ignore[arg-type]
                           default_max_tokens=10)
    assert own.with_end_user({"user": "bob"}, "p") == {"user": "p", "safety_identifier": "p"}
    assert other.with_end_user({}, "p") == {}  # none added off OpenAI's own API, unless chosen
    assert chosen.with_end_user({}, "p") == {"user": "p"}
    assert claude.with_end_user({}, "p") == {"metadata": {"user_id": "p"}}
