"""A fake Zion governance API: the spec's paths and payloads, state kept in plain Python.

Serve it on a real socket with `tests.support.servers.serving(fake)` (the object is an ASGI app)
and drive it from the test thread with plain methods: `add_user`, `refuse_user`, `set_down`, `fail_next`,
`set_honour_idempotency`, `fail_batches`, `hold_batches`, `reject_model`, `refuse_batches_with`, `lose_batch_answers`, `reshape_batch_results`; read `calls` (per route, requests that got past the
failure controls), `attempts` (per route, every request, failed ones too), `received` (all
requests), `applied`, `totals` (per email), `seen`. A lock guards
the state because the server runs in another thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sentinel.domain.identity import Identity
from sentinel.errors import GovernanceUnavailable

ME = "/api/v1/users/me"
LIMITS = "/api/v1/limits/external/{externalId}"
INCREMENT = "/api/v1/usage/external/increment"
BATCH = "/api/v1/usage/external/batch-increment"
TIERS = "/api/v1/tiers/config"
METRICS = ("aiInputTokens", "aiOutputTokens", "aiRequests")
_LIMITS_PREFIX = b"/api/v1/limits/external/"

_MINI = {
    "provider": "openai",
    "model": "gpt-4o-mini",
    "relativeCost": 1,
    "inputPricePerMillion": 0.15,
    "outputPricePerMillion": 0.6,
}
_4O = {
    "provider": "openai",
    "model": "gpt-4o",
    "relativeCost": 5,
    "inputPricePerMillion": 2.5,
    "outputPricePerMillion": 10.0,
}
DEFAULT_TIERS: dict[str, Any] = {
    "version": "1",
    "updatedAt": "2024-01-15T10:30:00.000Z",
    "tiers": {"simple": [_MINI], "moderate": [_4O], "complex": [_4O]},
}


@dataclass
class FakeUser:
    token: str
    external_id: str | None
    email: str
    user_id: str
    limit: dict[str, int]
    used: dict[str, int]
    reset_period: str | None = "MONTHLY"
    period_start: str | None = "2024-01-01T00:00:00.000Z"
    period_end: str | None = "2024-02-01T00:00:00.000Z"

    def meter(self, metric: str) -> dict[str, int]:
        limit, used = self.limit[metric], self.used[metric]
        return {"limit": limit, "used": used, "remaining": limit - used}


@dataclass
class Seen:
    """One request as the fake received it (`path` is the raw, still-encoded path)."""

    route: str
    path: str
    headers: dict[str, str]


def _route(path: str) -> str:
    """The route constant a request path belongs to (the path itself when none)."""
    return LIMITS if path.startswith("/api/v1/limits/external/") else path


class _LostAnswer(Response):
    """Starts an answer whose promised body never comes: uvicorn closes the connection."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]})


_REFUSALS = {400: "BAD_REQUEST", 403: "USER_DEACTIVATED", 404: "USER_NOT_FOUND"}


def _ok(data: Any) -> JSONResponse:
    return JSONResponse({"success": True, "data": data})


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"success": False, "error": {"code": code, "message": message}}, status_code=status)


