"""The task protocol shared by the synthetic tasks, and the masked accuracy they report.

A task makes batches on the fly from a ``torch.Generator``: the same generator state gives the
same batch, so a run is reproducible from its seed and nothing is ever downloaded.

``labels`` follow :meth:`titans.TitansLM.forward`: they are already shifted (the label of input
position ``t`` is the token that should come after it) and ``-100`` marks positions that are
not scored.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["IGNORE_INDEX", "Task", "check_batch_args", "masked_accuracy"]

#: Label of a position that takes no loss (``torch.nn.functional.cross_entropy``'s default).
IGNORE_INDEX = -100


@runtime_checkable
class Task(Protocol):
    """A synthetic sequence task.

    Attributes:
        name: the task's name in :data:`titans.experiments.tasks.TASKS`.
        vocab_size: tokens the task uses, ``[0, vocab_size)``; a model needs at least as many.
    """

    name: str
    vocab_size: int

    def batch(
        self, generator: torch.Generator, batch_size: int, seq_len: int
    ) -> tuple[Int[Tensor, "batch seq"], Int[Tensor, "batch seq"]]:
        """``(input_ids, labels)``, both ``(batch_size, seq_len)``, on the CPU; ``labels`` is
        ``-100`` wherever no prediction is scored."""
        ...

    def accuracy(self, logits: Float[Tensor, "batch seq vocab"], labels: Int[Tensor, "batch seq"]) -> float:
        """Share of scored positions whose most likely token is the label."""
        ...


def masked_accuracy(logits: Float[Tensor, "batch seq vocab"], labels: Int[Tensor, "batch seq"]) -> float:
    """Share of the positions with ``labels != -100`` where ``logits.argmax(-1) == labels``.

    Raises ``ValueError`` if no position is scored (an accuracy of nothing is undefined)."""
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"masked_accuracy: logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    scored = labels != IGNORE_INDEX
    total = int(scored.sum())
    if total == 0:
        raise ValueError("masked_accuracy: labels score no position")
    correct = (logits.argmax(-1) == labels) & scored
    return int(correct.sum()) / total


def check_batch_args(task: str, batch_size: int, seq_len: int, min_len: int) -> None:
    """``ValueError`` naming the argument unless ``batch_size >= 1`` and ``seq_len >= min_len``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{task}.batch: batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < min_len:
        raise ValueError(f"{task}.batch: seq_len must be an integer >= {min_len}, got {seq_len!r}")


def check_int(task: str, name: str, value: object, low: int) -> None:
    """``ValueError`` naming ``task.name`` unless ``value`` is an integer ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{task}.{name}: must be an integer >= {low}, got {value!r}")
