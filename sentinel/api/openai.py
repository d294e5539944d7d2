"""The OpenAI-compatible surface `/v1/*`: parse, authenticate, call the relay, render.

Served: the metered endpoints, the stored-response routes (`/v1/responses/{id}` and below), the
model list (the catalogue), and the `/v1` paths the operator allows with SENTINEL_PASSTHROUGH
(`/v1/messages*` is Anthropic's surface, `sentinel.api.anthropic`; Anthropic's legacy `/v1/complete`
is refused, pointing to it). Everything else
under `/v1` is 404 `endpoint_not_supported`: nothing reaches the provider account by default.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from sentinel.api.bodies import parse_json_body, query_items
from sentinel.api.context import context
from sentinel.api.deps import Deps
from sentinel.api.replies import render
from sentinel.errors import InvalidRequest, MethodNotAllowed, NotFound
from sentinel.governance.keys import KEY_PREFIX
from sentinel.observability.logging import clipped
from sentinel.observability.redaction import MIN_REDACTED
from sentinel.quota.media_calls import MEDIA_PATHS, VECTOR_SEARCH
from sentinel.services.models import ModelList
from sentinel.services.objects import COLLECTIONS, GRADERS, OBJECT_WORDS, classify
from sentinel.services.relay import OpenAIRelay

METERED = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
}
# The one query a metered endpoint takes, exactly so spelled: the openai SDK's beta Responses
# (`client.beta.responses.create`, `POST /v1/responses?beta=true`), metered as `client.responses` and
# sent on as the SDK sent it — the provider decides what the beta is. Its stored-response calls
# (`GET /v1/responses/{id}?beta=true`, ...) go by the stored-response routes, which keep their query.
BETA_RESPONSES = ("/v1/responses", b"beta=true")
LEGACY_COMPLETE = "/v1/complete"  # Anthropic's legacy Text Completions API: never served (see `passthrough`)
TYPED_PATHS = {*METERED, "/v1/models", "/v1/messages", "/v1/messages/count_tokens"}
# What Sentinel matches a `/v1` path against, by its first segments: the endpoints it serves (the typed
# ones, and the stored responses and models below them), the collections whose objects it keeps owners
# of, the paths whose bodies it reads for the models they run (`GRADERS`), and the media calls it
# charges by their path (`MEDIA_PATHS`). Spelled another way a lenient server reads as the same
# (`/v1/Files/{id}`, `/v1/files;x/{id}`, `/v1/files./{id}`, `/v1/Audio/Speech`), a path would miss
# these checks and be pass-through.
SPELLED: frozenset[tuple[str, ...]] = frozenset(
    {tuple(path[4:].split("/")) for path in TYPED_PATHS}
    | {tuple(collection.split("/")) for collection in COLLECTIONS}
    | set(GRADERS)
    | MEDIA_PATHS
)
# The words below an object that Sentinel reads a call by: OBJECT_WORDS, and a vector store's
# `search` (charged its rewritten query: `media_calls.media_call`).
_WORDS = OBJECT_WORDS | {VECTOR_SEARCH}
ANY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
# What a lenient server may read past in a path (ASCII by then): another case, a segment's `;`
# parameters (Java servlet containers drop them), dots and spaces trailing a segment (Windows), a
# `.suffix` ending the path (Spring MVC's suffix patterns, Rails' formats: `completions.json`).
_LENIENT = re.compile(r"[A-Z; ]|\.(?:/|[^/]*$)")
# The paths Sentinel meters (and Anthropic's, and the media calls of two segments it charges by
# their path: `MEDIA_PATHS`), as the last segments of another path: a gateway in front of a provider
# serves them below other prefixes too (LiteLLM's `/v1/v1/chat/completions`, `/v1/v1/audio/speech`,
# `/engines/{model}/chat/completions`, `/openai/deployments/{name}/chat/completions`, `/anthropic/v1/messages`).
_METERED_TAILS = frozenset(
    {tuple(path[4:].split("/")) for path in METERED} | {("v1", "messages"), ("v1", "complete")}
    | {path for path in MEDIA_PATHS if len(path) == 2}
)
# ... but for the organisation's usage reports (`/v1/organization/usage/completions`), which run nothing.
_REPORTS = "/v1/organization/"


def _leniently(segment: str) -> str:
    """`segment` as a lenient server may read it (see `_LENIENT`)."""
    return segment.partition(";")[0].rstrip(". ").lstrip(" ").casefold()


def _misspelled(path: str) -> str | None:
    """How `path` begins when spelled as Sentinel serves or checks it, if it is so only as a lenient
    server reads it (`/v1/FILES/{id}` and `/v1/files;x/{id}` are `files`, `/v1/files/{id}/Content`
    and `/v1/files/{id}/content.` are `files/{id}/content`): it begins as one of SPELLED, or has one
    of `_WORDS` below an object of a collection; None otherwise. Only paths no route matched and
    that hold what such a server reads past pay for the reading."""
    if _LENIENT.search(path) is None:
        return None
    segments = path[4:].split("/")
    wanted = [_leniently(segment) for segment in segments]
    wanted[-1] = wanted[-1].partition(".")[0] or wanted[-1]  # a suffix pattern's `.json`
    for size in (2, 1):
        head = tuple(wanted[:size])
        if len(head) == size and head in SPELLED and tuple(segments[:size]) != head:
            return "/".join(head)
    if classify(segments).collection is not None:
        for at, word in enumerate(wanted):
            if word in _WORDS and segments[at] != word:
                return "/".join([*segments[:at], word])
    return None


def _metered_below(path: str) -> str | None:
    """The metered endpoint `path` ends as (read as `_misspelled` reads it, one trailing slash
    dropped), when it is not that endpoint itself: `/v1/v1/chat/completions`,
    `/v1/engines/{model}/completions`, `/v1/x/responses.json` (a gateway in front of the provider may
    serve the endpoint there, run as pass-through: one request, no catalogue, no token reservation);
    None otherwise, and for the organisation's usage reports (`_REPORTS`)."""
    if path.startswith(_REPORTS):
        return None
    segments = path[4:].rstrip("/").split("/")
    tail = [_leniently(segment) for segment in segments[-2:]]
    tail[-1] = tail[-1].partition(".")[0] or tail[-1]
    for size in (2, 1):
        end = tuple(tail[-size:])
        if len(end) == size and end in _METERED_TAILS:
            served = "/".join(end) if end[0] == "v1" else "v1/" + "/".join(end)
            if path == "/" + served:
                return None
            # The endpoint's own slash is answered by `passthrough` (a typed path) or as Anthropic's legacy
            # API; a media call's (`/v1/audio/speech/`) is that call to a server reading past the slash.
            return None if path.rstrip("/") == "/" + served and end not in MEDIA_PATHS else served
    return None


