"""NativeChat's stream, driven through the transport's real `StreamingRelay` with fakes around it."""

from __future__ import annotations

import asyncio
import gc
import types
from typing import Any

import pytest

from sentinel.api.responses import StreamingRelay
from sentinel.domain.identity import Identity
from sentinel.domain.tiers import TierModelEntry
from sentinel.errors import InvalidRequest
from sentinel.native import NativeValidationError, parse_chat_request
from sentinel.native.stream import OpenAIStreamNormalizer
from sentinel.observability.metrics import Metrics
from sentinel.providers.chat import ProviderStream
from sentinel.providers.http import UpstreamResponse
from sentinel.quota.estimate import REFERENCE_TOKENS, estimate_input
from sentinel.quota.meter import Admission
from sentinel.quota.tokens import TokenCounter
from sentinel.routing.health import ProviderHealth
from sentinel.routing.router import RouteChoice, TierRouter
from sentinel.routing.selection import WeightedSelector
from sentinel.routing.sessions import Session, SessionStore
from sentinel.routing.tiers import StaticTiers
from sentinel.services.exchange import Exchange
from sentinel.services.native_chat import NativeChat
from sentinel.store import MemoryStore
from tests.support.clock import FakeClock
from tests.support.media import data_url, png
from tests.support.waiting import until

ALICE = Identity("alice", "u1")


class HeldRouter:
    """A router whose session write waits at `gate` (a slow store)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.writing = False
        self.written = False

    async def commit(self, identity: Identity, choice: RouteChoice) -> None:
        self.writing = True
        await self.gate.wait()
        self.written = True

    async def abandon(self, choice: RouteChoice) -> None:
        pass

    async def report(self, choice: RouteChoice, *, ok: bool) -> None:
        pass


class Connection:
    """The upstream's aiohttp response: its body one chunk, then held open; whether it was closed."""

    closed = False

    def __init__(self) -> None:
        self.content = self

    async def iter_any(self) -> Any:
        yield b'data: {"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}\n\n'
        await asyncio.Event().wait()  # (the session is written before this chunk is relayed)

    def close(self) -> None:
        self.closed = True


class Settled:
    def __init__(self) -> None:
        self.statuses: list[int] = []

    async def settle(self, admission: Admission, **kw: Any) -> None:
        self.statuses.append(kw["status"])


def serve_stream(
    router: Any, connection: Connection, meter: Settled, pending_write: str
) -> tuple[RouteChoice, asyncio.Future[None], asyncio.Queue[dict[str, Any]]]:
    """A native stream of `connection`'s events served to a client: the route chosen (a conversation's,
    with `pending_write`), the serving task and the client's inbox (put `http.disconnect` to leave)."""
    chat = NativeChat(router, {}, meter, None)
    choice = RouteChoice("simple", TierModelEntry(provider="openai", model="gpt-4o-mini", relative_cost=1),
                         conversation_id="conv-1", pending_write=pending_write)
    upstream = UpstreamResponse("openai", 200, [], connection)  # type: ignore[arg-type]
    stream = ProviderStream(upstream, OpenAIStreamNormalizer(provider="openai"))
    reply = chat._stream(Exchange(usage_id="r1"), ALICE, stream, choice, Admission(ALICE, "native", "gpt-4o-mini", "r1"))
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def send(message: dict[str, Any]) -> None:
        pass

    served = asyncio.ensure_future(StreamingRelay(200, [], reply.chunks, reply.on_close)({}, inbox.get, send))
    return choice, served, inbox


async def test_a_client_leaving_during_the_session_write_does_not_cut_the_write_short() -> None:
    """The stream's session write ran in the stream's task: a client that left while it was written
    cancelled it half-way (a first turn's session left on a model that failed before the retry that
    answered, or never written). The write goes on to its end; the stream still ends, settled as left
    (499), its upstream closed — the write came before the body's `try`, so the `finally` that closes
    it never ran (the connection was freed only by the garbage collector)."""
    router, connection, meter = HeldRouter(), Connection(), Settled()
    _, served, inbox = serve_stream(router, connection, meter, "create")  # a first turn: its session is written
    await until(lambda: router.writing)
    inbox.put_nowait({"type": "http.disconnect"})  # the client leaves while the session is written
    await asyncio.wait_for(served, 5)
    assert (connection.closed, meter.statuses, router.written) == (True, [499], False)
    router.gate.set()  # the store answers
    await until(lambda: router.written)


