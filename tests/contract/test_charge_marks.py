"""A read's charge claim never outlives the object it charges, on every backend (memory, Redis, a
Redis Cluster — where the claim's mark and its object's owner record are in different slots).

A read passes the ownership check, then a DELETE of the object forgets its owner and its marks
(`Ownership.forget`), then the read claims the charge: the claim made `sentinel:charged:<id>` again,
kept for ever when its TTL is None (a thread's runs, a batch, a fine-tuning job) — for an object
that no longer exists. The DELETE is injected at each step of the claim (before it, between its mark
and its owner read); the read is still the first (it showed the usage: charged, under the object's
key), and no mark is left."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any, cast

import pytest

from sentinel.errors import StoreUnavailable
from sentinel.governance.ownership import ADOPT, FORGOTTEN_CHILD_TTL, FORGOTTEN_ITEM_TTL, ORPHAN, Ownership
from sentinel.store import Script, Store


def _deleted_between(owners: Ownership, deleted: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DELETE of `deleted`, landing after the claim's mark is made, before its owner is read."""
    real = owners.owner_of

    async def owner_of(object_id: str) -> str | None:
        await owners.forget(deleted)
        return await real(object_id)

    monkeypatch.setattr(owners, "owner_of", owner_of)


@pytest.mark.parametrize("lands", ["before the claim", "between its mark and its owner read"])
@pytest.mark.parametrize(("charged", "within"), [("batch_1", "batch_1"), ("run_1", "thread_1")])
async def test_a_claim_after_its_objects_delete_leaves_no_mark(
    store: Store, monkeypatch: pytest.MonkeyPatch, lands: str, charged: str, within: str
) -> None:
    owners = Ownership(store)
    try:
        assert await owners.claim(within, "alice", None)
        if lands == "before the claim":
            await owners.forget(within)  # (the DELETE's)
        else:
            _deleted_between(owners, within, monkeypatch)
        assert await owners.claim_charge(charged, None, within) == "first"  # (it showed the usage: charged)
        await owners.confirm_charged([charged], None)
        assert await store.get("sentinel:charged:" + charged) is None
        assert await owners.owner_of(within) is None
    finally:
        await store.delete("sentinel:charged:" + charged, "sentinel:owner:" + within)


async def test_a_claim_while_its_object_is_kept_is_marked_and_confirmed(store: Store) -> None:
    owners = Ownership(store)
    try:
        assert await owners.claim("thread_1", "alice", None)
        assert await owners.claim_charge("run_1", None, "thread_1") == "first"
        assert await owners.claim_charge("run_1", None, "thread_1") == "pending"
        await owners.confirm_charged(["run_1"], None)
        assert await owners.claim_charge("run_1", None, "thread_1") == "charged"
        assert await store.ttl("sentinel:charged:run_1") == -1.0  # (kept as long as its thread: no TTL)
    finally:
        await store.delete("sentinel:charged:run_1", "sentinel:owner:thread_1")


async def test_a_claim_found_after_the_delete_is_not_taken_back(store: Store) -> None:
    """Only the claim's own mark is taken back: another read's, found there, is that read's to answer for."""
    owners = Ownership(store)
    try:
        await store.set("sentinel:charged:batch_1", b"charged", None)
        assert await owners.claim_charge("batch_1", None, "batch_1") == "charged"
        assert await store.get("sentinel:charged:batch_1") == b"charged"
    finally:
        await store.delete("sentinel:charged:batch_1")


# A thread's runs and an eval's runs are charged under their parent's path (`within`): kept without a
# TTL as their parent's owner is, their marks stayed in the store for good once the parent was
# deleted — a user creating and deleting threads grew it without bound. The parent's `forget` now
# ends them a day later (not at once: a read in flight that fetched a run before the DELETE still
# finds it charged), and their list goes with the parent.
_PARENTS = [("run_1", "thread_1"), ("evalrun_1", "eval_1")]


def _children_key(parent: str) -> str:
    return "{sentinel:owner:" + parent + "}:charged-children"