def _v1_within(path: str) -> str | None:
    """The `/v1` path `path` holds after a `v1` segment of its own below `/v1` (read as `_misspelled`
    reads a segment: `V1`, `v1;x`, `v1.`), None when it holds none. A server in front of the provider
    reads what follows as that `/v1` path (LiteLLM's `/v1/v1/...`, an `/openai/v1/...` pass-through
    route): `/v1/v1/files/{id}/content`, `/v1/openai/v1/organization/admin_api_keys` or
    `/v1/v1/batches` were sent on as spelled under `/v1/*`, another user's file read, the account's
    keys and every user's batches listed, none of the checks of the path they name applied."""
    segments = path[4:].split("/")
    for at, segment in enumerate(segments):
        if _leniently(segment) == "v1":
            return "/v1/" + "/".join(segments[at + 1 :])
    return None


# Below these the provider hands out sessions that run models out of Sentinel's sight — Realtime's
# ephemeral keys and SIP calls, ChatKit's and Live's sessions, agent sessions whose turns run on their own —,
# metered as the one request that made them: opened only by a pattern at or below them
# (`/v1/realtime/*`, `/v1/realtime/client_secrets`), never by a broader one (`/v1/*`).
UNSEEN_SESSIONS = frozenset({"realtime", "chatkit", "live", "agents"})
# Below these the provider keeps what the whole account shares, every user's alike: its organisation
# and projects (members, keys, roles, every user's usage and costs), its webhook endpoints (every
# event of the account sent where one says: a user adding one receives the others' answers), its vaults
# of credentials, its project's safety alerts and cases (each about a user's request: the model, the
# response, a generated explanation of what it did; the end user flagged). No object there is one
# user's, so none can be kept to its owner: opened only by a pattern naming them too (`/v1/*` handed
# every user the account's shared settings and secrets, and any user's alert to whoever held its id).
# So are the legacy account reports, `/v1/usage` (the account's usage by day) and `/v1/dashboard/billing/*`
# (its subscription, spend and credit): every user's usage and the company's bill, to any user.
ACCOUNT_WIDE = frozenset({
    "organization", "projects", "webhook_endpoints", "webhook_event_types", "vaults", "safety", "usage", "dashboard",
})
# Below these a gateway in front of the provider serves routes of its own, none OpenAI's: OPENAI_API_URL
# at a LiteLLM proxy (its documented base URL has no `/v1`, so `/v1/{path}` reaches the proxy's
# `/{path}`), OpenRouter, Portkey or a vLLM server. A provider's native API run with the gateway's
# credentials (LiteLLM's `/bedrock/model/{id}/invoke`, `/gemini/v1beta/...:generateContent`,
# `/anthropic/...`), outside the catalogue and with no usage Sentinel reads; the gateway's own keys,
# users, teams, spend and models (LiteLLM's `/key/generate`, `/spend/logs`; OpenRouter's `/keys`,
# `/credits`; Portkey's `/api-keys`, `/virtual-keys`, `/logs`), every user's alike; a server's adapters
# and state (vLLM's `/load_lora_adapter`, `/sleep`). `/v1/*` forwarded them to every user: opened
# only by a pattern naming them too.
GATEWAY_ROUTES = frozenset({
    # LiteLLM's provider pass-throughs
    "anthropic", "assemblyai", "eu.assemblyai", "azure", "azure_ai", "bedrock", "cohere", "cursor", "gemini", "grok",
    "langfuse", "milvus", "mistral", "openai", "openai_passthrough", "opencode", "vertex_ai", "vertex-ai", "vllm",
    "watsonx",
    # LiteLLM's management API (`/v2/model/info`, `/v2/key/info` too) and its other model calls
    "key", "user", "team", "spend", "global", "model", "model_group", "customer", "end_user", "budget", "credentials",
    "audit", "config", "get", "guardrails", "tag", "cache", "health", "routes", "sso", "settings", "invitation",
    "scim", "utils", "mcp", "mcp-rest", "toolset", "tool", "v2", "rerank",
    # OpenRouter's keys, credits and generations; Portkey's admin API
    "keys", "credits", "auth", "activity", "generation", "admin", "api-keys", "virtual-keys", "configs", "prompts",
    "workspaces", "logs", "analytics", "feedback", "integrations", "providers", "collections", "labels",
    # vLLM's
    "load_lora_adapter", "unload_lora_adapter", "sleep", "wake_up", "collective_rpc", "reset_prefix_cache",
    "start_profile", "stop_profile", "score", "classify", "pooling", "tokenize", "detokenize", "invocations",
})
_OPENAI_BY_NAME = UNSEEN_SESSIONS | ACCOUNT_WIDE
BY_NAME_ONLY = _OPENAI_BY_NAME | GATEWAY_ROUTES
# The first segment of every `/v1` path Sentinel serves, checks or opens only by name (SPELLED's,
# OpenAI's of BY_NAME_ONLY): below another first segment, a gateway in front of the provider may read
# the path from there on as that `/v1` path (LiteLLM's `/openai/{endpoint}` pass-through to OpenAI's
# `/v1/{endpoint}`, Azure's `/openai/deployments/{name}/...`, `/engines/{model}/...`, `/api/v1/...`).
_ROOTS = frozenset({head[0] for head in SPELLED} | _OPENAI_BY_NAME)


