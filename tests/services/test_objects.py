"""Which ids a multipart upload and a batch's input name, read as a provider reads them — and
cheaply: both are read in Python, on the event loop that serves every user."""

from __future__ import annotations

import json

import orjson
import pytest

from sentinel.services.objects import (
    AUDIO_TTL,
    DAY,
    MAX_ANSWER_ITEMS,
    MAX_BATCH_LINES,
    MAX_PART_HEADER_LINES,
    MAX_REFERENCES,
    REFERENCE_KEYS,
    InvalidBatchInput,
    Items,
    ItemScanner,
    MalformedReference,
    MalformedUpload,
    TooManyReferences,
    Upload,
    answer_items,
    audio_answers,
    batch_references,
    classify,
    conversation_item,
    created_ids,
    fine_tuned_models,
    is_fine_tuned,
    items_shown,
    leading_audio_ids,
    multipart_references,
    read_batch_input,
    reference_keys,
    referenced_ids,
    run_models,
    tool_models,
    trained_models,
    upload_files,
)

TYPE = 'multipart/form-data; boundary="XyZ"'


def part(disposition: str, value: bytes, *extra: str) -> bytes:
    head = "\r\n".join([f"Content-Disposition: {disposition}", *extra]).encode()
    return b"--XyZ\r\n" + head + b"\r\n\r\n" + value + b"\r\n"


def test_named_fields_are_read_file_parts_too() -> None:
    body = (part('form-data; name="purpose"', b"batch")
            + part('form-data; name="file"; filename="a.jsonl"', b'{"file_id": "not-a-field"} --XyZ is data',
                   "Content-Type: application/jsonl")
            + part('form-data; name="file_id"', b"file-alice1")
            + part('form-data; name="file_ids[]"', b"file-2")
            + part('form-data; name="container_id"; filename="x"', b"cntr_3")
            + b"--XyZ--\r\n")
    assert multipart_references(body, TYPE, files=frozenset({"file"})) == ["file-alice1", "file-2", "cntr_3"]


@pytest.mark.parametrize("body, content_type", [
    (part('form-data; name="file_id"', b"f"), "multipart/form-data"),  # no boundary
    (part("form-data", b"f"), TYPE),  # no name
    (part("form-data; name*=utf-8''file_id", b"f"), TYPE),  # RFC 2231: readers differ
    (part('form-data; name="a"', b"f", 'Content-Disposition: form-data; name="file_id"'), TYPE),  # two
    (b"--XyZ\r\nno colon here\r\n\r\nf\r\n--XyZ--", TYPE),
])
def test_a_part_that_cannot_be_read_is_malformed(body: bytes, content_type: str) -> None:
    with pytest.raises(MalformedUpload):
        multipart_references(body, content_type)


def test_too_many_ids_are_refused() -> None:
    body = b"".join(part('form-data; name="file_ids[]"', b"f") for _ in range(5)) + b"--XyZ--"
    with pytest.raises(TooManyReferences):
        multipart_references(body, TYPE, limit=4)


@pytest.mark.parametrize("body, content_type", [
    (b"hello", TYPE),  # no part at all
    (part('form-data; name="file_id"', b"f").replace(b"\r\n", b"\n") + b"--XyZ--\n", TYPE),  # LF only
    (part('form-data; name="file_id"', b"f"), TYPE),  # no closing boundary
    (part('form-data; name="purpose"; name="file_id"', b"f") + b"--XyZ--", TYPE),  # a parameter twice
    (part('form-data; name="file_id"', b"f") + b"--XyZ--", 'multipart/form-data; boundary=XyZ; boundary=Q'),
])
def test_a_body_a_lenient_reader_could_read_otherwise_is_malformed(body: bytes, content_type: str) -> None:
    """Once each of these came back as naming nothing (and was forwarded): a provider reading LF
    line ends, the last of two parameters, or a body this reader found no part in, saw the ids."""
    with pytest.raises(MalformedUpload):
        multipart_references(body, content_type)


def test_bracketed_names_are_read_by_their_components() -> None:
    body = (part('form-data; name="tool_resources[code_interpreter][file_ids][]"', b"file-a")
            + part('form-data; name="timestamp_granularities[]"', b"word") + b"--XyZ--")
    assert multipart_references(body, TYPE) == ["file-a"]


def test_dotted_names_and_json_values_are_read() -> None:
    """A reader taking dotted names (`a.b.c`) or a field holding JSON (`tool_resources={...}`) saw ids
    that were never read; a file's bytes stay unread, and text that is not JSON names nothing."""
    body = (part('form-data; name="tool_resources.file_search.vector_store_ids"', b"vs_1")
            + part('form-data; name="tool_resources"', b' {"code_interpreter": {"file_ids": ["file-2"]}}')
            + part('form-data; name="attachments"', b'[{"file_id": "file-3"}]')
            + part('form-data; name="prompt"', b"[Speaker 1] {not json")
            + part('form-data; name="prompt"', b"[Speaker 1]: hi, {Speaker 2}: hello")
            + part('form-data; name="file"; filename="a.json"', b'{"file_id": "file-in-the-file"}')
            + b"--XyZ--")
    assert multipart_references(body, TYPE, files=frozenset({"file"})) == ["vs_1", "file-2", "file-3"]
    # Only a field named exactly `prompt` is free text, and only what no JSON reader reads is let by
    # as text there: JSON that reads is scanned, in `prompt` and in any name that starts with it.
    for name, value in (("prompt", b'{"file_id": "file-victim"}'),
                        ("prompt[variables][doc]", b'{"type": "input_file", "file_id": "file-victim"}'),
                        ("prompt.variables", b'{"file_ids": ["file-victim"]}')):
        assert multipart_references(part(f'form-data; name="{name}"', value) + b"--XyZ--", TYPE) == ["file-victim"]
    with pytest.raises(MalformedUpload):
        multipart_references(part('form-data; name="prompt.x"', b'{"file_id": "file-victim", "n": NaN}') + b"--XyZ--", TYPE)
    crowded = part('form-data; name="x"', b"[" + b"[], " * 100_001 + b"[]]") + b"--XyZ--"
    with pytest.raises(MalformedUpload, match="too many"):
        multipart_references(crowded, TYPE)


@pytest.mark.parametrize("method, path, taken", [
    ("POST", "files", True), ("POST", "uploads/upload_1/parts", True), ("POST", "audio/transcriptions", True),
    ("POST", "audio/translations", True), ("POST", "images/edits", True), ("POST", "images/variations", True),
    ("POST", "containers/cntr_1/files", True),
    ("POST", "assistants", False), ("POST", "threads/thread_1/messages", False), ("POST", "batches", False),
    ("POST", "evals/eval_1/runs", False), ("POST", "uploads/upload_1/complete", False),
    ("POST", "files/file-1", False), ("PUT", "files", False), ("POST", "vector_stores/vs_1/files", False),
    ("POST", "images/generations", False), ("POST", "chat/completions", False),
])
def test_an_upload_is_taken_only_by_a_call_that_takes_a_file(method: str, path: str, taken: bool) -> None:
    assert (upload_files(method, path.split("/")) is not None) is taken