@pytest.mark.parametrize("confirm", ["claim_charge", "charge_once"])
@pytest.mark.parametrize(("child", "parent"), _PARENTS)
async def test_a_parents_forget_ends_its_childrens_marks_without_charging_them_again(
    store: Store, child: str, parent: str, confirm: str
) -> None:
    owners = Ownership(store)
    try:
        assert await owners.claim(parent, "alice", None)
        if confirm == "claim_charge":
            assert await owners.claim_charge(child, None, parent) == "first"
            await owners.confirm_charged([child], None)
        else:
            assert await owners.charge_once(child, None, parent)
        assert await store.ttl("sentinel:charged:" + child) == -1.0  # (kept as long as its parent)
        await owners.forget(parent)
        left = await store.ttl("sentinel:charged:" + child)
        assert left is not None and 0 < left <= FORGOTTEN_CHILD_TTL
        assert await store.ttl(_children_key(parent)) is None
        # a read in flight, which fetched the run before the DELETE, finds it charged still
        assert await owners.claim_charge(child, None, parent) == "charged"
        assert not await owners.charge_once(child, None, parent)
        assert await store.ttl(_children_key(parent)) is None  # (no child added once the parent is gone)
    finally:
        await store.delete("sentinel:charged:" + child, "sentinel:owner:" + parent, _children_key(parent))


@pytest.mark.parametrize(("child", "parent"), _PARENTS)
async def test_a_claim_confirmed_after_its_parents_forget_keeps_the_end_of_its_mark(
    store: Store, child: str, parent: str
) -> None:
    """A read claimed the run, its thread was deleted, then the read confirmed: its mark ends still
    (confirmed with its thread's TTL, None, it was kept for ever)."""
    owners = Ownership(store)
    try:
        assert await owners.claim(parent, "alice", None)
        assert await owners.claim_charge(child, None, parent) == "first"
        await owners.forget(parent)
        await owners.confirm_charged([child], None)
        assert await store.get("sentinel:charged:" + child) == b"charged"
        left = await store.ttl("sentinel:charged:" + child)
        assert left is not None and 0 < left <= FORGOTTEN_CHILD_TTL
    finally:
        await store.delete("sentinel:charged:" + child, "sentinel:owner:" + parent, _children_key(parent))


@pytest.mark.parametrize("lands", ["before the claim", "between its adoption and its mark",
                                   "between its mark and its owner read"])
@pytest.mark.parametrize(("child", "parent"), _PARENTS)
async def test_a_claim_racing_its_parents_delete_leaves_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch, lands: str, child: str, parent: str
) -> None:
    """The parent's DELETE lands at each step of a claim of a child never charged: the read is the
    first (it showed the usage), and neither a mark nor a list of children is left."""
    owners = Ownership(store)
    try:
        assert await owners.claim(parent, "alice", None)
        if lands == "before the claim":
            await owners.forget(parent)
        elif lands == "between its mark and its owner read":
            _deleted_between(owners, parent, monkeypatch)
        else:
            real = owners._mark

            async def mark(*args: object) -> object:
                await owners.forget(parent)
                return await real(*args)  # type: ignore[arg-type]

            monkeypatch.setattr(owners, "_mark", mark)
        assert await owners.claim_charge(child, None, parent) == "first"
        await owners.confirm_charged([child], None)
        assert await store.get("sentinel:charged:" + child) is None
        assert await store.ttl(_children_key(parent)) is None
        assert await owners.owner_of(parent) is None
    finally:
        await store.delete("sentinel:charged:" + child, "sentinel:owner:" + parent, _children_key(parent))


async def test_a_parent_kept_for_a_while_keeps_its_children_list_as_long(store: Store) -> None:
    """The list of a parent's children never outlives its owner record (a parent kept with a TTL)."""
    owners = Ownership(store)
    try:
        assert await owners.claim("resp_1", "alice", 600)
        assert await owners.claim_charge("child_1", 600, "resp_1") == "first"
        left = await store.ttl(_children_key("resp_1"))
        assert left is not None and 0 < left <= 600
    finally:
        await store.delete("sentinel:charged:child_1", "sentinel:owner:resp_1", _children_key("resp_1"))