def _root_below(path: str) -> str | None:
    """The `/v1` path `path` holds from a segment of `_ROOTS` on, below a first segment that begins no
    path Sentinel serves, checks or opens only by name (read as `_misspelled` reads it; a gateway's own
    route of GATEWAY_ROUTES is read so too, named or not: `/openai/...` is OpenAI's API again); None
    otherwise. `/v1/openai/files/{id}/content`, `/v1/engines/{model}/batches`,
    `/v1/openai/organization/admin_api_keys` or `/v1/openai/models/{ft model}` were sent on as spelled
    under `/v1/*`, to a gateway that may read them as `/v1/files/{id}/content`, ...: another user's file
    read, every user's batches and the account's keys listed, a fine-tuned model every user may be
    served deleted, none of the checks of the path they name applied. OpenAI's own paths that hold a
    collection's name below their first segment (`/v1/vector_stores/{id}/files/{id}`,
    `/v1/chatkit/threads/{id}`, `/v1/organization/usage/vector_stores`) begin as one of those."""
    segments = path[4:].rstrip("/").split("/")
    wanted = [_leniently(segment) for segment in segments]
    wanted[-1] = wanted[-1].partition(".")[0] or wanted[-1]  # a suffix pattern's `.json`
    if wanted[0] in _OPENAI_BY_NAME or any(tuple(wanted[: len(head)]) == head for head in SPELLED):
        return None
    for at in range(1, len(wanted)):
        if wanted[at] in _ROOTS:
            return "/v1/" + "/".join(segments[at:])
    return None


