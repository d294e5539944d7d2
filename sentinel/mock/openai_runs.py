"""OpenAI wire format: runs whose usage shows only once they are done, for pass-through metering tests.

Evals and their runs (`POST /v1/evals`, `POST`/`GET /v1/evals/{id}/runs`, `GET`/`DELETE
/v1/evals/{id}/runs/{run}`: a run's tokens in `per_model_usage`, one entry per model it ran — its
data source's sampling model, each model grader's), and enough of the Assistants API (`POST
/v1/assistants`, `POST /v1/threads`, `POST`/`GET /v1/threads/{id}/runs`, `GET
/v1/threads/{id}/runs/{run}`, `POST /v1/threads/{id}/runs/{run}/cancel`, `GET
/v1/threads/{id}/messages`: a run's `usage`, and the message it wrote naming it by `run_id`; newest
first unless `order=asc`, `limit` of them when asked — 1 to 100; all without, where the real API shows
20 —, `has_more` saying whether others are left). A run is
done at its first read — of it, of a list showing it, of its thread's messages —, as one polled after
it ran; its figures are fixed, not a model's. A run given a `function` tool stops at its first read in
`requires_action`, showing the model's call of it (its arguments: model output) with no `usage`, as
the real API does; its cancel answers it `cancelling`, and its next read shows it `cancelled` with the
usage of the turn that wrote the call (`ACTION_USAGE`). Its tool outputs given (`POST
.../submit_tool_outputs`), its next read shows it in `requires_action` again with a new call, until it
made ACTION_STEPS calls: then it is `completed`, with `RUN_USAGE` (all its turns). Like the real
account, the mock does not know who asked: every object is visible to every caller.
"""

from __future__ import annotations

import time
from typing import Any

from sentinel.mock.asgi import Call, JSONReply, Reply
from sentinel.mock.faults import WireError
from sentinel.mock.openai_objects import MAX_OBJECTS
from sentinel.mock.openai_wire import json_object
from sentinel.mock.text import new_id

# What a done eval run reports for its sampling model, and for each model grader's model.
SAMPLED = {"invocation_count": 2, "prompt_tokens": 120, "completion_tokens": 40, "cached_tokens": 20}
GRADED = {"invocation_count": 2, "prompt_tokens": 200, "completion_tokens": 10, "cached_tokens": 0}
# What a done Assistants run reports.
RUN_USAGE = {"prompt_tokens": 90, "completion_tokens": 30, "total_tokens": 120}
# What a run cancelled after `requires_action` reports: the turn that wrote its tool call.
ACTION_USAGE = {"prompt_tokens": 70, "completion_tokens": 12, "total_tokens": 82}
# The arguments of the tool call a run with a `function` tool stops at (`requires_action`).
TOOL_ARGUMENTS = '{"city": "Paris"}'
# The calls of its tool a run makes, each in a step of its own (`requires_action`), before it completes.
ACTION_STEPS = 2
_CANCELLABLE = frozenset({"queued", "in_progress", "requires_action"})
_MODEL_GRADERS = ("label_model", "score_model")


