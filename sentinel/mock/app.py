"""`create_mock_app`: the mock upstream provider as one Starlette app (OpenAI and Anthropic wires).

OpenAI base URL is ``<root>/v1``, Anthropic's is ``<root>``. Every endpoint is a pure ASGI
`Endpoint` that reads the request once, records it, authenticates it the way its wire format
does, runs its handler, resolves the fault knobs (see `sentinel.mock.faults`), waits the
server-wide plus per-request latency, and sends the reply. No middleware is added.

With ``api_key`` set the mock accepts only that key (OpenAI: ``Authorization: Bearer``;
Anthropic: ``x-api-key`` or ``Authorization: Bearer``) and answers anything else with its wire's
401; without it any non-empty key is accepted. Every reply carries ``request-id`` and
``x-request-id``; Anthropic error bodies repeat it as ``request_id``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from sentinel.mock import anthropic_wire, openai_extra, openai_objects, openai_responses, openai_wire
from sentinel.mock.asgi import Call, JSONReply, Reply, drop
from sentinel.mock.faults import WireError
from sentinel.mock.openai_fine_tuning import FineTuning
from sentinel.mock.openai_objects import ObjectStore
from sentinel.mock.openai_runs import RunStore
from sentinel.mock.openai_uploads import Uploads
from sentinel.mock.prompt_cache import PromptCache
from sentinel.mock.recorder import RequestLog, control_routes

Handler = Callable[[Call], Reply]


@dataclass(frozen=True, slots=True)
class Wire:
    """How one wire format authenticates and renders errors."""

    name: str
    authenticate: Callable[[Call, str | None], None]
    error_reply: Callable[[WireError, str | None], JSONReply]


OPENAI = Wire("openai", openai_wire.authenticate, openai_wire.error_reply)
ANTHROPIC = Wire("anthropic", anthropic_wire.authenticate, anthropic_wire.error_reply)


def _models_wire(call: Call) -> Wire:
    return ANTHROPIC if openai_extra.anthropic_style(call) else OPENAI


class MockState:
    """Per-app state: the request log, latency, the accepted key, the prompt cache, request ids, and
    the models it no longer serves (`retired`: a request naming one is answered 404 as the real
    provider answers a retired model, `retired_error` — test state, set directly)."""

    def __init__(
        self, latency_ms: float, history: int, api_key: str | None = None, answer_chars: int | None = None
    ) -> None:
        self.latency_ms = latency_ms
        self.api_key = api_key
        self.answer_chars = answer_chars
        self.retired: set[str] = set()
        self.log = RequestLog(history)
        self.prompt_cache = PromptCache()
        self.objects = ObjectStore()
        self.runs = RunStore()  # evals and threads, their runs
        self.fine_tuning = FineTuning(self.objects)  # jobs, the models they made, those models' permissions
        self.uploads = Uploads(self.objects)  # files sent in parts (test state: its `clock` may be set)
        self._prefix = os.urandom(4).hex()
        self._ids = itertools.count(1)

    def request_id(self) -> str:
        """A unique request id for the ``x-request-id`` / ``request-id`` response headers."""
        return f"req_mock{self._prefix}{next(self._ids):08d}"


class Endpoint:
    """One mock route as a pure ASGI app around a synchronous wire handler."""

    def __init__(self, state: MockState, handler: Handler, wire: Wire | Callable[[Call], Wire]) -> None:
        self.state = state
        self.handler = handler
        self.wire = wire

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        call = await Call.receive(scope, receive)
        call.answer_chars = self.state.answer_chars
        self.state.log.record(call)
        wire = self.wire if isinstance(self.wire, Wire) else self.wire(call)
        rid = self.state.request_id()
        reply: Reply
        try:
            if call.knob_error is not None:  # a bad knob value in a header or the query
                raise call.knob_error
            wire.authenticate(call, self.state.api_key)
            model = call.body.get("model") if isinstance(call.body, dict) else None
            if isinstance(model, str) and model in self.state.retired:
                raise retired_error(wire.name, model)
            reply = self.handler(call)
            fault = call.faults.error()
            if fault is not None:
                reply = wire.error_reply(fault, rid)
        except WireError as exc:
            reply = wire.error_reply(exc, rid)
        await self._send(send, receive, reply, call, rid)

    async def _send(self, send: Send, receive: Receive, reply: Reply, call: Call, rid: str) -> None:
        dropped = call.faults.drop_after_ms
        delay = self.state.latency_ms + call.faults.latency_ms + (dropped or 0.0)
        if delay > 0:
            await asyncio.sleep(delay / 1000.0)
        if dropped is not None:
            return await drop(send)
        await reply.send(send, call.faults, {"x-request-id": rid, "request-id": rid}, receive)


def retired_error(wire: str, model: str) -> WireError:
    """The 404 a provider answers for a model it no longer serves, as each says it: OpenAI's
    `model_not_found` naming the model, Anthropic's `not_found_error` "model: <name>"."""
    if wire == "anthropic":
        return WireError(404, f"model: {model}")
    return WireError(404, f"The model `{model}` does not exist or you do not have access to it.",
                     code="model_not_found")


