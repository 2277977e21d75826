"""Evaluation on the synthetic tasks: loss and accuracy per sequence length (and per needle depth).

Evaluation batches come from their own seed stream (never the training batches of the same
seed) and are the same for every model, so runs compare on the same sequences.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from titans.model import TitansLM
from titans.tasks.base import IGNORE_INDEX, Task
from titans.tasks.needle import NeedleInHaystack

__all__ = ["eval_generator", "evaluate", "evaluate_task"]

_EVAL_STREAM = 0x5EED_0000_0000


def eval_generator(seed: int, index: int) -> torch.Generator:
    """The generator of evaluation batch ``index`` for ``seed`` (disjoint from training's)."""
    return torch.Generator().manual_seed(_EVAL_STREAM + seed * 1_000_003 + index)


def _autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def evaluate_task(
    model: TitansLM, task: Task, *, seq_len: int, batches: int, batch_size: int, seed: int
) -> dict[str, float]:
    """``{"loss", "accuracy"}`` of ``model`` on ``batches`` evaluation batches of ``task``
    (``batch_size`` sequences of ``seq_len`` tokens): the mean loss over scored positions and
    the share of scored positions predicted right."""
    if batches < 1:
        raise ValueError(f"evaluate_task: batches must be >= 1, got {batches}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum, correct, total = 0.0, 0, 0
    try:
        for index in range(batches):
            input_ids, labels = task.batch(eval_generator(seed, index), batch_size, seq_len)
            input_ids, labels = input_ids.to(device), labels.to(device)
            with _autocast(device):
                logits = model(input_ids).logits
            logits = logits.float()
            scored = labels != IGNORE_INDEX
            loss_sum += float(F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                                              reduction="sum"))
            correct += int(((logits.argmax(-1) == labels) & scored).sum())
            total += int(scored.sum())
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError(f"evaluate_task: task {task.name!r} scored no position")
    return {"loss": loss_sum / total, "accuracy": correct / total}


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
    """One row ``{"task", "length", "loss", "accuracy"}`` per length; for the needle task one
    row per (length, depth) with a ``"depth"`` key (``depths`` default ``0, 0.25, ..., 1``).

    Raises ``ValueError`` for an empty or non-positive list of lengths, or depths given for a
    task that has none."""
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
            rows.append(row)
    return rows