@dataclass
class FakeZion:
    """The fake's state and controls; call it as an ASGI app."""

    api_key: str = "zion-service-key-0123456789"
    url: str = ""  # the base URL, for tests to fill in once it is served
    tier_config: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_TIERS))
    calls: Counter[str] = field(default_factory=Counter)
    applied: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, Counter[str]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    received: int = 0  # every HTTP request, including the ones answered by set_down/fail_next
    attempts: Counter[str] = field(default_factory=Counter)  # per route, every request

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._users: list[FakeUser] = []
        self._refused: dict[str, int] = {}  # token -> the status /users/me answers for it
        self._down: str | None = None
        self._fail_next: list[tuple[int, str | None]] = []  # (status, Retry-After)
        self._hold_batches = False
        self._honour_idempotency = True
        self._lose_batch_answers = 0
        self._batch_status: int | None = None
        self.lost_answers = 0  # batch calls handled (applied or replayed) whose answer was dropped
        self._idempotent: dict[tuple[str, str], tuple[int, bytes]] = {}
        self._rejected_models: set[str] = set()
        self._refusing_models: dict[str, int] = {}  # model -> the status a batch holding it gets whole
        self._reshape_results: Callable[[list[dict[str, Any]]], list[Any]] | None = None
        self._app = Starlette(
            routes=[
                Route(ME, self._me),
                Route("/api/v1/limits/external/{rest:path}", self._limits),
                Route(INCREMENT, self._increment, methods=["POST"]),
                Route(BATCH, self._batch, methods=["POST"]),
                Route(TIERS, self._tiers),
            ]
        )

    # --- controls (test thread) -------------------------------------------------------------------
    def add_user(
        self,
        token: str,
        external_id: str | None,
        email: str,
        *,
        user_id: str | None = None,
        input_tokens: int = 1_000_000,
        output_tokens: int = 1_000_000,
        requests: int = 1000,
        used_input: int = 0,
        used_output: int = 0,
        used_requests: int = 0,
        reset_period: str | None = "MONTHLY",
        period_end: str | None = "2024-02-01T00:00:00.000Z",
    ) -> FakeUser:
        """Register a user reachable by bearer `token`, by `external_id` and by `email`."""
        user = FakeUser(
            token,
            external_id,
            email,
            user_id or f"usr_{len(self._users) + 1}",
            dict(zip(METRICS, (input_tokens, output_tokens, requests), strict=True)),
            dict(zip(METRICS, (used_input, used_output, used_requests), strict=True)),
            reset_period,
            period_end=period_end,
        )
        with self._lock:
            self._users.append(user)
        return user

    def refuse_user(self, token: str, status: int) -> None:
        """From now on `/users/me` answers `status` for `token`'s user, as Zion does for a deactivated
        (403) or deleted (404) user, or a token it cannot read (400)."""
        with self._lock:
            self._refused[token] = status

    def set_down(self, down: bool, mode: str = "503") -> None:
        """Down: answer every call with 503 (`mode="503"`), drop the connection mid-answer
        (`"drop"`), or hold the request without answering (`"hang"`) until set up again."""
        if mode not in ("503", "drop", "hang"):
            raise ValueError(mode)
        self._down = mode if down else None

    def fail_next(self, count: int, status: int = 503, *, retry_after: str | None = None) -> None:
        """The next `count` calls (any path) answer `status` (with `Retry-After: retry_after` when
        given) before anything is applied."""
        with self._lock:
            self._fail_next += [(status, retry_after)] * count

    def hold_batches(self, hold: bool) -> None:
        """Hold: every batch-increment call (counted in `attempts`) waits before it is handled until
        released (`hold_batches(False)`), then is applied as usual: a Zion slower than the client's
        timeout, which applies a batch whose caller has given up. Like a Zion that looks a key up only
        once it has applied it, copies held together are each applied."""
        self._hold_batches = hold

    def set_honour_idempotency(self, honour: bool) -> None:
        self._honour_idempotency = honour

    def lose_batch_answers(self, count: int) -> None:
        """The next `count` batch-increment calls are handled in full (applied, or replayed for a
        known Idempotency-Key) and then the connection is closed without an answer: what a client
        sees when Zion applied its batch but the reply was lost."""
        with self._lock:
            self._lose_batch_answers = count

    def fail_batches(self, status: int | None) -> None:
        """Every batch-increment call answers `status` (None: as usual) before anything is applied,
        while the other routes answer: Zion's usage endpoint broken, the rest of it up."""
        with self._lock:
            self._batch_status = status

    def reject_model(self, model: str) -> None:
        """Batch items for `model` fail (`success:false`) while the others are applied."""
        self._rejected_models.add(model)

    def refuse_batches_with(self, model: str, status: int | None = 400) -> None:
        """A batch-increment call with an item for `model` is refused whole with `status` (None: no
        longer), nothing of it applied: what Zion's validation does with a value it rejects. Like a
        validation error at many key-honouring APIs, the refusal is not remembered for the
        Idempotency-Key: the same call sent again once the value is accepted is applied."""
        with self._lock:
            if status is None:
                self._refusing_models.pop(model, None)
            else:
                self._refusing_models[model] = status

    def reshape_batch_results(self, reshape: Callable[[list[dict[str, Any]]], list[Any]] | None) -> None:
        """Batch answers carry `reshape(results)` instead of one result per increment (None: as
        usual); `processed` and `failed` still count what was applied. The answer remembered for an
        Idempotency-Key is the reshaped one, as a Zion that answers so would replay it."""
        with self._lock:
            self._reshape_results = reshape

    def user(self, email: str) -> FakeUser | None:
        return next((u for u in self._users if u.email == email), None)

    # --- ASGI ---------------------------------------------------------------------------------------
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self._app(scope, receive, send)
        with self._lock:
            self.received += 1
            self.attempts[_route(scope.get("path", ""))] += 1
            failing, retry_after = self._fail_next.pop(0) if self._fail_next else (None, None)
            if failing is None and scope.get("path") == BATCH:
                failing = self._batch_status
        if self._down == "hang":
            while self._down == "hang":  # noqa: ASYNC110 - the flag is set from the test thread
                await asyncio.sleep(0.02)
        elif self._down == "drop":
            # A started answer whose promised body never comes: uvicorn closes the connection.
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]}
            )
            return None
        elif self._down == "503" or failing is not None:
            status = failing or 503
            answer = _error(status, "UNAVAILABLE", "zion is down")
            if retry_after is not None:
                answer.headers["Retry-After"] = retry_after
            return await answer(scope, receive, send)
        return await self._app(scope, receive, send)

    def _note(self, request: Request, route: str) -> None:
        raw = request.scope.get("raw_path") or request.url.path.encode()
        with self._lock:
            self.calls[route] += 1
            self.seen.append(Seen(route, raw.decode("latin-1"), dict(request.headers)))

    def _service_key_ok(self, request: Request) -> bool:
        return request.headers.get("x-api-key") == self.api_key

    async def _me(self, request: Request) -> Response:
        self._note(request, ME)
        auth = request.headers.get("authorization", "")
        refused = next((status for token, status in self._refused.items() if auth == f"Bearer {token}"), None)
        if refused is not None:
            return _error(refused, _REFUSALS.get(refused, "REFUSED"), "User not available")
        user = next((u for u in self._users if auth == f"Bearer {u.token}"), None)
        if user is None:
            return _error(401, "UNAUTHORIZED", "Invalid token")
        return _ok(
            {
                "id": user.user_id,
                "email": user.email,
                "name": None,
                "externalId": user.external_id,
                "emailVerified": True,
                "createdAt": "2024-01-01T00:00:00.000Z",
                "lastLoginAt": None,
            }
        )

    async def _limits(self, request: Request) -> Response:
        self._note(request, LIMITS)
        if not self._service_key_ok(request):
            return _error(401, "UNAUTHORIZED", "Invalid API key")
        raw = request.scope.get("raw_path", b"").split(b"?")[0]
        segment = raw[len(_LIMITS_PREFIX) :] if raw.startswith(_LIMITS_PREFIX) else b"/"
        external_id = unquote(segment.decode("latin-1")) if b"/" not in segment else None
        user = next(
            (u for u in self._users if external_id is not None and u.external_id == external_id), None
        )
        if user is None:
            return _error(404, "NOT_FOUND", f"User not found: {external_id}")
        return _ok(
            {
                "userId": user.user_id,
                "externalId": user.external_id,
                "limits": [
                    {
                        "name": "ai_usage",
                        "displayName": "AI usage",
                        "description": None,
                        "unit": None,
                        **{metric: user.meter(metric) for metric in METRICS},
                        "resetPeriod": user.reset_period,
                        "periodStart": user.period_start,
                        "periodEnd": user.period_end,
                    }
                ],
            }
        )

    async def _tiers(self, request: Request) -> Response:
        self._note(request, TIERS)
        if not self._service_key_ok(request):
            return _error(401, "UNAUTHORIZED", "Invalid API key")
        return _ok(self.tier_config)

    async def _increment(self, request: Request) -> Response:
        self._note(request, INCREMENT)
        return await self._idempotently(request, INCREMENT, self._apply_single)

    async def _batch(self, request: Request) -> Response:
        self._note(request, BATCH)
        if self._hold_batches:
            await request.body()  # read whole, as Zion does before it works on a batch
            while self._hold_batches:  # noqa: ASYNC110 - set from the test thread
                await asyncio.sleep(0.02)
        response = await self._idempotently(request, BATCH, self._apply_batch)
        with self._lock:
            if self._lose_batch_answers <= 0:
                return response
            self._lose_batch_answers -= 1
            self.lost_answers += 1
        return _LostAnswer()

    async def _idempotently(self, request: Request, route: str, apply: Any) -> Response:
        if not self._service_key_ok(request):
            return _error(401, "UNAUTHORIZED", "Invalid API key")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "BAD_REQUEST", "invalid JSON")
        key = request.headers.get("idempotency-key")
        with self._lock:
            if key and self._honour_idempotency and (route, key) in self._idempotent:
                status, content = self._idempotent[(route, key)]
                return Response(content, status, media_type="application/json")
            items = body.get("increments") if route == BATCH and isinstance(body, dict) else None
            for item in items if isinstance(items, list) else ():
                refusal = self._refusing_models.get(item.get("model")) if isinstance(item, dict) else None
                if refusal is not None:
                    return _error(refusal, "VALIDATION_ERROR", "invalid model")
            response: Response = apply(body)
            if key and response.status_code < 500:
                self._idempotent[(route, key)] = (response.status_code, bytes(response.body))
        return response

    def _apply(self, item: dict[str, Any]) -> tuple[FakeUser | None, str | None]:
        """Apply one increment (lock held); (user, error)."""
        user = self.user(item.get("email", "")) if isinstance(item, dict) else None
        if user is None:
            return None, "User not found"
        if item.get("model") in self._rejected_models:
            return user, "model rejected"
        totals = self.totals.setdefault(user.email, Counter())
        for metric in METRICS:
            amount = item.get(metric)
            if amount is not None:
                user.used[metric] += int(amount)
                totals[metric] += int(amount)
        self.applied.append(dict(item))
        return user, None

    def _apply_single(self, body: Any) -> Response:
        user, error = self._apply(body)
        if user is None or error is not None:
            return _error(404 if user is None else 400, "REJECTED", error or "")
        return _ok(
            {
                "canUse": all(user.meter(m)["remaining"] > 0 for m in METRICS),
                **{metric: user.meter(metric) for metric in METRICS},
            }
        )

    def _apply_batch(self, body: Any) -> Response:
        items = body.get("increments") if isinstance(body, dict) else None
        if not isinstance(items, list) or len(items) > 1000:
            return _error(400, "BAD_REQUEST", "increments must be a list of at most 1000 items")
        results = []
        for item in items:
            user, error = self._apply(item)
            result: dict[str, Any] = {
                "email": item.get("email"),
                "limitName": "ai_usage",
                "success": error is None,
            }
            if error is not None:
                result["error"] = error
            elif user is not None:
                for metric in METRICS:
                    if metric in item:
                        result[metric] = {"newValue": user.used[metric], "limit": user.limit[metric]}
            results.append(result)
        failed = sum(1 for r in results if not r["success"])
        shown = results if self._reshape_results is None else self._reshape_results(results)
        return _ok({"processed": len(results) - failed, "failed": failed, "results": shown})


class ZionProfiles:
    """Zion's `/users/me` as an in-process profile source (`LocalJwtIdentitySource`'s): its answer,
    or an outage (`down`), set by the test; `calls` counts the lookups."""

    name = "zion"

    def __init__(self, answer: Identity | None = None) -> None:
        self.answer = answer
        self.down = False
        self.calls = 0

    async def authenticate(self, token: str) -> Identity | None:
        self.calls += 1
        if self.down:
            raise GovernanceUnavailable("zion is down")
        return self.answer

