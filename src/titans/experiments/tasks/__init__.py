"""Synthetic long-context tasks, generated on the fly and deterministic by seed.

- :class:`MQAR`: multi-query associative recall (Zoology).
- :class:`NeedleInHaystack`: one key-value needle at a depth in noise, asked for at the end.
- :class:`SelectiveCopy`: scattered tokens copied out in order after a marker.
- :class:`TextTask`: next-byte prediction on the user's own UTF-8 text (read from disk, with a
  held-out split for evaluation).

:data:`TASKS` maps a name to its class; :func:`make_task` builds one by name with options.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from titans.registry import Registry
from titans.experiments.tasks.base import IGNORE_INDEX, Task, masked_accuracy
from titans.experiments.tasks.mqar import MQAR
from titans.experiments.tasks.needle import NeedleInHaystack
from titans.experiments.tasks.selective_copy import SelectiveCopy
from titans.experiments.tasks.text import TextTask, bits_per_byte

__all__ = [
    "IGNORE_INDEX",
    "MQAR",
    "TASKS",
    "NeedleInHaystack",
    "SelectiveCopy",
    "Task",
    "TextTask",
    "bits_per_byte",
    "chance_accuracy",
    "evaluation_task",
    "make_task",
    "masked_accuracy",
    "task_to_dict",
]

#: Tasks by name.
TASKS: Registry[type] = Registry(
    "task", {"mqar": MQAR, "needle": NeedleInHaystack, "selective_copy": SelectiveCopy, "text": TextTask},
    where="titans.experiments.tasks.TASKS",
)


def make_task(name: str, **options: Any) -> Task:
    """The task called ``name`` with its fields set from ``options``.

    Args:
        name: the task's name in :data:`TASKS` (``"mqar"``, ``"needle"``, ``"selective_copy"``, ``"text"``).
        options: the task's fields (all but ``name``), e.g. ``vocab_size``.

    Returns:
        The task, a frozen dataclass.

    Raises:
        ValueError: naming an unknown task name or option, or a bad option value.
    """
    cls = TASKS.get(name, "task")
    fields = {f.name for f in dataclasses.fields(cls)} - {"name"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"task {name!r}: unknown options {unknown}; choose from {sorted(fields)}")
    return cls(**options)


def task_to_dict(task: Task) -> dict[str, Any]:
    """``{"name": ..., "options": {...}}``: what :func:`make_task` needs to rebuild ``task``."""
    options = {f.name: getattr(task, f.name) for f in dataclasses.fields(task) if f.name != "name"}
    return {"name": task.name, "options": options}


def evaluation_task(task: Task) -> Task:
    """The task an evaluation draws from: ``task.for_evaluation()`` where the task has one (a
    :class:`TextTask` returns its held-out split), else ``task`` itself (the synthetic tasks
    generate fresh sequences from the evaluation's own seeds)."""
    held_out = getattr(task, "for_evaluation", None)
    return held_out() if callable(held_out) else task


def chance_accuracy(task: Task) -> float | None:
    """The accuracy of a uniform guess on ``task`` (its ``chance_accuracy()``: the synthetic
    tasks have one), or ``None`` for a task without one (text: no single chance level)."""
    chance = getattr(task, "chance_accuracy", None)
    return chance() if callable(chance) else None