def _read_as_another(path: str) -> str | None:
    """Why `path` (below `/v1`) may be read upstream as another path than it is — one Sentinel serves,
    charges or checks —, so that it is never pass-through: spelled in another case or with a lenient
    server's extras (`_misspelled`), ending as a metered endpoint (`_metered_below`), holding `/v1` again
    (`_v1_within`), or naming an OpenAI path below another prefix (`_root_below`); None otherwise."""
    spelled = _misspelled(path)
    if spelled is not None:
        return f"paths are taken as spelled, case-sensitive: /v1/{spelled}"
    served = _metered_below(path)
    if served is not None:
        return f"it ends as /{served}, which this gateway serves or charges by that path: use /{served}"
    within = _v1_within(path)
    if within is not None:
        return f"it holds /v1 again, and may be read as {clipped(within)}: use that path"
    below = _root_below(path)
    if below is not None:
        return f"it holds {clipped(below)} below another prefix, and may be read as that path: use it"
    return None


def by_name_only(path: str) -> str | None:
    """The `/v1/{name}` of BY_NAME_ONLY `path` is at or below (read as a lenient server may read its
    first segment: `/v1/Realtime/...`, `/v1/realtime;x/...`), or None."""
    first, _, rest = path[4:].partition("/")
    name = _leniently(first)
    if not rest:
        name = name.partition(".")[0] or name  # a suffix pattern's `.json`
    return f"/v1/{name}" if name in BY_NAME_ONLY else None


class PassthroughPolicy:
    """Which other `/v1` paths are forwarded: exact paths, or `prefix/*` for a path and all below it
    — but for those below BY_NAME_ONLY, which only a pattern at or below them allows."""

    def __init__(self, patterns: list[str]) -> None:
        self.exact = {p for p in patterns if not p.endswith("/*")}
        self.prefixes = [p[:-2] for p in patterns if p.endswith("/*")]

    def match(self, path: str) -> str | None:
        """The pattern that allows `path` (the ledger's endpoint name), or None."""
        if path in self.exact:
            return path
        covering = self._covering(path)
        named = by_name_only(path) if covering else None
        for prefix in covering:
            if named is None or prefix == named or prefix.startswith(named + "/"):
                return prefix + "/*"
        return None

    def withheld(self, path: str) -> str | None:
        """The `/v1/{name}` of BY_NAME_ONLY that a broader allowed pattern does not open for `path`."""
        return by_name_only(path) if self._covering(path) and self.match(path) is None else None

    def _covering(self, path: str) -> list[str]:
        return [prefix for prefix in self.prefixes if path == prefix or path.startswith(prefix + "/")]


