"""OpenAI wire format: objects an account stores (files, stored responses) and a stateless extra.

Enough of the Files API (`POST /v1/files` multipart, `GET /v1/files`, `GET/DELETE /v1/files/{id}`,
`GET /v1/files/{id}/content`), video jobs (`POST /v1/videos`, JSON or multipart, and
`POST /v1/videos/{id}/remix`: queued, as Sora answers, with the model, size and seconds it makes),
vector stores (`POST /v1/vector_stores`, `POST /v1/vector_stores/{id}/search`: no results, and the
query — rewritten with `rewrite_query` — it searched for), batches (`POST /v1/batches` over an uploaded file,
`GET /v1/batches/{id}`: done — or failed validation — at its first read, its usage a figure of its
input's and its output file made then; `POST /v1/batches/{id}/cancel`; `GET /v1/batches`, newest
first, paged by `after` and `limit`), stored responses (`GET/DELETE /v1/responses/{id}`, `GET /v1/responses/{id}/input_items`) and `POST /v1/moderations` for a gateway's ownership and
pass-through tests. Like the real account, the mock does not know who asked: every object is
visible to every caller, which is exactly what the gateway must hide.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from sentinel.mock.asgi import BytesReply, Call, JSONReply, Reply
from sentinel.mock.faults import WireError
from sentinel.mock.openai_wire import json_object
from sentinel.mock.text import new_id

MAX_OBJECTS = 1000  # of each kind: the oldest is forgotten first (a long-running mock keeps no more)
# The most bytes the files hold together, the oldest forgotten first: the embedded mock runs in the
# gateway's process, and 1,000 files of a 10 MiB body each grew it by ~10 GB.
MAX_FILE_BYTES = 256 * 1024 * 1024


class ObjectStore:
    """The account's objects, in memory: at most `limit` files (`file_bytes` bytes of them in all)
    and `limit` stored responses."""

    def __init__(self, limit: int = MAX_OBJECTS, file_bytes: int = MAX_FILE_BYTES) -> None:
        self.limit = limit
        self.file_bytes = file_bytes
        self.files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self._held_bytes = 0  # (of `files`' contents)
        self.responses: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.videos: dict[str, dict[str, Any]] = {}
        self.vector_stores: dict[str, dict[str, Any]] = {}

    # --- videos (Sora: a job made queued; a remix is as long and as large as its source) --------------
    def videos_root(self, call: Call) -> Reply:
        call.resolve_faults("")
        fields = _form_fields(call) if "multipart/form-data" in call.headers.get("content-type", "") else json_object(call)
        prompt = fields.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise WireError(400, "Missing required parameter: 'prompt'.", param="prompt")
        seconds = str(fields.get("seconds", "4"))
        if seconds not in ("4", "8", "12"):
            raise WireError(400, f"Invalid value: '{seconds}'. Supported values are: '4', '8', and '12'.", param="seconds")
        return self._video(str(fields.get("model", "sora-2")), str(fields.get("size", "720x1280")), seconds, prompt)

    def video_remix(self, call: Call) -> Reply:
        call.resolve_faults("")
        source = self.videos.get(call.path_params["video_id"])
        if source is None:
            raise WireError(404, f"Video with id '{call.path_params['video_id']}' not found.", code="not_found")
        prompt = json_object(call).get("prompt")
        return self._video(source["model"], source["size"], source["seconds"], str(prompt), remixed=source["id"])

    def _video(self, model: str, size: str, seconds: str, prompt: str, remixed: str | None = None) -> Reply:
        video_id = new_id("video_")
        video = {"id": video_id, "object": "video", "created_at": int(time.time()), "status": "queued",
                 "model": model, "size": size, "seconds": seconds, "progress": 0, "prompt": prompt,
                 "remixed_from_video_id": remixed, "completed_at": None, "expires_at": None, "error": None}
        _keep(self.videos, video_id, video, self.limit)
        return JSONReply(video)

    # --- vector stores ---------------------------------------------------------------------------------
    def vector_stores_root(self, call: Call) -> Reply:
        call.resolve_faults("")
        store_id = new_id("vs_")
        store = {"id": store_id, "object": "vector_store", "created_at": int(time.time()),
                 "name": json_object(call).get("name"), "status": "completed", "usage_bytes": 0,
                 "file_counts": {"in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0, "total": 0}}
        _keep(self.vector_stores, store_id, store, self.limit)
        return JSONReply(store)

    def vector_store_search(self, call: Call) -> Reply:
        call.resolve_faults("")
        if call.path_params["vector_store_id"] not in self.vector_stores:
            raise WireError(404, f"Vector store with id '{call.path_params['vector_store_id']}' not found.",
                            code="not_found")
        body = json_object(call)
        query = body.get("query")
        queries = query if isinstance(query, list) else [query]
        searched = " ".join(str(q) for q in queries).lower() if body.get("rewrite_query") else " ".join(map(str, queries))
        return JSONReply({"object": "vector_store.search_results.page", "search_query": [searched], "data": [],
                          "has_more": False, "next_page": None})

    # --- stored responses (filled by POST /v1/responses unless store is false) -----------------------
    def keep_response(self, response: dict[str, Any], input_items: list[dict[str, Any]]) -> None:
        """Store a response with its input items, each given an id as the provider gives them (`msg_…`)."""
        items = [item if isinstance(item.get("id"), str) else {"id": new_id("msg_"), **item} for item in input_items]
        _keep(self.responses, response["id"], (response, items), self.limit)

    def get_response(self, call: Call) -> Reply:
        response_id = call.path_params["response_id"]
        call.resolve_faults("")
        if response_id not in self.responses:
            raise WireError(404, f"Response with id '{response_id}' not found.", code="not_found")
        if call.method == "DELETE":
            del self.responses[response_id]
            return JSONReply({"id": response_id, "object": "response", "deleted": True})
        return JSONReply(self.responses[response_id][0])

    def input_items(self, call: Call) -> Reply:
        response_id = call.path_params["response_id"]
        call.resolve_faults("")
        if response_id not in self.responses:
            raise WireError(404, f"Response with id '{response_id}' not found.", code="not_found")
        items = self.responses[response_id][1]
        return JSONReply({"object": "list", "data": items, "has_more": False})

    # --- files ---------------------------------------------------------------------------------------
    def files_root(self, call: Call) -> Reply:
        call.resolve_faults("")
        if call.method == "GET":
            return JSONReply({"object": "list", "data": [meta for meta, _ in self.files.values()], "has_more": False})
        filename, content, purpose = _multipart(call)
        return JSONReply(self.new_file(content, filename, purpose))

    def new_file(self, content: bytes, filename: str, purpose: str, created_at: float | None = None) -> dict[str, Any]:
        """A file of `/v1/files` holding `content` (uploaded, a batch's output, an upload's parts
        assembled…): its object. The oldest files are forgotten past `limit` of them or `file_bytes`."""
        meta: dict[str, Any] = {
            "id": new_id("file-"), "object": "file", "bytes": len(content),
            "created_at": int(time.time() if created_at is None else created_at),
            "filename": filename, "purpose": purpose, "status": "processed",
        }
        self.files[meta["id"]] = (meta, content)
        self._held_bytes += len(content)
        while len(self.files) > 1 and (len(self.files) > self.limit or self._held_bytes > self.file_bytes):
            self._forget_file(next(iter(self.files)))
        return meta

    def _forget_file(self, file_id: str) -> None:
        self._held_bytes -= len(self.files.pop(file_id)[1])

    def file(self, call: Call) -> Reply:
        file_id = call.path_params["file_id"]
        call.resolve_faults("")
        if file_id not in self.files:
            raise WireError(404, f"No such File object: {file_id}", code="not_found")
        if call.method == "DELETE":
            self._forget_file(file_id)
            return JSONReply({"id": file_id, "object": "file", "deleted": True})
        return JSONReply(self.files[file_id][0])

    def file_content(self, call: Call) -> Reply:
        file_id = call.path_params["file_id"]
        call.resolve_faults("")
        if file_id not in self.files:
            raise WireError(404, f"No such File object: {file_id}", code="not_found")
        return BytesReply(self.files[file_id][1])  # (as OpenAI gives it: the bytes uploaded)


    # --- batches -------------------------------------------------------------------------------------
    def batches_root(self, call: Call) -> Reply:
        """POST /v1/batches: a batch over an uploaded file (404 for an unknown one), `validating`.
        GET /v1/batches: the account's batches, newest first, from the one after `after` (every
        caller's: the account's list), at most `limit` (20 by default)."""
        if call.method == "GET":
            return self._batch_list(call)
        body = json_object(call)
        call.resolve_faults("")
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str) or file_id not in self.files:
            raise WireError(404, f"No such File object: {file_id}", code="not_found", param="input_file_id")
        batch: dict[str, Any] = {
            "id": new_id("batch_"), "object": "batch", "endpoint": body.get("endpoint"),
            "input_file_id": file_id, "completion_window": body.get("completion_window"),
            "status": "validating", "created_at": int(time.time()), "output_file_id": None,
            "error_file_id": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "usage": None,
        }
        _keep(self.batches, batch["id"], batch, self.limit)
        return JSONReply(batch)

    def _batch_list(self, call: Call) -> Reply:
        call.resolve_faults("")
        newest = list(reversed(self.batches.values()))
        after = call.query.get("after")
        if after is not None:
            ids = [batch["id"] for batch in newest]
            newest = newest[ids.index(after) + 1:] if after in ids else []
        given = call.query.get("limit") or "20"
        if not given.isdigit() or not 1 <= int(given) <= 100:
            raise WireError(400, f"Invalid 'limit': {given[:40]!r}. Expected an integer from 1 to 100.", param="limit")
        limit = int(given)
        page = newest[:limit]
        return JSONReply({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                          "last_id": page[-1]["id"] if page else None, "has_more": len(newest) > limit})

    def batch(self, call: Call) -> Reply:
        """GET /v1/batches/{id}: done at its first read — `failed`, without usage, when a line's `url`
        is not the batch's `endpoint` or its `custom_id` an earlier line's (its input fails validation); `cancelled`, having run nothing,
        when it was cancelling. Each line is charged a token per 8 bytes of its `body`'s JSON as input
        and 5 tokens of output (a figure, not a model's); its results are the output file's lines."""
        batch_id = call.path_params["batch_id"]
        call.resolve_faults("")
        batch = self.batches.get(batch_id)
        if batch is None:
            raise WireError(404, f"No such Batch object: {batch_id}", code="not_found")
        if batch["status"] == "cancelling":
            batch["status"], batch["cancelled_at"] = "cancelled", int(time.time())
            total = len(self._batch_lines(batch))
            batch["request_counts"] = {"total": total, "completed": 0, "failed": 0}
        elif batch["status"] == "validating":
            lines = self._batch_lines(batch)
            seen: set[Any] = set()
            errors = []
            for n, line in enumerate(lines, 1):
                if line.get("url") != batch["endpoint"]:
                    errors.append({"code": "invalid_url", "line": n, "param": "url",
                                   "message": "The URL provided does not match the batch's endpoint."})
                elif line.get("custom_id") in seen:
                    errors.append({"code": "duplicate_custom_id", "line": n, "param": "custom_id",
                                   "message": "The custom_id for this request is a duplicate of another request."})
                seen.add(line.get("custom_id"))
            if errors:  # its input fails validation: it ran nothing, and shows no usage
                batch["status"], batch["errors"] = "failed", {"object": "list", "data": errors}
                return JSONReply(batch)
            spent = [max(1, len(orjson.dumps(line.get("body"))) // 8) for line in lines]
            batch["status"] = "completed"
            batch["request_counts"] = {"total": len(lines), "completed": len(lines), "failed": 0}
            batch["usage"] = {"input_tokens": sum(spent), "output_tokens": 5 * len(lines),
                              "total_tokens": sum(spent) + 5 * len(lines),
                              "input_tokens_details": {"cached_tokens": 0},
                              "output_tokens_details": {"reasoning_tokens": 0}}
            batch["output_file_id"] = self._batch_output(batch, lines, spent)
        return JSONReply(batch)

    def batch_cancel(self, call: Call) -> Reply:
        """POST /v1/batches/{id}/cancel: a batch still at work is `cancelling` (its next read shows it
        `cancelled`); one that has ended cannot be cancelled (400)."""
        batch_id = call.path_params["batch_id"]
        call.resolve_faults("")
        batch = self.batches.get(batch_id)
        if batch is None:
            raise WireError(404, f"No such Batch object: {batch_id}", code="not_found")
        if batch["status"] not in ("validating", "in_progress", "cancelling"):
            raise WireError(400, f"Cannot cancel a batch with status '{batch['status']}'.", code="invalid_request")
        if batch["status"] != "cancelling":
            batch["status"], batch["cancelling_at"] = "cancelling", int(time.time())
        return JSONReply(batch)

    def _batch_lines(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        stored = self.files.get(batch["input_file_id"])
        content = stored[1] if stored is not None else b""
        return [orjson.loads(line) for line in content.splitlines() if line.strip()]

    def _batch_output(self, batch: dict[str, Any], lines: list[dict[str, Any]], spent: list[int]) -> str:
        """A file of the results of `batch`'s `lines` (`purpose` `batch_output`), one a line: its id."""
        results = [orjson.dumps({
            "id": new_id("batch_req_"), "custom_id": line.get("custom_id"), "error": None,
            "response": {"status_code": 200, "request_id": new_id("req_"), "body": {
                "id": new_id("chatcmpl-"), "object": "chat.completion", "model": (line.get("body") or {}).get("model"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "batch answer"}}],
                "usage": {"prompt_tokens": tokens, "completion_tokens": 5, "total_tokens": tokens + 5}}},
        }) for line, tokens in zip(lines, spent, strict=True)]
        content = b"\n".join(results) + b"\n"
        file_id: str = self.new_file(content, f"{batch['id']}_output.jsonl", "batch_output")["id"]
        return file_id


