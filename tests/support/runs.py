"""Runs made through the official OpenAI SDK on the mock upstream (`sentinel.mock.openai_runs`): an
eval's run and an Assistants thread's, whose usage a later read shows apart from its own."""

from __future__ import annotations

from typing import Any

HELLO = {"role": "user", "content": "hello"}


# An eval run's data source: gpt-4o-mini sampled over two inline items.
EVAL_SOURCE: dict[str, Any] = {
    "type": "completions", "model": "gpt-4o-mini",
    "source": {"type": "file_content", "content": [{"item": {"q": "a"}}, {"item": {"q": "b"}}]},
    "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]},
}


def eval_and_run(client: Any) -> tuple[Any, Any]:
    """An eval graded by gpt-4o, and a run of it sampling gpt-4o-mini over two inline items."""
    made = client.evals.create(
        name="e", data_source_config={"type": "custom", "item_schema": {"type": "object"}},
        testing_criteria=[{"type": "score_model", "name": "s", "model": "gpt-4o",
                           "input": [{"role": "user", "content": "{{sample.output_text}}"}]}],
    )
    return made, client.evals.runs.create(made.id, data_source=EVAL_SOURCE)


def thread_with_runs(client: Any, *messages: dict[str, Any], runs: int = 1) -> tuple[Any, list[Any]]:
    """A thread of `messages` (one "hello" when none) and `runs` runs of an assistant on gpt-4o-mini."""
    assistant = client.beta.assistants.create(model="gpt-4o-mini", name="helper")
    thread = client.beta.threads.create(messages=list(messages or [HELLO]))
    return thread, [client.beta.threads.runs.create(thread.id, assistant_id=assistant.id) for _ in range(runs)]


# A function tool: a run given it stops in `requires_action`, showing the model's call of it.
WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}


def thread_with_tool_run(client: Any) -> tuple[Any, Any]:
    """A thread of one "hello" and a run of an assistant on gpt-4o-mini given the `weather` tool
    (the mock stops it at its first read in `requires_action`: its call of the tool)."""
    assistant = client.beta.assistants.create(model="gpt-4o-mini", name="helper")
    thread = client.beta.threads.create(messages=[HELLO])
    return thread, client.beta.threads.runs.create(thread.id, assistant_id=assistant.id, tools=[WEATHER])


def thread_with_run(client: Any, *messages: dict[str, Any]) -> tuple[Any, Any]:
    """A thread of `messages` (one "hello" when none) and one run of an assistant on gpt-4o-mini."""
    thread, (run,) = thread_with_runs(client, *messages)
    return thread, run