class OpenAIRoutes:
    """Handlers for `/v1/*`, bound to the app's dependencies and the relay service."""

    def __init__(self, deps: Deps, relay: OpenAIRelay, models: ModelList, passthrough: PassthroughPolicy) -> None:
        self.deps = deps
        self.relay = relay
        self.models = models
        self.passthrough_policy = passthrough

    def routes(self) -> list[Route]:
        routes = [Route(path, self.metered, methods=["POST"], name=name) for path, name in METERED.items()]
        routes += [
            Route("/v1/responses/{response_id}", self.stored_response, methods=["GET", "DELETE"]),
            Route("/v1/responses/{response_id}/input_items", self.stored_response, methods=["GET"]),
            Route("/v1/responses/{response_id}/cancel", self.stored_response, methods=["POST"]),
            Route("/v1/models", self.list_models, methods=["GET"], name="models"),
            Route("/v1/models/{model_id:path}", self.get_model, methods=["GET"], name="model"),
            Route("/v1/{path:path}", self.passthrough, methods=ANY_METHOD, name="passthrough"),
        ]
        return routes

    async def metered(self, request: Request) -> Any:
        path: str = request.scope["path"]  # not request.url: building a URL parses the Host header
        identity = await self.deps.authenticate(request)
        query = query_items(request)
        if query is not None and (path, request.scope["query_string"]) != BETA_RESPONSES:
            # The metered endpoints take no query parameter, and Sentinel reads none: one sent on would be
            # read upstream unchecked (a LiteLLM proxy runs `?model=` over the body's model, the one checked
            # against the catalogue and reserved for; Azure reads `?api-version=`) — but the openai SDK's
            # `client.beta.responses.create` (`BETA_RESPONSES`), sent on as it came.
            raise InvalidRequest(
                f"POST {path} takes no query parameters (they go in the JSON body; /v1/responses takes only "
                "the openai SDK's beta=true): the provider would read what Sentinel does not check",
                code="unsupported_query",
            )
        body = await self.deps.read_body(request)
        reply = await self.relay.metered(
            context(request.scope), identity, endpoint=METERED[path], segments=path[4:].split("/"),
            payload=await parse_json_body(body), body=body, headers=request.scope["headers"], query=query,
        )
        return render(reply)

    async def stored_response(self, request: Request) -> Any:
        route: str = context(request.scope).route
        return await self._call(request, endpoint=route)

    async def list_models(self, request: Request) -> Any:
        identity = await self.deps.authenticate(request)
        return render(await self.models.list_models(context(request.scope), identity))

    async def get_model(self, request: Request) -> Any:
        identity = await self.deps.authenticate(request)
        model_id: str = request.path_params["model_id"]
        return render(await self.models.get_model(context(request.scope), identity, model_id))

    async def passthrough(self, request: Request) -> Any:
        path: str = request.scope["path"]
        if path in TYPED_PATHS:  # a method the typed route does not serve
            allowed = "GET" if path == "/v1/models" else "POST"
            raise MethodNotAllowed(f"Method {request.method} not allowed on {path}", headers={"Allow": allowed})
        if path.endswith("/") and path[:-1] in TYPED_PATHS:
            # Never pass-through (which an allowed `/v1/chat/completions/*` would make it: one request,
            # no catalogue, no token reservation), never sent on to a provider that may read it as
            # the metered endpoint.
            raise NotFound(
                f"Endpoint {request.method} {path} is not supported by this gateway (use {path[:-1]})",
                code="endpoint_not_supported",
            )
        if path.startswith("/v1/models/"):
            # A model Sentinel serves from its catalogue (GET); any other method would reach the provider
            # account's model (`DELETE /v1/models/{id}` deletes a fine-tuned model: one every user may be served).
            raise MethodNotAllowed(f"Method {request.method} not allowed on {clipped(path)}", headers={"Allow": "GET"})
        if path.startswith("/v1/messages/"):
            # Anthropic's surface, which Sentinel serves itself (`/v1/messages`, `/count_tokens`): what else is
            # below it (Message Batches) is never pass-through, which would send it to the OpenAI upstream
            # with the OpenAI key, its objects no one's (listed to every user).
            raise NotFound(
                f"Endpoint {request.method} {clipped(path)} is not supported by this gateway", code="endpoint_not_supported"
            )
        if not path.isascii():
            # Every path of the API is ASCII; a decoded non-ASCII letter (`/v1/f%C4%B1les`: 'ı', which
            # `casefold` keeps but other case-insensitive matchers fold to 'i'; fullwidth letters,
            # which NFKC makes ASCII) could be read upstream as a path Sentinel checks.
            raise NotFound(
                f"Endpoint {request.method} {clipped(path)} is not supported by this gateway (paths are ASCII)",
                code="endpoint_not_supported",
            )
        aliased = _read_as_another(path)
        if aliased is not None:
            # As a trailing slash: never pass-through, never sent on to a server that may read it as that path.
            raise NotFound(f"Endpoint {request.method} {clipped(path)} is not supported by this gateway ({aliased})",
                           code="endpoint_not_supported")
        pattern = self.passthrough_policy.match(path)
        if path in (LEGACY_COMPLETE, LEGACY_COMPLETE + "/"):
            # Anthropic's legacy Text Completions API, which Sentinel does not serve: never pass-through (to the
            # OpenAI upstream). Allowed (`/v1/*`), it is authenticated first, as every allowed path is.
            if pattern is not None:
                await self.deps.authenticate(request)
            raise NotFound(
                f"Endpoint {request.method} {path} (Anthropic's legacy Text Completions API) is not supported by "
                "this gateway: use POST /v1/messages", code="endpoint_not_supported",
            )
        if pattern is None:
            named = self.passthrough_policy.withheld(path)
            if named is not None:
                if named[4:] in UNSEEN_SESSIONS:
                    what = "hands out provider sessions whose tokens the gateway never sees"
                elif named[4:] in ACCOUNT_WIDE:
                    what = "manages what the whole provider account shares, every user's alike"
                else:
                    what = ("is a route of a gateway in front of the provider, not OpenAI's (a provider's own API, "
                            "or the gateway's keys, users and spend)")
                raise NotFound(
                    f"Endpoint {request.method} {clipped(path)} is not supported by this gateway: it {what}, "
                    f"allowed only by name ({named}/*)", code="endpoint_not_supported",
                )
            raise NotFound(
                f"Endpoint {request.method} {clipped(path)} is not supported by this gateway", code="endpoint_not_supported"
            )
        return await self._call(request, endpoint=pattern)

    async def _call(self, request: Request, *, endpoint: str) -> Any:
        identity = await self.deps.authenticate(request)
        # Sentinel's key shape, and the caller's own credential whatever its kind (a JWT, a Zion token:
        # `?access_token=` as OAuth clients write it went on to the provider's logs) unless it is so
        # short that ordinary text holds it (as the log redaction does not look for one). A Sentinel
        # key's body alone is the key (its prefix is public): it is what is looked for.
        token = self.deps.credential(request).removeprefix(KEY_PREFIX)
        credentials = (KEY_PREFIX, token) if len(token) >= MIN_REDACTED else (KEY_PREFIX,)
        query = query_items(request)
        if query is not None and any(shown in text for item in query for text in item for shown in credentials):
            # The query is sent on to the provider (and kept in its logs, and in any proxy's): a key
            # put in the URL (`?api_key=`, `?key=`) would leave with it. It is never repeated here.
            # Only Sentinel's own key shape and the caller's credential are looked for: refusing a
            # configured secret by its value would tell a user who guessed one (END_USER_SECRET,
            # JWT_SECRET) that they had.
            raise InvalidRequest(
                "The query holds a Sentinel API key or your credential: a URL is sent on to the provider and "
                "kept in logs. Send your key only as Authorization: Bearer <key> (or x-api-key)",
                code="credential_in_query",
            )
        path: str = request.scope["path"]
        if any(shown in path for shown in credentials):
            # The path below an allowed prefix (`SENTINEL_PASSTHROUGH=/v1/images/*`) is sent on too,
            # as it came (its escapes read: `%2D` is `-`): a key in it would leave as one in the query.
            raise InvalidRequest(
                "The path holds a Sentinel API key or your credential: a URL is sent on to the provider and "
                "kept in logs. Send your key only as Authorization: Bearer <key> (or x-api-key)",
                code="credential_in_path",
            )
        body = await self.deps.read_body(request) if request.method not in ("GET", "HEAD") else None
        reply = await self.relay.call(
            context(request.scope), identity, endpoint=endpoint, method=request.method,
            segments=path[4:].split("/"), body=body, headers=request.scope["headers"], query=query,
        )
        return render(reply)