@pytest.mark.parametrize("value", [
    b'{"file_id": "file-victim", "x": NaN}',  # Python's json and lenient readers take NaN
    b' [{"file_id": "file-victim", "n": "\\ud800"}]',  # a lone surrogate: the same
    b'{"file_id": "file-victim", "file_id": "file-mine"}',  # a key twice: a reader keeping the first
    b'{"a": {"file_id": "file-victim"}, "a": 1}',
    b'{"file_ids": ["file-victim"], "x": "\xff"}',  # not UTF-8: read as Latin-1 by lenient readers
    b'\xef\xbb\xbf{"file_ids": ["file-victim"], "x": NaN}',  # behind a byte order mark
    b'{"file_ids": ["file-victim"]} and then text',  # a reader of the first value sees the id
    '{"file_ids": ["file-victim"]}'.encode("utf-16"),  # with its byte order mark: Python's json reads it
    '{"file_ids": ["file-victim"]}'.encode("utf-16-be"),  # without one: Python's json reads it too
    ' {"file_ids": ["file-victim"]}'.encode("utf-16-le"),
    '{"file_ids": ["file-victim"]}'.encode("utf-32-be"),
])
def test_a_json_value_a_reader_could_read_otherwise_is_malformed(value: bytes) -> None:
    """Once each of these named nothing, or only the id orjson kept: the upload goes upstream as it
    came, and a provider reading it leniently, or first-wins, saw the victim's file."""
    with pytest.raises(MalformedUpload):
        multipart_references(part('form-data; name="session"', value) + b"--XyZ--", TYPE)


def test_a_file_is_read_as_a_field_unless_the_call_takes_files_there() -> None:
    """A part carrying a `filename` was never read: a JSON value given as a file on a field that is
    not one of the call's files is read as a field is."""
    body = (part('form-data; name="image[]"; filename="a.png"', b'{"file_id": "file-in-an-image"}')
            + part('form-data; name="meta"; filename="m.json"', b'{"file_id": "file-victim"}')
            + part('form-data; name="mask"; filename="m"', b"[Speaker 1] {not json")
            + b"--XyZ--")
    files = upload_files("POST", ["images", "edits"])
    assert files is not None and "image" in files
    assert multipart_references(body, TYPE, files=files) == ["file-victim"]
    assert multipart_references(body, TYPE, files=frozenset({"meta"})) == ["file-in-an-image"]


def test_a_part_with_an_empty_filename_is_read_as_a_field() -> None:
    """aiohttp and Go read a part with `filename=""` as a field, Starlette and werkzeug as a file (and
    a reader that does not read RFC 2231 reads no filename in `filename*=`): read as a file on a field
    the call takes files on, its id went unchecked (an edit's `image` of `{"file_id": …}`). Only a
    filename given plainly and not empty makes a part a file."""
    files = upload_files("POST", ["images", "edits"])
    assert files is not None and "image" in files
    fields = ['form-data; name="image"; filename=""', "form-data; name=image; filename*=UTF-8''",
              "form-data; name=image; filename*=UTF-8''a.png", "form-data; name=image; filename*0=a.png"]
    for disposition in fields:
        body = part(disposition, b'{"file_id": "file-victim"}') + b"--XyZ--"
        assert multipart_references(body, TYPE, files=files) == ["file-victim"], disposition
    for disposition in ('form-data; name="image"; filename="a.png"', "form-data; name=image; filename=a"):
        body = part(disposition, b'{"file_id": "file-victim"}') + b"--XyZ--"
        assert multipart_references(body, TYPE, files=files) == [], disposition


def test_audio_answers_and_upload_parts_are_references() -> None:
    body = {"model": "gpt-4o-audio-preview", "audio": {"voice": "alloy", "format": "wav"}, "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "audio": {"id": "audio_1"}}],
        "part_ids": ["part_1", "part_2"]}
    assert sorted(referenced_ids(body)) == ["audio_1", "part_1", "part_2"]
    assert referenced_ids({"audio": {"voice": "alloy"}, "metadata": {"audio": "audio_x"}}) == []


def test_custom_voices_and_a_voices_consent_are_references() -> None:
    """A custom voice is named by a `voice` object's `id` (a built-in one by a string); a consent by a
    voice's `consent` — on the call that makes a voice only: elsewhere `consent` is a word (metadata)."""
    chat = {"audio": {"voice": {"id": "voice_1"}, "format": "wav"}, "metadata": {"consent": "granted"}}
    assert referenced_ids(chat) == ["voice_1"]
    assert referenced_ids({"voice": {"id": "voice_2"}, "input": "hi"}) == ["voice_2"]
    assert reference_keys(["chat", "completions"]) == REFERENCE_KEYS
    made = {"name": "Alice", "consent": "cons_1"}
    assert referenced_ids(made) == [] and referenced_ids(made, keys=reference_keys(["audio", "voices"])) == ["cons_1"]
    upload = Upload((("name", b"Alice", False), ("consent", b"cons_1", False), ("audio_sample", b"RIFF", True)))
    assert upload.references(keys=reference_keys(["audio", "voices"])) == ["cons_1"]


def test_a_video_edited_or_extended_is_a_reference_a_video_file_is_not() -> None:
    """`video` names a video to edit or extend (`{"id": ...}`, a form's `video[id]`) on those calls
    only; a file given on `video` is the video's bytes, never read as an id."""
    for path in (["videos", "edits"], ["videos", "extensions"]):
        keys = reference_keys(path)
        assert referenced_ids({"prompt": "x", "video": {"id": "video_1"}}, keys=keys) == ["video_1"]
        upload = Upload((("prompt", b"x", False), ("video[id]", b"video_2", False)))
        assert upload.references(files=upload_files("POST", path) or frozenset(), keys=keys) == ["video_2"]
        clip = Upload((("prompt", b"x", False), ("video", b"video_3", True)))
        assert clip.references(files=upload_files("POST", path) or frozenset(), keys=keys) == []
    assert referenced_ids({"video": {"id": "video_1"}}) == []  # elsewhere a `video` names nothing


def test_every_id_in_a_reference_field_is_read_at_any_depth() -> None:
    """Only a list's strings were read: `[["file-1"]]` and `[{"id": "vs_1"}]` went unchecked."""
    assert sorted(referenced_ids({"file_ids": [["file-1"], [{"id": "file-2"}, None, ""]]})) == ["file-1", "file-2"]
    with pytest.raises(MalformedReference) as refused:  # an id no check reads: a number, a list in an `id`
        referenced_ids({"file_ids": [["file-1"], [{"id": "file-2"}, 3]]})
    assert refused.value.param == "file_ids.1.1"
    with pytest.raises(MalformedReference) as refused:
        referenced_ids({"tools": [{"container": {"id": ["cntr_1"]}}]})
    assert refused.value.param == "tools.0.container.id"
    assert referenced_ids({"vector_store_ids": [{"id": "vs_1"}]}) == ["vs_1"]
    deep: list[object] = ["file-3"]
    for _ in range(100_000):
        deep = [deep]
    assert referenced_ids({"file_ids": deep}) == ["file-3"]  # walked, not recursed: no RecursionError


def test_the_audio_answers_of_a_chat_answer_are_its_callers() -> None:
    now = 1_800_000_000.0
    answer = {"choices": [{"message": {"audio": {"id": "audio_1", "expires_at": now + 3600}}},
                          {"message": {"audio": {"id": "audio_2", "expires_at": now + 5 * DAY}}},
                          {"message": {"audio": {"id": "audio_3", "expires_at": now + 900 * DAY}}},
                          {"message": {"audio": {"id": "audio_4"}, "content": None}}, {"message": {"content": "x"}}]}
    assert audio_answers(answer, now) == [("audio_1", AUDIO_TTL), ("audio_2", 6 * DAY), ("audio_3", 31 * DAY),
                                          ("audio_4", AUDIO_TTL)]
    assert audio_answers({"choices": "x"}, now) == audio_answers(None, now) == []
    head = b'{"id": "chatcmpl-1", "choices": [{"message": {"audio": {"id": "audio_5", "data": "UklG'
    assert leading_audio_ids(head + b"A" * 1000 + b'"}}}, {"message": {"audio" : { "id":"audio_6"') == [
        "audio_5", "audio_6"]


