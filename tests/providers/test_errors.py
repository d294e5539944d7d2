"""The one place upstream error answers become unified errors (statuses documented in the README)."""

from __future__ import annotations

import email.utils
import time

import orjson
import pytest

from sentinel.errors import RateLimited, UpstreamStatusError
from sentinel.observability.redaction import redact
from sentinel.providers.errors import retired, upstream_error


def body(message: str, code: str = "") -> bytes:
    return orjson.dumps({"error": {"message": message, "code": code, "type": "x"}})


@pytest.mark.parametrize(
    ("status", "raw", "headers", "expected_status", "expected_code"),
    [
        (429, body("slow down"), [("retry-after", "7")], 429, "provider_rate_limited"),
        (401, body("bad key sk-live-123"), [], 502, "provider_auth_error"),
        (403, body("forbidden"), [], 502, "provider_auth_error"),
        (400, body("This model's maximum context length is 8192 tokens", "context_length_exceeded"), [], 400,
         "context_length_exceeded"),
        (400, orjson.dumps({"type": "error", "error": {"type": "invalid_request_error",
                                                       "message": "prompt is too long: 210000 tokens"}}), [], 400,
         "context_length_exceeded"),
        (400, body("bad temperature"), [], 400, "provider_rejected_request"),
        (500, body("boom"), [], 502, "provider_error"),
        (503, b"<html>down</html>", [], 502, "provider_error"),
    ],
)
def test_status_mapping(status: int, raw: bytes, headers: list[tuple[str, str]], expected_status: int,
                        expected_code: str) -> None:
    err = upstream_error("openai", status, raw, headers)
    assert (err.status, err.code, err.provider) == (expected_status, expected_code, "openai")
    if status == 429:
        assert err.headers["Retry-After"] == "7"
    if status in (401, 403):
        assert "sk-live" not in err.message  # the provider's text about our key is never shown
    if status == 429 or status >= 500:
        # The provider's text names the company's account, its limits and usage: never shown either.
        assert all(text not in err.message for text in ("slow down", "boom", "down</html>")), err.message


@pytest.mark.parametrize(
    ("value", "expected"),
    [("7", "7"), ("1.5", "2"), ("²", None), ("9" * 400, None), ("1e400", None), ("-3", None),
     ("Wed, 21 Oct 2015 07:28:00 GMT", "1"), ("Mon, 31 Feb 2099 07:28:00 GMT", None), ("Wed, 21 Oct 99999 07:28:00 GMT", None),
     ("Wed, 21 Oct 2099 07:28:00 GMT", "86400"), ("999999", "86400")],
)
def test_a_providers_retry_after_is_read_only_when_sane(value: str, expected: str | None) -> None:
    """A provider's Retry-After is relayed when it is a number of seconds or an HTTP date (the
    seconds until then; a date past asks for none), at most a day; junk, a digit-like character, a
    number too long for a float or a date that is none never turns the 429 into a 500."""
    err = upstream_error("openai", 429, body("slow down"), [("Retry-After", value)])
    assert (err.status, err.code) == (429, "provider_rate_limited")
    assert err.headers.get("Retry-After") == expected


@pytest.mark.parametrize("status", [429, 500, 503, 529])
def test_a_retry_after_given_as_an_http_date_is_the_seconds_until_then(status: int) -> None:
    """An HTTP date was ignored (the backoff a provider asked for with one was 30 s, and a 429's
    client was told nothing). A 5xx's is kept for the provider's health only: the client's 502
    says nothing of when to come back (the tier may be served by another model at once)."""
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    err = upstream_error("openai", status, body("busy"), [("retry-after", when)])
    assert isinstance(err, RateLimited | UpstreamStatusError) and err.retry_after is not None
    assert 100 < err.retry_after <= 120  # the date is to the second
    assert ("Retry-After" in err.headers) == (status == 429)
    without = upstream_error("openai", status, body("busy"), [])
    assert isinstance(without, RateLimited | UpstreamStatusError) and without.retry_after is None


def test_redact_replaces_every_whole_occurrence_of_the_key() -> None:
    key = "sk-proj-Hq7Wd2Zr8Kp3"
    raw = f'{{"error": {{"message": "key {key} (Bearer {key}) refused", "code": "{key}"}}}}'.encode()
    assert redact(raw, key) == b'{"error": {"message": "key *** (Bearer ***) refused", "code": "***"}}'
    assert redact(b"sk-abc***xyz", key) == b"sk-abc***xyz"  # a provider's own partial quote stays


@pytest.mark.parametrize("key", [None, "", "abc", "short12"])
def test_redact_leaves_alone_no_key_and_keys_too_short_to_mean_anything(key: str | None) -> None:
    raw = b'{"error": {"message": "abc short12 is wrong"}}'
    assert redact(raw, key) == raw


OPENAI_BAD_KEY = {"error": {"message": "Incorrect API key provided: sk-pro*****1234.", "type": "invalid_request_error",
                            "param": None, "code": "invalid_api_key"}}
