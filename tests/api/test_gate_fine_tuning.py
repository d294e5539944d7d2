"""Fine-tuned models belong to their job's owner, on a real Redis, against the mock's Fine-tuning API.

Alice fine-tunes a model through Sentinel; a read of her job shows its `fine_tuned_model` and a read
of its checkpoints each checkpoint's `fine_tuned_model_checkpoint`. Bob shares the provider account:
he must neither list, grant nor delete the permissions of her models
(`/v1/fine_tuning/checkpoints/{model}/permissions`) nor train a job of his own on one of them — each
answered exactly as a model that does not exist, nothing reaching the provider, nothing changed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.api.conftest import Gateway
from tests.support.accounts import create_key
from tests.support.attack import SpyUpstream, ledger_rows, openai_error
from tests.support.waiting import wait_for

PASSTHROUGH = "/v1/files/*,/v1/fine_tuning/*,/v1/assistants,/v1/audio/*"


def start(gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str) -> Gateway:
    return gateway_factory(openai_api_url=spy.url + "/v1", redis_url=redis_url, passthrough=PASSTHROUGH)


def key_for(gw: Gateway, user: str) -> str:
    return asyncio.run(create_key(gw.settings.database_url, user))[1]


def tuned(client: httpx.Client, model: str = "gpt-4o-mini-2024-07-18") -> tuple[str, str, list[str]]:
    """A job of `client`'s user trained on `model`: (its id, its fine-tuned model, its checkpoints'
    models), each as a read through the gateway shows it."""
    upload = client.post("/v1/files", files={"file": ("train.jsonl", b'{"messages": []}\n')},
                         data={"purpose": "fine-tune"})
    assert upload.status_code == 200, upload.text
    made = client.post("/v1/fine_tuning/jobs", json={"model": model, "training_file": upload.json()["id"]})
    assert made.status_code == 200, made.text
    job = client.get(f"/v1/fine_tuning/jobs/{made.json()['id']}").json()
    assert job["status"] == "succeeded" and job["fine_tuned_model"].startswith("ft:"), job
    checkpoints = client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
    return job["id"], job["fine_tuned_model"], [c["fine_tuned_model_checkpoint"] for c in checkpoints]


def same_as_missing(attempt: httpx.Response, missing: httpx.Response, real: str, ghost: str) -> dict[str, Any]:
    """`attempt` naming a real model answers exactly what `missing` answered for one that does not exist."""
    assert attempt.status_code == missing.status_code == 404, (attempt.text, missing.text)
    # (in any case: a name may be given upper-cased)
    assert attempt.text.lower().replace(real.lower(), "<model>") == missing.text.lower().replace(ghost.lower(), "<model>")
    return openai_error(attempt.json())


def permission_calls(client: httpx.Client, model: str, permission: str) -> list[httpx.Response]:
    base = f"/v1/fine_tuning/checkpoints/{model}/permissions"
    return [client.get(base), client.post(base, json={"project_ids": ["proj_bob"]}),
            client.delete(f"{base}/{permission}")]


def test_a_fine_tuned_models_permissions_are_its_jobs_owners(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    gw = start(gateway_factory, spy, redis_url)
    bob_key = key_for(gw, "bob")
    with gw.client() as alice, gw.client(bob_key) as bob:
        _, model, checkpoints = tuned(alice)
        assert len(checkpoints) == 2 and all(c.startswith(model + ":ckpt-step-") for c in checkpoints)
        for named in (model, checkpoints[0]):  # the job's model, and a checkpoint's
            granted = alice.post(f"/v1/fine_tuning/checkpoints/{named}/permissions", json={"project_ids": ["proj_a"]})
            assert granted.status_code == 200, granted.text
            permission = granted.json()["data"][0]["id"]
            ghost = named[:-4] + "zzzz"
            spy.clear()
            for attempt, missing in zip(permission_calls(bob, named, permission),
                                        permission_calls(bob, ghost, permission), strict=True):
                same_as_missing(attempt, missing, named, ghost)
            assert spy.seen == []  # none of Bob's calls reached the provider account
            # nothing changed: Alice's grant is there, hers to list and to delete
            listed = alice.get(f"/v1/fine_tuning/checkpoints/{named}/permissions")
            assert listed.status_code == 200 and [p["id"] for p in listed.json()["data"]] == [permission]
            deleted = alice.delete(f"/v1/fine_tuning/checkpoints/{named}/permissions/{permission}")
            assert deleted.status_code == 200 and deleted.json()["deleted"] is True, deleted.text
    # Bob's refused calls left no usage record
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "alice")) == 10)  # her 4 calls, 3 a model
    assert ledger_rows(gw.settings.database_url, "bob") == []


@pytest.mark.parametrize("checkpoint", [False, True], ids=["model", "checkpoint"])
def test_a_job_may_train_only_its_makers_fine_tuned_model(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str, checkpoint: bool
) -> None:
    gw = start(gateway_factory, spy, redis_url)
    bob_key = key_for(gw, "bob")
    with gw.client() as alice, gw.client(bob_key) as bob:
        _, model, checkpoints = tuned(alice)
        base = checkpoints[-1] if checkpoint else model
        ghost = base[:-4] + "zzzz"
        bob_file = bob.post("/v1/files", files={"file": ("t.jsonl", b'{"messages": []}\n')},
                            data={"purpose": "fine-tune"}).json()["id"]
        spy.clear()

        def attempts(named: str) -> list[httpx.Response]:
            return [
                bob.post("/v1/fine_tuning/jobs", json={"model": named, "training_file": bob_file}),
                bob.post("/v1/fine_tuning/jobs", json={"model": f" {named.upper()}", "training_file": bob_file}),
                # any pass-through body that runs a model: an assistant's
                bob.post("/v1/assistants", json={"model": named, "instructions": "x"}),
                # an upload's `model` field
                bob.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF")}, data={"model": named}),
            ]

        for attempt, missing in zip(attempts(base), attempts(ghost), strict=True):
            error = same_as_missing(attempt, missing, base, ghost)
            assert error["code"] == "model_not_found" and error["param"] == "model", error
        assert spy.seen == []  # no job was made on Alice's model, nothing was sent
        # Alice trains on her own model, and Bob on his own
        again = alice.post("/v1/fine_tuning/jobs", json={"model": base, "training_file": alice.post(
            "/v1/files", files={"file": ("t.jsonl", b"{}\n")}, data={"purpose": "fine-tune"}).json()["id"]})
        assert again.status_code == 200, again.text
        _, own, _ = tuned(bob)
        assert tuned(bob, own)[1].startswith("ft:")
    # Bob's refused calls left no usage record: his upload's, then his two jobs' 4 calls each
    assert wait_for(lambda: len(ledger_rows(gw.settings.database_url, "bob")) == 9)
    assert all(row["status"] == 200 for row in ledger_rows(gw.settings.database_url, "bob"))


def test_a_model_no_read_showed_is_no_ones(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """A fine-tuned model no read of a job through Sentinel showed (a job made around it) is no one's:
    not even the account's real model may be trained on or shared through Sentinel."""
    gw = start(gateway_factory, spy, redis_url)
    with gw.client() as alice:
        upload = alice.post("/v1/files", files={"file": ("t.jsonl", b"{}\n")}, data={"purpose": "fine-tune"}).json()
        made = alice.post("/v1/fine_tuning/jobs", json={"model": "gpt-4o-mini", "training_file": upload["id"]}).json()
    # the job read straight from the provider (its model made), never through Sentinel
    model = httpx.get(f"{spy.url}/v1/fine_tuning/jobs/{made['id']}", headers={"Authorization": "Bearer x"}).json()[
        "fine_tuned_model"]
    with gw.client() as alice:
        spy.clear()
        refused = alice.post("/v1/fine_tuning/jobs", json={"model": model, "training_file": upload["id"]})
        assert refused.status_code == 404 and openai_error(refused.json())["code"] == "model_not_found"
        assert alice.get(f"/v1/fine_tuning/checkpoints/{model}/permissions").status_code == 404
        assert spy.seen == []
        # once a read of her job shows it, it is hers
        assert alice.get(f"/v1/fine_tuning/jobs/{made['id']}").json()["fine_tuned_model"] == model
        assert alice.get(f"/v1/fine_tuning/checkpoints/{model}/permissions").status_code == 200


