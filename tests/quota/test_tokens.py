"""Token counting: real offline encodings, OpenAI's chat overhead, and every fallback path."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tiktoken

from sentinel.quota import tokens
from sentinel.quota.estimate import estimate_input
from sentinel.quota.images import OPENAI_MAX_IMAGE_TOKENS
from sentinel.quota.tokens import (
    BYTE_ESTIMATE,
    CL100K,
    ENTRY_CHARS,
    MOST_COUNTED_CHARS,
    O200K,
    EncodingUnavailable,
    InputCounts,
    StreamTextAccumulator,
    TokenCounter,
    encoding_for_model,
    estimate_tokens,
    load_encoding,
)
from tests.support.payloads import WEATHER_TOOL

# The example from OpenAI's cookbook "How to count tokens with tiktoken": 129 prompt tokens for the
# gpt-4 / gpt-3.5-turbo-0613 family, 124 for gpt-4o (as the API reports them).
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more time to touch base on opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, wanted: str, used: str) -> None:
        self.calls.append((wanted, used))


def only(*available: str):  # noqa: ANN201
    """A loader that has only the named encodings; counts how often each name was loaded."""
    loads: dict[str, int] = {}

    def loader(name: str) -> tiktoken.Encoding:
        loads[name] = loads.get(name, 0) + 1
        if name not in available:
            raise EncodingUnavailable(name)
        return load_encoding(name)

    loader.loads = loads  # type: ignore[attr-defined]
    return loader


def test_cl100k_loads_offline_with_known_ids() -> None:
    enc = load_encoding(CL100K)
    assert enc.encode_ordinary("hello world") == [15339, 1917]
    assert enc.encode_ordinary("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]


def test_o200k_loads_offline_with_known_ids() -> None:
    enc = load_encoding(O200K)
    assert enc.encode_ordinary("tiktoken is great!") == [83, 8251, 2488, 382, 2212, 0]
    assert enc.n_vocab == 200019


@pytest.mark.parametrize("name", [CL100K, O200K])
def test_specs_match_tiktoken(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Our copies of the regex and special tokens must equal tiktoken's own definitions.
    from tiktoken_ext import openai_public

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", lambda *a, **k: {})
    theirs = getattr(openai_public, name)()
    spec = tokens._SPECS[name]
    assert spec.pat_str == theirs["pat_str"]
    assert dict(spec.special_tokens) == theirs["special_tokens"]


def test_unknown_encoding_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(EncodingUnavailable):
        load_encoding("p50k_base", [tmp_path])
    # A file with the wrong hash is skipped; the verified bundled copy is used instead.
    (tmp_path / "cl100k_base.tiktoken").write_bytes(b"aGVsbG8= 0\n")
    assert load_encoding(CL100K, [tmp_path]).encode_ordinary("hello world") == [15339, 1917]


def test_search_dir_file_is_used_when_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundled = next(p / "data" / "cl100k_base.tiktoken" for p in tokens._package_dirs("tiktoken_ext"))
    (tmp_path / "cl100k_base.tiktoken").write_bytes(bundled.read_bytes())
    monkeypatch.setattr(tokens, "_package_dirs", lambda package: [])
    assert load_encoding(CL100K, [tmp_path]).encode_ordinary("hello world") == [15339, 1917]
    with pytest.raises(EncodingUnavailable):
        load_encoding(CL100K, [])


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", O200K),
        ("gpt-4o-mini-2024-07-18", O200K),
        ("chatgpt-4o-latest", O200K),
        ("gpt-4.1-nano", O200K),
        ("gpt-5", O200K),
        ("gpt-5.1-codex", O200K),
        ("o1-mini", O200K),
        ("o3", O200K),
        ("o4-mini", O200K),
        ("openai/gpt-4o", O200K),
        ("ft:gpt-4o-mini:acme::abc", O200K),
        ("gpt-4", CL100K),
        ("gpt-4-turbo", CL100K),
        ("gpt-3.5-turbo-0125", CL100K),
        ("text-embedding-3-small", CL100K),
        ("text-embedding-ada-002", CL100K),
        ("claude-3-5-sonnet", None),
        ("o1x", None),
    ],
)
def test_encoding_for_model(model: str, expected: str | None) -> None:
    assert encoding_for_model(model) == expected
    assert TokenCounter().encoding_for_model(model) == (expected or CL100K)


def test_cookbook_chat_counts() -> None:
    hook = Recorder()
    counter = TokenCounter(on_fallback=hook)
    assert counter.count_chat(COOKBOOK_MESSAGES, "gpt-4-0613") == 129
    assert counter.count_chat(COOKBOOK_MESSAGES, "gpt-4o") == 124
    assert hook.calls == []  # exact counts are not approximations


def test_tool_call_arguments_given_as_an_object_are_counted() -> None:
    """A translation to Anthropic accepts `arguments` as a JSON object and sends it as the tool
    call's input, which is billed: it counted as nothing (39 tokens estimated for ~54 KB sent)."""
    counter = TokenCounter()
    notes = "lorem ipsum dolor sit amet " * 400
    as_object = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": {"notes": notes}}}]}]
    as_text = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": json.dumps({"notes": notes})}}]}]
    counted = counter.count_chat(as_object, "gpt-4o")
    assert counted > 2000 and abs(counted - counter.count_chat(as_text, "gpt-4o")) < 10, counted


