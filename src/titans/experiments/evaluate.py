"""Evaluation on the tasks: loss and accuracy per sequence length (and per needle depth).

Evaluation batches come from their own seed stream (never the training batches of the same
seed) and are the same for every model, so runs compare on the same sequences. A task that
reads data (:class:`~titans.experiments.tasks.TextTask`) is evaluated on its held-out part
(:func:`~titans.experiments.tasks.evaluation_task`), and its rows also give the loss in bits per byte.

No hidden NaN: an evaluation whose loss or logits are NaN or infinite is *non-finite*. It keeps
its loss but has no accuracy (``None``): NaN logits argmax to token 0, which would otherwise
count as predictions. :func:`json_safe` writes such losses as the strings ``"nan"``, ``"inf"``,
``"-inf"``, so every JSON document stays valid JSON.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from titans.model import TitansLM
from titans.experiments.tasks import evaluation_task
from titans.experiments.tasks.base import IGNORE_INDEX, Task
from titans.experiments.tasks.needle import NeedleInHaystack
from titans.experiments.tasks.text import TextTask, bits_per_byte

__all__ = ["eval_generator", "evaluate", "evaluate_task", "json_safe"]

_EVAL_STREAM = 0x5EED_0000_0000


def eval_generator(seed: int, index: int) -> torch.Generator:
    """The generator of evaluation batch ``index`` for ``seed`` (disjoint from training's)."""
    return torch.Generator().manual_seed(_EVAL_STREAM + seed * 1_000_003 + index)


def _autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def json_safe(value: Any) -> Any:
    """``value`` (nested dicts, lists, tuples, numbers) with every NaN or infinite float replaced by
    the string ``"nan"``, ``"inf"`` or ``"-inf"``: ``json.dumps(..., allow_nan=False)`` accepts it
    and ``float()`` reads the strings back."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


@torch.no_grad()
def evaluate_task(
    model: TitansLM, task: Task, *, seq_len: int, batches: int, batch_size: int, seed: int
) -> dict[str, Any]:
    """``{"loss", "accuracy", "finite"}`` of ``model`` on ``batches`` evaluation batches of
    ``task`` (``batch_size`` sequences of ``seq_len`` tokens): the mean loss over scored
    positions and the share of scored positions predicted right.

    ``finite`` is False when the loss or any logit is NaN or infinite, or the model raises
    ``FloatingPointError`` (a non-finite value inside it); ``accuracy`` is then ``None`` (a NaN
    logit argmaxes to token 0, which is no prediction) and ``loss`` is the non-finite value
    (NaN when the model raised)."""
    if batches < 1:
        raise ValueError(f"evaluate_task: batches must be >= 1, got {batches}")
    task = evaluation_task(task)  # a text task's held-out part; the synthetic tasks as they are
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum, correct, total = 0.0, 0, 0
    finite_logits = True
    try:
        for index in range(batches):
            input_ids, labels = task.batch(eval_generator(seed, index), batch_size, seq_len)
            input_ids, labels = input_ids.to(device), labels.to(device)
            try:
                with _autocast(device):
                    logits = model(input_ids).logits
            except FloatingPointError:  # the model refused a NaN or inf of its own: a diverged evaluation
                return {"loss": math.nan, "accuracy": None, "finite": False}
            logits = logits.float()
            finite_logits = finite_logits and bool(torch.isfinite(logits).all())
            scored = labels != IGNORE_INDEX
            loss_sum += float(F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                                              reduction="sum"))
            correct += int(((logits.argmax(-1) == labels) & scored).sum())
            total += int(scored.sum())
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError(f"evaluate_task: task {task.name!r} scored no position")
    loss = loss_sum / total
    finite = finite_logits and math.isfinite(loss)
    return {"loss": loss, "accuracy": correct / total if finite else None, "finite": finite}


def evaluate(
    model: TitansLM,
    task: Task,
    lengths: Sequence[int],
    *,
    depths: Sequence[float] | None = None,
    batches: int = 2,
    batch_size: int = 8,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Evaluates ``model`` on ``task`` at each sequence length (and, for the needle task, each depth).

    Args:
        model: the model to evaluate (left in the training mode it had).
        task: the task that makes the evaluation batches (a text task: its held-out part).
        lengths: the sequence lengths, positive integers.
        depths: needle depths in ``[0, 1]``, default ``0, 0.25, ..., 1``; the needle task only.
        batches: evaluation batches per row (>= 1).
        batch_size: sequences per batch.
        seed: the seed of the evaluation batches (the same for every row).

    Returns:
        One row ``{"task", "length", "loss", "accuracy", "finite"}`` per length; for the needle
        task one row per (length, depth) with a ``"depth"`` key; for a text task each row also
        has ``"bits_per_byte"``. A non-finite row has ``"finite": False`` and ``"accuracy": None``
        (see :func:`evaluate_task`); write rows as JSON through :func:`json_safe`.

    Raises:
        ValueError: for an empty or non-positive list of lengths, depths given for a task that
            has none, or ``batches < 1``.
    """
    if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
        raise ValueError(f"evaluate: lengths must be positive integers, got {list(lengths)}")
    if isinstance(task, NeedleInHaystack):
        grid: list[float | None] = list(depths) if depths is not None else [0.0, 0.25, 0.5, 0.75, 1.0]
    elif depths is not None:
        raise ValueError(f"evaluate: depths apply to the needle task only, not {task.name!r}")
    else:
        grid = [None]
    rows = []
    for length in lengths:
        for depth in grid:
            current = task if depth is None else dataclasses.replace(task, depth=depth)
            result = evaluate_task(model, current, seq_len=length, batches=batches, batch_size=batch_size, seed=seed)
            row: dict[str, Any] = {"task": task.name, "length": length}
            if depth is not None:
                row["depth"] = depth
            row.update(result)
            if isinstance(task, TextTask):
                row["bits_per_byte"] = bits_per_byte(result["loss"])
            rows.append(row)
    return rows
