"""Usage a read shows about runs apart from its answer's own `usage` (see `AnswerRelay.complete`).

An eval run reports the tokens its sampling model and its model graders used only per model
(`per_model_usage`), once it is done; an Assistants run shows its `usage` only on the run, while its
results are read through its thread's messages, which name it (`run_id`). Either is charged once,
to the first read that shows it done — the charge claimed (`Ownership.claim_charge`), recorded
under the run's key (`charge_id`) and then confirmed, shared by replicas, as a batch's or a run's
own `usage` is. An Assistants run a client cancels — after `requires_action` showed it the model's
tool calls, model output, with no `usage` yet — is read again by its cancel until it ended
(`until_ended`, bounded): its usage, written once it is `cancelled`, is charged on the cancel.

A run a client leaves in `requires_action` — its tool calls read, neither cancelled nor read again —
shows no usage to any read. So each step it shows so (its tool calls, told apart by their ids) is
charged by the first read showing it (`shown_steps`): the calls' names and arguments counted as
output with the run's model's tokenizer, and as input what the turn that wrote them read at least:
its `instructions` and `tools` as the run shows them, and the thread's messages it read — fetched at
Sentinel's cost (`FetchMessages`: the newest MESSAGES_PAGE), those up to the run's own (`turn_messages`)
—, claimed under the step's own key (`step_key`) as any object's charge, its tokens added to
the run's provisional usage (`Ownership.add_shown`). The run's usage, once a read shows it, is
charged beyond that input and output (`beyond_shown`: each never below zero) — the provider bills a
run abandoned there once it expires, with a usage a later read shows.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from sentinel.domain.catalogue import Prices
from sentinel.domain.usage import Usage
from sentinel.errors import StoreUnavailable
from sentinel.governance.ownership import ChargeClaim, Ownership
from sentinel.offload import count_off_loop
from sentinel.quota.meter import ModelUsage, ObjectCharge
from sentinel.quota.tokens import TokenCounter
from sentinel.quota.usage import named_model, per_model_usage, usage_from_body

log = logging.getLogger("sentinel.answers")

# Statuses after which a run's usage no longer changes (the OpenAI API's terminal ones).
EVAL_RUN_DONE = frozenset({"completed", "failed", "canceled"})
THREAD_RUN_DONE = frozenset({"completed", "failed", "cancelled", "incomplete", "expired"})
# The waits (seconds) before each further read of a run a client cancelled while it is still at work
# (`cancelling`: the provider writes its usage once it is `cancelled`, usually within a second): its
# cancel's answer waits 3.75 s at most, five reads of the run at Sentinel's cost.
CANCEL_WAITS = (0.25, 0.5, 1.0, 2.0)
# The most runs one read of a thread's messages fetches, of those it names that no read charged yet
# (runs left over are fetched by a later read, still uncharged).
MAX_FETCHED_RUNS = 20
# The most runs one read of a thread's messages names that are looked up (a page holds at most 100
# messages): runs charged already, however many, do not hide the others from charging.
MAX_NAMED_RUNS = 100
# A run id as the provider writes it (`run_abc123`): it goes into the path of the fetch.
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")

# The most messages of a thread a `requires_action` step's charge reads (`FetchMessages`: one page, the
# API's largest): a thread of more is counted on its newest ones.
MESSAGES_PAGE = 100

FetchRun = Callable[[str], Awaitable[Any]]  # a run of the thread read, by id: its JSON, None if unread
# A thread's newest MESSAGES_PAGE messages (`GET /v1/threads/{id}/messages?limit=100&order=desc`), by the
# thread's id, read at Sentinel's cost: the list's JSON, None if unread.
FetchMessages = Callable[[str], Awaitable[Any]]
Fetch = Callable[[], Awaitable[Any]]  # an object read at Sentinel's cost: its JSON, None if unread
Sleep = Callable[[float], Awaitable[None]]
PriceOf = Callable[[str], Prices | None]  # a model's prices by the name a provider reports, if known


@dataclass(frozen=True)
class ThreadRuns:
    """A read that shows an Assistants run's results but not its usage, which only the run reports:
    a thread's messages (the runs they name by `run_id`), or a run's steps (`run`, the one its path
    names: a tool's calls and outputs, a code interpreter's logs). `fetch`: a run of `thread` by id."""

    thread: str
    fetch: FetchRun
    run: str | None = None


class RunCharges:
    """Charges the runs a read shows done, once each (see the module docstring)."""

    def __init__(self, ownership: Ownership, prices: PriceOf, counter: TokenCounter | None = None) -> None:
        self.ownership = ownership
        self.prices = prices
        self.counter = counter or TokenCounter()  # a `requires_action` step's calls and input (`shown_steps`)

    async def eval_models(
        self, answer: Any, ttl: float | None, within: str | None = None
    ) -> tuple[list[ModelUsage], list[str]]:
        """The usage per model of the eval runs `answer` shows done (the run itself, or a list's
        `data`) whose usage no read charged yet (each part of its run's: `ModelUsage.of`), and those
        runs (claimed now, while their eval `within` is kept: `claim`; confirmed once their records
        are stored). A malformed entry of a run's `per_model_usage` is ignored, with one warning
        (the run is charged only once)."""
        parts: list[ModelUsage] = []
        runs: list[str] = []
        for run in _shown(answer, "eval.run"):
            run_id = run.get("id")
            if run.get("status") not in EVAL_RUN_DONE or not isinstance(run_id, str):
                continue
            claim = await self.claim(run_id, ttl, within)
            if claim == "charged":
                continue
            runs.append(run_id)
            usages, malformed = per_model_usage(run)
            if malformed:
                log.warning("an eval run's per_model_usage has entries Sentinel cannot read; they are not charged",
                            extra={"run_id": run_id[:100], "ignored": malformed})
            parts += [ModelUsage(model, usage, self.prices(model), of=run_id, counted=claim == "first")
                      for model, usage in usages.items()]
        return parts, runs

    async def eval_run_shown(
        self, eval_id: str, run_id: str, fetch: Fetch, ttl: float | None
    ) -> tuple[list[ModelUsage], list[str]]:
        """The usage per model of the eval run `run_id` of `eval_id` whose output items a read shows
        (its samples: the sampling model's answers, the graders' verdicts) — read without the run,
        whose `per_model_usage` alone reports what they cost —, when no read charged it yet: fetched
        (`fetch`) and claimed as a read of it would be (`eval_models`: the parts and the run claimed, to
        confirm once their records are stored). Nothing when it was charged,
        its fetch fails, it is not that eval's run, or it is not done (a later read fetches it again);
        a store that cannot say whether it was charged fetches nothing."""
        try:
            if not await self.ownership.uncharged([run_id]):
                return [], []
        except StoreUnavailable:
            self.ownership.outage.warning("the store is unavailable: an eval run whose output items were read was not charged")
            return [], []
        run = await fetch()
        if not (isinstance(run, dict) and run.get("object") == "eval.run" and run.get("id") == run_id
                and run.get("eval_id") == eval_id):
            return [], []
        return await self.eval_models(run, ttl, eval_id)

    async def unread_runs(
        self, named: list[str], read: ThreadRuns, ttl: float | None, messages: FetchMessages | None = None,
    ) -> tuple[list[ObjectCharge], list[str]]:
        """The charges (`ObjectCharge`) of the Assistants runs of `read` — the one its path names, or
        `named` (`named_runs` of the messages an answer shows, `RunIdScanner.named` of one too large
        to parse) — that no read charged yet (MAX_FETCHED_RUNS at most, the first: runs charged
        already never take their place), fetched (`read.fetch`) and claimed when done, and every
        run claimed (those done without a usage too: confirmed with the others once their records
        are stored). A run whose fetch fails, that is not of the thread, or not done yet, stays
        uncharged (a later read fetches it again); a store that cannot say which runs were charged
        fetches none (each read would charge them again). A fetched run waiting in `requires_action`
        is charged the steps it shows (`shown_steps`, with `messages`): a read of its steps shows their
        tool calls too."""
        thread, fetch = read.thread, read.fetch
        if read.run is not None:
            named = [read.run] if _RUN_ID.fullmatch(read.run) else []
        if not named:
            return [], []
        try:
            unread = (await self.ownership.uncharged(named))[:MAX_FETCHED_RUNS]
        except StoreUnavailable:
            self.ownership.outage.warning("the store is unavailable: runs a thread's messages name were not charged")
            return [], []
        charges: list[ObjectCharge] = []
        claimed: list[str] = []
        waiting: list[dict[str, Any]] = []  # runs in `requires_action`: their steps (`shown_steps`)
        for run_id, run in zip(unread, await asyncio.gather(*map(fetch, unread)), strict=True):
            if not (isinstance(run, dict) and run.get("id") == run_id and run.get("thread_id") == thread):
                continue
            if run.get("status") == "requires_action":
                waiting.append(run)
            if run.get("status") not in THREAD_RUN_DONE:
                continue
            claim = await self.claim(run_id, ttl, thread)
            if claim == "charged":
                continue
            claimed.append(run_id)
            shown = usage_from_body("runs", run)
            if shown is None and _malformed(run.get("usage")):
                log.warning("a run's usage is malformed; it is not charged", extra={"run_id": run_id})
            if shown is not None:
                charges.append(self.charge(run_id, await self.beyond_shown(run_id, shown, run), claim, run))
        # A run's step read while the run waits in `requires_action` shows its tool calls (model output)
        # as the run does: charged as that run's read would charge them, once.
        charges += await self.shown_steps({"object": "list", "data": waiting}, ttl, thread, messages)
        return charges, claimed

    async def shown_steps(
        self, answer: Any, ttl: float | None, within: str | None = None, messages: FetchMessages | None = None,
    ) -> list[ObjectCharge]:
        """The charges of the `requires_action` steps of the Assistants runs `answer` shows (the run
        itself, or a list's `data`) that no read charged yet (see the module docstring): each step's
        tool calls' names and arguments as output tokens of the run's model, its turn's input as
        `_turn_input` estimates it (the thread's messages fetched with `messages`, when given),
        claimed under the step's key (`step_key`, while `within` is kept), the first claim adding
        them to the run's provisional usage. A step whose calls carry no id is not charged (it
        cannot be told apart)."""
        charges: list[ObjectCharge] = []
        for run in _shown(answer, "thread.run"):
            run_id, calls = run.get("id"), _tool_calls(run)
            if run.get("status") != "requires_action" or not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
                continue
            key = step_key(run_id, [call.get("id") for call in calls])
            if key is None:
                continue
            claim = await self.claim(key, ttl, within)
            if claim == "charged":
                continue
            model = named_model(run) or ""
            texts = [_call_text(call) for call in calls]
            written = await count_off_loop(  # (arguments of up to a MiB: counted off the event loop)
                functools.partial(self._count_calls, texts, model), sum(map(len, texts)))
            read = await self._turn_input(run, run_id, model, await self._thread_messages(run, within, messages))
            if claim == "first":
                try:
                    await self.ownership.add_shown(run_id, read, written, ttl, within)
                except StoreUnavailable:  # (its usage is charged whole: more, never less)
                    self.ownership.outage.warning("the store is unavailable: a run's step charged is not subtracted later")
            charges.append(self.charge(key, Usage(read, written), claim, run))
        return charges

    async def _turn_input(self, run: dict[str, Any], run_id: str, model: str, read: list[dict[str, Any]]) -> int:
        """What the model turn that wrote a `requires_action` step of `run` read at least: its
        `instructions` and its `tools` as the run shows them, and `read`, the thread's messages it
        read (`_thread_messages`: chat messages) — counted as a chat prompt of those
        (`TokenCounter.count_chat`: its images by the run's model's image rule), which every turn of
        the run reads. Never above what the run's `max_prompt_tokens` leaves of its whole input (less
        what its steps were charged already; the whole cap when the store cannot say)."""
        shown = run.get("instructions")
        instructions = shown if isinstance(shown, str) else ""
        prompt = [{"role": "system", "content": instructions}] if instructions else []
        prompt += read
        tools = run.get("tools")
        listed = [tool for tool in tools if isinstance(tool, dict)] if isinstance(tools, list) else []
        if not prompt and not listed:  # (nothing it shows to count: not its reply's priming alone)
            return 0
        size = len(instructions) + (len(orjson.dumps(listed)) if listed else 0) + sum(map(_message_chars, read))
        tokens = await count_off_loop(  # (instructions of up to 256k characters, messages: off the event loop)
            functools.partial(self.counter.count_chat, prompt, model, listed or None), size)
        cap = run.get("max_prompt_tokens")
        if type(cap) is int and cap > 0:
            try:
                cap -= (await self.ownership.shown(run_id))[0]
            except StoreUnavailable:
                pass
            tokens = min(tokens, max(0, cap))
        return tokens

    async def _thread_messages(
        self, run: dict[str, Any], within: str | None, messages: FetchMessages | None
    ) -> list[dict[str, Any]]:
        """The messages of `run`'s thread its turn read (`turn_messages`, as chat messages), fetched
        with `messages` (its newest MESSAGES_PAGE) — none without it, when the run names another
        thread than the read's path (`within`), or when the fetch fails (the step is charged what
        the run shows)."""
        thread = run.get("thread_id")
        if messages is None or not isinstance(thread, str) or not _RUN_ID.fullmatch(thread) \
                or (within is not None and within != thread):
            return []
        return turn_messages(await messages(thread), run)

    def _count_calls(self, texts: list[str], model: str) -> int:
        return sum(self.counter.count_text(text, model) for text in texts)

    async def beyond_shown(self, object_id: str, usage: Usage, shown: Any) -> Usage:
        """`usage` of the object `shown` (`object_id`), less the input and the output its
        `requires_action` steps were charged already when it is an Assistants run (`shown_steps`;
        each never below zero); a store that cannot say subtracts nothing."""
        if not (isinstance(shown, dict) and shown.get("object") == "thread.run"):
            return usage
        try:
            read, written = await self.ownership.shown(object_id)
        except StoreUnavailable:
            return usage
        if read <= 0 and written <= 0:
            return usage
        return Usage(max(0, usage.input_tokens - read), max(0, usage.output_tokens - written),
                     usage.cache_write_tokens, usage.cache_read_tokens)

    async def claim(self, object_id: str, ttl: float | None, within: str | None = None) -> ChargeClaim:
        """A read's claim of `object_id`'s charge (`Ownership.claim_charge`: a run's, a batch's, any
        object's a read shows), marked only while `within` — the object the read's path names, whose
        owner the read checked (the run's thread, the batch itself) — is still kept (a DELETE of it
        meanwhile forgot its marks); a store that cannot be reached counts it as the first (recorded
        under the object's key, `charge_id`: the ledger keeps one row)."""
        try:
            return await self.ownership.claim_charge(object_id, ttl, within)
        except StoreUnavailable:
            return "first"

    def charge(self, object_id: str, usage: Usage, claim: ChargeClaim, shown: Any) -> ObjectCharge:
        """The charge of `object_id`'s `usage` (claimed: `claim`) shown by the object `shown`: of
        the model it names (`named_model`: a run's, a stored response's, a batch's), priced as the
        catalogue prices that model (`prices`; no cost for any other) — but a fine-tuning job's,
        recorded without a cost: its trained tokens are billed at training rates, which the
        catalogue does not hold (its prices are a model's for requests)."""
        model = named_model(shown)
        trains = isinstance(shown, dict) and shown.get("object") == "fine_tuning.job"
        return ObjectCharge(object_id, usage, claim == "first", model,
                            None if model is None or trains else self.prices(model))


def until_ended(fetch: FetchRun, waits: Sequence[float] = CANCEL_WAITS, sleep: Sleep = asyncio.sleep) -> FetchRun:
    """`fetch`, reading a run again after each of `waits` while it is still at work (a status not
    in `THREAD_RUN_DONE`: a cancelled run `cancelling`): the run once it ended, else its last read —
    at most `len(waits) + 1` reads; a read that fails (None) or shows no run is not tried again."""

    async def fetch_ended(run_id: str) -> Any:
        run = await fetch(run_id)
        for wait in waits:
            status = run.get("status") if isinstance(run, dict) else None
            if not isinstance(status, str) or status in THREAD_RUN_DONE:
                break
            await sleep(wait)
            run = await fetch(run_id)
        return run

    return fetch_ended


def step_key(run_id: str, call_ids: Sequence[Any]) -> str | None:
    """The key of a run's `requires_action` step, whose tool calls have `call_ids` (each step's
    are new), under which it is charged once; None without calls, or with one without an id."""
    if not call_ids or not all(isinstance(i, str) and i for i in call_ids):
        return None
    digest = hashlib.sha256("\n".join(sorted(call_ids)).encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{run_id}:step:{digest}"


def _tool_calls(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool calls a run in `requires_action` shows (`required_action.submit_tool_outputs`)."""
    action = run.get("required_action")
    submit = action.get("submit_tool_outputs") if isinstance(action, dict) else None
    calls = submit.get("tool_calls") if isinstance(submit, dict) else None
    return [call for call in calls if isinstance(call, dict)] if isinstance(calls, list) else []


def _call_text(call: dict[str, Any]) -> str:
    """What the model wrote of a tool call: the function's name and its arguments."""
    function = call.get("function")
    if not isinstance(function, dict):
        return ""
    return "".join(part for part in (function.get("name"), function.get("arguments")) if isinstance(part, str))


def turn_messages(page: Any, run: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages of a page of `run`'s thread's (newest first: `FetchMessages`) that its turns read,
    as chat messages (`TokenCounter.count_chat`'s): those created at or before the run (its
    `additional_messages` too, added as it was created) but its own, of them only the last
    `truncation_strategy.last_messages` when it names so many. Each message's text parts, and its
    images (`image_url`; `image_file`, whose size Sentinel does not read: as an image by URL is,
    at the most its detail costs); not its attachments (what a `file_search` tool reads)."""
    created = run.get("created_at")
    items = page.get("data") if isinstance(page, dict) and page.get("object") == "list" else None
    read = [m for m in items[:MESSAGES_PAGE] if isinstance(m, dict) and m.get("object") == "thread.message"
            and m.get("run_id") != run.get("id")
            and (type(created) is not int or type(m.get("created_at")) is not int or m["created_at"] <= created)] \
        if isinstance(items, list) else []
    truncation = run.get("truncation_strategy")
    last = truncation.get("last_messages") if isinstance(truncation, dict) \
        and truncation.get("type") == "last_messages" else None
    if type(last) is int and last >= 0:
        read = read[:last]
    return [{"role": m.get("role") if isinstance(m.get("role"), str) else "user", "content": _parts(m.get("content"))}
            for m in read[::-1]]


def _parts(content: Any) -> list[dict[str, Any]]:
    """An Assistants message's content parts as chat content parts: its text, its images."""
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, dict):
            continue
        kind, text = part.get("type"), part.get("text")
        if kind == "text" and isinstance(text, dict) and isinstance(text.get("value"), str):
            parts.append({"type": "text", "text": text["value"]})
        elif kind in ("image_url", "image_file") and isinstance(image := part.get(kind), dict):
            url = image.get("url") if kind == "image_url" else None
            parts.append({"type": "image_url", "image_url": {"url": url, "detail": image.get("detail")}})
    return parts


def _message_chars(message: dict[str, Any]) -> int:
    """The characters of a chat message's text parts (`turn_messages`): how long counting it takes."""
    return sum(len(part["text"]) for part in message["content"] if part["type"] == "text")


def named_runs(answer: Any) -> list[str]:
    """The runs the messages `answer` shows (a list's `data`, or one message) name by `run_id`:
    distinct, MAX_NAMED_RUNS at most."""
    named: dict[str, None] = {}
    for message in _shown(answer, "thread.message"):
        run_id = message.get("run_id")
        if isinstance(run_id, str) and _RUN_ID.fullmatch(run_id) and len(named) < MAX_NAMED_RUNS:
            named[run_id] = None
    return list(named)


# A message's `run_id` as the provider writes it, in the bytes of an answer too large to parse: a key
# of a message itself — the answer (one message) or an item of its `data` (a list) —, never one of an
# object inside a message (its `metadata`, the caller's own keys and values: a fake `run_id` there
# would take the place of a real run's), nor text inside a JSON string (a model's, escaped).
_RUN_ID_KEY = re.compile(rb'"run_id"[ \t\r\n]{0,32}:[ \t\r\n]{0,32}"([A-Za-z0-9_-]{1,100})"')
# What a chunk's end can cut a match of _RUN_ID_KEY to (a prefix of one, whole: read with the next).
_RUN_ID_CUT = re.compile(rb'"(?:r(?:u(?:n(?:_(?:i(?:d(?:"[ \t\r\n]{0,32}(?::[ \t\r\n]{0,32}(?:"[A-Za-z0-9_-]{0,100})?)?)?)?)?)?)?)?)?')
_STRING_REST = re.compile(rb'(?:[^"\\]++|\\.)*+', re.DOTALL)  # a string's bytes up to its closing quote
_STRUCTURE = re.compile(rb'["{}\[\]]')  # outside strings: what opens or closes a string or a container
# The containers around a message's own keys: the answer (one message), or a list's item.
_MESSAGE_LEVELS = (b"{", b"{[{")
_KEPT_LEVELS = 3  # the outermost containers kept (deeper ones are only counted: bounded memory)


class RunIdScanner:
    """The runs a thread's messages answer too large to parse whole (over `MAX_BUFFERED`: long
    messages) names by `run_id`, read as its bytes pass (as `named_runs` reads a parsed one):
    distinct, MAX_NAMED_RUNS at most. Such an answer shows the runs' results as any other. Its JSON
    is followed as it passes (strings, containers' nesting), in linear time and bounded memory,
    so that only a message's own `run_id` counts (see `_RUN_ID_KEY`)."""

    def __init__(self) -> None:
        self._named: dict[str, None] = {}
        self._carry = b""  # bytes not read yet (a key cut by a chunk's end, a trailing escape)
        self._in_string = False
        self._depth = 0
        self._levels = b""  # the outermost containers open (`{`, `[`), _KEPT_LEVELS at most

    @property
    def named(self) -> list[str]:
        return list(self._named)

    def feed(self, chunk: bytes) -> None:
        if len(self._named) >= MAX_NAMED_RUNS or not chunk:
            return
        buf = self._carry + chunk if self._carry else chunk
        self._carry = b""
        pos, size = 0, len(buf)
        while pos < size:
            if self._in_string:
                pos = _STRING_REST.match(buf, pos).end()  # type: ignore[union-attr]  # (matches empty)
                if pos == size:
                    return
                if buf[pos] == 0x5C:  # a backslash ending the chunk: read with the byte it escapes
                    self._carry = buf[pos:]
                    return
                self._in_string, pos = False, pos + 1
                continue
            found = _STRUCTURE.search(buf, pos)
            if found is None:
                return
            at, byte = found.start(), buf[found.start()]
            pos = at + 1
            if byte == 0x22:  # '"'
                if self._levels in _MESSAGE_LEVELS and self._depth == len(self._levels):
                    key = _RUN_ID_KEY.match(buf, at)
                    if key is not None:
                        self._named[key.group(1).decode("ascii")] = None
                        if len(self._named) >= MAX_NAMED_RUNS:
                            return
                        pos = key.end()
                        continue
                    if _RUN_ID_CUT.fullmatch(buf, at):  # perhaps a `run_id` the next chunk ends
                        self._carry = buf[at:]
                        return
                self._in_string = True
            elif byte in b"{[":
                if self._depth < _KEPT_LEVELS:
                    self._levels += bytes((byte,))
                self._depth += 1
            else:
                self._depth = max(self._depth - 1, 0)
                self._levels = self._levels[: self._depth]


def _shown(answer: Any, kind: str) -> list[dict[str, Any]]:
    """The objects of type `kind` (`object`) an answer shows: itself, or the items of its `data`."""
    if not isinstance(answer, dict):
        return []
    if answer.get("object") == kind:
        return [answer]
    items = answer.get("data")
    return [item for item in items if isinstance(item, dict) and item.get("object") == kind] \
        if isinstance(items, list) else []


def _malformed(usage: Any) -> bool:
    """Whether a run's `usage` that gave no count is malformed (not merely none, nor of no tokens)."""
    return usage is not None and not (isinstance(usage, dict) and usage.get("prompt_tokens") == 0
                                      and usage.get("completion_tokens") == 0)
