"""Ownership records on each store backend (memory and a real Redis): a recorded owner is never
replaced, so an answer that names another user's object cannot hand that object over."""

from __future__ import annotations

import asyncio

import pytest

from sentinel.domain.files import FileFacts
from sentinel.errors import NotFound, StoreUnavailable
from sentinel.governance.ownership import MAX_CUT_TURNS, Ownership, _keyable
from sentinel.services.objects import MAX_REFERENCES
from sentinel.store import Store
from tests.support.redis_cluster import redis_cluster, redis_cluster_url
from tests.support.stores import FlakyStore

__all__ = ["redis_cluster", "redis_cluster_url"]

DAY = 86400.0


async def test_the_first_owner_is_kept(store: Store) -> None:
    owners = Ownership(store)
    assert await owners.claim("file-1", "alice", None) is True
    assert await owners.claim("file-1", "bob", None) is False
    assert await owners.claim("file-1", "bob", 30 * DAY) is False
    assert await owners.owner_of("file-1") == "alice"
    await owners.require(["file-1"], "alice")
    with pytest.raises(NotFound):
        await owners.require(["file-1"], "bob")


async def test_a_claim_by_someone_else_leaves_the_expiry_alone(store: Store) -> None:
    owners = Ownership(store)
    await owners.claim("resp_1", "alice", 31 * DAY)
    before = await store.ttl("sentinel:owner:resp_1")
    assert before is not None and 30 * DAY < before <= 31 * DAY
    assert await owners.claim("resp_1", "bob", None) is False
    after = await store.ttl("sentinel:owner:resp_1")
    assert after is not None and 0 < after <= before  # not made permanent by bob's claim


async def test_the_owners_own_claim_refreshes_the_expiry(store: Store) -> None:
    owners = Ownership(store)
    await owners.claim("batch_1", "alice", 60.0)
    assert await owners.claim("batch_1", "alice", 31 * DAY) is True
    ttl = await store.ttl("sentinel:owner:batch_1")
    assert ttl is not None and ttl > 30 * DAY
    assert await owners.claim("batch_1", "alice", None) is True
    assert await store.ttl("sentinel:owner:batch_1") == -1.0  # no expiry: kept until deleted


async def test_the_owners_claim_with_an_expiry_never_gives_one_to_a_record_kept_without(store: Store) -> None:
    """An item of a conversation (kept until deleted), shown again by a read of its response (31 days):
    its record kept no expiry, so the item stays its owner's as long as the conversation holds it."""
    owners = Ownership(store)
    await owners.claim("msg_1", "alice", None)
    assert await owners.claim("msg_1", "alice", 31 * DAY) is True
    assert await store.ttl("sentinel:owner:msg_1") == -1.0
    assert await owners.owner_of("msg_1") == "alice"


async def test_a_forgotten_object_can_be_claimed_again(store: Store) -> None:
    owners = Ownership(store)
    await owners.claim("file-2", "alice", None)
    await owners.forget("file-2")
    assert await owners.claim("file-2", "bob", None) is True
    assert await owners.owner_of("file-2") == "bob"


@pytest.mark.parametrize("object_id", ["", "x" * 201, "file-\ud800"], ids=["empty", "long", "lone-surrogate"])
async def test_ids_out_of_bounds_are_never_recorded(store: Store, object_id: str) -> None:
    """An empty or long id, and one holding a lone surrogate (Python's json reads one; no Redis key
    can hold it: the command failed, a 500), names nothing: never recorded, never looked up."""
    owners = Ownership(store)
    assert await owners.claim(object_id, "alice", None) is False
    assert await owners.owner_of(object_id) is None
    assert await owners.charge_once(object_id, None) is False
    await owners.remember_context(object_id, 5, None)
    await owners.grow_context(object_id, 5)
    await owners.forget(object_id)
    assert await owners.context_of([object_id]) == 0


