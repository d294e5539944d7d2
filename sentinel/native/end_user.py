"""The end user a provider is told of: one rule for every body Sentinel sends for a caller's request.

A provider's abuse monitoring keys on an end-user id in the request body: OpenAI's `safety_identifier`
(and its older `user`), Anthropic's `metadata.user_id`. Sentinel knows the authenticated caller, so
the only id a provider is ever told is Sentinel's pseudonym for the caller (`sentinel.domain.end_user`),
never what the client wrote: a client naming another user there would frame them in the provider's
records. Every body that goes upstream for a metered request — relayed as the client wrote it,
translated, or built from a native request — passes through `with_end_user` (one place for the rule).

OpenAI's wire format: what a provider is told depends on its rule (`openai_end_user_field`: the
providers file's `end_user_field`, else one read from its base URL):

- `safety_identifier` (OpenAI's own API, `api.openai.com`) or `user` (opted in): that field is set,
  and the other one, when the client sent it, is replaced too, so that neither can carry another id.
  An endpoint without `safety_identifier` (legacy completions, embeddings) is given `user`.
- `named` (any other OpenAI-compatible server): no field is added — strict servers refuse a name
  outside their schema (Mistral's 422 `extra_forbidden`, Gemini's 400 `Unknown name`, a proxy's
  `Unsupported parameter: user`) — and an end-user field the client sent is replaced, never passed on.
- `none` (opted in): the client's end-user fields are taken out, none added.

Anthropic's: `metadata.user_id` is set (no other `metadata` key gets here: Anthropic refuses any,
and so does Sentinel first, `anthropic_checks.check_metadata`).
`/v1/messages/count_tokens` takes no `metadata`: none is added, and a `metadata.user_id` the client
wrote is replaced, as a pass-through body's end-user field is (below).

A pass-through JSON body (an image generation, ...) has an end-user field the client wrote replaced
(`with_named_end_user`), none added: most of those calls take none, and a strict server refuses one;
so has an upload's form field of that name (`names_end_user`: an image edit's `user`).

A batch's input file is requests the provider runs later, one a line (`with_batch_end_user`): a
line whose `url` is a metered endpoint's is told the end user as that endpoint is, any other's
body has the end-user field the client wrote replaced, as a pass-through body.
"""

from __future__ import annotations

from typing import Any, Final, Literal
from urllib.parse import urlsplit

SAFETY_IDENTIFIER: Final = "safety_identifier"
USER: Final = "user"
NAMED: Final = "named"  # no field added; one the client named replaced (the default off OpenAI's API)
NONE: Final = "none"  # the client's end-user fields taken out, none added
OPENAI_END_USER_FIELDS = (SAFETY_IDENTIFIER, USER)
# What the providers file's `end_user_field` of an OpenAI-format provider may say.
EndUserField = Literal["safety_identifier", "user", "none"]
# OpenAI's own API: the host whose servers read `safety_identifier` (the field that replaced `user`).
OPENAI_HOSTS = frozenset({"api.openai.com"})
# Endpoints of OpenAI's wire format whose request has a `safety_identifier` (the others have `user`).
SAFETY_IDENTIFIER_ENDPOINTS = frozenset({"chat", "responses"})
# A batch line's `url` that is a metered endpoint's, with that endpoint.
BATCH_ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/responses": "responses", "/v1/completions": "completions",
                   "/v1/embeddings": "embeddings"}


def openai_end_user_field(base_url: str, configured: str | None = None) -> str:
    """The rule of an OpenAI-format provider at `base_url` (see the module docstring): the one the
    operator `configured`, else `safety_identifier` on OpenAI's own API and `named` elsewhere."""
    if configured is not None:
        return configured
    return SAFETY_IDENTIFIER if urlsplit(base_url).hostname in OPENAI_HOSTS else NAMED


def with_openai_end_user(body: dict[str, Any], end_user: str, field: str, *, endpoint: str = "chat") -> dict[str, Any]:
    """`body` (never changed: a failover sends it again) for a provider of rule `field`: `end_user` in
    that field — `user` for an endpoint without `safety_identifier` — and in each end-user field the
    client sent; for `named`, only in those; for `none`, with those taken out."""
    if field == NONE:
        return {key: value for key, value in body.items() if key not in OPENAI_END_USER_FIELDS}
    out = dict(body)
    if field != NAMED:
        out[field if endpoint in SAFETY_IDENTIFIER_ENDPOINTS else USER] = end_user
    for key in OPENAI_END_USER_FIELDS:
        if key in out:
            out[key] = end_user
    return out


def with_anthropic_end_user(body: dict[str, Any], end_user: str, *, add: bool = True) -> dict[str, Any]:
    """`body` (never changed) with `metadata.user_id` naming `end_user`; without `add`, only where the
    client wrote one (a call that takes no `metadata`: count_tokens)."""
    metadata = body.get("metadata")
    if not add and not (isinstance(metadata, dict) and "user_id" in metadata):
        return body
    return {**body, "metadata": {**(metadata if isinstance(metadata, dict) else {}), "user_id": end_user}}


def with_end_user(body: dict[str, Any], kind: str, end_user: str, field: str, *, endpoint: str = "chat") -> dict[str, Any]:
    """`body` for a provider of wire format `kind` (`openai`, whose end-user rule `field` is; or
    `anthropic`) telling it `end_user` (see the module docstring)."""
    if kind == "anthropic":
        return with_anthropic_end_user(body, end_user)
    return with_openai_end_user(body, end_user, field, endpoint=endpoint)


def names_end_user(name: str) -> bool:
    """Whether a pass-through body's top-level field `name` (a JSON key, a form field) is an end-user
    field: one `with_named_end_user` replaces."""
    return name in OPENAI_END_USER_FIELDS


def with_named_end_user(body: Any, end_user: str) -> Any:
    """A pass-through JSON `body` with each end-user field the client named at its top level naming
    `end_user` instead; anything else as it is (never changed)."""
    if not isinstance(body, dict) or not any(key in body for key in OPENAI_END_USER_FIELDS):
        return body
    return {**body, **{key: end_user for key in OPENAI_END_USER_FIELDS if key in body}}


def with_batch_end_user(request: dict[str, Any], end_user: str, field: str) -> dict[str, Any]:
    """A batch input's line, `request` (never changed), for the OpenAI-format provider whose end-user
    `field` it is, telling it `end_user`: its `body` as a metered request's when its `url` is a
    metered endpoint's (`BATCH_ENDPOINTS`: `with_openai_end_user`), else as a pass-through body's
    (`with_named_end_user`)."""
    body, url = request.get("body"), request.get("url")
    if not isinstance(body, dict):
        return request
    endpoint = BATCH_ENDPOINTS.get(url) if isinstance(url, str) else None
    if endpoint is None:
        return {**request, "body": with_named_end_user(body, end_user)}
    return {**request, "body": with_openai_end_user(body, end_user, field, endpoint=endpoint)}