@pytest.mark.parametrize("parent", ["thread_{1}", "a{b", "a}b{c}"])
async def test_a_parent_whose_id_holds_braces_keeps_its_children_beside_it(store: Store, parent: str) -> None:
    """An id with `{`/`}` (a hash tag of its own, or none) still has its children's list in its owner
    record's slot (a script spanning two slots is refused on a Cluster)."""
    owners = Ownership(store)
    try:
        assert await owners.claim(parent, "alice", None)
        assert await owners.claim_charge("run_1", None, parent) == "first"
        await owners.forget(parent)
        left = await store.ttl("sentinel:charged:run_1")
        assert left is not None and 0 < left <= FORGOTTEN_CHILD_TTL
    finally:
        await store.delete("sentinel:charged:run_1", "sentinel:owner:" + parent)


# A conversation's items become their reader's kept without a TTL, as the conversation is: its
# DELETE left each item's owner record in the store for good. It now ends them in 31 days (a stored
# response may still show an item until then).
async def test_a_conversations_forget_ends_its_items_owners(store: Store) -> None:
    owners = Ownership(store)
    try:
        assert await owners.claim("conv_1", "alice", None)
        assert await owners.claim("msg_bob", "bob", None)
        await owners.claim_all([("msg_1", None), ("msg_2", None), ("msg_bob", None)], "alice", parent="conv_1")
        assert [await store.ttl("sentinel:owner:" + i) for i in ("msg_1", "msg_2")] == [-1.0, -1.0]
        await owners.forget("conv_1")
        for item in ("msg_1", "msg_2"):
            left = await store.ttl("sentinel:owner:" + item)
            assert left is not None and FORGOTTEN_CHILD_TTL < left <= FORGOTTEN_ITEM_TTL
            assert await owners.owner_of(item) == "alice"  # (a stored response may show it still)
        assert await store.ttl("sentinel:owner:msg_bob") == -1.0  # another's item is not alice's to end
        assert await store.ttl(_children_key("conv_1")) is None
    finally:
        await store.delete(*("sentinel:owner:" + i for i in ("conv_1", "msg_1", "msg_2", "msg_bob")),
                           _children_key("conv_1"))


@pytest.mark.parametrize("lands", ["before the claim", "between its claims and its adoption"])
async def test_items_claimed_after_their_conversations_forget_end_too(
    store: Store, monkeypatch: pytest.MonkeyPatch, lands: str
) -> None:
    owners = Ownership(store)
    try:
        assert await owners.claim("conv_1", "alice", None)
        if lands == "before the claim":
            await owners.forget("conv_1")
        else:
            real = owners.claim

            async def claim(*args: object) -> bool:
                claimed = await real(*args)  # type: ignore[arg-type]
                await owners.forget("conv_1")
                return claimed

            monkeypatch.setattr(owners, "claim", claim)
        await owners.claim_all([("msg_1", None)], "alice", parent="conv_1")
        left = await store.ttl("sentinel:owner:msg_1")
        assert left is not None and 0 < left <= FORGOTTEN_ITEM_TTL
        assert await store.ttl(_children_key("conv_1")) is None
    finally:
        await store.delete("sentinel:owner:conv_1", "sentinel:owner:msg_1", _children_key("conv_1"))


async def test_an_item_deleted_on_its_own_leaves_its_conversations_list(store: Store) -> None:
    """Listed without a TTL as its conversation is, an item deleted by itself stayed listed: adding,
    reading and deleting items grew the list for as long as the conversation is kept."""
    owners = Ownership(store)
    try:
        assert await owners.claim("conv_1", "alice", None)
        await owners.claim_all([("msg_1", None), ("msg_2", None)], "alice", parent="conv_1")
        await owners.forget("msg_1", parent="conv_1")
        assert await owners.owner_of("msg_1") is None
        await owners.forget("conv_1")  # msg_2 alone is ended: msg_1 is listed no more
        left = await store.ttl("sentinel:owner:msg_2")
        assert left is not None and 0 < left <= FORGOTTEN_ITEM_TTL
        assert await store.ttl("sentinel:owner:msg_1") is None
        assert await owners.claim("conv_2", "alice", None)
        await owners.claim_all([("msg_3", None)], "alice", parent="conv_2")
        await owners.forget("msg_3", parent="conv_2")
        assert await store.ttl(_children_key("conv_2")) is None  # its last item gone: no list left
    finally:
        await store.delete(*("sentinel:owner:" + i for i in ("conv_1", "conv_2", "msg_1", "msg_2", "msg_3")),
                           _children_key("conv_1"), _children_key("conv_2"))