@pytest.mark.parametrize("method, path, creates", [
    ("POST", "files", True), ("POST", "uploads/upload_1/parts", True), ("POST", "fine_tuning/jobs", True),
    ("GET", "files", False), ("POST", "uploads/upload_1/complete", False), ("POST", "uploads/upload_1", False),
    ("POST", "threads/thread_1/parts", False), ("POST", "moderations", False),
    ("POST", "videos", True), ("POST", "videos/video_1/remix", True), ("POST", "videos/characters", True),
    ("POST", "videos/video_1", False), ("POST", "videos/video_1/remix/x", False),
])
def test_what_a_call_creates_becomes_its_callers(method: str, path: str, creates: bool) -> None:
    segments = path.split("/")
    assert classify(segments).creates(method, segments) is creates


def test_the_models_an_eval_runs() -> None:
    runs = ["evals", "eval_1", "runs"]
    run = {"data_source": {"type": "completions", "model": "o1-pro", "sampling_params": {"seed": 1}}}
    assert run_models(runs, run) == [("data_source.model", "o1-pro")]
    assert run_models(runs, {"data_source": {"type": "responses"}}) == [("data_source.model", None)]
    assert run_models(runs, {"data_source": {"type": "jsonl", "source": {"type": "file_id", "id": "file-1"}}}) == []
    graded = {"testing_criteria": [{"type": "string_check"}, {"type": "label_model", "model": "a"},
                                   {"type": "multi", "graders": {"x": {"type": "score_model", "model": "b"}}}],
              "data_source_config": {"type": "custom", "item_schema": {"properties": {"model": {"type": "string"}}}}}
    assert sorted(run_models(["evals"], graded)) == [("testing_criteria.model", "a"), ("testing_criteria.model", "b")]
    assert run_models(["fine_tuning", "jobs"], graded) == []  # an eval's fields, elsewhere: nothing run
    drawn = {"data_source": {"type": "responses", "model": "gpt-4o-mini", "sampling_params": {"tools": [
        {"type": "function", "name": "f"}, {"type": "image_generation", "model": "gpt-image-1"}, {"model": 5}]}}}
    assert run_models(runs, drawn) == [("data_source.model", "gpt-4o-mini"),
                                       ("data_source.sampling_params.tools.1.model", "gpt-image-1"),
                                       ("data_source.sampling_params.tools.2.model", 5)]


def test_the_models_a_bodys_tools_run() -> None:
    """A tool's own `model` (the Responses API's image generation) is a model the provider runs."""
    assert tool_models({"tools": [{"type": "function"}, {"type": "image_generation", "model": "m"}]}) == [
        ("tools.1.model", "m")]
    assert tool_models({"tools": [{"model": None}, "x"]}, "body.") == [("body.tools.0.model", None)]
    # An image tool that names no model would run the provider's default: reported, to be refused.
    assert tool_models({"tools": [{"type": "image_generation"}]}, "body.") == [("body.tools.0.model", None)]
    assert tool_models({"tools": {"model": "m"}}) == tool_models([{"tools": []}]) == tool_models(None) == []


def test_the_models_a_grader_runs_on_its_own_or_in_a_fine_tuning_job() -> None:
    grader = {"type": "multi", "calculate_output": "a", "graders": {
        "a": {"type": "score_model", "name": "a", "model": "o1-pro", "input": []}, "b": {"type": "python"}}}
    assert run_models(["fine_tuning", "alpha", "graders", "run"], {"grader": grader, "model_sample": "x"}) == [
        ("grader.model", "o1-pro")]
    assert run_models(["fine_tuning", "alpha", "graders", "validate"], {"grader": {"type": "label_model"}}) == [
        ("grader.model", None)]
    job = {"model": "gpt-4o-mini", "training_file": "file-1",
           "method": {"type": "reinforcement", "reinforcement": {"grader": grader}}}
    assert run_models(["fine_tuning", "jobs"], job) == [("method.reinforcement.grader.model", "o1-pro")]
    assert run_models(["fine_tuning", "jobs"], {"method": {"type": "supervised", "supervised": {}}}) == []


def test_the_fine_tuned_models_a_body_names_under_any_model_key() -> None:
    assert is_fine_tuned("ft:gpt-4o-mini:org::abc") and is_fine_tuned(" FT:x") and is_fine_tuned("curie:ft-org-2023")
    assert not is_fine_tuned("gpt-4o-mini") and not is_fine_tuned("o1-pro")
    body = {"model": "ft:a", "testing_criteria": [{"type": "label_model", "model": "gpt-4o-mini"},
                                                  {"graders": {"x": {"model": "ft:b"}}}], "metadata": {"model": 5}}
    assert sorted(fine_tuned_models(body)) == [("model", "ft:a"), ("testing_criteria.1.graders.x.model", "ft:b")]
    assert fine_tuned_models([{"model": "ft:c"}]) == [("0.model", "ft:c")]
    assert fine_tuned_models({"model": "gpt-4o"}) == fine_tuned_models(None) == []


def test_the_fine_tuned_models_a_read_of_a_job_shows_it_made() -> None:
    job = {"id": "ftjob-1", "object": "fine_tuning.job", "fine_tuned_model": "ft:m:org::1"}
    read = ["fine_tuning", "jobs", "ftjob-1"]
    assert trained_models(classify(read), read, job) == [("ft:m:org::1", None)]
    assert trained_models(classify(read), read, {**job, "fine_tuned_model": None}) == []
    assert trained_models(classify(read), read, {**job, "id": "ftjob-2"}) == []  # not the job the path names
    cancel = [*read, "cancel"]
    assert trained_models(classify(cancel, "POST"), cancel, job) == [("ft:m:org::1", None)]
    listed = ["fine_tuning", "jobs", "ftjob-1", "checkpoints"]
    checkpoint = {"object": "fine_tuning.job.checkpoint", "fine_tuning_job_id": "ftjob-1",
                  "fine_tuned_model_checkpoint": "ft:m:org::1:ckpt-step-10"}
    page = {"object": "list", "data": [checkpoint, {**checkpoint, "fine_tuning_job_id": "ftjob-2",
                                                    "fine_tuned_model_checkpoint": "ft:other"}]}
    assert trained_models(classify(listed), listed, page) == [("ft:m:org::1:ckpt-step-10", None)]
    events = ["fine_tuning", "jobs", "ftjob-1", "events"]
    assert trained_models(classify(events), events, page) == []
    made = ["fine_tuning", "jobs"]  # a creation: its model is not made yet
    assert trained_models(classify(made, "POST"), made, job) == []
    files = ["files", "ftjob-1"]
    assert trained_models(classify(files), files, job) == []
    permissions = ["fine_tuning", "checkpoints", "ft:m:org::1", "permissions"]
    assert classify(permissions, "POST").object_id == "ft:m:org::1"
    assert not classify(permissions, "POST").creates("POST", permissions)


