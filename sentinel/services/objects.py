"""Objects a provider account stores on a user's behalf, as the OpenAI API addresses them.

Every user of Sentinel shares the company's provider account. A call that creates an object
(a stored response, a file, a batch, ...) makes the caller its owner; a call that names an object
— in its path or anywhere in its JSON body — may only name the caller's own objects (see
`sentinel.governance.ownership`). Pure: which paths and fields address objects, nothing else.

Anthropic's Messages API can name objects of the provider account too — files of its Files API (a
`file` source of a document or image, a `container_upload` block) and code-execution containers (a
top-level `container`). Sentinel does not serve those APIs, so no such object can be the caller's:
`anthropic_object_reference` finds them so that the request is refused — and the earlier messages
the provider keeps (a server-held `thread`, a `diagnostics.previous_message_id`), whose owner
Sentinel does not record either.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from email.message import Message
from typing import Any

import orjson

from sentinel.domain.graders import is_model_grader
from sentinel.domain.plans import MAX_LIMIT
from sentinel.domain.text import is_text
from sentinel.native._wire import is_number
from sentinel.native.errors import NativeValidationError
from sentinel.native.openai_checks import (
    check_caps,
    check_embeddings,
    check_foreground,
    check_named_ids,
    check_stop,
    json_containers_exceed,
)
from sentinel.quota.estimate import BATCH_URLS
from sentinel.quota.usage import MAX_ANSWER_ITEMS

DAY = 86400.0
# Collections of per-account objects under /v1, with how long ownership is kept: no shorter than
# the provider keeps the object (None: until it is deleted through Sentinel).
COLLECTIONS: dict[str, float | None] = {
    "responses": 31 * DAY,  # stored responses: 30 days
    "chat/completions": 31 * DAY,  # stored chat completions (`store: true`): 30 days
    "conversations": None,
    "files": None,
    "uploads": 2 * DAY,  # an upload expires after an hour
    "batches": None,
    "vector_stores": None,
    "fine_tuning/jobs": None,
    # Fine-tuned models: a job's `fine_tuned_model`, a checkpoint's `fine_tuned_model_checkpoint`
    # (`ft:…`), their job's owner's once a read of the job shows them (`trained_models`); named in
    # the path of their permissions (`/v1/fine_tuning/checkpoints/{model}/permissions`: which projects
    # may use them) and by a body's `model` (`fine_tuned_models`). Kept until deleted (never through
    # Sentinel: `DELETE /v1/models/{id}` is not offered).
    "fine_tuning/checkpoints": None,
    "assistants": None,
    "threads": None,
    "containers": None,
    "evals": None,
    "skills": None,  # named by a container's or a shell tool's `skills[].skill_id`
    "audio/voices": None,  # custom voices, named by any `voice` object's `id` (a chat's `audio.voice`, speech)
    "audio/voice_consents": None,  # a speaker's recorded consent, named by a voice's `consent`
    "videos": None,  # a video job and its content (edited, extended or remixed: named by a `video`'s `id`)
    "videos/characters": None,  # a character made from an uploaded video
}
# Body fields whose values name objects (a string, a list of strings, or {"id": ...}); besides
# these, any object {"type": "file_id", "id": ...} names a file (an eval run's JSONL source), any
# `audio` object with an `id` names an earlier audio answer (a chat message's `audio.id`), and any
# `voice` object with an `id` a custom voice (`{"voice": {"id": "voice_..."}}`; a voice named by a
# string is one of the provider's own, `alloy`). A
# Responses request's `prompt_cache_options.comparison_response_id` names a stored response too
# (the provider compares its prompt with the request's: how much of it matched tells its text), and
# a `skill_reference`'s `skill_id` a skill (its files are mounted in the caller's container).
# Responses API items (`msg_…`, `fc_…`, `rs_…`, …) are objects too, named by an `item_reference`'s
# `id`, by an item given with its `id` in an `input` or `items` list (the provider reads the stored
# item of that id: a reasoning item's), and by an MCP approval's `approval_request_id`; they become
# their caller's as Sentinel shows them (`answer_items`).
REFERENCE_KEYS = frozenset({
    "previous_response_id", "response_id", "comparison_response_id", "conversation", "conversation_id", "file_id",
    "file_ids", "input_file_id", "output_file_id", "error_file_id", "training_file", "validation_file",
    "vector_store_id", "vector_store_ids", "assistant_id", "thread_id", "batch_id", "upload_id", "container",
    "container_id", "eval_id", "part_ids", "skill_id", "approval_request_id",
})
# Lists of Responses API items in a body (a response's `input`, a conversation's `items`): an item
# given there with an `id` names the stored item of that id.
ITEM_LISTS = ("input", "items")
# Fields that name an object on one call only, by the `/v1` path of the call that takes them: a
# voice's `consent` (its speaker's consent recording) — a word too common to read as an id in every
# body (a request's `metadata` may have a `consent` key).
# A video edited or extended is named by `video` (`{"id": ...}`; a file given there is a file part).
PATH_REFERENCES: dict[tuple[str, ...], frozenset[str]] = {
    ("audio", "voices"): frozenset({"consent"}),
    ("videos", "edits"): frozenset({"video"}),
    ("videos", "extensions"): frozenset({"video"}),
}


def reference_keys(segments: Sequence[str]) -> frozenset[str]:
    """The fields whose values name objects in the body of a call on `segments` (a `/v1` path's):
    REFERENCE_KEYS, and the path's own PATH_REFERENCES."""
    extra = PATH_REFERENCES.get(tuple(segments))
    return REFERENCE_KEYS if extra is None else REFERENCE_KEYS | extra
# POSTs below an object that create an object of their own, named in later bodies or paths: an
# upload's parts (`part_ids` when it is completed), a video's remix (a video of its own). Their
# answer's `id` becomes the caller's, kept as long as the collection's objects are.
PART_COLLECTIONS = frozenset({("uploads", "parts"), ("videos", "remix")})
# Calls on a collection itself that name no object of it: a POST whose one word after the collection
# is one of these, by collection, is no call on an object of that id (`POST /v1/responses/compact`
# compacts a conversation, `/v1/responses/input_tokens` counts a request's input, `POST
# /v1/threads/runs` creates a thread and runs it). Its JSON body is checked as any pass-through
# body's (the ids it names must be the caller's); the objects its answer makes (its `id`, and
# ACTION_CREATED) become the caller's. Any other method on such a path names an object (none's).
COLLECTION_ACTIONS: dict[str, frozenset[str]] = {
    "responses": frozenset({"compact", "input_tokens"}),
    "threads": frozenset({"runs"}),
    "videos": frozenset({"edits", "extensions"}),  # a new video made of one (`video`: its file, or its id)
}
# Fields of an action's answer naming another object it created, with that object's collection.
ACTION_CREATED: dict[tuple[str, str], tuple[str, str]] = {("threads", "runs"): ("thread_id", "threads")}
# Actions whose answer is an object of the one they created along (ACTION_CREATED), reached only
# through that object's path (a run, through its thread's): it becomes no one's itself — its owner,
# kept without a TTL as its thread's and never named by id, stayed in the store for good once its
# thread was deleted.
ACTION_CHILDREN = frozenset({("threads", "runs")})
# Words below an object that tell Sentinel what a call on it is (`sentinel.services.relay`): a file's
# `content` is its bytes (no object in it becomes the caller's), a `cancel` asks for no work, a run's
# `steps` count no usage of their own, a conversation's `items` grow its context, an upload's `parts`
# and a video's `remix` are objects, a thread's `messages` and a run's `steps` charge the `runs` they
# show, an eval run's `output_items` charge it. Spelled in another case (`/v1/files/{id}/Content`,
# `/v1/threads/{id}/Messages`), a call would be read as another.
OBJECT_WORDS = frozenset({"content", "cancel", "steps", "items", "parts", "remix", "messages", "runs", "output_items"})
# An audio answer of chat (its `id` is named again in a later request's `messages[].audio`): the
# provider keeps it until its `expires_at`; when that is not known, this long.
AUDIO_TTL = 2 * DAY
# Fields of an answer that name files created along with it: a batch's output and error files, a
# fine-tuning job's result files (a list); besides these, an upload's `file`.
CREATED_KEYS = ("output_file_id", "error_file_id", "result_files")


@dataclass(frozen=True)
class ObjectPath:
    """Where a `/v1` path points in the object model."""

    collection: str | None = None  # e.g. "files"; None: not a per-account object path
    object_id: str | None = None  # the object named by the path, None for the collection itself
    action: str | None = None  # a call on the collection that names no object (COLLECTION_ACTIONS)

    @property
    def is_collection(self) -> bool:
        return self.collection is not None and self.object_id is None and self.action is None

    def created_along(self, answer: Any) -> list[tuple[str, float | None]]:
        """Ids besides its own that an action's answer made the caller's (ACTION_CREATED), each with
        how long its owner is kept: the thread `POST /v1/threads/runs` created."""
        key, collection = ACTION_CREATED.get((self.collection or "", self.action or ""), ("", ""))
        created = answer.get(key) if key and isinstance(answer, dict) else None
        return [(created, COLLECTIONS[collection])] if isinstance(created, str) and created else []

    def is_object(self, segments: Sequence[str]) -> bool:
        """Whether `segments` (this path's, without a trailing slash) are an object's own path, nothing
        below it: a DELETE there deletes the object (`/v1/vector_stores/{id}/files/{id}` only takes a
        file out of a store, whatever the file's id)."""
        return (self.object_id is not None and self.collection is not None
                and len(segments) == self.collection.count("/") + 2)

    @property
    def ttl(self) -> float | None:
        return COLLECTIONS.get(self.collection or "")

    def creates(self, method: str, segments: Sequence[str]) -> bool:
        """Whether a call with `method` on `segments` (this path's) creates an object that becomes the
        caller's: a POST to a collection or one of its COLLECTION_ACTIONS (not ACTION_CHILDREN's), or
        to one of an object's PART_COLLECTIONS."""
        if method != "POST" or self.collection is None or (self.collection, self.action or "") in ACTION_CHILDREN:
            return False
        if self.object_id is None:
            return True
        depth = self.collection.count("/") + 1
        return len(segments) == depth + 2 and (self.collection, segments[-1]) in PART_COLLECTIONS


def classify(segments: Sequence[str], method: str = "") -> ObjectPath:
    """`segments` are the path's segments after `/v1` (decoded); e.g. ["files", "file-1", "content"].
    With `method` POST, a path of one of COLLECTION_ACTIONS (["responses", "compact"]) is that action."""
    for size in (2, 1):
        if len(segments) >= size and "/".join(segments[:size]) in COLLECTIONS:
            collection = "/".join(segments[:size])
            rest = segments[size:]
            if method == "POST" and len(rest) == 1 and rest[0] in COLLECTION_ACTIONS.get(collection, frozenset()):
                return ObjectPath(collection, action=rest[0])
            return ObjectPath(collection, rest[0] if rest else None)
    return ObjectPath()


# The most object ids one request may name; a body naming more is refused (never checked in part).
MAX_REFERENCES = 1000


class TooManyReferences(ValueError):
    """A body names more than MAX_REFERENCES objects."""


class MalformedReference(ValueError):
    """A body gives an object's id where one is read (`referenced_ids`) as something other than a
    string or null — a list, an object, a number, a boolean: no check reads it, and a lenient provider
    (one coercing `["file-1"]` to `"file-1"`) would read another user's object. `param`: where."""

    def __init__(self, param: str, value: Any) -> None:
        kind = "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else (
            "a boolean" if isinstance(value, bool) else "a number")
        super().__init__(f"{param} must name an object by its id, a string (or null), not {kind}")
        self.param, self.value = param, value

    def within(self, prefix: str) -> MalformedReference:
        """The same refusal, its parameter found in a value given at `prefix` (a form field's JSON)."""
        return MalformedReference(f"{prefix}.{self.param}", self.value)