async def test_the_ids_a_body_names_are_read_in_one_batched_store_read() -> None:
    """A body may name 1,000 ids (the same one 1,000 times, too): each was a `get` of its own (a store
    round trip, a pool connection apiece). Several distinct ids are one `get_many`, each id once;
    one id (most requests) stays one `get`."""
    store = FlakyStore()
    owners = Ownership(store)
    for i in range(5):
        await owners.claim(f"file-{i}", "alice", None)
    store.calls.clear()
    await owners.require([f"file-{i % 5}" for i in range(1000)], "alice")
    assert store.calls == {"get_many": 1}
    store.calls.clear()
    with pytest.raises(NotFound, match="file-9"):
        await owners.require(["file-0", "file-9", "file-1", "file-9"], "alice")
    assert store.calls == {"get_many": 1}
    store.calls.clear()
    await owners.require(["file-3", "file-3"], "alice")
    assert store.calls == {"get": 1}
    store.calls.clear()
    assert await owners.require([], "alice") == {}
    assert store.calls == {}


async def test_several_files_and_their_facts_are_two_batched_reads_side_by_side() -> None:
    store = FlakyStore()
    owners = Ownership(store)
    ids = [f"file-{i}" for i in range(40)]
    for number, file_id in enumerate(ids):
        await owners.claim(file_id, "alice", None)
        await owners.remember_file(file_id, "alice", FileFacts(text=number))
    store.calls.clear()
    assert await owners.require(ids, "alice", files=ids) == {
        file_id: FileFacts(text=number) for number, file_id in enumerate(ids)}
    assert store.calls == {"get_many": 2}


async def test_a_store_failure_in_a_lookup_is_the_store_error() -> None:
    """Fails closed, one id or several, files among them or not."""
    store = FlakyStore()
    owners = Ownership(store)
    await owners.claim("file-1", "alice", None)
    await owners.claim("file-2", "alice", None)
    store.fail("get", "get_many")
    for ids in (["file-1"], ["file-1", "file-2"]):
        for files in ((), ids):
            with pytest.raises(StoreUnavailable):
                await owners.require(ids, "alice", files=files)


async def _require_one_by_one(store: Store, object_ids: list[str], owner: str, files: set[str]) -> object:
    """What `Ownership.require` answered when it read each id's owner (and facts) with a `get` of its
    own: the facts found, or the NotFound message of the first id (in order) that is not `owner`'s."""
    facts: dict[str, FileFacts] = {}
    for object_id in dict.fromkeys(object_ids):
        raw = await store.get("sentinel:owner:" + object_id) if _keyable(object_id) else None
        if raw is None or raw.decode() != owner:
            return NotFound(f"No such object: '{object_id[:200]}'").message
        if object_id in files:
            read = FileFacts.decode(await store.get("sentinel:file-facts:" + object_id))
            if read is not None:
                facts[object_id] = read
    return facts


async def _require_answer(owners: Ownership, object_ids: list[str], owner: str, files: set[str]) -> object:
    try:
        return await owners.require(object_ids, owner, files=files)
    except NotFound as error:
        return error.message


async def _check_require_as_one_by_one(store: Store) -> None:
    """Many ids — alice's, bob's, unknown, expired, ones that name nothing, repeats, files with facts,
    without, with unreadable ones — answer as they did read one by one, whichever is first."""
    owners = Ownership(store)
    mine = [f"resp_{n}" for n in range(300)]
    for n, object_id in enumerate(mine):
        await owners.claim(object_id, "alice", None)
        if n % 3 == 0:
            await owners.remember_file(object_id, "alice", FileFacts(pages=n + 1))
    await store.set("sentinel:file-facts:resp_1", b"{not json")
    await owners.claim("resp_bob", "bob", None)
    await owners.claim("resp_brief", "alice", 60.0)
    await store.delete("sentinel:owner:resp_brief")  # (as expired: gone from the store)
    files = set(mine[::2])
    cases = [
        [*mine, *mine[:10]],
        [*mine, "resp_bob"],
        [*mine[:50], "resp_unknown", *mine[50:]],
        [*mine, "resp_brief"],
        [*mine[:5], "", *mine[5:]],
        [*mine[:5], "r" * 201],
        [*mine[:5], "resp_\udc80", "resp_bob"],
        ["resp_bob", *mine],
    ]
    for ids in cases:
        for owner in ("alice", "bob"):
            expected = await _require_one_by_one(store, ids, owner, files)
            assert await _require_answer(owners, ids, owner, files) == expected
    assert await _require_answer(owners, mine, "alice", files) == {
        i: FileFacts(pages=int(i[5:]) + 1) for i in mine if i in files and int(i[5:]) % 3 == 0 and i != "resp_1"}
    assert await _require_answer(owners, [*mine, "resp_bob"], "alice", files) == "No such object: 'resp_bob'"