def _fine_tuning_routes(state: MockState) -> list[Route]:
    """Fine-tuning jobs, their checkpoints, and a fine-tuned model's permissions (`openai_fine_tuning`)."""
    tuning = state.fine_tuning
    return [
        Route("/v1/fine_tuning/jobs", Endpoint(state, tuning.jobs_root, OPENAI), methods=["POST"]),
        Route("/v1/fine_tuning/jobs/{job_id}", Endpoint(state, tuning.job, OPENAI), methods=["GET"]),
        Route("/v1/fine_tuning/jobs/{job_id}/checkpoints", Endpoint(state, tuning.job_checkpoints, OPENAI),
              methods=["GET"]),
        Route("/v1/fine_tuning/checkpoints/{model}/permissions", Endpoint(state, tuning.permissions_root, OPENAI),
              methods=["GET", "POST"]),
        Route("/v1/fine_tuning/checkpoints/{model}/permissions/{permission_id}",
              Endpoint(state, tuning.permission, OPENAI), methods=["DELETE"]),
    ]


def _upload_routes(state: MockState) -> list[Route]:
    """The Uploads API: a file sent in parts, assembled into a file of `/v1/files` (`openai_uploads`)."""
    uploads = state.uploads
    return [
        Route("/v1/uploads", Endpoint(state, uploads.create, OPENAI), methods=["POST"]),
        Route("/v1/uploads/{upload_id}/parts", Endpoint(state, uploads.part, OPENAI), methods=["POST"]),
        Route("/v1/uploads/{upload_id}/complete", Endpoint(state, uploads.complete, OPENAI), methods=["POST"]),
        Route("/v1/uploads/{upload_id}/cancel", Endpoint(state, uploads.cancel, OPENAI), methods=["POST"]),
    ]


def _run_routes(state: MockState) -> list[Route]:
    """Evals and the Assistants API: objects whose runs show their usage once done (`openai_runs`)."""
    runs = state.runs
    return [
        Route("/v1/evals", Endpoint(state, runs.evals_root, OPENAI), methods=["POST"]),
        Route("/v1/evals/{eval_id}", Endpoint(state, runs.eval_deleted, OPENAI), methods=["DELETE"]),
        Route("/v1/evals/{eval_id}/runs", Endpoint(state, runs.eval_runs_root, OPENAI), methods=["GET", "POST"]),
        Route("/v1/evals/{eval_id}/runs/{run_id}", Endpoint(state, runs.eval_run, OPENAI), methods=["GET", "DELETE"]),
        Route("/v1/assistants", Endpoint(state, runs.assistants_root, OPENAI), methods=["POST"]),
        Route("/v1/threads", Endpoint(state, runs.threads_root, OPENAI), methods=["POST"]),
        Route("/v1/threads/{thread_id}", Endpoint(state, runs.thread_deleted, OPENAI), methods=["DELETE"]),
        Route("/v1/threads/{thread_id}/runs", Endpoint(state, runs.thread_runs, OPENAI), methods=["GET", "POST"]),
        Route("/v1/threads/{thread_id}/runs/{run_id}", Endpoint(state, runs.thread_run, OPENAI), methods=["GET"]),
        Route("/v1/threads/{thread_id}/runs/{run_id}/cancel", Endpoint(state, runs.run_cancelled, OPENAI),
              methods=["POST"]),
        Route("/v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs",
              Endpoint(state, runs.tool_outputs_submitted, OPENAI), methods=["POST"]),
        Route("/v1/threads/{thread_id}/messages", Endpoint(state, runs.thread_messages, OPENAI), methods=["GET"]),
    ]