def referenced_ids(body: Any, limit: int = MAX_REFERENCES, *, keys: frozenset[str] = REFERENCE_KEYS) -> list[str]:
    """Object ids a JSON body names under `keys` (REFERENCE_KEYS, or a path's `reference_keys`),
    anywhere in it. TooManyReferences when it names more than `limit`: every id named must be
    checked, so none may be left unread. MalformedReference when an id is given there as anything
    but a string or null (`_unread`): an `id` of a typed reference, of an item, of an `audio` or a
    `voice`, and what a reference key holds (a string, an object's `id`, or lists of them)."""
    found: list[str] = []
    for node in _objects(body):
        if _NAMING_KEYS.isdisjoint(node) and keys.isdisjoint(node):
            continue  # (most objects — a chat message — have no key an id is read under)
        if _named(node.get("type")) in _BY_ID:
            _read_id(body, node, "id", node.get("id"), found)
        for listed in ITEM_LISTS:
            items = node.get(listed)
            for item in items if isinstance(items, list) else ():
                if isinstance(item, dict) and _named(item.get("type")) not in _BY_ID:
                    _read_id(body, item, "id", item.get("id"), found)
        for named in (node.get("audio"), node.get("voice")):
            if isinstance(named, dict):
                _read_id(body, named, "id", named.get("id"), found)
        for key, value in node.items():
            if key in keys:
                for within, named_id in _named_values(value):
                    _read_id(body, node, key + within, named_id, found)
        if len(found) > limit:
            raise TooManyReferences(f"A request may name at most {limit} objects")
    return found


def _read_id(body: Any, node: dict[str, Any], key: str, value: Any, found: list[str]) -> None:
    """Add `value`, given under `key` of `node` (an object in `body`) where an id is read, to `found`
    when it is one (a string but empty); MalformedReference, naming where, unless it is a string or
    null (`_unread`)."""
    if isinstance(value, str):
        if value:
            found.append(value)
    elif _unread(value):
        where = _path_to(body, node)
        raise MalformedReference(f"{where}.{key}" if where else key, value)


def _unread(value: Any) -> bool:
    """Whether `value`, given where an id is read, is one no check reads: neither a string nor null
    (null names nothing, and is the API's absent id where it takes none)."""
    return value is not None and not isinstance(value, str)


def _path_to(body: Any, target: dict[str, Any]) -> str:
    """The dotted parameter path of `target`, an object in `body` (`input.0`; "" for `body` itself):
    walked again only to name it in a refusal."""
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        at, node = stack.pop()
        if node is target:
            return at
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        stack += [(f"{at}.{key}" if at else str(key), value) for key, value in items
                  if isinstance(value, _CONTAINERS)]
    return ""


# The keys besides a body's reference keys that `referenced_ids` reads an id under (an object of
# none of them names no object).
_NAMING_KEYS = frozenset({"type", *ITEM_LISTS, "audio", "voice"})

# Objects whose `type` says their `id` names another: an eval run's JSONL source (a file), a
# Responses `item_reference` (an item).
_BY_ID = frozenset({"file_id", "item_reference"})


def named_files(body: Any) -> list[str]:
    """The ids a JSON body names as files (`file_id`: a chat `file` part's `file`, a Responses
    `input_file` or `input_image`): those whose facts read at upload estimate the request
    (`sentinel.governance.ownership.Ownership.require`)."""
    return [node["file_id"] for node in _objects(body) if isinstance(node.get("file_id"), str) and node["file_id"]]


# Eval data that the provider selects from the whole account by filter (model, metadata, dates):
# stored responses and stored chat completions of every user. A run's `source` of these types, or an
# eval's `data_source_config` of these types (its schema drawn from them), is a list in disguise.
ACCOUNT_SOURCES = frozenset({"responses", "stored_completions"})
ACCOUNT_CONFIGS = frozenset({"logs", "stored_completions"})


def reads_account_data(body: Any) -> bool:
    """Whether a JSON body asks the provider to select stored objects across the account (an eval
    run over `stored_completions` or `responses`, an eval configured from `logs`)."""
    for node in _objects(body):
        source, config = node.get("source"), node.get("data_source_config")
        if isinstance(source, dict) and _typed(source, ACCOUNT_SOURCES):
            return True
        if isinstance(config, dict) and _typed(config, ACCOUNT_CONFIGS):
            return True
    return False


def _typed(node: dict[str, Any], kinds: frozenset[str]) -> bool:
    """Whether a JSON object's `type` is one of `kinds`. A `type` that is not a string (a list, an
    object: unhashable) is no type of them, as a `source` that is not an object is no source."""
    kind = node.get("type")
    return isinstance(kind, str) and kind in kinds


# Eval run data sources the provider samples a model for (`data_source.model`); graders that run a
# model (`model`, nested graders too) are `sentinel.domain.graders`'.
SAMPLED_SOURCES = frozenset({"completions", "responses"})
# Where a call's body gives graders (any may be a model grader), by its `/v1` path's first two
# segments, with the parameter named when one's model is refused: an eval's `testing_criteria`, a
# reinforcement fine-tuning job's grader (`method.reinforcement.grader`: all of `method` is read), a
# grader run or validated on its own (`/v1/fine_tuning/alpha/graders/run`, `/validate`).
GRADERS = {
    ("evals",): ("testing_criteria", "testing_criteria.model"),
    ("fine_tuning", "jobs"): ("method", "method.reinforcement.grader.model"),
    ("fine_tuning", "alpha"): ("grader", "grader.model"),
}


def run_models(segments: Sequence[str], body: Any) -> list[tuple[str, Any]]:
    """(parameter, value) of every model a call's JSON body has the provider run besides a metered
    call's own `model` — `segments` are its `/v1` path's: an eval run's `data_source.model` (given, or
    needed: a source of SAMPLED_SOURCES samples one), the `model` of every model grader (GRADERS:
    `is_model_grader`), and the model of every tool either samples with (`tool_models` of its `sampling_params`). The value is as given (None
    when missing)."""
    if not isinstance(body, dict) or not segments:
        return []
    found: list[tuple[str, Any]] = []
    source = body.get("data_source") if segments[0] == "evals" else None
    if isinstance(source, dict):
        if "model" in source or _typed(source, SAMPLED_SOURCES):
            found.append(("data_source.model", source.get("model")))
        found += tool_models(source.get("sampling_params"), "data_source.sampling_params.")
    for prefix, (field, param) in GRADERS.items():
        graders = body.get(field) if tuple(segments[:len(prefix)]) == prefix else None
        for grader in _objects(graders) if isinstance(graders, dict | list) else ():
            if is_model_grader(grader):
                found.append((param, grader.get("model")))
            found += tool_models(grader.get("sampling_params"), f"{field}.sampling_params.")
    return found


def tool_models(body: Any, at: str = "") -> list[tuple[str, Any]]:
    """(parameter, value) of the `model` of every tool in `body`'s `tools` that gives one — a model the
    provider runs besides the body's own (the Responses API's `image_generation` tool) —, the
    parameter prefixed with `at` (where `body` is: `body.` in a batch's line). The value is as given:
    any JSON, to be refused unless it is a model name the surface allows. An `image_generation` tool
    that names none gives None (refused: the provider would run its default image model, one the
    catalogue may not offer)."""
    tools = body.get("tools") if isinstance(body, dict) else None
    if not isinstance(tools, list):
        return []
    return [(f"{at}tools.{i}.model", tool.get("model")) for i, tool in enumerate(tools)
            if isinstance(tool, dict) and ("model" in tool or _named(tool.get("type")) in _MODEL_TOOLS)]


