"""OpenAI wire format: fine-tuning jobs, their checkpoints and the checkpoints' permissions.

Enough of the Fine-tuning API for a gateway's ownership tests: `POST /v1/fine_tuning/jobs` over an
uploaded training file (404 for an unknown file, or a base `model` that is a fine-tuned model the
account does not have), `validating_files` when made and `succeeded` at its first read — its
`fine_tuned_model` (`ft:<base>:<org>::<id>`), `trained_tokens` and a result file made then —,
`GET /v1/fine_tuning/jobs/{id}/checkpoints` (a succeeded job's: one a `CHECKPOINT_STEPS` step, newest
first, each a `fine_tuned_model_checkpoint` of its own, `…:ckpt-step-<n>`), and a fine-tuned model's
(or checkpoint's) permissions: `GET`/`POST /v1/fine_tuning/checkpoints/{model}/permissions` (the
projects it is shared with) and `DELETE …/permissions/{permission_id}`. Like the real account, the
mock does not know who asked: every job and model is every caller's, which the gateway must hide.
"""

from __future__ import annotations

import time
from typing import Any

from sentinel.mock.asgi import Call, JSONReply, Reply
from sentinel.mock.faults import WireError
from sentinel.mock.openai_objects import ObjectStore, _keep
from sentinel.mock.openai_wire import json_object
from sentinel.mock.text import new_id

ORGANIZATION = "org-mock"
CHECKPOINT_STEPS = (10, 20)  # the steps a succeeded job's checkpoints were taken at
TRAINED_TOKENS = 4_000  # what every job trains (a figure, not a count of its file's tokens)


class FineTuning:
    """The account's fine-tuning jobs, the models they made and those models' permissions."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects  # (its files: a job's training file, its result file)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.checkpoints: dict[str, list[dict[str, Any]]] = {}  # by job id, newest first
        self.permissions: dict[str, dict[str, dict[str, Any]]] = {}  # by model, by permission id

    def _models(self) -> set[str]:
        """The fine-tuned models the account has: every succeeded job's, and its checkpoints'."""
        made = {job["fine_tuned_model"] for job in self.jobs.values() if job["fine_tuned_model"]}
        return made | {c["fine_tuned_model_checkpoint"] for cs in self.checkpoints.values() for c in cs}

    def jobs_root(self, call: Call) -> Reply:
        body = json_object(call)
        call.resolve_faults("")
        model, training = body.get("model"), body.get("training_file")
        if not isinstance(model, str) or not model:
            raise WireError(400, "Missing required parameter: 'model'.", param="model")
        if model.startswith("ft:") and model not in self._models():
            raise WireError(404, f"The model '{model}' does not exist or you do not have access to it.",
                            code="model_not_found", param="model")
        if not isinstance(training, str) or training not in self.objects.files:
            raise WireError(404, f"No such File object: {training}", code="not_found", param="training_file")
        job_id = new_id("ftjob-")
        job: dict[str, Any] = {
            "id": job_id, "object": "fine_tuning.job", "model": model, "created_at": int(time.time()),
            "finished_at": None, "fine_tuned_model": None, "organization_id": ORGANIZATION, "result_files": [],
            "status": "validating_files", "training_file": training, "validation_file": body.get("validation_file"),
            "hyperparameters": {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"},
            "trained_tokens": None, "error": None, "seed": body.get("seed", 42), "suffix": body.get("suffix"),
            "estimated_finish": None, "integrations": [], "metadata": body.get("metadata"),
            "method": body.get("method") or {"type": "supervised", "supervised": {}},
        }
        _keep(self.jobs, job_id, job, self.objects.limit)
        return JSONReply(job)

    def job(self, call: Call) -> Reply:
        """GET /v1/fine_tuning/jobs/{id}: succeeded at its first read, its model and checkpoints made."""
        job = self._job(call)
        if job["status"] == "validating_files":
            base = job["model"].split(":")[1] if job["model"].startswith("ft:") else job["model"]
            model = f"ft:{base}:{ORGANIZATION}:{job['suffix'] or ''}:{new_id('')[:8]}"
            job.update(status="succeeded", finished_at=int(time.time()), fine_tuned_model=model,
                       trained_tokens=TRAINED_TOKENS, result_files=[self._result_file(job)])
            self.checkpoints[job["id"]] = [{
                "object": "fine_tuning.job.checkpoint", "id": new_id("ftckpt_"), "created_at": int(time.time()),
                "fine_tuned_model_checkpoint": f"{model}:ckpt-step-{step}", "fine_tuning_job_id": job["id"],
                "step_number": step, "metrics": {"step": step, "train_loss": 0.5, "train_mean_token_accuracy": 0.9},
            } for step in sorted(CHECKPOINT_STEPS, reverse=True)]
        return JSONReply(job)

    def job_checkpoints(self, call: Call) -> Reply:
        job = self._job(call)
        data = self.checkpoints.get(job["id"], [])
        return JSONReply({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                          "last_id": data[-1]["id"] if data else None, "has_more": False})

    def permissions_root(self, call: Call) -> Reply:
        """GET: the model's permissions; POST (`project_ids`): one permission a project, made."""
        model = self._model(call)
        granted = self.permissions.setdefault(model, {})
        if call.method == "GET":
            return JSONReply({"object": "list", "data": list(granted.values()), "has_more": False})
        projects = json_object(call).get("project_ids")
        if not isinstance(projects, list) or not projects or not all(isinstance(p, str) for p in projects):
            raise WireError(400, "Invalid 'project_ids': expected a non-empty array of strings.", param="project_ids")
        made = [{"object": "checkpoint.permission", "id": new_id("cp_"), "created_at": int(time.time()),
                 "project_id": project} for project in projects]
        granted.update((permission["id"], permission) for permission in made)
        return JSONReply({"object": "list", "data": made, "has_more": False})

    def permission(self, call: Call) -> Reply:
        """DELETE /v1/fine_tuning/checkpoints/{model}/permissions/{permission_id}."""
        model = self._model(call)
        permission_id = call.path_params["permission_id"]
        if self.permissions.get(model, {}).pop(permission_id, None) is None:
            raise WireError(404, f"No such permission: {permission_id}", code="not_found")
        return JSONReply({"object": "checkpoint.permission", "id": permission_id, "deleted": True})

    def _job(self, call: Call) -> dict[str, Any]:
        call.resolve_faults("")
        job = self.jobs.get(call.path_params["job_id"])
        if job is None:
            raise WireError(404, f"Could not find fine-tune: {call.path_params['job_id']}", code="fine_tune_not_found")
        return job

    def _model(self, call: Call) -> str:
        call.resolve_faults("")
        model = str(call.path_params["model"])
        if model not in self._models():
            raise WireError(404, f"The model '{model}' does not exist or you do not have access to it.",
                            code="model_not_found")
        return model

    def _result_file(self, job: dict[str, Any]) -> str:
        content = b"step,train_loss,train_accuracy\n" + b"".join(b"%d,0.5,0.9\n" % s for s in CHECKPOINT_STEPS)
        file_id: str = self.objects.new_file(content, "step_metrics.csv", "fine-tune-results")["id"]
        return file_id
