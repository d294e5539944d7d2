"""OpenAI wire format: the Uploads API — a file sent in parts, assembled into a file of `/v1/files`.

`POST /v1/uploads` (`bytes`, `filename`, `mime_type`, `purpose`: a `pending` upload that expires an
hour after it was made), `POST /v1/uploads/{id}/parts` (multipart, its `data`: an `upload.part`),
`POST /v1/uploads/{id}/complete` (`part_ids` in the order their bytes make the file, optional `md5`:
the upload `completed`, with the file it made nested as `file` — a file of the account, retrievable,
downloadable, a batch's input) and `POST /v1/uploads/{id}/cancel`. The real API's errors: an unknown
upload 404, a part to or a completion of an upload no longer pending 400, parts whose bytes are not
the upload's `bytes` (or whose MD5 is not `md5`) 400. Like the real account, the mock does not know
who asked: every upload is every caller's, which the gateway must hide.

What it holds is bounded (the embedded mock runs in the gateway's process): a part is at most
MAX_PART_BYTES and an upload at most MAX_UPLOAD_BYTES (OpenAI's are 64 MB and 8 GB), and the
parts of at most MAX_UPLOADS uploads are kept — the oldest upload is forgotten first.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from sentinel.mock.asgi import Call, JSONReply, Reply
from sentinel.mock.faults import WireError
from sentinel.mock.openai_objects import ObjectStore, _keep, form_part
from sentinel.mock.openai_wire import json_object
from sentinel.mock.text import new_id

MAX_PART_BYTES = 1 << 20  # 1 MiB a part (OpenAI: 64 MB)
MAX_UPLOAD_BYTES = 8 << 20  # 8 MiB an upload (OpenAI: 8 GB)
MAX_UPLOADS = 16  # uploads kept, with their parts: at most 128 MiB of parts held
UPLOAD_SECONDS = 3600  # an upload expires an hour after it was made
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")


class Uploads:
    """The account's uploads and their parts; a completed upload's file is kept in `objects`."""

    def __init__(self, objects: ObjectStore, clock: Callable[[], float] = time.time, limit: int = MAX_UPLOADS) -> None:
        self.objects = objects
        self.clock = clock
        self.limit = limit
        self.uploads: dict[str, tuple[dict[str, Any], dict[str, bytes]]] = {}  # the upload, its parts by id

    def create(self, call: Call) -> Reply:
        body = json_object(call)
        call.resolve_faults("")
        for name in ("bytes", "filename", "mime_type", "purpose"):
            if name not in body:
                raise WireError(400, f"Missing required parameter: '{name}'.", param=name)
        size = body["bytes"]
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_UPLOAD_BYTES:
            raise WireError(400, f"Invalid 'bytes': expected an integer from 1 to {MAX_UPLOAD_BYTES}.", param="bytes")
        if body["purpose"] not in PURPOSES:
            raise WireError(400, f"Invalid value for 'purpose': {str(body['purpose'])[:40]!r}.", param="purpose")
        if not isinstance(body["filename"], str) or not isinstance(body["mime_type"], str):
            raise WireError(400, "Invalid type for 'filename' or 'mime_type': expected a string.", param="filename")
        now = int(self.clock())
        upload = {"id": new_id("upload_"), "object": "upload", "bytes": size, "created_at": now,
                  "filename": body["filename"], "purpose": body["purpose"], "mime_type": body["mime_type"],
                  "status": "pending", "expires_at": now + UPLOAD_SECONDS, "file": None}
        _keep(self.uploads, upload["id"], (upload, {}), self.limit)
        return JSONReply(upload)

    def part(self, call: Call) -> Reply:
        upload, parts = self._pending(call, "add a part to")
        data = form_part(call, "data")
        if data is None:
            raise WireError(400, "Missing required parameter: 'data'.", param="data")
        if len(data) > MAX_PART_BYTES:
            raise WireError(400, f"A part may hold at most {MAX_PART_BYTES} bytes.", param="data")
        if sum(map(len, parts.values())) + len(data) > upload["bytes"]:
            raise WireError(400, f"The parts would hold more than the upload's {upload['bytes']} bytes.", param="data")
        part = {"id": new_id("part_"), "object": "upload.part", "created_at": int(self.clock()),
                "upload_id": upload["id"]}
        parts[part["id"]] = data
        return JSONReply(part)

    def complete(self, call: Call) -> Reply:
        body = json_object(call)
        upload, parts = self._pending(call, "complete")
        part_ids = body.get("part_ids")
        if not isinstance(part_ids, list) or not all(isinstance(p, str) for p in part_ids):
            raise WireError(400, "Missing required parameter: 'part_ids'.", param="part_ids")
        unknown = next((p for p in part_ids if p not in parts), None)
        if unknown is not None or len(set(part_ids)) != len(part_ids):
            raise WireError(400, f"Invalid part id: '{unknown or part_ids[0]}' is not a part of this upload, "
                                 "or is named twice.", param="part_ids")
        content = b"".join(parts[p] for p in part_ids)
        if len(content) != upload["bytes"]:
            raise WireError(400, f"The upload was created with {upload['bytes']} bytes, but the parts given hold "
                                 f"{len(content)} bytes.", param="part_ids")
        md5 = body.get("md5")
        if md5 is not None and md5 != hashlib.md5(content, usedforsecurity=False).hexdigest():
            raise WireError(400, "The MD5 checksum given does not match the parts' bytes.", param="md5")
        file = self.objects.new_file(content, upload["filename"], upload["purpose"], created_at=self.clock())
        upload["status"], upload["file"] = "completed", file
        parts.clear()  # (the file holds the bytes now)
        return JSONReply(upload)

    def cancel(self, call: Call) -> Reply:
        upload, parts = self._pending(call, "cancel")
        upload["status"] = "cancelled"
        parts.clear()
        return JSONReply(upload)

    def _pending(self, call: Call, doing: str) -> tuple[dict[str, Any], dict[str, bytes]]:
        """The upload the path names, still pending (404 for an unknown one; 400 for one completed,
        cancelled or expired — an upload past its `expires_at` is `expired`, its parts dropped)."""
        call.resolve_faults("")
        upload_id = call.path_params["upload_id"]
        held = self.uploads.get(upload_id)
        if held is None:
            raise WireError(404, f"Upload with id '{upload_id}' not found.", code="not_found")
        upload, parts = held
        if upload["status"] == "pending" and self.clock() >= upload["expires_at"]:
            upload["status"] = "expired"
            parts.clear()
        if upload["status"] != "pending":
            raise WireError(400, f"Cannot {doing} an upload with status '{upload['status']}'.",
                            code="invalid_request")
        return held