class Silent(Connection):
    """An upstream that answered 200 and then sends nothing (held open)."""

    reading = False

    async def iter_any(self) -> Any:
        self.reading = True
        await asyncio.Event().wait()
        yield b""


class Recording(HeldRouter):
    def __init__(self) -> None:
        super().__init__()
        self.gate.set()  # (a store that answers at once)
        self.abandoned: list[RouteChoice] = []

    async def abandon(self, choice: RouteChoice) -> None:
        self.abandoned.append(choice)


async def test_a_client_leaving_before_the_first_chunk_gives_the_first_turns_session_back() -> None:
    """The session was written before the stream's first event was read: a first turn whose client
    left before any chunk came stayed bound to a model that had served nothing. It is given back
    (`TierRouter.abandon`, as for a first turn no model answered), and never written."""
    router, connection, meter = Recording(), Silent(), Settled()
    choice, served, inbox = serve_stream(router, connection, meter, "touch")  # a first turn's claimed session
    await until(lambda: connection.reading)
    inbox.put_nowait({"type": "http.disconnect"})
    await asyncio.wait_for(served, 5)
    assert (router.abandoned, router.writing, connection.closed, meter.statuses) == ([choice], False, True, [499])


class Failing:
    """Both candidates' provider: translates anything, and its call fails (a bug, not an answer)."""

    kind = "openai"

    def body(self, req: Any, model: str, *, stream: bool) -> dict[str, Any]:
        return {}

    def with_end_user(self, body: dict[str, Any], end_user: str) -> dict[str, Any]:
        return body

    async def complete_body(self, body: dict[str, Any], tier: str, **kw: Any) -> Any:
        raise RuntimeError("the call failed")


class UnsettledMeter:
    """Admits, then fails to settle the failure (a settlement error re-raised)."""

    async def admit(self, identity: Identity, **kw: Any) -> Admission:
        return Admission(identity, "native", kw["model"], kw["request_id"])

    async def fail(self, admission: Admission, error: BaseException) -> None:
        raise OSError("the settlement failed")