def test_an_upload_of_more_parts_than_a_form_holds_is_malformed() -> None:
    """Every part was read, one email `Message` each: 20,164 tiny parts (1 MiB) took 0.2 s of the loop."""
    field = part('form-data; name="purpose"', b"batch")
    assert len(Upload.read(field * 100 + b"--XyZ--", TYPE).parts) == 100
    with pytest.raises(MalformedUpload, match="at most 100 parts"):
        Upload.read(field * 20_000 + b"--XyZ--", TYPE)


@pytest.mark.parametrize("body, content_type", [
    # the stdlib reads a header's parameters in time quadratic in their number (500,000: 37 s)
    (part('form-data; name="a"' + "".join(f"; p{i}=1" for i in range(2_000)), b"x") + b"--XyZ--", TYPE),
    (part('form-data; name="a"', b"x") + b"--XyZ--", TYPE + "".join(f"; p{i}=1" for i in range(16))),
    (part('form-data; name="a"', b"x", *[f"X-{i}: y" for i in range(2_000)]) + b"--XyZ--", TYPE),  # 18 KiB
], ids=["part parameters", "content-type parameters", "header lines"])
def test_an_upload_with_more_headers_than_a_form_has_is_malformed(body: bytes, content_type: str) -> None:
    with pytest.raises(MalformedUpload):
        Upload.read(body, content_type)


def test_an_upload_part_with_more_header_lines_than_a_form_part_has_is_malformed() -> None:
    """Each header line is read into an email `Message`: 4,000 short ones (16 KB, a body just under
    the size read in a worker thread) took ~5 ms of the event loop."""
    lines = [f"X-{i}: y" for i in range(MAX_PART_HEADER_LINES - 1)]
    assert len(Upload.read(part('form-data; name="a"', b"x", *lines) + b"--XyZ--", TYPE).parts) == 1
    with pytest.raises(MalformedUpload, match=f"at most {MAX_PART_HEADER_LINES} header lines"):
        Upload.read(part('form-data; name="a"', b"x", *lines, "X-last: y") + b"--XyZ--", TYPE)
    with pytest.raises(MalformedUpload, match=f"at most {MAX_PART_HEADER_LINES} header lines"):
        Upload.read(part('form-data; name="a"', b"x", *["a: b"] * 3_000) + b"--XyZ--", TYPE)


def test_a_form_with_its_usual_headers_is_read() -> None:
    upload = part('form-data; name="file"; filename="a;b.jsonl"', b"{}", "Content-Type: text/plain; charset=utf-8")
    upload += part('form-data; name="purpose"', b"batch") + b"--XyZ--"
    assert Upload.read(upload, TYPE + "; charset=utf-8").values("purpose") == [b"batch"]


def test_an_ascii_field_labelled_with_a_charset_that_extends_ascii_is_read() -> None:
    """Apache HttpClient labels every text field `text/plain; charset=ISO-8859-1` with
    `Content-Transfer-Encoding: 8bit`: ASCII bytes read the same in it, so such a form is taken (the
    charset check refused every upload from it)."""
    apache = ("Content-Type: text/plain; charset=ISO-8859-1", "Content-Transfer-Encoding: 8bit")
    upload = part('form-data; name="model"', b"whisper-1", *apache) + part('form-data; name="stream"', b"false", *apache)
    upload += b"--XyZ--"
    read = Upload.read(upload, TYPE)
    assert read.values("model") == [b"whisper-1"] and not read.streams


LINE = (b'{"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", '
        b'"body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Answer: %s"}]}}')
OFFERED = {"gpt-4o-mini"}.__contains__


@pytest.mark.parametrize("content, message", [
    # one line of 20,000 `{}` items (1 MiB of them took 0.4 s), 50,001 lines of `{}` (1 MiB: 1.5 s)
    (LINE % (b'", "x": [' + b"{}, " * 20_000 + b'{}], "y": "'), "Line 1 of the batch input holds more than 10,000"),
    (b"{}\n" * 50_001, "at most 50,000 lines"),
    ((LINE % (b'", "x": [' + b"[], " * 9_000 + b'[]], "y": "') + b"\n") * 56, "at most 500,000 JSON objects"),
], ids=["line", "lines", "file"])
def test_a_batch_input_larger_than_a_real_one_is_refused(content: bytes, message: str) -> None:
    with pytest.raises(InvalidBatchInput, match=message):
        batch_references(content, offered=OFFERED)


def test_only_the_containers_outside_strings_count() -> None:
    """`{` and `[` in strings (code in a prompt) are not objects: past the caps in bytes, the
    structural ones are counted, escaped quotes and backslashes read as a parser reads them."""
    braces = b"{[" * 30_000
    line = LINE % (b'\\\\\\"' + braces + b'\\\\')
    assert batch_references(b"\n".join([line] * 2), offered=OFFERED) == []
    # A real file at the line cap: 50,000 chat lines, with a system message (250,000 containers).
    system = LINE.replace(b'[{"role": "user"', b'[{"role": "system", "content": "Be brief."}, {"role": "user"')
    assert batch_references(b"\n".join([system % b"x"] * 50_000), offered=OFFERED) == []


ANY = b'{"custom_id": "1", "body": {"model": "gpt-4o-mini"}, "x": %s}'


@pytest.mark.parametrize("line, accepted", [
    (ANY % b'{"a": 1, "a": 2}', False),
    (ANY % b'{"a": 1e15, "a": 2}', False),  # orjson writes 1e15 longer than it came: the line still lost a key
    (ANY % b'{"a": 1, "b": {"c": [{"d": 1, "d": 1}]}}', False),
    (ANY % b'{"a\\u003a": 1, "a:": 2}', False),  # a `:` escaped in one key, not in the other
    (ANY % b'{"a": 1, "\\u0061": 2}', False),
    (ANY % b'1, "body": {"model": "o1-pro"}', False),  # the model a first-wins reader runs was never checked
    (ANY % b'[{"b": 1}, {"b": 2}, "x:y", "\\\\u003a"]', True),
    (ANY % b'"\\ud800"', True),  # a lone surrogate, a BOM: orjson refuses them, `json` does not
    (b"\xef\xbb\xbf" + ANY % b"1", True),
    (ANY % b"1e400", False),  # past a double: `json` reads an infinity, which no JSON writer writes back
    (ANY % b"-1e400", False),
    (ANY % b"NaN", False),
    (ANY % (b"[" * 300 + b"]" * 300), True),  # deeper than orjson writes back
    (ANY % (b"[" * 300 + b'{"b": 1, "b": 2}' + b"]" * 300), False),
    (ANY % (b"[" * 3_000 + b"]" * 3_000), False),
    (ANY % b"1" + b" x", False),
])
def test_a_batch_line_is_read_as_strictly_as_the_json_module_reads_it(line: bytes, accepted: bool) -> None:
    """Lines are read by orjson where that gives what `json` (a repeated key refused) gives."""
    if accepted:
        assert batch_references(line, offered=OFFERED) == []
    else:
        with pytest.raises(InvalidBatchInput, match="not JSON Sentinel can read"):
            batch_references(line, offered=OFFERED)


def test_a_batch_line_naming_an_id_or_model_that_is_not_text_is_refused() -> None:
    """A lone surrogate (`"\\ud800"`, or its bytes) in an id or a model can name no object and no
    model, and no store key or JSON answer can hold it: refused (a prompt's text may hold one)."""
    with_file = LINE.replace(b'"content": "Answer: %s"', b'"content": [{"type": "file", "file": {"file_id": "%s"}}]')
    for line in (with_file % b"file-\\ud800", with_file % "file-\ud800".encode("utf-8", "surrogatepass"),
                 LINE.replace(b'"gpt-4o-mini"', b'"\\udfff"') % b"x"):
        with pytest.raises(InvalidBatchInput, match="not text"):
            batch_references(line, offered=OFFERED)
    assert batch_references(LINE % b"\\ud800", offered=OFFERED) == []