def _not_found(state: MockState) -> Endpoint:
    def handler(call: Call) -> Reply:
        call.resolve_faults("")
        raise WireError(404, f"Invalid URL ({call.method} {call.path})")

    return Endpoint(state, handler, OPENAI)


def create_mock_app(
    latency_ms: float = 0.0, *, history: int = 256, api_key: str | None = None, inspect: bool = True,
    answer_chars: int | None = None,
) -> ASGIApp:
    """The mock upstream ASGI app; `latency_ms` delays every response before its first byte.

    `api_key`: when set, the only key accepted (401 in the caller's wire format otherwise).
    The app's `state.mock` is its `MockState` (`state.mock.log` is the last `history` requests).
    `inspect`: serve the `/__mock/*` routes (the request history, controls) — for tests; the mock
    `sentinel serve` embeds has none and keeps no history (it would hold every user's prompts).
    `answer_chars`: the most characters of echoed answer one request gets, all its choices together
    (None: the whole prompt each; the embedded mock's is `text.EMBEDDED_ANSWER_CHARS`).
    """
    if latency_ms < 0:
        raise ValueError("latency_ms must be >= 0")
    if api_key is not None and not api_key.strip():
        raise ValueError("api_key must be non-empty when given")
    state = MockState(latency_ms, history, api_key, answer_chars)
    routes = [
        Route(
            "/v1/chat/completions", Endpoint(state, openai_wire.chat_completions, OPENAI), methods=["POST"]
        ),
        Route("/v1/completions", Endpoint(state, openai_extra.completions, OPENAI), methods=["POST"]),
        Route("/v1/embeddings", Endpoint(state, openai_extra.embeddings, OPENAI), methods=["POST"]),
        Route(
            "/v1/responses",
            Endpoint(state, partial(openai_responses.responses, keep=state.objects.keep_response), OPENAI),
            methods=["POST"],
        ),
        Route(
            "/v1/responses/{response_id}", Endpoint(state, state.objects.get_response, OPENAI),
            methods=["GET", "DELETE"],
        ),
        Route(
            "/v1/responses/{response_id}/input_items", Endpoint(state, state.objects.input_items, OPENAI),
            methods=["GET"],
        ),
        Route("/v1/files", Endpoint(state, state.objects.files_root, OPENAI), methods=["GET", "POST"]),
        Route("/v1/files/{file_id}", Endpoint(state, state.objects.file, OPENAI), methods=["GET", "DELETE"]),
        Route("/v1/files/{file_id}/content", Endpoint(state, state.objects.file_content, OPENAI), methods=["GET"]),
        Route("/v1/batches", Endpoint(state, state.objects.batches_root, OPENAI), methods=["GET", "POST"]),
        Route("/v1/batches/{batch_id}", Endpoint(state, state.objects.batch, OPENAI), methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", Endpoint(state, state.objects.batch_cancel, OPENAI), methods=["POST"]),
        Route("/v1/videos", Endpoint(state, state.objects.videos_root, OPENAI), methods=["POST"]),
        Route("/v1/videos/{video_id}/remix", Endpoint(state, state.objects.video_remix, OPENAI), methods=["POST"]),
        Route("/v1/vector_stores", Endpoint(state, state.objects.vector_stores_root, OPENAI), methods=["POST"]),
        Route(
            "/v1/vector_stores/{vector_store_id}/search", Endpoint(state, state.objects.vector_store_search, OPENAI),
            methods=["POST"],
        ),
        Route("/v1/moderations", Endpoint(state, openai_objects.moderations, OPENAI), methods=["POST"]),
        *_fine_tuning_routes(state),
        *_upload_routes(state),
        Route("/v1/models", Endpoint(state, openai_extra.list_models, _models_wire), methods=["GET"]),
        Route(
            "/v1/models/{model_id:path}",
            Endpoint(state, openai_extra.retrieve_model, _models_wire),
            methods=["GET"],
        ),
        Route("/v1/messages", Endpoint(state, partial(anthropic_wire.messages, cache=state.prompt_cache), ANTHROPIC), methods=["POST"]),
        Route(
            "/v1/messages/count_tokens",
            Endpoint(state, anthropic_wire.count_tokens, ANTHROPIC),
            methods=["POST"],
        ),
        *_run_routes(state),
        *(control_routes(state.log) if inspect else ()),
        Route("/v1/{rest:path}", _not_found(state)),
    ]
    app = Starlette(routes=routes)
    app.state.mock = state
    return app
