"""Responses API items as the model reads them: one rule for a request's input items (the admission
estimate, `sentinel.quota.estimate`) and an answer's hosted-tool output items (what a stream cut
before its usage is charged as read, `sentinel.quota.usage`).

An item is JSON the model reads as text, whatever its shape: every string in it counts, keys too (a
tool list's input schemas, a function output's JSON: a property name can be as long as any value),
and each number, `true`, `false` or `null` one token. Left out: the item's own bookkeeping fields
while short (`ITEM_FIELDS`), the fields its caller names (what the model wrote of an output item),
and the data of image, file and audio parts (`MEDIA_FIELDS`), which cost their own estimate instead
(`sentinel.quota.media`: an image by the request's image rule, a PDF by its pages).
"""

from __future__ import annotations

from typing import Any

from sentinel.quota.images import TILES, ImageRule
from sentinel.quota.media import MEDIA_KINDS, NO_FILES, Files, TextCount, part_tokens

# An item's own bookkeeping fields (not text the model reads) while short, as real ones are (a long
# one is counted: an id the client makes up is the client's text); only at the item's top level:
# deeper, a key of that name is the client's (a tool schema's property called `id`, say), counted.
ITEM_FIELDS = frozenset({"id", "call_id", "type", "status"})
LABEL_CHARS = 64
# Parts whose data fields are an image, a file or audio (a data URL or base64), not text: skipped
# only inside such a part, so naming a key `image_url` elsewhere hides nothing.
MEDIA_FIELDS = {
    "input_image": frozenset({"image_url", "file_data"}),
    "computer_screenshot": frozenset({"image_url", "file_data"}),
    "input_file": frozenset({"file_data", "file_url"}),
    "input_audio": frozenset({"data", "input_audio"}),
    "reasoning": frozenset({"encrypted_content"}),  # the provider's own ciphertext, not the client's text
}
NO_FIELDS: frozenset[str] = frozenset()


def item_text(
    item: dict[str, Any], skipped: frozenset[str] = NO_FIELDS, *, images: ImageRule = TILES,
    count: TextCount | None = None, files: Files = NO_FILES,
) -> tuple[list[str], int]:
    """An item as the model reads it (see the module docstring): its strings, keys included, to
    count as text, and the tokens counted already (its scalars, one each, and its images' and
    files' estimates, by the image rule `images`; a text file's text by `count`, the request's
    tokenizer, when given; a file by id by its `files` facts). `skipped`: top-level fields left out besides the
    bookkeeping ones. Iterative:
    a request body's depth is checked before any estimate; an upstream event's is orjson's bound."""
    kind = item.get("type")
    own = MEDIA_FIELDS.get(kind, NO_FIELDS) if isinstance(kind, str) else NO_FIELDS
    tokens = part_tokens(item, images, count, files) if isinstance(kind, str) and kind in MEDIA_KINDS else 0
    parts: list[str] = []
    stack: list[Any] = []
    for key, value in reversed(item.items()):  # (reversed: the stack gives them back in order)
        if key in skipped or key in own or (key in ITEM_FIELDS and isinstance(value, str) and len(value) <= LABEL_CHARS):
            continue
        stack += [value, key]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, dict):
            kind = node.get("type")
            skip = NO_FIELDS
            if isinstance(kind, str):
                skip = MEDIA_FIELDS.get(kind, NO_FIELDS)
                if kind in MEDIA_KINDS:
                    tokens += part_tokens(node, images, count, files)
            for key, value in reversed(node.items()):
                if key not in skip:
                    stack += [value, key]
        elif isinstance(node, list):
            stack.extend(reversed(node))
        else:
            tokens += 1
    return parts, tokens