@pytest.mark.parametrize("line", [
    LINE.replace(b"gpt-4o-mini", b"o1-pro"),
    LINE.replace(b'"model": "gpt-4o-mini", ', b""),
    LINE.replace(b'"gpt-4o-mini"', b'["gpt-4o-mini"]'),
    b'{"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": "gpt-4o-mini"}',
    LINE.replace(b'"model": "gpt-4o-mini"', b'"model": "gpt-4o-mini", "tools": [{"type": "image_generation", '
                 b'"model": "gpt-image-1"}]'),
    LINE.replace(b'"model": "gpt-4o-mini"', b'"model": "gpt-4o-mini", "tools": [{"model": 1}]'),
], ids=["another model", "no model", "a list", "no body", "a tool's model", "a tool's model not a string"])
def test_a_batch_line_runs_only_a_model_offered_for_batches(line: bytes) -> None:
    """Every line was checked for the ids it names, never for the model it runs: a user's batch ran
    any model of the company's account (o1-pro), the operator's catalogue bypassed."""
    assert batch_references(LINE % b"x", offered=OFFERED) == []
    with pytest.raises(InvalidBatchInput, match="Line 2 .* a batch runs only a model of this gateway's catalogue"):
        batch_references(LINE % b"x" + b"\n" + line.replace(b"%s", b"x"), offered=OFFERED)


@pytest.mark.parametrize("content_type", [
    "multipart/form-data; boundary*=utf-8''%E2%82%AC", "multipart/form-data; boundary*0=X; boundary*1=yZ",
    "multipart/form-data; boundary=\u0100",
    # read otherwise by another reader (aiohttp's `request.post()`, werkzeug), which then reads other parts
    'multipart/form-data; boundary=""XyZ', 'multipart/form-data; boundary="XyZ"x', 'multipart/form-data; boundary="XyZ;b"',
    'multipart/form-data; boundary="X\\yZ"', 'multipart/form-data; boundary="Xy\\"Z"',
    'multipart/form-data; x="; boundary=c"; boundary=XyZ', 'multipart/form-data; boundary=XyZ; x=";boundary=c"',
    "multipart/form-data; boundary=XyZ\x85", "multipart/form-data; boundary=XyZ\xa0", "multipart/form-data; boundary=XyZ\t",
    "multipart/form-data; boundary=X yZ", 'multipart/form-data; boundary="XyZ "', "multipart/form-data; boundary =XyZ",
])
def test_a_boundary_is_given_plainly(content_type: str) -> None:
    """An RFC 2231 boundary (readers differ on it; decoded, `€` is no delimiter line's bytes: a 500),
    one that is not ASCII, and one that readers read otherwise (an escape, quotes in a token, a `;`
    in quotes, a boundary in another parameter's quotes, a character after it) are malformed: a
    reader that reads another boundary skips what comes before its first delimiter, so a part could
    hide in a field Sentinel never reads."""
    with pytest.raises(MalformedUpload, match="boundary"):
        Upload.read(part('form-data; name="a"', b"x") + b"--XyZ--\r\n", content_type)


@pytest.mark.parametrize("content_type", [
    "multipart/form-data; boundary=XyZ", "multipart/form-data;boundary=XyZ", 'multipart/form-data; boundary="XyZ"',
    "multipart/form-data; BOUNDARY=XyZ; charset=UTF-8", "multipart/form-data; boundary=XyZ;",
])
def test_a_boundary_given_plainly_is_read(content_type: str) -> None:
    """What the SDKs, curl, browsers and Apache HttpClient send (quoted or not, in any case, with a charset)."""
    assert Upload.read(part('form-data; name="a"', b"x") + b"--XyZ--\r\n", content_type).values("a") == [b"x"]


@pytest.mark.parametrize("boundary", ["----WebKitFormBoundary7MA4YWxkTrZu0gW", "a b", "'()+_,-./:=?", "=" * 100])
def test_any_boundary_of_rfc_2046_characters_is_read(boundary: str) -> None:
    body = part('form-data; name="a"', b"x").replace(b"XyZ", boundary.encode()) + f"--{boundary}--\r\n".encode()
    assert Upload.read(body, f'multipart/form-data; boundary="{boundary}"').values("a") == [b"x"]


QP_LINE = (b'{"custom_id": "1", "body": {"model": "gpt-4o-mini", "messages": [], "x": "=22, =22model=22: =22o1-pro=22, '
           b'=22y=22: =22"}}')


@pytest.mark.parametrize("body, content_type, param", [
    # decoded by aiohttp's `request.post()` (quoted-printable by Go's reader too): `=22` is `"`, a
    # line naming o1-pro (and anyone's file) once decoded
    (part('form-data; name="purpose"', b"batch") + part('form-data; name="file"; filename="in.jsonl"', QP_LINE,
                                                         "Content-Transfer-Encoding: quoted-printable"),
     TYPE, "file"),
    (part('form-data; name="stream"', b"dHJ1ZQ==", "Content-Transfer-Encoding: BASE64"), TYPE, "stream"),
    (part('form-data; name="stream"', b"x", "Content-Transfer-Encoding: x-uuencode"), TYPE, "stream"),
    (part('form-data; name="file"; filename="a"', b"\x1f\x8b", "Content-Encoding: gzip"), TYPE, "file"),
    # a field's text read in its charset: "true" in UTF-16, `+ACI-` is `"` in UTF-7
    (part('form-data; name="stream"', "true".encode("utf-16"), "Content-Type: text/plain; charset=utf-16"),
     TYPE, "stream"),
    (part('form-data; name="file_id"', b"file-1", "Content-Type: text/plain; Charset=UTF-7"), TYPE, "file_id"),
    (part('form-data; name="file_id"', b"file-1", "Content-Type: text/plain; charset*=utf-8''utf-16"),
     TYPE, "file_id"),
    (part('form-data; name="file_id"', b"file-1", 'Content-Type: text/plain; a="b; charset=utf-7"'),
     TYPE, "file_id"),  # (a reader splitting at every `;` finds it)
    (part('form-data; name="file_id"', "file-\u00e9".encode("latin-1"), "Content-Type: application/json; charset=latin-1"),
     TYPE, "file_id"),  # (not ASCII: read otherwise than as UTF-8)
    (part('form-data; name="stream"', b"true", "Content-Type: text/plain",
          "Content-Type: text/plain; charset=utf-16"), TYPE, "stream"),  # a reader taking the last
    (part('form-data; name="stream"', b"x", "Content-Transfer-Encoding: 8bit", "Content-Transfer-Encoding: base64"),
     TYPE, "stream"),
    (part('form-data; name="_charset_"', b"utf-7") + part('form-data; name="file_id"', b"file-1"), TYPE, "_charset_"),
    (part('form-data; name="file_id"', b"file-1"), TYPE + "; charset=utf-16", None),
], ids=["quoted-printable", "base64", "other transfer", "content coding", "utf-16", "utf-7", "rfc 2231",
        "quoted", "latin-1", "two types", "two transfers", "_charset_", "form charset"])