def _named(value: Any) -> str | None:
    """`value` if it is a string: a `type` that is a list or an object (unhashable) raised a TypeError
    looked up in a set, a 500 for any body with tools on every metered endpoint."""
    return value if isinstance(value, str) else None


# Tools that run a model of their own, the provider's default when the tool names none.
_MODEL_TOOLS = frozenset({"image_generation"})


def _objects(body: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in `body`, nested ones included (a walk without recursion: any depth)."""
    stack = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            for item in node:
                if isinstance(item, _CONTAINERS):
                    stack.append(item)
        elif isinstance(node, dict):
            yield node
            for value in node.values():
                if isinstance(value, _CONTAINERS):
                    stack.append(value)


_CONTAINERS = (dict, list)  # (made once: `dict | list` is a new union object each time it is read)


class MalformedUpload(ValueError):
    """A multipart body Sentinel cannot read part by part as the provider would; `param`: the part
    it is about, when it is about one."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


# An upload is read in Python (in a worker thread from 16 KiB: `sentinel.offload`): its size in parts
# and headers is capped so that reading one stays cheap. A form has a handful of fields; the stdlib's reader of a header's
# parameters takes time quadratic in their number (a part of 500,000 of them took 37 s).
MAX_PARTS = 100
MAX_PART_HEADERS = 16 * 1024  # bytes of header lines, all parts together
# Header lines of one part (a form's: Content-Disposition, a file's Content-Type, an encoding): each
# is read into an email `Message`, ~1.3 µs — 4,000 short ones, 16 KB, a body just under the size read
# in a worker thread, took ~5 ms of the event loop.
MAX_PART_HEADER_LINES = 8
MAX_PARAMETERS = 16  # `;` in the Content-Type, and in the header lines of one part


@dataclass(frozen=True)
class Upload:
    """A `multipart/form-data` body, read part by part, strictly (see `_parts`): (name, value, whether
    the part is a file — its Content-Disposition names a `filename`) triples; `spans`, where each
    value lies in the body (start, end), and `delimiter`, its parts' (`--` and the boundary), to
    write values of Sentinel's in their place (`with_values`)."""

    parts: tuple[tuple[str, bytes, bool], ...]
    spans: tuple[tuple[int, int], ...] = ()
    delimiter: bytes = b""

    @classmethod
    def read(cls, body: bytes, content_type: str) -> Upload:
        """MalformedUpload when the body cannot be read as the provider would read it."""
        parts, spans, delimiter = _parts(body, content_type)
        return cls(tuple(parts), tuple(spans), delimiter)

    def named(self, wanted: Callable[[str], bool]) -> list[int]:
        """The parts (their indexes) whose name — an index aside, `user[]` is `user` — is `wanted`."""
        return [i for i, (name, _, _) in enumerate(self.parts) if wanted(_INDEX.sub("", name))]

    def with_values(self, body: bytes, content_type: str, values: dict[int, bytes]) -> bytes:
        """`body`, which this upload was read from, with the value of each part `values` names (by its
        index) replaced: its headers, every other part and the boundary as they came. MalformedUpload
        when a value holds the delimiter (it would end its part early: the provider would read other
        parts); the body written is read again, and must give these very parts."""
        if not values:
            return body
        if any(self.delimiter in value for value in values.values()):
            raise MalformedUpload("A value Sentinel writes into the upload would hold its boundary: choose another one")
        pieces, at = [], 0
        for index in sorted(values):
            start, end = self.spans[index]
            pieces += [body[at:start], values[index]]
            at = end
        written = b"".join([*pieces, body[at:]])
        expected = tuple((name, values.get(i, value), is_file) for i, (name, value, is_file) in enumerate(self.parts))
        if Upload.read(written, content_type).parts != expected:  # cannot happen: a value cannot reach a delimiter
            raise MalformedUpload("The upload could not be written back part by part")
        return written

    def values(self, name: str) -> list[bytes]:
        return [value for part, value, _ in self.parts if part == name]

    def references(
        self, limit: int = MAX_REFERENCES, *, files: frozenset[str] = frozenset(), keys: frozenset[str] = REFERENCE_KEYS,
    ) -> list[str]:
        """Object ids the upload names, but in a file (its part has a `filename`) given on one of
        `files`, the fields the call takes files on (`upload_files`: a file's bytes are its own, a
        video to edit given on `video` too) — a file part on any other field is read as a field: the
        value of every part whose name has a component — split at brackets and dots — that is one of
        `keys` (REFERENCE_KEYS, or the call's `reference_keys`: `file_id`, `file_ids[]`,
        `tool_resources[code_interpreter][file_ids][]`, `tool_resources.file_search.vector_store_ids`,
        a voice's `consent`, a video's `video[id]`); and the ids (`referenced_ids`) in every other
        value that starts as JSON (`{` or `[`: `tool_resources={...}`). MalformedUpload when such a
        value holds more JSON objects and arrays than a body may, or is not JSON Sentinel reads as
        any reader would (`_json_field`)."""
        found: list[str] = []
        for name, value, is_file in self.parts:
            if is_file and _INDEX.sub("", name) in files:
                continue  # a file's bytes are its own (a video to edit, on `video`: a key where an id is given)
            components = _COMPONENT.split(name)
            if any(c in keys for c in components):
                found.extend(_ids(value.decode("utf-8", "replace").strip()))
            elif _starts_as_json(value):
                try:
                    found.extend(referenced_ids(_json_field(value, text=name in TEXT_FIELDS and not is_file), limit,
                                                keys=keys))
                except MalformedReference as exc:
                    raise exc.within(name) from None
            if len(found) > limit:
                raise TooManyReferences(f"A request may name at most {limit} objects")
        return found

    def models(self, files: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
        """(parameter, name) of every model the upload's fields name, as `references` reads ids: the
        value of every part whose name has a `model` component (`model`, `model[]`, `tools[0][model]`,
        `session.model`: readers that build objects from such names read a model there), and every
        `model` in a value that starts as JSON (`fine_tuned_models`; the parameter `<field>.<path>`).
        A file given on one of `files` is its own bytes."""
        found: list[tuple[str, str]] = []
        for name, value, is_file in self.parts:
            if is_file and _INDEX.sub("", name) in files:
                continue
            if "model" in _COMPONENT.split(name):
                found.append((name, value.decode("utf-8", "replace")))
            elif _starts_as_json(value):
                inner = _json_field(value, text=name in TEXT_FIELDS and not is_file)
                found += [(f"{name}.{param}", model) for param, model in fine_tuned_models(inner)]
        return found

    def batch_input(self) -> bytes | None:
        """The file's content when the upload is a batch's input (`purpose` is `batch`), else None
        (`batch_file`)."""
        index = self.batch_file()
        return None if index is None else self.parts[index][1]

    def batch_file(self) -> int | None:
        """The part holding the file (its index in `parts`) when the upload is a batch's input
        (`purpose` is `batch`), else None. MalformedUpload when its `purpose` or `file` is not given
        exactly once — `file[]` or `file[0]` counted as a `file` (a reader that takes `image[]` as one
        of the files on `image`, as the provider does, takes them so: the one it stores need not be
        the one whose lines were read)."""
        return self._file_for(b"batch", "A batch input upload")

    def eval_file(self) -> int | None:
        """The part holding the file when the upload is an eval's data file (`purpose` is `evals`: each
        line an item, which a run may make a model's input), else None; MalformedUpload as `batch_file`."""
        return self._file_for(b"evals", "An eval data upload")

    def _file_for(self, purpose: bytes, upload: str) -> int | None:
        """The part holding the file of an upload with `purpose` (`upload`: what it is, for the error),
        None for another purpose (see `batch_file`)."""
        purposes = self.values("purpose")
        if len(purposes) > 1:
            raise MalformedUpload("An upload names its purpose once")
        if not purposes or purposes[0].strip() != purpose:
            return None
        files = self.named("file".__eq__)
        if len(files) != 1:
            raise MalformedUpload(f"{upload} holds exactly one file (`file[]` is a file too)")
        return files[0]

    def stored_file(self) -> int | None:
        """The part holding the file a `POST /v1/files` stores (its index in `parts`): the one part
        named `file` (`file[]` too), None when there is none or more than one (which the provider
        would store is not certain)."""
        files = self.named("file".__eq__)
        return files[0] if len(files) == 1 else None

    @property
    def streams(self) -> bool:
        """Whether the upload asks for its answer as a stream (`stream=true`: a transcription): any
        `stream` value but a false one. Readers take more than `true` and `1` as true (`on`, `yes`,
        `t` and `y` in pydantic, `T` and `True` in Go): only what none reads as true is left alone.
        `stream[]` and `stream[0]` too: a reader taking `image[]` as one of the images reads them as `stream`."""
        return asks_stream(self.parts[index][1] for index in self.named("stream".__eq__))


_FALSE = frozenset({b"", b"false", b"0", b"no", b"off", b"f", b"n"})


def asks_stream(values: Iterable[bytes]) -> bool:
    """Whether the `stream` values of an upload's fields or of a query ask for a stream: any but a
    false one (see `Upload.streams`)."""
    return any(value.strip().lower() not in _FALSE for value in values)


_COMPONENT = re.compile(r"[\[\].]+")
_INDEX = re.compile(r"\[\d*\]$")  # `image[]`, `image[0]`: one of the files given on `image`


# Fields whose value is free text (an image edit's or a transcription's `prompt`, named exactly so):
# `[Speaker 1]: hi` there that no JSON reader reads is text, not a 400; JSON that reads is still
# scanned.
TEXT_FIELDS = frozenset({"prompt"})


def _starts_as_json(value: bytes) -> bool:
    """Whether a form value starts as JSON (`{` or `[`) after whitespace and a UTF-8 byte order mark,
    which lenient readers skip — or is UTF-16 or UTF-32, with or without a byte order mark (a NUL
    or a BOM in its first four bytes), which Python's `json` reads and orjson does not: such a value
    holding a `:` is refused."""
    head = value.lstrip()
    return (head[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in head[:4]
            or head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] in (b"{", b"["))


def _json_field(value: bytes, *, text: bool = False) -> Any:
    """A form field's value that starts as JSON, read as JSON. The upload goes upstream as it came, so
    a value a reader could read otherwise than orjson is MalformedUpload: one orjson refuses (`NaN`,
    a lone surrogate, which lenient readers take) and one that gives a key twice (readers keep the
    first or the last); a value not valid UTF-8 is refused too (lenient readers decode it as Latin-1).
    A value orjson refuses that holds no `:` is text (`[Speaker 1] ...`), None: it names nothing in
    any reader's JSON (an id is named by a key); so is one of a free-text field (`text`: TEXT_FIELDS)."""
    if json_containers_exceed(value):
        raise MalformedUpload("A form field's JSON value holds too many objects and arrays")
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        if text or b":" not in value:
            return None
        raise MalformedUpload(
            "A form field's value that starts as JSON ({ or [) must be JSON Sentinel can read "
            "(valid UTF-8, no NaN, no lone surrogate)"
        ) from None
    if (why := repeated_key(value, parsed)) is not None:
        raise MalformedUpload(f"A form field's JSON value must be JSON Sentinel can read: {why}")
    return parsed


def repeated_key(data: bytes, parsed: Any) -> str | None:
    """Why `data`, which orjson read as `parsed`, is not read alike by every reader — a key given
    twice, of which orjson keeps the last value and other readers the first (see `_batch_line`) —,
    or None."""
    if not _may_repeat_a_key(data, parsed):
        return None
    try:
        _strict_json(data)
    except (ValueError, RecursionError) as exc:
        return str(exc)
    return None


# Calls that take an upload (`multipart/form-data`): a POST to one of these paths (`*`: any one
# segment, an object's id) — those the OpenAI API takes a file on (the official SDK sends them as
# multipart) —, each with the fields it takes files on (a file of several given as `image[]`, too).
# Every other call takes JSON only: an upload's fields would escape the checks that read a JSON body
# (a batch's input file, an eval's data sources and models).
_FILE = frozenset({"file"})
UPLOAD_PATHS: dict[tuple[str, ...], frozenset[str]] = {
    ("files",): _FILE, ("uploads", "*", "parts"): frozenset({"data"}), ("audio", "transcriptions"): _FILE,
    ("audio", "translations"): _FILE, ("images", "edits"): frozenset({"image", "mask", "markup"}),
    ("images", "variations"): frozenset({"image"}), ("containers", "*", "files"): _FILE,
    ("videos",): frozenset({"input_reference"}), ("videos", "edits"): frozenset({"video"}),
    ("videos", "extensions"): frozenset({"video"}), ("videos", "characters"): frozenset({"video"}),
    ("skills",): frozenset({"files"}), ("skills", "*", "versions"): frozenset({"files"}),
    ("audio", "voices"): frozenset({"audio_sample"}), ("audio", "voice_consents"): frozenset({"recording"}),
    ("realtime", "calls"): frozenset(), ("content_provenance_checks",): _FILE,
}


def upload_files(method: str, segments: Sequence[str]) -> frozenset[str] | None:
    """The fields a call with `method` on `segments` (a `/v1` path's, e.g. ["uploads", "upload_1",
    "parts"]) takes files on when it takes a `multipart/form-data` body, None when it takes none:
    see UPLOAD_PATHS."""
    if method != "POST":
        return None
    for path, files in UPLOAD_PATHS.items():
        if len(path) == len(segments) and all(p in ("*", s) for p, s in zip(path, segments, strict=True)):
            return files
    return None


def multipart_references(
    body: bytes, content_type: str, limit: int = MAX_REFERENCES, *, files: frozenset[str] = frozenset()
) -> list[str]:
    """`Upload.references` of a `multipart/form-data` body."""
    return Upload.read(body, content_type).references(limit, files=files)


# A batch's input is read in Python, line by line (in a worker thread from 16 KiB: `sentinel.offload`):
# capped so that reading any file costs no more than reading a real one of the largest body. The provider runs at most 50,000
# requests a file; no real request holds 10,000 JSON objects and arrays.
MAX_BATCH_LINES = 50_000
MAX_LINE_CONTAINERS = 10_000  # JSON objects and arrays in one line
# ... in the whole file: a real file of 50,000 chat lines holds 200,000-300,000 (a line with tools,
# more, in fewer lines: ~1 per 25 bytes of real JSON, ~420,000 in a 10 MiB body); ~0.75 s at the cap.
MAX_BATCH_CONTAINERS = 500_000
# The most tokens a batch's lines are summed to (input and output apart): past any plan's largest
# limit, so a larger sum is refused alike, and well inside the store's integers.
MAX_BATCH_TOKENS = MAX_LIMIT + 1


def batch_references(content: bytes, *, offered: Callable[[str], bool], limit: int = MAX_REFERENCES) -> list[str]:
    """The distinct object ids a batch's JSONL input names (`read_batch_input`)."""
    return read_batch_input(content, offered=offered, limit=limit).ids


@dataclass(frozen=True)
class BatchInput:
    """A batch's input as Sentinel read it: the distinct object ids its lines name, its content as it
    goes upstream, and — when measured — its lines (`requests`) and the tokens they reserve in all."""

    ids: list[str]
    content: bytes
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    # The stored objects whose context its lines have the provider read along (a Responses line's
    # `previous_response_id`, `conversation`: `continued`), each with how many lines read it.
    continues: dict[str, int] = dataclasses.field(default_factory=dict)


def read_batch_input(
    content: bytes, *, offered: Callable[[str], bool], limit: int = MAX_REFERENCES,
    rewrite: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    measure: Callable[[Any, dict[str, Any]], tuple[int, int]] | None = None,
) -> BatchInput:
    """A batch's JSONL input, every line read as the provider will run it (its `body` is a request of
    its own). InvalidBatchInput when a line is not a JSON object Sentinel reads as any reader would (a
    key given twice, which readers resolve differently, is refused), names in its `body.model`, or in
    a tool's `model` (`tool_models`), a model that is not `offered` (the provider runs the name the
    line gives), or asks for account-wide data (`reads_account_data`), or the file is larger than the
    caps above; TooManyReferences past `limit` distinct ids in all.

    With `rewrite`, the content that goes upstream is each line's request as `rewrite` makes it
    (`sentinel.native.end_user.with_batch_end_user`: the end user the provider is told), written
    back from what was read — never the client's bytes, so the provider reads what was checked —,
    one a line (blank lines left out), ending in a line break if the input did; InvalidBatchInput
    for a line that cannot be written back as JSON (`_written`). Without, the content as it came.
    `measure(url, body)`: the (input, output) tokens a line reserves, summed over the lines (each sum
    at most MAX_BATCH_TOKENS); measured, the objects whose context a line continues are counted
    too (`BatchInput.continues`: a line whose `url` is Responses', or one Sentinel does not know,
    which reserves as any endpoint would)."""
    found: dict[str, None] = {}
    written: list[bytes] = []
    requests = input_tokens = output_tokens = 0
    continues: dict[str, int] = {}
    for number, request in _jsonl_objects(content, "batch input"):
        body = request.get("body")
        given = body.get("model") if isinstance(body, dict) else None
        for param, model in [("body.model", given), *tool_models(body, "body.")]:
            if not isinstance(model, str) or not offered(model):
                shown = "no model" if not isinstance(model, str) else (
                    f"the model '{model[:200]}'" if is_text(model) else "a model name that is not text")
                raise InvalidBatchInput(
                    f"Line {number} of the batch input names {shown} in `{param}`: a batch runs only a model of "
                    "this gateway's catalogue (GET /v1/models) that its OpenAI provider serves under that name "
                    "(not an alias)"
                )
        if reads_account_data(request):
            raise InvalidBatchInput(f"Line {number} of the batch input asks for data across the account")
        url = request.get("url")
        responses = BATCH_URLS.get(url if isinstance(url, str) else "", "responses") == "responses"
        if responses and isinstance(body, dict):  # as the metered /v1/responses checks them (a url not known: as it)
            try:
                check_named_ids(body, "body.")
                check_foreground(body, "body.")
            except NativeValidationError as exc:
                raise InvalidBatchInput(f"Line {number} of the batch input: {exc.message}") from None
        if isinstance(body, dict):
            endpoint = BATCH_URLS.get(url) if isinstance(url, str) else None
            try:
                if url in ("/v1/chat/completions", "/v1/completions"):
                    # as the metered endpoints hold a `stop` (the provider runs it; no estimate counts it)
                    check_stop(body.get("stop"), "body.stop")
                if url == "/v1/embeddings":  # as the metered endpoint holds its inputs (each counted here)
                    check_embeddings(body, "body.")
                # and the fields its reservation reads (a line whose `url` Sentinel does not know: as any)
                for name in (endpoint,) if endpoint is not None else ("chat", "completions", "responses"):
                    check_caps(name, body, "body.")
            except NativeValidationError as exc:
                raise InvalidBatchInput(f"Line {number} of the batch input: {exc.message}") from None
        found.update(dict.fromkeys(_line_ids(request, number, "batch input")))
        if len(found) > limit:
            raise TooManyReferences(f"A batch input may name at most {limit} objects")
        if rewrite is not None:
            written.append(_written(rewrite(request), number))
        requests += 1
        if measure is not None and isinstance(body, dict):
            line_input, line_output = measure(request.get("url"), body)
            input_tokens = min(MAX_BATCH_TOKENS, input_tokens + line_input)
            output_tokens = min(MAX_BATCH_TOKENS, output_tokens + line_output)
            if responses:
                for object_id in continued(body)[0]:
                    continues[object_id] = continues.get(object_id, 0) + 1
    sent = content if rewrite is None else (
        b"\n".join(written) + (b"\n" if written and content.endswith((b"\n", b"\r")) else b""))
    return BatchInput(list(found), sent, requests, input_tokens, output_tokens, continues)


def _jsonl_objects(content: bytes, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each line of a JSONL file (`what` it is, for the errors: "batch input") that is not blank, with
    its number, read as `_batch_line` reads it: InvalidBatchInput when a line is not a JSON object so
    read, or the file is larger than the caps above (lines, JSON objects and arrays in all and in one
    line)."""
    breaks = content.count(b"\n") + content.count(b"\r") - content.count(b"\r\n")  # as `splitlines` reads them
    if breaks + (not content.endswith((b"\n", b"\r"))) > MAX_BATCH_LINES:
        raise InvalidBatchInput(f"A {what} may hold at most {MAX_BATCH_LINES:,} lines")
    if _containers(content, MAX_BATCH_CONTAINERS) > MAX_BATCH_CONTAINERS:
        raise InvalidBatchInput(f"A {what} may hold at most {MAX_BATCH_CONTAINERS:,} JSON objects and arrays")
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        if _containers(line, MAX_LINE_CONTAINERS) > MAX_LINE_CONTAINERS:
            raise InvalidBatchInput(
                f"Line {number} of the {what} holds more than {MAX_LINE_CONTAINERS:,} JSON objects and arrays"
            )
        try:
            read = _batch_line(line)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError; so is a repeated key
            raise InvalidBatchInput(f"Line {number} of the {what} is not JSON Sentinel can read: {exc}") from None
        if not isinstance(read, dict):
            raise InvalidBatchInput(f"Line {number} of the {what} is not a JSON object")
        yield number, read


def eval_data_references(content: bytes, *, limit: int = MAX_REFERENCES) -> list[str]:
    """The distinct object ids an eval's JSONL data file names (`Upload.eval_file`): each line an item,
    read for ids as the items of a run's inline `file_content` source are (`referenced_ids`: a run
    whose `input_messages` are an `item_reference` makes an item the model's input, an `input_file`'s
    `file_id` in it read by the provider). InvalidBatchInput as a batch input's lines (`_jsonl_objects`);
    TooManyReferences past `limit` distinct ids in all."""
    found: dict[str, None] = {}
    for number, item in _jsonl_objects(content, "data file of an eval"):
        found.update(dict.fromkeys(_line_ids(item, number, "data file of an eval", limit)))
        if len(found) > limit:
            raise TooManyReferences(f"An eval's data file may name at most {limit} objects")
    return list(found)


def _line_ids(line: dict[str, Any], number: int, what: str, limit: int = MAX_REFERENCES) -> list[str]:
    """The ids line `number` of a JSONL file (`what` it is) names (`referenced_ids`); InvalidBatchInput
    for one that is not text (a lone surrogate, which the strict reader takes): no object has it, and
    neither a store key nor the 404 naming it could hold it, nor for one given as anything but a string
    or null (MalformedReference: its parameter named from the line's root, `body.…`)."""
    try:
        ids = referenced_ids(line, limit)
    except MalformedReference as exc:
        raise InvalidBatchInput(f"Line {number} of the {what}: {exc}") from None
    if not all(is_text(object_id) for object_id in ids):
        raise InvalidBatchInput(f"Line {number} of the {what} names an object id that is not text "
                                "(a lone surrogate): no object has it")
    return ids


# Where an eval run names its data file: a `source` of this type (`{"type": "file_id", "id": ...}`).
EVAL_DATA_SOURCE = "file_id"


def eval_data_files(segments: Sequence[str], body: Any) -> list[str]:
    """The files a call's JSON body on `segments` (its `/v1` path's) gives an eval run as its data
    (any `{"type": "file_id", "id": ...}` in a body on an `evals` path): each must be one whose items
    Sentinel read at upload (`eval_data_references`)."""
    if not segments or segments[0] != "evals":
        return []
    return list(dict.fromkeys(node["id"] for node in _objects(body) if _named(node.get("type")) == EVAL_DATA_SOURCE
                              and isinstance(node.get("id"), str) and node["id"]))


def _written(request: dict[str, Any], number: int) -> bytes:
    """A batch line's request written as JSON: by orjson, or — for what orjson does not write (a lone
    surrogate, an integer past 64 bits, past 254 levels deep: what only `_strict_json` reads) — by
    the `json` module, in UTF-8 but for a lone surrogate, written as its JSON escape (`\\udc80`: it
    can only be inside a string; all non-ASCII escaped made such a line up to 3 times its size);
    InvalidBatchInput when neither can."""
    try:
        return orjson.dumps(request)
    except orjson.JSONEncodeError:
        pass
    try:
        text = json.dumps(request, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8", "backslashreplace")
    except (ValueError, RecursionError) as exc:
        raise InvalidBatchInput(f"Line {number} of the batch input cannot be written back as JSON: {exc}") from None


def _containers(data: bytes, cap: int) -> int:
    """The JSON objects and arrays `data` opens: its `{` and `[` bytes while they are no more than
    `cap`, else only those outside strings (exact in JSON; in bytes a parser refuses, exact up to
    where it stops reading them)."""
    opening = data.count(b"{") + data.count(b"[")
    if opening <= cap:
        return opening
    # Without its escapes (a backslash escapes the next byte: `\\` pairs go first), every `"` opens or
    # closes a string: every other piece is outside them.
    plain = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(plain.split(b'"')[::2])
    return outside.count(b"{") + outside.count(b"[")


def _batch_line(line: bytes) -> Any:
    """A line as `_strict_json` reads it — what it accepts, nothing else (numbers aside, which no check
    reads: orjson reads an integer of more than 64 bits as a float) —, read by orjson where orjson
    reads the same. The strict read still runs on a line orjson refuses (the stdlib takes a lone
    surrogate, a BOM, `1e400`), one too deep for orjson to write back (past 254 levels), and one that
    may give a key twice: orjson keeps one of a repeated key's values, and its compact writing of
    what it read then holds fewer `:` than the line. (Each `:` of a line is a key's or in a string,
    and orjson writes each `:` it read as one `:` — an escaped one, `\\u003a`, too, so these are
    counted as the line's; an escaped backslash followed by `u003a`, counted as well, can only send
    a line the strict way.)"""
    try:
        parsed = orjson.loads(line)
    except orjson.JSONDecodeError:
        return _strict_json(line)
    return _strict_json(line) if _may_repeat_a_key(line, parsed) else parsed


def _may_repeat_a_key(data: bytes, parsed: Any) -> bool:
    """Whether `data`, which orjson read as `parsed`, may give a key twice (see `_batch_line`): it holds
    more `:` than orjson's compact writing of `parsed`, or is too deep for orjson to write."""
    try:
        compact = orjson.dumps(parsed)
    except orjson.JSONEncodeError:
        return True
    return data.count(b":") + data.count(b"\\u003a") + data.count(b"\\u003A") > compact.count(b":")


def _strict_json(line: bytes) -> Any:
    """`json.loads(line, object_pairs_hook=_unique_keys, parse_constant=_no_constant)`, with one decoder
    made once (`json.loads` makes one a call: most of the time it takes on a short line)."""
    return _STRICT.decode(line.decode(json.detect_encoding(line), "surrogatepass"))


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("a key is given twice")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    """A JSON number with a fraction or an exponent, refused past a double's range (`1e400`): orjson
    refuses it, and would write the infinity `json` reads as `null` (a batch line is written back)."""
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:40]} is out of range")
    return number


_STRICT = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constant, parse_float=_finite)


class InvalidBatchInput(ValueError):
    """A batch input file Sentinel cannot check line by line."""


_RFC2231_BOUNDARY = re.compile(r";\s*boundary\*", re.IGNORECASE)
# A boundary every reader reads alike: named once (a `;` then `boundary` then `=` or `*`, wherever it
# stands — aiohttp splits the Content-Type at every `;`, quotes or not), RFC 2046's characters,
# unquoted (no space) or in quotes without an escape, then `;` or the end. Readers differ on
# anything else — an escape (`"b\"c"`: aiohttp reads `b\"c`), quotes in a token (`""b`), a `;` quoted
# (`"b;c"`: aiohttp reads `b`), a boundary inside another parameter's quotes (`x="; boundary=c"`:
# aiohttp reads `c`), a character after the value (`b\x85`, Unicode whitespace) — and a reader that
# reads a boundary other than Sentinel's reads other parts: it skips what comes before its first
# delimiter, so an upload could hide a part (another user's `file_id`, a batch line) in a field
# Sentinel never reads.
_BOUNDARY_NAMED = re.compile(r";[ \t]*boundary[ \t]*[=*]", re.IGNORECASE)
_BCHARS = r"0-9A-Za-z'()+_,\-./:=?"
_PLAIN_BOUNDARY = re.compile(
    rf';[ \t]*boundary=(?:"([{_BCHARS} ]*[{_BCHARS}])"|([{_BCHARS}]+))(?=;|\Z)', re.IGNORECASE
)


# A part's Content-Disposition every reader reads alike: `form-data`, then parameters each a token and a
# token or a quoted string with no escape but `\\` (a filename's backslash, as httpx, requests and Go
# write it), and a name with no backslash. Readers differ on the rest: aiohttp and werkzeug read
# `name="fi\le_id"` as `file_id` (Python's email package: `fi\le_id`), werkzeug `name="file_id"x` and
# `name=file_id x` too, and an escaped quote ends a value in one and not in another — a part no
# check read as an id field would name another user's object upstream.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PLAIN_DISPOSITION = re.compile(
    rf'form-data(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|"(?:[^"\\]|\\\\)*"))*[ \t]*;?', re.IGNORECASE
)