async def test_many_ids_answer_as_read_one_by_one(store: Store) -> None:
    await _check_require_as_one_by_one(store)


async def test_many_ids_answer_as_read_one_by_one_on_a_cluster(redis_cluster_url: str) -> None:
    """On a Redis Cluster the owner keys lie in many slots (every primary): one read per primary."""
    from sentinel.store.cluster import RedisClusterStore

    store = RedisClusterStore(redis_cluster_url, timeout=5.0)
    try:
        await _check_require_as_one_by_one(store)
    finally:
        await store.close()


async def test_runs_charged_are_read_in_one_batched_store_read(store: Store) -> None:
    """Which of a thread's runs were charged: one batched read for several, one `get` for one."""
    owners = Ownership(store)
    await owners.charge_once("run_1", None)
    await owners.charge_once("run_3", None)
    assert await owners.uncharged(["run_1", "run_2", "run_3", "run_4", "run_2", ""]) == ["run_2", "run_4"]
    assert await owners.uncharged(["run_1"]) == [] and await owners.uncharged(["run_2"]) == ["run_2"]
    assert await owners.uncharged([]) == []
    flaky = FlakyStore()
    counted = Ownership(flaky)
    await counted.charge_once("run_1", None)
    flaky.calls.clear()
    assert await counted.uncharged([f"run_{n}" for n in range(20)]) == ["run_0", *(f"run_{n}" for n in range(2, 20))]
    assert flaky.calls == {"get_many": 1}
    flaky.fail("get_many")
    with pytest.raises(StoreUnavailable):
        await counted.uncharged(["run_1", "run_2"])


async def _contexts_one_by_one(store: Store, object_ids: list[str]) -> dict[str, int]:
    """What `Ownership.contexts` answered when it read one id after another (its results are kept)."""
    counts: dict[str, int] = {}
    for object_id in object_ids:
        raw = await store.get("sentinel:context:" + object_id) if _keyable(object_id) else None
        counts[object_id] = int(raw) if raw is not None and raw.isdigit() else 0
    return counts


def _ids_a_batch_continues() -> list[str]:
    """Up to MAX_REFERENCES distinct ids (as many as a batch's lines may continue), with a repeat,
    ids that name nothing (empty, too long, a lone surrogate) and one whose count is not digits."""
    ids = [f"resp_{n}" for n in range(MAX_REFERENCES - 4)]
    return [*ids, "resp_0", "", "r" * 201, "resp_\udc80", "conv_garbled"]


async def _remember_some(owners: Ownership, ids: list[str]) -> None:
    for n, object_id in enumerate(ids[: MAX_REFERENCES - 4]):
        if n % 4:
            await owners.remember_context(object_id, n * 10, None)
    await owners.store.set("sentinel:context:conv_garbled", b"12x")