def test_a_part_a_reader_would_decode_into_other_bytes_is_malformed(
    body: bytes, content_type: str, param: str | None
) -> None:
    """Such a part was checked as its raw bytes and went upstream as it came: a reader decoding it
    gave the provider a value never checked (a batch line running o1-pro on another user's file, a
    `stream` that was not seen as true)."""
    with pytest.raises(MalformedUpload) as refused:
        Upload.read(body + b"--XyZ--\r\n", content_type)
    assert refused.value.param == param


def test_a_folded_part_header_is_malformed() -> None:
    """A line beginning with a space continues the one before in readers that fold header lines:
    `charset=utf-16` there was the Content-Type's, seen here as a header of its own."""
    folded = part('form-data; name="stream"', b"true", "Content-Type: text/plain;", " x-charset: utf-16")
    with pytest.raises(MalformedUpload, match="one 'Name: value' line"):
        Upload.read(folded + b"--XyZ--\r\n", TYPE)


@pytest.mark.parametrize("client", ["httpx", "httpx2"])
def test_what_the_sdks_http_client_sends_is_read(client: str) -> None:
    """The OpenAI SDK sends uploads with httpx (httpx2 in its newer releases): a field's
    Content-Disposition alone, a file's Content-Type guessed from its name, no charset, no encoding."""
    http = pytest.importorskip(client)
    request = http.Request("POST", "http://x/v1/files", data={"purpose": "batch", "stream": "false"},
                           files={"file": ("in.jsonl", LINE % b"hi"), "notes": ("a.txt", b"x", "text/plain; charset=latin-1")})
    upload = Upload.read(request.read(), request.headers["content-type"])
    assert upload.batch_input() == LINE % b"hi" and not upload.streams
    plain = (part('form-data; name="stream"', b"0", "Content-Type: text/plain; charset=US-ASCII",
                  "Content-Transfer-Encoding: 8bit")
             + part('form-data; name="file_id"', b"file-1", 'Content-Type: text/plain; charset="utf-8"',
                    "Content-Transfer-Encoding: binary")
             + part('form-data; name="file"; filename="a.txt"', b"x", "Content-Type: text/plain; charset=windows-1252",
                    "Content-Transfer-Encoding: 7bit"))
    assert Upload.read(plain + b"--XyZ--\r\n", TYPE + "; charset=utf-8").references() == ["file-1"]


@pytest.mark.parametrize("value, streams", [
    (b"true", True), (b" True\r\n", True), (b"1", True), (b"yes", True), (b"on", True), (b"T", True), (b"y", True),
    (b"false", False), (b"0", False), (b"", False), (b"no", False), (b"off", False), (b"F", False),
])
def test_a_stream_asked_for_in_any_spelling_a_reader_takes_is_seen(value: bytes, streams: bool) -> None:
    """Only `true` and `1` were seen: a pydantic reader (`yes`, `on`, `t`, `y`) or Go's (`T`) streamed."""
    assert Upload.read(part('form-data; name="stream"', value) + b"--XyZ--", TYPE).streams is streams


@pytest.mark.parametrize("method, path, where", [
    ("POST", "responses/compact", ("responses", None, "compact")),
    ("POST", "responses/input_tokens", ("responses", None, "input_tokens")),
    ("POST", "threads/runs", ("threads", None, "runs")),
    ("GET", "responses/compact", ("responses", "compact", None)),  # any other method: an object (no one's)
    ("DELETE", "threads/runs", ("threads", "runs", None)),
    ("POST", "responses/compact/x", ("responses", "compact", None)),
    ("POST", "responses/Compact", ("responses", "Compact", None)),
    ("POST", "files/compact", ("files", "compact", None)),
    ("POST", "responses/resp_1/cancel", ("responses", "resp_1", None)),
    ("POST", "videos/edits", ("videos", None, "edits")),
    ("POST", "videos/extensions", ("videos", None, "extensions")),
    ("GET", "videos/edits", ("videos", "edits", None)),
    ("GET", "videos/characters/char_1", ("videos/characters", "char_1", None)),
])
def test_a_collections_own_calls_name_no_object(method: str, path: str, where: tuple[str, str | None, str | None]) -> None:
    """`/v1/responses/compact` was read as the response `compact`: no user's, a 404 every time."""
    found = classify(path.split("/"), method)
    assert (found.collection, found.object_id, found.action) == where
    # (a thread's run made with its thread, `threads/runs`, is no one's: its thread is the caller's)
    assert found.creates(method, path.split("/")) is (where[2] is not None and path != "threads/runs")
    assert not found.is_collection


def test_the_thread_a_run_was_created_with_is_its_callers() -> None:
    runs = classify(["threads", "runs"], "POST")
    assert runs.created_along({"id": "run_1", "thread_id": "thread_1"}) == [("thread_1", None)]
    assert runs.created_along({"id": "run_1"}) == runs.created_along(None) == []
    assert classify(["responses", "compact"], "POST").created_along({"thread_id": "thread_1"}) == []


@pytest.mark.parametrize("disposition", [
    'form-data; name="fi\\le_id"', 'form-data; name="\\\\file_id"', 'form-data; name="file_id"x', 'form-data; name=file_id"',
    'form-data; name=file_id\\', 'form-data; name=file_id x', 'form-data; name = file_id', 'attachment; name="file_id"',
    'form-data; name="a"; filename="x\\"y"', 'form-data; x="\\"; name=file_id; y="; name="a"',
])
def test_a_part_is_named_plainly(disposition: str) -> None:
    """A name aiohttp or werkzeug reads otherwise than Python's email package (`fi\\le_id` is their
    `file_id`), or a value an escaped quote may end, is malformed: the part could be an id field there."""
    with pytest.raises(MalformedUpload, match="Content-Disposition"):
        Upload.read(part(disposition, b"file-alice") + b"--XyZ--\r\n", TYPE)


@pytest.mark.parametrize(("disposition", "name", "is_file"), [
    ('form-data; name="file"; filename="a \\\\ b.txt"', "file", True),  # httpx, requests, Go: a backslash doubled
    ("form-data;name=purpose", "purpose", False), ('FORM-DATA; NAME="file_ids[]"; filename="a;b.txt";', "file_ids[]", True),
    ('form-data; name="file"; filename="\xc3\xa9.txt"', "file", True),  # a browser's UTF-8 filename, as Latin-1 text
])
def test_a_part_named_plainly_is_read(disposition: str, name: str, is_file: bool) -> None:
    upload = Upload.read(part(disposition, b"x") + b"--XyZ--\r\n", TYPE)
    assert upload.parts == ((name, b"x", is_file),)


@pytest.mark.parametrize("name", ["file[]", "file[0]"])
def test_a_batch_input_is_one_file_however_it_is_named(name: str) -> None:
    """A `file[]` beside the `file` of a batch input went unread (a file on a field the call takes
    files on), while a reader that takes `image[]` as one of the files on `image` may store it as
    the batch input: the upload is malformed, as one with two `file` parts is."""
    checked = b'{"custom_id": "1", "body": {"model": "gpt-4o-mini", "messages": []}}\n'
    upload = Upload.read(part('form-data; name="purpose"', b"batch") + part(
        'form-data; name="file"; filename="a.jsonl"', checked) + b"--XyZ--\r\n", TYPE)
    assert upload.batch_input() == checked
    with pytest.raises(MalformedUpload, match="exactly one file"):
        Upload.read(part('form-data; name="purpose"', b"batch") + part('form-data; name="file"; filename="a.jsonl"', checked)
                    + part(f'form-data; name="{name}"; filename="b.jsonl"', b'{"file_id": "file-alice"}\n')
                    + b"--XyZ--\r\n", TYPE).batch_input()