async def test_a_childs_own_delete_ends_its_mark_only_under_its_parent(store: Store) -> None:
    """An eval run deleted on its own (`forget_child`): its mark ends a day later, as when its eval
    is deleted — but only when the run is the named eval's child: a DELETE naming another's run
    under one's own eval touches nothing of it."""
    owners = Ownership(store)
    try:
        for parent, owner in (("eval_1", "alice"), ("eval_2", "bob")):
            assert await owners.claim(parent, owner, None)
        assert await owners.claim_charge("evalrun_1", None, "eval_1") == "first"
        await owners.confirm_charged(["evalrun_1"], None)
        await owners.forget_child("evalrun_1", "eval_2")  # (bob's eval)
        assert await store.ttl("sentinel:charged:evalrun_1") == -1.0
        await owners.forget_child("evalrun_1", "eval_1")
        left = await store.ttl("sentinel:charged:evalrun_1")
        assert left is not None and 0 < left <= FORGOTTEN_CHILD_TTL
        assert await owners.claim_charge("evalrun_1", None, "eval_1") == "charged"  # (a read in flight)
    finally:
        await store.delete("sentinel:charged:evalrun_1", "sentinel:owner:eval_1", "sentinel:owner:eval_2",
                           _children_key("eval_1"), _children_key("eval_2"))


# The parent's `forget` dropped its owner record first (answering its children), then ended them and
# its list: a store failing part way (a Cluster primary down, a lost connection) or the process dying
# left the list, and every child not yet ended, kept for ever — nothing reads them again once the
# owner record is gone — and the relay logged "owner record was kept". The children are now ended
# while the owner record is kept, the list gets its end with the record's drop, and a failure after
# it is carried past. The store fails, on each backend, at each step.
class _Down:
    """`store`, failing (StoreUnavailable) each operation `down(self, op, key)` names (or awaited:
    what happens just before that operation); `orphaned` once the parent's owner record was dropped
    (`ORPHAN` answered)."""

    def __init__(self, store: Store, down: Callable[[_Down, str, str], Any]) -> None:
        self.store, self.down, self.orphaned = store, down, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def _check(self, op: str, key: str) -> None:
        down = self.down(self, op, key)
        if down if not inspect.isawaitable(down) else await down:
            raise StoreUnavailable(f"store unavailable ({op} {key})")

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        await self._check("orphan" if script is ORPHAN else "run", keys[0])
        answer = await self.store.run(script, keys, args)
        self.orphaned = self.orphaned or script is ORPHAN
        return answer

    async def expire(self, key: str, ttl: float) -> bool:
        await self._check("expire", key)
        return await self.store.expire(key, ttl)

    async def delete(self, *keys: str) -> int:
        await self._check("delete", keys[0])
        return await self.store.delete(*keys)


_FAILURES: dict[str, Callable[[_Down, str, str], bool]] = {
    "after its owner record is dropped": lambda down, op, key: down.orphaned,
    "at its owner record": lambda down, op, key: op == "orphan" or down.orphaned,
    "in one child's slot": lambda down, op, key: op == "expire" and key in ("sentinel:charged:run_1", "sentinel:owner:msg_1"),
}