def test_a_tool_calls_id_longer_than_a_real_one_is_counted() -> None:
    """An assistant's `tool_calls[].id` went uncounted whatever its length (the tool message's
    `tool_call_id` is counted): 40 KB of id, sent on by a translation as the `tool_use.id`, was free
    in the estimate a cut stream is charged. A real id's length adds nothing."""
    counter = TokenCounter()

    def messages(call_id: str) -> list[dict[str, object]]:
        return [{"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]

    plain = counter.count_chat(messages("call_" + "a" * 24), "gpt-4o")
    assert counter.count_chat(messages("call_" + "b" * 24), "gpt-4o") == plain
    long_id = "lorem ipsum dolor sit amet " * 1500
    assert counter.count_chat(messages(long_id), "gpt-4o") >= plain + counter.count_text(long_id, "gpt-4o") > plain + 5000


def test_chat_overhead_formula() -> None:
    counter = TokenCounter()
    t = lambda s: counter.count_text(s, "gpt-4")  # noqa: E731
    assert counter.count_chat([], "gpt-4") == 3
    assert counter.count_chat([{"role": "user", "content": "hello world"}], "gpt-4") == 3 + 3 + t("user") + 2
    messages = [
        {
            "role": "user",
            "name": "bob",
            "content": [{"type": "text", "text": "hi there"}, {"type": "image_url"}],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    expected = 3
    expected += 3 + t("user") + t("hi there") + t("bob") + 1 + OPENAI_MAX_IMAGE_TOKENS  # an image with no URL
    expected += 3 + t("assistant") + t("get_weather") + t('{"city":"Paris"}')
    expected += 3 + t("tool") + t("c1") + t("sunny")
    assert counter.count_chat(messages, "gpt-4") == expected
    assert t("get_weather") > 0 and t('{"city":"Paris"}') > 0


def test_tools_are_counted() -> None:
    counter = TokenCounter()
    messages = [{"role": "user", "content": "weather?"}]
    tools = [WEATHER_TOOL]
    bare = counter.count_chat(messages, "gpt-4o")
    with_tools = counter.count_chat(messages, "gpt-4o", tools=tools)
    as_json = json.dumps(tools, separators=(",", ":"), ensure_ascii=False)
    assert with_tools == bare + counter.count_text(as_json, "gpt-4o")
    assert with_tools - bare > 20


def test_count_prompt_shapes() -> None:
    counter = TokenCounter()
    assert counter.count_prompt("hello world", "gpt-3.5-turbo-instruct") == 2
    assert counter.count_prompt(["hello world", "hello"], "gpt-4") == 3
    assert counter.count_prompt([15339, 1917, 0], "gpt-4") == 3
    assert counter.count_prompt([[1, 2], [3]], "gpt-4") == 3
    assert counter.count_prompt(None, "gpt-4") == 0


def test_o200k_unavailable_falls_back_to_cl100k() -> None:
    hook = Recorder()
    loader = only(CL100K)
    counter = TokenCounter(loader=loader, on_fallback=hook)
    assert counter.count_text("tiktoken is great!", "gpt-4o") == 6
    assert counter.count_text("hello world", "gpt-4o") == 2
    assert hook.calls == [(O200K, CL100K), (O200K, CL100K)]
    assert loader.loads == {O200K: 1, CL100K: 1}  # a failed load is remembered, not retried


def test_unknown_model_reports_approximation() -> None:
    hook = Recorder()
    counter = TokenCounter(on_fallback=hook)
    assert counter.count_text("hello world", "claude-3-5-sonnet") == 2
    assert hook.calls == [("unknown", CL100K)]


def test_byte_estimate_when_nothing_loads() -> None:
    hook = Recorder()
    counter = TokenCounter(loader=only(), on_fallback=hook)
    assert counter.count_text("hello world", "gpt-4") == 3  # 11 bytes -> ceil(11 / 4)
    assert counter.count_text("日本", "gpt-4o") == 2  # 6 UTF-8 bytes
    assert counter.count_chat([{"role": "user", "content": "abcd"}], "gpt-4") == 3 + 3 + 1 + 1
    assert hook.calls == [(CL100K, BYTE_ESTIMATE), (O200K, BYTE_ESTIMATE), (CL100K, BYTE_ESTIMATE)]


def test_loader_errors_other_than_unavailable_also_fall_back() -> None:
    def broken(name: str) -> tiktoken.Encoding:
        raise ValueError("hash mismatch")

    assert TokenCounter(loader=broken).count_text("abcdefgh", "gpt-4") == 2


def test_concurrent_threads_load_once_and_agree() -> None:
    loader = only(CL100K, O200K)
    counter = TokenCounter(loader=loader)
    start = threading.Barrier(8)

    def work(i: int) -> int:
        start.wait()
        return counter.count_text("tiktoken is great! " * 50, "gpt-4o" if i % 2 else "gpt-4")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    assert loader.loads == {CL100K: 1, O200K: 1}
    assert len(set(results[0::2])) == 1 and len(set(results[1::2])) == 1


def test_stream_accumulator_counts_joined_text() -> None:
    counter = TokenCounter()
    acc = StreamTextAccumulator(counter, "gpt-4")
    for delta in ["hel", "lo wor", None, "", "ld"]:
        acc.add(delta)
    assert acc.text == "hello world"
    assert acc.count() == 2  # per-delta counting would give more
    assert sum(counter.count_text(d, "gpt-4") for d in ["hel", "lo wor", "ld"]) > 2


# --- remembered counts of long input texts (InputCounts) ------------------------------------------

LONG = "You are the support assistant of ACME Corp. Cite the policy section you rely on. " * 8  # > 256 chars


def test_a_users_long_text_is_encoded_once_and_counted_the_same() -> None:
    counter = TokenCounter()
    messages = [{"role": "system", "content": LONG}, {"role": "user", "content": "hi"}]
    fresh = TokenCounter().count_chat(messages, "gpt-4o")
    assert counter.count_chat(messages, "gpt-4o", user="alice") == fresh
    assert (counter.inputs.hits, counter.inputs.misses, len(counter.inputs)) == (0, 1, 1)  # "hi", "system" are short
    assert counter.count_chat(messages, "gpt-4o", user="alice") == fresh
    assert counter.inputs.hits == 1 and len(counter.inputs) == 1
    # The same text under another encoding is another count.
    assert counter.count_text(LONG, "gpt-4", user="alice") == TokenCounter().count_text(LONG, "gpt-4")
    assert counter.inputs.misses == 2


def test_remembered_counts_are_per_user_and_only_for_inputs() -> None:
    counter = TokenCounter()
    counter.count_text(LONG, "gpt-4o", user="alice")
    counter.count_text(LONG, "gpt-4o", user="bob")  # bob's request cannot reveal what alice sent
    assert (counter.inputs.hits, counter.inputs.misses) == (0, 2)
    counter.count_text(LONG, "gpt-4o")  # no user (an answer's text): neither looked up nor kept
    assert (counter.inputs.hits, counter.inputs.misses, len(counter.inputs)) == (0, 2, 2)


def test_every_input_estimate_names_the_user() -> None:
    counter = TokenCounter()
    bodies = {
        "chat": {"messages": [{"role": "user", "content": LONG}]},
        "completions": {"prompt": LONG},
        "embeddings": {"input": [LONG]},
        "responses": {"instructions": LONG, "input": [{"role": "user", "content": LONG}]},
        "messages": {"system": LONG, "messages": [{"role": "user", "content": [{"type": "text", "text": LONG}]}]},
    }
    for endpoint, body in bodies.items():
        before = counter.inputs.hits + counter.inputs.misses
        first = estimate_input(counter, endpoint, "gpt-4o", body, user="alice")
        assert estimate_input(counter, endpoint, "gpt-4o", body, user="alice") == first
        assert first == estimate_input(TokenCounter(), endpoint, "gpt-4o", body), endpoint
        assert counter.inputs.hits + counter.inputs.misses > before, endpoint


def test_the_least_recently_used_texts_go_first_within_the_budget() -> None:
    calls: list[str] = []
    inputs = InputCounts(budget_chars=1000 + 2 * ENTRY_CHARS, min_chars=10, max_chars=600)
    count = inputs.wrap("alice", CL100K, lambda text: calls.append(text) or len(text))
    a, b, c = "a" * 400, "b" * 400, "c" * 400
    assert [count(a), count(b), count(a)] == [400, 400, 400]
    assert calls == [a, b] and inputs.chars == 800 + 2 * ENTRY_CHARS
    count(c)  # over budget: b (least recently used) goes
    assert inputs.chars == 800 + 2 * ENTRY_CHARS and len(inputs) == 2
    count(a)
    count(b)
    assert calls == [a, b, c, b]
    count("d" * 700)  # longer than max_chars: counted, never kept
    count("short")  # shorter than min_chars: the same
    assert len(inputs) == 2 and inputs.chars == 800 + 2 * ENTRY_CHARS


def test_many_short_texts_are_bounded_by_their_entries_too() -> None:
    inputs = InputCounts(budget_chars=100 * (10 + ENTRY_CHARS), min_chars=1)
    count = inputs.wrap("alice", CL100K, len)
    for i in range(1_000):
        count(f"{i:010d}")
    assert len(inputs) == 100


def test_remembered_counts_are_safe_across_threads() -> None:
    inputs = InputCounts(budget_chars=20_000, min_chars=1, max_chars=1_000)
    count = inputs.wrap("alice", CL100K, len)
    texts = [str(i) * (50 + i % 200) for i in range(400)]

    def work(offset: int) -> list[int]:
        return [count(texts[(offset + i) % len(texts)]) for i in range(2_000)]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(4)))
    for offset, got in enumerate(results):
        assert got == [len(texts[(offset + i) % len(texts)]) for i in range(2_000)]
    assert inputs.chars == sum(len(text) + ENTRY_CHARS for (_, _, text) in inputs._counts) <= 20_000


def test_role_counts_are_remembered_per_encoding_and_stay_exact() -> None:
    counter = TokenCounter()
    # "研究者" is 6 tokens in cl100k and 2 in o200k: a count remembered for one encoding is not the other's
    messages = [{"role": "研究者", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert counter.count_text("研究者", "gpt-4") != counter.count_text("研究者", "gpt-4o")
    for model in ("gpt-4", "gpt-4o"):  # cl100k and o200k: each its own counts
        t = lambda s, m=model: counter.count_text(s, m)  # noqa: E731
        expected = 3 + (3 + t("研究者") + t("be brief")) + (3 + t("user") + t("hi"))
        assert counter.count_chat(messages, model) == expected
        assert counter.count_chat(messages, model) == expected  # the second time from the remembered roles


def test_remembered_roles_are_bounded_and_odd_roles_still_count() -> None:
    counter = TokenCounter()
    long_role = "an invented role " * 10  # longer than MAX_REMEMBERED_ROLE_CHARS
    roles = [f"role-{i}" for i in range(tokens.MAX_REMEMBERED_ROLES * 2)] + [long_role]
    messages = [{"role": role, "content": ""} for role in roles]
    expected = 3 + sum(3 + counter.count_text(role, "gpt-4") for role in roles)
    assert counter.count_chat(messages, "gpt-4") == expected
    assert counter.count_chat(messages, "gpt-4") == expected
    remembered = counter._roles[tokens.CL100K]
    assert len(remembered) == tokens.MAX_REMEMBERED_ROLES
    assert long_role not in remembered


def test_a_models_encoding_is_resolved_once_bounded_and_counts_stay_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """`count_text` resolved the model's encoding on every call (~30 µs: a body of 99,000 one-word blocks
    was seconds of a counting thread): it is remembered per model name, at most MAX_RESOLVED_MODELS of
    them, and the counts and the fallback reports are what they were."""
    resolved: list[str] = []
    real = tokens.encoding_for_model
    monkeypatch.setattr(tokens, "encoding_for_model", lambda model: resolved.append(model) or real(model))
    hook = Recorder()
    counter = TokenCounter(on_fallback=hook)
    text = "tiktoken is great! 研究者"
    o200k, cl100k = load_encoding(O200K), load_encoding(CL100K)
    expected = {"gpt-4o": len(o200k.encode_ordinary(text)), "gpt-4": len(cl100k.encode_ordinary(text)),
                "claude-3-5-haiku-20241022": len(cl100k.encode_ordinary(text))}  # unknown: cl100k, reported
    assert expected["gpt-4o"] != expected["gpt-4"]
    for _ in range(3):
        for model, count in expected.items():
            assert counter.count_text(text, model) == count, model
            assert counter.count_text(text, model, user="alice") == count, model
    assert resolved == list(expected)  # once each
    assert hook.calls == [("unknown", CL100K)] * 6  # still reported on every count
    for i in range(tokens.MAX_RESOLVED_MODELS * 2 + 5):  # a model name is client text
        assert counter.count_text("word", f"gpt-4o-{i}") == 1
        assert len(counter._resolved) <= tokens.MAX_RESOLVED_MODELS
    for model, count in expected.items():  # forgotten, resolved again: the same counts
        assert counter.count_text(text, model) == count, model


def test_a_refusal_part_is_counted_like_text() -> None:
    counter = TokenCounter()
    words = " ".join(f"word{i}" for i in range(300))
    as_text = counter.count_chat([{"role": "assistant", "content": [{"type": "text", "text": words}]}], "gpt-4o")
    as_refusal = counter.count_chat([{"role": "assistant", "content": [{"type": "refusal", "refusal": words}]}], "gpt-4o")
    assert as_refusal == as_text > 300


def test_a_refusal_string_and_a_custom_tool_calls_input_are_counted() -> None:
    """Both are client text the provider bills as input: a top-level `refusal` and a custom tool
    call's `custom.input` counted as nothing (a stream cut before its usage was charged ~3 tokens
    for 100k of text)."""
    counter = TokenCounter()
    words = " ".join(f"word{i}" for i in range(300))
    as_text = counter.count_chat([{"role": "assistant", "content": words}], "gpt-4o")
    as_refusal = counter.count_chat([{"role": "assistant", "content": None, "refusal": words}], "gpt-4o")
    assert as_refusal == as_text > 300
    function = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "t1", "type": "function", "function": {"name": "grep", "arguments": words}}]}]
    custom = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "t1", "type": "custom", "custom": {"name": "grep", "input": words}}]}]
    assert counter.count_chat(custom, "gpt-4o") == counter.count_chat(function, "gpt-4o") > 300
    odd = [{"role": "assistant", "refusal": 7, "tool_calls": ["x", {"custom": {"name": 1, "input": None}}]}]
    assert counter.count_chat(odd, "gpt-4o") == counter.count_chat([{"role": "assistant"}], "gpt-4o")


def test_most_tokens_is_the_most_any_count_gives() -> None:
    """A file's text read at upload, before its model is known: the most of every encoding (and of a
    token per 4 bytes, the count when none loads); a very long one its bytes, never encoded."""
    counter = TokenCounter()
    for text in ("notes about the quarter " * 50, " " * 5000, "日本語のテキスト" * 100, ""):
        counts = [counter.count_text(text, model) for model in ("gpt-4o", "gpt-4", "claude-3-5-haiku")]
        assert counter.most_tokens(text) == max(*counts, estimate_tokens(text)), text[:20]
    assert TokenCounter(loader=_unavailable).most_tokens("abcdefghi") == 3
    long = "é" * (MOST_COUNTED_CHARS + 1)
    assert counter.most_tokens(long) == 2 * len(long) >= counter.count_text(long, "gpt-4")


def _unavailable(name: str) -> tiktoken.Encoding:
    raise EncodingUnavailable(name)