OPENAI_SCOPES = {"error": {"message": "You have insufficient permissions for this operation. Missing scopes: "
                                      "api.responses.write.", "type": "invalid_request_error", "code": None}}
ANTHROPIC_BAD_KEY = {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}
ANTHROPIC_NOT_ALLOWED = {"type": "error", "error": {
    "type": "permission_error", "message": "Your API key does not have permission to use the specified resource."}}

OPENAI_REGION = {"error": {"code": "unsupported_country_region_territory", "message": "Country, region, or "
                           "territory not supported", "param": None, "type": "request_forbidden"}}
GOOGLE_LEAKED = {"error": {"code": 403, "message": "Your API key was reported as leaked. Please use another API key.",
                           "status": "PERMISSION_DENIED"}}
GOOGLE_FILE_DENIED = {"error": {"code": 403, "message": "You do not have permission to access the File abc or it may "
                                "not exist.", "status": "PERMISSION_DENIED"}}


ANTHROPIC_NO_CREDIT = {"type": "error", "error": {"type": "invalid_request_error", "message": "Your credit balance is "
                      "too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}
ANTHROPIC_SPEND_LIMIT = {"type": "error", "error": {"type": "invalid_request_error", "message": "You have reached your "
                         "specified API usage limits. You will regain access on 2026-01-01 at 00:00 UTC."}}


def google(code: int, status: str, reason: str) -> dict[str, object]:
    return {"error": {"code": code, "message": "Refused.", "status": status, "details": [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com"}]}}


@pytest.mark.parametrize(
    ("status", "raw", "refused"),
    [
        (401, orjson.dumps(OPENAI_BAD_KEY), True),
        (401, orjson.dumps(ANTHROPIC_BAD_KEY), True),
        (401, b"Unauthorized", True),  # an OpenAI-compatible server's bare 401
        (401, orjson.dumps(OPENAI_SCOPES), False),  # a restricted key, an endpoint it may not call
        (403, orjson.dumps(ANTHROPIC_NOT_ALLOWED), False),  # a model or feature this key may not use
        (403, b"<html>Forbidden</html>", False),
        (403, orjson.dumps({"error": {"type": "authentication_error", "message": "key revoked"}}), True),
        (403, orjson.dumps({"error": {"code": "invalid_api_key", "message": "no such key"}}), True),
        # the host's region blocked (OpenAI): no request of Sentinel's is served, whatever it asks
        (403, orjson.dumps(OPENAI_REGION), True),
        # Google's (Gemini's, as an object or its OpenAI-compatible endpoint's list of one)
        (403, orjson.dumps(GOOGLE_LEAKED), True),
        (403, orjson.dumps([GOOGLE_LEAKED]), True),
        (403, orjson.dumps([google(403, "PERMISSION_DENIED", "API_KEY_SERVICE_BLOCKED")]), True),
        (400, orjson.dumps([google(400, "INVALID_ARGUMENT", "API_KEY_INVALID")]), True),
        (403, orjson.dumps(GOOGLE_FILE_DENIED), False),  # a file named in the request: the client's
        # out of credit (OpenRouter's, an OpenAI-compatible provider's 402): the account's, not the user's
        (402, orjson.dumps({"error": {"code": 402, "message": "Insufficient credits. Add more using ..."}}), True),
        (402, b"Payment Required", True),
        # Anthropic's for the account (out of credit, past its spend limit): a 400, no 402
        (400, orjson.dumps(ANTHROPIC_NO_CREDIT), True),
        (400, orjson.dumps(ANTHROPIC_SPEND_LIMIT), True),
    ],
)
def test_a_refusal_of_the_provider_key_itself_is_told_from_one_of_the_request(
    status: int, raw: bytes, refused: bool
) -> None:
    """A 401 refuses the key (revoked, invalid): the provider fails every request until it is fixed.
    A 403 refuses what was asked (a client can ask for what the key may not do), unless its error
    says the key is bad; so does a 401 about a restricted key's scopes. Either way the client gets
    the same generic 502, never the provider's text."""
    for relayed in (False, True):  # the native API's and the /v1 surfaces' alike
        err = upstream_error("anthropic", status, raw, [], relay_client_errors=relayed)
        assert isinstance(err, UpstreamStatusError)
        assert (err.status, err.code, err.key_refused) == (502, "provider_auth_error", refused)
        assert not any(text in err.message for text in ("sk-", "Incorrect", "x-api-key", "permission", "scopes",
                                                        "leaked", "credits", "Country"))
    # a request carrying a client's beta switch: the refusal is that request's, whatever it says —
    # but the account's own state (no beta runs it out of credit)
    switched = upstream_error("anthropic", status, raw, [], client_switched=True)
    account = raw in (orjson.dumps(ANTHROPIC_NO_CREDIT), orjson.dumps(ANTHROPIC_SPEND_LIMIT))
    assert (isinstance(switched, UpstreamStatusError) and switched.key_refused) is account


def test_a_400_quoting_anthropics_account_refusal_is_still_the_requests() -> None:
    """Only a message that begins with Anthropic's words for the account is read as one: a refusal
    naming a field first (the client's text can follow it) is the request's, relayed as it is."""
    quoted = {"type": "error", "error": {"type": "invalid_request_error", "message": "messages.0.content: Your "
                                         "credit balance is too low to access the Anthropic API."}}
    err = upstream_error("anthropic", 400, orjson.dumps(quoted), [], relay_client_errors=True)
    assert (err.status, err.code) == (400, "provider_rejected_request")
    assert not isinstance(err, UpstreamStatusError)


def test_a_429_refusing_the_request_as_too_large_for_the_minute_is_told_from_a_rate_limit() -> None:
    """OpenAI's "Request too large ... on tokens per min" refuses the request itself (its input and
    `max_tokens`): no wait helps (no Retry-After, `x-should-retry: false`) and it is the request's
    refusal, not the provider's failure; "Rate limit reached" is the traffic's."""
    too_large = orjson.dumps({"error": {
        "message": "Request too large for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, "
                   "Requested 36278. The input or output tokens must be reduced in order to run successfully.",
        "type": "tokens", "param": None, "code": "rate_limit_exceeded"}})
    reached = orjson.dumps({"error": {
        "message": "Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, "
                   "Used 29937, Requested 385. Please try again in 644ms.",
        "type": "tokens", "param": None, "code": "rate_limit_exceeded"}})
    refused = upstream_error("openai", 429, too_large, [("retry-after", "1")])
    limited = upstream_error("openai", 429, reached, [("retry-after", "1")])
    assert isinstance(refused, RateLimited) and isinstance(limited, RateLimited)
    assert (refused.code, refused.retry_after, refused.headers) == (
        "provider_request_too_large", None, {"x-should-retry": "false"})
    assert (limited.code, limited.retry_after) == ("provider_rate_limited", 1.0)
    assert "org-abc" not in refused.message


def _body(**error: object) -> bytes:
    return orjson.dumps({"error": error})


@pytest.mark.parametrize(("status", "raw", "gone"), [
    (404, _body(message="The model `gpt-4o-mini` does not exist or you do not have access to it.",
                type="invalid_request_error", code="model_not_found"), True),
    (404, orjson.dumps({"type": "error", "error": {"type": "not_found_error", "message": "model: gpt-4o-mini"}}), True),
    # Not the model the request was sent to, not naming one, another 404, another status: never.
    (404, _body(message="The model `gpt-4o` does not exist or you do not have access to it.",
                code="model_not_found"), False),
    (404, _body(message="The model does not exist or you do not have access to it", code="model_not_found"), False),
    (404, _body(message="No such file: `gpt-4o-mini`", code="file_not_found"), False),
    (404, orjson.dumps({"type": "error", "error": {"type": "not_found_error", "message": "file: gpt-4o-mini"}}), False),
    (400, _body(message="The model `gpt-4o-mini` does not exist", code="model_not_found"), False),
    (404, b"not json", False),
])
def test_a_404_is_a_retired_model_only_when_it_says_so_of_the_model_sent(status: int, raw: bytes, gone: bool) -> None:
    assert retired(status, raw, "gpt-4o-mini") is gone


def _anthropic_limit(limit: str, kind: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": "rate_limit_error", "message": (
        f"This request would exceed the rate limit for your organization (0f2c-org) of {limit} {kind} tokens per "
        "minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. Please reduce the prompt "
        "length or the maximum tokens requested, or try again later.")}})


@pytest.mark.parametrize(("kind", "wanted", "alone"), [
    ("output", (100, 64_000), True),  # max_tokens over the account's output tokens a minute: never passes
    ("output", (100, 8_000), False),  # within it: the minute's traffic
    ("input", (40_000, 10), True),
    ("input", (29_000, 10), False),
])
def test_anthropics_429_naming_a_per_minute_limit_the_request_alone_passes_is_too_large(
    kind: str, wanted: tuple[int, int], alone: bool,
) -> None:
    """Anthropic's 429 reads the same for the minute's traffic and for a request that alone asks more
    than the limit it names (its `max_tokens`, from which Anthropic reckons output tokens a minute, or
    its input): the latter is the request's refusal, as OpenAI's "Request too large" is."""
    limit = "8,000" if kind == "output" else "30,000"
    error = upstream_error("anthropic", 429, _anthropic_limit(limit, kind), [("retry-after", "7")], wanted=wanted)
    assert isinstance(error, RateLimited)
    assert error.code == ("provider_request_too_large" if alone else "provider_rate_limited")
    assert error.retry_after == (None if alone else 7.0) and "0f2c-org" not in error.message
    unknown = upstream_error("anthropic", 429, _anthropic_limit(limit, kind), [])  # nothing asked: the traffic's
    assert isinstance(unknown, RateLimited) and unknown.code == "provider_rate_limited"