@pytest.mark.parametrize("line_break", [b"\n", b"\r"])
def test_a_delimiter_follows_only_a_crlf(line_break: bytes) -> None:
    """werkzeug reads a delimiter after any line break: a part hidden after a bare LF or CR, data
    here, would be a field there."""
    hidden = line_break + b'--XyZ' + line_break + b'Content-Disposition: form-data; name="file_id"' + line_break * 2
    with pytest.raises(MalformedUpload, match="only after a CRLF"):
        Upload.read(part('form-data; name="note"', b"x" + hidden + b"file-alice") + b"--XyZ--\r\n", TYPE)
    assert Upload.read(part('form-data; name="note"', b"x\n-XyZ\r--Xy") + b"--XyZ--\r\n", TYPE).values("note")


def test_files_an_answer_made_along_are_its_callers_as_files_are() -> None:
    """A batch's output and error files, a fine-tuning job's result files, an upload's file — kept as
    files are, whatever the answer's own collection keeps; the object itself only when it was made."""
    job = {"id": "ftjob-1", "result_files": ["file-r1", "file-r2", 3], "output_file_id": None}
    assert created_ids(job, creating=False, ttl=None) == [("file-r1", None), ("file-r2", None)]
    batch = {"id": "batch_1", "output_file_id": "file-o", "error_file_id": "file-e"}
    assert created_ids(batch, creating=True, ttl=5.0) == [("batch_1", 5.0), ("file-o", None), ("file-e", None)]
    upload = {"id": "upload_1", "file": {"id": "file-u"}, "output_file_id": {"id": "file-x"}}
    assert created_ids(upload, creating=False, ttl=2 * DAY) == [("file-u", None)]


def test_a_batch_input_rewritten_is_written_back_from_what_was_read() -> None:
    """Each line goes as `rewrite` made it, written from what was read (orjson; the `json` module for
    what orjson does not write), blank lines left out, ending in a line break if the input did."""
    odd = ANY % '["\\ud800", 123456789012345678901234567890, "caf\u00e9 \U0001F600"]'.encode()  # `json` alone reads it
    deep = ANY % (b"[" * 300 + b"]" * 300)
    content = b"\r\n".join([LINE % b"a", b"  ", odd, deep]) + b"\r\n"
    read = read_batch_input(content, offered=OFFERED, rewrite=lambda request: {**request, "seen": True})
    lines = read.content.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 4
    assert [json.loads(line) for line in lines[:-1]] == [
        {**json.loads(line), "seen": True} for line in (LINE % b"a", odd, deep)]
    # UTF-8 but the lone surrogate (as its escape): not every non-ASCII character escaped (3 times the size)
    assert '["\\ud800",123456789012345678901234567890,"caf\u00e9 \U0001F600"]'.encode() in lines[1]
    assert read_batch_input(LINE % b"a", offered=OFFERED, rewrite=dict).content == orjson.dumps(json.loads(LINE % b"a"))
    assert read_batch_input(content, offered=OFFERED).content == content  # without `rewrite`: as it came


def test_a_measured_batch_input_counts_the_contexts_its_lines_continue() -> None:
    """A line the provider runs as Responses (its `url`, or one Sentinel does not know) continuing a
    stored response or a conversation reads its context again: counted per line; a chat line's
    `previous_response_id` is read by no endpoint it names (the provider refuses or ignores it)."""
    def line(url: str, **body: object) -> bytes:
        return orjson.dumps({"custom_id": "1", "method": "POST", "url": url,
                             "body": {"model": "gpt-4o-mini", "input": "x", **body}})

    content = b"\n".join([
        line("/v1/responses", previous_response_id="resp_1"),
        line("/v1/responses", previous_response_id="resp_1", conversation={"id": "conv_1"}),
        line("/v1/unknown", conversation="conv_1"),
        line("/v1/chat/completions", previous_response_id="resp_1"),
    ])
    read = read_batch_input(content, offered=OFFERED, measure=lambda url, body: (1, 1))
    assert read.continues == {"resp_1": 2, "conv_1": 2}
    assert read_batch_input(content, offered=OFFERED).continues == {}  # (counted only when measured)


def test_the_objects_a_batch_input_continues_are_bounded_by_its_references() -> None:
    """A batch input of 50,000 lines, each continuing a different response, never makes a multi-MB
    record of what it continues (kept with its vouch, `Ownership.vouch_batch_input`): every id
    continued is one the input names, at most MAX_REFERENCES in all (a 400 past that), each one the
    caller owns (at most 200 characters): its `continues` stays under ~0.25 MB."""
    def line(response: str) -> bytes:
        return orjson.dumps({"custom_id": "1", "method": "POST", "url": "/v1/responses",
                             "body": {"model": "gpt-4o-mini", "input": "x", "previous_response_id": response}})

    ids = [f"resp_{n:0196d}" for n in range(MAX_REFERENCES + 1)]  # 200 characters each
    with pytest.raises(TooManyReferences):
        read_batch_input(b"\n".join(map(line, ids)), offered=OFFERED, measure=lambda url, body: (1, 1))
    read = read_batch_input(b"\n".join(line(ids[n % MAX_REFERENCES]) for n in range(MAX_BATCH_LINES)),
                            offered=OFFERED, measure=lambda url, body: (1, 1))
    assert len(read.continues) == MAX_REFERENCES and set(read.continues.values()) == {50}
    assert len(orjson.dumps(list(read.continues.items()))) < 256 * 1024


def test_an_uploads_values_are_written_in_their_parts_place() -> None:
    """`with_values` replaces the values it is given, every other byte as it came; a value holding the
    delimiter (it would end its part early) is refused."""
    body = (part('form-data; name="purpose"', b"batch")
            + part('form-data; name="file"; filename="a.jsonl"', b"line\r\n--Xy\r\n", "Content-Type: application/jsonl")
            + part('form-data; name="user[]"', b"bob") + b"--XyZ--\r\n")
    upload = Upload.read(body, TYPE)
    assert [body[start:end] for start, end in upload.spans] == [b"batch", b"line\r\n--Xy\r\n", b"bob"]
    assert upload.named("user".__eq__) == [2] and upload.batch_file() == 1
    written = upload.with_values(body, TYPE, {1: b"other\r\n", 2: b"p"})
    assert written == body.replace(b"line\r\n--Xy\r\n", b"other\r\n").replace(b"\r\n\r\nbob", b"\r\n\r\np")
    assert upload.with_values(body, TYPE, {}) is body
    with pytest.raises(MalformedUpload, match="boundary"):
        upload.with_values(body, TYPE, {2: b"p\r\n--XyZ--\r\n"})


def test_a_part_whose_own_content_length_is_not_its_length_is_malformed() -> None:
    """aiohttp's reader trusts a part's Content-Length: `Content-Length: 3` on a part whose value is
    `bob\\r\\n--XyZ\\r\\n...` reads other bytes than the ones between the delimiters Sentinel read (a
    field it never saw). A part may give its length only as its value's; a value Sentinel writes of
    another length (the end user's pseudonym) then fails the reading back, a 400."""
    value = b"bob"
    sized = part('form-data; name="user"', value, "Content-Length: 3") + b"--XyZ--\r\n"
    upload = Upload.read(sized, TYPE)
    assert upload.parts[0][1] == b"bob"
    for wrong in ("Content-Length: 2", "Content-Length: 30", "Content-Length: x", "Content-Length: +3"):
        with pytest.raises(MalformedUpload, match="Content-Length"):
            Upload.read(part('form-data; name="user"', value, wrong) + b"--XyZ--\r\n", TYPE)
    with pytest.raises(MalformedUpload, match="Content-Length"):
        Upload.read(part('form-data; name="user"', value, "Content-Length: 3", "Content-Length: 3") + b"--XyZ--\r\n",
                    TYPE)
    with pytest.raises(MalformedUpload):
        upload.with_values(sized, TYPE, {0: b"pseudonym-0123"})