def _plain_boundary(content_type: str) -> str | None:
    """The boundary `content_type` names plainly (see _PLAIN_BOUNDARY), or None."""
    if len(_BOUNDARY_NAMED.findall(content_type)) != 1:
        return None
    given = _PLAIN_BOUNDARY.search(content_type)
    return None if given is None else given.group(1) or given.group(2)


def _parts(body: bytes, content_type: str) -> tuple[list[tuple[str, bytes, bool]], list[tuple[int, int]], bytes]:
    """(name, value, whether it is a file) of every part of a `multipart/form-data` body, where each
    value lies in the body (start, end), and its delimiter (`--` and the boundary), read strictly, since the
    provider's reader may be lenient where this one is not: MalformedUpload unless the Content-Type
    names its boundary once and plainly (`_plain_boundary`), the body starts with it and ends with the
    closing one, a delimiter follows nothing but a CRLF, each delimiter line and header line ends in
    CRLF (none folded), and each part has one Content-Disposition naming it once, given plainly, and
    is its bytes as they are (`_check_coding`: not encoded, a field's text UTF-8); an RFC 2231
    boundary (`boundary*`), and a charset but utf-8 or us-ascii in the Content-Type, are refused."""
    if content_type.count(";") > MAX_PARAMETERS:
        raise MalformedUpload(f"A multipart Content-Type may have at most {MAX_PARAMETERS} parameters")
    if _RFC2231_BOUNDARY.search(content_type):
        # `boundary*=utf-8''%E2%82%AC`, `boundary*0=...`: readers differ on RFC 2231 (as on a part's
        # `name*=`), and a decoded one need not be bytes a delimiter line can hold (it made a 500).
        raise MalformedUpload("A multipart boundary must be given as `boundary=`, not RFC 2231-encoded (`boundary*`)")
    header = Message()
    header["content-type"] = content_type
    params = [key.lower() for key, _ in header.get_params() or []]
    boundary = header.get_boundary()
    if not boundary or len(params) != len(set(params)) or boundary != _plain_boundary(content_type):
        raise MalformedUpload(
            "A multipart body needs exactly one boundary in its Content-Type, given plainly: `boundary=` and RFC "
            "2046's characters (letters, digits, '()+_,-./:=?, a space inside quotes), no escape"
        )
    if not _plain_charset(content_type, _PLAIN_CHARSETS):
        raise MalformedUpload("A multipart body's Content-Type may name no charset but utf-8 or us-ascii")
    delimiter = b"--" + boundary.encode("ascii")
    framed = b"\r\n" + body
    if framed.count(b"\n" + delimiter) != framed.count(b"\r\n" + delimiter) or b"\r" + delimiter in framed:
        # A delimiter line follows a CRLF here and in aiohttp, any line break in werkzeug: a part
        # hidden after a bare LF or CR would be a field there (another user's `file_id`) and data here.
        raise MalformedUpload("A multipart body may hold its delimiter only after a CRLF (not a bare LF or CR)")
    if framed.count(b"\r\n" + delimiter) > MAX_PARTS + 1:  # the parts and the closing delimiter
        raise MalformedUpload(f"A multipart body may hold at most {MAX_PARTS} parts")
    parts = framed.split(b"\r\n" + delimiter)
    if parts[0] or len(parts) < 2 or not parts[-1].startswith(b"--"):
        raise MalformedUpload("A multipart body must start with its boundary and end with the closing one")
    found: list[tuple[str, bytes, bool]] = []
    spans: list[tuple[int, int]] = []
    headers = 0
    end = -2  # where the part read last ends in `body` (`framed` starts with two bytes more)
    for part in parts[1:-1]:
        end += len(b"\r\n" + delimiter) + len(part)
        padding, crlf, rest = part.partition(b"\r\n")
        head, blank, value = rest.partition(b"\r\n\r\n")
        if not crlf or padding.strip(b" \t") or not blank:
            raise MalformedUpload("A multipart part must follow its boundary line and end its headers with a blank line")
        headers += len(head)
        if (headers > MAX_PART_HEADERS or head.count(b";") > MAX_PARAMETERS
                or head.count(b"\r\n") >= MAX_PART_HEADER_LINES):
            raise MalformedUpload(
                f"A multipart body's parts may have at most {MAX_PART_HEADERS // 1024} KiB of header lines "
                f"in all, each part at most {MAX_PART_HEADER_LINES} header lines and {MAX_PARAMETERS} parameters"
            )
        fields = Message()
        for line in head.split(b"\r\n"):
            key, colon, text = line.decode("latin-1").partition(":")
            if not colon or b"\r" in line or b"\n" in line or line[:1] in (b" ", b"\t"):
                # (a line that begins with a space or a tab continues the one before, in readers that fold)
                raise MalformedUpload("A multipart part header must be one 'Name: value' line")
            fields[key.strip()] = text.strip()
        dispositions = fields.get_all("content-disposition") or []
        given = [key.lower() for key, _ in fields.get_params(header="content-disposition") or []]
        name = fields.get_param("name", header="content-disposition") if len(dispositions) == 1 else None
        if not isinstance(name, str) or not name or len(given) != len(set(given)):
            # a tuple: RFC 2231 (`name*=`), which readers differ on; a parameter twice: first or last wins
            raise MalformedUpload("Every multipart part needs one Content-Disposition naming it once")
        if not _PLAIN_DISPOSITION.fullmatch(dispositions[0]) or "\\" in name:
            raise MalformedUpload(
                "A multipart part's Content-Disposition must be given plainly: form-data, then parameters whose "
                "values are tokens or quoted with no escape but a filename's `\\\\` (its name has no backslash)"
            )
        is_file = _names_a_file(fields.get_param("filename", header="content-disposition"), dispositions[0])
        sized = fields.get_all("content-length") or []
        if sized and (len(sized) > 1 or sized[0] != str(len(value))):
            # A reader that trusts a part's own length (aiohttp's) reads other bytes than the ones
            # between its delimiters, which Sentinel read: another field, another user's id. (A part
            # Sentinel writes a value of another length into then fails the reading back: 400.)
            raise MalformedUpload("A multipart part's Content-Length, when given, must be its value's length")
        _check_coding(fields, name, is_file, value)
        found.append((name, value, is_file))
        spans.append((end - len(value), end))  # the value ends its part
    return found, spans, delimiter