@pytest.mark.parametrize("fails", list(_FAILURES))
@pytest.mark.parametrize(("parent", "kind"), [("thread_1", "runs"), ("conv_1", "items")])
async def test_a_parents_forget_failing_part_way_leaves_nothing_without_an_end(
    store: Store, caplog: pytest.LogCaptureFixture, fails: str, parent: str, kind: str
) -> None:
    children = ["run_1", "run_2"] if kind == "runs" else ["msg_1", "msg_2"]
    prefix, end = ("sentinel:charged:", FORGOTTEN_CHILD_TTL) if kind == "runs" else ("sentinel:owner:", FORGOTTEN_ITEM_TTL)
    owners = Ownership(store)
    try:
        assert await owners.claim(parent, "alice", None)
        if kind == "runs":
            for child in children:
                assert await owners.charge_once(child, None, parent)
        else:
            await owners.claim_all([(child, None) for child in children], "alice", parent=parent)
        assert [await store.ttl(prefix + child) for child in children] == [-1.0, -1.0]
        failing = Ownership(cast(Store, _Down(store, _FAILURES[fails])))
        with caplog.at_level(logging.WARNING, "sentinel.ownership"):
            if fails == "at its owner record":
                with pytest.raises(StoreUnavailable):
                    await failing.forget(parent)
                assert await owners.owner_of(parent) == "alice"  # (what the relay logs: "owner record was kept")
            else:
                await failing.forget(parent)  # its owner record dropped: no "owner record was kept"
                assert await owners.owner_of(parent) is None
                assert "kept without an expiry" in caplog.text
        ended = children[1:] if fails == "in one child's slot" else children  # (run_1's slot is down)
        for child in ended:
            left = await store.ttl(prefix + child)
            assert left is not None and 0 < left <= end, (child, left)
        listed = await store.ttl(_children_key(parent))
        if fails == "at its owner record":
            assert listed == -1.0  # kept as its owner record is
        else:
            assert listed is not None and 0 < listed <= FORGOTTEN_CHILD_TTL  # ends, though nothing drops it
        await owners.forget(parent)  # (the store back: a DELETE of it again)
        assert await store.ttl(_children_key(parent)) is None
        for child in children:
            left = await store.ttl(prefix + child)
            assert left is not None and 0 < left <= end, (child, left)
    finally:
        await store.delete(*(prefix + child for child in children), "sentinel:owner:" + parent, _children_key(parent))


async def test_a_run_marked_while_its_thread_is_forgotten_ends_too(store: Store) -> None:
    """A read listed its run (`ADOPT`) before the DELETE, and marks it once the DELETE ended the
    children but before it dropped the thread's owner record: the read finds the owner and keeps its
    mark, which the DELETE ends after that drop (ended only before it, the mark was kept for ever)."""
    owners = Ownership(store)
    children = _children_key("thread_1")
    try:
        assert await owners.claim("thread_1", "alice", None)
        await store.run(ADOPT, ["sentinel:owner:thread_1", children], ["c", "run_1"])  # (the read's first step)

        async def marked(down: _Down, op: str, key: str) -> None:
            if op == "orphan":
                assert await owners.charge_once("run_1", None, "thread_1")  # (then the rest of the read)

        await Ownership(cast(Store, _Down(store, marked))).forget("thread_1")
        left = await store.ttl("sentinel:charged:run_1")
        assert left is not None and 0 < left <= FORGOTTEN_CHILD_TTL
    finally:
        await store.delete("sentinel:charged:run_1", "sentinel:owner:thread_1", children)


async def test_a_runs_provisional_usage_ends_with_its_threads_forget(store: Store) -> None:
    """The usage a run's `requires_action` steps were charged (`add_shown`), kept as long as
    its thread (no TTL), ends with the thread's forget as its marks do — and one added after that
    forget is taken back: nothing is left for good of a deleted thread."""
    owners = Ownership(store)
    keys = ["sentinel:run-shown-input:run_1", "sentinel:run-shown-output:run_1"]
    try:
        assert await owners.claim("thread_1", "alice", None)
        await owners.add_shown("run_1", 40, 7, None, "thread_1")
        await owners.add_shown("run_1", 30, 5, None, "thread_1")
        assert await owners.shown("run_1") == (70, 12)
        for key in keys:
            assert await store.ttl(key) == -1.0
        await owners.forget("thread_1")
        for key in keys:
            left = await store.ttl(key)
            assert left is not None and 0 < left <= FORGOTTEN_CHILD_TTL
        await store.delete(*keys)
        await owners.add_shown("run_1", 40, 7, None, "thread_1")  # (a read in flight, after the DELETE)
        assert [await store.ttl(key) for key in keys] == [None, None] and await owners.shown("run_1") == (0, 0)
    finally:
        await store.delete(*keys, "sentinel:owner:thread_1", _children_key("thread_1"))