def test_items_named_by_id_are_references() -> None:
    """A Responses `item_reference` (anywhere), an item given with its `id` in an `input` or `items`
    list (the provider reads the stored item of that id), an MCP approval's request: each names an
    item, which must be the caller's. A message without an id, or a `type` that is no string, names none."""
    body = {"model": "m", "input": [
        {"role": "user", "content": "hi"}, {"type": "item_reference", "id": "msg_1"},
        {"type": "reasoning", "id": "rs_1", "summary": []}, {"type": "function_call_output", "call_id": "call_1"},
        {"type": "mcp_approval_response", "approval_request_id": "mcpr_1", "approve": True},
        {"type": ["item_reference"], "id": "fc_1"}]}
    assert sorted(referenced_ids(body)) == ["fc_1", "mcpr_1", "msg_1", "rs_1"]
    assert referenced_ids({"items": [{"type": "message", "id": "msg_2", "role": "user", "content": "x"}]}) == ["msg_2"]
    line = {"custom_id": "1", "method": "POST", "url": "/v1/responses", "body": body}  # a batch line's too
    assert sorted(referenced_ids(line)) == ["fc_1", "mcpr_1", "msg_1", "rs_1"]
    assert referenced_ids({"model": "m", "messages": [{"role": "user", "content": "hi"}]}) == []


def test_the_items_an_answer_shows_become_its_callers_within_a_bound() -> None:
    response = {"id": "resp_1", "object": "response", "output": [{"type": "message", "id": "msg_1"},
                                                                  {"type": "function_call", "id": "fc_1"}, "x", {}]}
    assert answer_items(response, Items(31 * DAY)) == [("msg_1", 31 * DAY), ("fc_1", 31 * DAY)]
    listed = {"object": "list", "data": [{"id": f"msg_{i}"} for i in range(300)]}
    assert answer_items(listed, Items(None)) == [(f"msg_{i}", None) for i in range(MAX_ANSWER_ITEMS)]
    assert answer_items({"type": "message", "id": "msg_9"}, Items(None, own=True)) == [("msg_9", None)]
    assert answer_items("x", Items(None)) == answer_items({"id": "conv_1"}, Items(None)) == []


@pytest.mark.parametrize("method, path, shown", [
    ("POST", "responses/compact", Items(31 * DAY)), ("GET", "responses/resp_1", Items(31 * DAY)),
    ("GET", "responses/resp_1/input_items", Items(31 * DAY)), ("DELETE", "responses/resp_1", None),
    ("GET", "conversations/conv_1/items", Items(None, parent="conv_1")),
    ("POST", "conversations/conv_1/items", Items(None, parent="conv_1")),
    ("GET", "conversations/conv_1/items/msg_1", Items(None, own=True, parent="conv_1")),
    ("DELETE", "conversations/conv_1/items/msg_1", None),
    ("POST", "conversations", None), ("GET", "files/file-1", None),
])
def test_the_calls_whose_answers_show_items(method: str, path: str, shown: Items | None) -> None:
    segments = path.split("/")
    assert items_shown(classify(segments, method), method, segments) == shown
    item = conversation_item(classify(segments, method), segments)
    assert item == ("msg_1" if path == "conversations/conv_1/items/msg_1" else None)


def scanned(body: bytes, items: Items, size: int) -> list[tuple[str, float | None]]:
    """What an `ItemScanner` reads from `body` fed in chunks of `size` bytes."""
    scanner = ItemScanner(items)
    for at in range(0, len(body), size):
        scanner.feed(body[at : at + size])
    return scanner.claims


def _answer(text: str, result: str = "iVBORw0KGgo" * 20) -> dict[str, object]:
    return {
        "id": "resp_1", "object": "response", "instructions": 'be "id":"msg_i"',
        "output": [
            {"type": "image_generation_call", "id": "ig_1", "status": "completed", "result": result},
            {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": text, "annotations": [{"id": "nested_1"}]}]},
            {"type": "function_call", "call_id": "call_1", "arguments": '{"id": "msg_args"}', "id": "fc_1"},
        ],
        "prompt": {"id": "pmpt_1"}, "conversation": {"id": "conv_1"},
        "tools": [{"type": "function", "name": "f", "parameters": {"const": {"id": "msg_schema"}}}],
        "usage": {"input_tokens": 1}, "metadata": {"id": "msg_victim", "other": "x"},
    }


FORGERIES = [
    'plain "id":"msg_victim"', '\\"id\\":\\"msg_victim\\"', "\\", "\\\\" * 300 + '"id":"msg_victim"',
    '\\"' * 200 + '", "id": "msg_victim', "}]}, {\"id\": \"msg_victim\"}",
]


@pytest.mark.parametrize("text", FORGERIES)
@pytest.mark.parametrize("pretty", [False, True], ids=["compact", "indented"])
def test_a_large_answers_items_are_read_as_its_bytes_pass(text: str, pretty: bool) -> None:
    """The ids a large answer's bytes show, chunked anyhow, are its items' own (`answer_items` of it
    parsed): never one the model wrote in a text (escaped quotes, backslash runs across chunks),
    nor one nested in an item, nor one of an object the caller gave and the provider echoes (the
    `metadata`, a tool's schema, a prompt's id)."""
    answer = _answer(text)
    body = json.dumps(answer, indent=2).encode() if pretty else orjson.dumps(answer)
    expected = answer_items(answer, Items(31 * DAY))
    assert [i for i, _ in expected] == ["ig_1", "msg_1", "fc_1"]
    for size in (1, 2, 3, 7, 64, 301, 513, len(body)):
        assert scanned(body, Items(31 * DAY), size) == expected, size


def test_a_large_lists_items_and_a_large_item_are_read() -> None:
    """A list's `data` (a response's input items, a conversation's) and an item read on its own
    (`own`), however long its strings — a 1 MB one, escapes split between chunks."""
    result = ("A" * 65_536 + "\\\\\\\"") * 16
    listed = orjson.dumps({"object": "list", "data": [{"id": "msg_a", "content": result}, {"id": "msg_b"}],
                           "first_id": "msg_a", "last_id": "msg_b", "has_more": False})
    one = orjson.dumps({"id": "msg_own", "type": "message", "content": [{"id": "nested"}], "text": result})
    for size in (1000, 4096, 65_537):
        assert scanned(listed, Items(None), size) == [("msg_a", None), ("msg_b", None)]
        assert scanned(one, Items(None, own=True), size) == [("msg_own", None)]
        assert scanned(one, Items(None), size) == []  # a response's: its own id is no item


def test_a_large_answer_gives_at_most_so_many_items() -> None:
    """Past MAX_ANSWER_ITEMS ids, the rest of the answer is not read (those items stay unowned); an
    id over 200 characters is none."""
    output = [{"id": f"msg_{i}"} for i in range(MAX_ANSWER_ITEMS + 10)]
    body = orjson.dumps({"output": [{"id": "x" * 201}, *output]})
    assert [i for i, _ in scanned(body, Items(None), 100)] == [f"msg_{i}" for i in range(MAX_ANSWER_ITEMS)]