class RunStore:
    """Evals, threads and their runs and messages, in memory: at most `limit` of each (the oldest
    forgotten first, as `ObjectStore`'s)."""

    def __init__(self, limit: int = MAX_OBJECTS) -> None:
        self.limit = limit
        self.evals: dict[str, dict[str, Any]] = {}
        self.eval_runs: dict[str, dict[str, Any]] = {}
        self.threads: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, list[dict[str, Any]]] = {}  # by thread, oldest first
        self.steps: dict[str, int] = {}  # the tool calls each run made (`requires_action` steps shown)

    # --- evals ---------------------------------------------------------------------------------------
    def evals_root(self, call: Call) -> Reply:
        """POST /v1/evals."""
        body = json_object(call)
        call.resolve_faults("")
        made: dict[str, Any] = {"id": new_id("eval_"), "object": "eval", "name": body.get("name"), "created_at": int(time.time()),
                "data_source_config": body.get("data_source_config"), "metadata": body.get("metadata"),
                "testing_criteria": body.get("testing_criteria") or []}
        self._keep(self.evals, made)
        return JSONReply(made)

    def eval_runs_root(self, call: Call) -> Reply:
        """POST /v1/evals/{id}/runs (a run, `queued`); GET: the eval's runs, done."""
        found = self._eval(call)
        call.resolve_faults("")
        if call.method == "GET":
            runs = [self._done_eval_run(r) for r in self.eval_runs.values() if r["eval_id"] == found["id"]]
            return JSONReply({"object": "list", "data": runs[::-1], "has_more": False})
        body = json_object(call)
        source: dict[str, Any] = body["data_source"] if isinstance(body.get("data_source"), dict) else {}
        run: dict[str, Any] = {"id": new_id("evalrun_"), "object": "eval.run", "eval_id": found["id"], "name": body.get("name"),
               "status": "queued", "created_at": int(time.time()), "data_source": source,
               "model": source.get("model"), "per_model_usage": [], "per_testing_criteria_results": [],
               "result_counts": {"errored": 0, "failed": 0, "passed": 0, "total": 0}, "metadata": body.get("metadata"),
               "report_url": "https://platform.example/evals", "error": None}
        self._keep(self.eval_runs, run)
        return JSONReply(run)

    def eval_run(self, call: Call) -> Reply:
        """GET /v1/evals/{id}/runs/{run}: done; DELETE: the run."""
        found = self._eval(call)
        call.resolve_faults("")
        run = self.eval_runs.get(call.path_params["run_id"])
        if run is None or run["eval_id"] != found["id"]:
            raise WireError(404, f"Eval run {call.path_params['run_id']} not found", code="not_found")
        if call.method == "DELETE":
            del self.eval_runs[run["id"]]
            return JSONReply({"object": "eval.run.deleted", "deleted": True, "run_id": run["id"]})
        return JSONReply(self._done_eval_run(run))

    def eval_deleted(self, call: Call) -> Reply:
        """DELETE /v1/evals/{id}: the eval and its runs."""
        found = self._eval(call)
        call.resolve_faults("")
        del self.evals[found["id"]]
        for run_id in [r["id"] for r in self.eval_runs.values() if r["eval_id"] == found["id"]]:
            del self.eval_runs[run_id]
        return JSONReply({"object": "eval.deleted", "deleted": True, "eval_id": found["id"]})

    def _eval(self, call: Call) -> dict[str, Any]:
        found = self.evals.get(call.path_params["eval_id"])
        if found is None:
            raise WireError(404, f"Eval {call.path_params['eval_id']} not found", code="not_found")
        return found

    def _done_eval_run(self, run: dict[str, Any]) -> dict[str, Any]:
        if run["status"] == "queued":
            models = [(run["model"], SAMPLED)] if isinstance(run["model"], str) else []
            criteria = self.evals.get(run["eval_id"], {}).get("testing_criteria", [])
            models += [(c["model"], GRADED) for c in criteria
                       if isinstance(c, dict) and c.get("type") in _MODEL_GRADERS and isinstance(c.get("model"), str)]
            run["status"] = "completed"
            run["per_model_usage"] = [
                {"model_name": model, **figures, "total_tokens": figures["prompt_tokens"] + figures["completion_tokens"]}
                for model, figures in models
            ]
            run["result_counts"] = {"errored": 0, "failed": 0, "passed": 2, "total": 2}
        return run

    # --- assistants ----------------------------------------------------------------------------------
    def assistants_root(self, call: Call) -> Reply:
        """POST /v1/assistants."""
        body = json_object(call)
        call.resolve_faults("")
        return JSONReply({"id": new_id("asst_"), "object": "assistant", "created_at": int(time.time()),
                          "model": body.get("model"), "name": body.get("name"), "instructions": None,
                          "tools": [], "metadata": {}})

    def threads_root(self, call: Call) -> Reply:
        """POST /v1/threads (its `messages`, the user's)."""
        body = json_object(call)
        call.resolve_faults("")
        thread: dict[str, Any] = {"id": new_id("thread_"), "object": "thread", "created_at": int(time.time()), "metadata": {}}
        self._keep(self.threads, thread)
        given: list[Any] = body["messages"] if isinstance(body.get("messages"), list) else []
        self.messages[thread["id"]] = [self._message(thread["id"], _role(m), m.get("content"), None, m.get("metadata"))
                                       for m in given if isinstance(m, dict)]
        return JSONReply(thread)

    def thread_deleted(self, call: Call) -> Reply:
        """DELETE /v1/threads/{id}: the thread, its messages and its runs."""
        thread = self._thread(call)
        call.resolve_faults("")
        del self.threads[thread]
        self.messages.pop(thread, None)
        for run_id in [r["id"] for r in self.runs.values() if r["thread_id"] == thread]:
            del self.runs[run_id]
        return JSONReply({"id": thread, "object": "thread.deleted", "deleted": True})

    def thread_runs(self, call: Call) -> Reply:
        """POST /v1/threads/{id}/runs (a run, `queued`); GET: the thread's runs, done."""
        thread = self._thread(call)
        call.resolve_faults("")
        if call.method == "GET":
            runs = [self._done_run(r) for r in self.runs.values() if r["thread_id"] == thread]
            return JSONReply({"object": "list", "data": runs[::-1], "has_more": False})
        body = json_object(call)
        run: dict[str, Any] = {"id": new_id("run_"), "object": "thread.run", "thread_id": thread, "created_at": int(time.time()),
               "assistant_id": body.get("assistant_id"), "model": body.get("model") or "gpt-4o-mini",
               "status": "queued", "usage": None, "metadata": {}, "required_action": None,
               "instructions": body["instructions"] if isinstance(body.get("instructions"), str) else "",
               "max_prompt_tokens": body["max_prompt_tokens"] if type(body.get("max_prompt_tokens")) is int else None,
               "tools": [t for t in body.get("tools") or [] if isinstance(t, dict)],
               "truncation_strategy": body["truncation_strategy"] if isinstance(body.get("truncation_strategy"), dict)
               else {"type": "auto", "last_messages": None}}
        self._keep(self.runs, run)
        # (its `additional_messages`: added to the thread as it is created, read by its turns)
        added: list[Any] = body["additional_messages"] if isinstance(body.get("additional_messages"), list) else []
        self.messages.setdefault(thread, []).extend(
            self._message(thread, _role(m), m.get("content"), None, m.get("metadata")) for m in added if isinstance(m, dict))
        return JSONReply(run)

    def run_cancelled(self, call: Call) -> Reply:
        """POST /v1/threads/{id}/runs/{run}/cancel: `cancelling` (its next read: `cancelled`, with the
        usage of what it ran); a run that ended already: 400, as the real API answers."""
        run = self._run(call)
        if run["status"] not in _CANCELLABLE:
            raise WireError(400, f"Cannot cancel run with status '{run['status']}'.")
        run.update(status="cancelling", required_action=None)
        return JSONReply(run)

    def tool_outputs_submitted(self, call: Call) -> Reply:
        """POST /v1/threads/{id}/runs/{run}/submit_tool_outputs: `queued` again (its next read: the
        next step); a run not in `requires_action`: 400, as the real API answers."""
        run = self._run(call)
        if run["status"] != "requires_action":
            raise WireError(400, f"Runs in status \"{run['status']}\" do not accept tool outputs.")
        run.update(status="queued", required_action=None)
        return JSONReply(run)

    def thread_run(self, call: Call) -> Reply:
        """GET /v1/threads/{id}/runs/{run}: done."""
        return JSONReply(self._done_run(self._run(call)))

    def _run(self, call: Call) -> dict[str, Any]:
        thread = self._thread(call)
        call.resolve_faults("")
        run = self.runs.get(call.path_params["run_id"])
        if run is None or run["thread_id"] != thread:
            raise WireError(404, f"No run found with id '{call.path_params['run_id']}'.", code="not_found")
        return run

    def thread_messages(self, call: Call) -> Reply:
        """GET /v1/threads/{id}/messages: newest first (`order=asc`: oldest first) — its runs done
        first, as a client reading them once they ran (each run's answer a message naming it)."""
        thread = self._thread(call)
        call.resolve_faults("")
        for run in [r for r in self.runs.values() if r["thread_id"] == thread]:
            self._done_run(run)
        listed = self.messages[thread] if call.query.get("order") == "asc" else self.messages[thread][::-1]
        asked = call.query.get("limit")
        if asked is not None and not (asked.isdigit() and 1 <= int(asked) <= 100):
            raise WireError(400, f"Invalid 'limit': integer below minimum value or above maximum value ({asked}).",
                            code="invalid_value", param="limit")
        limit = int(asked) if asked is not None else len(listed)
        page = listed[:limit]
        return JSONReply({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                          "last_id": page[-1]["id"] if page else None, "has_more": len(listed) > limit})

    def _keep(self, objects: dict[str, dict[str, Any]], made: dict[str, Any]) -> None:
        objects[made["id"]] = made
        while len(objects) > self.limit:
            forgotten = objects.pop(next(iter(objects)))
            if objects is self.threads:
                self.messages.pop(forgotten["id"], None)
            self.steps.pop(forgotten["id"], None)

    def _thread(self, call: Call) -> str:
        thread: str = call.path_params["thread_id"]
        if thread not in self.threads:
            raise WireError(404, f"No thread found with id '{thread}'.", code="not_found")
        return thread

    def _done_run(self, run: dict[str, Any]) -> dict[str, Any]:
        function = _function(run["tools"])
        if run["status"] == "queued" and function is not None and self.steps.get(run["id"], 0) < ACTION_STEPS:
            self.steps[run["id"]] = self.steps.get(run["id"], 0) + 1
            call = {"id": new_id("call_"), "type": "function", "function": {"name": function, "arguments": TOOL_ARGUMENTS}}
            run.update(status="requires_action",
                       required_action={"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": [call]}})
        elif run["status"] == "cancelling":
            run.update(status="cancelled", usage=dict(ACTION_USAGE), cancelled_at=int(time.time()))
        elif run["status"] == "queued":
            run.update(status="completed", usage=dict(RUN_USAGE), completed_at=int(time.time()))
            self.messages.setdefault(run["thread_id"], []).append(self._message(run["thread_id"], "assistant", "Done.", run))
        return run

    @staticmethod
    def _message(
        thread: str, role: str, content: Any, run: dict[str, Any] | None, metadata: Any = None
    ) -> dict[str, Any]:
        return {"id": new_id("msg_"), "object": "thread.message", "created_at": int(time.time()), "thread_id": thread,
                "role": role, "content": _content(content),
                "run_id": None if run is None else run["id"],
                "assistant_id": None if run is None else run["assistant_id"], "attachments": [],
                "metadata": metadata if isinstance(metadata, dict) else {}}


def _role(message: dict[str, Any]) -> str:
    return "assistant" if message.get("role") == "assistant" else "user"


def _content(given: Any) -> list[dict[str, Any]]:
    """A message's content as the API shows it: a string as one text part; of a list of parts, its
    text parts (`{"type": "text", "text": "..."}`) as text parts, its image parts as given."""
    if isinstance(given, str):
        return [{"type": "text", "text": {"value": given, "annotations": []}}]
    parts: list[dict[str, Any]] = []
    for part in given if isinstance(given, list) else ():
        if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": {"value": part["text"], "annotations": []}})
        elif isinstance(part, dict) and part.get("type") in ("image_url", "image_file"):
            parts.append(part)
    return parts


def _function(tools: list[dict[str, Any]]) -> str | None:
    """The name of a run's first `function` tool, if it has one."""
    for tool in tools:
        function = tool.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if tool.get("type") == "function" and isinstance(name, str):
            return name
    return None