def moderations(call: Call) -> Reply:
    """POST /v1/moderations: nothing is flagged; usage-free, like the real endpoint."""
    body = json_object(call)
    call.resolve_faults("")
    inputs = body.get("input")
    count = len(inputs) if isinstance(inputs, list) else 1
    result = {"flagged": False, "categories": {"violence": False}, "category_scores": {"violence": 0.0}}
    return JSONReply({"id": new_id("modr-"), "model": body.get("model") or "omni-moderation-latest",
                      "results": [result] * count})


def _form_parts(call: Call) -> list[tuple[bytes, bytes]]:
    """(head, data) of each part of a multipart/form-data body (small and well-formed only); [] when
    it names no boundary."""
    kind = call.headers.get("content-type", "")
    if "boundary=" not in kind:
        return []
    boundary = kind.split("boundary=", 1)[1].strip('"').encode()
    parts = []
    for part in call.raw.split(b"--" + boundary):
        head, _, data = part.partition(b"\r\n\r\n")
        parts.append((head, data.removesuffix(b"\r\n")))
    return parts


def _multipart(call: Call) -> tuple[str, bytes, str]:
    """(filename, content, purpose) of a multipart/form-data upload (small and well-formed only)."""
    if "boundary=" not in call.headers.get("content-type", ""):
        raise WireError(400, "Expected multipart/form-data with a file and a purpose", param="file")
    filename, content, purpose = "upload", b"", "user_data"
    for head, data in _form_parts(call):
        if b'name="file"' in head:
            content = data
            if b'filename="' in head:
                filename = head.split(b'filename="', 1)[1].split(b'"', 1)[0].decode("utf-8", "replace")
        elif b'name="purpose"' in head:
            purpose = data.decode("utf-8", "replace")
    return filename, content, purpose


def form_part(call: Call, name: str) -> bytes | None:
    """The value of the multipart/form-data part `name` (a file's bytes or a field's), the first of
    that name; None when there is none (small and well-formed uploads only)."""
    wanted = b' name="' + name.encode() + b'"'
    return next((data for head, data in _form_parts(call) if wanted in head), None)


def _form_fields(call: Call) -> dict[str, str]:
    """The text fields of a multipart/form-data upload (small and well-formed only): the first of each name."""
    fields: dict[str, str] = {}
    for head, data in _form_parts(call):
        if b'name="' not in head or b'filename="' in head:
            continue
        name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode("utf-8", "replace")
        fields.setdefault(name, data.decode("utf-8", "replace"))
    return fields


def _keep(objects: dict[str, Any], key: str, value: Any, limit: int) -> None:
    """Store `value`, forgetting the oldest objects beyond `limit` (dicts keep insertion order)."""
    objects[key] = value
    while len(objects) > limit:
        del objects[next(iter(objects))]