def _names_a_file(filename: str | tuple[str | None, str | None, str] | None, disposition: str) -> bool:
    """Whether a part whose Content-Disposition is `disposition` — its `filename` as
    `Message.get_param` reads it — is a file to every reader: it names one plainly (`filename=`, not
    RFC 2231's `filename*=`, which readers differ on: one that does not read it reads no filename)
    and not an empty one (aiohttp's `request.post()` and Go's `ReadForm` read `filename=""` as a
    field, Starlette and werkzeug as a file). Any other part is read as a field: read as a file on a
    field the call takes files on, its value went unchecked — an edit's `image` of `{"file_id": …}`
    named another user's file where the provider reads it as a field."""
    return isinstance(filename, str) and bool(filename) and not _RFC2231_FILENAME.search(disposition)


_RFC2231_FILENAME = re.compile(r";[ \t]*filename\*", re.IGNORECASE)


# A part's value is its bytes as they came: readers decode a part's transfer encoding (base64,
# quoted-printable: aiohttp's `request.post()`; Go's reader decodes quoted-printable), and read a
# field's text in the charset its Content-Type names (aiohttp: UTF-16, UTF-7, ...) or the form's
# `_charset_` field names, so the value they give the provider is not the one Sentinel checked (a
# batch line that names another model and another user's file once `=22` is `"`, a `stream` that is
# `true` once decoded). httpx (the OpenAI SDK's) writes a field's Content-Disposition alone, and a
# file's Content-Type without a charset; so do curl, browsers and Go's writer. Apache HttpClient
# labels every text field `text/plain; charset=ISO-8859-1` (and `Content-Transfer-Encoding: 8bit`):
# a field of ASCII bytes reads the same in a charset that extends ASCII, so that is taken too. A
# file's charset is left alone: a file's bytes are given to the provider as they are.
_IDENTITY_TRANSFER = frozenset({"7bit", "8bit", "binary"})
_PLAIN_CHARSETS = frozenset({"utf-8", "us-ascii"})
_ASCII_SUPERSETS = _PLAIN_CHARSETS | {"iso-8859-1", "iso_8859-1", "latin1", "latin-1", "windows-1252", "cp1252"}
_CODING_HEADERS = ("content-type", "content-transfer-encoding", "content-encoding")