async def test_a_first_turn_whose_failure_cannot_be_settled_still_removes_its_session() -> None:
    """The session a first turn created was removed after `meter.fail`: when that raised, it stayed,
    binding the conversation to a model that never answered it."""
    clock = FakeClock()
    store, metrics = MemoryStore(), Metrics()
    tiers = StaticTiers({"simple": [TierModelEntry(provider="openai", model="gpt-4o-mini", relative_cost=1)],
                         "moderate": [], "complex": []})
    sessions = SessionStore(store, ttl=1000, clock=clock)
    router = TierRouter(tiers=tiers, providers=["openai"], health=ProviderHealth(store, metrics, clock=clock),
                        sessions=sessions, selector=WeightedSelector(), metrics=metrics, clock=clock)
    chat = NativeChat(router, {"openai": Failing()}, UnsettledMeter(), None)  # type: ignore[dict-item, arg-type]
    req = parse_chat_request({"tier": "simple", "conversation_id": "c1", "messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(OSError):
        await chat.chat(Exchange(usage_id="r1"), ALICE, req)
    assert await sessions.get("c1", "alice") is None


class Untranslatable:
    """A provider that cannot carry any request."""

    def body(self, req: Any, model: str, *, stream: bool) -> dict[str, Any]:
        raise NativeValidationError("cannot be carried", param="messages")


class NoAlternative:
    async def alternative(self, choice: RouteChoice) -> RouteChoice | None:
        return None


async def test_a_request_no_candidate_can_carry_is_freed_with_its_refusal() -> None:
    """The refusal of the first candidate was kept in a local and raised again from the frame it had
    come through: a reference cycle (the frame holds the error, the error's traceback the frame)
    that kept the request, and every frame the error went on through (the handler's body), until
    a full collection — rare in a served process (`SentinelApp.startup`)."""
    chat = NativeChat(NoAlternative(), {"openai": Untranslatable()}, None, None)  # type: ignore[arg-type, dict-item]
    choice = RouteChoice("simple", TierModelEntry(provider="openai", model="gpt-4o-mini", relative_cost=1))
    req = parse_chat_request({"tier": "simple", "messages": [{"role": "user", "content": "hi"}]})
    gc.collect()
    gc.disable()
    try:
        with pytest.raises(InvalidRequest, match="cannot be carried") as refused:
            await chat._translatable(req, choice, chat._translator(req, False, "pseudonym"))
        del refused
        alive = [o for o in gc.get_objects() if isinstance(o, types.FrameType) and o.f_code.co_name == "_translatable"]
    finally:
        gc.enable()
    assert alive == []


class Estimating:
    """Admits with the estimate the meter would make (its image rule as given); while it counts, a
    concurrent first turn creates the conversation's session (`concurrent`)."""

    def __init__(self, concurrent: Any, referenced: int = REFERENCE_TOKENS) -> None:
        self.concurrent = concurrent
        self.referenced = referenced
        self.failed: list[Admission] = []

    async def admit(self, identity: Identity, **kw: Any) -> Admission:
        await self.concurrent()
        rule = {"images": kw["images"]} if "images" in kw else {}
        estimate = estimate_input(TokenCounter(), kw["endpoint"], kw["model"], kw["payload"], **rule,
                                  referenced=self.referenced)
        return Admission(identity, "native", kw["model"], kw["request_id"], estimate_input=estimate)

    async def fail(self, admission: Admission, error: BaseException) -> None:
        self.failed.append(admission)


class FailingAs(Failing):
    def __init__(self, kind: str) -> None:
        self.kind = kind


async def test_a_first_turn_that_follows_another_models_session_is_estimated_by_its_rule_too() -> None:
    """A first turn admitted for Claude (its images by Anthropic's rule, ~1,400 for 1024 x 1024 at
    any detail) that follows a concurrent first turn's session on gpt-4o-mini is served by gpt-4o-mini
    (2,833 an image at low detail): its estimate, what a stream cut before its usage is charged, was
    Claude's."""
    clock = FakeClock()
    store, metrics = MemoryStore(), Metrics()
    tiers = StaticTiers({"simple": [TierModelEntry(provider="anthropic", model="claude-3-5-haiku-20241022", relative_cost=1)],
                         "moderate": [], "complex": [TierModelEntry(provider="openai", model="gpt-4o-mini", relative_cost=1)]})
    sessions = SessionStore(store, ttl=1000, clock=clock)
    router = TierRouter(tiers=tiers, providers=["openai", "anthropic"], health=ProviderHealth(store, metrics, clock=clock),
                        sessions=sessions, selector=WeightedSelector(), metrics=metrics, clock=clock)

    async def concurrent() -> None:  # a first turn at a higher tier, its session created first
        await sessions.create(Session("c1", "alice", "complex", "openai", "gpt-4o-mini", clock(), clock()))

    meter = Estimating(concurrent)
    providers = {"anthropic": FailingAs("anthropic"), "openai": FailingAs("openai")}
    chat = NativeChat(router, providers, meter, TokenCounter())  # type: ignore[arg-type]
    image = {"type": "image_url", "image_url": {"url": data_url(png(1024, 1024)), "detail": "low"}}
    req = parse_chat_request({"tier": "simple", "conversation_id": "c1",
                              "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, *[image] * 20]}]})
    with pytest.raises(RuntimeError):
        await chat.chat(Exchange(usage_id="r1"), ALICE, req)
    (admission,) = meter.failed
    assert admission.model == "gpt-4o-mini"  # served by the session it followed
    assert admission.counted_as == "gpt-4o-mini"  # its text counted as what serves it (was Claude's)
    assert 20 * 2833 <= admission.estimate_input < 20 * 2833 + 100, admission.estimate_input


class Serving:
    """A router whose retries may go to `entries`."""

    def __init__(self, *entries: TierModelEntry) -> None:
        self.entries = entries

    async def may_serve(self, choice: RouteChoice) -> tuple[TierModelEntry, ...]:
        return self.entries


async def test_a_first_turn_estimated_again_reserves_the_configured_figure_for_what_it_names() -> None:
    """Estimated again for the model of the session it follows, a request's input reserved 4,096
    tokens (the default) for each stored thing it names by id, not SENTINEL_REFERENCE_INPUT_TOKENS
    (the meter's `referenced`) as its admission did. (No native request names one today: its
    estimate payload is given here.)"""
    referenced = 1_000_000
    entry = TierModelEntry(provider="openai", model="gpt-4o-mini", relative_cost=1)
    chat = NativeChat(Serving(entry), {}, Estimating(None, referenced), TokenCounter())  # type: ignore[arg-type]
    payload = {"messages": [{"role": "assistant", "audio": {"id": "audio_1"}}, {"role": "user", "content": "hi"}]}
    admission = Admission(ALICE, "native", "gpt-4o-mini", "r1", estimate_input=0)
    await chat._reprice(ALICE, admission, payload, frozenset(), RouteChoice("simple", entry), size=0)
    assert referenced <= admission.estimate_input < referenced + 100, admission.estimate_input


async def test_a_request_is_estimated_by_the_dearest_rule_of_the_candidates_a_retry_may_go_to() -> None:
    """Chosen Claude (gpt-4o-mini in backoff), a failure is retried on gpt-4o-mini once its backoff
    ends: the images were estimated by Claude's rule alone (85 for a low-detail image, read as an
    OpenAI model's), where gpt-4o-mini bills 2,833."""
    clock = FakeClock()
    store, metrics = MemoryStore(), Metrics()
    tiers = StaticTiers({"simple": [TierModelEntry(provider="anthropic", model="claude-3-5-haiku-20241022", relative_cost=1),
                                    TierModelEntry(provider="openai", model="gpt-4o-mini", relative_cost=1)],
                         "moderate": [], "complex": []})
    health = ProviderHealth(store, metrics, clock=clock)
    await health.record_failure("openai", "gpt-4o-mini")  # so Claude is chosen
    router = TierRouter(tiers=tiers, providers=["openai", "anthropic"], health=health,
                        sessions=SessionStore(store, ttl=1000, clock=clock), selector=WeightedSelector(),
                        metrics=metrics, clock=clock)

    async def nothing() -> None:
        pass

    meter = Estimating(nothing)
    providers = {"anthropic": FailingAs("anthropic"), "openai": FailingAs("openai")}
    chat = NativeChat(router, providers, meter, TokenCounter())  # type: ignore[arg-type]
    image = {"type": "image_url", "image_url": {"url": data_url(png(1024, 1024)), "detail": "low"}}
    req = parse_chat_request({"tier": "simple", "messages": [{"role": "user", "content": [*[image] * 20]}]})
    with pytest.raises(RuntimeError):
        await chat.chat(Exchange(usage_id="r1"), ALICE, req)
    (admission,) = meter.failed
    assert admission.model == "claude-3-5-haiku-20241022"
    assert 20 * 2833 <= admission.estimate_input < 20 * 2833 + 100, admission.estimate_input


async def test_a_first_turn_following_a_session_on_a_provider_not_configured_here_calls_one_that_is() -> None:
    """The session a concurrent first turn created in another process (configured with a provider
    this one lacks): the follower looked its provider up here — a KeyError, a 500."""
    clock = FakeClock()
    store, metrics = MemoryStore(), Metrics()
    tiers = StaticTiers({"simple": [TierModelEntry(provider="openai", model="gpt-4o-mini", relative_cost=1)],
                         "moderate": [], "complex": []})
    sessions = SessionStore(store, ttl=1000, clock=clock)
    router = TierRouter(tiers=tiers, providers=["openai"], health=ProviderHealth(store, metrics, clock=clock),
                        sessions=sessions, selector=WeightedSelector(), metrics=metrics, clock=clock)

    async def concurrent() -> None:
        await sessions.create(Session("c1", "alice", "simple", "gone", "old-model", clock(), clock()))

    meter = Estimating(concurrent)
    chat = NativeChat(router, {"openai": FailingAs("openai")}, meter, TokenCounter())  # type: ignore[arg-type]
    req = parse_chat_request({"tier": "simple", "conversation_id": "c1", "messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(RuntimeError, match="the call failed"):  # the configured provider was called
        await chat.chat(Exchange(usage_id="r1"), ALICE, req)
    (admission,) = meter.failed
    assert admission.model == "gpt-4o-mini"
    stored = await sessions.get("c1", "alice")
    assert stored is not None and stored.provider == "gone"  # not answered: left as it was
