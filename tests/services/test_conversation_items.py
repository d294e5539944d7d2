"""What items given to a conversation hold beyond their JSON's bytes (`conversation_unread`): the
context every later response in it makes the provider read."""

from __future__ import annotations

import orjson

from sentinel.quota.estimate import item_references
from sentinel.services.relay import conversation_unread


def test_each_item_given_by_id_holds_the_reference_figure() -> None:
    """A stored item given by id puts its whole text in the conversation: counted by the same rule as
    a reference in a response's input (`item_references`), the typed and the untyped spelling."""
    items = [{"type": "item_reference", "id": "msg_1"}, {"id": "msg_2"}]
    body = orjson.dumps({"items": items})
    assert item_references(items) == 2
    assert item_references([*items, {"type": None, "id": "msg_3"}]) == 3  # (a null type is none)
    assert conversation_unread(body, 700) == 1_400
    assert conversation_unread(body, 0) == 0


def test_items_given_whole_hold_no_reference() -> None:
    """A message given with its text (and an id of its own) is counted by its bytes alone; a body that
    is not an object of items names nothing."""
    given = {"items": [{"type": "message", "id": "msg_1", "role": "user", "content": "hi"},
                       {"id": "msg_2", "role": "user", "content": "x"}, {"id": ""}, "msg_3"]}
    assert conversation_unread(orjson.dumps(given), 700) == 0
    assert conversation_unread(orjson.dumps({"items": {"id": "msg_1"}}), 700) == 0
    assert conversation_unread(orjson.dumps([{"id": "msg_1"}]), 700) == 0
    assert conversation_unread(b"not json", 700) == 0