def _check_coding(fields: Message, name: str, is_file: bool, value: bytes) -> None:
    """MalformedUpload unless the part `name` (its header `fields`, its bytes `value`) is its bytes as
    they are: no Content-Transfer-Encoding but 7bit, 8bit or binary, no Content-Encoding, one
    Content-Type at most, and — unless it is a file — no charset but utf-8 or us-ascii (or one that
    extends ASCII, for a value of ASCII bytes); nor may a part be the form's `_charset_` (RFC 7578
    4.6: the charset of the fields that name none)."""
    shown = name[:100]
    if name.lower() == "_charset_":
        raise MalformedUpload("A multipart part named '_charset_' (a charset for the other fields) is not taken",
                              param=shown)
    for header in _CODING_HEADERS:
        if len(fields.get_all(header) or []) > 1:
            raise MalformedUpload(f"The multipart part '{shown}' gives its {header} twice", param=shown)
    transfer = fields.get("content-transfer-encoding")
    if transfer is not None and transfer.strip().lower() not in _IDENTITY_TRANSFER:
        raise MalformedUpload(
            f"The multipart part '{shown}' is encoded (Content-Transfer-Encoding: {transfer[:40]}): its bytes are "
            "read as they are, so only 7bit, 8bit or binary is taken", param=shown,
        )
    if fields.get("content-encoding") is not None:
        raise MalformedUpload(f"The multipart part '{shown}' must not be compressed (Content-Encoding)", param=shown)
    if not is_file and not _plain_charset(
            fields.get("content-type"), _ASCII_SUPERSETS if value.isascii() else _PLAIN_CHARSETS):
        raise MalformedUpload(
            f"The multipart part '{shown}' names a charset other than utf-8 or us-ascii: a field's text is read "
            "as UTF-8", param=shown,
        )


