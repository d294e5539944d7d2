"""The create-key form's nonce claims on the in-process store (the HTTP tests cover both stores)."""

from __future__ import annotations

from datetime import UTC, datetime

from sentinel.api.console_once import EarlierPost, KeyFormNonces
from sentinel.api.console_pages import user_page
from sentinel.governance.keys import ApiKeyInfo
from sentinel.store import MemoryStore

INFO = ApiKeyInfo("key_0123456789ab", "erin", "laptop", "sk-sentinel-AbCdEfGh", datetime.now(UTC), None, None)


async def test_a_nonce_is_claimed_once_and_its_claim_names_the_key_never_holds_it() -> None:
    store = MemoryStore()
    nonces = KeyFormNonces(store, ttl=60)
    nonce = nonces.new()
    assert nonces.well_formed(nonce) and nonce != nonces.new()
    assert await nonces.claim(nonce) is None  # the first post creates the key
    assert await nonces.claim(nonce) == EarlierPost()  # a second one while the first is still running
    await nonces.record(nonce, INFO)
    assert await nonces.claim(nonce) == EarlierPost(INFO.id, INFO.prefix, "erin")
    stored = await store.get("sentinel:console:key-form:" + nonce)
    assert stored is not None and b"sk-sentinel-AbCdEfGh" in stored and b"laptop" not in stored
    ttl = await store.ttl("sentinel:console:key-form:" + nonce)
    assert ttl is not None and 0 < ttl <= 60
    other = nonces.new()
    assert await nonces.claim(other) is None
    await nonces.release(other)  # a refused form: sent again, it may create its key
    assert await nonces.claim(other) is None


def test_nonces_are_32_lower_case_hex_digits() -> None:
    for given in ("", "0" * 31, "0" * 33, "A" * 32, "g" * 32, " " + "0" * 31, "0" * 31 + "\n"):
        assert not KeyFormNonces.well_formed(given), given
    assert KeyFormNonces.well_formed("0123456789abcdef" * 2)


def test_the_page_answering_a_form_sent_again_names_what_it_created() -> None:
    running = user_page("erin", None, [], "csrf", "0" * 32, earlier=EarlierPost())
    assert "This form was already sent" in running and "still being answered" in running
    done = user_page("erin", None, [], "csrf", "0" * 32, earlier=EarlierPost(INFO.id, INFO.prefix, "erin"))
    assert f"<code>{INFO.prefix}\u2026</code> ({INFO.id}), which is not shown again" in done
    elsewhere = user_page("frank", None, [], "csrf", "0" * 32, earlier=EarlierPost(INFO.id, INFO.prefix, "erin"))
    assert 'for <a href="/admin/users/erin"><bdi>erin</bdi></a>' in elsewhere
    assert 'name="nonce" value="' + "0" * 32 + '"' in done  # a fresh form of its own
