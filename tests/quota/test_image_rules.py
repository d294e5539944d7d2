"""A request's images are priced by the rule of every model that may serve it (`image_rule_for`):
Anthropic's for an Anthropic-format target, whatever the `detail`, the model's own for an OpenAI-format
one, and each image at the dearest of them. Once the rule was the first target's model's as an OpenAI
model's: `/v1/messages` to gpt-4o-mini was priced by Anthropic's (1,600 at most, where gpt-4o-mini
bills 25,501 for 1024 x 1024), a low-detail image to Claude at 85 (Claude bills ~1,400), and an
alias's image by its first target's rule, whichever target served it."""

from __future__ import annotations

import base64
from typing import Any

from sentinel.quota.estimate import estimate_input
from sentinel.quota.images import (
    ANTHROPIC,
    MAX_IMAGE_TOKENS,
    TILES,
    DearestRule,
    base64_image_tokens,
    image_rule_for,
    image_tokens,
    openai_image_rule,
    url_image_tokens,
)
from sentinel.quota.media import file_tokens, part_tokens
from sentinel.quota.tokens import TokenCounter
from tests.support.media import data_url, pdf, png

MINI = openai_image_rule("gpt-4o-mini")
CLAUDE = ("anthropic", "claude-3-5-haiku-20241022")
IMAGE = data_url(png(1024, 1024))  # Anthropic: 1,399; gpt-4o: 765 (85 at low detail); gpt-4o-mini: 25,501 (2,833)
CLAUDE_IMAGE = image_tokens(1024, 1024)


class MediaOnly(TokenCounter):
    """A counter for which every text is 0 tokens: an estimate is its overheads plus its media."""

    def _counting(self, model: str, user: str | None = None) -> tuple[str, Any]:
        return "none", lambda text: 0


def test_anthropics_rule_ignores_the_detail() -> None:
    assert CLAUDE_IMAGE == 1399
    for detail in (None, "low", "high", "auto"):
        assert ANTHROPIC.tokens(1024, 1024, detail) == CLAUDE_IMAGE
        assert url_image_tokens(IMAGE, detail, ANTHROPIC) == CLAUDE_IMAGE  # its header read, low detail too
        assert url_image_tokens("https://example.com/cat.png", detail, ANTHROPIC) == MAX_IMAGE_TOKENS
    assert part_tokens({"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}}, ANTHROPIC) == CLAUDE_IMAGE


def test_each_target_by_its_wire_format() -> None:
    assert image_rule_for([CLAUDE]) is ANTHROPIC
    assert image_rule_for([("anthropic", "gpt-4o-mini")]) is ANTHROPIC  # the wire format decides
    assert image_rule_for([("openai", "gpt-4o-mini")]) is MINI
    assert image_rule_for([("openai", "gpt-4o"), ("openai", "some-house-model")]) is TILES  # one rule: itself
    assert image_rule_for([]) is TILES


def test_the_dearest_rule_of_several_prices_each_image_at_its_most() -> None:
    both = image_rule_for([CLAUDE, ("openai", "gpt-4o-mini")])
    assert isinstance(both, DearestRule)
    assert image_rule_for([("openai", "gpt-4o-mini"), CLAUDE, CLAUDE]) is both  # made once per set of rules
    assert url_image_tokens(IMAGE, "low", both) == 2833  # gpt-4o-mini's low figure: dearer than Claude's
    assert url_image_tokens(IMAGE, None, both) == 25_501
    cheap = image_rule_for([CLAUDE, ("openai", "gpt-4o")])
    assert url_image_tokens(IMAGE, "low", cheap) == CLAUDE_IMAGE  # Claude's: gpt-4o's low detail is 85
    assert url_image_tokens(IMAGE, "high", cheap) == CLAUDE_IMAGE  # and its 2 x 2 tiles 765
    assert url_image_tokens(data_url(png(768, 2048)), "high", cheap) == 1445  # 8 tiles: gpt-4o's the dearer
    assert url_image_tokens("https://example.com/cat.png", "low", cheap) == MAX_IMAGE_TOKENS  # size unknown
    # Low detail costs the same whatever the image only when every rule says so.
    assert image_rule_for([("openai", "gpt-4o"), ("openai", "gpt-4o-mini")]).flat("low") == 2833
    assert cheap.flat("low") is None and cheap.flat(None) is None
    # A PDF's pages are letter-page images under the same rule; an Anthropic image block too.
    assert file_tokens(data_url(pdf(2), "application/pdf"), cheap) == 2 * max(image_tokens(612, 792), 765)
    assert base64_image_tokens(base64.b64encode(png(1024, 1024)).decode(), both) == 25_501


def test_every_estimate_takes_the_rule_it_is_given() -> None:
    counter = MediaOnly()
    low = {"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}}
    chat = {"messages": [{"role": "user", "content": [low] * 3}]}
    overhead = estimate_input(counter, "chat", "gpt-4o", {"messages": [{"role": "user", "content": "x"}]})
    assert estimate_input(counter, "chat", "gpt-4o", chat) == overhead + 3 * 85  # the model's, by default
    assert estimate_input(counter, "chat", "gpt-4o", chat, images=ANTHROPIC) == overhead + 3 * CLAUDE_IMAGE
    responses = {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": IMAGE, "detail": "low"}]},
                           {"type": "function_call_output", "call_id": "c", "output": [
                               {"type": "input_image", "image_url": IMAGE, "detail": "low"}]}]}
    assert estimate_input(counter, "responses", "gpt-4o", responses) == 3 + 3 + 2 * 85
    assert estimate_input(counter, "responses", "gpt-4o", responses, images=ANTHROPIC) == 3 + 3 + 2 * CLAUDE_IMAGE
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(png(1024, 1024)).decode()}}
    url = {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
    messages = {"max_tokens": 10, "messages": [{"role": "user", "content": [image, url]}]}
    assert estimate_input(counter, "messages", "gpt-4o-mini", messages) == 3 + 3 + CLAUDE_IMAGE + MAX_IMAGE_TOKENS
    # `/v1/messages` translated to gpt-4o-mini: an image with no detail is its tiles.
    assert estimate_input(counter, "messages", "gpt-4o-mini", messages, images=MINI) == 3 + 3 + 25_501 + 2833 + 8 * 5667