def _plain_charset(content_type: str | None, plain: frozenset[str]) -> bool:
    """Whether `content_type` names no charset, or one of `plain` plainly — read as the simplest
    reader reads parameters (split at every `;`: aiohttp finds `charset=utf-7` in a quoted value),
    a parameter whose name holds `charset` in any way (`charset*=`, RFC 2231) counted as one."""
    for piece in (content_type or "").split(";")[1:]:
        key, _, value = piece.partition("=")
        if "charset" in key.lower() and (
            key.strip().lower() != "charset" or value.strip(" \t\"'").lower() not in plain
        ):
            return False
    return True


def continued(payload: dict[str, Any]) -> tuple[list[str], list[str]]:
    """What a Responses request continues: (the stored objects whose context the provider reads
    along — `previous_response_id`, `conversation` —, the conversation its answer extends)."""
    conversation = _ids(payload.get("conversation"))[:1]
    return _ids(payload.get("previous_response_id"))[:1] + conversation, conversation


def _ids(value: Any) -> list[str]:
    """The ids a reference field's value names (`_named_values` that are strings, but empty)."""
    return [named for _, named in _named_values(value) if isinstance(named, str) and named]


def _named_values(value: Any) -> list[tuple[str, Any]]:
    """What a reference field's value gives where an id goes, each with where in it (`.0.id`): itself
    (but an object or a list), an object's `id` (when it has one), and those of a list — nested lists
    and objects in it too (`[["file-1"]]`, `[{"id": "vs_1"}]`: no provider takes them, but a lenient
    reader would read the id, and none may go unchecked) —, walked without recursion (a batch line may
    nest deeper than Python recurses). Whatever their type: `referenced_ids` refuses one that is not
    a string or null."""
    if isinstance(value, dict):
        return [(".id", value["id"])] if "id" in value else []
    if not isinstance(value, list):
        return [("", value)]
    found: list[tuple[str, Any]] = []
    stack: list[tuple[str, list[Any]]] = [("", value)]
    while stack:
        at, items = stack.pop()
        for i, item in enumerate(items):
            if isinstance(item, list):
                stack.append((f"{at}.{i}", item))
            elif isinstance(item, dict):
                found += [(f"{at}.{i}.id", item["id"])] if "id" in item else []
            else:
                found.append((f"{at}.{i}", item))
    return found


# Where a Messages API body names an earlier message the provider holds: a server-held conversation
# (`thread`: `{"type": "continue", "previous_message_id": ...}` resumes one, and `{"type": "create"}`
# makes one no request through Sentinel could continue), and the message whose prompt a
# `diagnostics.previous_message_id` compares with the request's (what of its prefix the cache reused).
HELD_MESSAGES = ("thread", "diagnostics.previous_message_id")


def anthropic_object_reference(payload: dict[str, Any]) -> str | None:
    """Where a Messages API body names an object of the provider account, as a parameter path (e.g.
    `messages.0.content.1.source`), or None. Named are: a top-level `container` (an id, or skills),
    a message the provider holds (HELD_MESSAGES: any `thread`, a `diagnostics.previous_message_id`
    but null), and any content block of `system` or a message — nested ones too (tool results, a
    document's content) — that carries a `file_id` or is a `file` source. Tool inputs are the
    client's own data and are not read."""
    if payload.get("container") is not None:
        return "container"
    if payload.get("thread") is not None:
        return "thread"
    diagnostics = payload.get("diagnostics")
    if isinstance(diagnostics, dict) and diagnostics.get("previous_message_id") is not None:
        return "diagnostics.previous_message_id"
    messages = payload.get("messages")
    stack: list[tuple[str, Any]] = [("system", payload.get("system"))]
    if isinstance(messages, list):
        stack += [(f"messages.{i}.content", message.get("content"))
                  for i, message in enumerate(messages) if isinstance(message, dict)]
    while stack:
        at, node = stack.pop()
        if isinstance(node, list):
            stack += [(f"{at}.{j}", item) for j, item in enumerate(node)]
        elif isinstance(node, dict):
            if "file_id" in node or node.get("type") == "file":
                return at
            stack += [(f"{at}.{key}", node[key]) for key in ("source", "content") if key in node]
    return None


def created_ids(answer: Any, *, creating: bool, ttl: float | None) -> list[tuple[str, float | None]]:
    """Ids an answer makes the caller the owner of, each with how long: the object itself when the
    call created it (`ttl`, its collection's), and files created along with it (a batch's output and
    error files, a fine-tuning job's result files, an upload's file), for as long as files are kept —
    not the answer's collection's (an upload's two days would take the file from its owner while the
    provider still keeps it)."""
    if not isinstance(answer, dict):
        return []
    out: list[tuple[str, float | None]] = []
    if creating and isinstance(answer.get("id"), str):
        out.append((answer["id"], ttl))
    for key in CREATED_KEYS:
        value = answer.get(key)
        out += [(file_id, COLLECTIONS["files"]) for file_id in _ids(value) if not isinstance(value, dict)]
    file = answer.get("file")
    if isinstance(file, dict) and isinstance(file.get("id"), str):
        out.append((file["id"], COLLECTIONS["files"]))
    return out


def is_fine_tuned(model: str) -> bool:
    """Whether `model` names a fine-tuned model of the provider account: `ft:…` (a job's
    `fine_tuned_model`, a checkpoint's), or a legacy fine-tune's `<base>:ft-<org>-…` — in any case,
    whitespace around it aside (a provider that reads it so runs the model)."""
    name = model.strip().lower()
    return name.startswith("ft:") or ":ft-" in name


def fine_tuned_models(body: Any) -> list[tuple[str, str]]:
    """(parameter, name) of every fine-tuned model (`is_fine_tuned`) a JSON body names under a `model`
    key, at any depth (a job's base `model`, an eval's `data_source.model`, a grader's, an assistant's
    or a run's `model`, a tool's), the parameter as a dotted path (`testing_criteria.0.model`). Walked
    without recursion (any depth)."""
    found: list[tuple[str, str]] = []
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        at, node = stack.pop()
        if isinstance(node, list):
            stack += [(f"{at}{i}.", item) for i, item in enumerate(node) if isinstance(item, dict | list)]
        elif isinstance(node, dict):
            model = node.get("model")
            if isinstance(model, str) and is_fine_tuned(model):
                found.append((f"{at}model", model))
            stack += [(f"{at}{key}.", value) for key, value in node.items() if isinstance(value, dict | list)]
    return found


def trained_models(where: ObjectPath, segments: Sequence[str], answer: Any) -> list[tuple[str, float | None]]:
    """The fine-tuned models an answer on a fine-tuning job's path shows that job made, each kept as
    long as such models are (`COLLECTIONS`): the job's `fine_tuned_model` (a read of it, its cancel,
    pause or resume) and its checkpoints' `fine_tuned_model_checkpoint` (`GET
    /v1/fine_tuning/jobs/{id}/checkpoints`) — only of the job the path names (the caller's, checked),
    none of a job or checkpoint another id shows."""
    job = where.object_id
    if where.collection != "fine_tuning/jobs" or job is None or not isinstance(answer, dict):
        return []
    ttl = COLLECTIONS["fine_tuning/checkpoints"]
    if answer.get("object") == "fine_tuning.job" and answer.get("id") == job:
        model = answer.get("fine_tuned_model")
        return [(model, ttl)] if isinstance(model, str) and model else []
    listed = answer.get("data") if len(segments) == 4 and segments[3] == "checkpoints" else None
    models = [item.get("fine_tuned_model_checkpoint") for item in listed if isinstance(item, dict)
              and item.get("object") == "fine_tuning.job.checkpoint"
              and item.get("fine_tuning_job_id") == job] if isinstance(listed, list) else []
    return [(model, ttl) for model in dict.fromkeys(models) if isinstance(model, str) and model][:MAX_ANSWER_ITEMS]


@dataclass(frozen=True)
class Items:
    """An answer showing its caller Responses API items (`answer_items`), which become the caller's
    for `ttl` seconds (their owning object's: a stored response's, a conversation's — None); `own`:
    the answer is one item itself (a conversation's item read by its id); `parent`: the conversation
    holding them, whose DELETE ends them (`Ownership.claim_all`)."""

    ttl: float | None
    own: bool = False
    parent: str | None = None