def test_an_uploads_nested_or_json_model_fields_are_checked_too(
    gateway_factory: Callable[..., Gateway], spy: SpyUpstream, redis_url: str
) -> None:
    """Only an upload's `model` field was read for a fine-tuned model: one named in a nested field
    (`session[model]`, `tools[0][model]`: readers that build objects from such names read a model
    there) or under `model` in a field's JSON value went as given. Each is now held as the `model`
    field is: Bob naming Alice's model gets what a model that does not exist gets, nothing sent;
    Alice naming it is sent on."""
    gw = start(gateway_factory, spy, redis_url)
    bob_key = key_for(gw, "bob")
    audio = {"file": ("a.wav", b"RIFF")}
    with gw.client() as alice, gw.client(bob_key) as bob:
        _, model, _ = tuned(alice)
        ghost = model[:-4] + "zzzz"

        def fields(named: str) -> list[tuple[dict[str, str], str]]:
            return [
                ({"model": "whisper-1", "session[model]": named}, "session[model]"),
                ({"model": "whisper-1", "tools[0][model]": f" {named}"}, "tools[0][model]"),
                ({"model": "whisper-1", "chunking_strategy": json.dumps({"type": "auto", "grader": {"model": named}})},
                 "chunking_strategy.grader.model"),
            ]

        spy.clear()
        for (data, param), (ghostly, _) in zip(fields(model), fields(ghost), strict=True):
            attempt = bob.post("/v1/audio/transcriptions", files=audio, data=data)
            missing = bob.post("/v1/audio/transcriptions", files=audio, data=ghostly)
            error = same_as_missing(attempt, missing, model, ghost)
            assert error["code"] == "model_not_found" and error["param"] == param, error
        assert spy.seen == []
        for data, _ in fields(model):  # (the mock serves no transcriptions: its 404 is relayed)
            alice.post("/v1/audio/transcriptions", files=audio, data={k: v.strip() for k, v in data.items()})
        assert spy.paths() == ["/v1/audio/transcriptions"] * 3
