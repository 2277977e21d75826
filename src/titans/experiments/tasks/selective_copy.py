"""Selective copying (Gu & Dao, 2023): tokens scattered among blanks are copied out, in order,
after a marker.

Tokens: ``0`` = blank, ``1`` = the copy marker, data tokens ``[2, V)``. With ``n`` data tokens
and ``L`` inputs (``L >= 2 n``), the first ``L - n`` positions hold the ``n`` tokens at random
positions (in increasing order) among blanks, then the marker, then the copies::

    inputs:  0 a 0 0 b 0 c 0 | MARK a b        (teacher forcing: the copies are inputs too)
    labels:  -100 ...   -100 |   a  b c        (scored from the marker on)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from titans.experiments.tasks.base import IGNORE_INDEX, check_batch_args, check_int, masked_accuracy

__all__ = ["SelectiveCopy"]

BLANK = 0
MARKER = 1


@dataclass(frozen=True)
class SelectiveCopy:
    """Copy ``num_tokens`` scattered data tokens after a marker.

    Args:
        vocab_size: ``V >= 3``; data tokens are ``[2, V)``.
        num_tokens: ``n`` tokens to copy; a sequence needs ``seq_len >= 2 n``.
        name: the task's name in :data:`~titans.TASKS`, ``"selective_copy"`` (not an option of
            :func:`~titans.make_task`).
    """

    vocab_size: int = 64
    num_tokens: int = 8
    name: str = "selective_copy"

    def __post_init__(self) -> None:
        check_int("SelectiveCopy", "vocab_size", self.vocab_size, 3)
        check_int("SelectiveCopy", "num_tokens", self.num_tokens, 1)

    def chance_accuracy(self) -> float:
        """Accuracy of a uniform guess among the data tokens ``[2, V)``."""
        return 1 / (self.vocab_size - 2)

    def batch(
        self, generator: torch.Generator, batch_size: int, seq_len: int
    ) -> tuple[Int[Tensor, "batch seq"], Int[Tensor, "batch seq"]]:
        """``(input_ids, labels)`` of ``batch_size`` sequences of ``seq_len`` tokens (CPU)."""
        check_batch_args("SelectiveCopy", batch_size, seq_len, 2)
        n = self.num_tokens
        if seq_len < 2 * n:
            raise ValueError(f"SelectiveCopy.batch: seq_len must be >= 2 * num_tokens = {2 * n}, got {seq_len}")
        region = seq_len - n
        data = torch.randint(2, self.vocab_size, (batch_size, n), generator=generator)
        positions = torch.rand(batch_size, region, generator=generator).argsort(-1)[:, :n].sort(-1).values
        full = torch.full((batch_size, seq_len + 1), BLANK, dtype=torch.long)
        full.scatter_(1, positions, data)
        full[:, region] = MARKER
        full[:, region + 1:] = data
        input_ids = full[:, :-1].clone()
        labels = full[:, 1:].clone()
        labels[:, : region] = IGNORE_INDEX
        return input_ids, labels

    def accuracy(self, logits: Float[Tensor, "batch seq vocab"], labels: Int[Tensor, "batch seq"]) -> float:
        """Share of copied tokens predicted right (teacher forced)."""
        return masked_accuracy(logits, labels)