def items_shown(where: ObjectPath, method: str, segments: Sequence[str]) -> Items | None:
    """The items a pass-through call's answer shows its caller (`answer_items`): a stored response's
    output (read, cancelled; a compaction's output) and input items, kept as long as the response;
    a conversation's items (listed, added, one read by its id), as long as the conversation. None
    for any other call."""
    if where.collection == "responses" and method != "DELETE":
        return Items(COLLECTIONS["responses"])
    if where.collection == "conversations" and where.object_id is not None and len(segments) in (3, 4) \
            and segments[2] == "items" and method in ("GET", "POST"):
        return Items(COLLECTIONS["conversations"], own=len(segments) == 4, parent=where.object_id)
    return None


def conversation_item(where: ObjectPath, segments: Sequence[str]) -> str | None:
    """The item a `/v1/conversations/{id}/items/{item_id}` path names (its conversation, the
    caller's, holds it), else None."""
    if where.collection == "conversations" and where.object_id is not None and len(segments) == 4 \
            and segments[2] == "items":
        return segments[3] or None
    return None


def eval_run_named(where: ObjectPath, segments: Sequence[str]) -> str | None:
    """The run a `/v1/evals/{id}/runs/{run_id}` path names (its eval, the caller's, holds it; its
    DELETE deletes the run: `Ownership.forget_child`), else None."""
    if where.collection == "evals" and where.object_id is not None and len(segments) == 4 and segments[2] == "runs":
        return segments[3] or None
    return None


def answer_items(answer: Any, items: Items) -> list[tuple[str, float | None]]:
    """The items an answer shows (a response's `output`, a list's `data`: a conversation's items, a
    response's input items; the answer itself when `items.own`), each with how long its owner is
    kept; at most MAX_ANSWER_ITEMS (past them, an item stays unowned: unreachable by id)."""
    if not isinstance(answer, dict):
        return []
    listed = answer.get("output") if "output" in answer else answer.get("data")
    found = [answer] if items.own else []
    found += [item for item in listed if isinstance(item, dict)] if isinstance(listed, list) else []
    ids = [item["id"] for item in found if isinstance(item.get("id"), str) and item["id"]]
    return [(item_id, items.ttl) for item_id in list(dict.fromkeys(ids))[:MAX_ANSWER_ITEMS]]


# Reading a large answer's items as its bytes pass (`ItemScanner`): a JSON token that may start a
# structure (a string, an object, an array); a string's rest up to its closing quote (escapes
# skipped; stops before the quote, or at a lone backslash ending the bytes); an `"id"` key's value.
_JSON_TOKEN = re.compile(rb'["{}\[\]]')
_STRING_REST = re.compile(rb'(?:[^"\\]++|\\.)*+', re.S)
_ID_VALUE = re.compile(rb'[ \t\r\n]{0,32}:[ \t\r\n]{0,32}"([^"\\]{1,200})"')
_ID_SPAN = 300  # bytes after an `"id"` key that tell whether a string value (at most 200) follows
_SHORT = 512  # an unfinished string at most this long at a chunk's end is carried to the next
_OBJECT, _ARRAY = 0x7B, 0x5B


class ItemScanner:
    """The ids of the items a JSON answer too large to parse shows (`answer_items`: a response's
    `output`, a list's `data`; the answer itself when `items.own`), read as its bytes pass: strings
    and brackets are followed (a string skipped by one regex match, however long — a 2 MB base64
    image —, never byte by byte in Python) to know the depth, so only an item's own `"id"` counts
    — never one the model wrote in a text (JSON escapes its quotes), nor one in an object the caller
    gave and the provider echoes (a response's `metadata`, a tool's schema). An unfinished token at
    a chunk's end is carried over (a short string, an `"id"` key whose value has not come); a long
    one only as "inside a string" (and whether its next byte is escaped). A Python step per string
    and bracket of the answer up to the end of its list of items, no further; at most
    MAX_ANSWER_ITEMS ids, the rest of the answer then not read."""

    def __init__(self, items: Items) -> None:
        self.items = items
        self.ids: dict[str, None] = {}
        self._carry = b""
        self._depth = 0
        self._kinds: list[int] = []  # the containers open at depths 1-3 (`{` or `[`)
        self._key = b""  # the last short string closed at depth 1: a top-level key, before its value
        self._listing = False  # the array open at depth 2 is the answer's `output` or `data`
        self._in_string = False  # inside a long string (its content not kept)
        self._escaped = False  # ... whose next byte is escaped (the last chunk ended in a lone backslash)
        self._done = False  # the answer's list of items has ended: nothing more to read

    @property
    def claims(self) -> list[tuple[str, float | None]]:
        """The ids read, each with how long its owner is kept (as `answer_items`)."""
        return [(item_id, self.items.ttl) for item_id in self.ids]

    def feed(self, chunk: bytes) -> None:
        if self._done or len(self.ids) >= MAX_ANSWER_ITEMS or not chunk:
            return
        buf, self._carry = self._carry + chunk, b""
        pos = self._finish_string(buf) if self._in_string else 0
        while pos >= 0 and len(self.ids) < MAX_ANSWER_ITEMS:
            token = _JSON_TOKEN.search(buf, pos)
            if token is None:
                return
            at = token.start()
            if buf[at] == 0x22:
                pos = self._string(buf, at)
            elif buf[at] in (_OBJECT, _ARRAY):
                if self._depth == 1 and buf[at] == _ARRAY:
                    self._listing = self._key in (b"output", b"data")
                self._depth += 1
                if self._depth <= 3:
                    self._kinds.append(buf[at])
                pos = at + 1
            else:
                if self._depth <= 3 and self._kinds:
                    self._kinds.pop()
                self._depth = max(self._depth - 1, 0)
                pos = at + 1
                if self._depth == 1 and self._listing and (self.ids or not self.items.own):
                    self._done = True  # its items were read: what follows (`tools`, `metadata`) is not
                    return

    def _finish_string(self, buf: bytes) -> int:
        """Where the long string a chunk began in ends (past its closing quote), or -1: not yet."""
        start = 1 if self._escaped else 0
        end = _STRING_REST.match(buf, start).end()  # type: ignore[union-attr]  # (matches empty)
        if end >= len(buf) or buf[end] != 0x22:
            self._escaped = end < len(buf)  # a lone backslash ends it
            return -1
        self._in_string = False
        if self._depth == 1:
            self._key = b""
        return end + 1

    def _string(self, buf: bytes, at: int) -> int:
        """Read the string whose opening quote is at `at`: where to go on, or -1 (the chunk ended)."""
        end = _STRING_REST.match(buf, at + 1).end()  # type: ignore[union-attr]  # (matches empty)
        if end >= len(buf) or buf[end] != 0x22:
            if len(buf) - at <= _SHORT:
                self._carry = buf[at:]
            else:
                self._in_string, self._escaped = True, end < len(buf)
            return -1
        if end - at == 3 and buf[at + 1 : end] == b"id" and self._at_item:
            value = _ID_VALUE.match(buf, end + 1)
            if value is not None:
                self.ids[value.group(1).decode("utf-8", "replace")] = None
                return value.end()
            if len(buf) - end < _ID_SPAN:  # its value may not have come yet
                self._carry = buf[at:]
                return -1
        if self._depth == 1:
            self._key = buf[at + 1 : end] if end - at <= 16 else b""
        return end + 1

    @property
    def _at_item(self) -> bool:
        """Whether the object being read is an item the answer shows: one of its `output` or `data`
        list, or the answer itself when it is one item. (Only these: an id nested in an item is not
        one Sentinel reads in an answer it parses either.)"""
        if self._depth == 1:
            return self.items.own and self._kinds == [_OBJECT]
        return self._depth == 3 and self._listing and self._kinds == [_OBJECT, _ARRAY, _OBJECT]


def audio_answers(answer: Any, now: float) -> list[tuple[str, float | None]]:
    """The audio answers a chat completion holds (`choices[].message.audio`), each with how long its
    owner is kept (`audio_ttl`)."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    out: list[tuple[str, float | None]] = []
    for choice in choices if isinstance(choices, list) else ():
        message = choice.get("message") if isinstance(choice, dict) else None
        audio = message.get("audio") if isinstance(message, dict) else None
        if isinstance(audio, dict) and isinstance(audio.get("id"), str) and audio["id"]:
            out.append((audio["id"], audio_ttl(audio.get("expires_at"), now)))
    return out


def audio_ttl(expires_at: Any, now: float) -> float:
    """How long the owner of an audio answer is kept: a day past its `expires_at` (a Unix time, as
    the provider gives it; 30 days ahead at most), AUDIO_TTL at least."""
    if is_number(expires_at):
        return max(AUDIO_TTL, min(expires_at - now, 30 * DAY) + DAY)
    return AUDIO_TTL


_AUDIO_ID = re.compile(rb'"audio"\s*:\s*\{\s*"id"\s*:\s*"([^"\\]{1,200})"')


def leading_audio_ids(head: bytes) -> list[str]:
    """The ids of the audio answers (`"audio": {"id": ...`, as the provider writes them) in the first
    bytes of a chat answer too large to parse whole."""
    return [match.group(1).decode() for match in _AUDIO_ID.finditer(head)]


_LEADING_ID = re.compile(rb'^\s*\{\s*"id"\s*:\s*"([^"\\]{1,200})"')


def leading_id(head: bytes) -> str | None:
    """The `id` of a JSON object whose first key it is (as in every OpenAI object), read from the
    first bytes of an answer too large to parse whole."""
    match = _LEADING_ID.match(head[:4096])
    return match.group(1).decode() if match else None
