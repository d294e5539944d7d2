"""Graders that run a model: one rule for the models a call's graders must be allowed to run
(`sentinel.services.objects.run_models`) and the input a grader run reserves for them
(`sentinel.quota.media_calls`). Pure, no I/O.

A grader is a model grader when its `type` is one of MODEL_GRADERS, or when it is typed and gives a
`model` (a type the provider adds later runs the model it names). A `multi` grader's nested graders
are graders too, at any depth (its `graders`, a map of them or one).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["MODEL_GRADERS", "is_model_grader", "model_graders"]

MODEL_GRADERS = frozenset({"label_model", "score_model"})


def is_model_grader(node: dict[str, Any]) -> bool:
    """Whether the JSON object `node` is a grader that runs a model (see the module docstring)."""
    kind = node.get("type")
    return (isinstance(kind, str) and kind in MODEL_GRADERS) or ("model" in node and "type" in node)


def model_graders(tree: Any) -> Iterator[dict[str, Any]]:
    """Every model grader in `tree` (a grader, a list or a map of them), nested ones included — a walk
    without recursion over every JSON object in it: any depth, as `run_models` finds their models."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(item for item in reversed(node) if isinstance(item, dict | list))
        elif isinstance(node, dict):
            if is_model_grader(node):
                yield node
            stack.extend(value for value in reversed(node.values()) if isinstance(value, dict | list))