async def test_contexts_are_read_in_one_batched_store_read(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch continuing 1,000 stored responses is made with one store read of their contexts, not
    1,000 one after another; the counts are those read one by one (0 for an id naming nothing)."""
    owners = Ownership(store)
    ids = _ids_a_batch_continues()
    await _remember_some(owners, ids)
    expected = await _contexts_one_by_one(store, ids)
    calls: list[str] = []
    get = store.get

    async def counting_get(key: str) -> bytes | None:
        calls.append("get")
        return await get(key)

    async def counting_get_many(keys: list[str]) -> list[bytes | None]:
        calls.append("get_many")
        assert len(keys) == len(set(keys)) <= MAX_REFERENCES  # each distinct id once, bounded
        return await type(store).get_many(store, keys)

    monkeypatch.setattr(store, "get", counting_get)
    monkeypatch.setattr(store, "get_many", counting_get_many, raising=False)
    assert await owners.contexts(iter(ids)) == expected
    assert calls == ["get_many"]
    assert expected["resp_5"] == 50 and expected["resp_4"] == 0 and expected["conv_garbled"] == 0
    assert expected[""] == expected["r" * 201] == 0
    calls.clear()
    assert await owners.contexts(["", "r" * 201]) == {"": 0, "r" * 201: 0}  # nothing to read: no read
    assert await owners.contexts([]) == {}
    assert calls == []


async def test_contexts_fail_closed_when_the_store_cannot_read_them() -> None:
    store = FlakyStore()
    owners = Ownership(store)
    await owners.remember_context("resp_1", 10, None)
    store.fail("get_many")
    with pytest.raises(StoreUnavailable):
        await owners.contexts(["resp_1", "resp_2"])
    store.recover()
    assert await owners.contexts(["resp_1", "resp_2"]) == {"resp_1": 10, "resp_2": 0}


async def test_contexts_on_a_cluster_read_every_slot(redis_cluster_url: str) -> None:
    """On a Redis Cluster the ids' keys lie in many hash slots (on every primary): read at once per
    primary, the counts are those read one by one."""
    from sentinel.store.cluster import RedisClusterStore

    store = RedisClusterStore(redis_cluster_url, timeout=5.0)
    try:
        owners = Ownership(store)
        ids = _ids_a_batch_continues()
        await _remember_some(owners, ids)
        assert await owners.contexts(ids) == await _contexts_one_by_one(store, ids)
    finally:
        await store.close()


async def test_a_turn_keeps_what_its_conversation_grew_by_meanwhile(store: Store) -> None:
    """A turn's count replaces the count it was admitted at (its input read it), never what was added
    since; a count that only shrank (a truncated turn) is the turn's own; a missing one is the turn's."""
    owners = Ownership(store)
    await owners.remember_turn("conv_1", 700, 0, None)
    assert await owners.contexts(["conv_1"]) == {"conv_1": 700}
    await owners.grow_context("conv_1", 300)  # items added while the next turn, admitted at 700, ran
    await owners.remember_turn("conv_1", 900, 700, None)
    assert await owners.context_of(["conv_1"]) == 1200
    await owners.remember_turn("conv_1", 400, 1200, 31 * DAY)  # truncated by the provider
    assert await owners.context_of(["conv_1"]) == 400
    ttl = await store.ttl("sentinel:context:conv_1")
    assert ttl is not None and 30 * DAY < ttl <= 31 * DAY
    await owners.forget("conv_1")
    await owners.remember_turn("conv_1", 50, 10_000, None)
    assert await owners.context_of(["conv_1"]) == 50
    await owners.remember_turn("conv_1", 10**12 * 3, 0, None)  # far past what a float prints plainly in Lua
    assert await owners.context_of(["conv_1"]) == 10**12 * 3 + 50


async def test_a_cut_turns_correction_applies_once_and_only_to_the_count_it_left(store: Store) -> None:
    """A stored response cut in its conversation is noted with the count its turn left; the first
    read charging its usage moves that count by the difference — once, keeping the count's expiry —
    and not at all once the count changed (a later turn counted the provider's figure, this turn's
    real exchange included); a deleted response's note goes with it."""
    owners = Ownership(store)
    await owners.remember_turn("conv_1", 1000, 0, None)
    after = await owners.remember_turn("conv_1", 1050, 1000, 31 * DAY)  # the cut turn: 1,050 - 1,000 charged
    assert after == "1050"
    await owners.remember_cut_turn("resp_cut", "conv_1", 50, after, 31 * DAY)
    assert await owners.correct_turn("resp_cut", 9000) is True  # its real exchange: 9,000, not 50
    assert await owners.context_of(["conv_1"]) == 1050 - 50 + 9000
    ttl = await store.ttl("sentinel:context:conv_1")
    assert ttl is not None and 30 * DAY < ttl <= 31 * DAY
    assert await owners.correct_turn("resp_cut", 9000) is False  # once
    assert await owners.context_of(["conv_1"]) == 10_000
    after = await owners.remember_turn("conv_2", 60, 0, None)
    assert after is not None
    await owners.remember_cut_turn("resp_2", "conv_2", 60, after, None)
    await owners.remember_turn("conv_2", 7000, 60, None)  # a later turn ended: the provider's count
    assert await owners.correct_turn("resp_2", 9000) is False
    assert await owners.context_of(["conv_2"]) == 7000
    await owners.remember_cut_turn("resp_3", "conv_2", 10, "7000", None)
    await owners.forget("resp_3")
    assert await owners.correct_turn("resp_3", 9000) is False
    assert await owners.context_of(["conv_2"]) == 7000
    assert await owners.correct_turn("resp_unknown", 9000) is False


async def test_a_files_facts_are_its_owners_kept_once_and_dropped_with_it(store: Store) -> None:
    """What an upload held is kept only for the file's owner, never replaced (a file's content never
    changes: nobody's later claim makes it look smaller), read back only along with a successful
    ownership check of the ids named as files, and dropped with the file."""
    owners = Ownership(store)
    await owners.claim("file-a", "alice", None)
    await owners.remember_file("file-a", "bob", FileFacts(pages=1))  # not bob's file: nothing kept
    assert await owners.require(["file-a"], "alice", files=["file-a"]) == {}
    await owners.remember_file("file-a", "alice", FileFacts(pages=300))
    await owners.remember_file("file-a", "alice", FileFacts(pages=1))  # kept once
    await owners.claim("resp_1", "alice", None)
    assert await owners.require(["resp_1", "file-a", "file-a"], "alice", files=["file-a"]) == {
        "file-a": FileFacts(pages=300)}
    assert await owners.require(["file-a"], "alice") == {}  # not named as a file: not looked up
    with pytest.raises(NotFound):
        await owners.require(["file-a"], "bob", files=["file-a"])
    await store.set("sentinel:file-facts:file-b", b"{not json")
    await owners.claim("file-b", "alice", None)
    assert await owners.require(["file-b"], "alice", files=["file-b"]) == {}  # unreadable: the bound
    await owners.forget("file-a")
    assert await store.get("sentinel:file-facts:file-a") is None


async def test_facts_of_many_files_are_looked_up_with_their_owners(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file's facts are read along with the owners; facts the store cannot give (an outage
    that spared the owner lookups) leave their files to the bound, refusing nothing."""
    owners = Ownership(store)
    ids = [f"file-{i}" for i in range(35)]
    for number, file_id in enumerate(ids):
        await owners.claim(file_id, "alice", None)
        await owners.remember_file(file_id, "alice", FileFacts(text=number))
    assert await owners.require(ids, "alice", files=ids) == {
        file_id: FileFacts(text=number) for number, file_id in enumerate(ids)}
    get, get_many = store.get, store.get_many

    async def failing(key: str) -> bytes | None:
        if key.startswith("sentinel:file-facts:"):
            raise StoreUnavailable("store down")
        return await get(key)

    async def failing_many(keys: list[str]) -> list[bytes | None]:
        if any(key.startswith("sentinel:file-facts:") for key in keys):
            raise StoreUnavailable("store down")
        return await get_many(keys)

    monkeypatch.setattr(store, "get", failing)
    monkeypatch.setattr(store, "get_many", failing_many)
    assert await owners.require(ids, "alice", files=ids) == {}
    assert await owners.require(["file-1"], "alice", files=["file-1"]) == {}
    with pytest.raises(NotFound):
        await owners.require([*ids, "file-bob"], "alice", files=ids)


async def test_an_answers_objects_are_claimed_at_once(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A response and its items are claimed together (`claim_all`): all under way at once — on one
    Redis server, one pipeline —, another user's item kept theirs, a store failure raised once every
    claim ended."""
    owners = Ownership(store)
    await owners.claim("msg_bob", "bob", None)
    running = peak = 0
    run = store.run

    async def counting(*args: object) -> object:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(0)
            return await run(*args)  # type: ignore[arg-type]
        finally:
            running -= 1

    monkeypatch.setattr(store, "run", counting)
    created = [("resp_1", 31 * DAY), *((f"msg_{i}", 31 * DAY) for i in range(20)), ("msg_bob", None)]
    await owners.claim_all(created, "alice")
    assert peak == len(created)
    assert [await owners.owner_of(i) for i in ("resp_1", "msg_19", "msg_bob")] == ["alice", "alice", "bob"]

    async def failing(*args: object) -> object:
        if "sentinel:owner:msg_3" in args[1]:  # type: ignore[operator]
            raise StoreUnavailable("store down")
        return await counting(*args)

    monkeypatch.setattr(store, "run", failing)
    with pytest.raises(StoreUnavailable):
        await owners.claim_all([("resp_2", None), ("msg_3x", None), ("msg_3", None)], "carol")
    assert await owners.owner_of("resp_2") == "carol"


async def test_confirming_the_charge_of_an_object_deleted_since_its_claim_marks_nothing(store: Store) -> None:
    """The object was deleted (`forget`: its marks removed) between the read's claim and its
    confirm: a plain SET wrote its mark back — kept for ever without a ttl — for an id that names
    nothing now. The confirm overwrites only a mark still there."""
    owners = Ownership(store)
    assert await owners.claim_charge("batch_gone", None) == "first"
    assert await owners.claim_charge("batch_kept", None) == "first"
    await owners.forget("batch_gone")
    await owners.confirm_charged(["batch_gone", "batch_kept"], None)
    assert await store.get("sentinel:charged:batch_gone") is None
    assert await owners.was_charged("batch_kept") and not await owners.was_charged("batch_gone")


async def test_a_reads_charge_is_claimed_then_confirmed_and_a_claim_never_confirmed_is_charged_again(
    store: Store,
) -> None:
    """A read claims an object's charge (`first`), records it, then confirms it (`charged` after).
    A claim never confirmed — its read died in between — is `pending` to the next read (which
    records it again under the same key) and uncharged to `uncharged`; a mark `charge_once` made (a
    metered call's own object, or any mark written before claims existed) is a charge done."""
    owners = Ownership(store)
    assert await owners.claim_charge("batch_1", None) == "first"
    assert await owners.claim_charge("batch_1", None) == "pending"
    assert await owners.uncharged(["batch_1"]) == ["batch_1"] and not await owners.was_charged("batch_1")
    await owners.confirm_charged(["batch_1", "batch_1", ""], None)
    assert await owners.claim_charge("batch_1", None) == "charged" and await owners.was_charged("batch_1")
    assert await owners.charge_once("resp_1", None) is True
    assert await owners.claim_charge("resp_1", None) == "charged"
    await store.set("sentinel:charged:batch_old", b"0f" * 16)  # an earlier version's mark
    assert await owners.claim_charge("batch_old", None) == "charged"
    assert await owners.claim_charge("run_2", None) == "first"
    assert await owners.charge_once("run_2", None) is False  # claimed by a read: not a call's own
    assert await owners.uncharged(["batch_1", "run_2", "batch_old", "run_3"]) == ["run_2", "run_3"]
    assert await owners.claim_charge("x" * 201, None) == "charged"  # names nothing


async def test_a_conversations_cut_turns_are_its_makers_bounded_and_dropped_with_it(store: Store) -> None:
    """The turns cut in a conversation (`note_cut_turn`), which a read of its items charges first,
    are listed oldest first for the user who made them only, MAX_CUT_TURNS at most (the oldest
    dropped), kept as long as a stored response from the last one noted, dropped once charged
    (`drop_cut_turns`) and with the conversation."""
    owners = Ownership(store)
    for n in range(MAX_CUT_TURNS + 2):
        await owners.note_cut_turn("conv_1", f"resp_{n}", "alice", 31 * DAY)
    await owners.note_cut_turn("conv_1", "resp_1", "alice", 31 * DAY)  # (noted again: kept once)
    await owners.note_cut_turn("conv_2", "resp_b", "bob", 31 * DAY)
    listed = await owners.cut_turns("conv_1", "alice")
    assert listed == [f"resp_{n}" for n in range(3, MAX_CUT_TURNS + 2)] + ["resp_1"]
    assert await owners.cut_turns("conv_1", "bob") == []
    assert await owners.cut_turns("conv_2", "alice") == []
    ttl = await store.ttl("sentinel:cut-turns:conv_1")
    assert ttl is not None and 30 * DAY < ttl <= 31 * DAY
    await owners.drop_cut_turns("conv_1", ["resp_3", "resp_1"])
    assert (await owners.cut_turns("conv_1", "alice"))[:1] == ["resp_4"]
    await owners.claim("conv_1", "alice", None)
    await owners.forget("conv_1")
    assert await owners.cut_turns("conv_1", "alice") == []
    assert await store.ttl("sentinel:cut-turns:conv_1") is None


async def test_a_cut_turn_is_listed_only_where_there_is_room_for_it(store: Store) -> None:
    """`list_cut_turn` drops none of the turns listed to make room (the read of the conversation's
    items charges those): with MAX_CUT_TURNS not charged yet listed a new one is not listed (False),
    one listed already still is; turns charged by a read of their own make room once dropped."""
    owners = Ownership(store)
    for n in range(MAX_CUT_TURNS):
        assert await owners.list_cut_turn("conv_1", f"resp_{n}", "alice", DAY)
    assert await owners.list_cut_turn("conv_1", "resp_new", "alice", DAY) is False
    assert await owners.list_cut_turn("conv_1", "resp_5", "alice", DAY)  # (listed already)
    assert await owners.cut_turns("conv_1", "alice") == [f"resp_{n}" for n in range(MAX_CUT_TURNS) if n != 5] + ["resp_5"]
    assert await owners.charge_once("resp_0", DAY)  # (its own read charged it)
    assert await owners.list_cut_turn("conv_1", "resp_new", "alice", DAY)
    listed = await owners.cut_turns("conv_1", "alice")
    assert "resp_0" not in listed and listed[-1] == "resp_new" and len(listed) == MAX_CUT_TURNS
    assert await owners.list_cut_turn("conv_1", "x" * 300, "alice", DAY) is False  # (no key names it)


async def test_a_continued_responses_cut_turns_past_the_bound_are_those_not_charged(store: Store) -> None:
    """`continued_cut_turns`: what a response continuing another would list — read for their charges only
    past MAX_CUT_TURNS, when those charged by a read of their own leave first, in `inherit_cut_turns`
    too (none not charged is dropped to make room for one charged)."""
    owners = Ownership(store)
    for n in range(MAX_CUT_TURNS):
        await owners.note_cut_turn("resp_p", f"resp_{n}", "alice", DAY)
    assert len(await owners.continued_cut_turns("resp_p", "alice")) == MAX_CUT_TURNS + 1  # (resp_p itself)
    assert await owners.charge_once("resp_0", DAY)
    unread = await owners.continued_cut_turns("resp_p", "alice")
    assert "resp_0" not in unread and len(unread) == MAX_CUT_TURNS
    await owners.inherit_cut_turns("resp_q", "resp_p", [], "alice", DAY)
    assert await owners.cut_turns("resp_q", "alice") == [f"resp_{n}" for n in range(1, MAX_CUT_TURNS)] + ["resp_p"]


async def test_a_later_responses_cut_turns_are_those_of_what_it_continued(store: Store) -> None:
    """A stored response made in a conversation, or continuing a response (`previous_response_id`),
    lists the cut turns its input items show (`inherit_cut_turns`): the conversation's, the
    continued response's own list, and that response itself while its usage is charged nothing —
    its maker's only; dropped with it."""
    owners = Ownership(store)
    await owners.note_cut_turn("conv_1", "resp_1", "alice", DAY)
    await owners.note_cut_turn("conv_1", "resp_b", "bob", DAY)
    await owners.inherit_cut_turns("resp_2", None, ["conv_1"], "alice", DAY)
    assert await owners.cut_turns("resp_2", "alice") == ["resp_1"]
    assert await owners.charge_once("resp_3", DAY)  # (a whole exchange: charged when made)
    await owners.inherit_cut_turns("resp_4", "resp_3", [], "alice", DAY)
    assert await owners.cut_turns("resp_4", "alice") == []
    await owners.inherit_cut_turns("resp_5", "resp_2", [], "alice", DAY)  # (resp_2 charged nothing yet)
    assert await owners.cut_turns("resp_5", "alice") == ["resp_1", "resp_2"]
    assert await owners.cut_turns("resp_5", "bob") == []
    await owners.claim("resp_5", "alice", None)
    await owners.forget("resp_5")
    assert await store.ttl("sentinel:cut-turns:resp_5") is None
